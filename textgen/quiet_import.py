"""Importing TensorFlow without its C++ start-up notes on the terminal."""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted: its C++ start-up notes ("oneDNN custom
    operations are on", "Could not find cuda drivers") are printed before any log level applies."""
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401  (imports tensorflow as its backend)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
