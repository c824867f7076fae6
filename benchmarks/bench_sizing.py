"""The runs the sizing rule (textgen/sizing.py) is fitted from: shapes of the ladder at one time budget.

Trains each shape for --minutes on tinyshakespeare (or --corpus), dropout and weight decay off, and prints
its best validation loss, the characters it trained, characters per parameter, and its measured
speed against the start-up calibration's prediction (textgen.sizing.calibrated_speed). The best
shape's characters per parameter is what CHARS_PER_PARAMETER should be near; the last line shows what
--size auto chooses for the same corpus and budget.

    python benchmarks/bench_sizing.py [--minutes 2] [--shapes 1x128,1x256,1x384,1x512] [--corpus PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, missing_corpus, update_section  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "sizing"
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--shapes", default="1x128,1x256,1x384,1x512")
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from textgen import sizing
    from textgen.batching import training_length
    from textgen.checkpoint import read_meta
    from textgen.config import TrainConfig

    corpus = Path(args.corpus)
    if not corpus.exists():
        sys.exit(missing_corpus(corpus) if corpus == CORPUS else f"no such file: {corpus}")
    text = corpus.read_text(encoding="utf-8")
    vocab, train_chars = len(set(text)), training_length(len(text), TrainConfig().val_fraction,
                                                                  TrainConfig().val_max_chars)
    speed = sizing.calibrated_speed(TrainConfig(), vocab)
    rows = [f"corpus {corpus.name}: {train_chars:,} training characters, vocabulary {vocab}; {args.minutes:g} min "
            "per shape, batch 64, seq 50, dropout 0, weight decay 0",
            f"{'shape':<14} {'params':>9} {'best val':>8} {'epochs':>6} {'chars':>11} {'chars/param':>11} "
            f"{'chars/s':>8} {'predicted':>9} {'ratio':>6}"]
    for item in args.shapes.split(","):
        layers, units = (int(part) for part in item.split("x"))
        shape = (layers, units, next((width for *size, width in sizing.LADDER if tuple(size) == (layers, units)),
                                     max(16, units // 4)))
        run = f"{corpus.stem}-{item}"
        command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(OUT), "--run", run,
                   "--overwrite", "--epochs", "1000", "--max-minutes", str(args.minutes), "--layers", str(layers),
                   "--units", str(units), "--embedding-dim", str(shape[2]), "--dropout", "0", "--weight-decay", "0"]
        result = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            sys.exit(f"training failed:\n{result.stderr[-2000:]}")
        last = read_meta(OUT / run, "last")
        chars = last.state.chars_seen
        parameters = sizing.parameter_count(shape, vocab)
        measured = chars / last.state.elapsed_seconds
        predicted = speed(shape, last.training.batch_size)
        rows.append(f"{item:<14} {parameters:>9,} {last.state.best_val_loss:>8.4f} {chars / train_chars:>6.2f} "
                    f"{chars:>11,} {chars / parameters:>11.1f} {measured:>8,.0f} {predicted:>9,.0f} "
                    f"{measured / predicted:>6.2f}")
        print(rows[-1], flush=True)
    chosen = sizing.choose(train_chars, vocab, TrainConfig(epochs=1000, max_minutes=args.minutes), {}, {}, speed)
    rows.append(chosen.reason)
    output = "\n".join(rows)
    print(output)
    if not args.no_record:
        update_section("Sizing: the runs the rule is fitted from", ["benchmarks/bench_sizing.py", *sys.argv[1:]],
                       output)


if __name__ == "__main__":
    main()
