"""Against PyTorch: textgen's training and sampling vs the obvious PyTorch loops, side by side.

    python benchmarks/bench_peers.py [--peer-python .venv-peers/bin/python] [--quick] [--no-record]

`make bench-peers` makes the peer virtualenv (CPU torch; never a textgen dependency) and runs this.
The PyTorch side runs in a subprocess of that virtualenv (benchmarks/peer_torch.py) that waits on its
stdin between blocks; textgen runs in this process. Blocks alternate (textgen, torch, torch, textgen,
...) so both see the same machine, and each row reports the best step (contention only ever adds
time) with the median beside it.

Training, float32 on both sides (textgen `--mixed-precision off`), random ids, state carried:
  reference: vocab 65, embedding 256, 1 x 512, batch 64, seq 100, no dropout
  default:   textgen's fixed defaults (--size fixed: 2 x 512, embedding 128, batch 64, seq 50, dropout 0.3,
             weight decay 0.2; --size auto sizes smaller for short budgets) against a plain same-shape nn.LSTM
  Where the CPU multiplies bfloat16 natively, textgen's bfloat16 path is timed as an extra row.
Sampling (reference model, random weights, temperature 1): textgen's Engine vs nn.LSTMCell called
once per character under torch.inference_mode with torch.multinomial, for 1 and 64 streams.

Ends with one line of key=value pairs and, unless --no-record, rewrites BENCHMARKS.md's section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import update_section  # noqa: E402

from textgen.config import ModelConfig, TrainConfig  # noqa: E402
from textgen.cpu import cpu_model, has_bfloat16_matmul, matmul_flags  # noqa: E402
from textgen.session import mixed_precision_note, training_precision  # noqa: E402

TITLE = "Against PyTorch"
REFERENCE = dict(vocab=65, embedding=256, units=512, layers=1, batch=64, seq=100, dropout=0.0, weight_decay=0.0)


def train_shapes() -> dict[str, dict]:
    """The training configs: the reference one, textgen's fixed default shape (`textgen train --size fixed`) with
    the peer's arithmetic (no dropout, no weight decay), and that shape as --size fixed trains it (dropout 0.3,
    weight decay 0.2, which the peer does not do: that row shows what the regularisation costs)."""
    model, train = ModelConfig(vocab_size=65), TrainConfig()
    regularised = dict(vocab=65, embedding=model.embedding_dim, units=model.units, layers=model.layers,
                       batch=train.batch_size, seq=train.seq_length, dropout=model.dropout,
                       weight_decay=train.weight_decay)
    return {"reference": REFERENCE, "default": dict(regularised, dropout=0.0, weight_decay=0.0),
            "default_dropout": regularised}


def model_config(shape: dict) -> ModelConfig:
    return ModelConfig(vocab_size=shape["vocab"], embedding_dim=shape["embedding"], units=shape["units"],
                       layers=shape["layers"], dropout=shape["dropout"])


class Peer:
    """The PyTorch worker process: one JSON command per line, one JSON answer per line."""

    def __init__(self, python: str):
        self.process = subprocess.Popen([python, str(ROOT / "benchmarks" / "peer_torch.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the PyTorch peer exited (code {self.process.wait()}); see its error above")
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"the PyTorch peer failed: {answer['error']}")
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


class TextgenTrainer:
    """textgen's own training session (what `textgen train` runs), on random ids."""

    def __init__(self, shape: dict, mixed_precision: str):
        import numpy as np

        from textgen.session import Session

        train = TrainConfig(batch_size=shape["batch"], seq_length=shape["seq"], weight_decay=shape["weight_decay"],
                            mixed_precision=mixed_precision)
        self.session = Session(model_config(shape), train)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), dtype=np.int32)
        self.x, self.y = ids[:, :-1], ids[:, 1:]
        for _ in range(2):
            self.time(1)

    def time(self, count: int) -> list[float]:
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            float(self.session.train_step(self.x, self.y))
            seconds.append(time.perf_counter() - start)
        return seconds


def interleave(rounds: int, count: int, time_ours, peer: Peer, name: str) -> tuple[list[float], list[float]]:
    """Alternate blocks of count steps (or characters): textgen then torch, torch then textgen, ..."""
    textgen_times, torch_times = [], []
    for round_index in range(rounds):
        blocks = ["textgen", "torch"] if round_index % 2 == 0 else ["torch", "textgen"]
        for block in blocks:
            if block == "textgen":
                textgen_times += time_ours(count)
            else:
                torch_times += peer.ask(cmd="time", name=name, count=count)["seconds"]
            time.sleep(0.3)  # let the other side's worker threads stop spinning
    return textgen_times, torch_times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                        help="Python of the virtualenv that has torch (default: .venv-peers)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (~1 minute)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per row (default 6)")
    parser.add_argument("--no-record", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not Path(args.peer_python).exists():
        print(f"no PyTorch peer environment at {args.peer_python}: run `make bench-peers`, which creates it",
              file=sys.stderr)
        return 2
    rounds, train_steps, sample_one, sample_many = (2, 2, 400, 40) if args.quick else (args.rounds, 4, 1500, 150)

    from bench_sample import EngineRun  # imports TensorFlow

    from textgen.engine import Engine
    from textgen.model import build_model

    peer = Peer(args.peer_python)
    info = peer.ask(cmd="info")
    lines = [f"CPU: {cpu_model()}, flags: {matmul_flags()}",
             f"PyTorch {info['torch']} ({info['threads']} threads, oneDNN {'on' if info['mkldnn'] else 'off'}); "
             f"{rounds} interleaved rounds per row; chars/s from the best step (median in brackets)", ""]
    results: dict[str, float] = {}

    def row(label: str, key: str, chars: int, ours: list[float], theirs: list[float]) -> None:
        ours_best, theirs_best = chars / min(ours), chars / min(theirs)
        ours_median, theirs_median = chars / statistics.median(ours), chars / statistics.median(theirs)
        ratio = ours_best / theirs_best
        results[f"{key}_textgen"], results[f"{key}_torch"], results[f"{key}_ratio"] = ours_best, theirs_best, ratio
        results[f"{key}_median_ratio"] = ours_median / theirs_median
        lines.append(f"{label:<44} {ours_best:>9,.0f} ({ours_median:>7,.0f}) {theirs_best:>9,.0f} "
                     f"({theirs_median:>7,.0f}) {ratio:>7.2f}x ({ours_median / theirs_median:.2f}x)")

    lines.append(f"{'training chars/s':<44} {'textgen':>19} {'PyTorch':>19} {'textgen/PyTorch':>16}")
    for name, shape in train_shapes().items():
        peer.ask(cmd="train", name=name, **{k: shape[k] for k in ("vocab", "embedding", "units", "layers", "batch",
                                                                   "seq")})
        chars = shape["batch"] * shape["seq"]
        label = f"{name}: {shape['layers']}x{shape['units']}, emb {shape['embedding']}, seq {shape['seq']}"
        if shape["dropout"] or shape["weight_decay"]:
            label = f"{name.split('_')[0]}, dropout {shape['dropout']:g}, wd {shape['weight_decay']:g}"
        variants = [("off", "float32")] + ([("on", "bfloat16")] if has_bfloat16_matmul() else [])
        for precision, dtype in variants:
            ours, theirs = interleave(rounds, train_steps, TextgenTrainer(shape, precision).time, peer, name)
            row(f"{label} ({dtype})", f"train_{name}" + ("" if dtype == "float32" else "_bf16"), chars, ours, theirs)
    lines += ["", f"{'sampling chars/s (all streams)':<44} {'textgen':>19} {'PyTorch':>19} {'textgen/PyTorch':>16}"]
    shape = REFERENCE
    model = build_model(model_config(shape), 1)
    for streams, length in ((1, sample_one), (64, sample_many)):
        name = f"sample{streams}"
        peer.ask(cmd="sample", name=name, vocab=shape["vocab"], embedding=shape["embedding"], units=shape["units"],
                 streams=streams)
        engine_run = EngineRun(Engine.from_model(model, streams), length, temperature=1.0)
        ours, theirs = interleave(rounds, length, lambda count, run=engine_run: [run.seconds(count)], peer, name)
        row(f"{streams} stream{'s' if streams > 1 else ''}, 1x{shape['units']}, emb {shape['embedding']}",
            name, streams * length, ours, theirs)
    peer.close()
    units = REFERENCE["units"]  # the flag alone does not make bfloat16 faster: what auto chooses here, and why
    if note := mixed_precision_note("auto", units, training_precision(TrainConfig(mixed_precision="auto"), units)):
        lines += ["", f"textgen train on this CPU, {units} units: {note}"]
    lines += ["", "targets: training >= 1.2x on both configs in float32 (floor 1.0), sampling >= 2.5x; the peer trains "
              "without dropout or weight decay, so the dropout row is not like for like",
              " ".join(f"{key}={value:.2f}" if key.endswith("ratio") else f"{key}={value:.0f}"
                       for key, value in results.items())]
    output = "\n".join(lines)
    print(output)
    if not args.no_record:
        update_section(TITLE, ["benchmarks/bench_peers.py"], output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
