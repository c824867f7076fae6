import csv
import dataclasses
import json
import math
import os
import shutil
import struct

import pytest
from click.testing import CliRunner

from conftest import PERIOD, TINY_MODEL, TINY_TRAINING, write_text
from textgen.cli import cli


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_history_csv_has_one_consistent_row_per_epoch(trained_run):
    rows = list(csv.DictReader(open(trained_run["run_dir"] / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    steps = [int(r["step"]) for r in rows]
    assert steps == [118, 236, 354]
    assert [int(r["chars_seen"]) for r in rows] == [s * 8 * 20 for s in steps]
    for row, entry in zip(rows, trained_run["history"]):
        assert float(row["val_loss"]) == pytest.approx(entry["val_loss"])
        assert float(row["val_bpc"]) == pytest.approx(float(row["val_loss"]) / math.log(2))
        assert float(row["train_bpc"]) == pytest.approx(float(row["train_loss"]) / math.log(2))
    assert min(float(r["val_loss"]) for r in rows) == pytest.approx(trained_run["best_val_loss"])


def test_each_epoch_records_the_precision_it_trained_in(tmp_path):
    """--mixed-precision auto depends on the CPU, and a run resumed on another machine may change: info says what
    each epoch really used, and history.csv has it per row."""
    from textgen.report import info_text
    from textgen.training import train

    corpus = write_text(tmp_path / "period.txt", PERIOD * 600)
    quiet = dict(model_options=TINY_MODEL, log=lambda message: None)
    train(corpus, tmp_path, run="r", train_options=dict(TINY_TRAINING, epochs=2, mixed_precision="on"), **quiet)
    train(corpus, tmp_path, run="r", resume=True, train_options=dict(epochs=3, mixed_precision="off"), **quiet)
    assert [row["precision"] for row in csv.DictReader(open(tmp_path / "r" / "history.csv"))] == \
        ["bfloat16", "bfloat16", "float32"]
    assert "\nprecision      LSTM matmuls in bfloat16 (mixed precision) in epochs 1-2, float32 in epoch 3\n" in \
        info_text(tmp_path / "r")


def test_curve_png_is_an_image_and_is_redrawn(trained_run):
    curve = trained_run["run_dir"] / "curve.png"
    width, height = png_size(curve)
    assert width > 300 and height > 200
    history = trained_run["run_dir"] / "history.csv"
    rows = history.read_text()
    curve.unlink()
    history.unlink()
    result = CliRunner().invoke(cli, ["plot", "--checkpoint-dir", str(trained_run["checkpoint_dir"])])
    assert result.exit_code == 0, result.output
    assert png_size(curve) == (width, height) and history.read_text() == rows
    assert result.stdout.splitlines() == [str(history), str(curve)]  # both files it wrote


def test_info_and_runs_show_the_stored_numbers(trained_run):
    meta = json.loads((trained_run["run_dir"] / "best.json").read_text())
    runner = CliRunner()
    info = runner.invoke(cli, ["info", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run", "period"])
    assert info.exit_code == 0, info.output
    assert f"{meta['val_loss']:.4f} nats ({meta['val_loss'] / math.log(2):.3f} bpc)" in info.output
    assert "7 symbols: abcdefg" in info.output
    assert "1 x LSTM(32), embedding 8" in info.output
    from textgen.checkpoint import load_model
    model, _ = load_model(trained_run["run_dir"])
    assert f"{model.count_params():,} parameters" in info.output
    assert "\nprecision      float32 in every epoch\n" in info.output  # 32 units: auto stays in float32 anywhere
    training = next(line for line in info.output.splitlines() if line.startswith("training "))
    assert "lr_schedule cosine" in training and "lr_decay" not in training  # what a cosine run never read
    # the steps, characters and minutes (a run of --epochs lost them to a misplaced conditional)
    assert f"\nprogress       3 of 3 epochs, {meta['global_step']:,} steps, {meta['chars_seen']:,} characters, " \
        in info.output
    runs = runner.invoke(cli, ["runs", "--checkpoint-dir", str(trained_run["checkpoint_dir"])])
    assert runs.exit_code == 0
    header, row = runs.output.strip().splitlines()
    assert header.split()[:3] == ["run", "corpus", "characters"]
    assert row.split()[:5] == ["period", "period.txt", "21,000", "3/3", f"{meta['val_loss'] / math.log(2):.3f}"]



def test_info_json_is_the_runs_row_with_the_vocabulary_and_the_history(trained_run, tmp_path):
    """The experimenter's sweep read history.csv and best.json by hand: `info` had no form for scripts."""
    options = ["--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run", "period"]
    runner = CliRunner()
    info = runner.invoke(cli, ["info", *options, "--json"])
    assert info.exit_code == 0, info.output
    record = json.loads(info.stdout)
    (listed,) = json.loads(runner.invoke(cli, ["runs", "--checkpoint-dir", options[1], "--json"]).stdout)
    assert {key: record[key] for key in listed} == listed and listed["name"] == "period"
    assert record["vocabulary"] == list("abcdefg")
    written = list(csv.DictReader(open(trained_run["run_dir"] / "history.csv")))
    assert [row["epoch"] for row in record["history"]] == [int(row["epoch"]) for row in written] == [1, 2, 3]
    assert [row["val_bpc"] for row in record["history"]] == pytest.approx([float(row["val_bpc"]) for row in written],
                                                                          abs=1e-4)
    assert min(row["val_bpc"] for row in record["history"]) == pytest.approx(listed["val_bpc"])
    shutil.copytree(trained_run["run_dir"], tmp_path / "broken")
    (tmp_path / "broken" / "last.json").write_text("{")
    (tmp_path / "broken" / "best.json").write_text("{")
    refused = runner.invoke(cli, ["info", "--checkpoint-dir", str(tmp_path), "--run", "broken", "--json"])
    assert refused.exit_code == 1 and refused.stdout == "" and "Traceback" not in refused.output
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    both = runner.invoke(cli, ["info", *options, "--json", "--vocabulary"])  # (--vocabulary was dropped in silence)
    assert both.exit_code == 2 and both.stdout == ""
    assert "--json holds the vocabulary (its \"vocabulary\" key): give --json or --vocabulary, not both" in both.stderr


def test_runs_shows_the_runs_a_training_is_writing_now_those_without_a_checkpoint_too(trained_run, tmp_path):
    """A training in its first epoch (hours on a large text) was not listed at all, and a listed run gave no sign
    that a training was writing it: the teacher's class could not tell which runs were still going."""
    import textgen
    from textgen.checkpoint import RunLock

    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "going")
    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "done")
    (tmp_path / "ck" / "started").mkdir()
    (tmp_path / "ck" / "started" / "corpus.json").write_text("{}")  # what a training writes before its first save
    (tmp_path / "ck" / "killed").mkdir()
    (tmp_path / "ck" / "killed" / ".lock").write_text("999999999")  # a killed training's lock: nothing holds it
    runner = CliRunner()
    with RunLock(tmp_path / "ck" / "going"), RunLock(tmp_path / "ck" / "started"):
        listing = runner.invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path / "ck")])
        listed = textgen.list_runs(tmp_path / "ck")
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert sorted(rows) == ["done", "going", "killed", "started"]
    assert "no checkpoint: a training ended before its first save (train it again, or delete the folder)" in \
        rows["killed"]
    assert listing.stdout.splitlines()[1].split()[:6] == ["started", "no", "checkpoint", "yet,", "training", "now"]
    assert f"no checkpoint yet, training now (pid {os.getpid()})" in rows["started"]
    assert rows["started"].split()[-4:] == ["-"] * 4
    assert rows["going"].endswith(f", training now (pid {os.getpid()})")
    assert "training" not in rows["done"]
    by_name = {run["name"]: run for run in listed}
    assert (by_name["started"]["training"], by_name["started"]["problem"]) == (os.getpid(), "no checkpoint yet")
    assert (by_name["going"]["training"], by_name["going"]["problem"]) == (os.getpid(), None)  # (a key in every row)
    assert by_name["done"]["training"] is None and by_name["going"]["epochs"] == by_name["done"]["epochs"] == 3
    # Once the trainings end, a folder a training left without a checkpoint is told as such (its corpus cache may
    # be hundreds of MB: nothing showed it)
    after = runner.invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path / "ck")])
    rows = {line.split()[0]: line for line in after.stdout.splitlines()[1:]}
    assert sorted(rows) == ["done", "going", "killed", "started"] and "training now" not in after.stdout
    assert "a training ended before its first save" in rows["started"]


def test_info_lists_a_large_vocabulary_in_full_when_asked(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run["run_dir"], tmp_path / "big")
    for kind in ("best", "last"):  # a Chinese corpus's vocabulary: the preview showed its ASCII only
        meta_path = tmp_path / "big" / f"{kind}.json"
        meta = json.loads(meta_path.read_text())
        meta["vocab"] = list(range(32, 127)) + list(range(0x4E00, 0x4E00 + 1900))
        meta["model"]["vocab_size"] = len(meta["vocab"])
        meta_path.write_text(json.dumps(meta))
    runner = CliRunner()
    info = runner.invoke(cli, ["info", "--checkpoint-dir", str(tmp_path), "--run", "big"])
    assert info.exit_code == 0, info.output
    assert "1,995 symbols:  !\"#$%" in info.stdout
    [line] = [line for line in info.stdout.splitlines() if "1,995 symbols" in line]
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in line) >= 20  # a spread of the whole vocabulary, not only ASCII
    assert f"... (textgen info --checkpoint-dir {tmp_path} --run big --vocabulary lists them all)" in info.stdout
    listed = runner.invoke(cli, ["info", "--checkpoint-dir", str(tmp_path), "--run", "big", "--vocabulary"])
    assert listed.exit_code == 0 and listed.stdout == "".join(map(chr, meta["vocab"])) + "\n"
    small = runner.invoke(cli, ["info", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run", "period"])
    assert "7 symbols: abcdefg\n" in small.stdout  # nothing more to list
    for kind in ("best", "last"):  # an English text's 100-odd symbols: all of them (a spread seemed to lack i and r)
        meta_path = tmp_path / "big" / f"{kind}.json"
        meta = json.loads(meta_path.read_text())
        meta["vocab"] = [10] + list(range(32, 127)) + [0x2019, 0x201C, 0x201D]
        meta["model"]["vocab_size"] = len(meta["vocab"])
        meta_path.write_text(json.dumps(meta))
    english = runner.invoke(cli, ["info", "--checkpoint-dir", str(tmp_path), "--run", "big"])
    assert "99 symbols: \\n " + "".join(map(chr, range(33, 127))) + "\u2019\u201c\u201d\n" in english.stdout


def test_runs_table_aligns_columns_after_wide_characters(trained_run, tmp_path):
    import shutil

    import unicodedata

    from textgen.report import runs_table

    names = (("latin", "/texts/notes.txt"), ("小说", "/texts/小说笔记.txt"), ("été", "/texts/e\u0301te\u0301.txt"),
             ("rlo", "/texts/ab\u202ecd\tef.txt"))  # a right-to-left override showed the rest of its line reversed
    for name, corpus in names:
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
        for kind in ("best", "last"):
            meta_path = tmp_path / name / f"{kind}.json"
            meta = json.loads(meta_path.read_text())
            meta["corpus"]["path"] = corpus
            meta_path.write_text(json.dumps(meta, ensure_ascii=False))
    lines = runs_table([tmp_path / name for name, _ in names]).splitlines()
    assert "小说笔记.txt" in lines[2]
    # the "characters" column starts at the same screen column on every line (an accent mark takes none)
    length = f"{json.loads((tmp_path / '小说' / 'last.json').read_text())['corpus']['length']:,}"
    def screen(text):  # measured independently of report._columns, which laid the table out
        return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) == "W" else 1
                   for ch in text)
    starts = {screen(line[:line.index(word)]) for line, word in zip(lines, ("characters", length, length, length,
                                                                             length))}
    assert len(starts) == 1, lines
    assert "ab\\u202ecd\\tef.txt " in lines[4] and "\u202e" not in "".join(lines)
    assert "e\u0301te\u0301.txt" in lines[3]  # marks that draw into a letter stay as they are
    from textgen.report import info_text

    assert "corpus         /texts/ab\\u202ecd\\tef.txt (" in info_text(tmp_path / "rlo")


def damaged_copy(trained_run, tmp_path, name, kind="best"):
    """A copy of the trained run whose metadata file of kind holds garbage, as a crash of the disk leaves it."""
    import shutil

    run_dir = tmp_path / "ck" / name
    shutil.copytree(trained_run["run_dir"], run_dir)
    (run_dir / f"{kind}.json").write_text('{"format": "textgen-checkp')
    return run_dir


def test_info_runs_and_plot_read_a_run_whose_other_metadata_file_is_damaged_as_sample_does(trained_run, tmp_path):
    """sample and eval fall back from a damaged best.json to last.json; info, runs and plot failed on the same run,
    and every message said to delete the run directory, which would lose the checkpoint that still loads."""
    import shutil

    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "good")
    damaged_copy(trained_run, tmp_path, "nobest")
    ck = str(tmp_path / "ck")
    runner = CliRunner()
    info = runner.invoke(cli, ["info", "--checkpoint-dir", ck, "--run", "nobest"])
    assert info.exit_code == 0, info.output
    assert "\nbest           best.json cannot be read (see the warning)\n" in info.stdout
    assert "\nlast           epoch 3: validation " in info.stdout
    warning = info.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: run 'nobest': checkpoint metadata ")
    assert warning[0].endswith("best.json is damaged (Unterminated string starting at: line 1 column 12 (char 11)); "
                               "sample and eval use its last checkpoint")
    sample = runner.invoke(cli, ["sample", "--checkpoint-dir", ck, "--run", "nobest", "-n", "5"])
    assert sample.exit_code == 0 and "delete the run directory" not in sample.stderr
    assert "is damaged" in sample.stderr and "using the last checkpoint instead" in sample.stderr

    listing = runner.invoke(cli, ["runs", "--checkpoint-dir", ck])
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["nobest"][1:5] == rows["good"][1:5]  # corpus, characters, epochs, best val bpc (from last.json)
    assert f"{trained_run['best_val_loss'] / math.log(2):.3f}" == rows["nobest"][4]
    assert listing.stderr.count("warning: run 'nobest': ") == 1

    damaged_copy(trained_run, tmp_path, "nolast", kind="last")
    (tmp_path / "ck" / "nolast" / "curve.png").unlink()
    plot = runner.invoke(cli, ["plot", "--checkpoint-dir", ck, "--run", "nolast"])
    assert plot.exit_code == 0, plot.output
    assert png_size(tmp_path / "ck" / "nolast" / "curve.png")[0] > 300
    both = damaged_copy(trained_run, tmp_path, "neither")
    (both / "last.json").write_text("[")
    info = runner.invoke(cli, ["info", "--checkpoint-dir", ck, "--run", "neither"])
    assert info.exit_code == 1 and "best.json is damaged" in info.stderr and "delete the run directory" in info.stderr
    # last.json deleted: info showed the best checkpoint's epoch as the last one, which resume then said was missing
    (shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "gone") / "last.json").unlink()
    info = runner.invoke(cli, ["info", "--checkpoint-dir", ck, "--run", "gone"])
    assert info.exit_code == 0, info.output
    assert "\nlast           none (no last.json, so the run cannot be resumed)\n" in info.stdout


def test_runs_lists_a_run_whose_metadata_files_are_both_gone_and_info_checks_each_named_file(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "good")
    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "lost")
    for kind in ("best", "last"):
        (tmp_path / "ck" / "lost" / f"{kind}.json").unlink()
    (tmp_path / "ck" / "notes").mkdir()  # a folder of the user's, not a run
    ck = str(tmp_path / "ck")
    listing = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", ck])
    assert listing.exit_code == 0, listing.output
    assert [line.split()[:2] for line in listing.stdout.splitlines()[1:]] == \
        [["good", "period.txt"], ["lost", "damaged"]]
    assert f"(textgen info --checkpoint-dir {ck} --run lost says why)" in listing.stdout
    # The run directory itself as --checkpoint-dir, as info and sample take it: it said "no runs".
    listing = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path / "ck" / "lost")])
    assert listing.exit_code == 0 and [line.split()[:2] for line in listing.stdout.splitlines()[1:2]] == \
        [["lost", "damaged"]], listing.output
    info = CliRunner().invoke(cli, ["info", "--checkpoint-dir", str(tmp_path / "ck" / "lost")])
    assert info.exit_code == 1 and f"{tmp_path / 'ck' / 'lost'} holds checkpoint files but no best.json or last.json " \
        "to name them: a damaged run" in info.output, info.output  # it said "no checkpoint in ...; train one first"

    meta = json.loads((tmp_path / "ck" / "good" / "best.json").read_text())
    weights, state = meta["files"]["weights"]["name"], meta["files"]["state"]["name"]
    info = CliRunner().invoke(cli, ["info", "--checkpoint-dir", ck, "--run", "good"]).stdout
    assert [line.split()[-4:] for line in info.splitlines() if line.startswith(f"  {weights}")] == \
        [["best,", "last:", "checksum", "ok"]]
    path = tmp_path / "ck" / "good" / weights
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "ck" / "good" / state).unlink()
    info = CliRunner().invoke(cli, ["info", "--checkpoint-dir", ck, "--run", "good"]).stdout
    assert f"  {weights}" in info and info.split(f"  {weights}")[1].split("\n")[0].endswith(
        "best, last: corrupted (checksum mismatch)")
    assert f"\n  {state:<40} {'-':>10}  best, last: missing\n" in info


def test_a_fallback_from_a_corrupted_best_checkpoint_gives_no_advice_to_train_again(trained_run, tmp_path):
    """The last checkpoint loads: "train again with --overwrite" would throw it away."""
    import shutil

    run_dir = tmp_path / "ck" / "r"
    shutil.copytree(trained_run["run_dir"], run_dir)
    meta = json.loads((run_dir / "best.json").read_text())
    bad = run_dir / "ckpt-copy-000000001.weights.h5"  # best names a copy of the weights that then got damaged
    data = bytearray((run_dir / meta["files"]["weights"]["name"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    meta["files"]["weights"]["name"] = bad.name
    (run_dir / "best.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(cli, ["sample", "--checkpoint-dir", str(tmp_path / "ck"), "-n", "5"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (f"warning: checkpoint file {bad} is corrupted (checksum mismatch); using the "
                                     "last checkpoint instead")


def test_the_curve_of_a_run_named_in_chinese_is_drawn_without_missing_glyphs(tmp_path):
    import warnings

    from textgen.report import curve_title, plot_history

    history = [dict(chars_seen=1000 * (epoch + 1), train_bpc=3.0 - epoch, val_bpc=2.9 - epoch) for epoch in range(2)]
    (tmp_path / "红楼梦").mkdir()
    with warnings.catch_warnings(record=True) as caught:  # a warning per character, and squares in the title
        warnings.simplefilter("always")
        path = plot_history(tmp_path / "红楼梦", history)
    assert png_size(path) == (770, 462) and not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert curve_title("红楼梦") == "textgen run" and curve_title("été-2") == "textgen run 'été-2'"


def test_drawing_the_curve_leaves_the_processs_matplotlib_alone(trained_run, tmp_path):
    """Every epoch's curve called matplotlib.use("Agg"): after a training, a notebook's own plots stopped showing
    (its inline backend was gone), with no message."""
    import matplotlib
    from matplotlib import pyplot

    from textgen.report import plot_history

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # (not the Agg that textgen draws with)
    try:
        path = plot_history(tmp_path, trained_run["history"])
        assert (matplotlib.get_backend(), pyplot.get_fignums()) == ("svg", [])
    finally:
        matplotlib.use(before)
    assert png_size(path) == (770, 462)


def test_the_curve_marks_the_runs_best_checkpoint_not_the_lowest_loss_of_another_text(tmp_path, monkeypatch):
    """After a resume on another text, curve.png said 'best 2.759', a checkpoint gone: the best started over on the
    new text at 2.880, as runs and info said."""
    from matplotlib.axes import Axes

    from textgen.report import plot_history

    marked = []
    annotate = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *args, **kwargs: marked.append(text) or annotate(
        self, text, *args, **kwargs))
    history = [dict(epoch=epoch, chars_seen=1000 * epoch, train_bpc=val + 0.1, val_bpc=val, val_loss=val * 0.69)
               for epoch, val in ((1, 3.0), (2, 2.759), (3, 2.95), (4, 2.88))]
    plot_history(tmp_path, history, best_val_loss=2.88 * 0.69)
    plot_history(tmp_path, history)  # without the run's state (an older caller): the lowest
    assert marked == ["best 2.880", "best 2.759"]


def test_the_curve_marks_a_best_checkpoint_saved_mid_epoch_and_runs_counts_its_steps(tmp_path, monkeypatch):
    """A time budget's stop validates mid-epoch: its row is numbered epoch + 1 while the best epoch counts whole
    epochs, and the curve marked the row before. textgen runs said "1/3", as if nothing had been trained since (a
    run on a large text stopped by its budget in its first epoch read "0")."""
    from matplotlib.axes import Axes

    from textgen.callbacks import Callback
    from textgen.checkpoint import read_meta
    from textgen.report import plot_history, run_rows, runs_table, steps_cut_short

    marked = []
    annotate = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda self, text, *args, **kwargs: marked.append(text) or annotate(
        self, text, *args, **kwargs))
    from textgen.training import train

    corpus = write_text(tmp_path / "p.txt", PERIOD * 3000)

    class StopMidEpoch(Callback):
        def on_step_end(self, run, loss):
            if run.state.epoch == 1 and run.state.step_in_epoch == 40:
                run.stop("budget", now=True)

    train(corpus, tmp_path / "ck", run="r", model_options=TINY_MODEL, train_options=dict(TINY_TRAINING, epochs=3),
          callbacks=[StopMidEpoch()], log=lambda message: None)
    state = read_meta(tmp_path / "ck" / "r", "last").state
    assert state.step_in_epoch == 40 and state.best_epoch == 1 and state.history[-1]["epoch"] == 2
    assert state.best_val_loss == state.history[-1]["val_loss"]  # the best is the mid-epoch validation's
    assert marked[-1] == f"best {state.history[-1]['val_bpc']:.3f}"  # as training drew it
    marked.clear()
    plot_history(tmp_path / "ck" / "r", state.history, state.best_val_loss)  # as textgen plot draws it
    assert marked == [f"best {state.history[-1]['val_bpc']:.3f}"]
    # the stopped epoch's training mean is of its first 40 steps, marked as such (an "uptick" misread in a sweep)
    labels = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *args, **kwargs: labels.append(kwargs.get("label"))
                        or plot(self, *args, **kwargs))
    assert CliRunner().invoke(cli, ["plot", "--checkpoint-dir", str(tmp_path / "ck"), "--run", "r"]).exit_code == 0
    assert "training, an epoch stopped after 40 steps (their mean)" in labels
    labels.clear()
    plot_history(tmp_path / "ck" / "r", state.history[:-1], cut_short_steps=steps_cut_short(
        dataclasses.replace(state, history=state.history[:-1])))  # the epochs before: complete
    assert labels and not [label for label in labels if label and "stopped" in label]
    row = run_rows([tmp_path / "ck" / "r"])[0]
    assert (row["epochs"], row["step_in_epoch"], row["planned_epochs"]) == (1, 40, 3)
    assert "  1/3 + 40 steps  " in runs_table([tmp_path / "ck" / "r"]).splitlines()[1]
    from textgen.served_runs import Runs

    assert Runs(tmp_path / "ck", "r", (1,)).describe("r", tmp_path / "ck" / "r")["step_in_epoch"] == 40  # the page's
    import textgen

    assert textgen.load(tmp_path / "ck" / "r").info["step_in_epoch"] == 40


def test_a_file_that_cannot_be_written_is_named_as_the_user_knows_it_not_by_its_temporary_name(tmp_path):
    """textgen plot on a read-only run said "cannot write RUN/.tmp-history.csv": the file written first, renamed."""
    import errno

    from textgen.files import atomic_write

    def read_only(tmp):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    with pytest.raises(OSError) as failed:
        atomic_write(tmp_path / "history.csv", read_only)
    assert (failed.value.filename, failed.value.errno) == (str(tmp_path / "history.csv"), errno.EROFS)
    assert list(tmp_path.iterdir()) == []


def test_plot_draws_several_runs_validation_curves_in_one_picture(trained_run, tmp_path, monkeypatch):
    """A sweep's write-up needs its runs' curves side by side: a repeated --run drew the last run alone."""
    import shutil

    from matplotlib.axes import Axes

    changes = {"lr1": {}, "lr2": {"val_max_chars": 0},  # (the same slice held out: under the cap either way)
               "other": {"val_fraction": 0.2}, "windows": {"seq_length": 40}}
    for name, options in changes.items():
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
        for kind in ("best", "last"):
            path = tmp_path / name / f"{kind}.json"
            meta = json.loads(path.read_text())
            meta["training"].update(options)
            path.write_text(json.dumps(meta))
    drawn = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *args, **kwargs: drawn.append((kwargs.get("label"), args[1]))
                        or plot(self, *args, **kwargs))
    runner, ck = CliRunner(), ["--checkpoint-dir", str(tmp_path)]
    curve = (tmp_path / "lr1" / "curve.png").read_bytes()
    picture = tmp_path / "sweep.png"
    result = runner.invoke(cli, ["plot", *ck, "--run", "lr1", "--run", "lr2", "-o", str(picture)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{picture}\n" and result.stderr == "" and png_size(picture) == (770, 462)
    val_bpc = [row["val_bpc"] for row in trained_run["history"]]
    assert [label for label, _ in drawn if label] == ["lr1", "lr2", "each run's best checkpoint"]
    assert [list(values) for label, values in drawn if label in ("lr1", "lr2")] == [val_bpc, val_bpc]
    assert [values for label, values in drawn if label is None] == [[min(val_bpc)]] * 2  # each run's best marked
    assert (tmp_path / "lr1" / "curve.png").read_bytes() == curve  # the runs are left as they were
    result = runner.invoke(cli, ["plot", *ck, "--run", "lr1", "--run", "other", "-o", str(picture), "--overwrite"])
    assert result.exit_code == 0 and result.stderr.startswith("note: these runs were validated on different texts")
    result = runner.invoke(cli, ["plot", *ck, "--run", "lr1", "--run", "windows", "-o", str(picture), "--overwrite"])
    assert result.exit_code == 0 and result.stderr.startswith("note: these runs read their validation text in "
                                                              "different layouts")
    result = runner.invoke(cli, ["plot", *ck, "--run", "lr1", "--run", "lr2"])
    assert result.exit_code == 1 and result.stderr == ("error: several runs are drawn into one picture: name its "
                                                       "file with --output, such as --output runs.png\n")
    result = runner.invoke(cli, ["plot", *ck, "--run", "lr1", "--run", "missing", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "missing" in result.stderr and not (tmp_path / "x.png").exists()


def test_an_older_textgens_row_without_a_text_counts_with_the_rows_before_it():
    """An older textgen resuming a run records no text: its row made a span of its own, and info said the text
    had "changed at 1 resume" for a run on one text throughout."""
    from textgen.report import text_spans

    assert text_spans([dict(text="d1"), dict(text="d1"), {}]) == [(0, 2)]
    assert text_spans([{}, {}]) == [(0, 1)]
    assert text_spans([dict(text="d1"), {}, dict(text="d2"), {}]) == [(0, 1), (2, 3)]
