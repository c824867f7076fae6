"""textgen's float32 LSTM training loops in C++ (``lstm_loops.cc``), built once per machine and TensorFlow version.

The fast path's training loops (:mod:`textgen.fast_lstm`) run as two TensorFlow ops when this machine can build
them: ``g++`` (or ``$CXX``) compiles ``lstm_loops.cc`` against the installed TensorFlow's headers with
``-march=native`` and any ``$TEXTGEN_NATIVE_LOOPS_FLAGS`` (~30 s, logged), into ``~/.cache/textgen/native``
(under ``$XDG_CACHE_HOME`` where set), keyed by the source, TensorFlow's version and build flags, the compiler
and the CPU, so that a machine that changes any of them builds again. Where that cannot happen (no compiler, an
unwritable cache, a failed build) or ``TEXTGEN_NATIVE_LOOPS=0`` is set, the XLA-compiled loops serve, with the
same results to float32 rounding: training steps 1.14x (2 x 512) to 1.6x (1 x 128) slower on a Zen 5
(BENCHMARKS.md, "Against PyTorch: where the training time goes").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from textgen import cpu

SOURCE = Path(__file__).with_name("lstm_loops.cc")
SWITCH = "TEXTGEN_NATIVE_LOOPS"  # "0" keeps the XLA loops
EXTRA_FLAGS = "TEXTGEN_NATIVE_LOOPS_FLAGS"  # more compiler flags, after textgen's
BUILD_TIMEOUT_S = 300  # a compile takes ~30 s

logger = logging.getLogger("textgen")
_lock = threading.Lock()
_loaded: list = []  # [the op module, or None when it cannot be had]: tried once per process


def library():
    """The loaded ops (``textgen_lstm_forward``, ``textgen_lstm_backward``), or None where they cannot be built or
    are switched off. Builds them the first time on a machine; later calls and processes reuse the build."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def cache_dir() -> Path:
    home = os.path.expanduser("~")
    if home == "~":  # no HOME and no passwd entry (a container's arbitrary user): not a folder named "~" here
        home = os.path.join(tempfile.gettempdir(), f"textgen-{os.getuid()}")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(base) / "textgen" / "native"


def _load():
    if os.environ.get(SWITCH, "1") == "0":
        return None
    try:
        return _built_and_loaded()
    except Exception as error:  # whatever stops them (a cache folder it may not search, ...), training goes on
        return _without(f"textgen's LSTM training loops cannot be had here ({type(error).__name__}: {error})")


def _without(why: str, remedy: str = "", level: int = logging.WARNING) -> None:
    """The one-line note that the XLA loops serve, and why; returns None (no library)."""
    logger.log(level, f"note: {why}; the XLA loops serve (training 1.1-1.6x slower). {remedy}"
                      f"Set {SWITCH}=0 to silence this.")


def _built_and_loaded():
    import tensorflow as tf

    compiler = shlex.split(os.environ.get("CXX") or "g++")  # "ccache g++" too
    if not compiler or shutil.which(compiler[0]) is None:
        return _without("no C++ compiler (g++) here to build textgen's LSTM training loops",
                        "Install g++ for the faster ones. ", level=logging.INFO)
    compile_flags, link_flags = tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()
    # Extra flags last, so that they win (-march=x86-64-v3: AVX2 code on an AVX-512 CPU, to compare). Not
    # $CXXFLAGS: conda's compiler packages set it to -march=nocona -O2, which would build slow loops unseen.
    # -fvisibility=hidden: the library's Eigen stays its own. Exported, its calls into Eigen's non-inline parts
    # (the product's blocking sizes) bound to TensorFlow's copies, built for another CPU and perhaps another Eigen.
    command = [*compiler, "-shared", "-fPIC", "-O3", "-march=native", "-fvisibility=hidden", "-w", *compile_flags,
               *os.environ.get(EXTRA_FLAGS, "").split()]
    built = cache_dir() / f"lstm_loops-{_build_key(compiler, command + link_flags)}.so"
    failed = built.with_suffix(".failed")  # a build that failed, not tried again by every training
    if failed.exists():
        return _without(f"building textgen's LSTM training loops failed before ({failed.read_text().strip()})",
                        f"Delete {failed} to try again. ")
    if not built.exists():
        failure = _build(command, link_flags, built)
        if failure:
            with contextlib.suppress(OSError):  # (a folder it cannot write: said below)
                failed.write_text(failure + "\n")
            return _without(f"could not build textgen's LSTM training loops ({failure})")
    try:
        return tf.load_op_library(str(built))
    except Exception as error:  # a library this TensorFlow refuses: the XLA loops still serve
        return _without(f"could not load textgen's LSTM training loops from {built} ({error})",
                        "Delete that file to build it again. ")


def _build_key(compiler: list[str], command: list[str]) -> str:
    """What the built library depends on: its source, TensorFlow's headers and flags, the compiler, the CPU."""
    import tensorflow as tf

    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (tf.__version__, tf.sysconfig.get_include(), *command, version, cpu.cpu_model(),
                 " ".join(sorted(cpu.cpu_flags()))):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _build(command: list[str], link_flags: list[str], built: Path) -> str | None:
    """Compiles the ops into ``built`` (written whole or not at all); returns why it failed, or None."""
    logger.info(f"building textgen's LSTM training loops for this CPU and TensorFlow (once, ~30 s) in {built.parent}")
    try:
        built.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=built.name + ".", suffix=".partial", dir=built.parent)
        os.close(handle)
    except OSError as error:
        return f"cannot write {built.parent}: {error.strerror or error}"
    name = Path(command[0]).name
    try:
        # Its own process group, so that a compiler that hangs is stopped with what it started (cc1plus, ld)
        compiler = subprocess.Popen([*command, str(SOURCE), "-o", partial, *link_flags], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = compiler.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(compiler.pid, signal.SIGKILL)
            compiler.communicate()
            return f"{name} took over {BUILD_TIMEOUT_S} s"
        if compiler.returncode != 0:
            lines = stderr.splitlines()
            errors = [line.strip() for line in lines if ": error:" in line or "fatal error:" in line] or \
                [line.strip() for line in lines if line.strip()]
            return f"{name} exit code {compiler.returncode}" + (f": {errors[0][:200]}" if errors else "")
        os.chmod(partial, 0o755 & ~_umask())  # mkstemp's 0600 would keep the build from the cache's other users
        os.replace(partial, built)
        return None
    except OSError as error:
        return str(error)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _umask() -> int:
    """This process's umask, read without setting it (os.umask sets it, for every thread, meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
