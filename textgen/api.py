"""The Python API: ``textgen.load`` a trained run and use it, ``textgen.train`` a new one.

Example:
    >>> import textgen
    >>> model = textgen.load("checkpoints/demo")          # doctest: +SKIP
    >>> print(model.generate("The ", length=200, temperature=0.5, seed=1))  # doctest: +SKIP

Bad input raises :class:`textgen.TextgenError` (options: its subclass ``OptionError``, also a
``ValueError``) with the one-line message the command line prints, options named as keywords (top_k, not --top-k).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from textgen.checkpoint import DamagedCheckpoint, saved_epoch_text
from textgen.config import (DEFAULT_CHECKPOINT_DIR, DEFAULT_MAX_REPEAT, SAMPLE_FIELDS, SAMPLE_FLAGS, ModelConfig,
                            SampleConfig, TrainConfig, command_line_options, rules, sample_config_of,
                            split_training_options, temperature_values)
from textgen.distribute import STRATEGIES
from textgen.errors import OptionError, TextgenError, as_keywords, shown_start
from textgen.files import expand_user
from textgen.evaluation import bpc
from textgen.generate import prepare_prime
from textgen.progress import log_lines_on_stderr
from textgen.quiet_import import import_tensorflow_quietly

logger = logging.getLogger("textgen")
# train()'s keywords that errors name (its other ones are paths and callbacks, refused in their own words)
TRAIN_FLAGS = frozenset({"resume", "overwrite", "tensorboard"})
TRAIN_KEYWORDS = frozenset(command_line_options(ModelConfig)) | frozenset(command_line_options(TrainConfig)) | {
    "strategy", "run", "checkpoint_dir", "init_from"} | TRAIN_FLAGS
# The words that are values where they follow a train() option: any after run and checkpoint_dir (--run demo), and
# the choices of the options that have them (--size auto).
TRAIN_VALUED = frozenset({"run", "checkpoint_dir"})
TRAIN_CHOICES = frozenset([*(choice for config in (ModelConfig, TrainConfig) for rule in rules(config).values()
                            for choice in rule.choices or ()), *STRATEGIES])


def _warn_in_keywords(message: str) -> None:
    """A sampling warning in the words of the Python call (max_repeat=0 where the command says --max-repeat 0)."""
    logger.warning(str(as_keywords(TextgenError(message), SAMPLE_FIELDS, SAMPLE_FLAGS)))


def _sampling_errors_as_keywords(method):
    """method with its errors naming options as keywords (skip_unknown=True, not --skip-unknown); a damaged run's
    advice is a train() call's (overwrite=True)."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except DamagedCheckpoint as error:
            raise _train_keywords(error) from None
        except TextgenError as error:
            raise as_keywords(error, SAMPLE_FIELDS, SAMPLE_FLAGS) from None

    return wrapped


# What an empty path argument is told to give ("." for output suggested the one directory export refuses)
EMPTY_PATH_ADVICE = {"output": "a directory for the export, such as 'exports/NAME'", "path": "a text file",
                     "corpus": "a text file (textgen.data.build_default_corpus() writes the built-in one)",
                     "checkpoint_dir": "a directory, such as 'checkpoints' or '.' for the current one",
                     "run": "a run's directory, or a run's name under checkpoint_dir"}


def _check_paths(**arguments) -> list:
    """Arguments that name files, with a leading ~ read as the home directory, as a shell would (export("~/x")
    wrote a folder named ~ in the working directory); a wrong type (None, a number) is refused by name, not by a
    TypeError deep down."""
    for name, value in arguments.items():
        if not isinstance(value, (str, os.PathLike)):
            raise OptionError(f"{name} must be a path (str or pathlib.Path), got {value!r}")
        if not str(value).strip():  # Path("") is the current directory: the command line refuses it too
            raise OptionError(f"{name} is empty; give {EMPTY_PATH_ADVICE.get(name, 'a path')}")
        if "\0" in str(value):  # else os raised "embedded null byte", naming no argument
            raise OptionError(f"{name} holds a NUL character (\\0), which no path can hold")
    return [expand_user(value) if isinstance(value, str) else Path(expand_user(value)) for value in arguments.values()]


def _run_dir(path: str | Path, checkpoint_dir: str | Path, kind: str) -> Path:
    """A run directory, or a run name under checkpoint_dir (a directory of runs: its latest run with a checkpoint of
    kind)."""
    from textgen.files import too_long_for_a_path
    from textgen.runs import find_run

    path, under = Path(path), Path(checkpoint_dir) / path
    if too_long_for_a_path(path):
        raise TextgenError(f"no run at {shown_start(str(path), why='too long for a path')}; "
                           "give a run's directory, or a run's name under checkpoint_dir")
    # (checkpoint_dir itself is checked only where a name is looked up in it: find_run)
    named = len(path.parts) == 1 and not too_long_for_a_path(under) and under.is_dir()
    if path.is_dir() and not named:  # a bare name is a run under checkpoint_dir first, whatever the cwd holds
        return find_run(path, None, kind)
    if len(path.parts) == 1:
        return find_run(Path(checkpoint_dir), str(path))
    # It said "give a run directory (such as checkpoints/demo)" when given checkpoints/demo before any training.
    what = "a file, not a run's directory" if path.exists() else "no such directory"
    raise TextgenError(f"no run at {str(path)!r}: {what}; give a run's directory, or a run's name under "
                       f"checkpoint_dir ({checkpoint_dir})")  # quoted: a line break in it stays on one line


class TextModel:
    """A trained run, loaded once, ready to generate, stream and score text.

    Attributes:
        run_dir: the run directory it was loaded from.
        vocab: the :class:`textgen.vocab.Vocabulary` (``vocab.chars`` is the character list).
        config: the :class:`textgen.config.ModelConfig` (layers, units, embedding, dropout).
        info: a dict of facts: run, corpus, epochs, step_in_epoch (steps into an epoch not finished), val_bpc (of
            the loaded checkpoint), parameters.
        history: a dict per epoch up to the loaded checkpoint, as ``textgen plot`` draws them: epoch, step,
            chars_seen, train_loss and val_loss (nats), train_bpc and val_bpc, learning_rate, seconds, precision, and
            text (the start of the corpus's digest: it changes where a resume went on with another text).
        generator: the :class:`textgen.generate.Generator` underneath (engines, weights, metadata).
    """

    def __init__(self, run_dir: Path, kind: str = "best"):
        import_tensorflow_quietly()
        from textgen.generate import Generator

        self.run_dir = Path(run_dir)
        self.generator = Generator.load(self.run_dir, kind)
        meta = self.generator.meta
        self.vocab = meta.vocab
        self.config = meta.model
        val = meta.state.val_loss
        self.info = dict(run=self.run_dir.name, corpus=meta.corpus["path"], epochs=meta.state.epoch,
                         step_in_epoch=meta.state.step_in_epoch, val_bpc=None if val is None else bpc(val),
                         parameters=self.config.parameter_count(), checkpoint=meta.kind)
        self.history = [dict(row) for row in meta.state.history]  # a copy: the generator's metadata stays as read

    def __repr__(self) -> str:
        return (f"TextModel({self.info['run']!r}: {self.config.layers_text()}, "
                f"{len(self.vocab)} characters, {saved_epoch_text(self.info['epochs'], self.info['step_in_epoch'])})")

    @_sampling_errors_as_keywords
    def generate(self, prime: str = "", length: int = 500, temperature: float = 0.5, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Union[None, str, Sequence[str]] = None, num_samples: int = 1, skip_unknown: bool = False,
                 min_p: Optional[float] = None, max_repeat: Optional[int] = DEFAULT_MAX_REPEAT) -> str | list[str]:
        """Generate text that starts with prime.

        Args:
            prime: text to start from; it begins the result as the model reads it: in the Unicode form of its
                corpus (NFC or NFD: 'é' may become 'e' + a combining accent) and without the characters that
                skip_unknown drops, so the continuation starts at ``len(result) - length`` unless stop ended it.
            length: characters to generate after the prime.
            temperature: divides the logits; below 1 greedier, above 1 more random, 0 always the likeliest.
            top_k: draw only from the k likeliest characters.
            top_p: draw from the smallest set of characters whose probability reaches p.
            seed: the same seed gives the same text.
            stop: end where this string first appears in the generated text (it is not included; a string begun
                in the prime does not count); a list of strings: where the text first completes any of them.
            num_samples: independent samples to draw.
            skip_unknown: drop prime characters the model never saw instead of raising.
            min_p: drop characters less likely than min_p times the likeliest (0.05 is common).
            max_repeat: never produce one character more than this many times in a row (0 or None: no guard).

        Returns:
            The text (prime included) when num_samples is 1, else a list of num_samples texts.

        Example:
            >>> model.generate("ROMEO:", length=100, temperature=0.8, seed=3)  # doctest: +SKIP
            'ROMEO: ...'
        """
        config = self._config(locals(), "generate")
        texts = [sample.text for sample in self.generator.samples(config, warn=_warn_in_keywords)]
        return texts[0] if num_samples == 1 else texts

    @_sampling_errors_as_keywords
    def stream(self, prime: str = "", length: int = 500, temperature: float = 0.5, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: Optional[int] = None,
               stop: Union[None, str, Sequence[str]] = None, skip_unknown: bool = False,
               min_p: Optional[float] = None, max_repeat: Optional[int] = DEFAULT_MAX_REPEAT) -> Iterator[str]:
        """Like :meth:`generate` for one sample, as an iterator of text pieces as they are produced: the first
        piece is the prime (if any) as the model reads it (see ``prime`` in :meth:`generate`), then the
        continuation.

        Example:
            >>> for piece in model.stream("The ", length=300):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        config = self._config(locals(), "stream")
        if not skip_unknown:  # like the options, an unknown prime character is refused now, not at the first piece
            prepare_prime(config.prime, self.vocab, False, None)
        return self.generator.stream(config, warn=_warn_in_keywords)

    @_sampling_errors_as_keywords
    def score(self, text: str) -> dict:
        """How well the model predicts text, reading it from its first character with a fresh state.

        The text is read in the Unicode form (NFC or NFD) the vocabulary knows best, as a prime is; characters
        outside the vocabulary are then removed (and counted) before scoring.

        Returns:
            A dict: ``bpc`` (bits per character), ``nats``, ``perplexity``, ``characters`` (predicted: all but
            the first, which nothing comes before), ``excluded`` (removed as unknown).

        Example:
            >>> model.score("To be, or not to be")["bpc"]  # doctest: +SKIP
            2.1
        """
        if not isinstance(text, str):
            raise OptionError(f"text must be a string, got {type(text).__name__}")
        if "\n" not in text and len(text) < 4096 and os.path.isfile(expand_user(text)):  # it scored a path's letters
            logger.warning(f"warning: scoring the text {text!r} itself, which names a file; to score the file, pass "
                           f"its text: score(pathlib.Path({text!r}).read_text(encoding='utf-8'))")
        return self.generator.score(text)

    def evaluate(self, path: str | Path, batch_size: int = 32, seq_length: int = 200) -> dict:
        """Bits per character of a text file under the checkpoint this model holds, as ``textgen eval`` measures a
        held-out text: the file read in batch_size parallel streams (each from a fresh state, so 1 reads a short
        text as one stream), its characters outside the vocabulary removed and counted.

        Returns:
            A dict: ``bpc``, ``nats``, ``perplexity``, ``characters`` (scored), ``unknown`` (removed),
            ``unknown_characters`` (each of them once, in order of appearance), ``unscored`` (the first character,
            and the end that does not fill all batch_size streams), ``total`` (the file's characters).

        Example:
            >>> model.evaluate("data/held_out.txt")["bpc"]  # doctest: +SKIP
            1.93
        """
        from textgen.evaluation import evaluate_loaded

        (path,) = _check_paths(path=path)
        try:
            with _log_in_keywords(str(path)):  # its note on short streams: batch_size=1, not --batch-size 1
                result = evaluate_loaded(path, self.run_dir, (self.generator.model, self.generator.meta), batch_size,
                                         seq_length)
        except DamagedCheckpoint as error:
            raise _train_keywords(error) from None
        except TextgenError as error:
            raise as_keywords(error, {"batch_size", "seq_length"}, keep=[str(path)]) from None
        return {key: value for key, value in result.items() if key not in ("run_dir", "batches")}

    @_sampling_errors_as_keywords
    def next_char_probabilities(self, prime: str = "", temperature: float = 1.0,
                                skip_unknown: bool = False) -> dict[str, float]:
        """The model's distribution of the character after prime (read as :meth:`generate` reads it), the likeliest
        first, before any filter: ``{character: probability}``.

        Args:
            prime: the text so far; empty: the start of a text.
            temperature: divides the logits as in :meth:`generate` (1: the model's own distribution; 0: everything
                on the likeliest).
            skip_unknown: drop prime characters the model never saw instead of raising.

        Example:
            >>> list(model.next_char_probabilities("The quick brown fo").items())[:2]  # doctest: +SKIP
            [('r', 0.61), ('l', 0.12)]
        """
        temperature = _one_temperature(temperature, "next_char_probabilities")[0]
        return self.generator.next_char_probabilities(prime, temperature, skip_unknown)

    def export(self, output: str | Path, format: str | Sequence[str] = ("keras", "savedmodel"),
               overwrite: bool = False) -> list[Path]:
        """Write the loaded checkpoint (the one this model holds, even if a training has saved a newer one since) as
        files that plain Keras, TensorFlow (Serving) and LiteRT load without textgen, as ``textgen export`` does
        (README.md, "Export and serve with TensorFlow").

        Args:
            output: the directory to write. It is built under a temporary name and renamed into place, so a
                failure leaves nothing half-written.
            format: "keras" (model.keras), "savedmodel", "litert" (model.tflite), several of them, or "all";
                vocab.json is always written.
            overwrite: replace an earlier export in output (only once the new one is complete).

        Returns:
            The paths written.

        Example:
            >>> model.export("exports/demo", format="all")  # doctest: +SKIP
        """
        from textgen.export import export

        (output,) = _check_paths(output=output)
        if not isinstance(overwrite, bool):  # "no" would replace an earlier export
            raise OptionError(f"overwrite must be true or false, got {overwrite!r}")
        formats = (format,) if isinstance(format, str) else format
        if not isinstance(formats, (list, tuple)) or not all(isinstance(name, str) for name in formats):
            raise OptionError(f"format must be a format's name or a list of them, got {format!r}")
        try:  # the checkpoint this model holds, whatever a training has saved since
            return export(self.run_dir, Path(output), tuple(formats), overwrite,
                          loaded=(self.generator.model, self.generator.meta))
        except TextgenError as error:
            raise as_keywords(error, {"format", "output", "overwrite"}, {"overwrite"}) from None

    @staticmethod
    def _config(arguments: dict, method: str) -> SampleConfig:
        """The SampleConfig of a generate() or stream() call, from its arguments (its locals()): the ones named as
        SampleConfig's fields, so a new sampling option is added to the signatures and docstring only."""
        config = sample_config_of(dict(arguments, temperature=_one_temperature(arguments["temperature"], method)))
        config.validate()  # here, so that stream() refuses bad options when called, not at its first piece
        return config


def _one_temperature(value, method: str) -> tuple:
    """(temperature,): a list, an array or a range is refused (generate([0.5, 1.0]) gave the 0.5 text alone)."""
    values = temperature_values(value)  # (a generator is read once, here)
    if len(values) != 1:
        raise OptionError(f"temperature must be one number here; call {method} once per temperature")
    return values


def list_runs(checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR) -> list[dict]:
    """The runs under checkpoint_dir as ``textgen runs`` lists them, the most recently saved first (then any left
    without metadata): a dict each with name, path (to give :func:`load`), corpus (the file's path), characters,
    epochs (trained), step_in_epoch (steps into an epoch not finished), planned_epochs (None: until its time
    budget), val_bpc (the best checkpoint's, None before its first validation), best_epoch (the epoch of val_bpc),
    seconds (of training, across resumes), saved_at (ISO 8601), model and options (the shape, ModelConfig's fields,
    and the training options, TrainConfig's, the run trained with: what ``size="auto"`` chose too), started_from
    (a run fine-tuned with ``init_from``: a dict of the run, kind, epoch, step_in_epoch and corpus it started from;
    else None) and training (the pid of a training writing the run now, or None). A run that cannot be read has
    ``problem`` ("damaged", "written by a newer textgen", "not readable by you", "no checkpoint yet" for a
    training's first epoch, listed first, or "no checkpoint: a training ended before its first save (...)" for a
    folder one left; :func:`load` says more) and None in its other fields; ``problem`` is None for a run that can be
    read. Only the runs' metadata is read: a weights file damaged since it was saved is found by :func:`load` (and
    ``textgen info``). A directory that does not exist holds no runs: an empty list.

    Example:
        >>> [run["name"] for run in textgen.list_runs()]  # doctest: +SKIP
        ['demo']
    """
    from textgen.report import run_rows
    from textgen.runs import all_runs, check_checkpoint_dir

    (checkpoint_dir,) = _check_paths(checkpoint_dir=checkpoint_dir)
    try:
        check_checkpoint_dir(Path(checkpoint_dir))
    except TextgenError as error:
        raise as_keywords(error, {"checkpoint_dir"}, keep=[str(checkpoint_dir)]) from None
    return run_rows(all_runs(Path(checkpoint_dir)))


def load(run: str | Path, checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, checkpoint: str = "best") -> TextModel:
    """Load a trained run.

    Args:
        run: a run directory (``"checkpoints/demo"``), a run name under checkpoint_dir (``"demo"``), or a
            directory of runs (``"checkpoints"``): its latest run (with a best checkpoint, for checkpoint "best").
        checkpoint_dir: where run names are looked up.
        checkpoint: ``"best"`` (lowest validation loss) or ``"last"``.

    Example:
        >>> model = textgen.load("checkpoints/demo")  # doctest: +SKIP
        >>> model.info["val_bpc"]  # doctest: +SKIP
        1.86
    """
    run, checkpoint_dir = _check_paths(run=run, checkpoint_dir=checkpoint_dir)
    if checkpoint not in ("best", "last"):
        raise OptionError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    try:
        return TextModel(_run_dir(run, checkpoint_dir, checkpoint), checkpoint)
    except TextgenError as error:  # a damaged run's advice: train again with overwrite=True
        raise _train_keywords(error) from None


def _train_keywords(error: TextgenError, keep=()) -> TextgenError:
    return as_keywords(error, TRAIN_KEYWORDS, TRAIN_FLAGS, valued=TRAIN_VALUED, choices=TRAIN_CHOICES,
                       keep=[str(text) for text in keep if text is not None])


_KEYWORD_THREADS: dict = {}  # thread id -> the texts left as they are in its records (paths), while it trains


@contextlib.contextmanager
def _log_in_keywords(*paths):
    """The training log of this call in the words of its Python call, as its errors are (size='fixed' where the
    command's log says --size fixed): only this thread's records (a server's in another thread are its own), and
    neither the paths given nor a quoted text (a command to run, such as dos2unix 'a --overwrite.txt')."""
    if _keyword_record not in logger.filters:
        logger.addFilter(_keyword_record)  # one filter for every thread, added once
    thread = threading.get_ident()
    _KEYWORD_THREADS[thread] = paths
    try:
        yield
    finally:
        _KEYWORD_THREADS.pop(thread, None)


def _keyword_record(record: logging.LogRecord) -> bool:
    kept = _KEYWORD_THREADS.get(threading.get_ident())  # (a filter runs in the thread that logs)
    if kept is None:
        return True
    try:
        text = record.getMessage()
    except Exception:  # a record that cannot be formatted: logging reports it, as without this filter
        return True
    if "--" in text:
        record.msg = str(_train_keywords(TextgenError(text), keep=[*kept, *re.findall(r"'[^']*'", text)]))
        record.args = None
    return True


def train(corpus: Optional[str | Path] = None, run: Optional[str] = None,
          checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR,
          resume: bool | str = False, overwrite: bool = False, callbacks: Sequence = (), tensorboard: bool = False,
          strategy: str = "auto", verbose: bool = True, init_from: Optional[str | Path] = None,
          **options) -> TextModel:
    """Train on a UTF-8 text file and return the trained run, loaded at its best checkpoint (as ``sample`` uses it:
    its ``info["epochs"]`` and ``history`` end at the best epoch, which can be before the last one trained).

    Args:
        corpus: the text file; None with resume=True and a run: the run's own corpus.
        run: the run name (default: the corpus file's name); its directory is checkpoint_dir/run.
        checkpoint_dir: where runs live.
        resume: continue the run from its last checkpoint; ``"auto"`` continues it if it has one and starts it
            otherwise, and returns a run with nothing left to train as it is (``textgen train --auto-resume``).
        overwrite: replace the run's existing checkpoints.
        callbacks: extra :class:`textgen.callbacks.Callback` objects.
        tensorboard: also write TensorBoard logs to the run's tensorboard directory.
        strategy: ``auto``, ``single``, ``mirrored`` or ``multi-worker`` (see ``textgen train --help``). Under
            ``multi-worker``, Ctrl-C while waiting for the other workers to join ends the whole process at once.
        init_from: start a new run from the best weights of this run (a run name under checkpoint_dir, or a run's
            directory): fine-tuning on another text. The model's shape is that run's, its vocabulary grows by the
            corpus's new characters, and epochs, optimizer and schedule start afresh; that run is only read.
        verbose: while your program has configured no logging (a notebook's default), write the training's lines
            (its pace, progress, each epoch's losses) on stderr as ``textgen train`` does; else they are INFO
            records of the ``textgen`` logger, shown where your logging sends them.
        **options: any ``textgen train`` option by its Python name, e.g. ``units=256, epochs=5,
            max_minutes=3`` (see ``textgen train --help``).

    Example:
        >>> model = textgen.train("data/pydoc_topics.txt", run="small", units=128, epochs=1)  # doctest: +SKIP
        >>> model.generate("def ", length=80)  # doctest: +SKIP
    """
    if run is not None and not isinstance(run, str):
        raise OptionError(f"run must be a run name (str), got {run!r}")
    if run is not None and not run.strip():  # "" took the corpus file's name
        raise OptionError("run is empty; give a run name, or leave run out to name it after the corpus file")
    if corpus is None and (run is None or not resume):
        raise OptionError("give the corpus (a text file), or run=NAME with resume=True to continue a run on its "
                          "own corpus")
    (checkpoint_dir,) = _check_paths(checkpoint_dir=checkpoint_dir)
    if corpus is not None:  # None: the run's own corpus when resuming (textgen.training.train checks it)
        (corpus,) = _check_paths(corpus=corpus)
    import_tensorflow_quietly()
    from textgen.callbacks import Interrupted
    from textgen.training import train as run_training

    try:
        model_options, train_options = split_training_options(options)
        with _log_in_keywords(corpus, checkpoint_dir), log_lines_on_stderr(verbose):
            summary = run_training(corpus, checkpoint_dir, run, model_options, train_options,
                                   resume=resume, overwrite=overwrite, callbacks=callbacks, tensorboard=tensorboard,
                                   strategy=strategy, init_from=init_from)
    except TextgenError as error:
        if error.python_message is not None:  # its advice written as a call already (as Interrupted's)
            raise TextgenError(error.python_message) from None
        raise _train_keywords(error, keep=(corpus, checkpoint_dir)) from None
    except Interrupted as stopped:  # advice to resume with textgen.train(...), not with the command
        raise stopped.in_python() from None
    return TextModel(summary["run_dir"], "best")


__all__ = ["TextModel", "load", "train"]
