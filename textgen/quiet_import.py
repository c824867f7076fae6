"""Importing TensorFlow without its C++ start-up notes on the terminal."""

from __future__ import annotations

import os
import random
import sys
import threading
from typing import Optional

# One import at a time: two threads loading at once each saved file descriptor 2, the second after the first had
# muted it, and the one that gave it back last left the program's stderr on /dev/null for good.
_importing = threading.Lock()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted: its C++ start-up notes ("oneDNN custom
    operations are on", "Could not find cuda drivers") are printed before any log level applies. Python's random
    generator is given back as it was: the import draws from it, which moved a program's seeded sequence at its first
    textgen.train or textgen.load. (What other threads write to stderr during those seconds is lost with the notes: a
    program that logs from threads can import tensorflow itself first, which this then leaves alone.)"""
    with _importing:
        if "tensorflow" in sys.modules:  # imported: by the program, or by a call that held the lock until it was done
            return
        fit_address_space_limit()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        python_state = random.getstate()
        try:
            os.dup2(devnull, 2)
            import keras  # noqa: F401  (imports tensorflow as its backend)
        finally:
            random.setstate(python_state)
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


# glibc's mallopt parameter for the number of malloc arenas (what MALLOC_ARENA_MAX sets)
M_ARENA_MAX = -8
# The address space (ulimit -v) TensorFlow's start and a tiny model's training, sampling and serving need on 2 cores
# with two malloc arenas; a machine with more cores starts more threads, each with its stack. Below it they do not
# run at all: the import fails with a traceback, or a thread that cannot start aborts the process in C++.
NEEDED_ADDRESS_SPACE = 2 * 1024**3


def address_space_limit() -> Optional[int]:
    """The soft limit on this process's address space in bytes (``ulimit -v``), or None when there is none."""
    try:
        import resource
    except ImportError:  # not on this system
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def fit_address_space_limit() -> None:
    """Under ``ulimit -v`` (an HPC login node's), keep TensorFlow within the limit where it can, and refuse in one line
    where it cannot. glibc gives each thread that finds the others' malloc arenas busy one of its own, 64 MB of address
    space each, up to 8 per core: TensorFlow's dozens of threads took ~2.7 GB of a 2-core machine's address space for
    a 750 MB process, and a thread that could not start aborted it in C++. Two arenas (what ``MALLOC_ARENA_MAX=2``
    sets, which a user's own value overrides) bring that down to what :data:`NEEDED_ADDRESS_SPACE` says."""
    from textgen.errors import TextgenError

    limit = address_space_limit()
    if limit is None:
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        import ctypes

        try:
            ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
        except (OSError, AttributeError):  # a C library without mallopt (not glibc)
            pass
    if limit < NEEDED_ADDRESS_SPACE:
        raise TextgenError(
            f"this process may use only {limit / 1024**3:.1f} GB of address space (ulimit -v {limit // 1024}), and "
            f"TensorFlow needs at least {NEEDED_ADDRESS_SPACE / 1024**3:.0f} GB of it (more on a machine with many "
            f"cores): raise the limit (ulimit -v {NEEDED_ADDRESS_SPACE // 1024 * 2}, or ulimit -v unlimited) or ask "
            "the machine's administrator for a node without it")
