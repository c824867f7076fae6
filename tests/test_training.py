import csv
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PERIOD, TINY_MODEL, TINY_TRAINING, files_snapshot, write_text
import textgen
from textgen import checkpoint, report, training
from textgen import session as session_module
from textgen.callbacks import Callback
from textgen.batching import StreamBatches, split_validation
from textgen.checkpoint import RunLock, RunState, load_model
from textgen.errors import RunBusy, TextgenError, counted
from textgen.corpus import CACHE_FILES
from textgen.model import reset_states
from textgen.session import Session
from textgen.training import Interrupted, train

QUIET = dict(log=lambda message: None)


def run(corpus, checkpoint_dir, epochs=1, model=None, **kwargs):
    options = dict(TINY_TRAINING, epochs=epochs, **kwargs.pop("train_options", {}))
    return train(corpus, checkpoint_dir, run="r", model_options=model or TINY_MODEL, train_options=options,
                 **kwargs, **QUIET)


def test_learning_drives_validation_loss_far_below_chance(trained_run):
    assert trained_run["best_val_loss"] < 0.2 * trained_run["chance"]
    assert len(trained_run["history"]) == 3
    meta = json.loads((trained_run["run_dir"] / "best.json").read_text())
    assert meta["epoch"] == 3 and meta["val_loss"] == pytest.approx(trained_run["best_val_loss"])
    assert "".join(map(chr, meta["vocab"])) == PERIOD
    assert meta["model"]["units"] == TINY_MODEL["units"] and meta["training"]["batch_size"] == 8


def test_checkpoint_reloads_at_batch_1_with_identical_logits(trained_run):
    model, meta = load_model(trained_run["run_dir"], batch_size=1)
    session = Session(meta.model, training_config(meta, batch_size=1))
    session.model.load_weights(str(checkpoint.verified_file(trained_run["run_dir"], meta, "weights")))
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1]], dtype="int32")
    reset_states(model)
    reset_states(session.model)
    assert np.abs(np.array(model(ids)) - np.array(session.model(ids))).max() < 1e-6


def test_a_finished_training_leaves_its_traced_graph_to_the_garbage_collector(tmp_path, periodic_corpus):
    """TensorFlow's global gradient registry kept the custom gradients of every traced training step (the LSTM
    layers', the all-reduces'), and with them the step's whole graph: ~4 MB more memory per train() in one process."""
    import gc
    import weakref

    from tensorflow.python.framework import func_graph, ops

    registry = ops._gradient_registry._registry
    before = set(registry)
    gc.disable()  # until the graphs are found: a collection meanwhile would leave the test nothing to check
    try:
        run(periodic_corpus, tmp_path)
        graphs = [weakref.ref(g) for g in gc.get_objects()
                  if isinstance(g, func_graph.FuncGraph) and g.name == "train_step"]
    finally:
        gc.enable()
    assert graphs
    assert set(registry) == before
    gc.collect()
    assert [ref() for ref in graphs if ref() is not None] == []


def test_releasing_a_training_steps_gradients_leaves_another_threads_graph_its_own(monkeypatch):
    """The release removed every custom gradient registered while a training step was traced, so a graph another
    thread traced meanwhile lost its own: tf.gradients there raised LookupError."""
    import threading

    import tensorflow as tf

    from textgen.config import ModelConfig, TrainConfig

    tracing, registered, traced = threading.Event(), threading.Event(), threading.Event()
    average = tf.nn.compute_average_loss

    def held(*args, **kwargs):  # called while the training step is traced: the other graph registers meanwhile
        tracing.set()
        assert registered.wait(120)
        return average(*args, **kwargs)

    monkeypatch.setattr(tf.nn, "compute_average_loss", held)

    @tf.custom_gradient
    def double(v):
        return 2 * v, lambda dy: 2 * dy

    @tf.function
    def other_step(v):  # someone else's model, traced in another thread
        out = double(v)
        registered.set()
        assert traced.wait(120)  # until the training step's trace has ended, and released its gradients
        return tf.gradients(out, v)[0]

    session = Session(ModelConfig(vocab_size=7, units=16, embedding_dim=8, layers=1, dropout=0.0),
                      TrainConfig(batch_size=4, seq_length=10))
    ids = np.zeros((4, 10), "int32")
    answer = []

    def other():
        assert tracing.wait(120)
        answer.append(float(other_step(tf.constant(1.0))))

    thread = threading.Thread(target=other)
    thread.start()
    try:
        session.train_step(ids, ids)
    finally:
        registered.set()
        traced.set()
        thread.join(120)
    assert answer == [2.0]


def training_config(meta, **changes):
    return dataclasses.replace(meta.training, **changes)


def test_resume_continues_exactly(tmp_path, periodic_corpus):
    model = dict(TINY_MODEL, dropout=0.2)  # dropout makes the RNG state part of what must resume
    step = dict(lr_schedule="step")  # its rate does not depend on --epochs, so the run can be extended
    straight = run(periodic_corpus, tmp_path / "a", epochs=2, model=model, train_options=step)
    run(periodic_corpus, tmp_path / "b", epochs=1, model=model, train_options=step)
    for name in CACHE_FILES:  # deleted to free the space (README): rebuilt from the text
        (tmp_path / "b" / "r" / name).unlink()
    resumed = run(periodic_corpus, tmp_path / "b", epochs=2, model=model, resume=True)
    assert resumed["epoch"] == 2 and all((tmp_path / "b" / "r" / name).is_file() for name in CACHE_FILES)
    assert abs(resumed["val_loss"] - straight["val_loss"]) < 1e-3
    a, _ = load_model(tmp_path / "a" / "r", kind="last")
    b, _ = load_model(tmp_path / "b" / "r", kind="last")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)


def test_resuming_a_finished_run_asks_for_more_epochs(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path, epochs=1)
    before = files_snapshot(tmp_path / "r")
    with pytest.raises(TextgenError, match=r"^cannot resume: the run has done its 1 epoch; pass a larger "
                                           r"--epochs \(the total, such as --epochs 2\) to train on$"):
        train(periodic_corpus, tmp_path, run="r", resume=True, **QUIET)
    assert files_snapshot(tmp_path / "r") == before
    lines = []
    changed = dict(epochs=2, learning_rate=0.02, clip_norm=1.0)  # a resume may change what is not the layout
    assert train(periodic_corpus, tmp_path, run="r", train_options=changed, resume=True, log=lines.append)["epoch"] == 2
    assert "resuming with other options for the rest of the run: --epochs 2 (was 1), --learning-rate 0.02 (was " \
           "0.01), --clip-norm 1 (was 5)" in lines
    lines.clear()
    train(periodic_corpus, tmp_path, run="r", train_options=dict(epochs=3, learning_rate=0.02, lr_decay=0.5),
          resume=True, log=lines.append)
    # The rate is as saved, and --lr-decay does not act under the cosine schedule, so neither is named.
    assert "resuming with other options for the rest of the run: --epochs 3 (was 2)" in lines



def test_resuming_an_unfinished_run_with_a_total_it_has_passed_says_to_leave_epochs_out(tmp_path, periodic_corpus):
    with pytest.raises(Interrupted):  # stopped in epoch 2 of 3
        run(periodic_corpus, tmp_path, epochs=3, callbacks=[interrupt_at_step(150)])
    with pytest.raises(TextgenError, match=r"^cannot resume with --epochs 1: the run has done 1 epoch of its 3; leave "
                                           r"--epochs out to finish them, or pass a larger total$"):
        run(periodic_corpus, tmp_path, epochs=1, resume=True)
    assert train(periodic_corpus, tmp_path, run="r", resume=True, **QUIET)["epoch"] == 3

def test_existing_run_is_never_silently_overwritten(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path)
    with pytest.raises(TextgenError, match="already has checkpoints.*--resume.*--overwrite"):
        run(periodic_corpus, tmp_path)
    assert files_snapshot(tmp_path) == before


def test_resume_refuses_other_vocabulary_or_shape(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    other = write_text(tmp_path / "other.txt", "xyz" * 5000)
    many = write_text(tmp_path / "many.txt", "".join(map(chr, range(0x4E00, 0x4E00 + 1000))) * 20)
    before = files_snapshot(tmp_path)
    with pytest.raises(TextgenError, match=r"vocabulary differs from the checkpoint's \(new characters 'xyz', "
                                           r"missing characters 'abcdefg'\)"):
        run(other, tmp_path, epochs=2, resume=True)
    with pytest.raises(TextgenError, match=r"\(new characters '一丁.{38}' and 960 more, missing"):
        run(many, tmp_path, epochs=2, resume=True)
    with pytest.raises(TextgenError, match=r"--units 64 \(checkpoint has 32\)"):
        run(periodic_corpus, tmp_path, epochs=2, model=dict(TINY_MODEL, units=64), resume=True)
    # It was recorded in the checkpoint, and did nothing: the run restores the random state it saved.
    with pytest.raises(TextgenError, match=r"^cannot resume with --seed 99: the run goes on with the random numbers "
                                           r"it saved \(seed 7\); leave --seed out"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True, train_options=dict(seed=99))
    assert files_snapshot(tmp_path) == before


def test_resume_on_a_corpus_with_fewer_characters_keeps_the_checkpoints_ids(tmp_path):
    """The corpus lost a character the checkpoint has: refused before ('missing characters'), and where the text
    looked unchanged (a byte-order mark an earlier textgen kept) it was encoded with its own, shorter vocabulary
    and saved beside the model's size, so that neither checkpoint could be read again."""
    corpus = write_text(tmp_path / "period.txt", "A" + PERIOD * 3000)  # 'A' sorts first: without it every id shifts
    first = run(corpus, tmp_path, epochs=2)
    write_text(corpus, PERIOD * 3000)
    resumed = run(corpus, tmp_path, epochs=3, resume=True)
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert "".join(map(chr, meta["vocab"])) == "A" + PERIOD and meta["model"]["vocab_size"] == 8
    # Read with the model's ids the text is as predictable as before; shifted by one id, it is not.
    # (0.008 nats after as before; 0.026 with the ids shifted, after an epoch of relearning)
    assert resumed["history"][-1]["val_loss"] < 1.5 * first["history"][-1]["val_loss"] < 0.2 * math.log(8)
    assert load_model(tmp_path / "r", batch_size=1)[1].vocab.chars == "A" + PERIOD


def test_a_run_trained_when_a_byte_order_mark_was_text_resumes_on_its_unchanged_file(tmp_path, monkeypatch):
    """textgen once kept a leading byte order mark as a character. Resumed on the same file, now read without it,
    the run saved the file's shorter vocabulary beside the model's size: neither checkpoint could be read again."""
    from textgen import corpus as corpus_module

    corpus = tmp_path / "bom.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + (PERIOD * 3000).encode())
    reads = corpus_module._decoded_chunks

    def keeping_the_mark(path, what):  # the earlier reader
        chunks = reads(path, what)
        yield "\ufeff" + next(chunks)
        yield from chunks

    monkeypatch.setattr(corpus_module, "_decoded_chunks", keeping_the_mark)
    run(corpus, tmp_path)
    monkeypatch.undo()
    modified = corpus.stat().st_mtime_ns + 10**9
    os.utime(corpus, ns=(modified, modified))  # touched: its corpus cache is built again, by today's reader
    run(corpus, tmp_path, epochs=2, resume=True)
    for kind in ("best", "last"):
        assert load_model(tmp_path / "r", kind=kind)[1].vocab.chars == PERIOD + "\ufeff"


def test_the_same_text_saved_with_a_byte_order_mark_is_the_run_s_own_corpus(tmp_path, periodic_corpus):
    """Notepad adds a byte order mark, which reading drops: resumed on the same text saved so, the run restarted its
    best checkpoint, for a text "changed since this run's checkpoint (21,000 characters, now 21,000)"."""
    run(periodic_corpus, tmp_path)
    text = periodic_corpus.read_bytes()
    lines = []

    def resumed_to(epochs):
        lines.clear()
        train(periodic_corpus, tmp_path, run="r", train_options=dict(epochs=epochs), resume=True, log=lines.append)
        assert any(line.startswith("resuming") for line in lines)
        return [line for line in lines if "changed" in line or "starts over" in line]

    periodic_corpus.write_bytes(b"\xef\xbb\xbf" + text)
    assert resumed_to(2) == []
    for kind in ("best", "last"):  # as an earlier textgen recorded a marked file: its bytes' digest alone
        meta_path = tmp_path / "r" / f"{kind}.json"
        meta = json.loads(meta_path.read_text())
        assert meta["corpus"].pop("text_blake2b") != meta["corpus"]["blake2b"]
        meta_path.write_text(json.dumps(meta))
    assert resumed_to(3) == []  # the same marked file
    periodic_corpus.write_bytes(text)
    assert resumed_to(4) == []  # the mark dropped again
    periodic_corpus.write_bytes(b"\xef\xbb\xbf" + text[:-7] + b"gfedcba")
    assert len(resumed_to(5)) == 1  # another text, marked or not, is one
    history = json.loads((tmp_path / "r" / "last.json").read_text())["history"]
    assert report.text_spans(history) == [(0, 3), (4, 4)]


def test_resume_on_its_own_corpus_edited_says_the_file_changed(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    write_text(periodic_corpus, PERIOD * 3000 + "Zé")
    with pytest.raises(TextgenError, match=r"\(new characters 'Zé'\); the corpus file has changed since the run was "
                                           r"trained: give it back the text it was trained on, or train a new run"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True)


def test_resume_on_the_same_text_in_the_other_unicode_form_says_so(tmp_path):
    import unicodedata

    words = "café déjà ça " * 400
    run(write_text(tmp_path / "nfd.txt", unicodedata.normalize("NFD", words)), tmp_path)
    # The marks are escaped: bare, each would join the letter before it (and show as a letter of the other list).
    expected = (r"\(new characters 'àçé', missing characters 'e\\u0300\\u0301\\u0327'\); the two differ only in "
                r"Unicode form: convert the corpus to NFD, e\.g\. with Python's unicodedata\.normalize, or train a new "
                r"run with --run NAME \(--init-from starts it from this run's weights\)$")
    with pytest.raises(TextgenError, match=expected):
        run(write_text(tmp_path / "nfc.txt", words), tmp_path, epochs=2, resume=True)


class AtStep(Callback):
    """Does something to the run right after its n-th training step (counted from this invocation)."""

    def __init__(self, n, action):
        self.n, self.action, self.steps = n, action, 0

    def on_step_end(self, run, loss):
        self.steps += 1
        if self.steps == self.n:
            self.action(run)


class StopOnEpochsLastStep(Callback):
    """Stops the run right after the last step of its first epoch, as --max-minutes does when the budget ends there."""

    def on_step_end(self, run, loss):
        if run.state.step_in_epoch == len(run.train_batches) and run.state.epoch == 0:
            run.stop("time budget", now=True)


def test_a_run_stopped_on_an_epochs_last_step_and_resumed_keeps_every_checkpoint_file_whole(tmp_path,
                                                                                             periodic_corpus):
    """The resumed run validated and saved again at the same step, under the same file names: the files were
    rewritten in place while best.json still held the checksums of the first save ("corrupted")."""
    run(periodic_corpus, tmp_path, epochs=2, callbacks=[StopOnEpochsLastStep()])
    stopped = json.loads((tmp_path / "r" / "last.json").read_text())
    assert stopped["step_in_epoch"] > 0 and stopped["epoch"] == 0
    with pytest.raises(Interrupted):
        run(periodic_corpus, tmp_path, epochs=2, resume=True,
            callbacks=[AtStep(2, lambda run: os.kill(os.getpid(), signal.SIGINT))])
    for kind in ("best", "last"):
        meta = json.loads((tmp_path / "r" / f"{kind}.json").read_text())
        assert {checkpoint.file_check(tmp_path / "r", entry) for entry in meta["files"].values()} == \
            {checkpoint.CHECKSUM_OK}, kind


def poison_weights(run):
    run.session.model.trainable_variables[0].assign(np.full(run.session.model.trainable_variables[0].shape, np.nan))


def test_resume_on_a_changed_text_with_the_same_characters_starts_the_best_checkpoint_over(tmp_path,
                                                                                           periodic_corpus):
    run(periodic_corpus, tmp_path, epochs=2)
    first_best = json.loads((tmp_path / "r" / "best.json").read_text())
    random_text = "".join(np.random.default_rng(0).choice(list(PERIOD), 21000))  # same characters, unpredictable
    other = write_text(tmp_path / "other.txt", random_text)
    lines = []
    resumed = train(other, tmp_path, run="r", train_options=dict(epochs=3), resume=True, log=lines.append)
    assert "the corpus is not the one of this run's checkpoint (21,000 characters as before, not all the same; it " \
           f"was {periodic_corpus.resolve()}): validation measures the new text, so the best checkpoint starts over " \
           "and best.json is replaced at the next validation" in lines
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert resumed["val_loss"] > 3 * first_best["best_val_loss"]  # the new text's validation is much harder...
    assert best["epoch"] == 3 and best["best_val_loss"] == pytest.approx(resumed["val_loss"])  # ...yet it is the best
    assert best["corpus"]["path"] == str(other.resolve())
    lines.clear()
    train(other, tmp_path, run="r", train_options=dict(epochs=4), resume=True, log=lines.append)
    assert not any("best checkpoint starts over" in line for line in lines)  # now the run's own corpus
    write_text(other, random_text[:-1000] + "abcdefg" * 1000)  # the same file, edited
    train(other, tmp_path, run="r", train_options=dict(epochs=5), resume=True, log=lines.append)
    assert any(line.startswith(f"the corpus {other.resolve()} has changed since this run's checkpoint (21,000 "
                               "characters, now 27,000): validation") for line in lines)
    # the history tells the three texts apart, for the curve (one line per text) and info
    history = json.loads((tmp_path / "r" / "last.json").read_text())["history"]
    assert report.text_spans(history) == [(0, 1), (2, 3), (4, 4)]
    with open(tmp_path / "r" / "history.csv", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    assert texts == [row["text"] for row in history] and len(set(texts)) == 3 and all(texts)
    assert "texts          changed at 2 resumes: epochs 1-2, 3-4, 5 (the curve draws each apart)" \
        in report.info_text(tmp_path / "r").splitlines()


def test_a_run_stopped_mid_epoch_and_resumed_on_a_changed_text_starts_that_epoch_again(tmp_path, periodic_corpus):
    with pytest.raises(Interrupted):
        run(periodic_corpus, tmp_path, callbacks=[interrupt_at_step(100)])
    shorter = write_text(tmp_path / "shorter.txt", "gfedcba" * 1000)
    steps = len(StreamBatches(split_validation(np.zeros(7000), 0.1)[0], 8, 20))
    assert steps < 100  # step 100 is past the end of an epoch of the new text
    lines = []
    resumed = train(shorter, tmp_path, run="r", train_options=dict(epochs=1), resume=True, log=lines.append)
    assert any(line.endswith("; epoch 1 starts again on it") for line in lines)
    [row] = resumed["history"]
    assert row["step"] == 100 + steps and row["chars_seen"] == (100 + steps) * 8 * 20
    assert row["train_loss"] == pytest.approx(json.loads((tmp_path / "r" / "last.json").read_text())["train_loss"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path / "r")
    with pytest.raises(TextgenError, match="step 4: the loss became NaN.*last good checkpoint.*lower --learning-rate"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True, callbacks=[AtStep(3, poison_weights)])
    assert files_snapshot(tmp_path / "r") == before


@pytest.mark.parametrize("rate, suggested", [(0.008, "0.002"), (1e308, "0.003")])  # 1e308 suggested 2.5e+307
def test_a_diverged_training_suggests_a_learning_rate_that_could_work(tmp_path, periodic_corpus, rate, suggested):
    with pytest.raises(TextgenError, match=rf"nothing was saved \(try a lower --learning-rate, e.g. {suggested}, or"):
        run(periodic_corpus, tmp_path, train_options=dict(learning_rate=rate), callbacks=[AtStep(1, poison_weights)])
    assert not (tmp_path / "r").exists()


def test_a_training_that_a_huge_weight_decay_blew_up_is_told_to_lower_it(tmp_path, periodic_corpus):
    """--weight-decay 1000 was told to lower the learning rate, which exploded again and was told to lower it again."""
    with pytest.raises(TextgenError, match=r"nothing was saved \(--weight-decay 1000 times the learning rate takes "
                                           r"more than each weight away at every step: give a lower --weight-decay "
                                           r"\(the default is 0\.2\)\)$"):
        run(periodic_corpus, tmp_path, train_options=dict(weight_decay=1000.0))


class BlowUpAtEpochEnd(Callback):
    """Turns the output weights around after an epoch's last step: that step's loss was fine, the weights not."""

    def on_step_end(self, run, loss):
        if run.state.step_in_epoch == len(run.train_batches):
            kernel = run.session.model.get_layer("logits").kernel
            kernel.assign(kernel * -1e4)  # the likeliest character becomes the least likely


def test_weights_that_blow_up_in_an_epochs_last_step_never_become_its_checkpoint(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path / "r")
    with pytest.raises(TextgenError, match=r"at the validation of epoch 2: the validation loss exploded to .* nats; "
                                           r"the last good checkpoint in .* is kept"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True, callbacks=[BlowUpAtEpochEnd()])
    assert files_snapshot(tmp_path / "r") == before
    with pytest.raises(TextgenError, match="step 4: the loss became NaN/Inf; nothing was saved"):
        run(periodic_corpus, tmp_path / "fresh", callbacks=[AtStep(3, poison_weights)])
    assert not checkpoint.has_checkpoint(tmp_path / "fresh" / "r")


def test_weights_that_become_nan_never_become_a_save_every_checkpoint(tmp_path, periodic_corpus):
    with pytest.raises(TextgenError, match=r"epoch 1, step 4: the weights became NaN/Inf; the last good checkpoint "
                                           r"in .* is kept"):
        run(periodic_corpus, tmp_path, train_options=dict(save_every=2), callbacks=[AtStep(4, poison_weights)])
    model, meta = load_model(tmp_path / "r", kind="last")
    assert meta.state.global_step == 2
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_a_report_that_cannot_be_drawn_warns_and_training_goes_on(tmp_path, periodic_corpus, monkeypatch):
    import logging

    from textgen import report

    def broken(*args, **kwargs):
        raise RuntimeError("no display")
    monkeypatch.setattr(report, "plot_history", broken)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("textgen").addHandler(handler)
    try:
        summary = run(periodic_corpus, tmp_path, epochs=2)
    finally:
        logging.getLogger("textgen").removeHandler(handler)
    assert summary["epoch"] == 2 and (tmp_path / "r" / "history.csv").read_text().count("\n") == 3
    warnings = [r.getMessage() for r in records if "could not write curve.png" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].endswith(f"(RuntimeError: no display); training goes on, and textgen "
                                                       f"plot --checkpoint-dir {tmp_path} --run r writes it again")
    monkeypatch.setattr(report, "plot_history", lambda *args, **kwargs: (_ for _ in ()).throw(
        PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(tmp_path / "r" / "curve.png"), None)))
    records.clear()
    logging.getLogger("textgen").addHandler(handler)
    try:
        run(periodic_corpus, tmp_path, epochs=3, resume=True)
    finally:
        logging.getLogger("textgen").removeHandler(handler)
    (warning,) = [r.getMessage() for r in records if "could not write curve.png" in r.getMessage()]
    assert f"({os.strerror(errno.EPERM)}); training goes on" in warning and "-> None" not in warning, warning


def test_resume_with_a_damaged_last_checkpoint_does_not_advise_throwing_the_best_one_away(tmp_path, periodic_corpus):
    """It said "delete the run directory or train again with --overwrite", while best.json was intact."""
    run(periodic_corpus, tmp_path, epochs=2)
    (tmp_path / "r" / "last.json").write_text("{")
    kept = files_snapshot(tmp_path)
    with pytest.raises(TextgenError, match=r"^cannot resume: checkpoint metadata .*last.json is damaged \(.*\); the "
                                           r"run's best checkpoint \(epoch [12]\) is intact: sample from it, or "
                                           r"train a new run with --run NAME$"):
        run(periodic_corpus, tmp_path, epochs=3, resume=True)
    with pytest.raises(TextgenError, match=r"is intact: sample from it"):  # without the corpus: the run's own
        train(None, tmp_path, run="r", train_options=dict(epochs=3), resume=True, **QUIET)
    assert files_snapshot(tmp_path) == kept


@pytest.mark.parametrize("stand_in", ["without isatty", "none"])
def test_training_runs_where_stderr_is_a_stand_in_without_isatty_or_none(tmp_path, periodic_corpus, monkeypatch,
                                                                          stand_in):
    """An embedding host's stderr with only write and flush, or pythonw's None: AttributeError: 'W' object has no
    attribute 'isatty', from the progress callback, before the first step."""
    import sys

    class WriteOnly:
        def __init__(self):
            self.written = []

        def write(self, text):
            self.written.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", WriteOnly() if stand_in == "without isatty" else None)
    summary = train(periodic_corpus, tmp_path, run="r", model_options=TINY_MODEL,
                    train_options=dict(TINY_TRAINING, epochs=1))
    assert summary["epoch"] == 1 and (tmp_path / "r" / "best.json").is_file()


def test_disk_full_during_save_keeps_the_previous_checkpoint_and_says_what_was_lost(tmp_path, periodic_corpus,
                                                                                     monkeypatch):
    """It said "the previous checkpoint is kept": not which one, so not what the failure had cost."""
    import textgen

    run(periodic_corpus, tmp_path)
    last = (tmp_path / "r" / "last.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.np, "savez", full)
    told = (f"could not save the checkpoint in {tmp_path / 'r'}: the disk is full; the run's last checkpoint (at the "
            "start of epoch 2) is kept and the training since it is lost (free some space or fix the directory, then "
            "resume with: ")
    with pytest.raises(TextgenError) as failed:
        run(periodic_corpus, tmp_path, epochs=2, resume=True)
    # The advice names the --epochs that this resume gave and the run's last checkpoint does not hold: without it,
    # resuming was refused ("the run has done its 1 epoch").
    advised = f"textgen train {periodic_corpus} --checkpoint-dir {tmp_path} --run r --resume --epochs 2"
    assert str(failed.value) == f"{told}{advised})"
    assert (tmp_path / "r" / "last.json").read_bytes() == last
    model, meta = load_model(tmp_path / "r", kind="last")
    assert meta.state.epoch == 1
    with pytest.raises(TextgenError) as failed:  # the Python API's advice is a call
        textgen.train(run="r", checkpoint_dir=tmp_path, resume=True, epochs=2)
    assert str(failed.value) == (f"{told}textgen.train({str(periodic_corpus)!r}, run='r', checkpoint_dir="
                                 f"{str(tmp_path)!r}, resume=True, epochs=2))")
    monkeypatch.undo()  # space freed: the advice, as given, resumes the run
    from click.testing import CliRunner

    from textgen.cli import cli
    resumed = CliRunner().invoke(cli, advised.split()[1:])
    assert resumed.exit_code == 0, resumed.output
    assert load_model(tmp_path / "r", kind="last")[1].state.epoch == 2
    # Every worker of a cluster prints the advice and must follow it, not only the chief that writes the run.
    from types import SimpleNamespace

    last = load_model(tmp_path / "r", kind="last")[1]
    worker = SimpleNamespace(run_dir=tmp_path / "r", has_saved=True, writes=False,
                             config=dataclasses.replace(last.training, epochs=5, learning_rate=0.001))
    assert training.Run._changed_since_last_save(worker) == dict(epochs=5, learning_rate=0.001)


def test_a_model_past_the_machines_memory_is_refused_before_it_is_built(tmp_path, periodic_corpus, monkeypatch):
    """It was refused only once allocating it failed, after a minute and more of swapping (--units 100000000)."""
    def built(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(training, "_physical_memory", lambda: 16 * 5000)  # less than this tiny model needs
    monkeypatch.setattr(training, "Session", built)
    with pytest.raises(TextgenError, match=r"^the model \([\d,]+ parameters\) does not fit in this machine's memory; "
                                           r"use a smaller --units, --layers or --embedding-dim$"):
        run(periodic_corpus, tmp_path)
    assert not (tmp_path / "r").exists()


def test_a_save_the_disk_cannot_hold_is_refused_before_the_weights_are_written(tmp_path, periodic_corpus,
                                                                                monkeypatch):
    """On a full disk h5py reported the failed write, then crashed the process (a segfault after pages of
    tracebacks) while collecting what it had left half-closed (the weights are now built in memory, then written as
    bytes: test_faults; the check spares building them)."""
    from types import SimpleNamespace

    run(periodic_corpus, tmp_path)
    kept = files_snapshot(tmp_path)
    saved_weights = []
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: 50_000)  # less than a checkpoint of this model
    monkeypatch.setattr(checkpoint, "_write_weights", lambda *args: saved_weights.append(args))
    with pytest.raises(TextgenError, match="disk is full; the run.s last checkpoint .* is kept"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True)
    assert saved_weights == [] and files_snapshot(tmp_path) == kept
    monkeypatch.undo()
    # A file system that gives no statistics (FUSE without them: no blocks at all) is not read as a full one.
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda directory: SimpleNamespace(f_blocks=0, f_bfree=0, f_bavail=0,
                                                                                    f_frsize=4096))
    assert checkpoint._free_bytes(tmp_path) is None


@pytest.mark.parametrize("failing", ["state file", "best.json", "best.json after its rename"])
def test_disk_full_at_a_new_runs_first_save_says_nothing_was_saved(tmp_path, periodic_corpus, monkeypatch, failing):
    """It said "the previous checkpoint is kept ... resume with --resume": a new run has none (--resume then found
    nothing), and after --overwrite resuming continued the earlier run, of another shape. A failure on best.json left
    last.json written: the new run's beside the earlier run's best.json. A failure after best.json's rename (the
    directory's fsync) put last.json back but left best.json naming the new run's files."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run(periodic_corpus, tmp_path / "old")
    earlier = files_snapshot(tmp_path / "old")
    together = checkpoint.atomic_write_together
    if failing == "state file":
        monkeypatch.setattr(checkpoint.np, "savez", full)
    elif failing == "best.json":  # another program fills the disk then: every write after it fails too
        import textgen.files
        write_synced, filled = textgen.files._write_synced, []

        def filling(tmp, path, fill):
            if filled or path.name == "best.json":
                filled.append(path)
                full()
            return write_synced(tmp, path, fill)
        monkeypatch.setattr(textgen.files, "_write_synced", filling)
    else:
        monkeypatch.setattr(checkpoint, "atomic_write_together", lambda writes: together(writes) or full())
    with pytest.raises(TextgenError, match=r"^could not save the first checkpoint in .*/new/r: the disk is full; "
                                           r"nothing of this run was saved \(free some space or fix the directory, "
                                           r"then run the same command again\)$"):
        run(periodic_corpus, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    if failing == "state file":  # the Python API's advice is a call (it said "run the same command again")
        import textgen
        with pytest.raises(TextgenError, match=r"nothing of this run was saved \(free some space or fix the "
                                               r"directory, then call textgen.train the same way again\)$"):
            textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path / "api", **TINY_MODEL,
                          **dict(TINY_TRAINING, epochs=1))
    with pytest.raises(TextgenError, match="nothing of this run was saved, and the earlier run's checkpoints are "
                                           "kept"):
        run(periodic_corpus, tmp_path / "old", model=dict(TINY_MODEL, units=16), overwrite=True)
    assert files_snapshot(tmp_path / "old") == earlier


@pytest.mark.parametrize("renamed", [True, False])
def test_a_rollback_that_fails_half_way_leaves_both_metadata_files_naming_one_checkpoint(tmp_path, monkeypatch,
                                                                                        renamed):
    """best.json failed after its rename; putting last.json back worked and putting best.json back did not: last.json
    named the earlier checkpoint and best.json the new one. Failing before its rename (a full disk), best.json was
    'put back' first, which failed too, and last.json was left naming the new checkpoint."""
    import dataclasses
    import json
    from pathlib import Path
    from types import SimpleNamespace

    @dataclasses.dataclass
    class Meta:
        state: object
        kind: str = ""
        textgen_version: str = ""
        saved_at: str = ""
        files: dict = None

        def to_json(self):
            return dict(kind=self.kind, files=self.files, run=self.state.run_id)

    for kind in ("last", "best"):
        (tmp_path / f"{kind}.json").write_text(json.dumps(dict(kind=kind, run="old", files={
            "weights": {"name": "ckpt-old-1.weights.h5"}})))
    (tmp_path / "ckpt-old-1.weights.h5").write_text("w")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    together, write = checkpoint.atomic_write_together, checkpoint.atomic_write
    monkeypatch.setattr(checkpoint, "atomic_write_together", lambda writes: together(writes) or full() if renamed
                        else together([(path, full if path.name == "best.json" else fill) for path, fill in writes]))
    monkeypatch.setattr(checkpoint, "atomic_write", lambda path, fill: full() if path.name == "best.json"
                        else write(path, fill))  # and putting it back fails too
    monkeypatch.setattr(checkpoint, "_write_weights", lambda model, path: Path(path).write_text("new"))
    model = SimpleNamespace(weights=[])
    with pytest.raises(checkpoint.SaveFailed):
        checkpoint.save(tmp_path, ("last", "best"), Meta(state=SimpleNamespace(run_id="new", global_step=5)), model,
                        {})
    named = {kind: json.loads((tmp_path / f"{kind}.json").read_text())["run"] for kind in ("last", "best")}
    assert named["last"] == named["best"], named


def interrupt_at_step(n):
    """A callback that sends SIGINT to this process right after the n-th training step."""
    return AtStep(n, lambda run: os.kill(os.getpid(), signal.SIGINT))


class InterruptAtEpochEnd(Callback):
    def on_epoch_end(self, run, improved):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_during_an_epochs_end_stops_at_that_epochs_checkpoint(tmp_path, periodic_corpus):
    """Ctrl-C during validation said "finishing this step, then stopping", then ran the next epoch's first step and
    saved a checkpoint in the middle of that epoch."""
    with pytest.raises(Interrupted, match=r"^interrupted: saved a resumable checkpoint \(.*\) in .*; resume with: "):
        run(periodic_corpus, tmp_path, epochs=3, callbacks=[InterruptAtEpochEnd()])
    last = json.loads((tmp_path / "r" / "last.json").read_text())
    assert (last["epoch"], last["step_in_epoch"]) == (1, 0)

    class OutOfTimeAtEpochEnd(Callback):  # the same for the time budget, reached during validation
        def on_epoch_end(self, run, improved):
            run.elapsed = 120.0

    summary = run(periodic_corpus, tmp_path / "timed", epochs=3, train_options=dict(max_minutes=1),
                  callbacks=[OutOfTimeAtEpochEnd()])
    last = json.loads((tmp_path / "timed" / "r" / "last.json").read_text())
    assert (last["epoch"], last["step_in_epoch"], len(summary["history"])) == (1, 0, 1)


def test_cosine_mixed_precision_run_resumes_exactly_mid_epoch(tmp_path, periodic_corpus):
    model = dict(TINY_MODEL, dropout=0.2)
    options = dict(lr_schedule="cosine", mixed_precision="on")
    straight = run(periodic_corpus, tmp_path / "a", epochs=2, model=model, train_options=options)
    with pytest.raises(Interrupted):  # epoch 2 of 2, step 32 of 118
        run(periodic_corpus, tmp_path / "b", epochs=2, model=model, train_options=options,
            callbacks=[interrupt_at_step(150)])
    resumed = run(periodic_corpus, tmp_path / "b", epochs=2, model=model, resume=True)
    assert abs(resumed["val_loss"] - straight["val_loss"]) < 1e-3
    assert [row["learning_rate"] for row in resumed["history"]] == \
        pytest.approx([row["learning_rate"] for row in straight["history"]])
    a, _ = load_model(tmp_path / "a" / "r", kind="last")
    b, _ = load_model(tmp_path / "b" / "r", kind="last")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)


def test_a_run_stopped_mid_epoch_after_validating_resumes_exactly(tmp_path, periodic_corpus):
    # A stop "now" (the time budget) validates mid-epoch; validation moves the dropout RNG, which the
    # checkpoint must hold as training left it, or the resumed epoch draws other masks.
    model = dict(TINY_MODEL, dropout=0.2)
    straight = run(periodic_corpus, tmp_path / "a", epochs=2, model=model)
    run(periodic_corpus, tmp_path / "b", epochs=2, model=model,
        callbacks=[AtStep(150, lambda run: run.stop("budget", now=True))])
    from textgen.report import info_text

    steps = checkpoint.read_meta(tmp_path / "b" / "r", "last").state.step_in_epoch
    assert steps == 150 - straight["history"][0]["step"]  # into epoch 2
    assert f"last           epoch 2 after {steps} steps: validation" in info_text(tmp_path / "b" / "r")
    resumed = run(periodic_corpus, tmp_path / "b", epochs=2, model=model, resume=True)
    assert [row["train_loss"] for row in resumed["history"]] == \
        pytest.approx([row["train_loss"] for row in straight["history"]], abs=1e-6, rel=0)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6, rel=0)


def test_a_signal_during_validation_stops_it_and_a_resume_validates_as_if_uninterrupted(tmp_path, periodic_corpus,
                                                                                        monkeypatch):
    """A large text's validation (minutes) ran on to its end after SIGTERM, and a second signal lost the epoch."""
    import textgen.progress
    import textgen.training as training_module

    model = dict(TINY_MODEL, dropout=0.2)
    straight = run(periodic_corpus, tmp_path / "a", epochs=2, model=model)
    whole = training_module.stream_loss

    sent = [signal.SIGTERM]  # the signal each validation gets once, during its first window

    def signalled(loss_sum, batches, progress=None, stop=None):
        first = [True]

        def window(x, y):
            if first.pop() if first else False:
                os.kill(os.getpid(), sent[0])
            return loss_sum(x, y)
        return whole(window, batches, progress, stop)

    monkeypatch.setattr(training_module, "stream_loss", signalled)
    with pytest.raises(Interrupted, match=r"^interrupted: saved a resumable checkpoint \(in epoch 1, after step "
                                          rf"{straight['history'][0]['step']}\)") as stopped:
        run(periodic_corpus, tmp_path / "b", epochs=2, model=model)
    # The last validation of a run that ends after it (its time budget spent: it could not be resumed) goes on
    ended = run(periodic_corpus, tmp_path / "budget", epochs=2, model=model,
                callbacks=[AtStep(30, lambda run: run.stop("time budget", now=True))])
    assert ended["stopped"] == "time budget" and ended["val_loss"] is not None
    # Ctrl-C in an --overwrite run's first minute keeps the earlier run, in its validation too
    earlier = files_snapshot(tmp_path / "budget")
    sent[0] = signal.SIGINT
    with pytest.raises(Interrupted, match="so the earlier run in .* is kept as it was"):
        run(periodic_corpus, tmp_path / "budget", epochs=1, model=model, overwrite=True)
    assert files_snapshot(tmp_path / "budget") == earlier
    monkeypatch.setattr(training_module, "stream_loss", whole)
    assert stopped.value.exit_code == 143
    last = checkpoint.read_meta(tmp_path / "b" / "r", "last").state
    assert (last.epoch, last.val_loss, last.history) == (0, None, [])
    resumed = run(periodic_corpus, tmp_path / "b", epochs=2, model=model, resume=True)
    assert [row["train_loss"] for row in resumed["history"]] == \
        pytest.approx([row["train_loss"] for row in straight["history"]], abs=1e-6, rel=0)
    assert [row["val_loss"] for row in resumed["history"]] == \
        pytest.approx([row["val_loss"] for row in straight["history"]], abs=1e-6, rel=0)
    # A long validation says so, with the time it has left (here every one is "long")
    monkeypatch.setattr(textgen.progress, "SLOW_S", 0.0)
    said = []
    train(periodic_corpus, tmp_path / "c", run="r", model_options=TINY_MODEL,
          train_options=dict(TINY_TRAINING, epochs=1), log=said.append)
    [line] = [line for line in said if line.startswith("validating")]
    assert re.fullmatch(r"validating on [\d,]+ characters \(Ctrl-C or SIGTERM stops it and saves the steps "
                        r"trained\): ~\d+ s left", line), line


@pytest.fixture
def bfloat16_cpu(monkeypatch):
    """A CPU with (or without) native bfloat16 whose timing gives a chosen speedup; what it timed is counted."""
    import textgen.cpu
    import textgen.fast_lstm

    def make(native: bool, speedup: float = 1.6):
        timings = []
        monkeypatch.setattr(textgen.cpu, "has_bfloat16_matmul", lambda: native)
        monkeypatch.setattr(textgen.fast_lstm, "gpu_visible", lambda: False)
        monkeypatch.setattr(session_module, "BFLOAT16_MIN_UNITS", TINY_MODEL["units"])  # the tiny model counts as wide
        monkeypatch.setattr(session_module, "_probe_bfloat16", lambda: timings.append(1) or speedup)
        return timings

    return make


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_follows_the_cpu(bfloat16_cpu, monkeypatch, native):
    import textgen.fast_lstm
    from textgen.config import ModelConfig, TrainConfig

    timings = bfloat16_cpu(native)  # as a Zen 4 multiplies it where native
    expected = {"auto": native, "on": True, "off": False}
    for setting, mixed in expected.items():
        config = TrainConfig(mixed_precision=setting)
        assert session_module.uses_mixed_precision(config, TINY_MODEL["units"]) is mixed
        session = Session(ModelConfig(vocab_size=5, **TINY_MODEL), config)
        assert {layer.matmul_dtype for layer in session.lstms} == {"bfloat16" if mixed else "float32"}
        assert session.precision == ("bfloat16" if mixed else "float32")  # what the history records
        # Narrower layers train no faster in bfloat16: auto keeps them in float32, on is on.
        narrow = dict(TINY_MODEL, units=TINY_MODEL["units"] - 1)
        assert session_module.uses_mixed_precision(config, narrow["units"]) is (setting == "on")
        session = Session(ModelConfig(vocab_size=5, **narrow), config)
        assert {layer.matmul_dtype for layer in session.lstms} == {"bfloat16" if setting == "on" else "float32"}
        assert session.precision == ("bfloat16" if setting == "on" else "float32")
    # Only auto for wide layers on a CPU with the instructions asks for the timing (on and off never do).
    assert len(timings) == (2 if native else 0)
    units = TINY_MODEL["units"]
    precision = {"on": "bfloat16", "off": "float32", "auto": "bfloat16" if native else "float32"}
    assert session_module.mixed_precision_note("off", units, "float32") is None
    assert ("no native bfloat16" in session_module.mixed_precision_note("on", units, "bfloat16")) is not native
    assert session_module.mixed_precision_note("auto", units, precision["auto"]) == (
        "mixed precision (auto): LSTM training matmuls in bfloat16 (weights, state and validation in float32); this "
        "CPU multiplies bfloat16 at 1.60x float32's speed" if native else None)
    # An explicit "on" for narrow layers still runs in bfloat16 where the CPU has it (it said "no native bfloat16").
    narrow_on = session_module.mixed_precision_note("on", units - 1, "bfloat16")
    assert narrow_on == ("mixed precision: LSTM training matmuls in bfloat16 (weights, state and validation in "
                         "float32); this CPU multiplies bfloat16 at 1.60x float32's speed; layers of "
                         f"{units - 1} units train no faster in bfloat16 than in float32"
                         if native else "note: this CPU has no native bfloat16 matmul (AVX512_BF16 or AMX), so "
                         "--mixed-precision on is likely slower here; use --mixed-precision off")
    narrow_note = session_module.mixed_precision_note("auto", units - 1, "float32")
    assert narrow_note == (f"mixed precision (auto): float32, since layers of {units - 1} units train no faster in "
                           f"bfloat16 (auto uses it from {units} units; --mixed-precision on forces it)"
                           if native else None)
    monkeypatch.setattr(textgen.fast_lstm, "gpu_visible", lambda: True)  # the cuDNN layer trains in float32
    assert session_module.training_precision(TrainConfig(mixed_precision="on"), units) == "float32"
    timed = len(timings)
    assert session_module.training_precision(TrainConfig(mixed_precision="auto"), units) == "float32"
    assert len(timings) == timed  # nothing timed for a GPU


@pytest.mark.parametrize("speedup, mixed", [(0.6, False), (1.14, False), (1.15, True)])
def test_mixed_precision_auto_wants_bfloat16_to_multiply_faster(bfloat16_cpu, speedup, mixed):
    """AVX512_BF16 alone does not make bfloat16 faster: an Intel Xeon without AMX multiplies it at 0.55-0.86x float32's
    speed. auto times it and keeps float32 below 1.15x; on still forces it, with a warning."""
    from textgen.config import TrainConfig

    units = TINY_MODEL["units"]
    bfloat16_cpu(True, speedup)
    assert session_module.uses_mixed_precision(TrainConfig(mixed_precision="auto"), units) is mixed
    assert session_module.uses_mixed_precision(TrainConfig(mixed_precision="on"), units) is True
    auto = session_module.mixed_precision_note("auto", units, "bfloat16" if mixed else "float32")
    on = session_module.mixed_precision_note("on", units, "bfloat16")
    rate = f"this CPU multiplies bfloat16 at {speedup:.2f}x float32's speed"
    if mixed:
        assert auto.endswith(f"; {rate}") and on.endswith(f"; {rate}")
    else:
        assert auto == (f"mixed precision (auto): float32, since {rate.replace(' at ', ' at only ')} (auto wants "
                        "1.15x; --mixed-precision on forces bfloat16)")
        assert on.endswith(f"; {rate}, so it is likely no faster here: use --mixed-precision auto or off")


def test_the_bfloat16_timing_changes_no_weights():
    """auto times bfloat16 after a run seeds its generators: the same seed must give the same weights whether or
    not it timed (TensorFlow's own generator included, which a layer could use)."""
    import keras
    import tensorflow as tf

    from textgen.config import ModelConfig
    from textgen.model import build_model

    def seeded_weights(timing: bool) -> list:
        keras.utils.set_random_seed(7)
        if timing:
            session_module._probe_bfloat16.__wrapped__()  # a fresh timing, not the process's cached one
        weights = [w.numpy() for w in build_model(ModelConfig(vocab_size=5, **TINY_MODEL), 2).weights]
        return weights + [tf.random.uniform((4,)).numpy()]

    for without, with_timing in zip(seeded_weights(False), seeded_weights(True)):
        np.testing.assert_array_equal(without, with_timing)


def test_a_second_signal_aborts_at_once_and_says_what_the_run_keeps(tmp_path, periodic_corpus):
    """A second Ctrl-C (not waiting for the step to finish) printed click's bare "aborted"."""
    def twice(run):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as aborted:
        run(periodic_corpus, tmp_path, callbacks=[AtStep(3, twice)])
    assert str(aborted.value) == "aborted by a second SIGINT before the run's first checkpoint: nothing was saved"
    assert aborted.value.exit_code == 130 and not (tmp_path / "r").exists()
    run(periodic_corpus, tmp_path)

    def ctrl_c_then_sigterm(run):  # the second names the signal and the exit code (it said SIGINT, 130)
        (run.run_dir / "ckpt-cut-000000999.weights.h5").write_bytes(b"a save the abort cut short")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as aborted:
        run(periodic_corpus, tmp_path, epochs=2, resume=True, callbacks=[AtStep(3, ctrl_c_then_sigterm)])
    assert aborted.value.exit_code == 143
    assert str(aborted.value).startswith(f"aborted by a second SIGTERM: the training since the run's last checkpoint "
                                         f"(at the start of epoch 2) in {tmp_path / 'r'} is lost; resume with: "
                                         "textgen train ")
    assert aborted.value.in_python().args[0].endswith(f"resume with: textgen.train({str(periodic_corpus)!r}, run='r', "
                                                      f"checkpoint_dir={str(tmp_path)!r}, resume=True, epochs=2)")
    assert json.loads((tmp_path / "r" / "last.json").read_text())["epoch"] == 1
    assert not (tmp_path / "r" / "ckpt-cut-000000999.weights.h5").exists()  # (it stayed until the next resume)


def test_signal_saves_a_resumable_checkpoint_mid_epoch(tmp_path, periodic_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="textgen"), \
            pytest.raises(Interrupted, match="resume with: textgen train") as stopped:
        run(periodic_corpus, tmp_path, callbacks=[interrupt_at_step(5)])
    assert stopped.value.exit_code == 130
    # the record is the message alone (a leading line break left a notebook's "WARNING" on a line of its own)
    assert caplog.records[0].getMessage() == ("signal SIGINT: finishing this step, then stopping (press Ctrl-C again "
                                              "to abort)")
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 5)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textgen"):  # sample, eval and export used it without a word
        load_model(tmp_path / "r")
    assert [record.getMessage() for record in caplog.records] == [
        "note: run 'r' has no best checkpoint yet (no epoch of it has ended in a validation); using its last one, "
        "saved in epoch 1, after step 5"]
    resumed = run(periodic_corpus, tmp_path, resume=True)
    assert resumed["epoch"] == 1 and resumed["history"][-1]["step"] == 118
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textgen"), pytest.raises(Interrupted):  # nothing is pressed
        run(periodic_corpus, tmp_path, epochs=2, resume=True,
            callbacks=[AtStep(3, lambda run: os.kill(os.getpid(), signal.SIGTERM))])
    assert caplog.records[0].getMessage() == ("signal SIGTERM: finishing this step, then stopping (send it again to "
                                              "abort)")
    (tmp_path / "r" / "best.json").unlink()  # a validated run's best checkpoint gone: not "no epoch has ended"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textgen"):
        load_model(tmp_path / "r")
    assert [record.getMessage() for record in caplog.records] == [
        "note: run 'r' has no best checkpoint (its best.json is missing, though it was validated in epoch 1); "
        "using its last one, saved in epoch 2, after step 3"]


def test_the_printed_resume_command_works_pasted_into_a_shell_with_spaces_in_the_paths_in_any_directory(
        tmp_path, monkeypatch):
    """It was printed unquoted: 'textgen train /home/学生/LSTM 笔记.txt ...' read as two corpus arguments; and with
    the corpus and the directory as given, relative, a cron job run from another directory found neither."""
    import shlex

    from click.testing import CliRunner

    from textgen.cli import cli

    (tmp_path / "my notes").mkdir()
    write_text(tmp_path / "my notes" / "LSTM 笔记.txt", PERIOD * 3000)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted) as stopped:
        run(Path("my notes/LSTM 笔记.txt"), Path("check points"), callbacks=[interrupt_at_step(5)])
    command = str(stopped.value).split("resume with: ", 1)[1]
    words = shlex.split(command)
    assert words == ["textgen", "train", str(tmp_path / "my notes" / "LSTM 笔记.txt"), "--checkpoint-dir",
                     str(tmp_path / "check points"), "--run", "r", "--resume"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = CliRunner().invoke(cli, words[1:] + ["--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "check points" / "r" / "last.json").read_text())["epoch"] == 1


def test_a_file_system_without_locks_is_named(tmp_path, periodic_corpus, monkeypatch):
    """On a cluster's file system mounted without locks (Lustre's noflock), the lock's ENOSYS was reported as
    "cannot write to the checkpoint directory (Function not implemented)"."""
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    for _ in range(2):  # a new run's folder, then one that was there
        with pytest.raises(TextgenError, match=r"^cannot lock .*/r/\.lock \(Function not implemented\): its file "
                                               r"system does not lock files, .*use a --checkpoint-dir on a local disk"):
            run(periodic_corpus, tmp_path)
        assert list(tmp_path.glob("r/*")) == []  # (nothing left behind: a .lock made the folder an unfinished run)
        (tmp_path / "r").mkdir(exist_ok=True)
    write_text(tmp_path / "r" / ".lock", "123")  # (a training's on a node whose mount has locks)
    assert checkpoint.training_pid(tmp_path / "r") is None  # (`textgen runs` failed: "cannot write the output")


def test_second_training_in_the_same_run_is_refused_while_locked(tmp_path, periodic_corpus):
    import subprocess
    import sys

    holding = ("import sys, time; from pathlib import Path; from textgen.checkpoint import RunLock; "
               "lock = RunLock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", holding, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunBusy, match=rf"^another training \(pid {holder.pid}\) is using .*/r; wait for it to "
                                          "finish or choose another --run$") as busy:
            run(periodic_corpus, tmp_path)
        from click.testing import CliRunner

        from textgen.cli import cli

        refused = CliRunner().invoke(cli, ["train", str(periodic_corpus), "--checkpoint-dir", str(tmp_path), "--run",
                                           "r", "--auto-resume"])
        # (75, EX_TEMPFAIL: a batch job requeued while its old copy still saves retries later; 1 is a failure)
        assert (refused.exit_code, refused.stderr) == (75, f"error: {busy.value}\n")
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path / "r"):  # a thread of this program (it named this process's pid as another training's)
        with pytest.raises(TextgenError, match=r"^another training in this program \(another thread\) is using"):
            run(periodic_corpus, tmp_path)
        # before its first save: it said "nothing to resume: no checkpoint (train without --resume to start)"
        with pytest.raises(TextgenError, match=r"^nothing to resume yet: a training \(pid \d+\) has run 'r' and "
                                               r"saves its first checkpoint at the end of its first epoch"):
            run(periodic_corpus, tmp_path, resume=True)
    run(periodic_corpus, tmp_path)  # the lock is released: training works
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_training_that_loses_the_race_for_a_new_run_leaves_the_winners_directory_alone(tmp_path, periodic_corpus,
                                                                                           monkeypatch):
    run_dir = tmp_path / "new" / "r"
    winner = RunLock(run_dir)
    take = RunLock.__enter__

    def started_at_the_same_instant(lock):  # both found the run absent; the other one takes the lock first
        if winner.handle is None:
            take(winner)
            (run_dir / "winners-file").write_text("training")
        return take(lock)

    monkeypatch.setattr(RunLock, "__enter__", started_at_the_same_instant)
    with pytest.raises(TextgenError, match=r"another training in this program \(another thread\) is using"):
        run(periodic_corpus, tmp_path / "new")
    assert (run_dir / "winners-file").read_text() == "training" and (run_dir / ".lock").exists()
    winner.__exit__()


def test_a_lock_whose_directory_was_removed_leaves_the_next_holders_lock_alone(tmp_path):
    import shutil

    run_dir = tmp_path / "r"
    first = RunLock(run_dir).__enter__()
    shutil.rmtree(run_dir)  # as a failed first training cleans up, still holding its lock
    with RunLock(run_dir):  # the next training takes the lock in the directory made again
        first.__exit__()
        assert (run_dir / ".lock").read_text() == str(os.getpid())  # its lock file is still there
        with pytest.raises(TextgenError, match="another training"):
            RunLock(run_dir).__enter__()  # so a third one is still refused


def test_a_read_only_run_directory_with_a_stale_lock_file_is_refused_before_training(tmp_path, periodic_corpus,
                                                                                     monkeypatch):
    from pathlib import Path

    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path / "r")
    (tmp_path / "r" / ".lock").write_text("12345")  # left by a killed run; the file itself stays writable
    write_bytes = Path.write_bytes

    # Root ignores permissions, so the folder's refusal is simulated. Permission denied: it said "choose a writable
    # --checkpoint-dir", which it was (a copy of another user's run keeps its modes); a read-only mount: no chmod helps.
    refusals = [(PermissionError(13, "Permission denied"),
                 r"^cannot write in the run's folder .*/r \(Permission denied\): a copy of another user's run keeps "
                 r"its modes; make it yours with chmod -R u\+w .*/r, or choose another --run$"),
                (OSError(errno.EROFS, os.strerror(errno.EROFS)),
                 r"^cannot write in .*/r: its file system is read-only; copy the run to a writable place and give "
                 r"that --checkpoint-dir, or choose another --checkpoint-dir$")]
    for error, message in refusals:
        def refused(path, data, error=error):
            if path.parent == tmp_path / "r":
                raise error
            return write_bytes(path, data)

        monkeypatch.setattr(Path, "write_bytes", refused)
        with pytest.raises(TextgenError, match=message):
            run(periodic_corpus, tmp_path, epochs=2, resume=True)
        assert files_snapshot(tmp_path / "r") == before



def test_a_new_run_on_a_read_only_file_system_is_told_to_choose_another_directory(tmp_path, periodic_corpus,
                                                                                  monkeypatch):
    """It was told to "copy the run to a writable place": there is no run yet."""
    mkdir = Path.mkdir

    def read_only(path, *args, **kwargs):
        if tmp_path in path.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(TextgenError, match=r"^cannot write in .*/r: its file system is read-only; choose another "
                                           r"--checkpoint-dir$"):
        run(periodic_corpus, tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [periodic_corpus.name]  # (the corpus, there before)


def test_a_full_disk_at_a_new_runs_start_says_so_and_leaves_no_folder(tmp_path, periodic_corpus, monkeypatch):
    """It said "choose a writable --checkpoint-dir" and left the run's folder holding only .lock, which the listing
    then called an unfinished or damaged run."""
    import errno
    from pathlib import Path

    write_bytes = Path.write_bytes

    def full(path, data):
        if path.name == ".write-test":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(TextgenError, match=r"^no space left for the run .*/ck/r; free some space or choose another "
                                           r"--checkpoint-dir$"):
        run(periodic_corpus, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def crash(run):
    raise RuntimeError("crash")


def test_overwrite_keeps_the_earlier_run_until_its_first_save_then_leaves_nothing_of_it(tmp_path, periodic_corpus,
                                                                                        monkeypatch):
    from textgen import callbacks
    run(periodic_corpus, tmp_path)
    run_dir = tmp_path / "r"
    before = files_snapshot(run_dir)
    messages = []
    with pytest.raises(RuntimeError, match="crash"):  # fails before any save: the earlier run is untouched
        train(periodic_corpus, tmp_path, run="r", model_options=TINY_MODEL, overwrite=True, log=messages.append,
              train_options=dict(TINY_TRAINING, epochs=1), callbacks=[AtStep(2, crash)])
    assert files_snapshot(run_dir) == before
    assert f"note: --overwrite: the earlier run (1 epoch on {periodic_corpus.name}, best " in "\n".join(messages)
    # Ctrl-C before the first save takes the --overwrite back (it replaced the earlier run with one step's)
    with pytest.raises(Interrupted, match=r"interrupted before this training's first checkpoint, so the earlier "
                                          r"run in \S+ is kept as it was \(to replace it, run the same command "
                                          r"again\)$") as stopped:
        run(periodic_corpus, tmp_path, overwrite=True, callbacks=[interrupt_at_step(2)])
    assert stopped.value.exit_code == 130 and files_snapshot(run_dir) == before
    wider = dict(TINY_MODEL, units=TINY_MODEL["units"] + 8)
    # A job stopped (timeout, docker stop) in that first minute: a step's training replaced the earlier run
    def terminate():
        return AtStep(5, lambda run: os.kill(os.getpid(), signal.SIGTERM))

    with pytest.raises(Interrupted, match="so the earlier run in .* is kept as it was") as stopped:
        run(periodic_corpus, tmp_path, model=wider, overwrite=True, callbacks=[terminate()])
    assert stopped.value.exit_code == 143 and files_snapshot(run_dir) == before
    monkeypatch.setattr(callbacks, "TAKE_BACK_S", 0.0)  # stopped later: its training is kept, as in any run
    with pytest.raises(Interrupted, match="resume with") as stopped:  # saves: the earlier run is gone
        run(periodic_corpus, tmp_path, model=wider, overwrite=True, callbacks=[terminate()])
    assert stopped.value.exit_code == 143
    last = checkpoint.read_meta(run_dir, "last")
    assert last.model.units == wider["units"] and last.state.step_in_epoch == 5
    assert not (run_dir / "best.json").exists() and not (run_dir / "history.csv").exists()
    assert sorted(path.name for path in run_dir.glob("ckpt-*")) == sorted(entry["name"] for entry in
                                                                          last.files.values())
    model, meta = load_model(run_dir)
    assert meta.model.units == wider["units"]


def test_a_later_ctrl_c_in_an_overwrite_training_saves_it_as_in_any_run(tmp_path, periodic_corpus, monkeypatch):
    from textgen import callbacks

    run(periodic_corpus, tmp_path)
    monkeypatch.setattr(callbacks, "TAKE_BACK_S", 0.0)  # past the first minute, in which Ctrl-C takes it back
    with pytest.raises(Interrupted, match="resume with"):
        run(periodic_corpus, tmp_path, overwrite=True, callbacks=[interrupt_at_step(2)])
    assert checkpoint.read_meta(tmp_path / "r", "last").state.step_in_epoch == 2
    assert not (tmp_path / "r" / "best.json").exists()


def test_an_overwrite_on_another_text_that_fails_keeps_the_earlier_runs_corpus_cache(tmp_path, periodic_corpus):
    """The new text's encoded cache replaced the earlier run's (corpus.npy, corpus.json) before anything was saved."""
    run(periodic_corpus, tmp_path)
    run_dir = tmp_path / "r"
    before = files_snapshot(run_dir)
    other = write_text(tmp_path / "other.txt", PERIOD[::-1] * 300)
    with pytest.raises(RuntimeError, match="crash"):
        run(other, tmp_path, overwrite=True, callbacks=[AtStep(2, crash)])
    assert files_snapshot(run_dir) == before
    assert not (run_dir / ".corpus-next").exists()  # where the new text's cache was built
    run(other, tmp_path, overwrite=True)
    assert json.loads((run_dir / "corpus.json").read_text())["source"] == str(other.resolve())
    assert not (run_dir / ".corpus-next").exists()
    (run_dir / ".corpus-next").mkdir()  # as a training killed before its first save leaves it (a whole corpus)
    (run_dir / ".corpus-next" / "corpus.npy").write_bytes(b"0" * 1000)
    run(other, tmp_path, epochs=2, resume=True)
    assert not (run_dir / ".corpus-next").exists()


def tensorboard_scalars(run_dir, name) -> list[tuple[int, float]]:
    """(step, value) of every scalar called name in the run's TensorBoard event files, read back."""
    import tensorflow as tf

    points = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            points += [(event.step, float(tf.make_ndarray(value.tensor))) for value in event.summary.value
                       if value.tag == name]
    return sorted(points)


def test_tensorboard_logs_each_epoch_and_an_overwrite_replaces_the_earlier_logs(tmp_path, periodic_corpus):
    first = run(periodic_corpus, tmp_path, epochs=2, tensorboard=True)
    run_dir = tmp_path / "r"
    logged = tensorboard_scalars(run_dir, "val_bpc")
    assert [step for step, _ in logged] == [row["chars_seen"] for row in first["history"]]
    assert [value for _, value in logged] == pytest.approx([row["val_bpc"] for row in first["history"]], rel=1e-6)
    before = files_snapshot(run_dir / "tensorboard")
    with pytest.raises(RuntimeError, match="crash"):  # fails before its first save: the earlier logs stay
        run(periodic_corpus, tmp_path, overwrite=True, tensorboard=True, callbacks=[AtStep(2, crash)])
    assert all(files_snapshot(run_dir / "tensorboard")[name] == data for name, data in before.items())
    second = run(periodic_corpus, tmp_path, epochs=1, overwrite=True, tensorboard=True)
    logged = tensorboard_scalars(run_dir, "val_bpc")
    assert [step for step, _ in logged] == [row["chars_seen"] for row in second["history"]]
    assert [value for _, value in logged] == pytest.approx([row["val_bpc"] for row in second["history"]], rel=1e-6)
    assert not set(before) & {path.name for path in (run_dir / "tensorboard").iterdir()}


def test_tensorboard_logs_that_cannot_be_written_warn_once_and_training_goes_on(tmp_path, periodic_corpus, caplog):
    """A file named tensorboard in the run stopped the training with TensorFlow's traceback, after the first save."""
    import logging

    run(periodic_corpus, tmp_path)
    (tmp_path / "r" / "tensorboard").write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="textgen"):
        resumed = run(periodic_corpus, tmp_path, epochs=3, resume=True, tensorboard=True)
    assert resumed["epoch"] == 3
    warned = [record.getMessage() for record in caplog.records if "TensorBoard" in record.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"warning: could not write the TensorBoard logs in "
                                                     f"{tmp_path / 'r' / 'tensorboard'} (")
    assert warned[0].endswith("); training continues without them")


def test_resume_without_last_checkpoint_is_refused_and_the_best_one_kept(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    run_dir = tmp_path / "r"
    (run_dir / "last.json").unlink()
    before = files_snapshot(run_dir)
    with pytest.raises(TextgenError, match=r"cannot resume run 'r': it has no last.json, only its best checkpoint"):
        run(periodic_corpus, tmp_path, resume=True)
    assert files_snapshot(run_dir) == before
    from textgen.report import info_text, runs_table

    assert "epoch 1: validation" in info_text(run_dir) and runs_table([run_dir]).splitlines()[1].startswith("r ")


def test_training_runs_in_a_worker_thread(tmp_path, periodic_corpus):
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(run(periodic_corpus, tmp_path)))
    worker.start()
    worker.join(timeout=300)
    assert results and results[0]["epoch"] == 1 and (tmp_path / "r" / "best.json").exists()


def test_trainings_in_threads_of_one_process_take_turns_and_each_seed_gives_its_run(tmp_path, periodic_corpus):
    """Each training seeds the process's random generators: two at once drew from each other's, and the same seed
    gave two runs."""
    import threading

    order, lines, results = [], {1: [], 2: []}, {}
    second_arrived = threading.Event()  # the second training has started, or is told to wait

    class Started(Callback):
        def __init__(self, number):
            self.number = number

        def on_train_start(self, run):
            order.append(f"{self.number} starts")
            if self.number == 2:
                second_arrived.set()
            else:  # until the second one has come: it starts beside this one, or waits
                second_arrived.wait(60)

    def log(number, line):
        lines[number].append(line)
        if line.startswith("waiting"):
            second_arrived.set()

    def training(number):
        options = dict(model_options=dict(TINY_MODEL, dropout=0.2), train_options=dict(TINY_TRAINING, epochs=1))
        results[number] = train(periodic_corpus, tmp_path, run=f"r{number}", callbacks=[Started(number)],
                                log=lambda line: log(number, line), **options)
        order.append(f"{number} ends")

    first = threading.Thread(target=training, args=(1,))
    first.start()
    deadline = time.monotonic() + 120
    while not order and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=training, args=(2,))
    second.start()
    first.join(300)
    second.join(300)
    assert not first.is_alive() and not second.is_alive()
    assert order == ["1 starts", "1 ends", "2 starts", "2 ends"]
    assert lines[2][0] == ("waiting for the training running in this process to end: trainings in one process take "
                           "turns, so that a seed gives the same run")
    assert results[1]["val_loss"] == results[2]["val_loss"]


def test_a_model_loaded_in_another_thread_while_a_training_starts_leaves_its_seed_alone(tmp_path, periodic_corpus,
                                                                                        trained_run, monkeypatch):
    """textgen.train loads the trained run once its turn is over, as a notebook's other thread may load one: a
    build beside the training's took draws from its seeded generator or gave back its own state in the middle,
    and the same seed gave another run."""
    import threading

    from textgen import model as model_module

    alone = run(periodic_corpus, tmp_path / "alone")["val_loss"]
    loader_building, training_seeded = threading.Event(), threading.Event()
    build, seed = model_module._build, model_module.keras.utils.set_random_seed

    def loader_build(*args):  # the loader's build, held open until the training has seeded (if it can meanwhile)
        if threading.current_thread() is loader:
            loader_building.set()
            training_seeded.wait(5)
        return build(*args)

    def training_seed(value):
        seed(value)
        if threading.current_thread() is not loader:
            training_seeded.set()

    monkeypatch.setattr(model_module, "_build", loader_build)
    monkeypatch.setattr(model_module.keras.utils, "set_random_seed", training_seed)
    loader = threading.Thread(target=load_model, args=(trained_run["run_dir"],))
    loader.start()
    assert loader_building.wait(60)
    beside = run(periodic_corpus, tmp_path / "beside")["val_loss"]
    loader.join(60)
    assert beside == alone


def test_a_bad_call_is_refused_at_once_while_another_training_runs(tmp_path, periodic_corpus, monkeypatch):
    import threading

    held, release = threading.Event(), threading.Event()

    def holder():  # as a training running in another thread does
        with training._TRAINING_TURN:
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(60)
        started = time.monotonic()
        with pytest.raises(TextgenError, match="epochs"):
            run(periodic_corpus, tmp_path, epochs=-1)
        assert time.monotonic() - started < 30  # not after the other training
    finally:
        release.set()
        thread.join(60)


def test_lock_taken_on_a_file_its_holder_just_removed_is_taken_again(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    with RunLock(run_dir):
        stale = open(run_dir / ".lock", "a+")  # opened by a second training just before the first one lets go
    opened = []

    def open_stale_first(lock):
        opened.append(lock.path.exists())
        return stale if len(opened) == 1 else open(lock.path, "a+")

    monkeypatch.setattr(RunLock, "_open", open_stale_first)
    with RunLock(run_dir) as second:
        assert opened == [False, False]  # the stale file was locked, found removed, and the path opened anew
        assert second.handle is not stale and stale.closed
        monkeypatch.undo()
        with pytest.raises(TextgenError, match=r"another training in this program \(another thread\) is using"):
            with RunLock(run_dir):
                pass


def test_corpus_too_short_names_the_minimum_and_smaller_values(tmp_path):
    short = write_text(tmp_path / "short.txt", "abc" * 100)
    with pytest.raises(TextgenError, match="too short for --batch-size 8 --seq-length 20: .*one batch needs 161.*"
                                           "at least 1,610 characters or smaller values such as --batch-size 1$"):
        run(short, tmp_path)
    assert not (tmp_path / "r" / "last.json").exists()


@pytest.mark.parametrize("val_fraction", [1e-9, 0.999])
def test_a_corpus_too_short_for_its_val_fraction_is_told_one_that_fits(tmp_path, periodic_corpus, val_fraction):
    """--val-fraction 1e-9 was told to use a corpus of at least 51,000,000,000 characters, and nothing else."""
    import re

    with pytest.raises(TextgenError) as refused:
        run(periodic_corpus, tmp_path, train_options=dict(val_fraction=val_fraction))
    told = re.search(r" or --val-fraction (0\.\d+)$", str(refused.value))[1]
    fitting, digit = float(told), 10.0 ** -len(told.split(".")[1])
    assert (fitting < 0.1 if val_fraction < 0.5 else fitting > 0.9), str(refused.value)  # on the side given
    assert run(periodic_corpus, tmp_path, train_options=dict(val_fraction=fitting))["epoch"] == 1
    nearer = fitting - digit if val_fraction < 0.5 else fitting + digit  # and none nearer in its last digit fits
    if 0 < nearer < 1:
        with pytest.raises(TextgenError, match="too short"):
            run(periodic_corpus, tmp_path / "nearer", train_options=dict(val_fraction=nearer))


def test_a_corpus_too_short_on_resume_suggests_no_option_the_resume_would_refuse(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    write_text(periodic_corpus, PERIOD * 200)
    with pytest.raises(TextgenError, match=r"too short for this run's batch of 8 and sequences of 20: .*use a corpus "
                                           r"of at least 1,610 characters$"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True)


def test_a_corpus_too_short_for_size_auto_is_told_the_true_minimum(tmp_path):
    import re

    def train_auto(corpus):
        return train(corpus, tmp_path, run="auto", train_options=dict(epochs=1, mixed_precision="off"), **QUIET)

    with pytest.raises(TextgenError) as refused:
        train_auto(write_text(tmp_path / "tiny.txt", "abcdefg" * 10))
    message = str(refused.value)
    assert "too short for a batch of 1 (chosen by --size auto) and --seq-length 50: its validation slice has 7 " \
           "characters" in message and "--batch-size" not in message and message.endswith("--seq-length 6")
    minimum = int(re.search(r"at least ([\d,]+) characters", message)[1].replace(",", ""))
    assert train_auto(write_text(tmp_path / "enough.txt", ("abcdefg" * 100)[:minimum]))["epoch"] == 1


def test_the_advised_minimum_corpus_length_is_exact():
    import re

    from textgen.batching import split_validation
    from textgen.config import TrainConfig

    for val_fraction in (0.1, 0.29, 0.5, 0.55, 0.9):
        config = TrainConfig(batch_size=4, seq_length=7, val_fraction=val_fraction)
        with pytest.raises(TextgenError) as refused:
            training._check_lengths("c.txt", *split_validation(np.zeros(20), val_fraction), config)
        minimum = int(re.search(r"at least ([\d,]+) characters", str(refused.value))[1].replace(",", ""))
        training._check_lengths("c.txt", *split_validation(np.zeros(minimum), val_fraction), config)
        with pytest.raises(TextgenError, match="too short"):
            training._check_lengths("c.txt", *split_validation(np.zeros(minimum - 1), val_fraction), config)


def test_a_large_texts_validation_is_at_most_val_max_chars_the_end_of_its_slice(tmp_path, periodic_corpus):
    """A 100 MB text held out 10 MB, which took minutes to validate at every epoch's end."""
    from textgen.batching import split_validation, training_length

    ids = np.arange(10_000)
    train_ids, val_ids = split_validation(ids, 0.1, 300)
    assert list(val_ids) == list(range(9_700, 10_000)) and len(train_ids) == 9_700 == training_length(10_000, 0.1, 300)
    assert len(split_validation(ids, 0.1, 0)[1]) == 1_000 == len(split_validation(ids, 0.1, 5_000)[1])
    summary = run(periodic_corpus, tmp_path, train_options=dict(val_max_chars=200))  # 0.1 alone: 2,100 held out
    meta = checkpoint.read_meta(summary["run_dir"], "last")
    batch = TINY_TRAINING["batch_size"] * TINY_TRAINING["seq_length"]
    assert meta.state.chars_seen == len(StreamBatches(np.zeros(21_000 - 200), 8, 20)) * batch == 129 * batch
    # A cap below one batch holds out one batch (161 characters for 8 windows of 20)
    assert training.validation_cap(training.TrainConfig(**dict(TINY_TRAINING, val_max_chars=100))) == 161
    small = run(periodic_corpus, tmp_path / "small", train_options=dict(val_max_chars=100))
    assert checkpoint.read_meta(small["run_dir"], "last").state.chars_seen == len(StreamBatches(
        np.zeros(21_000 - 161), 8, 20)) * batch
    with pytest.raises(TextgenError, match="--val-max-chars"):  # the layout of a run cannot change at a resume
        run(periodic_corpus, tmp_path, epochs=2, resume=True, train_options=dict(val_max_chars=300))


def test_a_smaller_batch_advised_for_a_short_corpus_is_one_the_replicas_share():
    from textgen.batching import split_validation
    from textgen.config import TrainConfig

    config = TrainConfig(batch_size=8, seq_length=10)
    parts = split_validation(np.zeros(550), config.val_fraction)  # a validation slice of 55: 5 windows of 10
    with pytest.raises(TextgenError, match=r"smaller values such as --batch-size 5$"):
        training._check_lengths("c.txt", *parts, config)
    # On 2 replicas, 5 was refused next ("not divisible by the 2 replicas").
    with pytest.raises(TextgenError, match=r"smaller values such as --batch-size 4$"):
        training._check_lengths("c.txt", *parts, config, replicas=2)
    with pytest.raises(TextgenError, match=r"at least [\d,]+ characters or smaller values such as --seq-length 6$"):
        # one stream per replica (the batch it has), in shorter windows
        training._check_lengths("c.txt", *parts, config, replicas=8)
    with pytest.raises(TextgenError, match=r"at least [\d,]+ characters$"):  # not even one character per replica
        training._check_lengths("c.txt", *parts, config, replicas=64)


def test_learning_rate_schedule():
    from textgen.config import TrainConfig
    config = TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_after=2, lr_schedule="step")
    assert [training.learning_rate_for(config, e) for e in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_cosine_schedule_falls_to_one_percent_by_steps_or_by_time_budget():
    import dataclasses

    from textgen.config import TrainConfig
    config = TrainConfig(learning_rate=2.0, lr_schedule="cosine", epochs=4)
    assert [training.learning_rate_for(config, 0, f) for f in (0.0, 0.5, 1.0)] == pytest.approx([2.0, 1.01, 0.02])
    # Without a time budget only steps count: 2 of 4 epochs is half way, however long it took.
    halfway = RunState(run_id="r", epoch=2, step_in_epoch=0, global_step=20)
    assert training.run_fraction(config, halfway, 10, elapsed_seconds=9999) == 0.5
    # The current epoch counts by its steps, whatever steps earlier epochs took (a resumed run's text may change).
    later = RunState(run_id="r", epoch=2, step_in_epoch=5, global_step=905)
    assert training.run_fraction(config, later, 10, elapsed_seconds=0) == 0.625
    budget = dataclasses.replace(config, max_minutes=10)
    assert training.run_fraction(budget, halfway, 10, elapsed_seconds=450) == 0.75  # the budget runs out first
    assert training.run_fraction(budget, halfway, 10, elapsed_seconds=60) == 0.5
    assert training.run_fraction(budget, halfway, 10, elapsed_seconds=6000) == 1.0


def test_a_cosine_run_resumed_on_a_shorter_text_keeps_its_place_in_the_schedule(tmp_path, periodic_corpus):
    cosine = dict(lr_schedule="cosine", learning_rate=0.02)
    run(periodic_corpus, tmp_path, epochs=2, train_options=cosine)
    shorter = write_text(tmp_path / "shorter.txt", "gfedcba" * 1000)
    resumed = run(shorter, tmp_path, epochs=4, resume=True, train_options=cosine)
    steps = len(StreamBatches(split_validation(np.zeros(7000), 0.1)[0], 8, 20))
    # The logged rate is the one the epoch's last step used: epochs 3 and 4 end 2.9 and 3.9 epochs into the 4.
    config = training.TrainConfig(epochs=4, **cosine)
    expected = [training.learning_rate_for(config, 0, (done + (steps - 1) / steps) / 4) for done in (2, 3)]
    assert [row["learning_rate"] for row in resumed["history"][2:]] == pytest.approx(expected)


def test_cosine_run_anneals_every_step(tmp_path, periodic_corpus):
    result = run(periodic_corpus, tmp_path, epochs=3, train_options=dict(lr_schedule="cosine", learning_rate=0.02))
    rates = [row["learning_rate"] for row in result["history"]]
    steps = result["history"][-1]["step"]
    # The logged rate is the one the epoch's last step used: the fraction before that step.
    expected = [training.learning_rate_for(training.TrainConfig(learning_rate=0.02, lr_schedule="cosine"), 0,
                                           (row["step"] - 1) / steps) for row in result["history"]]
    assert rates == pytest.approx(expected)
    assert rates[0] > rates[1] > rates[2] and rates[2] < 0.002
    # Extending a cosine run re-stretches the schedule, and says so.
    messages = []
    train(periodic_corpus, tmp_path, run="r", model_options=TINY_MODEL, resume=True, log=messages.append,
          train_options=dict(TINY_TRAINING, epochs=6, lr_schedule="cosine", learning_rate=0.02))
    restretched = "re-stretches the cosine schedule: the learning rate goes from 0.0002 to 0.01"
    assert any(restretched in m for m in messages), messages



def test_a_restarted_epoch_on_a_changed_text_is_where_the_schedule_note_measures_from(tmp_path, periodic_corpus):
    with pytest.raises(Interrupted):  # stopped in epoch 2 of 2
        run(periodic_corpus, tmp_path, epochs=2, callbacks=[interrupt_at_step(150)])
    shorter = write_text(tmp_path / "shorter.txt", "gfedcba" * 1000)
    lines = []
    train(shorter, tmp_path, run="r", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=4),
          resume=True, log=lines.append)
    # Epoch 2 starts again on the new text: 1 of 2 epochs done before, 1 of 4 now.
    rates = [training.learning_rate_for(training.TrainConfig(learning_rate=0.01, epochs=epochs), 0, fraction)
             for epochs, fraction in ((2, 0.5), (4, 0.25))]
    assert f"note: the run's new length re-stretches the cosine schedule: the learning rate goes from " \
           f"{rates[0]:.3g} to {rates[1]:.3g}" in lines
    assert "resuming with other options for the rest of the run: --epochs 4 (was 2)" in lines


def test_a_new_length_that_leaves_the_learning_rate_as_it_was_is_not_noted(tmp_path, periodic_corpus):
    """Resumed after its first step, a run said "the learning rate goes from 0.003 to 0.003"."""
    with pytest.raises(Interrupted):
        run(periodic_corpus, tmp_path, epochs=2, callbacks=[interrupt_at_step(1)])
    lines = []
    train(periodic_corpus, tmp_path, run="r", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=3),
          resume=True, log=lines.append)
    assert "resuming with other options for the rest of the run: --epochs 3 (was 2)" in lines
    assert not [line for line in lines if "re-stretches" in line], lines

def test_weight_decay_shrinks_weight_matrices_and_spares_biases():
    from textgen.config import ModelConfig, TrainConfig
    session = Session(ModelConfig(vocab_size=5, **TINY_MODEL),
                                TrainConfig(learning_rate=0.1, weight_decay=0.5, batch_size=2, mixed_precision="off"))
    variables = session.model.trainable_variables
    before = [np.array(v.numpy()) for v in variables]
    # Zero gradients leave Adam's own step at zero, so any change is the decoupled decay alone.
    session.optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in variables])
    for variable, old in zip(variables, before):
        factor = 1.0 if "bias" in variable.name else 1 - 0.1 * 0.5
        assert np.allclose(variable.numpy(), old * factor, atol=1e-7), variable.path
    assert {v.name for v in variables} >= {"embeddings", "kernel", "recurrent_kernel", "bias"}


def test_checkpoint_from_before_an_option_resumes_as_it_was_trained():
    from textgen.config import TrainConfig
    saved = dict(TrainConfig(learning_rate=0.01).to_dict())
    for option in ("lr_schedule", "mixed_precision", "weight_decay"):
        del saved[option]
    old = TrainConfig.from_dict(saved)
    assert (old.lr_schedule, old.mixed_precision, old.weight_decay, old.learning_rate) == ("step", "off", 0.0, 0.01)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_time_budget_validates_saves_and_stops_mid_epoch(tmp_path, periodic_corpus, caplog):
    summary = run(periodic_corpus, tmp_path, epochs=3, train_options=dict(max_minutes=0.0005))
    assert summary["stopped"] == "time budget of 0.0005 minutes reached"
    best = checkpoint.read_meta(tmp_path / "r", "best")
    assert best.state.epoch == 0 and 0 < best.state.step_in_epoch < 118
    assert best.state.val_loss == pytest.approx(summary["val_loss"]) and best.state.best_val_loss == best.state.val_loss
    assert best.state.history[-1]["val_loss"] == best.state.val_loss
    # A run started from it names that checkpoint as info does, steps into epoch 1 (it said "epoch 0")
    where = f"epoch 1 after {counted(best.state.step_in_epoch, 'step')}"
    assert f"best           {where}: validation" in report.info_text(tmp_path / "r")
    messages = []
    fine = train(periodic_corpus, tmp_path / "ck", run="fine", model_options=TINY_MODEL,
                 train_options=dict(TINY_TRAINING, max_minutes=0.0005), log=messages.append, init_from=tmp_path / "r")
    assert any(f"(its best checkpoint, {where}, " in message for message in messages), messages
    assert f"(its best checkpoint, {where}, trained on " in report.info_text(fine["run_dir"])
    assert repr(textgen.load("r", checkpoint_dir=tmp_path)).endswith(f" characters, {where})")
    saved = json.loads((fine["run_dir"] / "last.json").read_text(encoding="utf-8"))
    assert saved["started_from"]["step_in_epoch"] == best.state.step_in_epoch
    for wrong in (-3, True, "7"):
        started = dict(saved["started_from"], step_in_epoch=wrong)
        with pytest.raises(ValueError, match="its started_from is .*, not the run it started from"):
            checkpoint.CheckpointMeta.from_json(dict(saved, started_from=started))
    # Its best.json gone, the note on using the last one said it was "validated after epoch 0"
    shutil.copytree(tmp_path / "r", tmp_path / "nobest" / "r")
    (tmp_path / "nobest" / "r" / "best.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textgen"):
        checkpoint.load_model(tmp_path / "nobest" / "r")
    assert [record.getMessage() for record in caplog.records] == [
        "note: run 'r' has no best checkpoint (its best.json is missing, though it was validated in epoch 1); using "
        f"its last one, saved in epoch 1, after step {best.state.step_in_epoch}"]
    # The advice when last.json is damaged names the best checkpoint the same way
    shutil.copytree(tmp_path / "r", tmp_path / "damaged" / "r")
    (tmp_path / "damaged" / "r" / "last.json").write_text("{", encoding="utf-8")
    with pytest.raises(TextgenError, match=f"the run's best checkpoint \\({where}\\) is intact"):
        run(periodic_corpus, tmp_path / "damaged", epochs=1, resume=True)
    with pytest.raises(TextgenError, match=r"cannot resume: the run has used its time budget \(--max-minutes "
                                           r"0.0005; .*pass a larger --max-minutes, or --max-minutes 0 for no limit"):
        run(periodic_corpus, tmp_path, epochs=1, resume=True)
    resumed = run(periodic_corpus, tmp_path, epochs=1, resume=True, train_options=dict(max_minutes=0))
    assert resumed["epoch"] == 1 and resumed["history"][-1]["step"] == 118
    assert [row["epoch"] for row in resumed["history"]] == [1]  # the mid-epoch row gave way to the epoch's end


def test_a_callback_can_stop_the_run_at_once(tmp_path, periodic_corpus):
    summary = run(periodic_corpus, tmp_path, epochs=3, callbacks=[AtStep(3, lambda r: r.stop("enough", now=True))])
    assert summary["stopped"] == "enough" and summary["epoch"] == 0
    last = checkpoint.read_meta(tmp_path / "r", "last").state
    assert (last.epoch, last.step_in_epoch) == (0, 3) and last.val_loss == pytest.approx(summary["val_loss"])


def test_a_stop_before_the_first_step_says_nothing_was_saved_and_leaves_no_run(tmp_path, periodic_corpus):
    """It returned as if trained: textgen.train then failed to load the run ('no checkpoint ...; train one first with:
    textgen train CORPUS'), whose folder held the corpus cache alone; after --overwrite, it gave the earlier run."""

    class NotToday(Callback):
        def on_train_start(self, run):
            run.stop("not today")

    with pytest.raises(TextgenError, match=r"^training stopped before its first step \(not today\); nothing was "
                                           r"saved$"):
        run(periodic_corpus, tmp_path / "ck", callbacks=[NotToday()])
    assert not (tmp_path / "ck").exists()
    run(periodic_corpus, tmp_path / "ck")
    before = files_snapshot(tmp_path / "ck")
    with pytest.raises(TextgenError, match=r"nothing was saved and the earlier run is kept$"):
        run(periodic_corpus, tmp_path / "ck", overwrite=True, callbacks=[NotToday()])
    assert files_snapshot(tmp_path / "ck") == before


def test_a_checkpoint_replaced_while_it_is_read_is_read_again(trained_run, tmp_path, monkeypatch, caplog):
    # A training that goes on saves between our reading best.json and opening the weights it names: that file is
    # gone, a new best.json is in place. The new one is read: no error, no fallback to "last".
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(trained_run["run_dir"], run_dir)
    read_meta, calls = checkpoint.read_meta, []

    def read_during_a_save(directory, kind):
        meta = read_meta(directory, kind)
        calls.append(kind)
        if len(calls) == 1:  # the save: a new metadata file renamed into place, the old weights removed
            (run_dir / "best.tmp").write_bytes(checkpoint.meta_path(run_dir, "best").read_bytes())
            os.replace(run_dir / "best.tmp", checkpoint.meta_path(run_dir, "best"))
            meta = dataclasses.replace(meta, files=dict(meta.files, weights=dict(meta.files["weights"],
                                                                                 name="removed.weights.h5")))
        return meta

    monkeypatch.setattr(checkpoint, "read_meta", read_during_a_save)
    with caplog.at_level("WARNING", logger="textgen"):
        model, meta = load_model(run_dir, kind="best")
    assert calls == ["best", "best"] and "using the" not in caplog.text
    assert meta.state.epoch == trained_run["epoch"]
    # a file missing for good is still reported (after the fallback to "last" fails the same way)
    monkeypatch.undo()
    for kind in ("best", "last"):
        (run_dir / read_meta(run_dir, kind).files["weights"]["name"]).unlink(missing_ok=True)
    with pytest.raises(TextgenError, match="is missing"):
        load_model(run_dir, kind="best")


def test_pace_tells_a_long_run_how_long_it_takes_and_a_log_where_the_epoch_stands():
    """A 5 MB text's default run took ~9.5 hours without a word about it, and a job's log (no progress bar) was
    silent until the first epoch ended, 28 minutes in."""
    from types import SimpleNamespace

    from textgen.callbacks import Pace
    from textgen.config import TrainConfig

    lines = []
    state = SimpleNamespace(epoch=0, step_in_epoch=0, global_step=0, epoch_mean_loss=1.5)
    run = SimpleNamespace(elapsed=0.0, state=state, train_batches=range(1421), log=lines.append,
                          config=TrainConfig(epochs=20))
    pace = Pace(terminal=False)
    pace.on_train_start(run)
    for step in range(1, 700):
        state.step_in_epoch = state.global_step = step
        run.elapsed = 10.0 + 1.2 * step  # the first step compiled for 10 s
        pace.on_step_end(run, 1.5)
    assert lines == ["pace: 1.20 s per step, ~28 min per epoch; the 20 epochs end in ~9.5 h",
                     "epoch 1/20: step 492 of 1421, train 1.5000 nats (2.164 bpc), 10 min of training"]
    lines.clear()
    run.config = TrainConfig(epochs=20, max_minutes=90)
    state.step_in_epoch = state.global_step = 0
    run.elapsed = 0.0
    pace = Pace(terminal=True)
    pace.on_train_start(run)
    for step in range(1, 100):
        state.step_in_epoch = state.global_step = step
        run.elapsed = 1.2 * step
        pace.on_step_end(run, 1.5)
    assert lines == ["pace: 1.20 s per step, ~28 min per epoch; --max-minutes 90 ends the run in ~89 min"]
    lines.clear()  # a tiny model's step: "0.00 s per step"
    run.config, run.train_batches = TrainConfig(epochs=2000), range(1421)
    state.step_in_epoch = state.global_step = 0
    run.elapsed = 0.0
    pace = Pace(terminal=True)
    pace.on_train_start(run)
    for step in range(1, 30000):
        state.step_in_epoch, state.global_step = step % 1421, step
        run.elapsed = 0.0042 * step
        pace.on_step_end(run, 1.5)
    assert lines == ["pace: 4.2 ms per step, ~6 s per epoch; the 2,000 epochs end in ~3.3 h"]
    # make demo's run said "the 6 epochs end in ~1 s" 62 s in: a run ending within the minute is told nothing
    lines.clear()
    run.config, run.train_batches = TrainConfig(epochs=6), range(130)
    state.epoch = 5
    pace = Pace(terminal=True)
    pace.on_train_start(run)
    for step in range(1, 130):
        state.step_in_epoch, state.global_step = step, 650 + step
        run.elapsed = 0.6 * step  # told at step 101, 29 steps (17 s) before the end
        pace.on_step_end(run, 1.5)
    assert lines == []


def test_max_minutes_alone_trains_until_then_with_no_epoch_limit(tmp_path, periodic_corpus):
    """--max-minutes without --epochs stopped at the default 20 epochs: a tiny text's took 8 s of the 1.5 minutes
    asked for."""
    from textgen.config import TrainConfig
    from textgen.report import runs_table

    with pytest.raises(TextgenError, match=r"^--epochs 0 trains until --max-minutes, which is 0 \(no limit\): give "
                                           "one of them$"):
        TrainConfig(epochs=0).validate()
    lines = []
    options = {key: value for key, value in TINY_TRAINING.items() if key != "epochs"}
    summary = train(periodic_corpus, tmp_path, run="r", model_options=TINY_MODEL, log=lines.append,
                    train_options=dict(options, max_minutes=0.06))  # 3.6 s
    assert summary["stopped"] == "time budget of 0.06 minutes reached"
    meta = checkpoint.read_meta(tmp_path / "r", "last")
    assert meta.training.epochs == 0 and meta.state.elapsed_seconds >= 3.6
    epochs = [line for line in lines if line.startswith("epoch ")]  # (the first may be cut by the deadline)
    assert epochs and all(re.match(r"epoch \d+[ :]", line) for line in epochs)  # no "/20"
    steps = meta.state.step_in_epoch  # (the deadline may cut an epoch)
    trained = f"{meta.state.epoch}" + (f" + {steps} step{'s' if steps > 1 else ''}" if steps else "")
    assert f"  {trained}  " in runs_table([tmp_path / "r"]).splitlines()[1]
    with pytest.raises(TextgenError, match=r"pass a larger --max-minutes, or --max-minutes 0 with --epochs N"):
        train(None, tmp_path, run="r", resume=True, log=lines.append)
    longer = train(None, tmp_path, run="r", resume=True, log=lines.append, train_options=dict(max_minutes=0.08))
    assert longer["stopped"] == "time budget of 0.08 minutes reached"
    assert checkpoint.read_meta(tmp_path / "r", "last").state.elapsed_seconds >= 4.8


def test_a_file_sharing_a_runs_name_is_told_whose_run_it_is_and_cannot_resume_it_unnamed(tmp_path):
    """notes.txt resumed the run of notes.md (both name their run 'notes'), as the refusal to start had advised, and
    the notes.md model's best checkpoint gave way to the new text's."""
    markdown = write_text(tmp_path / "notes.md", PERIOD * 3000)
    plain = write_text(tmp_path / "notes.txt", PERIOD * 2900)
    options = dict(model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1), **QUIET)
    train(markdown, tmp_path / "ck", **options)
    before = files_snapshot(tmp_path / "ck" / "notes")
    go_on = ("add --run NAME to train notes.txt apart, or --run notes --resume to go on training that run on it (its "
             "best checkpoint then starts over on the new text)")
    with pytest.raises(TextgenError) as refused:  # it advised --resume, which is refused
        train(plain, tmp_path / "ck", **options)
    assert str(refused.value) == (f"run 'notes', trained on {markdown}, already has checkpoints in "
                                  f"{tmp_path / 'ck' / 'notes'}: {go_on}; --overwrite replaces it")
    with pytest.raises(TextgenError) as refused:
        train(plain, tmp_path / "ck", resume=True, **options)
    assert str(refused.value) == (f"run 'notes' was trained on {markdown}, not notes.txt: the run takes its name "
                                  f"from the file's; {go_on}")
    assert files_snapshot(tmp_path / "ck" / "notes") == before
    # A link to a corpus is the file it names (the run keeps the target's path): it resumes.
    (tmp_path / "latest.txt").symlink_to(plain)
    train(tmp_path / "latest.txt", tmp_path / "ck", **options)
    assert train(tmp_path / "latest.txt", tmp_path / "ck", resume=True,
                 **dict(options, train_options=dict(TINY_TRAINING, epochs=2)))["epoch"] == 2
    (tmp_path / "moved").mkdir()
    moved = write_text(tmp_path / "moved" / "notes.md", PERIOD * 3000)  # the same file name elsewhere: the same run
    summary = train(moved, tmp_path / "ck", resume=True, **dict(options, train_options=dict(TINY_TRAINING, epochs=2)))
    assert summary["epoch"] == 2


def test_byte_order_marks_inside_a_corpus_are_told_with_how_to_remove_them(tmp_path, monkeypatch):
    """A cat of files saved on Windows: each file's mark became an invisible character that the samples wrote."""
    messages = []
    corpus = tmp_path / "code.txt"
    corpus.write_bytes(("\ufeff" + "abcdefg\n" * 500).encode() * 5)  # the first mark, at the start, is dropped
    monkeypatch.setattr(training, "LARGE_CORPUS_BYTES", 20_000)  # (and a large one is said before it is read)
    train(corpus, tmp_path / "ck", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    assert messages[0] == f"reading {corpus} (0 MB)"  # 20,015 bytes
    command = f"perl -CSD -pi -e 's/\\x{{FEFF}}//g' {corpus}"
    assert [message for message in messages if "U+FEFF" in message] == [
        "note: code.txt has byte order marks (U+FEFF) after its start, as a cat of files saved on Windows has, which "
        "the model learns as an invisible character and will write in its samples (in code, a syntax error); remove "
        f"them first ({command}) and train again with --overwrite"]
    subprocess.run(command, shell=True, check=True)
    assert corpus.read_text(encoding="utf-8") == "abcdefg\n" * 2500
    messages.clear()
    train(corpus, tmp_path / "ck", overwrite=True, model_options=TINY_MODEL,
          train_options=dict(TINY_TRAINING, epochs=1), log=messages.append)
    assert not [message for message in messages if "U+FEFF" in message]


def test_characters_that_come_only_in_the_validation_part_are_told(tmp_path):
    """A chat log whose last lines held 🦄 and 🐙: the vocabulary took them, the model never trained on them, a prime
    with 🦄 was read without a word, and nothing said so."""
    messages = []
    corpus = write_text(tmp_path / "chat.txt", "abcdefg\n" * 2500 + "x🦄🐙\n")
    train(corpus, tmp_path / "ck", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    assert [message for message in messages if "validation part" in message] == [
        "note: 3 characters of chat.txt come only in its validation part (its last 2,000 characters), so the model "
        "never trains on them: 'x' '🐙' '🦄'; it will seldom write them, and reads a prime that holds one as noise"]
    messages.clear()
    write_text(corpus, "abcdefg\n" * 2500 + "x\n")
    train(corpus, tmp_path / "ck", run="one", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    assert [message for message in messages if "validation part" in message] == [
        "note: 1 character of chat.txt comes only in its validation part (its last 2,000 characters), so the model "
        "never trains on it: 'x'; it will seldom write it, and reads a prime that holds one as noise"]
    messages.clear()
    write_text(corpus, "abcdefg\n" * 2500)
    train(corpus, tmp_path / "ck", run="plain", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    assert not [message for message in messages if "validation part" in message]


def test_a_corpus_with_windows_line_ends_is_told_its_samples_will_have_them(tmp_path):
    messages = []
    corpus = tmp_path / "lyrics.txt"
    corpus.write_bytes(("abcdefg\r\n" * 2500).encode())
    train(corpus, tmp_path / "ck", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    assert [message for message in messages if "carriage" in message] == [
        "note: lyrics.txt has carriage returns (\\r: Windows or old Mac line ends), which the model learns as a "
        "character of their own, so its samples will have them too; for plain line ends, convert the file first (perl "
        f"-pi -e 's/\\r\\n?/\\n/g' {corpus}) and train again with --overwrite"]
    messages.clear()
    train(corpus, tmp_path / "ck", resume=True, model_options=TINY_MODEL, log=messages.append,
          train_options=dict(TINY_TRAINING, epochs=2))
    assert not [message for message in messages if "carriage" in message]  # said once, when the run starts
    # A run of plain line ends resumed on a copy saved on Windows: the new '\r' is said to be those line ends.
    plain = write_text(tmp_path / "plain.txt", "abcdefg\n" * 2500)
    train(plain, tmp_path / "ck", run="plain", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1),
          log=messages.append)
    plain.write_bytes(plain.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(TextgenError) as refused:
        train(plain, tmp_path / "ck", run="plain", resume=True, model_options=TINY_MODEL, log=messages.append,
              train_options=dict(TINY_TRAINING, epochs=2))
    assert str(refused.value) == (
        "cannot resume: the corpus vocabulary differs from the checkpoint's (new characters '\\r'); the corpus has "
        "Windows line ends (\\r\\n) where the run's text had plain ones: convert it first (perl -pi -e "
        f"'s/\\r\\n?/\\n/g' {plain}), or train a new run with --run NAME (--init-from starts it from this run's "
        "weights)")
    if shutil.which("perl") is None:
        plain.write_bytes(plain.read_bytes().replace(b"\r\n", b"\n"))
    else:  # the advice, followed
        subprocess.run(["perl", "-pi", "-e", "s/\\r\\n?/\\n/g", str(plain)], check=True)
    assert train(plain, tmp_path / "ck", run="plain", resume=True, model_options=TINY_MODEL, log=messages.append,
                 train_options=dict(TINY_TRAINING, epochs=2))["epoch"] == 2


@pytest.mark.skipif(shutil.which("perl") is None, reason="the advice is a perl command")
def test_the_line_ends_advice_converts_an_old_macs_lone_carriage_returns_too(tmp_path):
    """s/\\r$// left a file of lone \\r as it was (Perl reads it as one line)."""
    from textgen.corpus import plain_line_ends_command

    for ends in (b"\r", b"\r\n"):
        corpus = tmp_path / "poem.txt"
        corpus.write_bytes(b"line one" + ends + b"line two" + ends)
        subprocess.run(plain_line_ends_command(corpus), shell=True, check=True)
        assert corpus.read_bytes() == b"line one\nline two\n"


def test_minutes_trained_read_as_minutes_at_any_budget():
    """A used-up budget's message gave 0.1 minutes for 3.4 s (--max-minutes 0.05), then 1.2e+03 for 20 hours."""
    from textgen.errors import minutes_text

    assert [minutes_text(seconds / 60) for seconds in (3.4, 740, 6000, 74070)] == [
        "0.0567 minutes", "12.3 minutes", "100 minutes", "1,234 minutes"]
    assert minutes_text(1) == "1 minute"  # (the sizing line said "a budget of 1 minutes")


def test_a_hangup_is_taken_only_where_it_would_end_the_process():
    """SIGHUP stops a training as SIGTERM does, where its default would end the process: a program's own handler
    (one that reopens its logs) and nohup's SIG_IGN stay as they are."""
    from textgen.training import stop_on_signals

    def reopen_logs(signum, frame):
        pass

    before = signal.getsignal(signal.SIGHUP)
    try:
        for kept in (reopen_logs, signal.SIG_IGN):
            signal.signal(signal.SIGHUP, kept)
            with stop_on_signals():
                assert signal.getsignal(signal.SIGHUP) is kept
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with stop_on_signals() as requested:
            os.kill(os.getpid(), signal.SIGHUP)
            assert requested == [signal.SIGHUP]
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


def test_init_from_starts_a_new_run_from_another_runs_weights_and_only_reads_it(trained_run, tmp_path):
    """Fine-tuning: a new run on another text starts from the weights of a trained one (its epochs, optimizer and
    schedule afresh), with a vocabulary grown by the text's new characters; the trained run is not touched (resuming
    it on the new text was the only way, and replaced it)."""
    source = trained_run["run_dir"]
    before = files_snapshot(source)
    corpus = write_text(tmp_path / "letters.txt", (PERIOD * 60 + "\n") * 10)  # a character the source never saw
    source_model, source_meta = load_model(source)
    seen = {}

    class FirstWeights(Callback):
        def on_train_start(self, run):
            seen.update(vocab=run.vocab, weights={layer.name: layer.get_weights() for layer in run.session.model.layers
                                                  if layer.weights})

    summary = train(corpus, tmp_path / "ck", run="letters", model_options=dict(dropout=0.0),
                    train_options=dict(TINY_TRAINING, epochs=1, learning_rate=1e-7), log=lambda message: None,
                    callbacks=[FirstWeights()], init_from=source)
    assert seen["vocab"].chars == "\n" + PERIOD
    ids = [seen["vocab"].chars.index(ch) for ch in source_meta.vocab.chars]
    (theirs,) = source_model.get_layer("embedding").get_weights()
    np.testing.assert_array_equal(seen["weights"]["embedding"][0][ids], theirs)
    assert not np.isin(seen["weights"]["embedding"][0][0], theirs).all()  # the new character's row is its own
    for mine, their in zip(seen["weights"]["lstm_0"], source_model.get_layer("lstm_0").get_weights()):
        np.testing.assert_array_equal(mine, their)
    kernel, bias = source_model.get_layer("logits").get_weights()
    np.testing.assert_array_equal(seen["weights"]["logits"][0][:, ids], kernel)
    np.testing.assert_array_equal(seen["weights"]["logits"][1][ids], bias)
    # At a learning rate that changes nothing, the text is already predicted as well as the source run predicts its
    # own (a fresh model is at chance, ln 8), and the run counts its own epochs
    assert summary["epoch"] == 1 and summary["best_val_loss"] < 0.5 * math.log(8)
    state = checkpoint.read_meta(summary["run_dir"], "best").state
    assert state.started_from == dict(run=str(source.resolve()), kind="best", epoch=3, step_in_epoch=0,
                                      corpus=str(trained_run["corpus"].resolve()))
    assert f"started from   {source.resolve()} (its best checkpoint, epoch 3, trained on " in \
        report.info_text(summary["run_dir"])
    assert files_snapshot(source) == before
    saved = json.loads((summary["run_dir"] / "best.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="its started_from is 'period', not the run it started from"):
        checkpoint.CheckpointMeta.from_json(dict(saved, started_from="period"))


def test_init_from_refuses_what_it_cannot_mean(trained_run, tmp_path):
    corpus = write_text(tmp_path / "more.txt", PERIOD * 400)
    source = trained_run["run_dir"]
    common = dict(train_options=dict(TINY_TRAINING, epochs=1), log=lambda message: None, init_from=source)
    for kwargs, message in (
            (dict(model_options=dict(units=64)), "--units 64 differs from the run it starts from (period: --units 32)"),
            (dict(resume=True), "--init-from starts a new run from another run's weights; a resumed run goes on"),
            (dict(checkpoint_dir=trained_run["checkpoint_dir"], run="period", overwrite=True),
             "--init-from names the run being trained")):
        with pytest.raises(TextgenError, match=re.escape(message)):
            train(corpus, **{"checkpoint_dir": tmp_path / "ck", "run": "more", **common, **kwargs})
    with pytest.raises(TextgenError, match=re.escape("no run named 'nope' in")):
        train(corpus, trained_run["checkpoint_dir"], run="more", init_from="nope", log=lambda message: None)
    # A path that is no run, or a folder of runs (whose latest run was taken)
    for path in (corpus, trained_run["checkpoint_dir"], tmp_path / "missing"):
        with pytest.raises(TextgenError, match=re.escape(f"--init-from {path} is not a run (no checkpoint in it); give "
                                                         "a run's name under")):
            train(corpus, tmp_path / "ck", run="more", init_from=path, log=lambda message: None)
    starting = tmp_path / "elsewhere" / "starting"  # a run in its first epoch, given by its path
    with RunLock(starting):
        with pytest.raises(TextgenError, match=re.escape(f"--init-from {starting} has no checkpoint yet: a training "
                                                         f"(pid {os.getpid()}) has it, which saves the first at")):
            train(corpus, tmp_path / "ck", run="more", init_from=starting, log=lambda message: None)
    # Told before the corpus is read (here it is missing), and before a resume looks for the run's own corpus
    with pytest.raises(TextgenError, match=re.escape("--units 64 differs from the run it starts from")):
        train(tmp_path / "missing.txt", tmp_path / "ck", run="more", model_options=dict(units=64), init_from=source,
              log=lambda message: None)
    with pytest.raises(TextgenError, match=re.escape("--init-from starts a new run")):
        train(None, tmp_path / "ck", run="more", resume=True, init_from=source, log=lambda message: None)
    assert not (tmp_path / "ck" / "more").exists()


def test_init_from_notes_what_the_new_text_has_not_what_the_source_had(tmp_path):
    """The carriage-return note named the corpus for the source's \r; a text in another Unicode form than the
    source's was split into untrained characters without a word."""
    import unicodedata

    source = train(write_text(tmp_path / "old.txt", unicodedata.normalize("NFC", "abcdé\r\n") * 300),
                   tmp_path / "ck", run="old", model_options=TINY_MODEL, log=lambda message: None,
                   train_options=dict(TINY_TRAINING, epochs=1))["run_dir"]
    messages = []
    train(write_text(tmp_path / "new.txt", unicodedata.normalize("NFD", "abcdé\n") * 300), tmp_path / "ck",
          run="new", init_from=source, log=messages.append, train_options=dict(TINY_TRAINING, epochs=1))
    assert not [message for message in messages if "carriage returns" in message]
    assert "note: the corpus is in Unicode form NFD where run old's text was in NFC, so its accented characters " \
           "are new to the model; to start them from what it learnt, convert the corpus to NFC" in "\n".join(messages)


def test_overwrite_of_a_run_without_its_last_checkpoint_says_what_it_replaces(trained_run, tmp_path, periodic_corpus):
    run_dir = tmp_path / "ck" / "r"
    shutil.copytree(trained_run["run_dir"], run_dir)
    (run_dir / "last.json").unlink()  # (it was an AttributeError)
    messages = []
    train(periodic_corpus, tmp_path / "ck", run="r", model_options=TINY_MODEL, overwrite=True, log=messages.append,
          train_options=dict(TINY_TRAINING, epochs=1))
    assert "note: --overwrite: the earlier run (3 epochs on period.txt, best " in "\n".join(messages)
    newer = tmp_path / "ck2" / "r"  # a run another textgen wrote: said, not "(its checkpoints)" as for a damaged one
    shutil.copytree(trained_run["run_dir"], newer)
    for kind in ("last", "best"):
        meta = json.loads((newer / f"{kind}.json").read_text())
        (newer / f"{kind}.json").write_text(json.dumps(dict(meta, format_version=meta["format_version"] + 1)))
    messages.clear()
    train(periodic_corpus, tmp_path / "ck2", run="r", model_options=TINY_MODEL, overwrite=True, log=messages.append,
          train_options=dict(TINY_TRAINING, epochs=1))
    assert "note: --overwrite: the earlier run (written by a newer textgen) goes when" in "\n".join(messages)


def _rows(*val_losses, text="t.txt"):
    return [dict(epoch=epoch, val_loss=loss, val_bpc=loss / math.log(2), text=text)
            for epoch, loss in enumerate(val_losses, start=1)]


@pytest.mark.parametrize("rows, stopped, patience, said", [
    # a songwriter's small text: best at epoch 2, then 3 epochs worse
    (_rows(2.0, 1.8, 1.85, 1.9, 1.95), "5 epochs done", 0, "note: validation got worse after epoch 2 (2.597 bpc, then "
     "2.813 at the end): from there the model learned its training text by heart; sampling uses epoch 2's "
     "checkpoint, the best, and --patience 3 stops a run once validation stops improving"),
    (_rows(2.0, 1.8, 1.85, 1.9, 1.95), "no validation improvement for 3 epochs", 3, None),  # --patience said it
    (_rows(2.0, 1.8, 1.81, 1.82, 1.83), "5 epochs done", 0, None),  # within 2%: a plateau, not by heart
    (_rows(2.0, 1.8, 1.9, 1.9), "4 epochs done", 0, None),  # 2 epochs past the best: too soon to say
    # still improving at the end: by 5% (the demo's last epoch, 0.3%, is not told)
    (_rows(2.0, 1.9, 1.8), "3 epochs done", 0, "note: validation was still improving at the end (2.741, then 2.597 "
     "bpc): a longer run would likely write better text; train on with --resume and a larger --epochs"),
    (_rows(2.0, 1.9, 1.8), "time budget of 2 minutes reached", 0, "note: validation was still improving at the end "
     "(2.741, then 2.597 bpc): a longer run would likely write better text; train on with --resume and a larger "
     "--max-minutes"),
    (_rows(1.3211, 1.3170), "2 epochs done", 0, None),
    (_rows(2.0, 1.9, 1.8), "stopped by a callback", 0, None),
    (_rows(1.8), "1 epoch done", 0, None),
    # a resume on another text starts the best over: the rows of the earlier text do not count
    (_rows(3.0, 1.0, text="old.txt")[:2] + [dict(row, epoch=row["epoch"] + 2) for row in _rows(2.0, 1.9, 1.95)],
     "5 epochs done", 0, None),
])
def test_the_end_of_a_run_says_when_validation_got_worse_or_was_still_improving(rows, stopped, patience, said):
    from textgen.config import TrainConfig

    state = RunState(run_id="x", history=rows)
    rows = training._rows_of_this_text(state)
    best = min(row["val_loss"] for row in rows)
    assert training._how_validation_ended(rows, stopped, TrainConfig(patience=patience), best) == said
    # the best checkpoint was a stop mid-epoch's, whose row the resumed epoch's replaced: its epoch is not known
    assert training._how_validation_ended(rows, stopped, TrainConfig(patience=patience), best - 0.01) is None


def test_a_programs_global_keras_dtype_policy_does_not_change_a_training(tmp_path):
    """keras.config.set_dtype_policy("mixed_bfloat16") in a notebook made the layers compute in bfloat16 (val_bpc
    3.92596 -> 3.92894) while the run's history said float32."""
    import keras

    corpus = write_text(tmp_path / "c.txt", "abcdefg\n" * 1500)
    options = dict(model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=1), log=lambda message: None)
    alone = train(corpus, tmp_path / "ck", run="alone", **options)
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        under_policy = train(corpus, tmp_path / "ck", run="policy", **options)
    finally:
        keras.config.set_dtype_policy(before)
    assert under_policy["best_val_loss"] == alone["best_val_loss"] and under_policy["val_loss"] == alone["val_loss"]
