"""What happens around the training loop, as callbacks: saving, reports, progress and the stop rules.

:func:`textgen.training.fit` calls, in list order, ``on_train_start(run)`` once, then per epoch
``on_epoch_start(run)``, ``on_step_end(run, loss)`` after every step and ``on_epoch_end(run, improved)``
after validation. A callback stops training by raising (a failure) or by calling ``run.stop(reason)``
(stop after this epoch; ``now=True``: validate and save now, then stop).
"""

from __future__ import annotations

import logging
import math
import signal
from typing import Optional

from textgen import report
from textgen.config import TrainConfig
from textgen.errors import TextgenError, counted, minutes_text
from textgen.evaluation import bpc
from textgen.progress import duration, progress_bar

logger = logging.getLogger("textgen")


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, run) -> None:
        pass

    def on_epoch_start(self, run) -> None:
        pass

    def on_step_end(self, run, loss: float) -> None:
        pass

    def on_epoch_end(self, run, improved: bool) -> None:
        pass


class LossGuard(Callback):
    """Abort on a NaN/Inf loss or one above 4 x ln(vocabulary), in a training step or in the validation that
    comes before an epoch's checkpoint (weights a step blew up must not become the checkpoint a resume starts
    from): the last good checkpoint is kept."""

    def on_train_start(self, run) -> None:
        self.limit = 4 * max(math.log(len(run.vocab)), 1.0)

    def on_step_end(self, run, loss: float) -> None:
        if not self._sane(loss):
            self._stop(run, loss, f"training stopped at epoch {run.state.epoch + 1}, step {run.state.step_in_epoch}: "
                                  "the loss")

    def on_epoch_end(self, run, improved: bool) -> None:
        if not self._sane(run.state.val_loss):
            self._stop(run, run.state.val_loss, f"training stopped at the validation of epoch "
                                                f"{run.state.history[-1]['epoch']}: the validation loss")

    def _sane(self, loss: float) -> bool:
        return math.isfinite(loss) and loss <= self.limit

    def _stop(self, run, loss: float, where: str) -> None:
        _diverged(run, f"{where} {'became NaN/Inf' if not math.isfinite(loss) else f'exploded to {loss:.3g} nats'}")


def _diverged(run, what: str) -> None:
    """Stop training that diverged, saying what is kept and what to try."""
    from textgen.checkpoint import has_checkpoint

    if run.replaces:
        kept = f"the earlier run in {run.run_dir} is kept"
    elif has_checkpoint(run.run_dir):
        kept = f"the last good checkpoint in {run.run_dir} is kept"
    else:
        kept = "nothing was saved"
    lower_rate = min(run.config.learning_rate / 4, TrainConfig.learning_rate)  # not 2.5e+307 after 1e308
    advice = f"try a lower --learning-rate, e.g. {lower_rate:g}, or a lower --clip-norm"
    decay, taken = run.config.weight_decay, run.config.weight_decay * run.config.learning_rate
    if taken >= 0.5:  # each step's decay alone takes half of a weight away, or more: --weight-decay 1000 was told to
        # lower the rate, which exploded again, then to lower it again
        share = "more than" if taken > 1 else "half or more of"
        advice = (f"--weight-decay {decay:g} times the learning rate takes {share} each weight away at every step: "
                  f"give a lower --weight-decay (the default is {TrainConfig.weight_decay:g})")
    raise TextgenError(f"{what}; {kept} ({advice})")


def save_unvalidated(run, carried: Optional[dict] = None) -> None:
    """Save "last" mid-epoch (--save-every, a signal) with no validation to check it first: the step just done
    may have turned the weights to NaN/Inf (its own loss was computed before its update), and such weights must
    not become the checkpoint a resume starts from. carried: the LSTM and RNG state as training left them, when
    validation has changed them since."""
    if not run.session.weights_finite():
        _diverged(run, f"training stopped at epoch {run.state.epoch + 1}, step {run.state.step_in_epoch}: the "
                       "weights became NaN/Inf")
    run.save(("last",), carried=carried)


def interrupted(run, signum: int, saved: bool = False, carried: Optional[dict] = None) -> "Interrupted":
    """What a signal stops the run with, once a resumable checkpoint is saved (unless saved: the run's last one is
    where it stands); or, early in an --overwrite run that has saved nothing, with the earlier run kept: Ctrl-C then
    takes back a mistyped command, and a stop (SIGTERM from timeout or docker stop, SIGHUP) must not replace a run
    with a minute's training at most (it did; a later signal keeps the training done so far, as in any run)."""
    if run.replaces and run.elapsed < TAKE_BACK_S:
        return _taken_back(run, signum)
    if not saved:
        save_unvalidated(run, carried)
    told = (f"interrupted: {'saved' if run.writes else 'the chief worker saved'} a resumable checkpoint "
            f"({run.state.position()}) in {run.run_dir}")
    command, call = run.resume_advice()
    return Interrupted(f"{told}; resume with: {command}", signum, f"{told}; resume with: {call}")


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving a resumable checkpoint; the command exits with 128 + the signal
    number. A KeyboardInterrupt, not an error: a program that catches Exception around textgen.train still stops
    on Ctrl-C."""

    def __init__(self, message: str, signum: int, in_python: str = ""):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
        self.python_message = in_python or message  # the same, its advice as a Python call

    def in_python(self) -> "Interrupted":
        return Interrupted(self.python_message, self.signum)

    def for_command(self) -> TextgenError:
        """What the command reports: this message alone on stderr, and the signal's exit code."""
        stopped = TextgenError(str(self))
        stopped.exit_code = self.exit_code
        return stopped


TAKE_BACK_S = 60.0  # of an --overwrite training, in which a stop keeps the earlier run instead of saving


def _taken_back(run, signum: int) -> "Interrupted":
    kept = f"interrupted before this training's first checkpoint, so the earlier run in {run.run_dir} is kept as it was"
    return Interrupted(f"{kept} (to replace it, run the same command again)", signum,
                       f"{kept} (to replace it, call textgen.train the same way again)")


class StopRequests(Callback):
    """A signal (save and raise Interrupted) or the --max-minutes budget (end the epoch now, then stop).

    Workers of a multi-worker run agree on both after every step and at each epoch's start (one collective each), so
    they stop together. The signals are run.signals, which training.stop_on_signals fills."""

    def on_epoch_start(self, run) -> None:
        # A signal (or the time budget) during validation or the epoch's save: the epoch's checkpoint is the one to
        # resume from (the next epoch's first step ran, and saved a checkpoint of its own, although the log said
        # "finishing this step")
        if run.state.global_step and not run.state.step_in_epoch:
            self._act(run, saved=True)

    def on_step_end(self, run, loss: float) -> None:
        self._act(run, saved=False)

    def _act(self, run, saved: bool) -> None:
        """saved: the run's last checkpoint is where it stands (an epoch's end)."""
        from textgen.distribute import worker_mean

        budget = run.config.max_minutes * 60
        # replacing: the chief's --overwrite run has saved nothing yet (only the chief knows)
        stopping, time_up, replacing, run.elapsed = worker_mean(
            run.session.strategy, bool(run.signals), bool(budget) and run.elapsed >= budget, run.replaces,
            run.elapsed)
        signum = run.signals[0] if run.signals else signal.SIGTERM
        if stopping > 0 and replacing > 0 and run.elapsed < TAKE_BACK_S:
            raise _taken_back(run, signum)
        if stopping > 0:
            raise interrupted(run, signum, saved)
        if time_up > 0:
            run.stop(f"time budget of {minutes_text(run.config.max_minutes)} reached", now=True)


class Checkpointer(Callback):
    """Save "last" (and "best" when validation improved) at every epoch end, and every --save-every steps."""

    def on_step_end(self, run, loss: float) -> None:
        every = run.config.save_every
        if every and run.state.global_step % every == 0 and not run.end_epoch \
                and run.state.step_in_epoch < len(run.train_batches):
            save_unvalidated(run)

    def on_epoch_end(self, run, improved: bool) -> None:
        run.save(("last", "best") if improved else ("last",), carried=run.carried, validated=True)


class Patience(Callback):
    """Stop after --patience epochs without a better validation loss."""

    def on_epoch_end(self, run, improved: bool) -> None:
        patience = run.config.patience
        if patience and run.state.epoch - run.state.best_epoch >= patience:
            run.stop(f"no validation improvement for {patience} epochs")


class ProgressBar(Callback):
    """A per-epoch progress bar on stderr with the running mean loss (terminals only)."""

    def on_epoch_start(self, run) -> None:
        self.bar = progress_bar(len(run.train_batches), f"epoch {run.config.epoch_of(run.state.epoch + 1)}",
                                metrics=("loss", "bpc"))

    def on_step_end(self, run, loss: float) -> None:
        mean = run.state.epoch_mean_loss
        self.bar(run.state.step_in_epoch, loss=mean, bpc=bpc(mean))


class Pace(Callback):
    """How long the run will take, said once it has trained a minute (a large text's default run can take hours,
    with nothing else said until its first epoch ends); and where an epoch stands every ten minutes when stderr is
    not a terminal, which shows no progress bar (a job's log)."""

    FIRST_S = 60.0  # trained this long in this session before the estimate (the first steps compile)
    EVERY_S = 600.0

    def __init__(self, terminal: Optional[bool] = None):
        from textgen.progress import stderr_is_terminal

        self.terminal = stderr_is_terminal() if terminal is None else terminal

    def on_train_start(self, run) -> None:
        self.timed_from = None  # (run.elapsed, global step) after this session's first step, which compiles
        self.told = False
        self.next_line = run.elapsed + self.EVERY_S

    def on_step_end(self, run, loss: float) -> None:
        if self.timed_from is None:
            self.timed_from = (run.elapsed, run.state.global_step)
            return
        since, first = self.timed_from
        if not self.told and run.elapsed - since >= self.FIRST_S:
            per_step = (run.elapsed - since) / (run.state.global_step - first)
            steps = len(run.train_batches)
            left = (run.config.epochs - run.state.epoch) * steps - run.state.step_in_epoch if run.config.epochs \
                else math.inf  # --epochs 0: until --max-minutes
            deadline = run.config.max_minutes * 60 - run.elapsed if run.config.max_minutes else math.inf
            end = (f"the {counted(run.config.epochs, 'epoch')} end in ~{duration(left * per_step)}"
                   if left * per_step < deadline else
                   f"--max-minutes {run.config.max_minutes:g} ends the run in ~{duration(deadline)}")
            if min(left * per_step, deadline) >= self.FIRST_S:  # a run ending within the minute is its own answer
                step_time = f"{per_step:.2f} s" if per_step >= 0.1 else f"{per_step * 1000:.3g} ms"  # (a tiny model's
                # said "0.00 s per step")
                run.log(f"pace: {step_time} per step, ~{duration(steps * per_step)} per epoch; {end}")
            self.told = True
        if not self.terminal and run.elapsed >= self.next_line:
            mean = run.state.epoch_mean_loss
            run.log(f"epoch {run.config.epoch_of(run.state.epoch + 1)}: step {run.state.step_in_epoch} of "
                    f"{len(run.train_batches)}, train {mean:.4f} nats ({bpc(mean):.3f} bpc), "
                    f"{duration(run.elapsed)} of training")
            self.next_line = run.elapsed + self.EVERY_S


class EpochLog(Callback):
    """One line per epoch: losses in nats and bits per character, whether it is the best, time so far."""

    def on_epoch_end(self, run, improved: bool) -> None:
        row, state = run.state.history[-1], run.state
        partial = f" (stopped after {steps} of {len(run.train_batches)} steps)" \
            if (steps := report.steps_cut_short(state)) else ""
        run.log(f"epoch {run.config.epoch_of(row['epoch'])}{partial}: train {row['train_loss']:.4f} nats "
                f"({row['train_bpc']:.3f} bpc), val {row['val_loss']:.4f} nats ({row['val_bpc']:.3f} bpc)"
                f"{' [best]' if improved else ''}, {row['seconds']:.0f} s")


class Reports(Callback):
    """history.csv and curve.png in the run directory. A report that cannot be written warns, never stops."""

    def on_epoch_end(self, run, improved: bool) -> None:
        run_dir, state = run.run_dir, run.state
        for name, write in (("history.csv", lambda: report.write_history(run_dir, state.history)),
                            ("curve.png", lambda: report.plot_history(run_dir, state.history, state.best_val_loss,
                                                                     cut_short_steps=report.steps_cut_short(state)))):
            try:
                write()
            except Exception as error:  # a report is a convenience: training goes on without it
                from textgen.runs import run_options

                # (an OSError's own text ended "-> None"; and after the last epoch, nothing would write it again)
                reason = error.strerror if isinstance(error, OSError) and error.strerror else \
                    f"{type(error).__name__}: {error}"
                logger.warning(f"warning: could not write {name} in {run.run_dir} ({reason}); training goes on, and "
                               f"textgen plot {run_options(run_dir)} writes it again")


class TensorBoard(Callback):
    """Scalars per epoch (bits per character, losses, learning rate) in RUN/tensorboard, by characters seen.
    A resumed run adds event files beside its earlier ones; an --overwrite run's first save removes the earlier
    run's."""

    def __init__(self):
        self.writer: Optional[object] = None
        self.failed = False  # once it cannot write, training goes on without it (the logs are a convenience)

    def on_train_start(self, run) -> None:
        if run.replaces:
            run.earlier_files += (run.run_dir / "tensorboard").glob("events.out.tfevents.*")

    def on_epoch_end(self, run, improved: bool) -> None:
        if self.failed:
            return
        try:
            self._write(run)
        except Exception as error:  # (a file named tensorboard in the way, a full disk: TensorFlow's own errors)
            self.failed = True
            reason = next((line for line in str(error).splitlines() if line.strip()), "")
            logger.warning(f"warning: could not write the TensorBoard logs in {run.run_dir / 'tensorboard'} "
                           f"({type(error).__name__}: {reason}); training continues without them")

    def _write(self, run) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if self.writer is None:  # its file made at the first epoch's end, after the save: an --overwrite run taken
            self.writer = tf.summary.create_file_writer(str(run.run_dir / "tensorboard"))  # back leaves none

        # What tf.summary.scalar writes, without it: it lives in the tensorboard package, which TensorFlow no
        # longer installs (and whose web server is not needed to write the logs it reads).
        scalar = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                                             data_class=summary_pb2.DATA_CLASS_SCALAR)
        row = run.state.history[-1]
        with self.writer.as_default(step=row["chars_seen"]):
            for name in ("train_bpc", "val_bpc", "train_loss", "val_loss", "learning_rate"):
                if row[name] is not None:
                    tf.summary.write(name, tf.constant(row[name], tf.float32), metadata=scalar)
        self.writer.flush()

