"""Running under ``ulimit -v`` (RLIMIT_AS, an HPC login node's limit on a process's address space).

TensorFlow starts dozens of threads. glibc gives each thread that finds the others' malloc arenas busy an arena of its
own, 64 MB of address space each (up to 8 per core), and OpenBLAS (NumPy's) starts a thread per core with buffers of
its own: a tiny training took ~2.7 GB of a 2-core machine's address space for a 750 MB process, and a thread that
could not start aborted it in C++ (or the import failed with a traceback). Under a limit, :func:`reserve_less` (at
``import textgen``, before NumPy loads) keeps malloc to two arenas and OpenBLAS to a few threads, and
:func:`check_address_space` (before TensorFlow loads) refuses in one line a limit too small to run at all.
"""

from __future__ import annotations

import math
import os
from typing import Optional

M_ARENA_MAX = -8  # glibc's mallopt parameter for the number of malloc arenas (what MALLOC_ARENA_MAX sets)
ARENAS = 2
OPENBLAS_THREADS = 2
# What a tiny model's training, sampling, export and serving need with two arenas, measured on 2 cores (serving
# aborted at 1.76 GiB, all ran at 2 GiB), and what each further core's threads add (~37 MB measured up to 16 cores).
NEEDED_ON_TWO_CORES = 2 * 1024**3
NEEDED_PER_CORE = 40 * 1024**2


def address_space_limit() -> Optional[int]:
    """The soft limit on this process's address space in bytes (``ulimit -v``), or None when there is none."""
    try:
        import resource
    except ImportError:  # not on this system
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def cores() -> int:
    """The cores this process may run on (its threads' pools are sized by them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def needed_address_space(core_count: int) -> int:
    """The address space textgen needs to run under a limit, on core_count cores."""
    return NEEDED_ON_TWO_CORES + NEEDED_PER_CORE * max(0, core_count - 2)


def reserve_less() -> None:
    """Under a limit: two malloc arenas (glibc only; a MALLOC_ARENA_MAX or GLIBC_TUNABLES of the user's wins) and a
    few OpenBLAS threads (an OPENBLAS_NUM_THREADS of the user's wins). Nothing without a limit."""
    if address_space_limit() is None:
        return
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(OPENBLAS_THREADS))
    if "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc's own symbol: -8 means M_ARENA_MAX there alone)
        libc.mallopt(M_ARENA_MAX, ARENAS)
    except (OSError, AttributeError):  # not glibc
        pass


def limit_text(limit: int) -> str:
    """"this process may use only 1.4 GiB of address space (ulimit -v 1500000)": a limit in bytes as the user set it
    (ulimit -v counts KiB), rounded down so that it never reads as much as what it falls short of."""
    return f"this process may use only {math.floor(limit / 1024**3 * 10) / 10:.1f} GiB of address space (ulimit -v " \
           f"{limit // 1024})"


def check_address_space() -> None:
    """Refuse, in one line, a limit below what TensorFlow needs to run on this machine's cores."""
    from textgen.errors import TextgenError

    limit, core_count = address_space_limit(), cores()
    needed = needed_address_space(core_count)
    if limit is not None and limit < needed:
        raise TextgenError(
            f"{limit_text(limit)}, and TensorFlow needs at least {math.ceil(needed / 1024**3 * 10) / 10:.1f} GiB of "
            f"it on this machine's {core_count} cores: raise the limit (ulimit -v {2 * needed // 1024}, or ulimit -v "
            "unlimited) or ask the machine's administrator for a node without it")
