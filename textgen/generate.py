"""generate(): text from a checkpoint, through the compiled engine, with streaming and stop strings."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import secrets
import sys
import threading
import types
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from textgen import sampling
from textgen.config import DEFAULT_CHECKPOINT_DIR, DEFAULT_MAX_REPEAT, SampleConfig, check_text, sample_config_of
from textgen.errors import TextgenError, counted, shown_start
from textgen.evaluation import bpc, perplexity
from textgen.progress import progress_bar
from textgen.quiet_import import import_tensorflow_quietly
from textgen.vocab import compatibility_form, quoted, quoted_first

logger = logging.getLogger("textgen")
SCORE_BLOCK = 4096  # characters fed per engine call when scoring (bounds the logits held at once)
STREAM_CHUNK = 64  # characters per engine call when printing as we go: still looks live, amortises the call
BATCH_CHUNK = 256  # characters per engine call otherwise: large enough to amortise the call
NAMED = 20  # unknown characters a message names at most
# What a shell passes for --stop '\n' or '\t' (a backslash and a letter), with what was meant
TYPED_ESCAPES = {"\\n": ("\n", "a line break"), "\\t": ("\t", "a tab")}


@dataclass
class Sample:
    text: str  # prime followed by the generated text
    temperature: float
    index: int  # 0-based number of this sample among those at the same temperature
    stopped: bool  # True if a stop string ended it early


def collect_warnings(into: list) -> Callable[[str], None]:
    """A warn for prepare_prime that keeps its messages for an answer (without their "warning: " prefix), where the
    server tells a client what it dropped instead of logging it."""
    return lambda message: into.append(message.removeprefix("warning: "))


def prepare_prime(prime: str, vocab, skip_unknown: bool, warn: Optional[Callable[[str], None]]) -> str:
    """prime as the model reads it (vocab's Unicode form); unknown characters refused, or dropped with skip_unknown
    and said to warn (None: silently, for a caller that asked for the drop and says so itself if need be)."""
    typed, read_as = typed_as_the_text_writes(prime, vocab)
    prime = vocab.in_known_form(typed)
    unknown = vocab.unknown(prime)
    if unknown and not skip_unknown:
        lost = unknown_as_typed(typed, vocab)
        shown = quoted((lost or unknown)[:NAMED])
        # é read as e + an accent the model never saw: --skip-unknown keeps the e (and warns of the accent)
        accented = [ch for ch in lost if any(part in vocab for part in vocab.in_known_form(ch))]
        accents = f"accent{'s' * (len(accented) > 1)}"
        partly = f" (of {quoted(accented)} it drops only the {accents})" if accented else ""
        raise TextgenError(f"the prime contains characters the model never saw: {shown}; "
                           f"change the prime{_known_variants(lost or unknown, vocab)} or pass --skip-unknown to "
                           f"drop them{partly}")
    if unknown:
        kept = "".join(ch for ch in prime if ch in vocab)
        if warn is not None:
            warn(f"warning: dropped {counted(len(prime) - len(kept), 'unknown character')} from the prime: "
                 + quoted(unknown[:NAMED]))  # every one dropped, each kind named once
        prime = kept
    if read_as and warn is not None:  # (after the check: a refused prime was read no way)
        warn(f"note: read the prime's {read_as}, as the model's text writes them")
    return prime


def unknown_as_typed(text: str, vocab, limit: int = NAMED) -> list[str]:
    """The first limit characters of text the model cannot read, named as typed (ñ, not the tilde that n + tilde
    would lose): each is converted on its own, so all of 16 stop strings of 1,000 characters took half a second."""
    return list(itertools.islice((ch for ch in vocab.unknown(text) if vocab.unknown(vocab.in_known_form(ch))), limit))


def known_variants(unknown: list[str], vocab) -> str:
    """The characters of the vocabulary that are another width or form of unknown ones (a Chinese keyboard's '，'
    for the corpus's ','; its curly quotes for a straight one): "'’' or '‘' for \"'\"", '' when there are none."""
    known = vocab.by_compatibility_form
    variants = [f"{' or '.join(map(repr, known[compatibility_form(ch)]))} for {quoted([ch])}" for ch in unknown
                if compatibility_form(ch) in known][:10]
    if "\r" in unknown and "\n" in vocab:  # a text saved on Windows
        variants.append("'\\n' for '\\r\\n' (Windows line ends)")
    return ", ".join(variants)


def _known_variants(unknown: list[str], vocab) -> str:
    """known_variants() as a clause of an error: " (the model knows ...)", '' when there are none."""
    variants = known_variants(unknown, vocab)
    return f" (the model knows {variants})" if variants else ""


_OPENS = ("Ps", "Pi", "Pd", "Zs")  # a quote after an opening bracket or quote, a dash or a space is an opening one


def _closed_later(text: str, index: int) -> bool:
    """Whether the straight single quote at index opens a quotation: a later one ends a word ('go' closes; in
    'cause it's, the next one is inside a word, so the first is an apostrophe, as in '90s)."""
    for later in re.finditer("'", text[index + 1:]):
        after = index + 1 + later.end()
        if after == len(text) or not text[after].isalnum():
            return True
    return False


def typed_as_the_text_writes(text: str, vocab) -> tuple[str, str]:
    """text with each character the model never saw, but knows in another form, in that form: a straight quote as
    the corpus's curly one (an opening one at the start or after a space, bracket or dash, and for ' only where a
    later one closes it, else a closing one, the apostrophe: "don't" -> "don’t", "'cause" -> "’cause"; the error's
    hint named '‘'), a full-width '，' as ',', Windows' \\r\\n as \\n (a --prime-file saved in Notepad). Returns it
    and what was read so, for a note ('' when nothing was)."""
    forms, written, read_as = vocab.by_compatibility_form, [], {}
    for index, ch in enumerate(text):
        if ch == "\r" and text[index + 1:index + 2] == "\n" and "\r" not in vocab and "\n" in vocab:
            read_as.setdefault("\r\n", {"\n": None})
            continue
        known = None if ch in vocab or not vocab.unknown(vocab.in_known_form(ch)) \
            else forms.get(compatibility_form(ch))
        if known:
            opening = (not written or written[-1] in "\n\t" or unicodedata.category(written[-1]) in _OPENS) \
                and (ch != "'" or _closed_later(text, index))
            wanted = ("Ps", "Pi") if opening else ("Pf", "Pe")  # (German opens with „, Ps, and closes with “, Pi)
            chosen = next((each for kind in wanted for each in known if unicodedata.category(each) == kind),
                          known[0])
            read_as.setdefault(ch, {})[chosen] = None  # (a dict: the forms chosen, in order, once each)
            ch = chosen
        written.append(ch)
    said = [f"{quoted([typed]) if len(typed) == 1 else repr(typed)} as {' and '.join(map(repr, chosen))}"
            for typed, chosen in read_as.items()]
    return "".join(written), ", ".join(said)


def start_symbol(vocab) -> str:
    """What the model reads first, before any prime: a newline reads as 'the start of a paragraph'."""
    return "\n" if "\n" in vocab else vocab.chars[0]


def reading_context(prime: str, vocab) -> str:
    """What the model reads before it writes: the start symbol, then the prime (unless the prime starts with it).
    Trained on streams that start anywhere in the text, from a fresh state it read a prime alone as if in mid-line:
    after "JULIET:" it put 26% on a line break, 96% after "\nJULIET:", and its first characters were often noise."""
    start = start_symbol(vocab)
    return prime if prime.startswith(start) else start + prime


class RequestDraws:
    """The uniforms of one request's samples, time-major: (steps, samples), whatever the calls' lengths.

    Each sample draws from a generator of its own, seeded by the request's seed and the sample's index among those
    at its temperature (the seed's own generator for index 0). So a sample's text depends on its seed, temperature and
    index, not on how many samples or temperatures were asked for with it: seed 5 alone gives the first of four
    samples with seed 5, and -t 0.2,1.0 gives each temperature's text alone (one draw at two temperatures, so the
    two are alike). (Engines of different sizes round differently in the last bit, which in long samples now
    and then tips a near tie: request_batcher's docstring has the measurement.) Without a seed every sample gets a
    random generator."""

    def __init__(self, seed: Optional[int], indexes: Sequence[int]):
        if seed is None:
            seeds = np.random.SeedSequence().spawn(len(indexes))
        else:  # a spawn key, not [seed, index]: that would equal seed + 2**32 * index
            seeds = [seed if index == 0 else np.random.SeedSequence(seed, spawn_key=(index,)) for index in indexes]
        self.generators = [np.random.default_rng(each) for each in seeds]

    def next(self, steps: int) -> np.ndarray:
        return np.stack([generator.random(steps) for generator in self.generators], axis=1)


def _stop_cut(text: str, stops: tuple, searched_from: int) -> Optional[int]:
    """Where text is cut: before the stop string that text completes first (text[:searched_from] holds none), or
    None. First completed, not first begun: the cut must not depend on how the text arrived in pieces."""
    found = []  # (where it ends, where it starts) of each stop string's first occurrence
    for stop in stops:
        start = text.find(stop, max(0, searched_from - len(stop) + 1))
        if start >= 0:
            found.append((start + len(stop), start))
    return min(found)[1] if found else None


class TextStreams:
    """The samples of one request as their ids arrive: each cut at length and before the stop string,
    and the part of each that is decided (what could start the stop string is held back)."""

    def __init__(self, vocab, config: SampleConfig, prime: str):
        self.vocab, self.config, self.prime = vocab, config, prime
        self.temperatures = [t for t in config.temperature for _ in range(config.num_samples)]
        self.indexes = [index for _ in config.temperature for index in range(config.num_samples)]  # per temperature
        self.stops = tuple(vocab.in_known_form(stop) for stop in config.stops)  # as the model's text has them
        self.held_back = max((len(stop) - 1 for stop in self.stops), default=0)  # what could begin one of them
        self.texts = [""] * len(self.temperatures)
        self.cuts: list[Optional[int]] = [None] * len(self.temperatures)
        self.produced = 0  # characters generated per stream so far
        self.emitted = [0] * len(self.temperatures)  # characters of each stream already handed out

    def unreachable_stops(self) -> list[str]:
        """What to tell of each stop string holding a character the model never saw: it can never end a sample."""
        messages = []
        for stop, compared in zip(self.config.stops, self.stops):
            if missing := self.vocab.unknown(compared):
                unknown = unknown_as_typed(stop, self.vocab) or missing
                # --stop '\n' in a shell is a backslash and an n
                escaped = [f"{typed} here is a backslash and {typed[1]}, not {what}: in a shell, type $'{typed}'"
                           for typed, (ch, what) in TYPED_ESCAPES.items() if typed in stop and ch in self.vocab]
                typed = f" ({'; '.join(escaped)})" if escaped else ""
                messages.append(f"the stop string {shown_start(stop)} can never end a sample: the model never saw "
                                f"{quoted(unknown[:NAMED])}{_known_variants(unknown, self.vocab)}{typed}")
        return messages

    def repeats_ended(self) -> list[str]:
        """What to tell of the runs the repeat guard ended: a character drawn after max_repeat of one in a row. The
        guard is there for a small model's loops ("eeee..."), but it also cuts code's deep indentation or a line of
        '=' without a word. (A run the model itself ended at exactly max_repeat is counted too: it cannot be told
        apart.)"""
        limit = self.config.max_repeat
        if limit < REPEATS_TOLD_FROM:  # a limit chosen to shape ordinary text (no doubled letters), not a guard
            return []
        ended: dict[str, int] = {}
        run = re.compile(f"(.)\\1{{{limit - 1},}}", re.S)  # (a run's leftmost match starts where the run does)
        # from the start of the prime's last run: a prime that ends in limit spaces or more has its run ended at once
        searched_from = len(self.prime.rstrip(self.prime[-1])) if self.prime else 0
        for sample in self.samples():
            for found in run.finditer(sample.text, searched_from):
                ends_in_the_text = len(self.prime) < found.end() and len(found.group()) == limit
                ends_the_prime = found.end() == len(self.prime)  # (limit or more of it)
                if (ends_in_the_text or ends_the_prime) and found.end() < len(sample.text):
                    ended[found.group(1)] = ended.get(found.group(1), 0) + 1
        if not ended:
            return []
        return [f"the repeat guard (--max-repeat {limit}) ended {counted(sum(ended.values()), 'run')} of "
                f"{quoted_first(list(ended))} at {limit} in a row; a text with longer runs (code's indentation, a "
                "line of '=') needs a larger --max-repeat, or --max-repeat 0 for no guard"]

    @property
    def context(self) -> str:
        """What the streams are primed with."""
        return reading_context(self.prime, self.vocab)

    @property
    def done(self) -> bool:
        return self.produced >= self.config.length or all(cut is not None for cut in self.cuts)

    def add(self, ids: np.ndarray) -> None:
        """Append ids (streams, steps); steps past length are dropped."""
        for index, row in enumerate(ids):
            if self.cuts[index] is None:
                before = len(self.texts[index])
                self.texts[index] = (self.texts[index] + self.vocab.decode(row))[:self.config.length]
                self.cuts[index] = _stop_cut(self.texts[index], self.stops, before)
        self.produced += ids.shape[1]

    def take_ready(self, index: int = 0) -> str:
        """The next decided piece of stream index ("" if none yet)."""
        text, cut = self.texts[index], self.cuts[index]
        if cut is not None:
            ready = cut
        elif self.done:
            ready = len(text)
        else:
            ready = len(text) - self.held_back
        piece = text[self.emitted[index]:ready] if ready > self.emitted[index] else ""
        self.emitted[index] += len(piece)
        return piece

    def samples(self) -> list[Sample]:
        return [Sample(self.prime + (text if cut is None else text[:cut]), temperature, index, cut is not None)
                for text, cut, temperature, index in zip(self.texts, self.cuts, self.temperatures, self.indexes)]


REPEATS_TOLD_FROM = 8  # the smallest --max-repeat whose ended runs are told (a smaller one shapes ordinary text)
ENGINE_SIZES = (1, 4, 8, 16, 32, 64)  # the numbers of streams engines are compiled for (beyond: multiples of 64)


def engine_size(streams: int) -> int:
    """The engine size that runs this many streams: the smallest of ENGINE_SIZES that holds them."""
    return next((size for size in ENGINE_SIZES if size >= streams), -(-streams // 64) * 64)


class Generator:
    """A checkpoint loaded for generation: the model at batch 1, its metadata and weights, and compiled
    engines (one per engine size, :func:`engine_size`, reused by later calls; a busy engine is never lent twice)."""

    def __init__(self, model, meta, one_loop: bool = True):
        from textgen.engine import weights_from_model

        self.model, self.meta, self.vocab = model, meta, meta.vocab
        # Sampling through the one compiled loop that applies every filter (see _run): a loop per mix of options grew
        # a long-lived process (a notebook, the API) by ~6 MB and 0.3-1 s of compiling per mix and engine size. A
        # command that samples once compiles the loop its options need instead, 0.3-0.9 s sooner.
        self.one_loop = one_loop
        self.weights = weights_from_model(model)
        self._idle: dict = {}
        self._lock = threading.Lock()
        # Scores from several threads (a server's pool) take turns on one engine: each would otherwise build and
        # compile an engine of its own, and keep it (12 at once: 27 s and 440 MB more for a 3M model).
        self._scoring = threading.Lock()

    @classmethod
    def load(cls, run_dir: Path, kind: str = "best", one_loop: bool = True) -> "Generator":
        from textgen.checkpoint import load_model

        return cls(*load_model(Path(run_dir), batch_size=1, kind=kind), one_loop=one_loop)

    def take_engine(self, streams: int):
        """An engine of streams streams for the caller alone, until it is given back."""
        from textgen.engine import Engine

        with self._lock:
            idle = self._idle.setdefault(streams, [])
            return idle.pop() if idle else Engine(self.weights, streams)

    def give_back(self, engine) -> None:
        with self._lock:
            self._idle.setdefault(engine.num_streams, []).append(engine)

    @contextlib.contextmanager
    def engine(self, streams: int):
        engine = self.take_engine(streams)
        try:
            yield engine
        finally:
            self.give_back(engine)

    def _produce(self, config: SampleConfig, chunk: int, warn: Optional[Callable[[str], None]]):
        """Validate and prime the streams of one request, then yield its TextStreams once before and
        once after each chunk."""
        config.validate()
        streams = TextStreams(self.vocab, config, prepare_prime(config.prime, self.vocab, config.skip_unknown, warn))
        if warn is not None:
            for message in streams.unreachable_stops():
                warn(f"warning: {message}")
        draws = RequestDraws(config.seed, streams.indexes)
        rows = len(streams.temperatures)
        # An engine of a bucket's size, the spare streams idle: every number of samples from 5 to 8 shares one
        # compiled engine instead of compiling (1-2 s) and keeping one each. The request's uniforms are drawn
        # for its own streams, as an engine of its exact size would draw them: the same seed, the same text.
        size = engine_size(rows)
        temperatures = np.zeros(size, np.float32)
        temperatures[:rows] = streams.temperatures
        with self.engine(size) as engine:
            engine.prime(np.tile(self.vocab.encode(streams.context)[None, :].astype(np.int32), (size, 1)))
            yield streams
            while not streams.done:
                step = min(chunk, config.length - streams.produced)
                uniforms = np.zeros((step, size))
                uniforms[:, :rows] = draws.next(step)
                # one_loop: whichever filters this request uses (400 calls of a notebook's sweep had compiled 90
                # loops, 400 MB); that loop costs no more per step (0.037 ms for one stream, 0.45 ms for 64)
                ids = engine.sample(step, temperature=temperatures, uniforms=uniforms, every_filter=self.one_loop,
                                    **{name: getattr(config, name) for name in sampling.FILTERS})
                streams.add(ids[:rows])
                yield streams
        if warn is not None:
            for message in streams.repeats_ended():
                warn(f"note: {message}")

    def samples(self, config: SampleConfig, show_progress: bool = False,
                warn: Callable[[str], None] = logger.warning) -> list[Sample]:
        """num_samples texts per temperature: each the prime plus up to length characters, cut before stop."""
        bar = progress_bar(config.length, "generating", unit="char", enabled=show_progress)
        for streams in self._produce(config, BATCH_CHUNK, warn):
            bar(streams.produced)
        return streams.samples()

    def stream(self, config: SampleConfig, warn: Optional[Callable[[str], None]] = logger.warning,
               chunk: int = STREAM_CHUNK, show_progress: bool = False) -> Iterator[str]:
        """One sample (the first temperature) as pieces of text as they are produced, the prime first, chunk
        characters per engine call.

        The generator's return value (StopIteration.value) is the finished Sample."""
        config = dataclasses.replace(config, temperature=config.temperature[:1], num_samples=1)
        bar = progress_bar(config.length, "generating", unit="char", enabled=show_progress)
        for streams in self._produce(config, chunk, warn):
            bar(streams.produced)
            piece = streams.take_ready() if streams.produced else streams.prime
            if piece:
                yield piece
        return streams.samples()[0]

    def next_logits(self, prime: str) -> np.ndarray:
        """The (V,) logits of the character after prime (prepared: see prepare_prime), read from a fresh state after
        the start symbol, as generation reads it (reading_context)."""
        ids = self.vocab.encode(reading_context(prime, self.vocab)).astype(np.int32)
        with self._scoring, self.engine(1) as engine:
            engine.prime(ids[None, :])
            return engine.last_logits[0]

    def next_char_probabilities(self, prime: str, temperature: float, skip_unknown: bool = False,
                                warn: Optional[Callable[[str], None]] = logger.warning) -> dict[str, float]:
        """The distribution of the character after prime (read as generation reads it: prepare_prime), the likeliest
        first, before any filter: {character: probability}; temperature 0 puts everything on the likeliest. The
        Python API's TextModel.next_char_probabilities and the server's POST /v1/next both answer with this."""
        SampleConfig(prime=prime, temperature=(temperature,), skip_unknown=skip_unknown).validate()
        logits = self.next_logits(prepare_prime(prime, self.vocab, skip_unknown, warn)).astype(np.float64)
        if temperature == 0:
            weights = (np.arange(len(logits)) == np.argmax(logits)).astype(np.float64)
        else:  # a tiny temperature overflows to -inf, weight 0, as it should: no RuntimeWarning on stderr (a server's
            # log got two lines of NumPy's, without time or level, for "temperature": 5e-324)
            with np.errstate(over="ignore"):
                weights = np.exp((logits - logits.max()) / temperature)
        order = np.argsort(-weights, kind="stable")
        return {self.vocab.chars[i]: float(weights[i] / weights.sum()) for i in order}

    def score(self, text: str) -> dict:
        """Cross-entropy of text read from its first character with a fresh state, in the Unicode form (NFC or NFD)
        the vocabulary knows best; characters outside the vocabulary are removed (and counted) first.

        From the engine's logits, not evaluation.window_loss_sum's Keras model: a server scores with the engine it
        already holds, any length of text at one stream. test_api checks that the two give the same loss."""
        check_text("text", text)
        _, ids, excluded = self.vocab.encode_in_known_form(text)
        if len(ids) < 2:
            raise TextgenError(f"the text has {counted(len(ids), 'character')} the model knows; scoring needs at "
                               "least 2")
        total = 0.0
        with self._scoring, self.engine(1) as engine:
            engine.reset()
            for start in range(0, len(ids) - 1, SCORE_BLOCK):
                block = ids[start:min(start + SCORE_BLOCK, len(ids) - 1)]
                logits = engine.logits(block[None, :].astype(np.int32))[0].astype(np.float64)
                targets = ids[start + 1:start + 1 + len(block)].astype(np.int64)
                peak = logits.max(axis=1, keepdims=True)
                log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
                total += float((log_norm - logits[np.arange(len(block)), targets]).sum())
        nats = total / (len(ids) - 1)
        return dict(bpc=bpc(nats), nats=nats, perplexity=perplexity(nats), characters=len(ids) - 1, excluded=excluded)


def generate(checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, run: Optional[str] = None, prime: str = "",
             length: int = 500, temperatures: Sequence[float] = (0.5,), top_k: Optional[int] = None,
             top_p: Optional[float] = None, num_samples: int = 1, seed: Optional[int] = None,
             stop: Union[None, str, Sequence[str]] = None, skip_unknown: bool = False,
             on_text: Optional[Callable[[str], None]] = None, show_progress: bool = False,
             warn: Callable[[str], None] = logger.warning, min_p: Optional[float] = None,
             max_repeat: Optional[int] = DEFAULT_MAX_REPEAT) -> list[Sample]:
    """Generate num_samples texts per temperature (one number or a list) from the best checkpoint of the run.

    Each text is the prime followed by up to length generated characters, cut before the first
    occurrence of stop (a string, or several: whichever the text completes first). The same checkpoint,
    seed and options give the same texts. If on_text is given and there is a single stream, text is
    passed to it as it is produced. show_progress draws a progress bar on stderr (when it is a terminal)."""
    config = sample_config_of(dict(locals(), temperature=temperatures))
    return generate_with(config, checkpoint_dir, run, on_text, show_progress, warn)


def generate_with(config: SampleConfig, checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, run: Optional[str] = None,
                  on_text: Optional[Callable[[str], None]] = None, show_progress: bool = False,
                  warn: Callable[[str], None] = logger.warning, chunk: int = STREAM_CHUNK) -> list[Sample]:
    """:func:`generate` with the sampling options as one SampleConfig (what the command line builds); with on_text,
    one sample goes to it in pieces of chunk characters as they are produced."""
    from textgen.runs import find_run

    config.validate()  # before loading: a bad option costs nothing
    run_dir = find_run(Path(checkpoint_dir), run)
    import_tensorflow_quietly()
    generator = Generator.load(run_dir, one_loop=False)  # (samples once)
    if on_text is not None and config.sample_count == 1:
        pieces = generator.stream(config, warn, chunk, show_progress)
        while True:
            try:
                on_text(next(pieces))
            except StopIteration as finished:
                return [finished.value]
    return generator.samples(config, show_progress=show_progress, warn=warn)


SEEDS_DRAWN = 2**31  # a drawn seed is below this (exact as a JavaScript number)


def with_seed_drawn(config: SampleConfig) -> SampleConfig:
    """config with a seed drawn where it has none, to tell the caller how to have its text again; not for several
    temperatures, whose samples would then share their draws (a seed's samples do: [1.0, 1.0] gave one text twice)."""
    if config.seed is None and len(config.temperature) == 1:
        return dataclasses.replace(config, seed=secrets.randbelow(SEEDS_DRAWN))
    return config


def format_samples(samples: list[Sample], num_temperatures: int) -> str:
    """Several samples as one text, each under a header naming its number and temperature."""
    if len(samples) == 1:
        return samples[0].text
    per_temperature = len(samples) // num_temperatures
    parts = []
    for sample in samples:
        label = f"temperature {sample.temperature:g}"
        if per_temperature > 1:
            label = f"sample {sample.index + 1}/{per_temperature}, {label}"
        parts.append(f"===== {label} =====\n{sample.text}\n")
    return "\n".join(parts)


class _CalledAsAFunction(types.ModuleType):
    """textgen.generate is this module (the package's attribute for it), which a user calls as the function they
    expect: Python's "'module' object is not callable" did not say what to call instead."""

    def __call__(self, *args, **kwargs):
        raise TypeError("textgen.generate is a module; load a run and generate from it: "
                        "textgen.load('NAME').generate('The ', length=200) (or textgen.generate.generate(...))")


sys.modules[__name__].__class__ = _CalledAsAFunction
