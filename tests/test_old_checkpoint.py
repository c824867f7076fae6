"""A run written by textgen 0.1.0 (tests/fixtures/release-0.1.0) still loads, samples and resumes."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from textgen import checkpoint
from textgen.config import ModelConfig, TrainConfig, rules
from textgen.checkpoint import FORMAT_VERSION, CheckpointMeta
from textgen.errors import TextgenError
from textgen.generate import Generator, generate
from textgen.training import train

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"


def copy_of_fixture(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "release"))


# The training options that 0.1.0's metadata lacks, with what a run trained then did (their before= in TrainConfig):
# a new option is added here.
ADDED_SINCE_0_1_0 = {"size": "fixed", "val_max_chars": 0}
MODEL_ADDED_SINCE_0_1_0 = {}  # the same for ModelConfig's options


def test_old_run_predicts_what_it_did_then(tmp_path):
    """0.1.0's greedy sample of "The ", read from a fresh state as 0.1.0 read a prime, comes again: its weights and
    vocabulary load as they were. (Sampling now reads a line break before a prime: generate.reading_context.)"""
    root = copy_of_fixture(tmp_path)
    generator = Generator.load(root / "checkpoints" / "old")
    expected = (FIXTURE / "greedy-sample.txt").read_text(encoding="utf-8").removesuffix("\n")
    text = "The "
    with generator.engine(1) as engine:
        engine.reset()
        logits = engine.logits(generator.vocab.encode(text)[None, :].astype(np.int32))[0, -1]
        while len(text) < len(expected):
            text += generator.vocab.chars[int(np.argmax(logits))]
            logits = engine.logits(generator.vocab.encode(text[-1])[None, :].astype(np.int32))[0, -1]
    assert text == expected
    [sample] = generate(root / "checkpoints", "old", prime="The ", length=60, temperatures=[0])
    assert sample.text.startswith("The ") and len(sample.text) == len(expected)


def test_old_run_resumes_with_its_saved_options_and_history(tmp_path):
    root = copy_of_fixture(tmp_path)
    old = checkpoint.read_meta(root / "checkpoints" / "old", "last")
    messages = []
    summary = train(root / "corpus.txt", root / "checkpoints", run="old", resume=True,
                    train_options=dict(epochs=old.state.epoch + 1), log=messages.append)
    new = checkpoint.read_meta(root / "checkpoints" / "old", "last")
    assert old.state.step_in_epoch == 0
    assert messages[0] == f"resuming {root / 'checkpoints' / 'old'} at the start of epoch {old.state.epoch + 1}"
    # only what changed is named (--max-minutes stayed 0)
    assert messages[1] == f"resuming with other options for the rest of the run: --epochs {old.state.epoch + 1} " \
                          f"(was {old.training.epochs})"
    assert messages[2].startswith("note: the run's new length re-stretches the cosine schedule: the learning rate "
                                  "goes from ")
    assert summary["epoch"] == new.state.epoch == old.state.epoch + 1
    untexted = [{key: value for key, value in row.items() if key != "text"} for row in new.state.history[:-1]]
    assert untexted == old.state.history and new.state.history[-1]["epoch"] == old.state.epoch + 1
    from textgen.report import info_text

    assert f"precision      not recorded (an older textgen) in epochs 1-{old.state.epoch}, float32 in epoch " \
           f"{old.state.epoch + 1}\n" in info_text(root / "checkpoints" / "old")
    rows = (root / "checkpoints" / "old" / "history.csv").read_text().splitlines()  # as the resumed run wrote it
    assert rows[0].endswith(",seconds,precision,text") and re.search(r",,[0-9a-f]{16}$", rows[1])
    assert re.search(r",float32,[0-9a-f]{16}$", rows[-1])
    # its rows without a text are given the checkpoint's, so a resume on another text would start a span of its own
    assert {row["text"] for row in new.state.history} == {old.corpus["blake2b"][:16]}
    assert "\ntexts " not in info_text(root / "checkpoints" / "old")
    assert new.model == old.model and new.vocab == old.vocab
    assert new.training == dataclasses.replace(old.training, epochs=old.state.epoch + 1)
    assert new.state.global_step == old.state.global_step * (old.state.epoch + 1) // old.state.epoch
    # Resumed at a low learning rate near the end of a cosine schedule: no large jump from the saved loss.
    assert abs(new.state.val_loss - old.state.val_loss) < 0.1
    # A cap on validation it did not have is refused, saying what its 0 means
    with pytest.raises(TextgenError, match=r"--val-max-chars 500 \(checkpoint has 0: no limit\); drop these options"):
        train(root / "corpus.txt", root / "checkpoints", run="old", resume=True,
              train_options=dict(epochs=old.state.epoch + 2, val_max_chars=500), log=messages.append)


def test_old_metadata_reads_into_the_schema_and_writes_back_the_same_json(tmp_path):
    raw = json.loads((FIXTURE / "checkpoints" / "old" / "last.json").read_text(encoding="utf-8"))
    meta = CheckpointMeta.from_json(raw)
    assert (meta.model.units, meta.training.seq_length, len(meta.vocab)) == (32, 20, len(raw["vocab"]))
    assert meta.state.epoch == 8 and meta.textgen_version == "0.1.0"
    # Options added since 0.1.0 are written back with what the run did before they existed (--size fixed).
    added = {name: rule.before for name, rule in rules(TrainConfig).items() if name not in raw["training"]}
    assert added == ADDED_SINCE_0_1_0, ("an option added to TrainConfig: declare with before= what runs trained "
                                        "before it did, and add it to ADDED_SINCE_0_1_0")
    added_model = {name: rule.before for name, rule in rules(ModelConfig).items() if name not in raw["model"]}
    assert added_model == MODEL_ADDED_SINCE_0_1_0, ("an option added to ModelConfig: declare with before= what runs "
                                                    "trained before it did, and add it to MODEL_ADDED_SINCE_0_1_0")
    # Written back in today's format, which a textgen reading only 0.1.0's refuses rather than misreads
    assert meta.to_json() == {**raw, "training": {**raw["training"], **added}, "model": {**raw["model"], **added_model},
                              "format_version": FORMAT_VERSION}
    assert raw["format_version"] == 1 < FORMAT_VERSION


def test_a_textgen_that_reads_format_1_refuses_todays_runs_as_newer(trained_run, monkeypatch):
    """Format 1 readers misread today's runs: a run of --max-minutes alone (epochs 0) was "damaged", and they should
    be deleted; a run of --val-max-chars resumed with another validation slice. They refuse a newer format instead."""
    written = json.loads((trained_run["run_dir"] / "best.json").read_text(encoding="utf-8"))
    assert written["format_version"] == FORMAT_VERSION
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)  # what an older textgen reads
    with pytest.raises(checkpoint.CheckpointTooNew, match=f"checkpoint format {FORMAT_VERSION}; this textgen .* reads "
                                                          "format 1\\); upgrade textgen"):
        CheckpointMeta.from_json(written)
