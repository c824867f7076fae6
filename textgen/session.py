"""Session: the model, optimizer and compiled training steps of one run, on a tf.distribute strategy."""

from __future__ import annotations

import contextlib
import functools
import random
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from textgen import checkpoint
from textgen.config import ModelConfig, TrainConfig
from textgen.evaluation import window_loss_sum


@contextlib.contextmanager
def callers_random_state_kept():
    """Python's, NumPy's, TensorFlow's and Keras's global random generators given back as the caller had them:
    training seeds them all (keras.utils.set_random_seed: the same seed, the same run), which reset a notebook's own
    draws. TensorFlow's comes back as its global seed and the place in the sequence of operation seeds it draws
    from (the caller's tf.random draws go on where they were; they started again); Keras's as the caller's seed and
    SeedGenerator (keras.random's draws without a seed go on where they were)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    tensorflow_seed = operation_seeds = None
    if "tensorflow" in sys.modules:  # else it was never set: importing TensorFlow here would slow every refusal
        from tensorflow.python.eager import context

        tensorflow_seed = context.global_seed()
        operation_seeds = _operation_seeds(context.context())
    # (Keras not imported yet: it had no seed, and training's is taken back to none)
    keras_state = _keras_seed_state() if "keras" in sys.modules else dict.fromkeys(_KERAS_SEED_ATTRIBUTES)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if "tensorflow" in sys.modules:
            import tensorflow as tf
            from tensorflow.python.eager import context

            tf.random.set_seed(tensorflow_seed)
            _operation_seeds(context.context(), operation_seeds)
        if "keras" in sys.modules:
            _keras_seed_state(keras_state)


def _operation_seeds(tensorflow_context, restore=None):
    """Where TensorFlow's eager context is in the operation seeds it draws under a global seed (a private
    random.Random; set it back to restore): None where there is none, or this TensorFlow keeps it elsewhere."""
    generator = getattr(tensorflow_context, "_rng", None)
    if not hasattr(generator, "getstate"):
        return None
    if restore is not None:
        generator.setstate(restore)
    return generator.getstate()


_KERAS_SEED_ATTRIBUTES = ("global_random_seed", "global_seed_generator")  # what keras.utils.set_random_seed sets


def _keras_seed_state(restore: Optional[dict] = None) -> dict:
    """Keras's global seed and SeedGenerator (set it back to restore: None when Keras had none), read from its
    private global state: {} where this Keras keeps them elsewhere."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return {}
    for name, value in (restore or {}).items():
        global_state.set_global_attribute(name, value)
    return {name: global_state.get_global_attribute(name) for name in _KERAS_SEED_ATTRIBUTES}


class Session:
    """The TensorFlow side of a run: model, optimizer and compiled steps under a tf.distribute strategy.

    ``train_step(x, y)`` runs one optimizer step on a (batch, seq) window and returns its mean loss;
    ``loss_sum(x, y)`` sums the loss without training (validation). The LSTM state is carried between
    calls; ``lstm_states``/``set_lstm_states``/``reset_states`` read, write and zero it, and
    ``training_state``/``restore`` are what a checkpoint saves and reloads besides the weights."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, strategy=None):
        import keras
        import tensorflow as tf

        from textgen import native_loops
        from textgen.distribute import check_batch_size, replica_rows
        from textgen.fast_lstm import gpu_visible
        from textgen.model import build_model, lstm_layers

        self.strategy = strategy = strategy or tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        check_batch_size(train_config.batch_size, replicas)
        self.per_replica = train_config.batch_size // replicas
        # The LSTM matmuls' operand type, which each epoch's history row records (on a GPU the cuDNN layer runs)
        self.precision = training_precision(train_config, model_config.units, strategy)
        if self.precision == "float32" and not gpu_visible():
            native_loops.library()  # built (the first time on a machine) before the run's clock starts
        with strategy.scope():
            self.model = build_model(model_config, self.per_replica, matmul_dtype=self.precision,
                                     seed=train_config.seed)
            self.optimizer = keras.optimizers.Adam(train_config.learning_rate,
                                                   weight_decay=train_config.weight_decay or None)
            self.optimizer.exclude_from_weight_decay(var_names=["bias"])
            self.optimizer.build(self.model.trainable_variables)
        summed_once = _sum_replicas_once(self.optimizer)
        self.lstms = lstm_layers(self.model)
        self._gather_states = None  # under multi-worker: see lstm_states
        model, optimizer, global_batch = self.model, self.optimizer, train_config.batch_size
        clip_norm = train_config.clip_norm

        def replica_train(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                per_stream = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), axis=1)
                loss = tf.nn.compute_average_loss(per_stream, global_batch_size=global_batch)
            # Dense: the embedding's sparse gradient is small (V x E) and this keeps the arithmetic simple.
            gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
            # Clip the summed gradient of all replicas, as one device would (Keras clips per replica).
            context = tf.distribute.get_replica_context()
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
            gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
            if not summed_once:  # the optimizer sums the replicas' gradients again: hand each 1/R of the sum
                gradients = [g / context.num_replicas_in_sync for g in gradients]
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        def replica_loss_sum(x, y):
            return window_loss_sum(model, x, y)

        @tf.function
        def train_step(x, y):
            with gradients_released():  # (at trace time only)
                losses = strategy.run(replica_train, args=(x, y))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

        @tf.function
        def loss_sum_step(x, y):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_loss_sum, args=(x, y)),
                                   axis=None)

        self.train_step = lambda x, y: train_step(replica_rows(strategy, x), replica_rows(strategy, y))
        self.loss_sum = lambda x, y: loss_sum_step(replica_rows(strategy, x), replica_rows(strategy, y))

    def lstm_states(self) -> dict[str, np.ndarray]:
        """Every layer's (h, c) for all B streams: the replicas' rows put back in order. Under multi-worker, every
        worker must call it (it gathers the other workers' rows)."""
        from textgen.distribute import spans_workers

        # variable.value: the tf.Variable under Keras's wrapper, a MirroredVariable with each replica's rows under a
        # mirrored strategy (the wrapper itself gives one replica's only, and a resume would lose the others).
        variables = [variable.value for layer in self.lstms for variable in layer.states]
        if spans_workers(self.strategy):  # each worker holds its own rows: one compiled gather of all of them
            if self._gather_states is None:  # (strategy.gather traces a new function at every call)
                import tensorflow as tf

                self._gather_states = tf.function(
                    lambda: [self.strategy.gather(variable, axis=0) for variable in variables])
            arrays = [np.asarray(rows) for rows in self._gather_states()]
        else:
            arrays = [np.concatenate([np.asarray(part) for part in self.strategy.experimental_local_results(variable)])
                      for variable in variables]
        names = [f"lstm_{i}_{j}" for i, layer in enumerate(self.lstms) for j in range(len(layer.states))]
        return dict(zip(names, arrays))

    def set_lstm_states(self, states: dict[str, np.ndarray]) -> None:
        import tensorflow as tf

        per_replica = self.per_replica

        def assign(variable, rows):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            variable.assign(tf.convert_to_tensor(rows)[replica * per_replica:(replica + 1) * per_replica])

        for i, layer in enumerate(self.lstms):
            for j, variable in enumerate(layer.states):
                self.strategy.run(assign, args=(variable, states[f"lstm_{i}_{j}"]))

    def weights_finite(self) -> bool:
        """Whether no weight is NaN or infinite."""
        return all(np.isfinite(np.asarray(v.numpy())).all() for v in self.model.trainable_variables)

    def reset_states(self) -> None:
        from textgen.model import reset_states

        reset_states(self.model)

    def carried_state(self) -> dict[str, np.ndarray]:
        """The RNG state (model non-trainables) and the carried LSTM state: what validation changes (it resets the
        LSTM state and its dropout layers draw from the RNG) and a mid-epoch resume needs as training left it."""
        state = {f"model_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.model.non_trainable_variables)}
        return {**state, **self.lstm_states()}

    def training_state(self, carried: Optional[dict] = None) -> dict[str, np.ndarray]:
        """Optimizer slots and the :meth:`carried_state` (taken now, or the one given)."""
        state = {f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)}
        return {**state, **(carried or self.carried_state())}

    def restore(self, run_dir: Path, meta: checkpoint.CheckpointMeta) -> None:
        self.model.load_weights(str(checkpoint.verified_file(run_dir, meta, "weights")))
        with np.load(checkpoint.verified_file(run_dir, meta, "state")) as state:
            for i, variable in enumerate(self.optimizer.variables):
                variable.assign(state[f"optimizer_{i}"])
            for i, variable in enumerate(self.model.non_trainable_variables):
                variable.assign(state[f"model_{i}"])
            states = {name: state[name] for name in state.files if name.startswith("lstm_")}
            # At an epoch boundary the state is reset anyway. A multi-worker chief saved only its own replicas'
            # rows until it gathered every worker's: those streams then restart from a zero state.
            rows = self.per_replica * self.strategy.num_replicas_in_sync
            if meta.state.step_in_epoch and all(len(value) == rows for value in states.values()):
                self.set_lstm_states(states)



# --mixed-precision auto keeps narrower layers in float32: on a Zen 4 (AVX512_BF16), epochs of 1 x 128 and 1 x 256
# took as long or longer in bfloat16 (its loops are not compiled by XLA, the float32 ones are), 1 x 384 and 1 x 512
# 1.3x less time (BENCHMARKS.md, "Mixed precision on CPU").
BFLOAT16_MIN_UNITS = 384
# ... and where bfloat16 multiplies less than this many times faster than float32: AVX512_BF16 alone does not tell.
# oneDNN ran a layer's product 1.6x faster in bfloat16 on a Zen 4 and at 0.55-0.86x float32's speed on an Intel Xeon
# of family 6, model 207 (AMX not exposed), whose training steps ran 1.4-1.7x slower in it (BENCHMARKS.md, "Against
# PyTorch").
BFLOAT16_MIN_SPEEDUP = 1.15
# The product timed: (64, 2U) @ (2U, 4U) at this width. A property of the CPU's kernels more than of the layer, timed
# once per process (~0.2 s): wider products take seconds (2048 units: ~6 s).
BFLOAT16_PROBE_UNITS = 512
_PROBE_LOCK = threading.Lock()  # one timing per process, even when Python users train in threads


def _sum_replicas_once(optimizer) -> bool:
    """Stop Keras's TensorFlow optimizer from summing the replicas' gradients, which the training step has summed
    already (to clip the sum): a second all-reduce of the whole gradient, twice the traffic between the workers of
    a cluster. False where this Keras has no such step to skip: the training step then hands it 1/R of the sum."""
    if not callable(getattr(optimizer, "_all_reduce_sum_gradients", None)):
        return False
    optimizer._all_reduce_sum_gradients = list  # (gradient, variable) pairs, as they come
    return True


def _native_bfloat16() -> bool:
    """Training runs the CPU path on a CPU with bfloat16 matmul instructions (on a GPU the cuDNN layer runs)."""
    from textgen import cpu
    from textgen.fast_lstm import gpu_visible

    return cpu.has_bfloat16_matmul() and not gpu_visible()


def bfloat16_speedup(strategy=None) -> float:
    """How many times faster this CPU multiplies in bfloat16 than in float32; 0 where it has no native bfloat16
    matmul or a GPU trains. Given a multi-worker strategy, the mean over the workers (every worker must call it then),
    so that they all train in the same precision."""
    from textgen import cpu

    speedup = _timed_bfloat16_speedup() if _native_bfloat16() else 0.0
    if strategy is not None:
        from textgen.distribute import worker_mean

        # A worker that bfloat16 would crash (cpu.bfloat16_matmul_crashes) keeps them all in float32
        speedup, crashes = worker_mean(strategy, speedup, float(cpu.bfloat16_matmul_crashes()))
        return 0.0 if crashes else speedup
    return speedup


def _timed_bfloat16_speedup() -> float:
    with _PROBE_LOCK:
        return _probe_bfloat16()


@functools.lru_cache(maxsize=1)
def _probe_bfloat16() -> float:
    """The probe's float32 time over its bfloat16 time."""
    import tensorflow as tf

    from textgen.cpu import matmul_operands, matmul_seconds
    from textgen.lstm_step import GATES

    units = BFLOAT16_PROBE_UNITS
    seconds = matmul_seconds(matmul_operands(64, 2 * units, GATES * units, (tf.float32, tf.bfloat16)), blocks=6)
    return seconds[tf.float32] / seconds[tf.bfloat16]


def uses_mixed_precision(config: TrainConfig, units: int, strategy=None) -> bool:
    """--mixed-precision auto means on where it is native and pays: a CPU with bfloat16 matmul instructions that
    multiplies at least BFLOAT16_MIN_SPEEDUP times faster in bfloat16 than in float32, and LSTM layers of at least
    BFLOAT16_MIN_UNITS units. Under a multi-worker strategy every worker must call it (they agree on the speedup)."""
    if config.mixed_precision == "auto":
        return units >= BFLOAT16_MIN_UNITS and bfloat16_speedup(strategy) >= BFLOAT16_MIN_SPEEDUP
    return config.mixed_precision == "on"


@contextlib.contextmanager
def gradients_released():
    """Around the trace of a step that computes its own gradient: the custom gradients its graph registered (the LSTM
    layers', the all-reduces') leave TensorFlow's global gradient registry when it ends. TensorFlow keeps every one
    for good, and with it the whole traced graph (tensorflow#97697): memory grew ~4 MB at every train() in one
    process. Only this graph's: another thread may be tracing a graph that still needs its own."""
    from tensorflow.python.framework import ops

    graph = ops.get_default_graph()
    try:
        yield
    finally:
        registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
        for op in graph.get_operations() if isinstance(registry, dict) else ():
            if op.type == "IdentityN" and "_gradient_op_type" in op.node_def.attr:  # what tf.custom_gradient adds
                name = op.get_attr("_gradient_op_type").decode()
                if name.startswith("CustomGradient-"):
                    registry.pop(name, None)


def training_precision(config: TrainConfig, units: int, strategy=None) -> str:
    """What the LSTM training matmuls really run in: "bfloat16" under mixed precision, except on a GPU, where the
    stock cuDNN layer runs in float32. Refuses "on" where TensorFlow would crash on bfloat16 (cpu.onednn_cap)."""
    from textgen import cpu
    from textgen.errors import OptionError
    from textgen.fast_lstm import gpu_visible

    if not uses_mixed_precision(config, units, strategy) or gpu_visible():
        return "float32"
    if config.mixed_precision != "on":  # auto: bfloat16_speedup has kept every worker off where one would crash
        return "bfloat16"
    crashes = cpu.bfloat16_matmul_crashes()
    if strategy is not None:
        from textgen.distribute import worker_mean

        crashes = worker_mean(strategy, float(crashes))[0] > 0  # so that every worker refuses, not one alone
    if crashes:
        held = cpu.onednn_cap_text() or "another worker's ONEDNN_MAX_CPU_ISA"
        raise OptionError(f"--mixed-precision on cannot run while {held} holds TensorFlow's oneDNN below its "
                          "bfloat16 kernels (TensorFlow crashes multiplying bfloat16 then); unset it, or train with "
                          "--mixed-precision off or auto")
    return "bfloat16"


def mixed_precision_note(setting: str, units: int, precision: str) -> Optional[str]:
    """What --mixed-precision does on this machine for layers of units, which trained in precision; a warning where
    an explicit "on" cannot take effect or gains nothing."""
    from textgen import cpu
    from textgen.fast_lstm import gpu_visible

    if setting == "off":
        return None
    native, wide = _native_bfloat16(), units >= BFLOAT16_MIN_UNITS
    speedup = _timed_bfloat16_speedup() if native and (wide or setting == "on") else None  # (timed already)
    def rate(only: str = "") -> str:
        return f"this CPU multiplies bfloat16 at {only}{speedup:.2f}x float32's speed"

    if precision == "bfloat16" and native:
        slow = speedup is not None and speedup < BFLOAT16_MIN_SPEEDUP
        return (f"mixed precision{' (auto)' if setting == 'auto' else ''}: LSTM training matmuls in bfloat16 "
                "(weights, state and validation in float32)" + (f"; {rate()}" if speedup is not None else "")
                + (", so it is likely no faster here: use --mixed-precision auto or off" if slow else "")
                + ("" if wide else f"; layers of {units} units train no faster in bfloat16 than in float32"))
    if cpu.bfloat16_held_back() and not gpu_visible():
        held = f"{cpu.onednn_cap_text()} holds TensorFlow's oneDNN below this CPU's bfloat16 instructions"
        return (f"mixed precision (auto): float32, since {held}" if setting == "auto"
                else f"note: {held}, so --mixed-precision on is likely slower here; use --mixed-precision off")
    if setting == "auto":
        if speedup is not None:
            return (f"mixed precision (auto): float32, since {rate('only ')} (auto wants "
                    f"{BFLOAT16_MIN_SPEEDUP:g}x; --mixed-precision on forces bfloat16)")
        if native:
            return (f"mixed precision (auto): float32, since layers of {units} units train no faster in "
                    f"bfloat16 (auto uses it from {BFLOAT16_MIN_UNITS} units; --mixed-precision on forces it)")
        return None
    if gpu_visible():
        return ("note: --mixed-precision on applies to the CPU training path only; on this GPU the cuDNN LSTM "
                "trains in float32")
    return ("note: this CPU has no native bfloat16 matmul (AVX512_BF16 or AMX), so --mixed-precision on is "
            "likely slower here; use --mixed-precision off")
