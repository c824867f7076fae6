"""A run written by textgen 0.1.0 (tests/fixtures/release-0.1.0) still loads, samples and resumes."""

import shutil
from pathlib import Path

from textgen import checkpoint
from textgen.generate import generate
from textgen.training import train

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0"


def copy_of_fixture(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "release"))


def test_old_run_samples_what_it_sampled_then(tmp_path):
    root = copy_of_fixture(tmp_path)
    [sample] = generate(root / "checkpoints", "old", prime="The ", length=60, temperatures=[0])
    assert sample.text + "\n" == (FIXTURE / "greedy-sample.txt").read_text(encoding="utf-8")


def test_old_run_resumes_with_its_saved_options_and_history(tmp_path):
    root = copy_of_fixture(tmp_path)
    old = checkpoint.read_meta(root / "checkpoints" / "old", "last")
    messages = []
    summary = train(root / "corpus.txt", root / "checkpoints", run="old", resume=True,
                    train_options=dict(epochs=old["epoch"] + 1), log=messages.append)
    new = checkpoint.read_meta(root / "checkpoints" / "old", "last")
    assert messages[0] == f"resuming {root / 'checkpoints' / 'old'} at epoch {old['epoch']}"
    assert summary["epoch"] == new["epoch"] == old["epoch"] + 1
    assert new["history"][:-1] == old["history"] and new["history"][-1]["epoch"] == old["epoch"] + 1
    assert new["model"] == old["model"] and new["vocab"] == old["vocab"]
    assert {key: value for key, value in new["training"].items() if key != "epochs"} == \
        {key: value for key, value in old["training"].items() if key != "epochs"}
    assert new["global_step"] == old["global_step"] * (old["epoch"] + 1) // old["epoch"]
    # Resumed at a low learning rate near the end of a cosine schedule: no large jump from the saved loss.
    assert abs(new["val_loss"] - old["val_loss"]) < 0.1
