"""Choose the model for the user's text and budget when they choose none (``--size auto``).

The rule, fitted from the runs recorded in BENCHMARKS.md ("Sizing"), has two parts:

1. **Shape.** Of the shapes in :data:`LADDER`, take the largest that (a) gets at least
   :data:`CHARS_PER_PARAMETER` training characters per parameter within the budget, and (b) has at most
   :data:`PARAMETERS_PER_CHAR` parameters per training character. The budget is ``--epochs`` passes over the
   training text, or fewer when ``--max-minutes`` runs out first; how many characters a shape trains per
   second is calibrated on this machine at start-up (a few timed matmuls of the shape's own sizes).
2. **Regularisation.** How hard the chosen shape can overfit is its exposure: epochs × parameters per
   training character. Dropout and weight decay grow with it (:data:`REGULARISATION`); a tiny corpus also
   gets a smaller batch so that an epoch still has a few dozen steps.

Options the user gives explicitly always win. A model-shape option (--layers, --units, --embedding-dim) fixes
that part of the shape: the rest is the ladder's (the chosen shape's layers and units, and for units given an
embedding of the ladder's width for them), and regularisation follows the resulting shape's exposure. Any other
option the rule would set keeps the user's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from textgen import cpu
from textgen.config import ModelConfig, TrainConfig, option_flag
from textgen.distribute import divisible_batch
from textgen.errors import counted, minutes_text
from textgen.lstm_step import GATES

# (layers, units, embedding width), smallest first
LADDER: tuple[tuple[int, int, int], ...] = (
    (1, 64, 32), (1, 128, 32), (1, 192, 48), (1, 256, 64), (1, 384, 96), (1, 512, 128),
    (2, 512, 128), (2, 768, 192), (2, 1024, 256),
)
CHARS_PER_PARAMETER = 5.0  # fewer training characters than this per parameter leaves a shape under-trained
PARAMETERS_PER_CHAR = 3.0  # more parameters than this per training character memorises the text

# (exposure below which it applies, dropout, weight decay); exposure = epochs * parameters / training chars. Fitted
# from runs (BENCHMARKS.md, "Sizing"): its last row is not tied to --size fixed's defaults, which it happens to equal.
REGULARISATION: tuple[tuple[float, float, float], ...] = (
    (2.0, 0.0, 0.0), (8.0, 0.1, 0.0), (30.0, 0.2, 0.0), (float("inf"), 0.3, 0.2),
)
MIN_STEPS_PER_EPOCH = 30  # a tiny corpus gets a smaller batch (down to MIN_BATCH) to keep this many steps
MIN_BATCH = 8
SHAPE_OPTIONS = ("layers", "units", "embedding_dim")


def memorises(parameters: int, train_chars: int) -> bool:
    """Whether a model of that many parameters will tend to learn a text of train_chars by heart."""
    return parameters > PARAMETERS_PER_CHAR * train_chars


@dataclass(frozen=True)
class Sizing:
    model_options: dict  # the ModelConfig fields to train with: the user's own, then the chosen ones
    train_options: dict  # the TrainConfig fields to train with: the user's own, then the chosen ones
    reason: str  # one line for the log: what was chosen and why


def model_config(shape: tuple[int, int, int], vocab_size: int) -> ModelConfig:
    layers, units, embedding = shape
    return ModelConfig(vocab_size=vocab_size, layers=layers, units=units, embedding_dim=embedding)


def flops_per_char(shape: tuple[int, int, int], vocab_size: int) -> float:
    """Training FLOPs per character: forward and backward (3x forward) of the LSTM and output matmuls."""
    return 3.0 * model_config(shape, vocab_size).forward_flops_per_char()


def parameter_count(shape: tuple[int, int, int], vocab_size: int) -> int:
    return model_config(shape, vocab_size).parameter_count()


def measure_matmul_flops(shape: tuple[int, int, int], batch: int, bfloat16: bool, blocks: int = 5) -> float:
    """FLOP/s of this machine on the shape's largest training matmul, (batch, input + units) x (.., 4 units):
    the best of a few short blocks, so that a busy moment of a shared machine does not decide the model."""
    import tensorflow as tf

    layers, units, embedding = shape
    width = (units if layers > 1 else embedding) + units
    dtype = tf.bfloat16 if bfloat16 else tf.float32
    [seconds] = cpu.matmul_seconds(cpu.matmul_operands(batch, width, GATES * units, [dtype]), blocks).values()
    return 2.0 * batch * width * GATES * units / seconds


def choose(train_chars: int, vocab_size: int, config: TrainConfig, user_model: dict, user_training: dict,
           chars_per_second: Optional[Callable[[tuple[int, int, int], int], float]] = None,
           val_chars: Optional[int] = None, replicas: int = 1, shape_from: Optional[str] = None) -> Sizing:
    """The sizing for a new run: what the user gave, and the rest chosen (see the module docstring); shape_from: the
    run whose shape user_model holds (--init-from).

    A chosen batch size divides among the replicas the batch is split across.

    chars_per_second(shape, batch) is this machine's training speed for a shape; it is called only when
    config.max_minutes is set, for the shapes up the ladder until one fails (the default measures it, see
    :func:`calibrated_speed`)."""
    for_the_text = _batch_for(train_chars, config.seq_length, config.batch_size, val_chars)
    batch = user_training.get("batch_size") or divisible_batch(for_the_text, replicas)
    work = config.epochs * train_chars if config.epochs else math.inf  # --epochs 0: until --max-minutes
    if config.max_minutes and chars_per_second is None:
        chars_per_second = calibrated_speed(config, vocab_size)

    def budget_chars(shape) -> float:
        if not config.max_minutes:
            return work
        return min(work, training_seconds(config.max_minutes) * chars_per_second(shape, batch))

    def fits(shape) -> bool:  # the parameter limit first: it needs no timing
        parameters = parameter_count(shape, vocab_size)
        return (not memorises(parameters, train_chars)
                and budget_chars(shape) >= CHARS_PER_PARAMETER * parameters)

    # Both limits only tighten up the ladder, so the walk stops at the first shape that fails (and times no more).
    given = [name for name in SHAPE_OPTIONS if name in user_model]
    shape = LADDER[0]
    for candidate in LADDER if len(given) < len(SHAPE_OPTIONS) else ():  # a whole shape given: no walk (nor timing)
        if not fits(candidate):
            break
        shape = candidate
    if given:  # the user's part of the shape, the rest as the ladder has it (an embedding to go with the units)
        layers, units = user_model.get("layers", shape[0]), user_model.get("units", shape[1])
        embedding = user_model.get("embedding_dim", _embedding_for(units) if "units" in given else shape[2])
        shape = (layers, units, embedding)
    parameters = parameter_count(shape, vocab_size)
    chars = budget_chars(shape)
    epochs = chars / train_chars
    exposure = epochs * parameters / train_chars
    dropout, weight_decay = next((d, w) for limit, d, w in REGULARISATION if exposure < limit)
    layers, units, embedding = shape
    model = {**dict(layers=layers, units=units, embedding_dim=embedding, dropout=dropout), **user_model}
    training = {**dict(batch_size=batch, weight_decay=weight_decay), **user_training}
    rounded = float(f"{chars:.3g}")  # ~3.87M, ~60,400 (and 999,600 rounds to ~1M, not ~1,000,000)
    amount = f"{rounded / 1e6:.3g}M" if rounded >= 1e6 else f"{rounded:,.0f}"
    budget = (f"{minutes_text(config.max_minutes)}, ~{amount} characters ({epochs:.3g} epochs) at this "
              f"machine's measured speed" if config.max_minutes and chars < work
              else counted(config.epochs, "epoch"))
    over = (f" (the smallest shape, yet over {PARAMETERS_PER_CHAR:g} parameters per character: it will tend to "
            "learn this text by heart, and a longer corpus helps)" if memorises(parameters, train_chars) and not given
            else "")  # a large vocabulary (Chinese) makes even the smallest embedding and output layer large
    yours = f" (run {shape_from}'s)" if shape_from else \
        f" ({', '.join(option_flag(name) for name in given)} yours)" if given else ""
    mine = {name: " (yours)" if name in {**user_model, **user_training} else "" for name in
            ("dropout", "weight_decay", "batch_size")}  # else an explicit --batch-size 8 read as chosen
    if not mine["batch_size"] and for_the_text < config.batch_size:  # a sweep of --seq-length changed it unsaid
        mine["batch_size"] = (f" (not {config.batch_size} on a text this short, at --seq-length {config.seq_length}; "
                              "give --batch-size to fix it)")
    reason = (f"sizing (--size auto): {layers} x {units} units, embedding {embedding}{yours}, "
              f"dropout {model['dropout']}{mine['dropout']}, weight decay {training['weight_decay']}"
              f"{mine['weight_decay']}, batch {batch}{mine['batch_size']}: {parameters:,} "
              f"parameters for {train_chars:,} training characters{over} and a budget of {budget}; explicit options "
              "win, --size fixed keeps the defaults")
    return Sizing(model, training, reason)


STARTUP_SECONDS = 7.0  # of a time budget, spent compiling the training and validation steps (the demo's 1 x 256 on
# a 2-core Zen 4: its first epoch took 27 s, the next ones 20); a budget of 0.3 minutes trained 1.9 epochs, not 3.1


def training_seconds(max_minutes: float) -> float:
    """The seconds of a --max-minutes budget that train: less the start-up, and at least a quarter of it."""
    budget = max_minutes * 60
    return max(budget / 4, budget - STARTUP_SECONDS)


def _embedding_for(units: int) -> int:
    """The ladder's embedding width for LSTM layers of units (the width of its shape with the nearest units)."""
    return min(LADDER, key=lambda shape: abs(shape[1] - units))[2]


def _batch_for(train_chars: int, seq_length: int, default: int, val_chars: Optional[int] = None) -> int:
    """The batch for a text of train_chars (and a validation slice of val_chars): default, halved for a short text;
    before it is shared among replicas."""
    batch = default
    while batch // 2 >= MIN_BATCH and train_chars // (batch * seq_length) < MIN_STEPS_PER_EPOCH:
        batch //= 2
    # Below MIN_BATCH when the (validation) part cannot hold one batch of MIN_BATCH windows: a batch it holds
    # beats an error asking the user for one. When not even one window fits, the smallest batch, so that the
    # error names the true minimum length of the corpus.
    fits = (min(train_chars, val_chars if val_chars is not None else train_chars) - 1) // seq_length
    return max(1, min(batch, fits))


def calibrated_speed(config: TrainConfig, vocab_size: int) -> Callable[[tuple[int, int, int], int], float]:
    """Training characters per second for a shape on this machine, from a short matmul timing (~60 ms a shape)."""
    from textgen.session import training_precision

    cache: dict = {}

    def speed(shape: tuple[int, int, int], batch: int) -> float:
        if (shape, batch) not in cache:
            flops = measure_matmul_flops(shape, batch, training_precision(config, shape[1]) == "bfloat16")
            # Training runs at about the FLOP/s of this one matmul: 0.8-1.25x of it measured from 1 x 128 to 1 x 512
            # (the elementwise work and small backward matmuls cost what the large fused ones gain; BENCHMARKS.md)
            cache[shape, batch] = flops / flops_per_char(shape, vocab_size)
        return cache[shape, batch]

    return speed
