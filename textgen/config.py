"""Typed configuration for the model and for a training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # number of distinct characters (code points) in the corpus
    embedding_dim: int = 128  # width of the character embedding fed to the first LSTM
    units: int = 512  # hidden units of every LSTM layer
    layers: int = 2  # number of stacked LSTM layers
    dropout: float = 0.3  # dropout on every LSTM input and on the last LSTM output (training only)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def parameter_count(self) -> int:
        lstm_inputs = [self.embedding_dim] + [self.units] * (self.layers - 1)
        lstm = sum(4 * self.units * (width + self.units + 1) for width in lstm_inputs)
        return self.vocab_size * self.embedding_dim + lstm + self.units * self.vocab_size + self.vocab_size

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # total epochs of the run; a resumed run counts the epochs already done
    batch_size: int = 64  # parallel character streams per batch (the LSTM state has one row each)
    seq_length: int = 50  # characters per window: how far back gradients flow
    learning_rate: float = 3e-3  # Adam step size before any decay
    lr_decay: float = 0.9  # multiply the learning rate by this each epoch after lr_decay_after (1: off)
    lr_decay_after: int = 3  # epochs at the full learning rate before the decay starts
    lr_schedule: str = "cosine"  # "cosine": per step down to 1% by the end of the run; "step": lr_decay per epoch
    clip_norm: float = 5.0  # clip gradients to this global norm
    weight_decay: float = 0.2  # decoupled (AdamW) decay of the weight matrices per step, times the learning rate
    val_fraction: float = 0.1  # contiguous last fraction of the corpus held out for validation
    patience: int = 0  # stop after this many epochs without a better validation loss (0: never)
    max_minutes: float = 0.0  # validate, save and stop after this many minutes of training (0: no limit)
    save_every: int = 0  # also save a resumable checkpoint every this many steps (0: at epoch ends only)
    seed: int = 1234  # seeds weight initialisation and dropout
    mixed_precision: str = "auto"  # "on": bfloat16 LSTM training matmuls (CPU); "auto": on where the CPU has them

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A saved config; options it predates take the value its run actually trained with."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**BEHAVIOUR_BEFORE_OPTION, **{key: value for key, value in values.items() if key in names}})


# What training did before each of these options existed, so a checkpoint written then resumes as it ran.
BEHAVIOUR_BEFORE_OPTION = {"lr_schedule": "step", "mixed_precision": "off", "weight_decay": 0.0}


def check_range(name: str, value, low=None, high=None, low_open=False, high_open=False, integer=False) -> None:
    """Refuse an option value outside [low, high] (open where asked) or NaN, naming the option."""
    from textgen.errors import TextgenError

    option = "--" + name.replace("_", "-")
    bad = value != value or (integer and int(value) != value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise TextgenError(f"{option} must be {'an integer ' if integer else ''}in {span}, got {value}")


def validate_model(config: ModelConfig) -> None:
    for name in ("vocab_size", "embedding_dim", "units", "layers"):
        check_range(name, getattr(config, name), low=1, integer=True)
    check_range("dropout", config.dropout, low=0, high=1, high_open=True)


def validate_training(config: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "seq_length"):
        check_range(name, getattr(config, name), low=1, integer=True)
    for name in ("lr_decay_after", "patience", "save_every", "seed"):
        check_range(name, getattr(config, name), low=0, integer=True)
    check_range("learning_rate", config.learning_rate, low=0, low_open=True)
    check_range("lr_decay", config.lr_decay, low=0, high=1, low_open=True)
    check_range("clip_norm", config.clip_norm, low=0, low_open=True)
    check_range("weight_decay", config.weight_decay, low=0)
    check_range("val_fraction", config.val_fraction, low=0, high=1, low_open=True, high_open=True)
    check_range("max_minutes", config.max_minutes, low=0)
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            from textgen.errors import TextgenError

            raise TextgenError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                               f"got {getattr(config, name)!r}")


CHOICES = {"lr_schedule": ("cosine", "step"), "mixed_precision": ("auto", "on", "off")}
