"""Large corpora: encode time and peak memory of textgen's chunked, memory-mapped corpus vs reading it whole.

Builds a ~200 MB corpus by repeating ../shared/data/tinyshakespeare.txt (into benchmarks/out/), then,
each in a fresh process so peak RSS is its own:
  textgen: load_corpus (chunked encode to a uint8 .npy cache, memory-mapped), the train/validation split,
           the stateful batch layout, the default model and 100 training steps;
  naive:   the same model and steps after reading the whole file into one Python string and encoding it
           to an int32 array (what most char-rnn ports do).
Reports encode seconds and peak RSS of each and their ratio. Ends with one line of key=value pairs.

    python benchmarks/bench_corpus.py [--megabytes 200] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"


def build_corpus(megabytes: int) -> Path:
    target = HERE / "out" / f"shakespeare-{megabytes}mb.txt"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        text = SOURCE.read_bytes()
        copies = -(-megabytes * 1_000_000 // len(text))
        with open(target, "wb") as handle:
            for _ in range(copies):
                handle.write(text)
    return target


def child(mode: str, corpus: str, cache: str, steps: int) -> None:
    """One measured process: prepare the data the given way, run `steps` training steps, print JSON."""
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from textgen.batching import StreamBatches, split_validation
    from textgen.config import ModelConfig, TrainConfig
    from textgen.corpus import load_corpus
    from textgen.vocab import Vocabulary

    started = time.perf_counter()
    if mode == "textgen":
        data = load_corpus(Path(corpus), Path(cache))
        ids, vocab = data.ids, data.vocab
    else:
        text = Path(corpus).read_text(encoding="utf-8")
        vocab = Vocabulary.from_text(text)
        ids = np.searchsorted(vocab.code_points, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        ids = ids.astype(np.int32)
    encode_seconds = time.perf_counter() - started
    train_config = TrainConfig()
    batches = StreamBatches(split_validation(ids, train_config.val_fraction)[0], train_config.batch_size,
                            train_config.seq_length)
    from textgen.session import Session

    session = Session(ModelConfig(vocab_size=len(vocab)), train_config)
    step_started = time.perf_counter()
    for k in range(steps):
        session.train_step(*batches[k])
    print(json.dumps(dict(encode_seconds=encode_seconds, characters=len(ids),
                          step_seconds=(time.perf_counter() - step_started) / max(steps, 1))))


def measure(mode: str, corpus: Path, steps: int) -> dict:
    cache = HERE / "out" / "cache"
    if mode == "textgen":
        for stale in cache.glob("corpus*"):
            stale.unlink()  # measure a cold build of the cache
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    output = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus), str(cache), str(steps)],
                            check=True, capture_output=True, text=True).stdout
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise RuntimeError("run the two modes in order of increasing memory: ru_maxrss is a running maximum")
    return dict(json.loads(output.strip().splitlines()[-1]), peak_rss_mb=peak_kb / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, corpus, cache, steps = args.child
        child(mode, corpus, cache, int(steps))
        return
    if not SOURCE.exists():
        from run_all import missing_corpus

        sys.exit(f"{missing_corpus(SOURCE)}; skipped")
    corpus = build_corpus(args.megabytes)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:.0f} MB), default model, {args.steps} training steps")
    ours = measure("textgen", corpus, args.steps)
    naive = measure("naive", corpus, args.steps)
    print(f"{'':10}{'encode s':>10}{'peak RSS MB':>13}{'s/step':>9}")
    for name, result in (("textgen", ours), ("naive", naive)):
        print(f"{name:10}{result['encode_seconds']:>10.1f}{result['peak_rss_mb']:>13.0f}{result['step_seconds']:>9.2f}")
    ratio = naive["peak_rss_mb"] / ours["peak_rss_mb"]
    print(f"peak RSS: textgen {ours['peak_rss_mb']:.0f} MB ({'meets' if ours['peak_rss_mb'] < 1536 else 'MISSES'} "
          f"the 1.5 GB target), {ratio:.1f}x less than reading it whole")
    print(f"RESULT corpus_mb={corpus.stat().st_size / 1e6:.0f} textgen_encode_s={ours['encode_seconds']:.1f} "
          f"textgen_peak_rss_mb={ours['peak_rss_mb']:.0f} naive_encode_s={naive['encode_seconds']:.1f} "
          f"naive_peak_rss_mb={naive['peak_rss_mb']:.0f} rss_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
