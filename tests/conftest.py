"""Shared fixtures: tiny corpora written by the tests and one tiny trained run reused across tests."""

from __future__ import annotations

import math
import os
import random
import socket
from pathlib import Path

import pytest

PERIOD = "abcdefg"
TINY_MODEL = dict(units=32, embedding_dim=8, layers=1, dropout=0.0)
TINY_TRAINING = dict(batch_size=8, seq_length=20, learning_rate=0.01, seed=7)
os.environ.pop("TEXTGEN_CHECKPOINT_DIR", None)  # a developer's own would send the commands the tests run elsewhere


def pytest_sessionstart(session):
    """textgen's C++ training loops built (the first time on a machine: ~30 s) before any test runs, so that no test
    sees that build's log line; where they cannot be built the XLA loops serve (tests/test_native_loops.py)."""
    from textgen import native_loops

    native_loops.library()


@pytest.fixture
def native_library():
    """textgen's C++ training loops as this process loaded them; skipped where this machine cannot build them,
    except where a run requires them (TEXTGEN_REQUIRE_NATIVE_LOOPS: CI)."""
    from textgen import native_loops

    library = native_loops.library()
    if library is None:
        if os.environ.get("TEXTGEN_REQUIRE_NATIVE_LOOPS"):
            pytest.fail("textgen's C++ loops could not be built here (see the log), and this run requires them")
        pytest.skip("textgen's C++ loops cannot be built here (no g++?): the XLA loops serve")
    return library


def free_ports(count: int = 1) -> list[int]:
    """Loopback ports nothing listens on: any the system gives, or, where TEXTGEN_TEST_PORTS names a range
    ("8760-8799": a shared machine that gives each user's tests their own ports), ports of that range."""
    if not (confined := os.environ.get("TEXTGEN_TEST_PORTS")):
        candidates = [0] * count
    else:
        low, high = map(int, confined.split("-"))
        candidates = random.sample(range(low, high + 1), high + 1 - low)  # two runs at once rarely meet
    sockets = []
    try:
        for port in candidates:
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                probe.close()
                continue
            sockets.append(probe)
            if len(sockets) == count:
                return [probe.getsockname()[1] for probe in sockets]
        raise RuntimeError(f"no {count} free ports in TEXTGEN_TEST_PORTS={confined}")
    finally:
        for probe in sockets:
            probe.close()


def free_port() -> int:
    return free_ports(1)[0]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def periodic_corpus(tmp_path) -> Path:
    return write_text(tmp_path / "period.txt", PERIOD * 3000)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """A tiny model trained for 3 epochs on 'abcdefg' repeated: loss far below ln(7)."""
    from textgen.training import train

    root = tmp_path_factory.mktemp("trained")
    corpus = write_text(root / "period.txt", PERIOD * 3000)
    summary = train(corpus, root / "checkpoints", run="period", model_options=TINY_MODEL,
                    train_options=dict(TINY_TRAINING, epochs=3), log=lambda message: None)
    return dict(summary, corpus=corpus, checkpoint_dir=root / "checkpoints", chance=math.log(len(PERIOD)))


def files_snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under directory with its bytes, to prove a failed command changed nothing."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def tensorflow_load_failing(raised_in_between: str | None) -> str:
    """Python lines that make the next import of TensorFlow fail as a signal arriving while it loads its C++ library
    makes it fail: "initialization failed", raised while handling raised_in_between (None: a load that fails of
    itself)."""
    failure = 'raise ImportError("initialization failed")'
    if raised_in_between is not None:
        failure = (f"try:\n                raise {raised_in_between}\n            except KeyboardInterrupt:\n"
                   f"                {failure}")
    return f"""
import sys
class FailingLoad:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow.python._pywrap_tensorflow_internal":
            {failure}
sys.meta_path.insert(0, FailingLoad())
"""
