import errno
import json
import os
import signal

import numpy as np
import pytest

from conftest import PERIOD, TINY_MODEL, TINY_TRAINING, files_snapshot, write_text
from textgen import checkpoint, training
from textgen.checkpoint import RunLock, load_model
from textgen.errors import TextgenError
from textgen.model import reset_states
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
    session = training._Session(checkpoint_config(meta), training_config(meta, batch_size=1))
    session.model.load_weights(str(checkpoint.verified_file(trained_run["run_dir"], meta, "weights")))
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1]], dtype="int32")
    reset_states(model)
    reset_states(session.model)
    assert np.abs(np.array(model(ids)) - np.array(session.model(ids))).max() < 1e-6


def checkpoint_config(meta):
    from textgen.config import ModelConfig
    return ModelConfig.from_dict(meta["model"])


def training_config(meta, **changes):
    import dataclasses

    from textgen.config import TrainConfig
    return dataclasses.replace(TrainConfig.from_dict(meta["training"]), **changes)


def test_resume_continues_exactly(tmp_path, periodic_corpus):
    model = dict(TINY_MODEL, dropout=0.2)  # dropout makes the RNG state part of what must resume
    straight = run(periodic_corpus, tmp_path / "a", epochs=2, model=model)
    run(periodic_corpus, tmp_path / "b", epochs=1, model=model)
    resumed = run(periodic_corpus, tmp_path / "b", epochs=2, model=model, resume=True)
    assert resumed["epoch"] == 2
    assert abs(resumed["val_loss"] - straight["val_loss"]) < 1e-3
    a, _ = load_model(tmp_path / "a" / "r", kind="last")
    b, _ = load_model(tmp_path / "b" / "r", kind="last")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)


def test_existing_run_is_never_silently_overwritten(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path)
    with pytest.raises(TextgenError, match="already has checkpoints.*--resume.*--overwrite"):
        run(periodic_corpus, tmp_path)
    assert files_snapshot(tmp_path) == before


def test_resume_refuses_other_vocabulary_or_shape(tmp_path, periodic_corpus):
    run(periodic_corpus, tmp_path)
    other = write_text(tmp_path / "other.txt", "xyz" * 5000)
    before = files_snapshot(tmp_path)
    with pytest.raises(TextgenError, match="vocabulary differs"):
        run(other, tmp_path, epochs=2, resume=True)
    with pytest.raises(TextgenError, match=r"--units 64 \(checkpoint has 32\)"):
        run(periodic_corpus, tmp_path, epochs=2, model=dict(TINY_MODEL, units=64), resume=True)
    assert files_snapshot(tmp_path) == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, periodic_corpus, monkeypatch):
    run(periodic_corpus, tmp_path)
    before = files_snapshot(tmp_path / "r")
    original = training._Session.__init__

    def poisoned(self, *args):
        original(self, *args)
        self.train_step = lambda x, y: np.float32("nan")
    monkeypatch.setattr(training._Session, "__init__", poisoned)
    with pytest.raises(TextgenError, match="loss became NaN.*last good checkpoint.*lower --learning-rate"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True)
    assert files_snapshot(tmp_path / "r") == before


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, periodic_corpus, monkeypatch):
    run(periodic_corpus, tmp_path)
    last = (tmp_path / "r" / "last.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.np, "savez", full)
    with pytest.raises(TextgenError, match="disk is full; the previous checkpoint is kept"):
        run(periodic_corpus, tmp_path, epochs=2, resume=True)
    assert (tmp_path / "r" / "last.json").read_bytes() == last
    model, meta = load_model(tmp_path / "r", kind="last")
    assert meta["epoch"] == 1


def test_signal_saves_a_resumable_checkpoint_mid_epoch(tmp_path, periodic_corpus, monkeypatch):
    original = training._Session.__init__

    def interrupt_at_step_5(self, *args):
        original(self, *args)
        step, calls = self.train_step, []

        def counted(x, y):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGINT)
            return step(x, y)
        self.train_step = counted
    monkeypatch.setattr(training._Session, "__init__", interrupt_at_step_5)
    with pytest.raises(Interrupted, match="resume with: textgen train") as stopped:
        run(periodic_corpus, tmp_path)
    assert stopped.value.exit_code == 130
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert (meta["epoch"], meta["step_in_epoch"]) == (0, 5)
    monkeypatch.setattr(training._Session, "__init__", original)
    resumed = run(periodic_corpus, tmp_path, resume=True)
    assert resumed["epoch"] == 1 and resumed["history"][-1]["step"] == 118


def test_second_training_in_the_same_run_is_refused_while_locked(tmp_path, periodic_corpus):
    with RunLock(tmp_path / "r"):
        with pytest.raises(TextgenError, match=r"another training \(pid \d+\) is using"):
            run(periodic_corpus, tmp_path)
    run(periodic_corpus, tmp_path)  # the lock is released: training works
    assert not (tmp_path / "r" / ".lock").exists()


def test_corpus_too_short_names_the_minimum_and_smaller_values(tmp_path):
    short = write_text(tmp_path / "short.txt", "abc" * 100)
    with pytest.raises(TextgenError, match="too short.*one batch needs 161.*--batch-size 1 --seq-length 20"):
        run(short, tmp_path)
    assert not (tmp_path / "r" / "last.json").exists()


def test_learning_rate_schedule():
    from textgen.config import TrainConfig
    config = TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_after=2)
    assert [training.learning_rate_for(config, e) for e in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.125]
