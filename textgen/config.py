"""Typed configuration for the model and for a training run: every option is declared once, here.

Each field carries its help text, its allowed range or choices, and (for options added after the first
release) what training did before the option existed. The CLI options, their ``--help`` text, the
validation and the README's option reference are all derived from these declarations; what else a new option
needs (its use, a test, a bad value in test_cli, the README) is in CONTRIBUTING.md, "Where to change what".
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from textgen.errors import OptionError
from textgen.lstm_step import GATES


# What a Chinese or Japanese input method types between and inside numbers: its commas and full stops (float()
# itself reads full-width digits). Only these: NFKC also turned a superscript 1² into 12.
_FULL_WIDTH_PUNCTUATION = str.maketrans({"，": ",", "、": ",", "．": ".", "。": ".", "－": "-", "＋": "+"})


class _Unset:
    """An option's before= when none was given."""

    def __repr__(self) -> str:  # as a test's diff shows it (it showed <object object at 0x...>)
        return "<no before=>"


_UNSET = _Unset()


@dataclass(frozen=True)
class Rule:
    """What values an option accepts, and what it meant before it existed."""

    help: str = ""  # the --help text (empty: not a command-line option)
    low: Optional[float] = None  # smallest allowed value (None: unbounded)
    high: Optional[float] = None  # largest allowed value (None: unbounded)
    low_open: bool = False  # exclude low itself
    high_open: bool = False  # exclude high itself
    integer: bool = False  # must be a whole number
    choices: Optional[Sequence[str]] = None  # the allowed strings, for a choice option
    many: bool = False  # a non-empty tuple of values, each within the range (comma-separated on the command line;
    # for text, the option given once per value, and one text may stand for a tuple of one)
    text: bool = False  # a non-empty string, where the default (None) does not say so (--stop)
    short: Optional[str] = None  # a one-letter command-line alias such as "-t"
    layout: bool = False  # fixes the model or data layout: a resumed run may not change it (state, comparable losses)
    only_with: Optional[tuple] = None  # (option, value): read only when that option has that value (info hides it)
    before: Any = _UNSET  # the behaviour of checkpoints written before this option existed

    @property
    def numeric(self) -> bool:
        return self.integer or self.low is not None or self.high is not None

    def span(self) -> str:
        left, right = ("(" if self.low_open or self.low is None else "["), \
            (")" if self.high_open or self.high is None else "]")
        return f"{left}{'-inf' if self.low is None else _bound(self.low)}, " \
               f"{'inf' if self.high is None else _bound(self.high)}{right}"

    def parse_many(self, name: str, text: str) -> tuple:
        """'0.5' or '0.2,0.5,1.0' as typed on the command line -> numbers (checked later by :meth:`check`)."""
        kind = int if self.integer else float
        typed = text.translate(_FULL_WIDTH_PUNCTUATION)
        try:
            return tuple(kind(part) for part in typed.split(","))  # "0.5,,1" or "0.5," is a typo: refused
        except ValueError:
            raise OptionError(f"{option_flag(name)} must be a number or a comma-separated list such as "
                              f"0.2,0.5,1.0, got {text!r}") from None

    def check(self, name: str, value) -> None:
        """Refuse a value outside the rule, naming the option as the user typed it."""
        option = option_flag(name)
        if self.many:
            values = (value,) if self.text and isinstance(value, str) else value  # a text, or several
            if self.text and (isinstance(values, (str, bytes)) or not isinstance(values, Sequence)):
                raise OptionError(f"{option} must be text or a list of texts, got {value!r}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise OptionError(f"{option} needs at least one text, or leave {option} out" if self.text else
                                  f"{option} needs at least one value, e.g. {option} 0.5")
            for item in values:
                dataclasses.replace(self, many=False).check(name, item)
            return
        if self.choices is not None:
            if value not in self.choices:
                raise OptionError(f"{option} must be one of {', '.join(self.choices)}, got {value!r}")
            return
        if self.text and not isinstance(value, str):
            raise OptionError(f"{option} must be text, got {value!r}")
        if self.text and not value:  # read as "not given" before: a typo that silently did nothing
            raise OptionError(f"{option} is empty; give the text, or leave {option} out")
        if isinstance(value, str):
            check_text(option, value)
        if not self.numeric:
            return
        # An integer option takes only integers: 10.0 would pass a range check and then fail as a slice or a shape.
        bad = isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real)
        bad = bad or (not isinstance(value, numbers.Integral) and not math.isfinite(value))  # ints may exceed floats
        bad = bad or (not self.integer and isinstance(value, numbers.Integral) and abs(value) > sys.float_info.max)
        if not bad and self.low is not None:
            bad = value < self.low or (self.low_open and value == self.low)
        if not bad and self.high is not None:
            bad = value > self.high or (self.high_open and value == self.high)
        if bad:  # -1, not the -1.0 it became: a whole number is a real-valued option's value as typed
            typed = int(value) if not self.integer and isinstance(value, float) and value.is_integer() \
                and abs(value) < 2**53 else value
            raise OptionError(f"{option} must be {'an integer ' if self.integer else ''}in {self.span()}, "
                              f"got {shown_number(typed)}")


def _bound(value) -> str:
    """A range's end, short (1e+07) where that is exact, else in full (4,294,967,295)."""
    short = f"{value:g}"
    return short if float(short) == value else f"{value:,}"


def option_flag(name: str) -> str:
    """An option's field name as the command line spells it: learning_rate -> --learning-rate (the Python API and
    the server turn it back into the field's name in their messages)."""
    return "--" + name.replace("_", "-")


def shown_number(value) -> str:
    """A value for an error message: a 400-digit integer (a JSON request may send one) is shortened, and what is not
    a number says so (the text '10' printed as 10 would look valid)."""
    if isinstance(value, str) and reads_as_number(value):  # '100' from Python or JSON: the fix is the quotes
        shown = repr(value) if len(value) <= 30 else f"of {len(value):,} characters"
        return f"the text {shown}; give it as a number, not in quotes"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{value!r}, which is not a number"
    if not isinstance(value, numbers.Integral) or abs(value) < 10**30:
        return str(value)
    digits = int(math.log10(abs(value))) + 1  # the float may round 99...9 up: correct it exactly
    digits -= 10 ** (digits - 1) > abs(value)
    return f"a{' negative' if value < 0 else ''} number of {digits} digits"


def reads_as_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def check_text(option: str, text: str) -> None:
    """Refuse a string that is not Unicode text: a lone surrogate, which a JSON request (\\ud800) or a file
    name read in the wrong encoding can carry, and which nothing can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise OptionError(f"{option} holds a lone surrogate ({ascii(text[error.start])[1:-1]}) at character "
                          f"{error.start}, which is not text; send UTF-8 text") from None


def option(default=dataclasses.MISSING, help: str = "", **rule) -> Any:
    """A config field with its rule (see :class:`Rule`)."""
    return dataclasses.field(default=default, metadata={"rule": Rule(help=help, **rule)})


def rules(config_class) -> dict[str, Rule]:
    return {field.name: field.metadata["rule"] for field in dataclasses.fields(config_class)}


def command_line_options(config_class) -> dict[str, tuple[Rule, Any]]:
    """The fields that are command-line options: name -> (rule, default)."""
    return {field.name: (field.metadata["rule"], field.default) for field in dataclasses.fields(config_class)
            if field.metadata["rule"].help}


def _plain(value):
    """A NumPy number (np.int64(2), np.float32(0.5)) as the Python number it is: the checks accept both, but a
    checkpoint's JSON and Keras's layer arguments take only Python's."""
    if isinstance(value, tuple):
        return tuple(map(_plain, value))
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if _numpy_bool(value):
        return bool(value)
    return value


def _numpy_bool(value) -> bool:
    """np.True_ (what a comparison of NumPy values gives), known without importing NumPy."""
    return getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "shape", None) == ()


def _as_float(value):
    """An int given for a real-valued option, as a float: Keras's optimizer refuses learning_rate=1."""
    if type(value) is not int:
        return value
    try:
        return float(value)
    except OverflowError:  # beyond any float: left for the range check to refuse by its value
        return value


class _Config:
    def __post_init__(self):
        for field in dataclasses.fields(self):
            value, rule = _plain(getattr(self, field.name)), field.metadata["rule"]
            if rule.numeric and not rule.integer:
                value = tuple(map(_as_float, value)) if rule.many and isinstance(value, (tuple, list)) else \
                    _as_float(value)
            object.__setattr__(self, field.name, value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise OptionError naming the first option outside its rule (None is allowed where it is the default)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(field.default, bool):
                check_flag(field.name, value)
            elif isinstance(field.default, str) and not isinstance(value, str):
                raise OptionError(f"{option_flag(field.name)} must be text, got {value!r}")
            if not (value is None and field.default is None):
                field.metadata["rule"].check(field.name, value)

    def in_effect(self, name: str) -> bool:
        """Whether option name acts under this config (an option only_with another's value does not elsewhere)."""
        needed = rules(type(self))[name].only_with
        return needed is None or getattr(self, needed[0]) == needed[1]

    @classmethod
    def from_dict(cls, values: dict):
        """A saved config; options it predates take the value its run actually trained with."""
        before = {name: rule.before for name, rule in rules(cls).items() if rule.before is not _UNSET}
        return cls(**{**before, **{key: value for key, value in values.items() if key in rules(cls)}})


@dataclass(frozen=True)
class ModelConfig(_Config):
    vocab_size: int = option(low=1, integer=True)  # distinct characters (code points) in the corpus
    embedding_dim: int = option(128, "Width of the character embedding (unless given, --size auto chooses it).", low=1,
                                integer=True)
    units: int = option(512, "Hidden units of each LSTM layer (unless given, --size auto chooses it).", low=1,
                        integer=True)
    layers: int = option(2, "Number of stacked LSTM layers (unless given, --size auto chooses it).", low=1,
                         integer=True)
    dropout: float = option(0.3, "Dropout on each LSTM layer's input and on the last one's output, training only "
                            "(unless given, --size auto chooses it).", low=0, high=1, high_open=True)

    def layers_text(self) -> str:
        """The recurrent stack as `textgen info` and a TextModel's repr name it: "2 x LSTM(512)"."""
        return f"{self.layers} x LSTM({self.units})"

    def parameter_count(self) -> int:
        """The trainable weights of :func:`textgen.model.build_model` (sizing counts them before building it)."""
        lstm_inputs = [self.embedding_dim] + [self.units] * (self.layers - 1)
        lstm = sum(GATES * self.units * (width + self.units + 1) for width in lstm_inputs)
        return self.vocab_size * self.embedding_dim + lstm + self.units * self.vocab_size + self.vocab_size

    def forward_flops_per_char(self) -> int:
        """FLOPs of one character through the LSTM and output matmuls (the embedding is a lookup);
        training (forward and backward) costs about 3x this."""
        lstm_inputs = [self.embedding_dim] + [self.units] * (self.layers - 1)
        lstm = sum(2 * (width + self.units) * GATES * self.units for width in lstm_inputs)
        return lstm + 2 * self.units * self.vocab_size


@dataclass(frozen=True)
class TrainConfig(_Config):
    size: str = option(
        "auto", "auto = choose the layers, units, embedding, dropout, weight decay and (for a tiny corpus) batch size "
        "from the corpus, its vocabulary and the budget (--epochs, --max-minutes at this machine's measured speed), "
        "each option you give staying yours (--units 64 alone: 64 units, the rest chosen for them); fixed = the "
        "defaults shown here.",
        choices=("auto", "fixed"), layout=True, before="fixed")
    epochs: int = option(20, "Total epochs of the run (a resumed run counts those already done); 0 = no limit, "
                         "until --max-minutes, which is what --max-minutes alone means.", low=0, integer=True)
    batch_size: int = option(64, "Parallel character streams per batch (the LSTM state has one row each; --size auto "
                             "lowers it for a tiny corpus).",
                             low=1, integer=True, layout=True)
    seq_length: int = option(50, "Characters per training window (how far back gradients flow).", low=1,
                             integer=True, layout=True)
    learning_rate: float = option(3e-3, "Adam learning rate (the peak of the schedule).", low=0, low_open=True)
    lr_schedule: str = option(
        "cosine", "cosine = fall every step to 1% of --learning-rate by the end of the run (--epochs, or "
        "--max-minutes if that comes first); step = --lr-decay per epoch after --lr-decay-after.",
        choices=("cosine", "step"), before="step")
    lr_decay: float = option(0.9, "With --lr-schedule step: multiply the learning rate by this every epoch after "
                             "--lr-decay-after.", low=0, high=1, low_open=True, only_with=("lr_schedule", "step"))
    lr_decay_after: int = option(3, "With --lr-schedule step: epochs at the full learning rate before the decay "
                                 "starts.", low=0, integer=True, only_with=("lr_schedule", "step"))
    clip_norm: float = option(5.0, "Clip gradients to this global norm.", low=0, low_open=True)
    weight_decay: float = option(0.2, "Decoupled (AdamW) decay of the weight matrices and embedding, times the "
                                 "learning rate each step (biases are not decayed; 0 = off; unless given, --size auto "
                                 "chooses it).", low=0, before=0.0)
    mixed_precision: str = option(
        "auto", "on: multiply in bfloat16 inside the LSTM training step (weights, state and validation stay "
        "float32), ~1.3-1.5x faster on CPUs with AVX512_BF16 or AMX that run it fast (not all do); auto: on where "
        "the CPU has them and multiplies 1.15x faster in bfloat16 (timed at the start, ~0.2 s), for layers of 384 "
        "units or more (narrower ones train no faster).",
        choices=("auto", "on", "off"), before="off")
    val_fraction: float = option(0.1, "Contiguous last fraction of the corpus held out for validation.", low=0,
                                 high=1, low_open=True, high_open=True, layout=True)
    val_max_chars: int = option(1_000_000, "Hold out at most this many characters for validation (or one batch, "
                                "if that is more), the end of the --val-fraction slice: a large text's whole 10% "
                                "took minutes to validate at every epoch's end; the rest of it trains. 0 = no limit.",
                                low=0, integer=True, layout=True, before=0)
    patience: int = option(0, "Stop after this many epochs without a better validation loss (0 = never).", low=0,
                           integer=True)
    max_minutes: float = option(0.0, "Validate, save and stop after this many minutes of training (0 = no limit); "
                                "given without --epochs, the run lasts that long.", low=0)
    save_every: int = option(0, "Also save a resumable checkpoint every this many steps (0 = at epoch ends only).",
                             low=0, integer=True)
    seed: int = option(1234, "Random seed for weight initialisation and dropout.", low=0, high=2**32 - 1,
                       integer=True)  # what Keras's set_random_seed takes

    def validate(self) -> None:
        super().validate()
        if self.epochs == 0 and not self.max_minutes:
            raise OptionError("--epochs 0 trains until --max-minutes, which is 0 (no limit): give one of them")

    def epoch_of(self, epoch: int) -> str:
        return epoch_text(epoch, self.epochs)


def epoch_text(epoch: int, epochs: Optional[int]) -> str:
    """'5/20' as the log counts epochs; '5' in a run that lasts until --max-minutes (epochs 0 or None)."""
    return f"{epoch}/{epochs}" if epochs else str(epoch)


# Far above any useful temperature (at 100 a character model's distribution is already flat), and far below
# float32's largest number, where the sampler would see an infinite temperature.
MAX_TEMPERATURE = 1e6


DEFAULT_CHECKPOINT_DIR = "checkpoints"  # where training writes runs and the other commands look for them
# The commands' --checkpoint-dir when it is not given (a job started in another directory finds the same runs); the
# Python API takes its checkpoint_dir argument only, as a program says what it means.
CHECKPOINT_DIR_VARIABLE = "TEXTGEN_CHECKPOINT_DIR"

# A small character model sampled below temperature 1 falls into loops of one character (hundreds of spaces
# where its corpus never has more than 53; half of the demo's 2,000-character samples at 0.5): cut at 20, they read
# as text, and a corpus's own longer runs (rules of 60 dashes) are merely shortened.
DEFAULT_MAX_REPEAT = 20

# The samples of one call are drawn at once, as streams of one engine, and kept as text until the end: a billion
# (a typo) would exhaust memory instead of answering.
MAX_SAMPLES = 10_000
# Likewise the characters of one sample (10 million take about half an hour on one laptop core) and of all of
# them together (a few hundred MB of text).
MAX_LENGTH = 10_000_000
MAX_TOTAL_CHARS = 100_000_000
# Stop strings: each is searched for in every stream after each chunk, on the thread that runs all of a server's
# requests for a run (60,000 of them held every client of that run 0.15 s per chunk).
MAX_STOPS, MAX_STOP_CHARS = 16, 1000
# --prime-file's characters, as many as a sample's: an endless pipe was read until memory ran out.
MAX_PRIME_FILE_CHARS = MAX_LENGTH

EXPORT_FORMATS = ("keras", "savedmodel", "litert")  # textgen export --format (export.py)
# The SavedModel's generate signatures (exported_graph), each with the sampling options it takes after prime, length,
# temperature and seed; here, without TensorFlow, for the command line's help. A signature is fixed once exported (its
# callers feed every input): a new filter gets a new signature, which takes every filter so far.
GENERATE_SIGNATURES = {"generate": (), "generate_filtered": ("top_k", "top_p", "min_p"),
                       "generate_guarded": ("top_k", "top_p", "min_p", "max_repeat")}


@dataclass(frozen=True)
class SampleConfig(_Config):
    temperature: tuple = option((0.5,), "Divides the logits: <1 greedier, >1 more random, 0 = always the most likely "
                                "(within --max-repeat). A comma-separated list (0.2,0.5,1.0), or the option "
                                "repeated, gives one sample per value.", low=0, high=MAX_TEMPERATURE, many=True,
                                short="-t")
    top_k: Optional[int] = option(None, "Draw only from the K most likely characters.", low=1, integer=True)
    top_p: Optional[float] = option(None, "Nucleus sampling: draw from the smallest set of characters whose "
                                    "probability reaches P.", low=0, high=1, low_open=True)
    min_p: Optional[float] = option(None, "Drop characters less likely than P times the most likely one "
                                    "(after the temperature); 0.05 is a common choice.", low=0, high=1)
    max_repeat: Optional[int] = option(DEFAULT_MAX_REPEAT, "Never produce one character more than N times in a "
                                       "row: a guard against loops such as endless spaces (0 = off).", low=0,
                                       high=10**9, integer=True)
    length: int = option(500, "Characters to generate (Unicode code points: an emoji with a skin tone, or a letter "
                              "with a separate accent, counts as two).", low=0, high=MAX_LENGTH, integer=True,
                         short="-n")
    prime: str = option("", "Text to start from; it is printed before the generated text.")
    num_samples: int = option(1, "Independent samples to draw (per temperature).", low=1, high=MAX_SAMPLES,
                              integer=True)
    seed: Optional[int] = option(None, "Random seed: the same seed gives the same text.", low=0, integer=True)
    stop: Union[None, str, tuple] = option(None, "End a sample where it first produces this string (left out of the "
                                           "sample); given several times, where it first completes any of them.",
                                           text=True, many=True)
    skip_unknown: bool = option(False, "Drop prime characters the model never saw, with a warning.")

    def __post_init__(self):
        super().__post_init__()
        if self.max_repeat is None:  # what the Python API and JSON requests pass for "no guard"
            object.__setattr__(self, "max_repeat", 0)
        if isinstance(self.stop, list):  # as JSON and Python callers give several
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def stops(self) -> tuple:
        """The stop strings: none, the one given, or each of several."""
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def sample_count(self) -> int:
        """Samples drawn in all: num_samples per temperature."""
        return len(self.temperature) * self.num_samples

    def validate(self) -> None:
        super().validate()
        if len(self.stops) > MAX_STOPS:
            raise OptionError(f"at most {MAX_STOPS} --stop strings, got {len(self.stops):,}")
        if (longest := max(map(len, self.stops), default=0)) > MAX_STOP_CHARS:
            raise OptionError(f"a --stop string may have at most {MAX_STOP_CHARS:,} characters, got one of {longest:,}")
        if self.sample_count > MAX_SAMPLES:
            raise OptionError(f"at most {MAX_SAMPLES:,} samples at once, got {len(self.temperature)} temperatures x "
                              f"--num-samples {self.num_samples}; draw them in several runs")
        if self.sample_count * self.length > MAX_TOTAL_CHARS:
            raise OptionError(f"at most {MAX_TOTAL_CHARS:,} characters at once, got {self.sample_count:,} samples x "
                              f"--length {self.length:,}; draw them in several runs")


# Ctrl-C or SIGTERM lets a server's requests in flight end for this long (textgen serve --shutdown-timeout). With
# the ~0.2 s uvicorn takes first and the up to 2 s for the requests cut short to hear why (serve.FINAL_WORDS_WAIT_S)
# it stays under docker stop's 10 s, after which the container is killed; a request within the default limits takes
# a few seconds at most.
DEFAULT_SHUTDOWN_TIMEOUT = 7.0
SERVER_LOG_LEVELS = ("debug", "info", "warning", "error")  # textgen serve --log-level: info has a line per request


@dataclass(frozen=True)
class Limits:
    """What one request to `textgen serve` may ask for, and how many runs it keeps in memory."""

    max_length: int = 2000  # characters one request may generate
    max_samples: int = 8  # samples one request may ask for (temperatures x num_samples)
    max_score_chars: int = 20000  # characters /v1/score accepts
    max_prime_chars: int = 4000  # characters of a prime (priming a joiner holds up every stream of the batch)
    max_loaded_runs: int = 4  # runs in memory at once (each holds its weights and compiled engines)

    @property
    def max_body_bytes(self) -> int:
        """Request body size: room for the longest texts a request may hold (a text to score; a prime with its stop
        strings) with every character escaped as JSON allows (Python's json.dumps writes a CJK character as 6 bytes,
        one beyond the BMP as 12), plus 64 KB for the rest. A fixed 64 KB refused 12,000 Chinese characters sent to
        /v1/score by Python; a lower --max-score-chars alone would have refused a request's allowed stop strings."""
        return 12 * max(self.max_score_chars, self.max_prime_chars + MAX_STOPS * MAX_STOP_CHARS) + 65536


# The names other char-RNN tools (char-rnn, torch-rnn, PyTorch) give textgen's options: a user's first guess
OTHER_TOOLS_NAMES = {"lr": "learning_rate", "rnn_size": "units", "hidden_size": "units", "num_layers": "layers",
                     "seq_len": "seq_length", "max_epochs": "epochs", "batch": "batch_size", "temp": "temperature",
                     "wordvec_size": "embedding_dim", "embedding_size": "embedding_dim", "grad_clip": "clip_norm",
                     # other HTTP APIs' names for a request's fields
                     "prompt": "prime", "max_tokens": "length", "max_new_tokens": "length", "n": "num_samples"}


def meant_option(name: str, known) -> Optional[str]:
    """The option of known (field names) that name was probably meant to be: another tool's name for it, or a typo."""
    import difflib

    if OTHER_TOOLS_NAMES.get(name) in known:
        return OTHER_TOOLS_NAMES[name]
    # The same letters in another order ("rnu" for run): difflib rates a short name's swap 0.67, under the cut
    swapped = [option for option in known if sorted(option) == sorted(name)]
    return next(iter(swapped or difflib.get_close_matches(name, known, n=1, cutoff=0.75)), None)


def split_training_options(options: dict) -> tuple[dict, dict]:
    """A flat dict of training options (None: not chosen) -> (ModelConfig fields, TrainConfig fields)."""
    model = command_line_options(ModelConfig)
    training = command_line_options(TrainConfig)
    unknown = sorted(set(options) - set(model) - set(training))
    if unknown:
        meant = {name: meant_option(name, [*model, *training]) for name in unknown}
        named = ", ".join(name + (f" (did you mean {meant[name]}?)" if meant[name] else "") for name in unknown)
        raise OptionError(f"unknown training option(s): {named}; see textgen train --help for the options (in "
                          "Python, with underscores: seq_length=100)")
    chosen = {name: value for name, value in options.items() if value is not None}
    return ({name: value for name, value in chosen.items() if name in model},
            {name: value for name, value in chosen.items() if name in training})


LAYOUT_OPTIONS = tuple(name for name, rule in rules(TrainConfig).items() if rule.layout)
SAMPLE_FIELDS = frozenset(rules(SampleConfig))  # the keywords of a sampling request, wherever it comes from
SAMPLE_FLAGS = frozenset(field.name for field in dataclasses.fields(SampleConfig) if field.type in (bool, "bool"))


def sample_config_of(arguments: dict) -> SampleConfig:
    """The SampleConfig of a call's arguments (its locals()) or a request's fields: every one named as a field of it,
    so an entry point passes on each option it takes, one added later too. Not validated yet."""
    options = {name: value for name, value in arguments.items() if name in SAMPLE_FIELDS}
    return SampleConfig(**dict(options, temperature=temperature_values(options["temperature"])))


def check_flag(name: str, value) -> None:
    """A yes/no option must be a bool: a library caller's overwrite="no" would otherwise count as yes."""
    if not (isinstance(value, bool) or _numpy_bool(value)):
        raise OptionError(f"{option_flag(name)} must be true or false, got {value!r}")


def temperature_values(value) -> tuple:
    """One temperature or several (a list, tuple, NumPy array or any iterable) as the tuple SampleConfig holds; what
    is not a number is left for SampleConfig.validate to refuse by name."""
    value = value.tolist() if hasattr(value, "tolist") else value  # a NumPy array or number
    if isinstance(value, (numbers.Real, str, bytes)) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


def check_range(name: str, value, **rule) -> None:
    """Check one value that is not a config field (a sampling or evaluation option) by the same rule."""
    Rule(**rule).check(name, value)
