"""The PyTorch peer of bench_peers.py: the obvious PyTorch loops, driven one block at a time.

Runs in its own virtualenv (.venv-peers, made by `make bench-peers`); torch is never a textgen
dependency. It reads one JSON command per line on stdin and answers one JSON line on stdout, so
bench_peers.py can interleave its timing blocks with textgen's in the same run:

    {"cmd": "train", "name": N, "vocab": V, "embedding": E, "units": U, "layers": L, "batch": B, "seq": T}
        builds Embedding -> nn.LSTM(L layers, batch_first) -> Linear, Adam(2e-3), clip 5, state
        carried between windows (detached), float32, plus 2 warm-up steps
    {"cmd": "sample", "name": N, "vocab": V, "embedding": E, "units": U, "streams": S}
        builds Embedding -> nn.LSTMCell -> Linear under torch.inference_mode
    {"cmd": "time", "name": N, "count": K}   K training steps, or K characters per stream
    {"cmd": "info"}                          torch version, threads, BLAS
An answer is {"seconds": [...]} per step (training) or for the whole block (sampling).
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn


class Trainer:
    """Embedding -> nn.LSTM -> Linear, Adam(2e-3), clip 5, the state carried between windows (detached).
    With batch and seq it also holds random windows for the timing benchmark (and takes 2 warm-up steps)."""

    def __init__(self, vocab, embedding, units, layers, batch=None, seq=None):
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, units, layers, batch_first=True)
        self.output = nn.Linear(units, vocab)
        self.parameters = [*self.embedding.parameters(), *self.lstm.parameters(), *self.output.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=2e-3)
        self.loss = nn.CrossEntropyLoss()
        self.vocab, self.state = vocab, None
        if batch:
            generator = torch.Generator().manual_seed(0)
            self.x = torch.randint(0, vocab, (batch, seq), generator=generator)
            self.y = torch.randint(0, vocab, (batch, seq), generator=generator)
            for _ in range(2):
                self.step(self.x, self.y)

    def _loss(self, x, y, state):
        outputs, state = self.lstm(self.embedding(x), state)
        return self.loss(self.output(outputs).reshape(-1, self.vocab), y.reshape(-1)), state

    def step(self, x, y) -> float:
        state = None if self.state is None else tuple(part.detach() for part in self.state)
        loss, self.state = self._loss(x, y, state)
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters, 5.0)
        self.optimizer.step()
        return loss.item()

    def validation_loss(self, batches) -> float:
        """Mean loss over consecutive (x, y) windows, the state carried from a zero start."""
        total, state = 0.0, None
        with torch.inference_mode():
            for x, y in batches:
                loss, state = self._loss(x, y, state)
                total += loss.item()
        return total / len(batches)

    def time(self, count: int) -> list[float]:
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            self.step(self.x, self.y)
            seconds.append(time.perf_counter() - start)
        return seconds


class Sampler:
    def __init__(self, vocab, embedding, units, streams):
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, embedding)
        self.cell = nn.LSTMCell(embedding, units)
        self.output = nn.Linear(units, vocab)
        self.ids = torch.zeros(streams, dtype=torch.long)
        self.state = (torch.zeros(streams, units), torch.zeros(streams, units))
        self.time(16)

    @torch.inference_mode()
    def run(self, chars: int) -> None:
        ids, state = self.ids, self.state
        for _ in range(chars):
            state = self.cell(self.embedding(ids), state)
            probabilities = torch.softmax(self.output(state[0]), dim=-1)
            ids = torch.multinomial(probabilities, 1).squeeze(1)
        self.ids, self.state = ids, state

    def time(self, count: int) -> list[float]:
        start = time.perf_counter()
        self.run(count)
        return [time.perf_counter() - start]


def main() -> None:
    peers: dict = {}
    for line in sys.stdin:
        command = json.loads(line)
        kind = command.pop("cmd")
        if kind == "info":
            answer = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "mkldnn": torch.backends.mkldnn.is_available()}
        elif kind == "train":
            name = command.pop("name")
            peers[name] = Trainer(**command)
            answer = {"ready": name}
        elif kind == "sample":
            name = command.pop("name")
            peers[name] = Sampler(**command)
            answer = {"ready": name}
        elif kind == "time":
            answer = {"seconds": peers[command["name"]].time(command["count"])}
        else:
            answer = {"error": f"unknown command {kind!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
