"""train(): fit the stateful char-LSTM on a corpus, with validation, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from textgen import checkpoint, report
from textgen.batching import StreamBatches
from textgen.config import LAYOUT_OPTIONS, ModelConfig, TrainConfig
from textgen.corpus import check_readable, fingerprint, load_corpus, scan
from textgen.errors import TextgenError
from textgen.evaluation import bpc, stream_loss, window_loss_sum
from textgen.progress import progress_bar
from textgen.runs import check_run_name, default_run_name
from textgen.vocab import Vocabulary


logger = logging.getLogger("textgen")


class Interrupted(TextgenError):
    """Training stopped by a signal after saving; the exit code is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stop_on_signals():
    """Turn the first SIGINT/SIGTERM into a request checked between steps; a second one aborts at once."""
    requested: list[int] = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        logger.warning(f"\nsignal {signal.Signals(signum).name}: finishing this step and saving (press again to abort)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(len(ids) * val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def _check_lengths(corpus_path: Path, train_ids, val_ids, config: TrainConfig) -> None:
    need = StreamBatches.min_length(config.batch_size, config.seq_length)
    shortest = min(len(train_ids), len(val_ids))
    if shortest >= need:
        return
    part = "validation slice" if len(val_ids) < len(train_ids) else "training part"
    seq = min(config.seq_length, max(1, shortest - 1))
    batch = max(1, min(config.batch_size, (shortest - 1) // seq))
    total = math.ceil(need / min(config.val_fraction, 1 - config.val_fraction))
    raise TextgenError(
        f"corpus {corpus_path} is too short for --batch-size {config.batch_size} --seq-length {config.seq_length}: "
        f"its {part} has {shortest:,} characters but one batch needs {need:,}; use a corpus of at least "
        f"{total:,} characters or smaller values such as --batch-size {batch} --seq-length {seq}"
    )


def _resolve_configs(meta: Optional[dict], vocab: Vocabulary, model_options: dict,
                     train_options: dict) -> tuple[ModelConfig, TrainConfig]:
    if meta is None:
        model_config = ModelConfig(vocab_size=len(vocab), **model_options)
        train_config = TrainConfig(**train_options)
    else:
        saved_vocab = Vocabulary.from_json(meta["vocab"])
        if saved_vocab != vocab:
            added = "".join(sorted(set(vocab.chars) - set(saved_vocab.chars)))
            missing = "".join(sorted(set(saved_vocab.chars) - set(vocab.chars)))
            raise TextgenError(
                f"cannot resume: the corpus vocabulary differs from the checkpoint's "
                f"(new characters {added!r}, missing characters {missing!r}); train a new run with --run NAME")
        model_config = ModelConfig.from_dict(meta["model"])
        saved_training = TrainConfig.from_dict(meta["training"])
        differences = [f"--{key.replace('_', '-')} {value} (checkpoint has {getattr(model_config, key)})"
                       for key, value in model_options.items() if getattr(model_config, key) != value]
        differences += [f"--{key.replace('_', '-')} {value} (checkpoint has {getattr(saved_training, key)})"
                        for key, value in train_options.items()
                        if key in LAYOUT_OPTIONS and getattr(saved_training, key) != value]
        if differences:
            raise TextgenError("cannot resume with a different model or data layout: " + "; ".join(differences)
                               + "; drop these options or train a new run with --run NAME")
        train_config = dataclasses.replace(saved_training, **train_options)
    model_config.validate()
    train_config.validate()
    return model_config, train_config


COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of --learning-rate


def learning_rate_for(config: TrainConfig, epoch: int, run_fraction: float = 0.0) -> float:
    """The learning rate for a step in ``epoch`` (0-based), ``run_fraction`` of the way through the run.

    "step" is the classic char-rnn schedule: constant, then multiplied by lr_decay every epoch after
    lr_decay_after. "cosine" falls smoothly from learning_rate to 1% of it at the end of the run.
    """
    if config.lr_schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, run_fraction))))
        return config.learning_rate * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * shape)
    return config.learning_rate * config.lr_decay ** max(0, epoch - config.lr_decay_after + 1)


def run_fraction(config: TrainConfig, global_step: int, steps_per_epoch: int, elapsed_seconds: float) -> float:
    """How far through the run training is: by steps out of --epochs, or by time out of --max-minutes
    when that budget is set and runs out first (so a time-boxed run anneals by its deadline)."""
    fraction = global_step / (config.epochs * steps_per_epoch)
    if config.max_minutes:
        fraction = max(fraction, elapsed_seconds / (config.max_minutes * 60))
    return min(1.0, fraction)


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    exists = checkpoint.has_checkpoint(run_dir)
    if resume and overwrite:
        raise TextgenError("--resume and --overwrite contradict each other; choose one")
    if resume and not exists:
        raise TextgenError(f"nothing to resume: no checkpoint in {run_dir} (train without --resume to start)")
    if exists and not (resume or overwrite):
        raise TextgenError(f"run {run_dir.name!r} already has checkpoints in {run_dir}: pass --resume to continue "
                           "it, --overwrite to replace it, or --run NAME to start another run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise TextgenError(f"cannot write to the checkpoint directory {run_dir} ({error.strerror}); "
                           "choose a writable --checkpoint-dir") from None


class _Session:
    """The TensorFlow side of a run: model, optimizer and compiled steps under a tf.distribute strategy."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, strategy=None):
        import keras
        import tensorflow as tf

        from textgen.distribute import check_batch_size, replica_rows
        from textgen.model import build_model, lstm_layers

        self.strategy = strategy = strategy or tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        check_batch_size(train_config.batch_size, replicas)
        self.per_replica = train_config.batch_size // replicas
        keras.utils.set_random_seed(train_config.seed)
        with strategy.scope():
            self.model = build_model(model_config, self.per_replica,
                                     matmul_dtype="bfloat16" if uses_mixed_precision(train_config) else "float32")
            self.optimizer = keras.optimizers.Adam(train_config.learning_rate,
                                                   weight_decay=train_config.weight_decay or None)
            self.optimizer.exclude_from_weight_decay(var_names=["bias"])
            self.optimizer.build(self.model.trainable_variables)
        self.lstms = lstm_layers(self.model)
        model, optimizer, global_batch = self.model, self.optimizer, train_config.batch_size
        clip_norm = train_config.clip_norm

        def replica_train(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                per_stream = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), axis=1)
                loss = tf.nn.compute_average_loss(per_stream, global_batch_size=global_batch)
            # Dense: the embedding's sparse gradient is small (V x E) and this keeps the arithmetic simple.
            gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
            # Clip the summed gradient of all replicas, as one device would (Keras clips per replica),
            # then hand each replica 1/R of it: the optimizer sums the replicas' gradients again.
            context = tf.distribute.get_replica_context()
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
            gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
            optimizer.apply_gradients(
                zip([g / context.num_replicas_in_sync for g in gradients], model.trainable_variables))
            return loss

        def replica_loss_sum(x, y):
            return window_loss_sum(model, x, y)

        @tf.function
        def train_step(x, y):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_train, args=(x, y)), axis=None)

        @tf.function
        def loss_sum_step(x, y):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_loss_sum, args=(x, y)),
                                   axis=None)

        self.train_step = lambda x, y: train_step(replica_rows(strategy, x), replica_rows(strategy, y))
        self.loss_sum = lambda x, y: loss_sum_step(replica_rows(strategy, x), replica_rows(strategy, y))

    def lstm_states(self) -> dict[str, np.ndarray]:
        """Every layer's (h, c) for all B streams: the replicas' rows put back in order."""
        return {f"lstm_{i}_{j}": np.concatenate([np.asarray(part) for part in
                                                 self.strategy.experimental_local_results(v)])
                for i, layer in enumerate(self.lstms) for j, v in enumerate(layer.states)}

    def set_lstm_states(self, states: dict[str, np.ndarray]) -> None:
        import tensorflow as tf

        per_replica = self.per_replica

        def assign(variable, rows):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            variable.assign(tf.convert_to_tensor(rows)[replica * per_replica:(replica + 1) * per_replica])

        for i, layer in enumerate(self.lstms):
            for j, variable in enumerate(layer.states):
                self.strategy.run(assign, args=(variable, states[f"lstm_{i}_{j}"]))

    def reset_states(self) -> None:
        from textgen.model import reset_states

        reset_states(self.model)

    def training_state(self, lstm_states: Optional[dict] = None) -> dict[str, np.ndarray]:
        """Optimizer slots, RNG state (model non-trainables) and the carried LSTM state."""
        state = {f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)}
        state.update({f"model_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.non_trainable_variables)})
        state.update(lstm_states or self.lstm_states())
        return state

    def restore(self, run_dir: Path, meta: dict) -> None:
        self.model.load_weights(str(checkpoint.verified_file(run_dir, meta, "weights")))
        with np.load(checkpoint.verified_file(run_dir, meta, "state")) as state:
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(state[f"optimizer_{i}"])
            for i, variable in enumerate(self.model.non_trainable_variables):
                variable.assign(state[f"model_{i}"])
            states = {name: state[name] for name in state.files if name.startswith("lstm_")}
            # At an epoch boundary the state is reset anyway. A multi-worker chief saves only its own
            # replicas' rows: those streams then restart from a zero state (one window's worth of context).
            rows = self.per_replica * self.strategy.num_replicas_in_sync
            if meta["step_in_epoch"] and all(len(value) == rows for value in states.values()):
                self.set_lstm_states(states)


def train(corpus: str | Path, checkpoint_dir: str | Path = "checkpoints", run: Optional[str] = None,
          model_options: Optional[dict] = None, train_options: Optional[dict] = None,
          resume: bool = False, overwrite: bool = False, tensorboard: bool = False, strategy: str = "auto",
          log: Callable[[str], None] = logger.info) -> dict:
    """Train on the text file corpus into checkpoint_dir/run (run defaults to the corpus file's name).

    model_options and train_options hold only the values the user chose (ModelConfig / TrainConfig
    field names); the rest come from the defaults, or from the checkpoint when resuming. Each epoch
    also rewrites run_dir/history.csv and run_dir/curve.png (and TensorBoard logs if asked).
    strategy is one of textgen.distribute.STRATEGIES; under multi-worker only the chief writes.
    Returns a summary: run_dir, epoch, train_loss, val_loss, best_val_loss (nats), stopped, history,
    and the trained model (at the training batch size, per replica)."""
    from textgen.distribute import is_chief

    corpus_path = Path(corpus)
    run_dir = Path(checkpoint_dir) / check_run_name(run or default_run_name(corpus_path))
    model_options, train_options = dict(model_options or {}), dict(train_options or {})
    ModelConfig(vocab_size=1, **model_options).validate()
    TrainConfig(**train_options).validate()
    check_readable(corpus_path)
    chief = is_chief(strategy)
    if not chief:  # other workers read the chief's checkpoints and keep their corpus cache to themselves
        with tempfile.TemporaryDirectory(prefix="textgen-worker-") as cache_dir:
            return _run_training(corpus_path, run_dir, Path(cache_dir), model_options, train_options, resume,
                                 False, strategy, lambda message: None)
    _prepare_run_dir(run_dir, resume, overwrite)
    with checkpoint.RunLock(run_dir):
        return _run_training(corpus_path, run_dir, run_dir, model_options, train_options, resume, tensorboard,
                             strategy, log)


def _run_training(corpus_path: Path, run_dir: Path, cache_dir: Path, model_options: dict, train_options: dict,
                  resume: bool, tensorboard: bool, strategy_name: str, log: Callable[[str], None]) -> dict:
    from textgen.distribute import is_chief, make_strategy, worker_mean

    writes = is_chief(strategy_name)
    meta = checkpoint.read_meta(run_dir, "last") if resume else None
    stamp = fingerprint(corpus_path)
    if meta is not None:  # refuse a mismatch before the corpus cache is rewritten
        changed = stamp != {key: meta["corpus"].get(key) for key in ("size", "mtime_ns", "blake2b")}
        vocab = scan(corpus_path)[1] if changed else Vocabulary.from_json(meta["vocab"])
        _resolve_configs(meta, vocab, model_options, train_options)
    data = load_corpus(corpus_path, cache_dir, progress=_encoding_progress(writes), stamp=stamp)
    model_config, config = _resolve_configs(meta, data.vocab, model_options, train_options)
    train_ids, val_ids = _split(data.ids, config.val_fraction)
    _check_lengths(corpus_path, train_ids, val_ids, config)
    train_batches = StreamBatches(train_ids, config.batch_size, config.seq_length)
    val_batches = StreamBatches(val_ids, config.batch_size, config.seq_length)

    session = _Session(model_config, config, make_strategy(strategy_name))
    if meta is not None:
        session.restore(run_dir, meta)
    progress = dict(run_id=secrets.token_hex(4), epoch=0, step_in_epoch=0, global_step=0, chars_seen=0,
                    epoch_loss_sum=0.0, best_val_loss=None, best_epoch=0, history=[], elapsed_seconds=0.0)
    if meta is not None:
        progress.update({key: meta[key] for key in progress})
        log(f"resuming {run_dir} at epoch {meta['epoch']}"
            + (f", step {meta['step_in_epoch']}" if meta["step_in_epoch"] else ""))
        saved = TrainConfig.from_dict(meta["training"])
        if config.lr_schedule == "cosine" and (saved.epochs, saved.max_minutes) != (config.epochs, config.max_minutes):
            before, after = (learning_rate_for(c, 0, run_fraction(c, progress["global_step"], len(train_batches),
                                                                   progress["elapsed_seconds"]))
                             for c in (saved, config))
            log(f"note: the run's length changed (--epochs {saved.epochs} -> {config.epochs}, --max-minutes "
                f"{saved.max_minutes:g} -> {config.max_minutes:g}), so the cosine schedule is re-stretched: the "
                f"learning rate goes from {before:.3g} to {after:.3g}")
    else:
        replicas = session.strategy.num_replicas_in_sync
        log(f"training {run_dir}: {len(train_ids):,} training and {len(val_ids):,} validation characters, "
            f"vocabulary {len(data.vocab)}, {session.model.count_params():,} parameters, "
            f"{len(train_batches)} steps per epoch" + (f", {replicas} replicas" if replicas > 1 else ""))

    if writes and (note := _mixed_precision_note(config.mixed_precision)):
        log(note)
    base_meta = dict(model=model_config.to_dict(), training=config.to_dict(), vocab=data.vocab.to_json(),
                     corpus=dict(path=str(corpus_path.resolve()), length=len(data.ids), **data.fingerprint))
    explode_limit = 4 * max(math.log(len(data.vocab)), 1.0)
    chars_per_step = config.batch_size * config.seq_length
    started = time.monotonic() - progress["elapsed_seconds"]
    summaries = _summary_writer(run_dir) if tensorboard else None

    def save(kinds, lstm_states=None, **losses):
        progress["elapsed_seconds"] = time.monotonic() - started
        if writes:
            checkpoint.save(run_dir, kinds, dict(base_meta, **progress, **losses), session.model,
                            session.training_state(lstm_states))

    def validate() -> float:
        session.reset_states()
        nats, _ = stream_loss(session.loss_sum, val_batches)
        session.reset_states()
        return nats

    stopped = f"{config.epochs} epochs done"
    last_losses: dict = {}
    with stop_on_signals() as signals:
        while progress["epoch"] < config.epochs:
            epoch = progress["epoch"]
            fraction = run_fraction(config, progress["global_step"], len(train_batches), progress["elapsed_seconds"])
            if progress["step_in_epoch"] == 0:
                session.reset_states()
                progress["epoch_loss_sum"] = 0.0
            bar = progress_bar(len(train_batches), f"epoch {epoch + 1}/{config.epochs}", metrics=("loss", "bpc"),
                               enabled=writes)
            time_up = False
            for step in range(progress["step_in_epoch"], len(train_batches)):
                session.optimizer.learning_rate.assign(learning_rate_for(config, epoch, fraction))
                loss = float(session.train_step(*train_batches[step]))
                if not math.isfinite(loss) or loss > explode_limit:
                    what = "became NaN/Inf" if not math.isfinite(loss) else f"exploded to {loss:.3g} nats"
                    raise TextgenError(
                        f"training stopped at epoch {epoch + 1}, step {step + 1}: the loss {what}; the last good "
                        f"checkpoint in {run_dir} is kept (try a lower --learning-rate, e.g. "
                        f"{config.learning_rate / 4:g}, or a lower --clip-norm)")
                progress.update(step_in_epoch=step + 1, global_step=progress["global_step"] + 1,
                                chars_seen=progress["chars_seen"] + chars_per_step,
                                epoch_loss_sum=progress["epoch_loss_sum"] + loss)
                mean_loss = progress["epoch_loss_sum"] / (step + 1)
                bar(step + 1, loss=mean_loss, bpc=bpc(mean_loss))
                elapsed = time.monotonic() - started
                interrupted, time_up, elapsed = worker_mean(
                    session.strategy, bool(signals), bool(config.max_minutes) and elapsed >= config.max_minutes * 60,
                    elapsed)
                interrupted, time_up = interrupted > 0, time_up > 0
                fraction = run_fraction(config, progress["global_step"], len(train_batches), elapsed)
                if interrupted:
                    save(("last",), train_loss=progress["epoch_loss_sum"] / (step + 1), val_loss=None)
                    raise Interrupted(
                        f"interrupted: saved a resumable checkpoint (epoch {epoch + 1}, step {step + 1}) in "
                        f"{run_dir}; resume with: textgen train {corpus_path} --checkpoint-dir {run_dir.parent} "
                        f"--run {run_dir.name} --resume", signals[0] if signals else signal.SIGTERM)
                if time_up:
                    break
                if config.save_every and progress["global_step"] % config.save_every == 0 \
                        and step + 1 < len(train_batches):
                    save(("last",), train_loss=progress["epoch_loss_sum"] / (step + 1), val_loss=None)
            train_loss = progress["epoch_loss_sum"] / max(1, progress["step_in_epoch"])
            carried = session.lstm_states()  # validation resets the state a mid-epoch resume needs
            val_loss = validate()
            if not time_up:
                progress.update(epoch=epoch + 1, step_in_epoch=0)
            improved = progress["best_val_loss"] is None or val_loss < progress["best_val_loss"]
            if improved:
                progress.update(best_val_loss=val_loss, best_epoch=progress["epoch"])
            seconds = time.monotonic() - started
            progress["history"] = progress["history"] + [dict(
                epoch=epoch + 1, step=progress["global_step"], chars_seen=progress["chars_seen"],
                train_loss=train_loss, train_bpc=bpc(train_loss), val_loss=val_loss, val_bpc=bpc(val_loss),
                learning_rate=float(session.optimizer.learning_rate.numpy()), seconds=round(seconds, 2))]
            last_losses = dict(train_loss=train_loss, val_loss=val_loss)
            save(("last", "best") if improved else ("last",), lstm_states=carried, **last_losses)
            if writes:
                report.write_history(run_dir, progress["history"])
                report.plot_history(run_dir, progress["history"])
                if summaries is not None:
                    _write_summaries(summaries, progress["history"][-1])
            log(f"epoch {epoch + 1}/{config.epochs}: train {train_loss:.4f} nats ({bpc(train_loss):.3f} bpc), "
                f"val {val_loss:.4f} nats ({bpc(val_loss):.3f} bpc){' [best]' if improved else ''}, "
                f"{seconds:.0f} s")
            if time_up:
                stopped = f"time budget of {config.max_minutes:g} minutes reached"
                break
            if config.patience and progress["epoch"] - progress["best_epoch"] >= config.patience:
                stopped = f"no validation improvement for {config.patience} epochs"
                break
    best = progress["best_val_loss"]
    log(f"stopped: {stopped}; best validation loss "
        + (f"{best:.4f} nats ({bpc(best):.3f} bpc)" if best is not None else "not measured yet")
        + f"; checkpoints in {run_dir}")
    return dict(run_dir=run_dir, epoch=progress["epoch"], best_val_loss=best, stopped=stopped,
                history=progress["history"], model=session.model, **last_losses)


def uses_mixed_precision(config: TrainConfig) -> bool:
    """--mixed-precision auto means on where it is native and fast: a CPU with bfloat16 matmul instructions."""
    from textgen import cpu
    from textgen.fast_lstm import gpu_visible

    if config.mixed_precision == "auto":
        return cpu.has_bfloat16_matmul() and not gpu_visible()
    return config.mixed_precision == "on"


def _mixed_precision_note(setting: str) -> Optional[str]:
    """What --mixed-precision does on this machine; a warning where an explicit "on" cannot take effect."""
    from textgen.fast_lstm import gpu_visible

    if setting == "off":
        return None
    if uses_mixed_precision(TrainConfig(mixed_precision="auto")):
        return (f"mixed precision{' (auto)' if setting == 'auto' else ''}: LSTM training matmuls in bfloat16 "
                "(weights, state and validation in float32)")
    if setting == "auto":
        return None
    if gpu_visible():
        return ("note: --mixed-precision on applies to the CPU training path only; on this GPU the cuDNN LSTM "
                "trains in float32")
    return ("note: this CPU has no native bfloat16 matmul (AVX512_BF16 or AMX), so --mixed-precision on is "
            "likely slower here; use --mixed-precision off")


def _summary_writer(run_dir: Path):
    import tensorflow as tf

    return tf.summary.create_file_writer(str(run_dir / "tensorboard"))


def _write_summaries(writer, row: dict) -> None:
    import tensorflow as tf

    with writer.as_default(step=row["chars_seen"]):
        for name in ("train_bpc", "val_bpc", "train_loss", "val_loss", "learning_rate"):
            tf.summary.scalar(name, row[name])
    writer.flush()


def _encoding_progress(enabled: bool) -> Callable[[int, int], None]:
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or progress_bar(total, "encoding the corpus", unit="char", enabled=enabled and total > 5_000_000)
        bar(done)
    return update
