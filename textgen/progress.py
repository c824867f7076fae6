"""Progress on stderr: a Keras progbar when it is a terminal, and the "textgen" logger's records as plain lines."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
from typing import Callable, Iterator


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal that can redraw a line: a stand-in without isatty (an embedding host's), none at
    all (pythonw: None), a closed one, or one that says it cannot move its cursor (TERM=dumb: Emacs's shell, some CI
    consoles, where the bar's escape codes and backspaces showed as they are) is not."""
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class _WithoutColour(io.TextIOBase):
    """sys.stderr without the bar's colour codes (NO_COLOR, https://no-color.org), its redraws kept."""

    def write(self, text: str) -> int:
        sys.stderr.write(re.sub(r"\x1b\[[0-9;]*m", "", text))
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(total: int, title: str = "", unit: str = "step", metrics: tuple[str, ...] = (),
                 enabled: bool = True, warm_up: bool = True) -> Callable[..., None]:
    """update(done, **values) redraws the bar showing the named metrics as given.

    A no-op when stderr is not a terminal, so that logs hold only the summary lines. The bar is drawn from the
    second update on, its time left measured from the first: that step's time holds the compilation (Keras's own
    estimate multiplied it by the steps left: a large text's first bar said 97:24:20), and a bar begun mid-way (a
    resumed epoch, a slow validation told late) is not at step 1, where Keras starts measuring (it said a few
    seconds for the minutes left). warm_up=False: a loop without a slow first step (reading a file) is drawn from
    its first update, its time left measured from the bar's start."""
    if not enabled or total <= 0 or not stderr_is_terminal():
        return lambda done, **values: None
    import keras

    class MeasuredFromFirstUpdate(keras.utils.Progbar):
        first: tuple[int, float] = (0, 0.0)  # (done, time.time()) at the first update

        def _estimate_step_duration(self, current: int, now: float) -> float:
            done, then = self.first
            if current > done:
                return (now - then) / (current - done)
            return (now - self._start) / current if current else 0.0  # (a bar whose first update is its last)

    bar = MeasuredFromFirstUpdate(total, stateful_metrics=list(metrics), unit_name=unit)
    if title:
        sys.stderr.write(title + "\n")
    colourless = bool(os.environ.get("NO_COLOR"))  # read once per bar, not at every step
    created, first_update = time.time(), []

    def update(done: int, **values: float) -> None:
        if not first_update:
            if warm_up and not done:  # (generation's bar says 0 before its first call, which compiles)
                return
            first_update.append(done)
            bar.first = (done, time.time()) if warm_up else (0, created)
            if warm_up and done < total:
                return
        shown = _WithoutColour() if colourless else sys.stderr  # stdout: generated text only
        with contextlib.redirect_stdout(shown):
            bar.update(done, list(values.items()))
        _bar_line_open[0] = done < total  # (the bar ends its line when done)
    return update


def duration(seconds: float) -> str:
    """'45 s', '28 min', '9.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


SLOW_S = 20.0  # a loop still running after this long says how long it has left


def told_when_slow(total: int, what: str, log: Callable[[str], None]) -> Callable[[int], None]:
    """update(done) for a loop of total items that may take minutes (a large text's validation or eval): nothing
    while it is quick; past SLOW_S, one line "WHAT: ~T left", then a bar on a terminal. A log got nothing."""
    started, shown = time.monotonic(), []

    def update(done: int) -> None:
        if shown:
            shown[0](done)
        elif (spent := time.monotonic() - started) >= SLOW_S and done < total:
            log(f"{what}: ~{duration(spent / done * (total - done))} left")
            shown.append(progress_bar(total, unit="window"))
    return update


_bar_line_open = [False]  # a bar is drawn on the terminal's last line, which has no line break yet


def end_bar_line() -> None:
    """Say that the terminal's last line was ended by the caller (a line break written after a bar)."""
    _bar_line_open[0] = False


class CurrentStderr(logging.StreamHandler):
    """Writes each record as a plain line to whatever sys.stderr is at the moment (click's test runner swaps it, as
    notebooks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _bar_line_open[0]:  # on a line of its own, not after the bar's ("...bpc: 3.92pace: 0.06 s per step")
            _bar_line_open[0] = False
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("\n")
        super().emit(record)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _shown_record(record: logging.LogRecord) -> bool:
    if any(handler is not _LINES for handler in _handlers_reached(logging.getLogger("textgen"))):
        return False  # the program configured logging since the training began: its handlers show the records
    # another thread's records as Python's last resort showed them: this handler takes its place while attached
    return record.thread in _SHOWN_THREADS or record.levelno >= logging.WARNING


_LINES = CurrentStderr()
_LINES.addFilter(_shown_record)
_SHOWN_THREADS: list[int] = []  # threads inside log_lines_on_stderr, once per call
_LEVELS: dict[str, int] = {}  # the logger's own level before _LINES was attached, and the one set then
_LINES_LOCK = threading.Lock()


def _handlers_reached(logger: logging.Logger) -> list[logging.Handler]:
    handlers = []
    while logger is not None:
        handlers += logger.handlers
        logger = logger.parent if logger.propagate else None
    return handlers


@contextlib.contextmanager
def log_lines_on_stderr(enabled: bool = True) -> Iterator[None]:
    """This thread's records of the "textgen" logger, INFO and above, written on stderr as the command writes them,
    while the program has configured no logging (a notebook's default: they reached no handler, so a training of
    hours said nothing). A program that configured logging gets them where it sends them, and a level set on the
    "textgen" logger is kept."""
    logger = logging.getLogger("textgen")
    with _LINES_LOCK:
        shown = enabled and all(handler is _LINES for handler in _handlers_reached(logger))
        if shown:
            if not _SHOWN_THREADS:
                logger.addHandler(_LINES)
                _LEVELS.update(before=logger.level, set=logger.level or logging.INFO)
                logger.setLevel(_LEVELS["set"])
            _SHOWN_THREADS.append(threading.get_ident())
    try:
        yield
    finally:
        if shown:
            with _LINES_LOCK:
                _SHOWN_THREADS.remove(threading.get_ident())
                if not _SHOWN_THREADS:
                    logger.removeHandler(_LINES)
                    if logger.level == _LEVELS["set"]:  # not one the program set during the training
                        logger.setLevel(_LEVELS["before"])
