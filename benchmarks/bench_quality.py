"""Quality at a fixed budget: textgen's defaults trained on tinyshakespeare for 20 minutes of wall clock.

The defaults size the model for that budget on this machine (--size auto); pass --size fixed for the fixed
2 x 512 defaults the 1.405-nat figure on the bfloat16 machine was measured with.

Validation is the contiguous last 10% of ../shared/data/tinyshakespeare.txt. Prints the best
validation loss in nats and bits per character and records it in BENCHMARKS.md.

    python benchmarks/bench_quality.py [--minutes 20] [extra textgen train options...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, missing_corpus, update_section  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    args, extra = parser.parse_known_args()
    if not CORPUS.exists():
        sys.exit(missing_corpus(CORPUS))
    command = ["-m", "textgen", "train", str(CORPUS), "--checkpoint-dir", "benchmarks/out", "--run", "quality",
               "--overwrite", "--epochs", "1000", "--max-minutes", str(args.minutes), *extra]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"training failed (exit code {result.returncode}):\n{result.stderr[-2000:]}")
    log = [line for line in result.stderr.splitlines() if line.startswith(("training", "epoch", "stopped"))]
    from textgen.checkpoint import read_meta
    from textgen.evaluation import bpc

    best = read_meta(ROOT / "benchmarks" / "out" / "quality", "best").state
    summary = (f"best validation loss {best.val_loss:.4f} nats ({bpc(best.val_loss):.3f} bpc) "
               f"after {args.minutes:g} minutes; target <= 1.42 nats")
    print("\n".join(log + [summary]))
    update_section("Quality at a fixed budget", ["benchmarks/bench_quality.py", *sys.argv[1:]],
                   "\n".join(log + [summary]), result.returncode)


if __name__ == "__main__":
    main()
