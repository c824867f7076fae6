"""Importing TensorFlow without its C++ start-up notes on the terminal."""

from __future__ import annotations

import os
import random
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted: its C++ start-up notes ("oneDNN custom
    operations are on", "Could not find cuda drivers") are printed before any log level applies. Python's random
    generator is given back as it was: the import draws from it, which moved a program's seeded sequence at its first
    textgen.train or textgen.load."""
    if "tensorflow" in sys.modules:
        return
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
