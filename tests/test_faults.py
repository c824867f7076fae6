"""Crashes and signals in a real training process: checkpoints survive and training resumes."""

import contextlib
import json
import math
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import PERIOD, write_text
from textgen import checkpoint
from textgen.generate import generate

REPEATS = 1500  # of PERIOD in the corpus: 236 steps per epoch, a few seconds
STEPS_PER_EPOCH = (int(len(PERIOD) * REPEATS * 0.9) - 1) // (4 * 10)
TINY = ["--units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10", "--dropout", "0"]


def train_command(corpus, checkpoint_dir, *extra):
    return [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(checkpoint_dir),
            "--run", "r", *TINY, *extra]


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(tmp_path):
    corpus = write_text(tmp_path / "c.txt", PERIOD * REPEATS)
    process = subprocess.Popen(train_command(corpus, tmp_path, "--epochs", "1000"), stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: (tmp_path / "r" / "last.json").exists())  # one epoch done: training is under way
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "resume with: textgen train" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert meta["global_step"] == meta["epoch"] * STEPS_PER_EPOCH + meta["step_in_epoch"]
    resumed = subprocess.run(train_command(corpus, tmp_path, "--epochs", str(meta["epoch"] + 1), "--resume"),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    # the two messages name the same place, counted as the training log counts epochs
    position = (f"in epoch {meta['epoch'] + 1}, after step {meta['step_in_epoch']}" if meta["step_in_epoch"]
                else f"at the start of epoch {meta['epoch'] + 1}")
    assert f"interrupted: saved a resumable checkpoint ({position})" in stderr
    assert f"resuming {tmp_path / 'r'} {position}" in resumed.stderr


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path):
    rng = random.Random(2)
    corpus = write_text(tmp_path / "c.txt", PERIOD * REPEATS)
    run_dir = tmp_path / "r"
    def saved_step():
        return checkpoint.read_meta(run_dir, "last").state.global_step if checkpoint.has_checkpoint(run_dir) else -1

    for attempt in range(3):  # each a start-up (~8 s): more kill moments cost minutes of CI
        resume = ["--resume"] if checkpoint.has_checkpoint(run_dir) else []
        step_before = saved_step()
        process = subprocess.Popen(train_command(corpus, tmp_path, "--epochs", "1000", "--save-every", "37",
                                                 *resume), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if attempt == 0:
                time.sleep(rng.uniform(0.5, 2.0))  # during start-up, before any checkpoint exists
            else:
                # Wait for this process's own first save (start-up time differs between machines), then kill it
                # at a random moment: between saves, or in the middle of one.
                wait_for(lambda before=step_before: saved_step() > before, timeout=120)
                time.sleep(rng.uniform(0.0, 1.5))
        finally:
            process.kill()  # SIGKILL: no handler runs, the lock file and temporary files stay behind
            process.wait()
        if attempt > 0:
            meta = checkpoint.read_meta(run_dir, "last")
            assert meta.state.global_step > step_before
            checkpoint.verified_file(run_dir, meta, "weights")  # complete and matching its checksum
            checkpoint.verified_file(run_dir, meta, "state")
    meta = checkpoint.read_meta(run_dir, "last")
    final = subprocess.run(train_command(corpus, tmp_path, "--epochs", str(meta.state.epoch + 1), "--resume"),
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    state = checkpoint.read_meta(run_dir, "last").state
    assert state.step_in_epoch == 0
    assert state.global_step == state.epoch * STEPS_PER_EPOCH
    assert [row["epoch"] for row in state.history] == list(range(1, state.epoch + 1))
    assert not list(run_dir.glob(".tmp-*"))
    [sample] = generate(tmp_path, "r", prime="abc", length=20, temperatures=[0])
    assert sample.text.startswith("abc") and len(sample.text) == 23


@pytest.mark.slow
def test_a_save_the_system_refuses_midway_stops_in_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """A file-size limit (or a quota, or a disk another user fills during the save), which the free-space check
    cannot see: h5py's error was several lines long, and the objects it left half-closed could crash the process
    (a segfault, after pages of tracebacks)."""
    import resource

    corpus = write_text(tmp_path / "c.txt", PERIOD * 300)
    shape = ["--units", "128", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10"]
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path), "--run", "r",
               *shape, "--epochs", "1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = checkpoint.read_meta(tmp_path / "r", "last")

    def small_files_only():  # the weights of 128 units (~270 KB) cannot be written, the metadata can
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    resumed = subprocess.run([sys.executable, "-m", "textgen", "train", "--checkpoint-dir", str(tmp_path), "--run", "r",
                              "--resume", "--epochs", "2"], capture_output=True, text=True, timeout=300,
                             preexec_fn=small_files_only)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    assert resumed.stderr.splitlines()[-1] == (
        f"error: could not save the checkpoint in {tmp_path / 'r'}: File too large; the run's last checkpoint (at the "
        "start of epoch 2) is kept and the training since it is lost (free some space or fix the directory, then "
        f"resume with: textgen train {corpus} --checkpoint-dir {tmp_path} --run r --resume --epochs 2)")
    assert "Traceback" not in resumed.stderr and "h5py" not in resumed.stderr
    assert checkpoint.read_meta(tmp_path / "r", "last").state.global_step == kept.state.global_step
    assert not [path.name for path in (tmp_path / "r").iterdir() if path.name.startswith(".tmp")]
    assert generate(tmp_path, "r", prime="ab", length=5, temperatures=[0])  # the previous checkpoint loads


@pytest.mark.slow
def test_a_hangup_saves_a_resumable_checkpoint_unless_nohup_ignores_it(tmp_path):
    """The terminal of a training started without nohup closed (an ssh session dropped): SIGHUP ended it at once,
    with no save. It stops as on SIGTERM, though the terminal it writes its progress bar on is gone; under nohup,
    which ignores SIGHUP, it trains on."""
    import os
    import pty

    import threading

    corpus = write_text(tmp_path / "c.txt", PERIOD * REPEATS)
    terminal, stderr = pty.openpty()
    # SIGHUP as a process started in a terminal has it (a test run under nohup passed its SIG_IGN on: the training
    # trained on after its SIGHUP, as it should under nohup, and the test timed out)
    process = subprocess.Popen(train_command(corpus, tmp_path, "--epochs", "1000"), stderr=stderr,
                               stdout=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    os.close(stderr)
    hung_up = threading.Event()

    def read_as_a_terminal_does() -> None:  # (a pty nobody reads fills up, and then its writer waits)
        with contextlib.suppress(OSError):
            while not hung_up.is_set() and os.read(terminal, 65536):
                pass

    reader = threading.Thread(target=read_as_a_terminal_does, daemon=True)
    reader.start()
    try:
        wait_for(lambda: (tmp_path / "r" / "last.json").exists())
        first = json.loads((tmp_path / "r" / "last.json").read_text())["global_step"]
        hung_up.set()
        reader.join(timeout=10)
        os.close(terminal)  # writing on it fails now (EIO), as after a hangup
        process.send_signal(signal.SIGHUP)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGHUP
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert meta["global_step"] >= first and meta["global_step"] == meta["epoch"] * STEPS_PER_EPOCH + \
        meta["step_in_epoch"]

    ignoring = subprocess.Popen(train_command(corpus, tmp_path, "--epochs", "1000", "--resume"),
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as nohup starts it
    try:
        wait_for(lambda: json.loads((tmp_path / "r" / "last.json").read_text())["global_step"] > meta["global_step"])
        ignoring.send_signal(signal.SIGHUP)
        time.sleep(1)
        ignoring.send_signal(signal.SIGTERM)
        _, said = ignoring.communicate(timeout=60)
    finally:
        ignoring.kill()
    assert ignoring.returncode == 143 and "signal SIGTERM: finishing this step" in said and "SIGHUP" not in said


def limited_address_space(limit_bytes: int):
    """A preexec_fn giving the child process ``ulimit -v`` of limit_bytes (an HPC login node's setting)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.RLIM_INFINITY))


def test_an_address_space_too_small_for_tensorflow_is_told_in_one_line(tmp_path):
    """Under ulimit -v 1.5 GB the import failed with an 80-line traceback, or a thread TensorFlow could not start
    aborted the process (exit 134) or segfaulted it (139); now one line before TensorFlow loads, and nothing made."""
    corpus = write_text(tmp_path / "corpus.txt", PERIOD * REPEATS)
    from textgen.address_space import cores, needed_address_space

    needed = math.ceil(needed_address_space(cores()) / 1024**3 * 10) / 10
    told = (f"this process may use only 1.4 GiB of address space (ulimit -v 1536000), and TensorFlow needs at least "
            f"{needed:.1f} GiB of it on this machine's {cores()} cores")
    refused = subprocess.run(train_command(corpus, tmp_path / "ck", "--epochs", "1"), capture_output=True, text=True,
                             timeout=120, preexec_fn=limited_address_space(1500 * 1024**2))
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: {told}"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "ck").exists()
    called = subprocess.run([sys.executable, "-c", "import textgen; textgen.train('corpus.txt', checkpoint_dir='ck')"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            preexec_fn=limited_address_space(1500 * 1024**2))
    assert called.stderr.strip().splitlines()[-1].startswith(f"textgen.errors.TextgenError: {told}"), called.stderr
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_a_training_fits_a_limit_that_only_two_malloc_arenas_leave_room_in(tmp_path):
    """glibc's malloc arenas (64 MB of address space for each thread that found the others busy) took ~2.7 GB of a
    2-core machine's address space: a tiny training aborted under ulimit -v 2.3 GB. With two arenas it trains. A
    machine with more cores starts more threads, so the limit here grows with them (address_space.NEEDED_PER_CORE)."""
    import os

    from textgen.address_space import cores, needed_address_space

    corpus = write_text(tmp_path / "corpus.txt", PERIOD * REPEATS)
    limit = needed_address_space(cores()) + 300 * 1024**2
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    result = subprocess.run(train_command(corpus, tmp_path / "ck", "--epochs", "1"), capture_output=True, text=True,
                            timeout=600, env=env, preexec_fn=limited_address_space(limit))
    assert result.returncode == 0 and "stopped: 1 epoch done" in result.stderr, result.stderr[-2000:]
    assert checkpoint.read_meta(tmp_path / "ck" / "r", "best").state.epoch == 1
