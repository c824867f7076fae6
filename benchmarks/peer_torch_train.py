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
import time

import numpy as np
import torch
from torch import nn


def windows(ids: np.ndarray, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    columns = (len(ids) - 1) // batch
    columns -= columns % seq
    usable = columns * batch
    inputs = torch.from_numpy(ids[:usable].reshape(batch, -1).astype(np.int64))
    targets = torch.from_numpy(ids[1:usable + 1].reshape(batch, -1).astype(np.int64))
    return inputs, targets


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embedding: int, units: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, units, layers, batch_first=True)
        self.output = nn.Linear(units, vocab)

    def forward(self, x, state):
        outputs, state = self.lstm(self.embedding(x), state)
        return self.output(outputs), state


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

    text = open(args.corpus, encoding="utf-8").read()
    vocab = sorted(set(text))
    index = {char: i for i, char in enumerate(vocab)}
    ids = np.fromiter((index[char] for char in text), dtype=np.int32, count=len(text))
    n_val = int(len(ids) * args.val_fraction)
    train_x, train_y = windows(ids[:len(ids) - n_val], args.batch, args.seq)
    val_x, val_y = windows(ids[len(ids) - n_val:], args.batch, args.seq)

    torch.manual_seed(0)
    model = CharLSTM(len(vocab), args.embedding, args.units, args.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()

    def validate() -> float:
        model.eval()
        total, state = 0.0, None
        with torch.inference_mode():
            for start in range(0, val_x.shape[1], args.seq):
                logits, state = model(val_x[:, start:start + args.seq], state)
                total += loss_fn(logits.reshape(-1, len(vocab)), val_y[:, start:start + args.seq].reshape(-1)).item()
        model.train()
        return total / (val_x.shape[1] // args.seq)

    deadline = time.monotonic() + args.minutes * 60
    started, steps, best, epochs, out_of_time = time.monotonic(), 0, float("inf"), 0.0, False
    steps_per_epoch = train_x.shape[1] // args.seq
    while not out_of_time:
        state = None
        for k in range(steps_per_epoch):
            window = slice(k * args.seq, (k + 1) * args.seq)
            logits, state = model(train_x[:, window], state)
            state = tuple(part.detach() for part in state)
            loss = loss_fn(logits.reshape(-1, len(vocab)), train_y[:, window].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            steps += 1
            if time.monotonic() >= deadline:
                out_of_time = True
                break
        epochs = steps / steps_per_epoch
        best = min(best, validate())
    seconds = time.monotonic() - started
    print(json.dumps(dict(best_val_loss=best, epochs=round(epochs, 3), steps=steps,
                          chars_per_s=round(steps * args.batch * args.seq / seconds),
                          parameters=sum(p.numel() for p in model.parameters()),
                          torch=torch.__version__, threads=torch.get_num_threads())))


if __name__ == "__main__":
    main()
