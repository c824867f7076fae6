"""textgen's C++ training loops (textgen/lstm_loops.cc via textgen.native_loops): the same numbers as the XLA loops
for any split of the units among threads, and a one-line note, not a failure, wherever they cannot be had.

The layers' outputs and gradients through them, against the stock Keras LSTM: tests/test_fast_lstm.py."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from textgen import fast_lstm, lstm_step, native_loops  # noqa: E402

STEPS, BATCH, UNITS = 5, 3, 40  # 40 units: split 16 + 16 + 8 among three parts
TOL = 1e-5


def window(width_pad=3, seed=0):
    rng = np.random.default_rng(seed)
    gates = lstm_step.GATES * UNITS
    xw = rng.normal(size=(STEPS, BATCH, gates + width_pad)).astype("float32")
    h0, c0 = (rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(2))
    recurrent = (rng.normal(size=(UNITS, gates)) / np.sqrt(UNITS)).astype("float32")
    d_outputs = rng.normal(size=(STEPS, BATCH, UNITS)).astype("float32")
    dh, dc = (rng.normal(size=(BATCH, UNITS)).astype("float32") for _ in range(2))
    return xw, h0, c0, recurrent, d_outputs, dh, dc


def xla_loops(xw, h0, c0, recurrent, d_outputs, dh, dc, width):
    """The compiled batch-major XLA loops' forward saves and backward results, in the C++ ops' layouts."""
    scaled = recurrent * lstm_step.candidate_scale(UNITS, tf.float32)
    _, _, _, h_all, c_all, s_all = fast_lstm._compiled(fast_lstm._forward_loop)(
        xw, h0, c0, fast_lstm._materialized_transpose(scaled), True, False)
    step_weights = fast_lstm._materialized_transpose(fast_lstm._pad_columns(tf.constant(recurrent), width))
    dz_all, dh0, dc0 = fast_lstm._compiled(fast_lstm._backward_loop)(s_all, c_all, d_outputs, dh, dc, step_weights,
                                                                      width, False)
    s_all = tf.reshape(tf.transpose(s_all, [0, 2, 1, 3]), [STEPS, BATCH, -1])  # (T, 4, B, U) -> (T, B, 4U)
    return [np.array(t) for t in (h_all, c_all, s_all, dz_all, dh0, dc0)], step_weights


@pytest.mark.parametrize("parts", [1, 2, 3, 0])  # 0: one part per intra-op thread
def test_ops_compute_what_the_xla_loops_compute(parts, native_library):
    library = native_library
    xw, h0, c0, recurrent, d_outputs, dh, dc = window()
    width = xw.shape[-1]
    expected, step_weights = xla_loops(xw, h0, c0, recurrent, d_outputs, dh, dc, width)
    scaled = recurrent * np.array(lstm_step.candidate_scale(UNITS, tf.float32))
    h_all, c_all, s_all = library.textgen_lstm_forward(xw, h0, c0, scaled, parts=parts)
    dz_all, dh0, dc0 = library.textgen_lstm_backward(s_all, c_all, d_outputs, dh, dc, step_weights, width=width,
                                                     parts=parts)
    for name, got, want in zip(("h_all", "c_all", "s_all", "dz_all", "dh0", "dc0"),
                               (h_all, c_all, s_all, dz_all, dh0, dc0), expected):
        assert got.shape == want.shape, name
        assert np.max(np.abs(np.array(got) - want)) < TOL, name
    assert np.array_equal(np.array(h_all[0]), h0) and np.array_equal(np.array(c_all[0]), c0)
    assert not np.any(np.array(dz_all)[..., lstm_step.GATES * UNITS:])  # the padded columns are zeros


def reference_loops(xw, h0, c0, recurrent, d_outputs, dh, dc, width):
    """Both recurrences in float64 NumPy, written from textgen/lstm_step.py's math."""
    steps, batch, _ = xw.shape
    units = recurrent.shape[0]
    gates = 4 * units
    scaled = recurrent.astype(np.float64) * np.array(lstm_step.candidate_scale(units, tf.float32))
    h_all, c_all, s_all = [h0.astype(np.float64)], [c0.astype(np.float64)], []
    for t in range(steps):
        s = 1 / (1 + np.exp(-(xw[t, :, :gates] + h_all[-1] @ scaled)))
        i, f, candidate, o = np.split(s, 4, 1)
        c_all.append(f * c_all[-1] + i * (2 * candidate - 1))
        h_all.append(o * np.tanh(c_all[-1]))
        s_all.append(s)
    dz_all = np.zeros((steps, batch, width))
    dh, dc = dh.astype(np.float64), dc.astype(np.float64)
    for t in reversed(range(steps)):
        i, f, candidate, o = np.split(s_all[t], 4, 1)
        dh_total, tanh_c = dh + d_outputs[t], np.tanh(c_all[t + 1])
        dc = dc + dh_total * o * (1 - tanh_c ** 2)
        dz = np.concatenate([dc * (2 * candidate - 1) * i * (1 - i), dc * c_all[t] * f * (1 - f),
                             4 * dc * i * candidate * (1 - candidate), dh_total * tanh_c * o * (1 - o)], 1)
        dz_all[t, :, :gates] = dz
        dh, dc = dz @ recurrent.T, dc * f
    return np.stack(h_all), np.stack(c_all), np.array(s_all).reshape(steps, batch, gates), dz_all, dh, dc


def test_ops_match_a_float64_reference_at_odd_shapes(native_library):
    """Units below, at and beyond a vector (16), batch 1, windows of 0 and 1 steps, padded rows, more parts than
    threads; the rows of R^T beyond 4U hold garbage, which must never be read."""
    library = native_library
    for units, batch, steps, pad, parts in itertools.product([1, 17, 33], [1, 3], [0, 1, 4], [0, 5], [1, 3, 0]):
        rng = np.random.default_rng(units * 100 + batch * 10 + steps)
        gates = 4 * units
        xw = rng.normal(size=(steps, batch, gates + pad)).astype("float32")
        h0, c0, dh, dc = (rng.normal(size=(batch, units)).astype("float32") for _ in range(4))
        recurrent = (rng.normal(size=(units, gates)) / np.sqrt(units)).astype("float32")
        d_outputs = rng.normal(size=(steps, batch, units)).astype("float32")
        weights_t = np.concatenate([recurrent.T, 1e3 * rng.normal(size=(pad, units))]).astype("float32")
        scaled = recurrent * np.array(lstm_step.candidate_scale(units, tf.float32))
        h_all, c_all, s_all = library.textgen_lstm_forward(xw, h0, c0, scaled, parts=parts)
        got = [h_all, c_all, s_all, *library.textgen_lstm_backward(s_all, c_all, d_outputs, dh, dc, weights_t,
                                                                    width=gates + pad, parts=parts)]
        want = reference_loops(xw, h0, c0, recurrent, d_outputs, dh, dc, gates + pad)
        for name, a, b in zip(("h_all", "c_all", "s_all", "dz_all", "dh0", "dc0"), got, want):
            assert a.shape == b.shape and (not b.size or np.max(np.abs(np.array(a) - b)) < TOL), \
                (name, units, batch, steps, pad, parts)


def test_ops_give_the_same_bits_twice_and_refuse_mismatched_shapes(native_library):
    library = native_library
    xw, h0, c0, recurrent, *_ = window()
    first = [np.array(t) for t in library.textgen_lstm_forward(xw, h0, c0, recurrent)]
    second = [np.array(t) for t in library.textgen_lstm_forward(xw, h0, c0, recurrent)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    with pytest.raises(tf.errors.InvalidArgumentError, match="h0 and c0 must be"):
        library.textgen_lstm_forward(xw, h0[:, 1:], c0, recurrent)
    with pytest.raises(tf.errors.InvalidArgumentError, match="xw must be"):
        library.textgen_lstm_forward(xw[..., :10], h0, c0, recurrent)
    with pytest.raises(tf.errors.InvalidArgumentError, match="with U > 0"):
        library.textgen_lstm_forward(xw[..., :0], h0[:, :0], c0[:, :0], recurrent[:0, :0])
    with pytest.raises(ValueError, match="must be rank 3"):  # a shape error when traced, not an abort
        tf.function(lambda x: library.textgen_lstm_forward(x, h0, c0, recurrent)).get_concrete_function(
            tf.TensorSpec([None], tf.float32))
    h_all, c_all, s_all = first
    d_outputs, dh, dc = window()[4:]
    weights_t = np.ascontiguousarray(recurrent.T)
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not match s_all's shape"):
        library.textgen_lstm_backward(s_all, c_all[1:], d_outputs, dh, dc, weights_t, width=4 * UNITS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_t must be"):
        library.textgen_lstm_backward(s_all, c_all, d_outputs, dh, dc, weights_t, width=4 * UNITS + 1)


def test_the_library_keeps_its_eigen_to_itself(native_library):
    """Its Eigen is built for this CPU: exported, the library's calls into it bound to TensorFlow's own copies."""
    if shutil.which("nm") is None or not os.path.exists("/proc/self/maps"):
        pytest.skip("needs nm (binutils) and /proc/self/maps")
    with open("/proc/self/maps", encoding="utf-8") as maps:  # (its path may hold spaces)
        (loaded,) = {line.rstrip("\n").split(maxsplit=5)[5].removesuffix(" (deleted)")
                     for line in maps if "/lstm_loops-" in line}
    symbols = subprocess.run(["nm", "-D", "--defined-only", "--demangle", loaded], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert not [line for line in symbols if any(name in line for name in ("Eigen", "tensorflow", "tsl::", "absl::"))], \
        symbols[:5]


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """native_loops._load as a first process on a new machine would run it: an empty cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(native_loops.SWITCH, raising=False)
    return native_loops._load


def fake_compiler(tmp_path, script: str) -> str:
    path = tmp_path / "fake-g++"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_switched_off_by_the_environment(fresh_load, monkeypatch, caplog):
    monkeypatch.setenv(native_loops.SWITCH, "0")
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    assert caplog.records == []


def test_no_compiler_is_a_note_and_the_xla_loops_serve(fresh_load, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    [record] = caplog.records
    assert "no C++ compiler" in record.getMessage() and "the XLA loops serve" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_a_failed_build_names_the_compilers_error_and_is_not_tried_again(fresh_load, monkeypatch, tmp_path,
                                                                         caplog):
    calls = tmp_path / "calls"
    script = f'echo "$1" >> {calls}\necho "In file included from errors.h:3" >&2\n' \
             'echo "lstm_loops.cc:1:2: error: boom" >&2\nexit 3\n'
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, script))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    message = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.WARNING
    assert "could not build" in message and "exit code 3: lstm_loops.cc:1:2: error: boom" in message
    [failed] = (tmp_path / "cache" / "textgen" / "native").iterdir()  # no partial library left, the failure kept
    assert failed.suffix == ".failed"
    builds = [line for line in calls.read_text().splitlines() if line != "--version"]
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None  # the next training: no build again
    assert [line for line in calls.read_text().splitlines() if line != "--version"] == builds
    message = caplog.records[-1].getMessage()
    assert "failed before (" in message and "error: boom" in message and f"Delete {failed} to try again" in message


def test_a_compiler_that_hangs_is_stopped_with_what_it_started(fresh_load, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native_loops, "BUILD_TIMEOUT_S", 1)
    pid_file = tmp_path / "child"
    script = f'[ "$1" = --version ] && exit 0\nsleep 60 &\necho $! > {pid_file}\nwait\n'
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, script))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    assert "took over 1 s" in caplog.records[-1].getMessage()
    child = int(pid_file.read_text())
    for _ in range(50):  # killed with its group (a zombie until init reaps it: /proc says so)
        try:
            with open(f"/proc/{child}/stat") as stat_file:
                if stat_file.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the compiler's child process outlived the build's timeout")


def test_whatever_else_stops_them_is_a_note(fresh_load, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native_loops, "SOURCE", tmp_path / "missing.cc")  # a package installed without it
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, "exit 0\n"))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    message = caplog.records[-1].getMessage()
    assert "cannot be had here (FileNotFoundError" in message and "the XLA loops serve" in message


def test_a_compiler_that_fails_without_a_word_is_named_alone(fresh_load, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, '[ "$1" = --version ] && exit 0\nexit 1\n'))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    assert "(fake-g++ exit code 1); the XLA loops serve" in caplog.records[-1].getMessage()


def test_a_library_tensorflow_refuses_is_a_note(fresh_load, monkeypatch, tmp_path, caplog):
    # A "compiler" that writes something that is not a shared library where -o says, and succeeds.
    script = 'while [ "$1" != "-o" ] && [ $# -gt 0 ]; do shift; done\n[ $# -gt 0 ] && echo junk > "$2"\nexit 0\n'
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, script))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert fresh_load() is None
    message = caplog.records[-1].getMessage()
    assert "could not load" in message and "Delete that file" in message


def test_an_unwritable_cache_is_a_note(monkeypatch, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where the folder would go
    monkeypatch.delenv(native_loops.SWITCH, raising=False)
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, "exit 0\n"))
    with caplog.at_level(logging.INFO, logger="textgen"):
        assert native_loops._load() is None
    assert "cannot write" in caplog.records[-1].getMessage()


@pytest.mark.slow
def test_built_once_then_reused(monkeypatch, tmp_path, native_library):
    """Two processes on a new machine: the first builds the library, the second loads that build. (In processes
    of their own: a second library with the same ops loaded into this one would clash with the first.)"""
    calls = tmp_path / "calls"
    real = native_loops.shutil.which("g++")
    environment = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"),
                       CXX=fake_compiler(tmp_path, f'echo "$1" >> {calls}\nexec {real} "$@"\n'))
    environment.pop(native_loops.SWITCH, None)
    load = [sys.executable, "-c", "from textgen import native_loops; print(native_loops.library() is not None)"]

    def builds():
        return len([line for line in calls.read_text().splitlines() if line != "--version"])

    for _ in range(2):
        done = subprocess.run(load, env=environment, capture_output=True, text=True, timeout=900)
        assert done.stdout.strip() == "True", done.stderr[-2000:]
        assert builds() == 1
    libraries = list((tmp_path / "cache" / "textgen" / "native").iterdir())
    assert len(libraries) == 1 and libraries[0].suffix == ".so"
    assert libraries[0].stat().st_mode & 0o555 == 0o555 & ~native_loops._umask()  # others may load it too
