"""Choosing a tf.distribute strategy, and the few helpers the training loop needs to stay stateful under it.

Under a strategy of R replicas the global batch of B streams is split into R blocks of B/R
consecutive rows: replica r always gets rows [r*B/R, (r+1)*B/R) of every batch, so its LSTM
state keeps continuing its own streams. Each worker reads the whole corpus and takes its
replicas' rows, so nothing is re-sharded between steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Optional

from textgen.config import check_range
from textgen.errors import TextgenError

logger = logging.getLogger("textgen")
STRATEGIES = ("auto", "single", "mirrored", "multi-worker")
CPU_DEVICES_VARIABLE = "TEXTGEN_CPU_DEVICES"  # split the CPU into N logical devices (to try mirrored on a CPU)
NVIDIA_DRIVER = "/proc/driver/nvidia/version"  # present when Linux has loaded NVIDIA's driver
JOIN_TIMEOUT = 60.0  # seconds a worker that cannot start waits for the others to join the cluster, to tell them


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        raise TextgenError("--strategy multi-worker needs the TF_CONFIG environment variable on every host "
                           "(see 'Several GPUs and several machines' in the README)")
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise TextgenError("TF_CONFIG is not valid: it must be JSON with 'cluster' and 'task': "
                           "{\"type\": \"worker\", \"index\": N}") from None
    return config


def is_chief(strategy_name: str) -> bool:
    """Only the chief writes checkpoints and logs: the 'chief' task, or worker 0 when there is none."""
    if strategy_name != "multi-worker":
        return True
    config = _tf_config()
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def check_strategy(name) -> None:
    check_range("strategy", name, choices=STRATEGIES)


def make_strategy(name: str):
    import tensorflow as tf

    check_strategy(name)
    if name == "multi-worker":
        with _joining_the_cluster(_tf_config()):
            return tf.distribute.MultiWorkerMirroredStrategy()
    setting = os.environ.get(CPU_DEVICES_VARIABLE, "0") or "0"
    if not setting.isdigit():
        raise TextgenError(f"{CPU_DEVICES_VARIABLE} must be a whole number of CPU devices, got {setting!r}")
    cpu_devices = int(setting)
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    # Else the GPU goes unused without a word (TF's notes are muted); CUDA_VISIBLE_DEVICES "" or -1 hides GPUs on
    # purpose.
    if not gpus and os.path.exists(NVIDIA_DRIVER) and os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1"):
        logger.warning("this machine has an NVIDIA GPU that TensorFlow does not see, so training runs on the CPU; "
                       "install TensorFlow's GPU build (pip install 'tensorflow[and-cuda]') to use it")
    if name == "mirrored" and not gpus and cpu_devices <= 1:
        logger.warning("--strategy mirrored found no GPU: training runs on the CPU as one replica")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "single"
    if name == "single":
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def gpu_text(strategy) -> str:
    """', on 2 GPUs' when the strategy trains on this worker's GPUs, else '' (the CPU: the usual case)."""
    import tensorflow as tf

    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's first GPU, if it sees one
        devices = [device.name for device in tf.config.list_logical_devices("GPU")][:1]
    gpus = sum(":GPU:" in device.upper() for device in devices)
    return f", on {gpus} GPU{'s' if gpus > 1 else ''}" if gpus else ""


def divisible_batch(batch_size: int, replicas: int) -> int:
    """The largest batch size up to batch_size that the replicas share equally (at least one row each)."""
    return max(replicas, batch_size // replicas * replicas)


def check_batch_size(batch_size: int, replicas: int, resuming: bool = False) -> None:
    """Refuse a batch the replicas cannot share; resuming, the batch is the run's own (another is refused)."""
    if batch_size % replicas and resuming:
        raise TextgenError(f"this run's batch of {batch_size} streams does not divide among the {replicas} replicas "
                           f"here; resume it on a number of devices that divides {batch_size} (one device: "
                           "--strategy single)")
    if batch_size % replicas:
        suggestion = divisible_batch(batch_size, replicas)
        raise TextgenError(f"--batch-size {batch_size} is not divisible by the {replicas} replicas; "
                           f"use a multiple of {replicas}, e.g. --batch-size {suggestion}")


def replica_rows(strategy, array):
    """The global (B, ...) array as a per-replica value: replica r gets rows [r*B/R, (r+1)*B/R)."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return tf.convert_to_tensor(array)
    per_replica = len(array) // replicas
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.convert_to_tensor(
            array[context.replica_id_in_sync_group * per_replica:(context.replica_id_in_sync_group + 1)
                  * per_replica]))


def spans_workers(strategy) -> bool:
    """Whether the strategy runs on several processes (multi-worker): each then holds its own replicas alone, and
    what they must agree on takes a collective that every worker calls."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def lost_worker(strategy, error: BaseException) -> Optional[str]:
    """TensorFlow's reason when error says that another worker of the cluster stopped or cannot be reached (a
    collective op failed mid-training); None for any other error."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError)
    if not spans_workers(strategy) or not isinstance(error, lost):
        return None
    message = error.message
    if "stopped sending heartbeats" in message:  # TensorFlow's coordination service noticed
        task = re.search(r"/job:worker/(?:replica:\d+/)?task:(\d+)", message.split("stopped sending heartbeats")[1])
        return f"worker {task.group(1)} stopped sending heartbeats" if task else "a worker stopped sending heartbeats"
    found = re.search(r'grpc_message:"([^"]+)"', message) or re.search(r"aborted by: (.+)", message)
    return found.group(1).strip() if found else type(error).__name__


def worker_mean(strategy, *values: float) -> list[float]:
    """Each value averaged over all workers, so that every worker takes the same decision
    (a flag's mean is above 0 when it is set on any worker)."""
    import tensorflow as tf

    if not spans_workers(strategy):
        return [float(value) for value in values]
    value = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([float(value) for value in values], tf.float64))
    return [float(mean) for mean in strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None).numpy()]


class StartGate:
    """Makes the run's strategy; under multi-worker, every worker also learns whether all of them could start.

    A worker that cannot start (the chief finding that the run already has checkpoints, a corpus missing on one
    host) must still join the cluster to say so: the others wait in it for every worker, forever, and that wait
    ignores SIGTERM. :meth:`open` joins and raises if another worker refused; :meth:`refuse` joins only to tell."""

    def __init__(self, strategy_name: str):
        self.strategy_name = strategy_name
        self.strategy = None

    def open(self):
        """The strategy, made once; raises TextgenError when another worker could not start."""
        self.strategy = make_strategy(self.strategy_name)
        if worker_mean(self.strategy, 0.0)[0] > 0:
            raise TextgenError("another worker could not start this training (its log says why); fix that, then "
                               "start every worker again")
        return self.strategy

    def refuse(self, reason: Exception) -> None:
        """Tell the other workers that this one cannot start, for reason (under multi-worker, before it has joined
        them), waiting up to JOIN_TIMEOUT seconds for them. A child process joins in this worker's place: joining
        blocks inside TensorFlow, deaf to signals and to a timeout, until every worker is there."""
        if self.strategy_name != "multi-worker" or self.strategy is not None:
            return
        logger.warning(f"this worker cannot start ({reason}); telling the other workers (waiting up to "
                       f"{JOIN_TIMEOUT:g} s for them to join the cluster)")
        teller = subprocess.Popen([sys.executable, "-c", _TELLER], env={**os.environ, _PARENT: str(os.getpid()),
                                                                      _PATH: os.pathsep.join(sys.path)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, errors = teller.communicate(timeout=JOIN_TIMEOUT)
            if teller.returncode:
                last = (errors.strip().splitlines() or ["no message"])[-1]
                logger.warning(f"could not tell the other workers ({last}); they wait for this one: stop them")
        except subprocess.TimeoutExpired:
            logger.warning(f"not every worker joined within {JOIN_TIMEOUT:g} s; those running, or started later, wait "
                           "for this one: stop them")
        finally:
            teller.kill()
            teller.wait()


@contextlib.contextmanager
def _joining_the_cluster(config: dict):
    """Around the wait for the other workers to join the cluster (config: TF_CONFIG's): says so, and Ctrl-C ends
    the process at once. That wait blocks inside TensorFlow, holding Python's lock, for as long as a worker is missing
    (a host's TF_CONFIG mistyped, a host not started): Python ran neither its signal handler nor any thread, it said
    nothing, and only kill -9 ended it. (TensorFlow keeps SIGTERM.)"""
    task, hosts = config["task"], ", ".join(address for job in config["cluster"].values() for address in job)
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    handler = signal.signal(signal.SIGINT, signal.SIG_DFL) if in_main else None
    try:
        logger.info(f"joining the cluster as {task['type']} {task['index']} ({hosts}): waiting until every worker "
                    f"has started{' (Ctrl-C stops)' * in_main}")
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGINT, handler)


_PARENT, _PATH = "TEXTGEN_TELLER_PARENT", "TEXTGEN_TELLER_PATH"
# StartGate.refuse's child. It dies with its parent (Linux), whatever ends the parent: left behind, it would hold
# the worker's port and tell the next attempt's workers to stop. Its sys.path is the parent's (python -c puts the
# current directory first, where another textgen may be).
_TELLER = f"""
import os, sys
sys.path[:] = os.environ["{_PATH}"].split(os.pathsep)
try:
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ["{_PARENT}"]):
    sys.exit(1)
from textgen.distribute import make_strategy, worker_mean
worker_mean(make_strategy("multi-worker"), 1.0)
"""
