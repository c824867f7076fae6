"""The progress bar on stderr: drawn on a terminal that can redraw, in colour unless NO_COLOR says otherwise."""

import io
import sys

import pytest

from textgen.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("environment, drawn, coloured", [({}, True, True), ({"NO_COLOR": "1"}, True, False),
                                                          ({"TERM": "dumb"}, False, False)])
def test_the_bar_honours_term_dumb_and_no_color(monkeypatch, environment, drawn, coloured):
    """Under TERM=dumb (Emacs's shell) or NO_COLOR the bar still wrote its escape codes."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    update = progress_bar(3, "epoch 1", metrics=("loss",))
    for step in (1, 2, 3):
        update(step, loss=0.5)
    shown = terminal.getvalue()
    assert ("3/3" in shown and shown.startswith("epoch 1\n")) == drawn, shown
    assert ("\x1b[" in shown) == coloured, shown


def test_a_line_logged_while_a_bar_is_drawn_starts_a_line_of_its_own(monkeypatch):
    """The pace line was written after the bar on its line: "... bpc: 3.9203pace: 0.06 s per step"."""
    import logging

    from textgen.progress import CurrentStderr

    monkeypatch.setenv("TERM", "xterm")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler, logger = CurrentStderr(), logging.getLogger("textgen.test_progress")
    logger.addHandler(handler)
    try:
        update = progress_bar(3, "epoch 1")
        update(1)
        update(2)
        logger.warning("pace: 0.06 s per step")
        update(3)  # done: the bar ends its line itself
        logger.warning("stopped")
    finally:
        logger.removeHandler(handler)
    lines = terminal.getvalue().split("\n")
    assert "pace: 0.06 s per step" in lines and "stopped" in lines and "" not in lines[:-1], lines


@pytest.fixture
def timed_terminal(monkeypatch):
    """(clock, terminal): time.time() reads clock[0]; the terminal, without colours, is for sys.stderr (set in the
    test itself: pytest's capture sets sys.stderr again after the fixtures)."""
    import time

    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    return clock, Terminal()


@pytest.mark.parametrize("first_step, compiling_s, then_step, then_s, time_left", [
    (1, 600.0, 2, 1.0, "1:38"),  # the first step compiled for 10 minutes: the bar said 97:24:20
    (500, 0.0, 510, 10.0, "8:10"),  # a resumed epoch, a validation told late: the bar said 0s
])
def test_the_time_left_is_measured_from_the_bars_first_update(monkeypatch, timed_terminal, first_step, compiling_s,
                                                              then_step, then_s, time_left):
    clock, terminal = timed_terminal
    monkeypatch.setattr(sys, "stderr", terminal)
    update = progress_bar(1000 if first_step > 1 else 100, "epoch 1")
    update(0)  # (generation's bar says 0 before its first call, which compiles)
    clock[0] += compiling_s
    update(first_step)
    assert terminal.getvalue() == "epoch 1\n"  # no rate yet: nothing drawn
    clock[0] += then_s
    update(then_step)
    shown = terminal.getvalue()
    assert f"{then_step}/" in shown and f" {time_left}" in shown, shown


def test_a_bar_of_one_update_and_a_bar_without_warm_up_are_drawn_at_once(monkeypatch, timed_terminal):
    clock, terminal = timed_terminal
    monkeypatch.setattr(sys, "stderr", terminal)
    update = progress_bar(1, "evaluating", unit="batch")  # an eval of one batch said "0s/batch" after 2 s
    clock[0] += 2.0
    update(1)
    assert "1/1" in terminal.getvalue() and "2s/batch" in terminal.getvalue(), terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    update = progress_bar(100, "encoding the corpus", unit="char", warm_up=False)  # (no compilation to leave out)
    clock[0] += 1.0
    update(10)
    assert "10/100" in terminal.getvalue() and " 9s" in terminal.getvalue(), terminal.getvalue()
