"""Progress bars for long operations: a Keras progbar on stderr when it is a terminal, else nothing."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: a stand-in without isatty (an embedding host's), none at all (pythonw: None) or
    a closed one is not."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def progress_bar(total: int, title: str = "", unit: str = "step", metrics: tuple[str, ...] = (),
                 enabled: bool = True) -> Callable[..., None]:
    """update(done, **values) redraws the bar showing the named metrics as given.

    A no-op when stderr is not a terminal, so that logs hold only the summary lines."""
    if not enabled or total <= 0 or not stderr_is_terminal():
        return lambda done, **values: None
    import keras

    bar = keras.utils.Progbar(total, stateful_metrics=list(metrics), unit_name=unit)
    if title:
        sys.stderr.write(title + "\n")

    def update(done: int, **values: float) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is reserved for generated text
            bar.update(done, list(values.items()))
    return update
