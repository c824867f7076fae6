"""tf.distribute: mirrored replicas keep their own streams' state; multi-worker runs agree."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PERIOD, free_ports, write_text
from textgen.distribute import check_batch_size, is_chief
from textgen.errors import TextgenError
from textgen.generate import generate

WORKER = str(Path(__file__).with_name("distributed_worker.py"))
ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_equals_one_device(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, WORKER, "equivalence", str(out)], check=True, timeout=300, env=ENV)
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    for single, mirrored in result["losses"]:
        assert abs(single - mirrored) < 1e-4
    assert result["losses"][-1][0] < result["losses"][0][0]  # it did train
    assert result["state_norm"] > 0.01  # the state is carried, not zero
    assert max(result["state_diffs"]) < 1e-4  # replica r holds rows [2r, 2r+2) of the one-device state
    assert set(result["replica_parts"]) == {2}
    assert result["saved_diff"] < 1e-4  # lstm_states() (what a checkpoint saves) holds all four rows
    assert result["weight_diff"] < 1e-4
    # One sum of the gradients per replica (one in the one-device session, two in the mirrored one): Keras's optimizer
    # summed them a second time (twice the traffic between the workers of a cluster).
    assert result["all_reduces"] == 1 + 2


@contextlib.contextmanager
def two_workers(command, stderr=subprocess.STDOUT):
    """Worker 0 and 1 of a cluster on localhost, running command(index) (their output piped), killed on leaving."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    try:
        for index in range(2):
            env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            processes.append(subprocess.Popen(command(index), env=env, stdout=subprocess.PIPE, stderr=stderr,
                                              text=True))
        yield processes
    finally:
        for process in processes:
            process.kill()


def run_two_workers(tmp_path, corpus, timeout=240, **train_options):
    """Two workers, each training corpus into tmp_path/ck: their exit codes and outputs."""
    with two_workers(lambda index: [sys.executable, WORKER, "train", str(corpus), str(tmp_path / "ck"),
                                    str(tmp_path / f"w{index}.npz"), json.dumps(train_options)]) as processes:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    return [process.returncode for process in processes], outputs


@pytest.mark.slow
def test_two_workers_on_localhost_train_identical_weights_under_a_time_budget(tmp_path):
    """Under a time budget and the cosine schedule: the learning rate of an epoch's first step followed each
    worker's own clock (the time since the start, which the schedule and a budget stretch), the workers' weights
    drifted apart, and only the chief's were saved."""
    corpus = write_text(tmp_path / "c.txt", PERIOD * 150)  # short epochs: several fit even on a busy machine
    codes, outputs = run_two_workers(tmp_path, corpus, epochs=1000, max_minutes=0.15, lr_schedule="cosine")
    for code, output in zip(codes, outputs):
        assert code == 0, output[-3000:]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["r"]  # only the chief wrote
    meta = json.loads((tmp_path / "ck" / "r" / "last.json").read_text())
    assert meta["epoch"] >= 2  # crossed an epoch's start
    # Every stream's LSTM state, not only the chief's rows (a mid-epoch resume restarted the others from zeros).
    with np.load(tmp_path / "ck" / "r" / meta["files"]["state"]["name"]) as state:
        assert {state[name].shape for name in state.files if name.startswith("lstm_")} == {(4, 16)}
    [sample] = generate(tmp_path / "ck", "r", prime="abc", length=10, temperatures=[0])  # loads on one device
    assert len(sample.text) == 13
    # The same command again, without resume: the chief refuses, and worker 1, which waited for it in the cluster
    # forever (ignoring SIGTERM), is told so and stops too.
    codes, outputs = run_two_workers(tmp_path, corpus, timeout=120)
    assert codes == [1, 1], outputs
    assert "already has checkpoints" in outputs[0] and "another worker could not start this training" in outputs[1]
    assert json.loads((tmp_path / "ck" / "r" / "last.json").read_text())["saved_at"] == meta["saved_at"]


def test_a_worker_that_cannot_start_alone_says_why_and_stops(tmp_path):
    """Joining the cluster to tell the others blocked forever when they never came, deaf to SIGTERM and Ctrl-C,
    and the reason was printed only after it."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    task = {"type": "worker", "index": 1}
    env = dict(ENV, JOIN_TIMEOUT="3", TF_CONFIG=json.dumps({"cluster": cluster, "task": task}))
    lone = subprocess.run([sys.executable, WORKER, "train", str(tmp_path / "missing.txt"), str(tmp_path / "ck"),
                           str(tmp_path / "w.npz")], env=env, capture_output=True, text=True, timeout=60)
    assert lone.returncode == 1
    assert "this worker cannot start (corpus file not found" in lone.stderr
    assert "not every worker joined within 3 s" in lone.stderr


@pytest.mark.slow
def test_a_worker_waiting_for_the_cluster_says_so_and_ctrl_c_stops_it(tmp_path):
    """A worker whose cluster never forms (another host's TF_CONFIG mistyped, a host not started) waited without a
    word, and Ctrl-C did nothing: the wait blocks inside TensorFlow, holding Python's lock; only kill -9 ended it.
    Ctrl-C now ends it at once, without cleaning up: worker 1's own encoded copy of the corpus is already gone."""
    import signal
    import threading
    import time

    corpus = write_text(tmp_path / "c.txt", PERIOD * 500)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(ENV, TMPDIR=str(temporary),
               TF_CONFIG=json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 1}}))
    lone = subprocess.Popen([sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir",
                             str(tmp_path / "ck"), "--units", "16", "--strategy", "multi-worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    joining = f"joining the cluster as worker 1 ({', '.join(addresses)}): waiting until every worker has started " \
              "(Ctrl-C stops)\n"
    lines = []
    threading.Thread(target=lambda: lines.extend(lone.stderr), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while joining not in lines and time.monotonic() < deadline:  # once the corpus is read: the wait begins
            time.sleep(0.1)
        time.sleep(1)  # inside TensorFlow's wait by now
        lone.send_signal(signal.SIGINT)
        lone.wait(timeout=30)
    finally:
        lone.kill()
    assert joining in lines, lines
    assert lone.returncode == -signal.SIGINT
    assert [path for path in temporary.rglob("*") if path.is_file()] == []


def test_a_worker_that_cannot_tell_the_others_says_so(monkeypatch, caplog):
    """The child that joins the cluster in a refusing worker's place died unheard (its port taken, say)."""
    import logging

    from textgen import distribute

    monkeypatch.setattr(distribute, "_TELLER", "import sys; sys.exit('Could not start gRPC server')")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with caplog.at_level(logging.WARNING, logger="textgen"):
        distribute.StartGate("multi-worker").refuse(TextgenError("corpus file not found: c.txt"))
    assert caplog.messages[-1] == "could not tell the other workers (Could not start gRPC server); they wait for " \
                                  "this one: stop them"


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_both_and_the_resume_command_names_the_strategy(tmp_path):
    """The printed resume command lacked --strategy multi-worker, and every worker said it had saved."""
    import signal
    import time

    corpus = write_text(tmp_path / "c.txt", PERIOD * 500)
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
               "--run", "r", "--units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10",
               "--epochs", "1000", "--strategy", "multi-worker"]
    with two_workers(lambda index: command, stderr=subprocess.PIPE) as processes:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ck" / "r" / "last.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # training: its first epoch is saved
        processes[1].send_signal(signal.SIGTERM)
        errors = [process.communicate(timeout=120)[1].strip().splitlines()[-1] for process in processes]
    assert [process.returncode for process in processes] == [143, 143], errors
    assert errors[0].startswith("interrupted: saved a resumable checkpoint")
    assert errors[1].startswith("interrupted: the chief worker saved a resumable checkpoint")
    for error in errors:
        assert error.endswith(" --run r --resume --strategy multi-worker"), error


@pytest.mark.slow
def test_a_worker_that_dies_mid_training_stops_the_other_in_one_line(tmp_path):
    """The survivor printed TensorFlow's traceback (an UnavailableError from a collective op); and every checkpoint
    after the fifth logged TensorFlow's warning that strategy.gather retraced a function."""
    import signal
    import time

    corpus = write_text(tmp_path / "c.txt", PERIOD * 500)
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
               "--run", "r", "--units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10",
               "--epochs", "1000", "--strategy", "multi-worker"]
    last = tmp_path / "ck" / "r" / "last.json"
    with two_workers(lambda index: command, stderr=subprocess.PIPE) as processes:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # seven checkpoints saved
            with contextlib.suppress(OSError, ValueError):
                if json.loads(last.read_text())["epoch"] >= 7:
                    break
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGKILL)
        errors = processes[0].communicate(timeout=120)[1]
    assert processes[0].returncode == 1, errors[-3000:]
    assert "Traceback" not in errors and "retracing" not in errors, errors[-3000:]
    message = errors.strip().splitlines()[-1]
    assert message.startswith("error: another worker of the cluster stopped or cannot be reached ("), message
    assert message.endswith(f"so this one stops too; the run's last checkpoint is kept in {tmp_path / 'ck' / 'r'}: "
                            f"start every worker again with: textgen train {corpus} --checkpoint-dir "
                            f"{tmp_path / 'ck'} --run r --resume --strategy multi-worker"), message
    [sample] = generate(tmp_path / "ck", "r", prime="abc", length=10, temperatures=[0])  # the checkpoint is whole
    assert len(sample.text) == 13


@pytest.mark.slow
def test_a_chief_that_dies_before_its_first_save_leaves_nothing_to_resume_and_worker_1_says_so(tmp_path):
    """Worker 1 advised --resume, which found nothing to resume (or, after --overwrite, resumed the earlier run)."""
    import signal

    corpus = write_text(tmp_path / "c.txt", PERIOD * 20000)  # long epochs: the chief dies in the first one
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
               "--run", "r", "--units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10",
               "--epochs", "1000", "--strategy", "multi-worker"]
    with two_workers(lambda index: command, stderr=subprocess.PIPE) as processes:
        for line in processes[0].stderr:  # the chief's log
            if line.startswith("training "):
                break
        processes[0].send_signal(signal.SIGKILL)
        errors = processes[1].communicate(timeout=120)[1]
    assert not (tmp_path / "ck" / "r" / "last.json").exists()
    assert processes[1].returncode == 1 and "Traceback" not in errors, errors[-3000:]
    assert errors.strip().splitlines()[-1].endswith("so this one stops too; nothing of this run was saved: start "
                                                    "every worker again with the same command"), errors[-3000:]


def test_a_worker_lost_before_training_starts_is_one_line_too(tmp_path, monkeypatch):
    """A worker lost while the model was built (its variables are broadcast) or sized: a traceback."""
    import tensorflow as tf

    from textgen import distribute, training

    def lost(*args):
        raise tf.errors.UnavailableError(None, None, 'Collective ops is aborted by: {grpc_message:"Socket closed"}')

    monkeypatch.setattr(distribute, "spans_workers", lambda strategy: True)
    monkeypatch.setattr(training, "_session", lost)
    corpus = write_text(tmp_path / "c.txt", PERIOD * 500)
    with pytest.raises(TextgenError) as stopped:
        training.train(corpus, tmp_path / "ck", run="r", model_options=dict(units=16, embedding_dim=8),
                       train_options=dict(batch_size=4, seq_length=10), log=lambda message: None)
    assert str(stopped.value) == ("another worker of the cluster stopped or cannot be reached (Socket closed), so "
                                  "this one stops too; start every worker again with the same command")
    import textgen  # the Python API's advice is a call (it was the command line)

    with pytest.raises(TextgenError) as stopped:
        textgen.train(corpus, run="r", checkpoint_dir=tmp_path / "ck", units=16, embedding_dim=8, batch_size=4,
                      seq_length=10)
    assert str(stopped.value).endswith("so this one stops too; call textgen.train the same way again on every "
                                       "worker")


def test_the_reason_a_worker_was_lost_is_tensorflows_short_one(monkeypatch):
    import tensorflow as tf

    from textgen import distribute

    grpc = ("Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n  File "
            "x.py, line 6\n\nCollective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error "
            "information from remote target /job:worker/replica:0/task:1 while calling "
            '/tensorflow.WorkerService/RecvBuf:\n:UNKNOWN:Error received from peer  '
            '{grpc_message:"recvmsg:Connection reset by peer", grpc_status:14}')
    heartbeats = ("Collective ops is aborted by: Error reported from /job:worker/task:0: The following tasks are "
                  "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")
    assert distribute.lost_worker(None, tf.errors.UnavailableError(None, None, grpc)) is None  # one machine
    monkeypatch.setattr(distribute, "spans_workers", lambda strategy: True)
    assert distribute.lost_worker(None, tf.errors.UnavailableError(None, None, grpc)) == \
        "recvmsg:Connection reset by peer"
    assert distribute.lost_worker(None, tf.errors.AbortedError(None, None, heartbeats)) == \
        "worker 1 stopped sending heartbeats"
    assert distribute.lost_worker(None, tf.errors.InvalidArgumentError(None, None, grpc)) is None  # a real bug
    assert distribute.lost_worker(None, ValueError(grpc)) is None


def test_a_gpu_tensorflow_does_not_see_or_a_mirrored_run_without_one_is_said(tmp_path, monkeypatch, caplog):
    """A GPU went unused without a word: the training line does not name the device, and TensorFlow's notes about
    its missing CUDA libraries are muted."""
    import logging
    from types import SimpleNamespace

    from textgen import distribute

    driver = tmp_path / "nvidia-version"
    monkeypatch.setattr(distribute, "NVIDIA_DRIVER", str(driver))
    with caplog.at_level(logging.WARNING, logger="textgen"):
        distribute.make_strategy("single")
        assert caplog.messages == []  # no driver, no GPU: the usual CPU machine
        driver.write_text("NVRM version: 550")
        distribute.make_strategy("single")
        assert caplog.messages == ["this machine has an NVIDIA GPU that TensorFlow does not see, so training runs on "
                                   "the CPU; install TensorFlow's GPU build (pip install 'tensorflow[and-cuda]') to "
                                   "use it"]
        caplog.clear()
        for hidden in ("", "-1"):  # GPUs hidden on purpose: no warning
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
            distribute.make_strategy("single")
            assert caplog.messages == []
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a scheduler's GPU, which a CPU-only TensorFlow misses
        distribute.make_strategy("single")
        assert len(caplog.messages) == 1
        caplog.clear()
        driver.unlink()
        distribute.make_strategy("mirrored")
        assert caplog.messages == ["--strategy mirrored found no GPU: training runs on the CPU as one replica"]
    gpus = [f"/job:worker/replica:0/task:1/device:GPU:{index}" for index in range(2)]
    assert distribute.gpu_text(SimpleNamespace(extended=SimpleNamespace(worker_devices=gpus))) == ", on 2 GPUs"
    assert distribute.gpu_text(SimpleNamespace(extended=SimpleNamespace(worker_devices=gpus[:1]))) == ", on 1 GPU"
    assert distribute.gpu_text(distribute.make_strategy("single")) == ""  # the CPU


def test_batch_size_must_divide_among_replicas():
    check_batch_size(64, 4)
    with pytest.raises(TextgenError, match="--batch-size 63 is not divisible by the 2 replicas.*--batch-size 62"):
        check_batch_size(63, 2)


@pytest.mark.slow
def test_resuming_on_devices_that_do_not_share_the_runs_batch_says_which_would(tmp_path):
    """It advised --batch-size 2, which resume then refused as another data layout."""
    corpus = write_text(tmp_path / "c.txt", PERIOD * 300)
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
               "--run", "r", "--units", "8", "--embedding-dim", "4", "--batch-size", "3", "--seq-length", "10",
               "--epochs", "1"]
    subprocess.run(command, check=True, timeout=120, env=ENV, capture_output=True)
    resumed = subprocess.run(command + ["--resume", "--epochs", "2", "--strategy", "mirrored"], timeout=120,
                             env=dict(ENV, TEXTGEN_CPU_DEVICES="2"), capture_output=True, text=True)
    assert resumed.returncode == 1 and resumed.stderr.strip().splitlines()[-1] == (
        "error: this run's batch of 3 streams does not divide among the 2 replicas here; resume it on a number of "
        "devices that divides 3 (one device: --strategy single)"), resumed.stderr
    assert check_batch_size(3, 3, resuming=True) is None


def test_chief_is_the_chief_task_or_worker_0(monkeypatch):
    assert is_chief("single")
    cluster = {"worker": ["a:1", "b:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not is_chief("multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert is_chief("multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": dict(cluster, chief=["c:3"]),
                                                "task": {"type": "worker", "index": 0}}))
    assert not is_chief("multi-worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(TextgenError, match="needs the TF_CONFIG environment variable"):
        is_chief("multi-worker")


@pytest.mark.slow
def test_auto_size_with_a_time_budget_times_its_shapes_after_the_strategy_exists(tmp_path):
    # The timing runs TensorFlow ops; splitting the CPU into devices (mirrored) is refused after the first op.
    # The 120 validation characters hold 5 windows of 20: the chosen batch is the 4 of them that split in two.
    corpus = write_text(tmp_path / "c.txt", (PERIOD * 1200)[:1200])
    result = subprocess.run(
        [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
         "--strategy", "mirrored", "--epochs", "1", "--max-minutes", "1", "--seq-length", "20"],
        env=dict(ENV, TEXTGEN_CPU_DEVICES="2"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sizing (--size auto): 1 x 64 units" in result.stderr and "2 replicas" in result.stderr
    assert "batch 4 (not 64 on a text this short" in result.stderr


def test_a_cpu_device_count_that_is_not_a_number_is_one_line(monkeypatch):
    from textgen.distribute import CPU_DEVICES_VARIABLE, make_strategy
    from textgen.errors import TextgenError

    monkeypatch.setenv(CPU_DEVICES_VARIABLE, "two")
    with pytest.raises(TextgenError, match=r"^TEXTGEN_CPU_DEVICES must be a whole number of CPU devices, got 'two'$"):
        make_strategy("auto")
