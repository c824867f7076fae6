"""Mixed precision on CPU: the same training run in float32 and with bfloat16 matmuls, side by side.

Trains the default model (2 x 512, --size fixed) on ../shared/data/tinyshakespeare.txt (validation =
last 10%) for the same number of epochs twice, once per precision, with the same seed, and prints each
epoch's validation loss and seconds, the speed ratio and the validation-loss difference. Validation always runs in
float32, so the losses compare like for like.

    python benchmarks/bench_mixed_precision.py [--epochs 2] [extra textgen train options...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ROOT, missing_corpus, update_section  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
PRECISIONS = {"float32": "off", "bfloat16": "on"}


def train(run: str, flag: str, epochs: int, extra: list[str]) -> list[dict]:
    command = [sys.executable, "-m", "textgen", "train", str(CORPUS), "--checkpoint-dir", "benchmarks/out",
               "--run", run, "--overwrite", "--epochs", str(epochs), "--mixed-precision", flag,
               "--size", "fixed", *extra]  # the default shape: --size auto might size the two runs differently
    subprocess.run(command, cwd=ROOT, stderr=subprocess.DEVNULL, check=True)
    from textgen.checkpoint import read_meta

    return read_meta(ROOT / "benchmarks" / "out" / run, "last").state.history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args, extra = parser.parse_known_args()
    if not CORPUS.exists():
        sys.exit(missing_corpus(CORPUS))
    histories = {name: train(f"precision-{name}", flag, args.epochs, extra) for name, flag in PRECISIONS.items()}
    lines = [f"default model (--size fixed: 2 x 512, embedding 128), tinyshakespeare, {args.epochs} epochs each, "
             "same seed; validation in float32",
             f"{'epoch':>5} {'float32 val':>12} {'bfloat16 val':>13} {'float32 s':>10} {'bfloat16 s':>11}"]
    previous = {name: 0.0 for name in histories}
    for rows in zip(*histories.values()):
        seconds = {name: row["seconds"] - previous[name] for name, row in zip(histories, rows)}
        previous = {name: row["seconds"] for name, row in zip(histories, rows)}
        lines.append(f"{rows[0]['epoch']:>5} {rows[0]['val_loss']:>12.4f} {rows[1]['val_loss']:>13.4f} "
                     f"{seconds['float32']:>10.1f} {seconds['bfloat16']:>11.1f}")
    single, mixed = histories["float32"][-1], histories["bfloat16"][-1]
    speed = single["seconds"] / mixed["seconds"]
    difference = mixed["val_loss"] - single["val_loss"]
    lines.append(f"speed bfloat16/float32 (whole run, validation included): {speed:.2f}x; "
                 f"final validation loss bfloat16 - float32: {difference:+.4f} nats")
    print("\n".join(lines))
    update_section("Mixed precision on CPU", ["benchmarks/bench_mixed_precision.py", *sys.argv[1:]], "\n".join(lines))


if __name__ == "__main__":
    main()
