"""The plain PyTorch LSTM of bench_heldout.py, trained on a real corpus for a wall-clock budget.

Runs in the peers' virtualenv (.venv-peers; torch is never a textgen dependency). The same data as
textgen: vocabulary = the sorted code points of the corpus, validation = the contiguous last 10%, the
training text reshaped to (batch, -1) streams cut into seq-length windows, the LSTM state carried from
window to window (detached) and reset at each epoch and for validation. The obvious loop: Embedding ->
nn.LSTM -> Linear, Adam(2e-3), gradients clipped to norm 5, float32, no dropout, no schedule. The clock
counts everything after the model is built, validation included (as textgen's --max-minutes does);
validation runs at each epoch end and when the time is up. Prints one JSON line:
{"best_val_loss": nats, "epochs": float, "steps": int, "chars_per_s": float, "parameters": int}.

    python peer_torch_train.py CORPUS --layers 1 --units 256 --embedding 64 --batch 64 --seq 50 --minutes 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# textgen's own data layout (these modules need only numpy), so both sides train on the same batches
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peer_torch import Trainer  # noqa: E402  (the same model and optimizer as bench-peers' timing)
from textgen.batching import StreamBatches, split_validation  # noqa: E402
from textgen.vocab import Vocabulary  # noqa: E402


def tensors(batches: StreamBatches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(torch.from_numpy(part.astype(np.int64)) for part in batches[k]) for k in range(len(batches))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--units", type=int, required=True)
    parser.add_argument("--embedding", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()

    text = Path(args.corpus).read_text(encoding="utf-8")
    vocab = Vocabulary.from_text(text)
    train_ids, val_ids = split_validation(vocab.encode(text), args.val_fraction)
    train_batches = tensors(StreamBatches(train_ids, args.batch, args.seq))
    val_batches = tensors(StreamBatches(val_ids, args.batch, args.seq))

    trainer = Trainer(len(vocab), args.embedding, args.units, args.layers)
    deadline = time.monotonic() + args.minutes * 60
    started, steps, best, epochs, out_of_time = time.monotonic(), 0, float("inf"), 0.0, False
    while not out_of_time:
        trainer.state = None
        for x, y in train_batches:
            trainer.step(x, y)
            steps += 1
            if time.monotonic() >= deadline:
                out_of_time = True
                break
        epochs = steps / len(train_batches)
        best = min(best, trainer.validation_loss(val_batches))
    seconds = time.monotonic() - started
    print(json.dumps(dict(best_val_loss=best, epochs=round(epochs, 3), steps=steps,
                          chars_per_s=round(steps * args.batch * args.seq / seconds),
                          parameters=sum(p.numel() for p in trainer.parameters),
                          torch=torch.__version__, threads=torch.get_num_threads())))


if __name__ == "__main__":
    main()
