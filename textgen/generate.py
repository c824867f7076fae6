"""generate(): text from a checkpoint, through the compiled engine, with streaming and stop strings."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

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


def generate(checkpoint_dir: str | Path = "checkpoints", run: Optional[str] = None, prime: str = "",
             length: int = 500, temperatures: Sequence[float] = (0.5,), top_k: Optional[int] = None,
             top_p: Optional[float] = None, num_samples: int = 1, seed: Optional[int] = None,
             stop: Optional[str] = None, skip_unknown: bool = False,
             on_text: Optional[Callable[[str], None]] = None, show_progress: bool = False,
             warn: Callable[[str], None] = logger.warning) -> list[Sample]:
    """Generate num_samples texts per temperature from the best checkpoint of the run.

    Each text is the prime followed by up to length generated characters, cut before the first
    occurrence of stop. The same checkpoint, seed and options give the same texts. If on_text is
    given and there is a single stream, text is passed to it as it is produced. show_progress draws
    a progress bar on stderr (when it is a terminal)."""
    from textgen.checkpoint import load_model
    from textgen.engine import Engine
    from textgen.runs import find_run

    SampleConfig(temperature=tuple(temperatures), top_k=top_k, top_p=top_p, length=length, prime=prime,
                 num_samples=num_samples, seed=seed, stop=stop, skip_unknown=skip_unknown).validate()
    temperatures = [float(t) for t in temperatures]
    model, meta = load_model(find_run(Path(checkpoint_dir), run), batch_size=1)
    vocab = meta.vocab
    prime = prepare_prime(prime, vocab, skip_unknown, warn)

    streams = [(t, i) for t in temperatures for i in range(num_samples)]
    stream_temperatures = np.array([t for t, _ in streams], dtype=np.float32)
    engine = Engine.from_model(model, num_streams=len(streams))
    context = prime or _start_symbol(vocab)
    engine.prime(np.tile(vocab.encode(context)[None, :].astype(np.int32), (len(streams), 1)))
    rng = np.random.default_rng(secrets.randbits(63) if seed is None else seed)
    stream_live = on_text is not None and len(streams) == 1
    if stream_live:
        on_text(prime)

    generated = [""] * len(streams)
    cut: list[Optional[int]] = [None] * len(streams)
    bar = progress_bar(length, "generating", unit="char", enabled=show_progress and not stream_live)
    emitted = produced = 0
    chunk = STREAM_CHUNK if stream_live else BATCH_CHUNK
    while produced < length and any(c is None for c in cut):
        step = min(chunk, length - produced)
        produced += step
        bar(produced)
        ids = engine.sample(step, temperature=stream_temperatures, top_k=top_k, top_p=top_p, rng=rng)
        for s, row in enumerate(ids):
            if cut[s] is None:
                before = len(generated[s])
                generated[s] += vocab.decode(row)
                cut[s] = _stop_cut(generated[s], stop, before)
        if stream_live:
            # Hold back what could be the start of the stop string until it is decided.
            ready = cut[0] if cut[0] is not None else len(generated[0]) - (len(stop) - 1 if stop else 0)
            if ready > emitted:
                on_text(generated[0][emitted:ready])
                emitted = ready
    texts = [text if c is None else text[:c] for text, c in zip(generated, cut)]
    if stream_live and len(texts[0]) > emitted:
        on_text(texts[0][emitted:])
    return [Sample(prime + text, t, i, c is not None) for text, c, (t, i) in zip(texts, cut, streams)]


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
