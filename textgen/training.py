"""train(): fit the stateful char-LSTM on a corpus, with validation, checkpoints and exact resume.

``train`` prepares a :class:`Run` (configs, data, session, run state) and hands it to :func:`fit`, a small
loop over the batches; saving, reports, progress and the stop rules are callbacks (textgen.callbacks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import shlex
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from textgen import callbacks as cb
from textgen import checkpoint, sizing
from textgen.batching import StreamBatches, only_in_validation, split_validation, training_length
from textgen.callbacks import Interrupted
from textgen.checkpoint import CheckpointMeta, RunState
from textgen.config import (DEFAULT_CHECKPOINT_DIR, LAYOUT_OPTIONS, ModelConfig, TrainConfig, check_flag,
                            command_line_options, option_flag)
from textgen.quiet_import import import_tensorflow_quietly
from textgen.corpus import (CACHE_FILES, Corpus, check_readable, fingerprint, load_corpus, no_byte_order_marks_command,
                            plain_line_ends_command, same_text, scan)
from textgen.errors import MissingFile, OptionError, TextgenError, counted, minutes_text
from textgen.evaluation import bpc, stream_loss
from textgen.progress import end_bar_line, progress_bar, stderr_is_terminal, told_when_slow
from textgen.run_dir import STAGED_CACHE, check_run_dir, locked_run_dir
from textgen.runs import check_checkpoint_dir, check_run_name, default_run_name, run_path
from textgen.session import Session, callers_random_state_kept, mixed_precision_note
from textgen.vocab import Vocabulary, quoted_first, shown_chars

logger = logging.getLogger("textgen")
LARGE_CORPUS_BYTES = 20_000_000  # a corpus this large takes seconds to check and encode: said first
__all__ = ["Interrupted", "Run", "fit", "train"]


@contextlib.contextmanager
def stop_on_signals():
    """Turn the first SIGINT, SIGTERM or SIGHUP into a request checked between steps; a second one aborts at once.
    SIGHUP: the terminal of a training started without nohup was closed (an ssh session dropped), which ended it
    without a save; one started under nohup keeps ignoring it, and a program's own handler keeps it."""
    requested: list[int] = []

    def handler(signum, frame):
        if requested:
            requested.append(signum)  # the one that aborts, which the exit code is of
            raise KeyboardInterrupt
        requested.append(signum)
        if stderr_is_terminal():  # past the terminal's "^C"; not in a log record's text
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("\n")
            end_bar_line()  # (the record then needs no line break of its own: no blank line)
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"  # a SIGTERM is not pressed
        logger.warning(f"signal {signal.Signals(signum).name}: finishing this step, then stopping ({again} to abort)")

    # Python lets only the main thread install handlers; a training run from another thread (a GUI, a web job)
    # keeps the process's own handlers and stops only through its callbacks.
    in_main = threading.current_thread() is threading.main_thread()
    # SIGHUP only where it would end the process: not ignored (nohup), nor the program's own (reopening its logs)
    hangup = getattr(signal, "SIGHUP", None)  # (none on Windows)
    handled = (signal.SIGINT, signal.SIGTERM) + ((hangup,) if hangup and signal.getsignal(hangup) == signal.SIG_DFL
                                                 else ())
    previous = {sig: signal.signal(sig, handler) for sig in handled} if in_main else {}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def validation_cap(config: TrainConfig) -> int:
    """The most characters held out for validation (0: no limit): --val-max-chars, or one batch if that is more (a
    batch of 1,024 windows of 1,000 characters is more than the default)."""
    return config.val_max_chars and max(config.val_max_chars,
                                        StreamBatches.min_length(config.batch_size, config.seq_length))


def _check_lengths(corpus_path: Path, train_ids, val_ids, config: TrainConfig, sized_batch: bool = False,
                   resuming: bool = False, replicas: int = 1) -> None:
    """Refuse a corpus whose training part or validation slice cannot hold one batch; sized_batch: the batch size
    was chosen by --size auto, not by the user (the message must not ask about an option they never gave);
    resuming: the layout is the run's (smaller values would be refused); a smaller batch suggested is one the
    replicas share."""
    need = StreamBatches.min_length(config.batch_size, config.seq_length)
    shortest = min(len(train_ids), len(val_ids))
    if shortest >= need:
        return
    part = "validation slice" if len(val_ids) < len(train_ids) else "training part"
    seq = min(config.seq_length, max(1, shortest - 1))
    batch = max(1, min(config.batch_size, (shortest - 1) // seq)) // replicas * replicas
    if not batch:  # one stream per replica, in shorter windows
        batch, seq = replicas, max(1, min(config.seq_length, (shortest - 1) // replicas))
    # The shortest corpus whose both parts hold a batch. Both grow with the corpus, so it is found by bisection
    # (counted up one by one from an estimate, --val-fraction 1e-9 took minutes).
    total = high = 2 * need
    while not _parts_hold(high, config.val_fraction, need, config):
        high *= 2
    while total < high:
        middle = (total + high) // 2
        total, high = (total, middle) if _parts_hold(middle, config.val_fraction, need, config) else (middle + 1, high)
    smaller = StreamBatches.min_length(batch, seq) <= shortest and not resuming  # can any window fit at all?
    layout = (f"a batch of {config.batch_size} (chosen by --size auto) and --seq-length {config.seq_length}"
              if sized_batch else f"--batch-size {config.batch_size} --seq-length {config.seq_length}")
    if resuming:
        layout = f"this run's batch of {config.batch_size} and sequences of {config.seq_length}"
    fraction = None if resuming or config.val_fraction == TrainConfig.val_fraction else \
        _fraction_that_fits(len(train_ids) + len(val_ids), need, config)
    raise TextgenError(
        f"corpus {corpus_path} is too short for {layout}: "
        f"its {part} has {counted(shortest, 'character')} but one batch needs {need:,}; use a corpus of at least "
        f"{total:,} characters" + (" or smaller values such as " + " ".join(
            f"--{name} {value}" for name, value, now in (("batch-size", batch, config.batch_size),
                                                         ("seq-length", seq, config.seq_length)) if value != now)
            if smaller else "") + (f" or --val-fraction {fraction:g}" if fraction else ""))


def _parts_hold(length: int, val_fraction: float, need: int, config: TrainConfig) -> bool:
    """Whether a corpus of length split at val_fraction (as training splits it) leaves both parts need characters."""
    train = training_length(length, val_fraction, validation_cap(config))
    return min(train, length - train) >= need


def _fraction_that_fits(length: int, need: int, config: TrainConfig) -> Optional[float]:
    """A --val-fraction, in two significant digits, that leaves both parts of a corpus of length a batch of need
    characters, near the one given (--val-fraction 1e-9 was told to use a corpus of 51,000,000,000 characters), or
    None when no split does."""
    if 2 * need > length:
        return None
    low = config.val_fraction < 0.5
    digits = 10 ** (1 - math.floor(math.log10(need / length if low else 1 - need / length)))
    fraction = (math.ceil(need / length * digits) if low else math.floor((1 - need / length) * digits)) / digits
    for _ in range(100):  # the split rounds: step on until both parts hold a batch
        if _parts_hold(length, fraction, need, config):
            return fraction
        fraction += 1 / digits if low else -1 / digits
    return None


def _check_vocabulary(meta: CheckpointMeta, vocab: Vocabulary, corpus_path: Path) -> None:
    """Refuse to resume on a corpus with characters the checkpoint's vocabulary lacks (the model has no row for
    them). Fewer characters are fine: the corpus is then encoded with the checkpoint's ids (_in_vocabulary)."""
    saved_vocab = meta.vocab
    added = "".join(sorted(set(vocab.chars) - set(saved_vocab.chars)))
    if not added:
        return
    missing = "".join(sorted(set(saved_vocab.chars) - set(vocab.chars)))
    listed = f"new characters {shown_chars(added)}" + (f", missing characters {shown_chars(missing)}" if missing
                                                      else "")
    form = saved_vocab.unicode_form if saved_vocab.decomposed() == vocab.decomposed() else None
    own = meta.corpus.get("path")
    if form:
        advice = f"the two differ only in Unicode form: convert the corpus to {form}, e.g. with Python's " \
                 "unicodedata.normalize, or"
    elif added == "\r":  # (a copy saved on Windows, or through git's autocrlf)
        advice = "the corpus has Windows line ends (\\r\\n) where the run's text had plain ones: convert it first " \
                 f"({plain_line_ends_command(corpus_path)}), or"
    elif own and Path(own) == corpus_path.resolve():  # the run's own file, edited since
        advice = "the corpus file has changed since the run was trained: give it back the text it was trained on, or"
    else:
        advice = f"resume on the run's own corpus ({own}) or"
    raise TextgenError(f"cannot resume: the corpus vocabulary differs from the checkpoint's ({listed}); {advice} "
                       "train a new run with --run NAME (--init-from starts it from this run's weights)")


def _in_vocabulary(data: Corpus, vocab: Vocabulary) -> Corpus:
    """The corpus with its ids in vocab, a superset of its own vocabulary (see _check_vocabulary)."""
    to_saved = np.searchsorted(vocab.code_points, data.vocab.code_points).astype(vocab.id_dtype)
    return dataclasses.replace(data, ids=to_saved[data.ids], vocab=vocab)


class RunComplete(TextgenError):
    """A resume that would train nothing: the run has done its epochs, used its time budget or (resume="auto")
    been stopped by --patience. reason says which, and state is the run's, for resume="auto", which then reports
    the run complete and succeeds."""

    def __init__(self, message: str, reason: str, state: RunState):
        super().__init__(message)
        self.reason, self.state = reason, state


def _resolve_configs(meta: Optional[CheckpointMeta], vocab: Vocabulary, model_options: dict,
                     train_options: dict, corpus_path: Optional[Path] = None,
                     patience_ends: bool = False) -> tuple[ModelConfig, TrainConfig]:
    """The configurations a training runs with; resuming, the checkpoint's with the options given, once they are
    found to fit it. patience_ends (resume="auto", on the same text: a new text starts the best over): a run that
    --patience stopped is complete, as one that has done its epochs."""
    if meta is None:
        model_config = ModelConfig(vocab_size=len(vocab), **model_options)
        train_config = TrainConfig(**train_options)
    else:
        _check_vocabulary(meta, vocab, corpus_path)
        model_config, saved_training = meta.model, meta.training
        differences = [f"{option_flag(key)} {value} (checkpoint has {getattr(model_config, key)})"
                       for key, value in model_options.items() if getattr(model_config, key) != value]
        differences += [f"{option_flag(key)} {value} (checkpoint has {getattr(saved_training, key)}"
                        + (": no limit" if key == "val_max_chars"
                           and not getattr(saved_training, key) else "") + ")"
                        for key, value in train_options.items()
                        if key in LAYOUT_OPTIONS and getattr(saved_training, key) != value]
        if differences:
            raise TextgenError("cannot resume with a different model or data layout: " + "; ".join(differences)
                               + "; drop these options or train a new run with --run NAME")
        seed = train_options.get("seed", saved_training.seed)
        if seed != saved_training.seed:  # else recorded, though the run goes on with the random state it saved
            raise TextgenError(f"cannot resume with --seed {seed}: the run goes on with the random numbers it "
                               f"saved (seed {saved_training.seed}); leave --seed out, or train a new run with "
                               "--run NAME")
        train_config = dataclasses.replace(saved_training, **train_options)
        done = meta.state.epoch
        # else it would say "resuming", train nothing and report the run as stopped (--epochs 0: no epoch limit)
        if train_config.epochs and done >= train_config.epochs:
            epochs = counted(done, "epoch")
            if done < saved_training.epochs:  # an unfinished run, given a total it has already passed
                raise TextgenError(f"cannot resume with --epochs {train_config.epochs}: the run has done {epochs} of "
                                   f"its {saved_training.epochs}; leave --epochs out to finish them, or pass a larger "
                                   "total")
            raise RunComplete(f"cannot resume: the run has done its {epochs}; pass a larger --epochs (the total, "
                              f"such as --epochs {2 * done}) to train on", f"it has done its {epochs}",
                              meta.state)
        budget = train_config.max_minutes
        if budget and meta.state.elapsed_seconds >= budget * 60:  # else each resume trains one step and stops
            unlimited = "or --max-minutes 0 for no limit" if train_config.epochs else \
                "or --max-minutes 0 with --epochs N, the epochs in all"  # --epochs 0 lasts until --max-minutes
            raise RunComplete(f"cannot resume: the run has used its time budget (--max-minutes {budget:g}; it has "
                              f"trained {minutes_text(meta.state.elapsed_seconds / 60)}); pass a larger "
                              f"--max-minutes, {unlimited}", f"it has used its time budget, --max-minutes {budget:g}",
                              meta.state)
        if patience_ends and (reason := _patience_spent(meta.state, train_config.patience)) is not None:
            raise RunComplete(reason, reason, meta.state)
    model_config.validate()
    train_config.validate()
    return model_config, train_config


COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of --learning-rate


def learning_rate_for(config: TrainConfig, epoch: int, fraction: float = 0.0) -> float:
    """The learning rate for a step in ``epoch`` (0-based), ``fraction`` of the way through the run (run_fraction).

    "step" is the classic char-rnn schedule: constant, then multiplied by lr_decay every epoch after
    lr_decay_after. "cosine" falls smoothly from learning_rate to 1% of it at the end of the run.
    """
    if config.lr_schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, fraction))))
        return config.learning_rate * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * shape)
    return config.learning_rate * config.lr_decay ** max(0, epoch - config.lr_decay_after + 1)


def run_fraction(config: TrainConfig, state: RunState, steps_per_epoch: int, elapsed_seconds: float) -> float:
    """How far through the run training is: by epochs (the current one counted by its steps) out of --epochs, or by
    time out of --max-minutes when that budget is set and runs out first (so a time-boxed run anneals by its
    deadline). Epochs, not the run's step count: a run resumed on a longer or shorter text has other epochs."""
    fraction = (state.epoch + state.step_in_epoch / steps_per_epoch) / config.epochs if config.epochs else 0.0
    if config.max_minutes:
        fraction = max(fraction, elapsed_seconds / (config.max_minutes * 60))
    return min(1.0, fraction)


@dataclass
class Run:
    """One training run as the loop and its callbacks see it."""

    session: Session  # model, optimizer and compiled steps
    config: TrainConfig  # the options in force
    model_config: ModelConfig
    vocab: Vocabulary
    corpus: dict  # what checkpoints record about the corpus (path, length, fingerprint)
    corpus_path: Path
    run_dir: Path
    train_batches: StreamBatches
    val_batches: StreamBatches
    state: RunState  # advanced by fit; saved in every checkpoint
    writes: bool = True  # False on multi-worker workers other than the chief
    log: Callable[[str], None] = logger.info
    started: float = 0.0  # monotonic time at which the run's training time was 0 (set by fit)
    elapsed: float = field(init=False)  # seconds of training so far, across resumes (agreed between workers)
    carried: Optional[dict] = None  # a mid-epoch stop's LSTM and RNG state, as training left them (see fit)
    stop_reason: Optional[str] = None  # why the run stops after this epoch (see stop)
    end_epoch: bool = False  # whether it stops at once: validate and save now (see stop)
    replaces: bool = False  # an --overwrite run: the earlier run's files go at its first save, not before
    has_saved: bool = False  # a checkpoint of this run exists: a resumed run's, or one saved since it started
    earlier_files: list = field(default_factory=list)  # more of the earlier run's files to remove then (its logs)
    signals: list = field(default_factory=list)  # the signals received (stop_on_signals's list while training)

    def __post_init__(self):
        self.elapsed = self.state.elapsed_seconds  # what the checkpoint trained (a resume's schedule note reads it)

    def stop(self, reason: str, now: bool = False) -> None:
        """Stop after this epoch, or with now=True after this step (then validate and save)."""
        self.stop_reason = self.stop_reason or reason
        self.end_epoch = self.end_epoch or now

    def tick(self, agreed: bool = False) -> None:
        """Bring elapsed up to date; agreed: to the workers' mean, as the learning rate of the next step needs (each
        worker's own clock gave each its own rate at an epoch's start, and their weights drifted apart)."""
        self.elapsed = time.monotonic() - self.started
        if agreed:
            from textgen.distribute import worker_mean

            self.elapsed = worker_mean(self.session.strategy, self.elapsed)[0]

    def resume_advice(self) -> tuple[str, str]:
        """The command, and the Python call, that resume this run (under multi-worker, on every worker), from any
        directory: its corpus and directory by their absolute paths (as given, relative, a cron job's directory found
        neither). The command names this training's corpus, which the run's last save may not (another text since)."""
        from textgen.distribute import spans_workers

        workers = spans_workers(self.session.strategy)
        corpus, directory = str(Path(self.corpus_path).absolute()), str(Path(self.run_dir.parent).absolute())
        changed = self._changed_since_last_save()
        command = shlex.join(["textgen", "train", corpus, "--checkpoint-dir", directory, "--run", self.run_dir.name,
                              "--resume", *(["--strategy", "multi-worker"] * workers),
                              *(part for name, value in changed.items() for part in (option_flag(name), str(value)))])
        call = (f"textgen.train({corpus!r}, run={self.run_dir.name!r}, checkpoint_dir={directory!r}, resume=True"
                + "".join(f", {name}={value!r}" for name, value in changed.items())
                + (", strategy='multi-worker')" if workers else ")"))
        return command, call

    def _changed_since_last_save(self) -> dict:
        """The training options this training changed from those its last checkpoint holds (a resume given a larger
        --epochs whose first save failed): the checkpoint resumed from does not hold them, and without them the
        advice to resume was refused ("the run has done its 3 epochs")."""
        # (every worker of a cluster reads it: the advice is printed by each, and each must follow it)
        saved = _readable_last(self.run_dir) if self.has_saved else None
        if saved is None:
            return {}
        options = command_line_options(TrainConfig)
        return {name: getattr(self.config, name) for name in options_changed(saved.training, self.config)
                if name in options}

    def learning_rate(self, config: Optional[TrainConfig] = None) -> float:
        """The next step's learning rate under config: the run's own, or (a resume's note) the checkpoint's."""
        config = config or self.config
        return learning_rate_for(config, self.state.epoch,
                                 run_fraction(config, self.state, len(self.train_batches), self.elapsed))

    def validate(self, stoppable: bool = True) -> Optional[float]:
        """The validation loss; None when a signal came during it, which a large text's validation (minutes, all
        its windows) made wait until it ended. A run across workers goes on: they validate in step. One still
        running after a while says how long it has left (a log showed nothing for minutes)."""
        from textgen.distribute import spans_workers

        self.session.reset_states()
        stoppable = stoppable and not spans_workers(self.session.strategy)
        characters = len(self.val_batches) * self.config.batch_size * self.config.seq_length
        progress = told_when_slow(len(self.val_batches), f"validating on {characters:,} characters" + (
            " (Ctrl-C or SIGTERM stops it and saves the steps trained)" if stoppable else ""), self.log)
        nats, _ = stream_loss(self.session.loss_sum, self.val_batches, progress,
                              (lambda: bool(self.signals)) if stoppable else None)
        self.session.reset_states()
        return nats

    def save(self, kinds: tuple[str, ...], carried: Optional[dict] = None, validated: bool = False) -> None:
        """Write a checkpoint of the current state (the chief only); unless it was just validated, it
        records the epoch's mean training loss so far and no validation loss."""
        self.state.elapsed_seconds = self.elapsed
        if not validated:
            self.state.train_loss, self.state.val_loss = self.state.epoch_mean_loss, None
        arrays = self.session.training_state(carried)  # on every worker: it gathers their LSTM state rows
        if self.writes:
            meta = CheckpointMeta(model=self.model_config, training=self.config, vocab=self.vocab,
                                  corpus=self.corpus, state=self.state)
            try:
                checkpoint.save(self.run_dir, kinds, meta, self.session.model, arrays)
            except checkpoint.SaveFailed as failed:
                if self.has_saved:
                    raise _save_failed(self, failed.reason) from None
                kept = ", and the earlier run's checkpoints are kept" if self.replaces else ""
                told = (f"could not save the first checkpoint in {self.run_dir}: {failed.reason}; nothing of this run "
                        f"was saved{kept} (free some space or fix the directory, then ")
                error = TextgenError(f"{told}run the same command again)")
                error.python_message = f"{told}call textgen.train the same way again)"
                raise error from None
            if self.replaces:
                checkpoint.retire_others(self.run_dir, kinds)
                if (staged := self.run_dir / STAGED_CACHE).is_dir():  # the new text's corpus cache (see load_corpus)
                    with contextlib.suppress(OSError):  # else the cache is rebuilt when the run is resumed
                        for name in CACHE_FILES:
                            os.replace(staged / name, self.run_dir / name)
                        staged.rmdir()
                for path in self.earlier_files:
                    path.unlink(missing_ok=True)
                self.replaces = False
        # Other workers: the chief saved (assumed: a chief whose save fails stops, and so do they at the next step)
        self.has_saved = True


def fit(run: Run, callbacks: Sequence[cb.Callback]) -> str:
    """Train until --epochs are done or a callback stops the run; return why it stopped."""
    state, session = run.state, run.session
    chars_per_step = run.config.batch_size * run.config.seq_length
    run.started = time.monotonic() - run.elapsed
    for callback in callbacks:
        callback.on_train_start(run)
    while (not run.config.epochs or state.epoch < run.config.epochs) and run.stop_reason is None:
        if state.step_in_epoch == 0:
            session.reset_states()
            state.epoch_loss_sum = 0.0
        for callback in callbacks:
            callback.on_epoch_start(run)
        if run.end_epoch and state.step_in_epoch == 0 and state.global_step:
            break  # stopped at once before the epoch's first step (the time budget): the last epoch's end was saved
        epoch = state.epoch
        for step in range(state.step_in_epoch, len(run.train_batches)):
            session.optimizer.learning_rate.assign(run.learning_rate())
            loss = float(session.train_step(*run.train_batches[step]))
            state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
            state.chars_seen += chars_per_step
            state.epoch_loss_sum += loss
            run.tick()
            for callback in callbacks:
                callback.on_step_end(run, loss)
            if run.end_epoch:
                break
        # Stopped mid-epoch, the checkpoint must hold the LSTM and RNG state as training left them, since
        # validation changes both (see Session.carried_state); after a whole epoch training goes on from what
        # validation left (a fresh LSTM state, the RNG past validation's draws), as an uninterrupted run does.
        trained = session.carried_state()
        run.carried = trained if run.end_epoch else None
        # A signal stops a validation (minutes on a large text) and saves the steps trained, which a resume validates;
        # not the last one of a run that ends after it anyway (its time budget spent, the run could not be resumed)
        state.train_loss, state.val_loss = state.epoch_mean_loss, run.validate(stoppable=run.stop_reason is None)
        if state.val_loss is None:
            raise cb.interrupted(run, run.signals[0], carried=trained)
        run.tick(agreed=True)
        if not run.end_epoch:
            state.epoch, state.step_in_epoch = epoch + 1, 0
        improved = state.best_val_loss is None or state.val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_epoch = state.val_loss, state.epoch
        # One row per epoch: a row from a stop mid-epoch gives way to the row of the resumed epoch's end.
        state.history = [row for row in state.history if row["epoch"] != epoch + 1] + [dict(
            epoch=epoch + 1, step=state.global_step, chars_seen=state.chars_seen, train_loss=state.train_loss,
            train_bpc=bpc(state.train_loss), val_loss=state.val_loss, val_bpc=bpc(state.val_loss),
            learning_rate=float(session.optimizer.learning_rate.numpy()),
            seconds=round(run.elapsed, 2), precision=session.precision, text=checkpoint.text_of(run.corpus))]
        for callback in callbacks:
            callback.on_epoch_end(run, improved)
    return run.stop_reason or f"{counted(run.config.epochs, 'epoch')} done"


def _resume_corpus(checkpoint_dir: str | Path, run: str) -> Path:
    """The corpus file a run was trained on, for --resume without a corpus."""
    check_checkpoint_dir(Path(checkpoint_dir))
    run_dir = run_path(checkpoint_dir, check_run_name(run))
    meta = _resumed_meta(run_dir)
    if meta is None:
        check_run_dir(run_dir, resume=True, overwrite=False)  # says why there is nothing to resume
    corpus = Path(meta.corpus["path"])
    if not corpus.exists():
        raise MissingFile(f"run {run!r} was trained on {corpus}, which no longer exists; pass the corpus to resume "
                           "on (the file where it is now, or an edited copy)")
    return corpus


_TRAINING_TURN = threading.RLock()  # held by the training running in this process (see _taking_turns)


@contextlib.contextmanager
def _training_turn(log: Callable[[str], None]):
    """What a checked training runs inside: its turn in this process, the caller's random generators kept, and
    TensorFlow imported (only now: a bad option or corpus is refused without the seconds it takes)."""
    with _taking_turns(log), callers_random_state_kept():
        import_tensorflow_quietly()
        yield


@contextlib.contextmanager
def _taking_turns(log: Callable[[str], None]):
    """Trainings called from several threads of one process run one after the other, once checked (a bad call is
    refused at once). Each seeds the process's random generators (Python's, NumPy's, TensorFlow's, Keras's) and
    gives them back when it ends, so two at once (threads of a notebook's sweep) drew from each other's generators
    and a seed no longer gave the same run; side by side they gained nothing, since one training's steps already use
    every core. A callback may train again in its own thread (the lock is re-entrant), but a callback that waits for
    a training it started in another thread waits forever."""
    if not _TRAINING_TURN.acquire(blocking=False):
        log("waiting for the training running in this process to end: trainings in one process take turns, so that "
            "a seed gives the same run")
        _TRAINING_TURN.acquire()
    try:
        yield
    finally:
        _TRAINING_TURN.release()


def train(corpus: Optional[str | Path], checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, run: Optional[str] = None,
          model_options: Optional[dict] = None, train_options: Optional[dict] = None,
          resume: bool | str = False, overwrite: bool = False, tensorboard: bool = False, strategy: str = "auto",
          log: Callable[[str], None] = logger.info, callbacks: Sequence[cb.Callback] = (),
          init_from: Optional[str | Path] = None) -> dict:
    """Train on the text file corpus into checkpoint_dir/run (run defaults to the corpus file's name); corpus None
    resumes the named run on its own corpus.

    model_options and train_options hold only the values the user chose (ModelConfig / TrainConfig
    field names); the rest come from the defaults, or from the checkpoint when resuming. Each epoch
    also rewrites run_dir/history.csv and run_dir/curve.png (and TensorBoard logs if asked).
    init_from (a run name under checkpoint_dir, or a run's directory) starts a new run from that run's best weights:
    fine-tuning, on another text; the model's shape is that run's, its vocabulary grows by the characters of the
    corpus it lacks, and the epochs, optimizer and schedule start afresh. That run is only read.
    resume="auto" (--auto-resume) resumes the run if it has a last checkpoint and starts it otherwise; a run with
    nothing left to train (its epochs done, its time budget used, or stopped by --patience) is then reported
    complete, with a summary whose stopped starts with "complete" and whose model is None.
    strategy is one of textgen.distribute.STRATEGIES; under multi-worker only the chief writes.
    callbacks are extra textgen.callbacks.Callback objects, called after the loss check and before
    the built-in stop rules, saving and reports. Returns a summary: run_dir, epoch, train_loss, val_loss,
    best_val_loss (nats), stopped, history, and the trained model (at the training batch size, per replica)."""
    from textgen.distribute import StartGate, is_chief, lost_worker

    auto = isinstance(resume, str) and resume == "auto"
    if isinstance(resume, str) and not auto:
        raise OptionError(f'resume must be True, False or "auto", got {resume!r}')
    callbacks = _checked_call(False if auto else resume, overwrite, tensorboard, strategy, callbacks)
    if auto and overwrite:
        contradiction = OptionError("--auto-resume and --overwrite contradict each other; choose one")
        contradiction.python_message = 'resume="auto" and overwrite=True contradict each other; choose one'
        raise contradiction
    if auto:  # a batch job's one command: the run goes on from its own weights once it has saved
        resume = has_resumable_checkpoint(checkpoint_dir, run, corpus)
        init_from = None if resume else init_from
    if init_from is not None and resume:
        raise OptionError("--init-from starts a new run from another run's weights; a resumed run goes on from its "
                          "own: give one or the other")
    chief = is_chief(strategy)
    gate = StartGate(strategy)
    try:
        if corpus is None:
            if auto and run and not resume:
                raise OptionError(f"run {run!r} has no checkpoint to resume yet; give the corpus to start it")
            if not (resume and run):
                raise OptionError("corpus must be a path (str or pathlib.Path), got None")
            corpus = _resume_corpus(checkpoint_dir, run)
        corpus_path = Path(corpus)
        model_options, train_options = dict(model_options or {}), dict(train_options or {})
        run_dir = _checked_run_and_options(corpus_path, checkpoint_dir, run, model_options, train_options)
        source = _init_source(init_from, checkpoint_dir, run_dir, model_options)
        check_readable(corpus_path)
        if not chief:  # other workers read the chief's checkpoints and keep their corpus cache to themselves
            with _training_turn(log), tempfile.TemporaryDirectory(prefix="textgen-worker-") as cache_dir:
                return _run_training(corpus_path, run_dir, Path(cache_dir), model_options, train_options, resume,
                                     False, gate, lambda message: None, callbacks, source, patience_ends=auto)
        check_run_dir(run_dir, resume, overwrite, corpus_path, named=run is not None)  # a refusal creates nothing
        # The run's lock before the turn: a second training of this run is refused at once, not after the first.
        with locked_run_dir(run_dir), _training_turn(log):
            # again: another training may have saved there meanwhile
            if auto and not resume and checkpoint.has_checkpoint(run_dir, ("last",)):
                resume, source = True, None
            check_run_dir(run_dir, resume, overwrite, corpus_path, named=run is not None)
            return _run_training(corpus_path, run_dir, run_dir, model_options, train_options, resume, tensorboard,
                                 gate, log, callbacks, source, patience_ends=auto)
    except RunComplete as done:
        if not auto:
            gate.refuse(done)
            raise
        return _completed(run_dir, done, log)  # (every worker finds it complete: none waits for another)
    except Exception as error:
        gate.refuse(error)  # under multi-worker, before this worker joined the others: they would wait for it forever
        if gate.strategy is not None and (reason := lost_worker(gate.strategy, error)) is not None:  # before fit
            raise _lost_worker_error(reason) from None
        raise


def has_resumable_checkpoint(checkpoint_dir, run: Optional[str], corpus) -> bool:
    """Whether resume="auto" resumes: the run (named, or named after corpus) has a last checkpoint. Anything wrong
    with the names is left for the start's own checks to say."""
    try:
        name = run if run is not None else default_run_name(Path(corpus), Path(checkpoint_dir))
        return checkpoint.has_checkpoint(run_path(checkpoint_dir, check_run_name(name)), ("last",))
    except (TextgenError, OSError, TypeError, ValueError):
        return False


def _patience_spent(state: RunState, patience: int) -> Optional[str]:
    """Why the run, stopped by --patience at an epoch's end, is complete, or None: a plain resume would train one more
    epoch and stop again (or go on, if that epoch did better)."""
    if patience and not state.step_in_epoch and state.epoch - state.best_epoch >= patience:
        return (f"it stopped early, {counted(patience, 'epoch')} without a better validation loss at --patience "
                f"{patience}; a larger --patience, or 0, trains on")
    return None


def _completed(run_dir: Path, complete: RunComplete, log: Callable[[str], None]) -> dict:
    """resume="auto" on a run with nothing left to train: said, and train()'s summary of it, without a model."""
    state, reason = complete.state, complete.reason
    best = state.best_val_loss
    log(f"nothing to train: run {run_dir.name!r} is complete: {reason}; best validation loss "
        + (f"{best:.4f} nats ({bpc(best):.3f} bpc)" if best is not None else "not measured")
        + f"; checkpoints in {run_dir}")
    return dict(run_dir=run_dir, epoch=state.epoch, best_val_loss=best, stopped=f"complete: {reason}",
                history=state.history, model=None, train_loss=state.train_loss, val_loss=state.val_loss)


def _checked_run_and_options(corpus_path: Path, checkpoint_dir, run: Optional[str], model_options: dict,
                             train_options: dict) -> Path:
    """The run's directory, once its name and the options are found valid."""
    # (first: a file, or too long a path, would fail the lookups below; every run directory comes through here)
    check_checkpoint_dir(Path(checkpoint_dir))
    run_dir = run_path(checkpoint_dir, check_run_name(run or default_run_name(corpus_path, Path(checkpoint_dir))))
    ModelConfig(vocab_size=1, **model_options).validate()
    TrainConfig(**train_options).validate()
    return run_dir


def _init_source(init_from: Optional[str | Path], checkpoint_dir, run_dir: Path,
                 model_options: dict) -> Optional[Path]:
    """The run directory --init-from names (a run name under checkpoint_dir, or a run's directory), or None; a model
    shape given that differs from the run's is refused here, before the corpus is read."""
    from textgen.runs import find_run, is_export, is_run_name, not_a_run_but_an_export, without_checkpoint

    if init_from is None:
        return None
    if not isinstance(init_from, (str, Path)) or not str(init_from).strip():
        raise OptionError(f"--init-from must name a run (its name, or its directory), got {init_from!r}")
    named = is_run_name(str(init_from)) and ((Path(checkpoint_dir) / str(init_from)).is_dir()
                                             or not Path(init_from).exists())  # (a name's refusal lists the runs)
    if named:
        source = find_run(Path(checkpoint_dir), str(init_from))
    else:
        source = Path(init_from)
        if source.is_dir() and is_export(source):
            raise not_a_run_but_an_export(source)
        if not checkpoint.has_checkpoint(source):  # (not a folder of runs: its latest would be taken)
            if checkpoint.training_pid(source) is not None:  # a run in its first epoch
                raise without_checkpoint(source, f"--init-from {init_from}")
            raise OptionError(f"--init-from {init_from} is not a run (no checkpoint in it); give a run's name under "
                              f"{checkpoint_dir}, or a run's directory")
    if source.resolve() == run_dir.resolve():
        raise OptionError(f"--init-from names the run being trained ({run_dir}); train the new run under another "
                          "name with --run NAME")
    try:
        meta = checkpoint.read_meta(source, "best") or checkpoint.read_meta(source, "last")
    except TextgenError:  # (loading it says what is wrong, or falls back to the other checkpoint)
        meta = None
    if meta is not None:
        _check_shape(source, meta.model, model_options)
    return source


def _check_shape(source: Path, model: ModelConfig, model_options: dict) -> None:
    from textgen.sizing import SHAPE_OPTIONS

    for name in SHAPE_OPTIONS:
        if name in model_options and model_options[name] != getattr(model, name):
            raise OptionError(f"{option_flag(name)} {model_options[name]} differs from the run it starts from "
                              f"({source.name}: {option_flag(name)} {getattr(model, name)}), whose weights have that "
                              f"shape; leave {option_flag(name)} out")


def _started_from(source: Path, data: Corpus, model_options: dict, log: Callable[[str], None]):
    """The --init-from run's (model, metadata), the corpus with its ids in the vocabulary the two texts make together,
    and the model options with the run's shape (a shape given otherwise is refused)."""
    from textgen.sizing import SHAPE_OPTIONS

    source_model, source_meta = checkpoint.load_model(source, batch_size=1)
    _check_shape(source, source_meta.model, model_options)
    shape = {name: getattr(source_meta.model, name) for name in SHAPE_OPTIONS}
    theirs, ours = source_meta.vocab.unicode_form, data.vocab.unicode_form
    if theirs and ours and theirs != ours:  # é as one character there, as e + accent here: a row learnt for nothing
        log(f"note: the corpus is in Unicode form {ours} where run {source.name}'s text was in {theirs}, so its "
            f"accented characters are new to the model; to start them from what it learnt, convert the corpus to "
            f"{theirs} (e.g. with Python's unicodedata.normalize)")
    vocab = Vocabulary([*source_meta.vocab.code_points, *data.vocab.code_points])
    if vocab != data.vocab:
        data = _in_vocabulary(data, vocab)
    new = "".join(ch for ch in vocab.chars if ch not in source_meta.vocab)
    log(f"starting from the weights of run {source} ({_epoch_of(source_meta)}, trained on "
        f"{Path(source_meta.corpus['path']).name})" + (f"; the characters it never saw start untrained: "
                                                       f"{shown_chars(new)}" if new else ""))
    return source_model, source_meta, data, {**model_options, **shape}


def _epoch_of(meta: CheckpointMeta) -> str:
    return f"its {meta.kind} checkpoint, {meta.state.checkpoint_epoch()}" + (
        f", {bpc(meta.state.best_val_loss):.3f} bpc" if meta.kind == "best" and meta.state.best_val_loss is not None
        else "")


def _copy_weights(source_model, source_vocab: Vocabulary, model, vocab: Vocabulary) -> None:
    """The source's weights into model, whose vocabulary holds the source's and maybe more characters: their
    embedding rows and logit columns go to those characters' ids; the others keep their fresh initial values."""
    ids = np.searchsorted(vocab.code_points, source_vocab.code_points)
    for layer in model.layers:
        if not layer.weights:
            continue
        theirs = source_model.get_layer(layer.name).get_weights()
        if layer.name == "embedding":
            (table,) = layer.get_weights()
            table[ids] = theirs[0]
            layer.set_weights([table])
        elif layer.name == "logits":
            kernel, bias = layer.get_weights()
            kernel[:, ids], bias[ids] = theirs
            layer.set_weights([kernel, bias])
        else:
            layer.set_weights(theirs)


def check_start(corpus_path: Path, checkpoint_dir, run: Optional[str], model_options: dict, train_options: dict,
                resume: bool, overwrite: bool, init_from: Optional[str | Path] = None) -> None:
    """Refuse what train() would refuse before it reads the corpus: the command line asks before it writes the
    built-in corpus into the current directory."""
    run_dir = _checked_run_and_options(corpus_path, checkpoint_dir, run, model_options, train_options)
    _init_source(init_from, checkpoint_dir, run_dir, model_options)
    check_run_dir(run_dir, resume, overwrite, corpus_path, named=run is not None)


def _session(model_config: ModelConfig, config: TrainConfig, strategy) -> Session:
    """The run's Session; a model too large for this machine's memory is refused in one line."""
    import tensorflow as tf

    from textgen.fast_lstm import gpu_visible

    too_large = TextgenError(f"the model ({model_config.parameter_count():,} parameters) does not fit in this "
                             "machine's memory; use a smaller --units, --layers or --embedding-dim")
    # Its weights, their gradients and Adam's two moments, in float32, at the least: a model past the machine's
    # memory was found so only after a minute and more of swapping, allocating it. (On a GPU they live in its memory.)
    memory = None if gpu_visible() else _physical_memory()
    if memory is not None and 16 * model_config.parameter_count() > memory:
        raise too_large
    try:
        return Session(model_config, config, strategy)
    except (tf.errors.ResourceExhaustedError, MemoryError):
        raise too_large from None


def _physical_memory() -> Optional[int]:
    """This machine's memory in bytes, where the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _checked_call(resume, overwrite, tensorboard, strategy, callbacks) -> tuple:
    """Refuse what the options of train() cannot mean (a library caller may pass anything: overwrite="no" must not
    replace a run); return the callbacks as a tuple (None is none)."""
    from textgen.distribute import check_strategy

    for name, value in (("resume", resume), ("overwrite", overwrite), ("tensorboard", tensorboard)):
        check_flag(name, value)
    check_strategy(strategy)
    callbacks = () if callbacks is None else callbacks
    if isinstance(callbacks, cb.Callback) or not isinstance(callbacks, Sequence):
        raise OptionError(f"callbacks must be a list of textgen.callbacks.Callback objects, got {callbacks!r}")
    for callback in callbacks:
        if not isinstance(callback, cb.Callback):
            raise OptionError(f"callbacks must be textgen.callbacks.Callback objects, got {callback!r}")
    return tuple(callbacks)


def _resumed_meta(run_dir: Path) -> CheckpointMeta:
    """The last checkpoint's metadata; when it is damaged but the best one's is not, the refusal does not advise
    deleting the run or --overwrite, which would throw the best checkpoint away with it."""
    try:
        return checkpoint.read_meta(run_dir, "last")
    except checkpoint.UnreadableMeta as damaged:
        try:
            best = checkpoint.read_meta(run_dir, "best")
        except TextgenError:
            best = None
        if best is None:
            raise
        raise TextgenError(f"cannot resume: {damaged.problem}; the run's best checkpoint "
                           f"({best.state.checkpoint_epoch()}) is intact: sample from it, or train a new run with "
                           "--run NAME") from None


def _run_training(corpus_path: Path, run_dir: Path, cache_dir: Path, model_options: dict, train_options: dict,
                  resume: bool, tensorboard: bool, gate, log: Callable[[str], None],
                  extra_callbacks: Sequence[cb.Callback], source: Optional[Path] = None,
                  patience_ends: bool = False) -> dict:
    from textgen.distribute import check_batch_size, gpu_text, is_chief, lost_worker

    writes = is_chief(gate.strategy_name)
    meta = _resumed_meta(run_dir) if resume else None
    if writes and (size := corpus_path.stat().st_size) >= LARGE_CORPUS_BYTES:  # (seconds with nothing said)
        log(f"reading {corpus_path} ({size / 1e6:,.0f} MB)")
    stamp = fingerprint(corpus_path)
    text_changed = meta is not None and not same_text(stamp, meta.corpus)
    if meta is not None:  # refuse a mismatch before the corpus cache is rewritten
        model_config, config = _resolve_configs(meta, scan(corpus_path)[1] if text_changed else meta.vocab,
                                                model_options, train_options, corpus_path,
                                                patience_ends=patience_ends and not text_changed)
    replaces = writes and meta is None and checkpoint.has_checkpoint(run_dir)  # --overwrite (only the chief writes)
    data = load_corpus(corpus_path, cache_dir, progress=_encoding_progress(writes), stamp=stamp,
                       new_cache_dir=run_dir / STAGED_CACHE if replaces else None)
    if not writes:  # another worker's cache, mapped: its files can go now. Ctrl-C while joining the cluster ends the
        # process without cleaning up (distribute._joining_the_cluster); each left the whole corpus encoded in /tmp
        for name in CACHE_FILES:
            with contextlib.suppress(OSError):
                (cache_dir / name).unlink()
    if meta is not None and data.vocab != meta.vocab:
        # Fewer characters than the checkpoint's (an edited corpus; or the same file read without the byte-order
        # mark an earlier textgen kept): saved with their own vocabulary, the ids would not be the model's.
        _check_vocabulary(meta, data.vocab, corpus_path)
        data = _in_vocabulary(data, meta.vocab)
    strategy = gate.open()  # before any TensorFlow op, sizing's timing included
    own_characters = data.vocab  # (not those an --init-from run adds)
    started = None
    if source is not None:
        source_model, source_meta, data, model_options = _started_from(source, data, model_options, log)
        started = dict(run=str(source.resolve()), kind=source_meta.kind, epoch=source_meta.state.epoch,
                       step_in_epoch=source_meta.state.step_in_epoch, corpus=source_meta.corpus["path"])
    sizing_reason, sized_batch = None, False
    if meta is None:
        if train_options.get("max_minutes") and "epochs" not in train_options:  # the minutes are the run's length
            train_options = {**train_options, "epochs": 0}
        given_batch = "batch_size" in train_options
        shape_given = any(name in model_options for name in sizing.SHAPE_OPTIONS)
        model_options, train_options, sizing_reason = _sized(data, model_options, train_options, strategy,
                                                             source.name if source is not None else None)
        sized_batch = sizing_reason is not None and not given_batch
        model_config, config = _resolve_configs(None, data.vocab, model_options, train_options)
    train_ids, val_ids = split_validation(data.ids, config.val_fraction, validation_cap(config))
    _check_lengths(corpus_path, train_ids, val_ids, config, sized_batch, resuming=meta is not None,
                   replicas=strategy.num_replicas_in_sync)
    if sizing_reason:
        log(sizing_reason)
    check_batch_size(config.batch_size, strategy.num_replicas_in_sync, resuming=meta is not None)
    session = _session(model_config, config, strategy)
    parameters = model_config.parameter_count()
    if meta is None and source is None and (shape_given or config.size == "fixed") and \
            sizing.memorises(parameters, len(train_ids)):  # --size auto's choice says so itself
        log(f"note: {parameters:,} parameters for {len(train_ids):,} training characters "
            f"({parameters / len(train_ids):,.0f} per character): the model will tend to learn this text by heart; "
            "--size auto without --layers, --units or --embedding-dim chooses a shape for it")
    if meta is None and "\r" in own_characters:  # kept as it is, like every character: the samples mixed \r\n and \n
        log(f"note: {corpus_path.name} has carriage returns (\\r: Windows or old Mac line ends), which the model "
            "learns as a character of their own, so its samples will have them too; for plain line ends, convert the "
            f"file first ({plain_line_ends_command(corpus_path)}) and train again with --overwrite")
    if meta is None and len(unseen := only_in_validation(train_ids, val_ids, len(data.vocab))):
        chars = [data.vocab.chars[i] for i in unseen]
        one = len(chars) == 1
        log(f"note: {counted(len(chars), 'character')} of {corpus_path.name} {'comes' if one else 'come'} only in its "
            f"validation part (its last {len(val_ids):,} characters), so the model never trains on "
            f"{'it' if one else 'them'}: {quoted_first(chars)}; it will seldom write {'it' if one else 'them'}, and "
            "reads a prime that holds one as noise")
    if meta is None and "\ufeff" in own_characters:  # (the one at the file's start is dropped as it is read)
        log(f"note: {corpus_path.name} has byte order marks (U+FEFF) after its start, as a cat of files saved on "
            "Windows has, which the model learns as an invisible character and will write in its samples (in code, a "
            f"syntax error); remove them first ({no_byte_order_marks_command(corpus_path)}) and train again with "
            "--overwrite")
    run = Run(session=session, config=config, model_config=model_config, vocab=data.vocab,
              corpus=dict(path=str(corpus_path.resolve()), length=len(data.ids), **data.fingerprint),
              corpus_path=corpus_path, run_dir=run_dir,
              train_batches=StreamBatches(train_ids, config.batch_size, config.seq_length),
              val_batches=StreamBatches(val_ids, config.batch_size, config.seq_length),
              state=meta.state if meta is not None else RunState(run_id=secrets.token_hex(4), started_from=started),
              writes=writes, log=log,
              replaces=replaces, has_saved=meta is not None)
    if meta is not None:
        session.restore(run_dir, meta)
        for row in run.state.history:  # an older textgen's rows: trained on the checkpoint's text, as far as it knows
            row.setdefault("text", checkpoint.text_of(meta.corpus))
        log(f"resuming {run_dir} {run.state.position()}{gpu_text(session.strategy)}")
        if text_changed:
            _restart_best_on_changed_text(run, meta)
        _log_option_changes(run, meta)  # after a restarted epoch, whose start the schedule's note measures from
    else:
        if source is not None:
            _copy_weights(source_model, source_meta.vocab, session.model, data.vocab)
            del source_model  # (its memory, for the hours of training)
        replicas = session.strategy.num_replicas_in_sync
        log(f"training {run_dir}: {len(train_ids):,} training and {len(val_ids):,} validation characters, "
            f"vocabulary {len(data.vocab):,}, {session.model.count_params():,} parameters, "
            f"{len(run.train_batches)} steps per epoch" + (f", {replicas} replicas" if replicas > 1 else "")
            + gpu_text(session.strategy))
        if replaces:  # said before the minutes it trains: the user learns what goes while Ctrl-C still keeps it
            log(f"note: --overwrite: {_earlier_run(run_dir)} goes when this run saves its first checkpoint (Ctrl-C or "
                "a stop before then, in its first minute, keeps it)")
    if writes and (note := mixed_precision_note(config.mixed_precision, model_config.units, session.precision)):
        log(note)
    with stop_on_signals() as signals:
        run.signals = signals
        reports = [cb.ProgressBar(), cb.Pace(), cb.Reports(), *([cb.TensorBoard()] if tensorboard else []),
                   cb.EpochLog()]
        try:
            stopped = fit(run, [cb.LossGuard(), *extra_callbacks, cb.StopRequests(), cb.Checkpointer(),
                                *(reports if writes else []), cb.Patience()])
        except Exception as error:
            if (reason := lost_worker(session.strategy, error)) is None:
                raise
            raise _lost_worker_error(reason, run) from None
        except KeyboardInterrupt as error:  # the second signal, raised by stop_on_signals's handler mid-step
            if isinstance(error, Interrupted) or not signals:
                raise
            if run.writes:  # a save cut short leaves its weights (41 MB in a practitioner's run) named by no metadata
                checkpoint.remove_unreferenced(run.run_dir)
            raise _aborted(run, signals[-1]) from None
    state = run.state
    if state.global_step == 0:  # a callback's stop before the first step: no checkpoint (a new run's folder goes)
        raise TextgenError(f"training stopped before its first step ({stopped}); nothing was saved"
                           + (" and the earlier run is kept" if run.replaces else ""))
    best = state.best_val_loss
    rows = _rows_of_this_text(state)
    best_row = min(rows, key=lambda row: row["val_loss"]) if rows else None
    at = f" at epoch {best_row['epoch']}" if best_row is not None and best_row["val_loss"] == best else ""
    log(f"stopped: {stopped}; best validation loss "
        + (f"{best:.4f} nats ({bpc(best):.3f} bpc){at}" if best is not None else "not measured yet")
        + f"; checkpoints in {run_dir}")
    if (note := _how_validation_ended(rows, stopped, config, best)) is not None:
        log(note)
    return dict(run_dir=run_dir, epoch=state.epoch, best_val_loss=best, stopped=stopped, history=state.history,
                model=session.model, train_loss=state.train_loss, val_loss=state.val_loss)


STILL_IMPROVING = 0.01  # a last epoch that lowered the validation loss by more than this share: the run was too short
GOT_WORSE = 0.02  # a last validation this share above the best, 3 or more epochs after it: the model learned its
# training text by heart (dropout and weight decay keep a model from it, the best checkpoint is kept regardless)


def _rows_of_this_text(state: RunState) -> list[dict]:
    """The history's validated rows since the run's text last changed (its best checkpoint started over then)."""
    rows = [row for row in state.history if row.get("val_loss") is not None]
    return [row for row in rows if row.get("text") == rows[-1].get("text")] if rows else []


def _how_validation_ended(rows: list[dict], stopped: str, config: TrainConfig,
                          best_val_loss: Optional[float]) -> Optional[str]:
    """A note on what the validation losses say of the run's length (a songwriter's run went on 13 epochs past its
    best, another was still improving at its end, and neither was said): None when they say nothing, or when the
    best checkpoint is not the best row's (a stop mid-epoch saved it, and the resumed epoch's row replaced its row)."""
    if len(rows) < 2 or min(row["val_loss"] for row in rows) != best_val_loss:
        return None
    last, before = rows[-1], rows[-2]
    best = min(rows, key=lambda row: row["val_loss"])
    if last["epoch"] - best["epoch"] >= 3 and last["val_loss"] > best["val_loss"] * (1 + GOT_WORSE) \
            and not config.patience:
        return (f"note: validation got worse after epoch {best['epoch']} ({best['val_bpc']:.3f} bpc, then "
                f"{last['val_bpc']:.3f} at the end): from there the model learned its training text by heart; "
                f"sampling uses epoch {best['epoch']}'s checkpoint, the best, and --patience 3 stops a run once "
                "validation stops improving")
    length = "--epochs" if stopped.endswith(" done") else "--max-minutes" if stopped.startswith("time budget") else None
    if best is last and length and before["val_loss"] - last["val_loss"] > STILL_IMPROVING * last["val_loss"]:
        return (f"note: validation was still improving at the end ({before['val_bpc']:.3f}, then "
                f"{last['val_bpc']:.3f} bpc): a longer run would likely write better text; train on with --resume "
                f"and a larger {length}")
    return None


def _earlier_run(run_dir: Path) -> str:
    """What an --overwrite training replaces: "the earlier run (8 epochs on novel.txt, best 1.902 bpc)"."""
    try:
        meta = checkpoint.read_meta(run_dir, "last") or checkpoint.read_meta(run_dir, "best")
    except checkpoint.CheckpointTooNew:  # intact, and another textgen's: worth a second thought
        return "the earlier run (written by a newer textgen)"
    except TextgenError:  # (a damaged run is what --overwrite is for)
        meta = None
    if meta is None:
        return "the earlier run (its checkpoints)"
    best = meta.state.best_val_loss
    return (f"the earlier run ({counted(meta.state.epoch, 'epoch')} on {Path(meta.corpus['path']).name}"
            + (f", best {bpc(best):.3f} bpc)" if best is not None else ")"))


def _aborted(run: Run, signum: int) -> Interrupted:
    """A second signal stops the training at once, mid-step: what it leaves is the run's last save (click alone said
    "aborted")."""
    aborted = f"aborted by a second {signal.Signals(signum).name}"
    if not run.has_saved:  # (a new run's folder goes with the lock)
        kept = f", and the earlier run in {run.run_dir} is kept as it was" if run.replaces else ""
        return Interrupted(f"{aborted} before the run's first checkpoint: nothing was saved{kept}", signum)
    told = f"{aborted}: the training since the run's last checkpoint{_last_position(run)} in {run.run_dir} is lost"
    command, call = run.resume_advice()
    return Interrupted(f"{told}; resume with: {command}", signum, f"{told}; resume with: {call}")


def _save_failed(run: Run, reason: str) -> TextgenError:
    """A save refused after the run's first (a disk filled during an epoch): which checkpoint the run goes back to,
    so that the user knows what the failure cost (it said only "the previous checkpoint is kept")."""
    told = (f"could not save the checkpoint in {run.run_dir}: {reason}; the run's last checkpoint"
            f"{_last_position(run)} is kept and the training since it is lost")
    command, call = run.resume_advice()
    error = TextgenError(f"{told} (free some space or fix the directory, then resume with: {command})")
    error.python_message = f"{told} (free some space or fix the directory, then resume with: {call})"
    return error


def _last_position(run: Run) -> str:
    """Where the run's last checkpoint stands, " (in epoch 5, after step 12)", or "" where it cannot be read."""
    last = _readable_last(run.run_dir) if run.writes else None
    return f" ({last.state.position()})" if last is not None else ""


def _readable_last(run_dir: Path) -> Optional[CheckpointMeta]:
    """The run's last checkpoint's metadata, or None where it is missing or cannot be read (an error's advice)."""
    try:
        return checkpoint.read_meta(run_dir, "last")
    except TextgenError:
        return None


def _lost_worker_error(reason: str, run: Optional[Run] = None) -> TextgenError:
    """Why a multi-worker run stopped when another worker did, and how to go on, for the command line and (its
    python_message) for the Python API; run: None when training had not started."""
    lost = f"another worker of the cluster stopped or cannot be reached ({reason}), so this one stops too"
    if run is None or not run.has_saved:  # (after --overwrite, resuming would continue the earlier run)
        saved = "" if run is None else "nothing of this run was saved: "
        error = TextgenError(f"{lost}; {saved}start every worker again with the same command")
        error.python_message = f"{lost}; {saved}call textgen.train the same way again on every worker"
        return error
    command, call = run.resume_advice()
    kept = f"the run's last checkpoint is kept in {run.run_dir}" if run.writes else \
        "the chief worker keeps the run's checkpoints"
    error = TextgenError(f"{lost}; {kept}: start every worker again with: {command}")
    error.python_message = f"{lost}; {kept}: on every worker, call {call}"
    return error


def _restart_best_on_changed_text(run: Run, meta: CheckpointMeta) -> None:
    """A run resumed on a corpus whose text changed (more lyrics appended, another novel with the same
    characters) validates on another text, so its best loss so far is no yardstick: the best checkpoint
    starts over at the next validation, and --patience counts from here."""
    before, now = meta.corpus, run.corpus
    state = run.state
    state.best_val_loss, state.best_epoch = None, state.epoch
    restarted = ""
    if state.step_in_epoch:  # its steps were counted on the other text (fit resets the LSTM state at step 0)
        state.step_in_epoch, state.epoch_loss_sum = 0, 0.0
        restarted = f"; epoch {state.epoch + 1} starts again on it"
    length = before.get("length", 0)
    counts = f"{length:,} characters, now {now['length']:,}" if length != now["length"] else \
        f"{length:,} characters as before, not all the same"
    what = (f"the corpus {now['path']} has changed since this run's checkpoint ({counts})"
            if before.get("path") == now["path"] else
            f"the corpus is not the one of this run's checkpoint ({counts}; it was {before.get('path')})")
    run.log(f"{what}: validation measures the new text, so the best checkpoint starts over and best.json is "
            f"replaced at the next validation{restarted}")


def _sized(data, model_options: dict, train_options: dict, strategy,
           shape_from: Optional[str] = None) -> tuple[dict, dict, Optional[str]]:
    """The options of a new run with what --size auto chooses added (the user's own options win), and the
    line that says why (None when nothing was chosen)."""
    from textgen.distribute import worker_mean

    config = TrainConfig(**train_options)
    if config.size != "auto":
        return model_options, train_options, None
    measured = sizing.calibrated_speed(config, len(data.vocab))

    def agreed_speed(shape, batch) -> float:  # every worker decides on the same numbers, so chooses the same model
        return worker_mean(strategy, measured(shape, batch))[0]

    train_chars = training_length(len(data.ids), config.val_fraction, validation_cap(config))
    chosen = sizing.choose(train_chars, len(data.vocab), config, model_options, train_options, agreed_speed,
                           val_chars=len(data.ids) - train_chars, replicas=strategy.num_replicas_in_sync,
                           shape_from=shape_from)
    return chosen.model_options, chosen.train_options, chosen.reason


def options_changed(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The training options in effect under config whose values differ from a checkpoint's (saved)."""
    return [field.name for field in dataclasses.fields(config)
            if config.in_effect(field.name) and getattr(saved, field.name) != getattr(config, field.name)]


def _log_option_changes(run: Run, meta: CheckpointMeta) -> None:
    """Say which options in effect a resume changed for the rest of the run (the layout and the seed cannot change),
    and how a new length re-stretches the cosine schedule."""
    config, saved = run.config, meta.training

    def shown(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    # "--name new (was old)": the Python API spells "name=new (was old)"
    if others := ", ".join(f"{option_flag(name)} {shown(getattr(config, name))} (was {shown(getattr(saved, name))})"
                           for name in options_changed(saved, config)):
        run.log(f"resuming with other options for the rest of the run: {others}")
    new_length = (saved.epochs, saved.max_minutes) != (config.epochs, config.max_minutes)
    if config.lr_schedule == "cosine" and new_length:
        before, after = f"{run.learning_rate(saved):.3g}", f"{run.learning_rate(config):.3g}"
        if before != after:  # (early in a run both are the peak: "goes from 0.003 to 0.003")
            run.log(f"note: the run's new length re-stretches the cosine schedule: the learning rate goes from "
                    f"{before} to {after}")


def _encoding_progress(enabled: bool) -> Callable[[int, int], None]:
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or progress_bar(total, "encoding the corpus", unit="char", enabled=enabled and total > 5_000_000,
                           warm_up=False)
        bar(done)
    return update
