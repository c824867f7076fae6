"""Importing TensorFlow without its C++ start-up notes on the terminal."""

from __future__ import annotations

import os
import random
import sys
import threading

from textgen.address_space import check_address_space

# One import at a time: two threads loading at once each saved file descriptor 2, the second after the first had
# muted it, and the one that gave it back last left the program's stderr on /dev/null for good.
_importing = threading.Lock()


def _interrupt_behind(error: BaseException, handled: BaseException | None):
    """The KeyboardInterrupt (or Terminated) that error was raised while handling, or None; not one the caller was
    already handling when it imported (an import that fails in a program's `except KeyboardInterrupt`)."""
    while error is not None and error is not handled and not isinstance(error, KeyboardInterrupt):
        error = error.__context__
    return None if error is handled else error


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 muted: its C++ start-up notes ("oneDNN custom
    operations are on", "Could not find cuda drivers") are printed before any log level applies. Python's random
    generator is given back as it was: the import draws from it, which moved a program's seeded sequence at its first
    textgen.train or textgen.load. (What other threads write to stderr during those seconds is lost with the notes: a
    program that logs from threads can import tensorflow itself first, which this then leaves alone.)"""
    with _importing:
        if "tensorflow" in sys.modules:  # imported: by the program, or by a call that held the lock until it was done
            return
        check_address_space()
        try:
            saved = os.dup(2)
        except OSError:  # a program started with 2>&-: /dev/null stays as its descriptor 2 (else the next file
            saved = None  # opened would take it, and TensorFlow's later log lines with it)
        devnull = os.open(os.devnull, os.O_WRONLY)
        python_state = random.getstate()
        handled = sys.exc_info()[1]
        try:
            os.dup2(devnull, 2)
            import keras  # noqa: F401  (imports tensorflow as its backend)
        except ImportError as error:  # Ctrl-C (or a SIGTERM) while TensorFlow loaded its libraries failed its import
            # ("initialization failed") in the middle of the interrupt: the caller is told of the interrupt
            if (interrupt := _interrupt_behind(error, handled)) is None:
                raise
            raise interrupt from None
        finally:
            random.setstate(python_state)
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            if devnull != 2:  # (2 itself when it was closed: the lowest free descriptor)
                os.close(devnull)
