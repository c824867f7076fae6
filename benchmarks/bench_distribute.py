"""Distributed training overhead: one device vs `--strategy mirrored` over logical devices.

On a machine with several GPUs this compares one GPU with all of them. Without GPUs it splits the
CPU into 2 logical devices (TEXTGEN_CPU_DEVICES=2) that share the same cores: that measures what
the replication machinery (per-replica steps, gradient all-reduce) and the different threading
do to the same work, not a gain from more hardware.
Each variant runs in its own process (devices are fixed when TensorFlow starts).

    python benchmarks/bench_distribute.py [--steps 8] [--units 512] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(strategy_name: str, steps: int, units: int, batch: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from textgen.batching import StreamBatches
    from textgen.config import ModelConfig, TrainConfig
    from textgen.distribute import make_strategy
    from textgen.session import Session

    strategy = make_strategy(strategy_name)
    session = Session(ModelConfig(vocab_size=65, embedding_dim=256, units=units, layers=1, dropout=0.0),
                       TrainConfig(batch_size=batch, seq_length=100), strategy)
    batches = StreamBatches(np.random.default_rng(0).integers(0, 65, batch * 100 * (steps + 3) + 1), batch, 100)
    for k in range(2):
        session.train_step(*batches[k])
    times = []
    for k in range(2, 2 + steps):
        started = time.perf_counter()
        session.train_step(*batches[k])
        times.append(time.perf_counter() - started)
    import tensorflow as tf

    print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, gpus=len(tf.config.list_physical_devices("GPU")),
                          chars_per_s=batch * 100 / sorted(times)[len(times) // 2])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.units, args.batch)
        return
    results = {}
    for name, extra_env in (("single", {}), ("mirrored", {"TEXTGEN_CPU_DEVICES": "2"})):
        output = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                 "--units", str(args.units), "--batch", str(args.batch)],
                                env=dict(os.environ, **extra_env), check=True, capture_output=True, text=True)
        results[name] = json.loads(output.stdout.strip().splitlines()[-1])
    single, mirrored = results["single"], results["mirrored"]
    kind = f"{mirrored['gpus']} GPUs" if mirrored["gpus"] > 1 else "2 logical CPU devices sharing the same cores"
    print(f"reference training step: 1 LSTM x {args.units}, embedding 256, batch {args.batch}, sequence 100")
    print(f"single device      {single['chars_per_s']:>9,.0f} chars/s")
    print(f"mirrored ({mirrored['replicas']} repl.) {mirrored['chars_per_s']:>9,.0f} chars/s  ({kind})")
    ratio = mirrored["chars_per_s"] / single["chars_per_s"]
    print(f"mirrored / single: {ratio:.2f}" + ("" if mirrored["gpus"] > 1 else
          "  (no GPU here: both replicas share the same cores, so this measures how replication and\n"
          "   threading change the cost of the same work, not a gain from more hardware)"))
    print(f"single_chars_per_s={single['chars_per_s']:.0f} mirrored_chars_per_s={mirrored['chars_per_s']:.0f} "
          f"replicas={mirrored['replicas']} ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
