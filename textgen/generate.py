"""generate(): text from a checkpoint, through the compiled engine, with streaming and stop strings."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from textgen.config import SampleConfig
from textgen.errors import TextgenError
from textgen.files import atomic_write_text
from textgen.progress import progress_bar

logger = logging.getLogger("textgen")
STREAM_CHUNK = 64  # characters per engine call when printing as we go: still looks live, amortises the call
BATCH_CHUNK = 256  # characters per engine call otherwise: large enough to amortise the call


@dataclass
class Sample:
    text: str  # prime followed by the generated text
    temperature: float
    index: int  # 0-based number of this sample among those at the same temperature
    stopped: bool  # True if the stop string ended it early


def prepare_prime(prime: str, vocab, skip_unknown: bool, warn: Callable[[str], None]) -> str:
    unknown = vocab.unknown(prime)
    if unknown and not skip_unknown:
        shown = " ".join(repr(ch) for ch in unknown[:20])
        raise TextgenError(f"the prime contains characters the model never saw: {shown}; "
                           "change the prime or pass --skip-unknown to drop them")
    if unknown:
        warn(f"warning: dropped {len(unknown)} unknown character(s) from the prime: "
             + " ".join(repr(ch) for ch in unknown[:20]))
        prime = "".join(ch for ch in prime if ch in vocab)
    return prime


def _start_symbol(vocab) -> str:
    """What an empty prime starts from: a newline reads as 'the start of a paragraph'."""
    return "\n" if "\n" in vocab else vocab.chars[0]


def _stop_cut(text: str, stop: Optional[str], searched_from: int) -> Optional[int]:
    if not stop:
        return None
    found = text.find(stop, max(0, searched_from - len(stop) + 1))
    return None if found < 0 else found


class Generator:
    """A checkpoint loaded for generation: the model at batch 1, its metadata, and compiled engines
    (one per number of streams, kept for the next call)."""

    def __init__(self, model, meta):
        self.model, self.meta, self.vocab = model, meta, meta.vocab
        self._engines: dict = {}

    @classmethod
    def load(cls, run_dir: Path, kind: str = "best") -> "Generator":
        from textgen.checkpoint import load_model

        return cls(*load_model(Path(run_dir), batch_size=1, kind=kind))

    def engine(self, streams: int):
        from textgen.engine import Engine

        if streams not in self._engines:
            self._engines[streams] = Engine.from_model(self.model, num_streams=streams)
        return self._engines[streams]

    def _produce(self, config: SampleConfig, chunk: int, warn: Callable[[str], None]):
        """Validate, prime every stream, then yield (prime, texts, cut positions, characters produced) per chunk."""
        config.validate()
        prime = prepare_prime(config.prime, self.vocab, config.skip_unknown, warn)
        streams = [t for t in config.temperature for _ in range(config.num_samples)]
        engine = self.engine(len(streams))
        engine.prime(np.tile(self.vocab.encode(prime or _start_symbol(self.vocab))[None, :].astype(np.int32),
                             (len(streams), 1)))
        rng = np.random.default_rng(secrets.randbits(63) if config.seed is None else config.seed)
        generated, cut = [""] * len(streams), [None] * len(streams)
        produced = 0
        yield prime, generated, cut, produced
        while produced < config.length and any(c is None for c in cut):
            step = min(chunk, config.length - produced)
            produced += step
            ids = engine.sample(step, temperature=np.array(streams, np.float32), top_k=config.top_k,
                                top_p=config.top_p, min_p=config.min_p, max_repeat=config.max_repeat, rng=rng)
            for index, row in enumerate(ids):
                if cut[index] is None:
                    before = len(generated[index])
                    generated[index] += self.vocab.decode(row)
                    cut[index] = _stop_cut(generated[index], config.stop, before)
            yield prime, generated, cut, produced

    def samples(self, config: SampleConfig, show_progress: bool = False,
                warn: Callable[[str], None] = logger.warning) -> list[Sample]:
        """num_samples texts per temperature: each the prime plus up to length characters, cut before stop."""
        bar = progress_bar(config.length, "generating", unit="char", enabled=show_progress)
        for prime, generated, cut, produced in self._produce(config, BATCH_CHUNK, warn):  # noqa: B007 (kept after)
            bar(produced)
        labels = [(t, i) for t in config.temperature for i in range(config.num_samples)]
        return [Sample(prime + (text if c is None else text[:c]), t, i, c is not None)
                for text, c, (t, i) in zip(generated, cut, labels)]

    def stream(self, config: SampleConfig, warn: Callable[[str], None] = logger.warning) -> Iterator[str]:
        """One sample (the first temperature) as pieces of text as they are produced, the prime first.

        The generator's return value (StopIteration.value) is the finished Sample."""
        config = dataclasses.replace(config, temperature=config.temperature[:1], num_samples=1)
        emitted = 0
        for prime, [text], [cut], produced in self._produce(config, STREAM_CHUNK, warn):
            if produced == 0:
                if prime:
                    yield prime
                continue
            # Hold back what could be the start of the stop string until it is decided.
            ready = cut if cut is not None else len(text) - (len(config.stop) - 1 if config.stop else 0)
            if ready > emitted:
                yield text[emitted:ready]
                emitted = ready
        final = text if cut is None else text[:cut]
        if len(final) > emitted:
            yield final[emitted:]
        return Sample(prime + final, config.temperature[0], 0, cut is not None)


def generate(checkpoint_dir: str | Path = "checkpoints", run: Optional[str] = None, prime: str = "",
             length: int = 500, temperatures: Sequence[float] = (0.5,), top_k: Optional[int] = None,
             top_p: Optional[float] = None, num_samples: int = 1, seed: Optional[int] = None,
             stop: Optional[str] = None, skip_unknown: bool = False,
             on_text: Optional[Callable[[str], None]] = None, show_progress: bool = False,
             warn: Callable[[str], None] = logger.warning, min_p: Optional[float] = None,
             max_repeat: Optional[int] = None) -> list[Sample]:
    """Generate num_samples texts per temperature from the best checkpoint of the run.

    Each text is the prime followed by up to length generated characters, cut before the first
    occurrence of stop. The same checkpoint, seed and options give the same texts. If on_text is
    given and there is a single stream, text is passed to it as it is produced. show_progress draws
    a progress bar on stderr (when it is a terminal)."""
    from textgen.runs import find_run

    config = SampleConfig(temperature=tuple(float(t) for t in temperatures), top_k=top_k, top_p=top_p, min_p=min_p,
                          max_repeat=max_repeat,
                          length=length, prime=prime, num_samples=num_samples, seed=seed, stop=stop,
                          skip_unknown=skip_unknown)
    config.validate()
    generator = Generator.load(find_run(Path(checkpoint_dir), run))
    if on_text is not None and len(config.temperature) * num_samples == 1:
        pieces = generator.stream(config, warn)
        while True:
            try:
                on_text(next(pieces))
            except StopIteration as finished:
                return [finished.value]
    return generator.samples(config, show_progress=show_progress, warn=warn)


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


def parse_temperatures(value: str) -> list[float]:
    """'0.5' or '0.2,0.5,1.0' -> floats (range checks happen in generate)."""
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise TextgenError(f"--temperature must be a number or a comma-separated list such as 0.2,0.5,1.0, "
                           f"got {value!r}") from None


def write_output(path: Path, text: str) -> None:
    """Write the text to path atomically, so a failure never leaves half a file or clobbers the old one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise TextgenError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        atomic_write_text(path, text)
    except OSError as error:
        raise TextgenError(f"cannot write {path} ({error.strerror}); choose another --output") from None
