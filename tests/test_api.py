"""The Python API end to end: textgen.train, textgen.load, generate, stream, score."""

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import textgen
from conftest import PERIOD, TINY_MODEL, TINY_TRAINING, tensorflow_load_failing, write_text
from textgen.callbacks import Callback
from textgen.errors import OptionError
from textgen.evaluation import evaluate


@pytest.fixture(scope="module")
def model(trained_run):
    return textgen.load(trained_run["run_dir"])


def test_load_by_directory_or_by_name_gives_the_same_model(trained_run, model):
    by_name = textgen.load("period", checkpoint_dir=trained_run["checkpoint_dir"])
    assert by_name.run_dir == model.run_dir
    assert model.vocab.chars == PERIOD and model.config.units == TINY_MODEL["units"]
    assert model.info["run"] == "period" and model.info["epochs"] == 3
    assert model.info["val_bpc"] == pytest.approx(trained_run["best_val_loss"] / math.log(2))
    assert model.info["parameters"] == model.config.parameter_count()
    assert [row["epoch"] for row in model.history] == [1, 2, 3]  # for a notebook's own plot
    assert model.history[-1]["val_bpc"] == pytest.approx(model.info["val_bpc"])
    assert model.history[0]["train_loss"] > model.history[-1]["train_loss"]
    latest = textgen.load(trained_run["checkpoint_dir"])  # a directory of runs: its latest one
    assert latest.run_dir == model.run_dir and isinstance(latest, textgen.TextModel)


def test_a_damaged_run_is_told_to_train_again_with_overwrite_as_a_keyword(trained_run, tmp_path):
    """load() advised "train again with --overwrite", a command-line flag, to a Python caller."""
    import json
    import shutil

    run_dir = shutil.copytree(trained_run["run_dir"], tmp_path / "r")
    for kind in ("best", "last"):
        weights = json.loads((run_dir / f"{kind}.json").read_text())["files"]["weights"]["name"]
        (run_dir / weights).unlink(missing_ok=True)  # (best and last may share it)
    with pytest.raises(textgen.TextgenError) as damaged:
        textgen.load(run_dir)
    assert str(damaged.value).endswith("is incomplete (train again with overwrite=True)"), damaged.value


def test_a_missing_last_checkpoint_falls_back_to_best_with_a_note(trained_run, tmp_path, caplog):
    """It was called a run stopped before its first validation."""
    import logging
    import shutil

    run_dir = shutil.copytree(trained_run["run_dir"], tmp_path / "r")
    (run_dir / "last.json").unlink()
    with caplog.at_level(logging.WARNING, logger="textgen"):
        model = textgen.load(run_dir, checkpoint="last")
    assert model.info["checkpoint"] == "best" and model.info["epochs"] == 3
    assert caplog.messages == ["note: run 'r' has no last checkpoint; using its best one"]


def test_damaged_weights_found_by_score_are_told_to_train_again_with_overwrite_as_a_keyword(trained_run):
    """score() of NaN weights advised "--overwrite", a command-line flag."""
    import contextlib

    import numpy as np

    damaged = textgen.load(trained_run["run_dir"])
    engine = damaged.generator.engine

    @contextlib.contextmanager
    def nan_logits(streams):
        with engine(streams) as taken:
            taken.logits = lambda ids: np.full((*ids.shape, len(damaged.vocab.chars)), np.nan, np.float32)
            yield taken
            del taken.logits

    damaged.generator.engine = nan_logits
    with pytest.raises(textgen.TextgenError, match="so its weights are damaged; train again with overwrite=True$"):
        damaged.score(PERIOD * 3)


def test_loading_in_several_threads_at_once_gives_the_programs_stderr_back():
    """Each thread's first load muted file descriptor 2 while TensorFlow was imported; a thread that saved it after
    another had muted it gave back /dev/null, and the program's stderr stayed silent for good (6 of 10 runs)."""
    code = """
import os, sys, threading
from textgen.quiet_import import import_tensorflow_quietly
before = os.fstat(2)
start = threading.Barrier(4)
def load():
    start.wait()
    import_tensorflow_quietly()
threads = [threading.Thread(target=load) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
after = os.fstat(2)
print((before.st_dev, before.st_ino) == (after.st_dev, after.st_ino))
print("the program's own line", file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n" and result.stderr == "the program's own line\n", result.stderr


def test_a_program_without_stderr_loads_tensorflow_and_keeps_descriptor_2_on_dev_null():
    """Started with 2>&-, the first textgen.load or train raised OSError (EBADF) where it mutes TensorFlow's import."""
    code = ("import os\nfrom textgen.quiet_import import import_tensorflow_quietly\nimport_tensorflow_quietly()\n"
            "print(os.readlink('/proc/self/fd/2'))")
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, timeout=300,
                            preexec_fn=lambda: os.close(2))
    assert (result.returncode, result.stdout) == (0, f"{os.devnull}\n")


def test_train_with_resume_auto_starts_then_returns_the_complete_run(tmp_path):
    corpus = write_text(tmp_path / "own.txt", PERIOD * 400)
    options = dict(run="own", checkpoint_dir=tmp_path / "ck", resume="auto", units=8, embedding_dim=4, batch_size=4,
                   seq_length=10, epochs=1, verbose=False)
    started = textgen.train(corpus, **options)
    weights = sorted((tmp_path / "ck" / "own").glob("*.weights.h5"))
    again = textgen.train(corpus, **options)
    assert again.info["epochs"] == started.info["epochs"] == 1
    assert sorted((tmp_path / "ck" / "own").glob("*.weights.h5")) == weights
    assert again.generate("abc", length=20, seed=1) == started.generate("abc", length=20, seed=1)
    with pytest.raises(OptionError, match='resume must be True, False or "auto", got \'yes\''):
        textgen.train(corpus, **dict(options, resume="yes"))


@pytest.mark.parametrize("raised_in_between, in_handler, told",
                         [("KeyboardInterrupt()", False, "KeyboardInterrupt"), (None, False, "ImportError"),
                          (None, True, "ImportError")])
def test_ctrl_c_while_tensorflow_loads_is_a_keyboard_interrupt(raised_in_between, in_handler, told):
    """Ctrl-C while the first textgen.load imported TensorFlow raised TensorFlow's ImportError ("initialization
    failed"), not the KeyboardInterrupt a program stops on; an import that fails of itself stays an ImportError,
    also inside the program's own handling of an earlier Ctrl-C."""
    load = "import_tensorflow_quietly()"
    if in_handler:
        load = f"try:\n        raise KeyboardInterrupt\n    except KeyboardInterrupt:\n        {load}"
    code = tensorflow_load_failing(raised_in_between) + (
        f"from textgen.quiet_import import import_tensorflow_quietly\ntry:\n    {load}\n"
        "except BaseException as error:\n    print(type(error).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout == told + "\n", result.stdout + result.stderr


def test_help_shows_the_api_docs_and_import_textgen_stays_light():
    """textgen.load and textgen.train were one-line wrappers ("see textgen.api.load"), and textgen.TextModel, which
    load returns, was not there."""
    assert "directory of runs" in textgen.load.__doc__ and "**options: any ``textgen train`` option" in \
        textgen.train.__doc__
    assert textgen.TextModel.__module__ == "textgen.api" and {"load", "train", "TextModel"} <= set(dir(textgen))
    imported = subprocess.run([sys.executable, "-c", "import sys, textgen; print(sorted({'numpy', 'tensorflow'} & "
                               "set(sys.modules)))\n"
                               "print(textgen.callbacks.Callback.__name__, textgen.evaluation.evaluate.__name__, "
                               "hasattr(textgen, 'nonesuch'), hasattr(textgen, 'training.x'))"], capture_output=True,
                              text=True, check=True).stdout
    # what `textgen --help` imports stays instant; README's lower level (textgen.callbacks.Callback) is there without
    # an import of its own (an AttributeError)
    assert imported.splitlines() == ["[]", "Callback evaluate False False"]


def test_a_name_is_a_run_under_the_checkpoint_directory_whatever_the_working_directory_holds(trained_run, tmp_path,
                                                                                             monkeypatch):
    (tmp_path / "period" / "elsewhere").mkdir(parents=True)  # a folder of the run's name in the cwd
    monkeypatch.chdir(tmp_path)
    assert textgen.load("period", checkpoint_dir=trained_run["checkpoint_dir"]).run_dir == trained_run["run_dir"]


def test_a_path_with_no_run_says_whether_it_is_missing_or_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("abc")
    for path, what in ((tmp_path / "checkpoints" / "demo", "no such directory"),
                       (tmp_path / "notes.txt", "a file, not a run's directory")):
        with pytest.raises(textgen.TextgenError, match=rf"^no run at '{re.escape(str(path))}': {what}; give a run's "
                                                       rf"directory, or a run's name under checkpoint_dir "
                                                       rf"\({re.escape(str(tmp_path))}\)$"):
            textgen.load(path, checkpoint_dir=tmp_path)
    with pytest.raises(textgen.TextgenError, match=r"^no run at 'checkpoints/de\\nmo': no such directory;") as error:
        textgen.load("checkpoints/de\nmo", checkpoint_dir=tmp_path)
    assert "\n" not in str(error.value)


def test_generate_and_stream_take_one_temperature_in_whatever_form(model):
    """An array of two temperatures (or a range) was taken as a list: the 0.5 text alone came back, the 1.0 one
    generated for nothing."""
    import numpy as np

    for several in ([0.5, 1.0], (0.5, 1.0), np.array([0.5, 1.0]), range(0, 3), (value for value in (0.5, 1.0))):
        for method in (model.generate, model.stream):  # (stream's said "call generate")
            with pytest.raises(OptionError, match=f"^temperature must be one number here; call {method.__name__} "
                                                  "once per temperature$"):
                method("ab", length=5, temperature=several)
    greedy = model.generate("ab", length=5, temperature=0)
    assert model.generate("ab", length=5, temperature=np.float32(0)) == greedy  # a NumPy number is one number
    assert "".join(model.stream("ab", length=5, temperature=np.array(0.0))) == greedy


def test_generate_continues_the_pattern_and_is_reproducible(model):
    text = model.generate("abc", length=40, temperature=0)
    assert text == ("abcdefg" * 7)[:43]
    first = model.generate("a", length=30, temperature=1.0, seed=5)
    assert first == model.generate("a", length=30, temperature=1.0, seed=5) and len(first) == 31
    many = model.generate("a", length=10, temperature=0.7, num_samples=3, seed=1)
    assert isinstance(many, list) and len(many) == 3 and all(len(t) == 11 for t in many)
    assert model.generate("ab", length=50, temperature=0, stop="g") == "abcdef"
    assert model.generate("ab", length=50, temperature=0, stop=["fg", "e"]) == "abcd"  # the first completed


def test_by_default_no_character_comes_more_than_20_times_in_a_row(trained_run):
    import dataclasses

    stuck = textgen.load(trained_run["run_dir"])
    bias = stuck.generator.weights.dense_bias.copy()
    bias[PERIOD.index("c")] = 50.0  # a model that only ever wants "c" (a loop of one character)
    stuck.generator.weights = dataclasses.replace(stuck.generator.weights, dense_bias=bias)
    guarded = stuck.generate("a", length=60, temperature=0)
    assert guarded.startswith("a" + "c" * 20) and guarded[21] != "c" and "c" * 21 not in guarded
    assert stuck.generate("a", length=60, temperature=0, max_repeat=0) == "a" + "c" * 60
    assert stuck.generate("a", length=60, temperature=0, max_repeat=None) == "a" + "c" * 60
    assert "c" * 6 not in stuck.generate("a", length=60, temperature=0, max_repeat=5)


def test_stream_yields_the_same_text_in_pieces(model):
    pieces = list(model.stream("abc", length=300, temperature=0.8, seed=2))
    assert len(pieces) >= 3 and pieces[0] == "abc"
    assert "".join(pieces) == model.generate("abc", length=300, temperature=0.8, seed=2)


def test_score_matches_eval_of_the_same_text(model, trained_run, tmp_path):
    text = "abcdefgabcdefg" * 30
    scored = model.score(text + "XY")
    assert scored["characters"] == len(text) - 1 and scored["excluded"] == 2
    assert scored["bpc"] == pytest.approx(scored["nats"] / math.log(2))
    assert scored["perplexity"] == pytest.approx(math.exp(scored["nats"]))
    # One stream from the start is what eval computes with --batch-size 1 and windows of any length.
    path = write_text(tmp_path / "held_out.txt", text)
    expected = evaluate(path, trained_run["checkpoint_dir"], "period", batch_size=1, seq_length=37)
    assert scored["nats"] == pytest.approx(expected["nats"], abs=1e-4)
    assert scored["bpc"] < 0.5  # the model knows this pattern


def test_evaluate_a_file_as_eval_does_under_the_checkpoint_the_model_holds(trained_run, tmp_path, caplog,
                                                                           monkeypatch):
    import shutil

    path = write_text(tmp_path / "held out.txt", "abcdefg" * 40 + "XY")
    expected = evaluate(path, trained_run["checkpoint_dir"], "period", batch_size=2, seq_length=37)
    run_dir = tmp_path / "period"
    shutil.copytree(trained_run["run_dir"], run_dir)
    loaded = textgen.load(run_dir)
    shutil.rmtree(run_dir)  # what it evaluates is what it loaded, not the files
    caplog.clear()  # (evaluate() above said it as the command does)
    with caplog.at_level(logging.WARNING, logger="textgen"):
        result = loaded.evaluate(str(path), batch_size=2, seq_length=37)
    assert [record.getMessage() for record in caplog.records] == [  # in Python's words, not --batch-size 1
        "note: each of the 2 streams reads 140 characters from a fresh state, which scores worse than reading on; "
        "batch_size=1 reads the text as one stream"]
    assert set(result) == {"nats", "bpc", "perplexity", "characters", "unknown", "unknown_characters", "unscored",
                           "total"}
    assert result["nats"] == pytest.approx(expected["nats"], rel=1e-6) and result["nats"] < 0.5
    assert {key: result[key] for key in ("characters", "unknown", "unknown_characters", "unscored", "total")} == \
        {"characters": 278, "unknown": 2, "unknown_characters": ["X", "Y"], "unscored": 2, "total": 282}
    from textgen import model as model_module

    built = []
    build_model = model_module.build_model
    monkeypatch.setattr(model_module, "build_model", lambda *args: built.append(args[1]) or build_model(*args))
    again = [loaded.evaluate(path, batch_size=batch_size, seq_length=37)["nats"] for batch_size in (2, 1, 2, 1)]
    # the second of each size from the model and loss step kept from the first (each built and traced them: ~0.8 s)
    assert built == [1] and again[0] == again[2] == result["nats"] and again[1] == again[3] != again[0]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # each call its own copy: one shared model's state would interleave
        together = list(pool.map(lambda _: loaded.evaluate(path, batch_size=2, seq_length=7)["nats"], range(4)))
    assert together == [loaded.evaluate(path, batch_size=2, seq_length=7)["nats"]] * 4
    with pytest.raises(OptionError, match=r"^batch_size must be an integer in \[1, inf\), got 0$"):
        loaded.evaluate(path, batch_size=0)
    with pytest.raises(textgen.TextgenError, match=r"only 280 characters the model knows; evaluation needs more than "
                                                   r"batch_size \(300\); use a smaller batch_size$"):
        loaded.evaluate(path, batch_size=300)
    with pytest.raises(textgen.TextgenError, match="^text file not found: "):
        loaded.evaluate(tmp_path / "missing.txt")


def test_list_runs_gives_what_textgen_runs_lists(trained_run, tmp_path):
    import shutil

    shutil.copytree(trained_run["run_dir"], tmp_path / "period")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ckpt-0-000000001.weights.h5").write_bytes(b"left without metadata")
    runs = textgen.list_runs(tmp_path)
    assert [run["name"] for run in runs] == ["period", "broken"]
    period, broken = runs
    assert (period["path"], period["corpus"], period["characters"]) == \
        (tmp_path / "period", str(trained_run["corpus"].resolve()), len(PERIOD) * 3000)
    assert (period["epochs"], period["planned_epochs"]) == (3, 3)
    assert period["val_bpc"] == pytest.approx(trained_run["best_val_loss"] / math.log(2))
    assert textgen.load(period["path"]).info["val_bpc"] == pytest.approx(period["val_bpc"])
    # A sweep's runs side by side: the shape and options each trained with (--size auto's choices too) and when
    # the best checkpoint was measured; train() returns that checkpoint, whose epochs can be fewer than the run's
    loaded = textgen.load(period["path"])
    assert period["model"] == loaded.config.to_dict() and period["model"]["units"] == 32
    assert period["options"]["epochs"] == 3 and period["options"]["seed"] == 7
    assert period["best_epoch"] == loaded.info["epochs"] and 1 <= period["best_epoch"] <= 3
    assert period["seconds"] > 0 and broken["model"] is broken["options"] is broken["best_epoch"] is None
    assert (broken["problem"], broken["val_bpc"], broken["path"]) == ("damaged", None, tmp_path / "broken")
    assert textgen.list_runs(tmp_path / "nothing here") == []
    with pytest.raises(textgen.TextgenError, match="is a file; give the directory of the runs as checkpoint_dir$"):
        textgen.list_runs(tmp_path / "broken" / "ckpt-0-000000001.weights.h5")


def test_score_of_a_file_name_warns_that_it_scores_the_name(model, tmp_path, caplog):
    path = write_text(tmp_path / "held_out.txt", "abcdefg" * 50)
    with caplog.at_level(logging.WARNING, logger="textgen"):
        by_name = model.score(str(path))
    assert by_name["characters"] < 60  # the letters of the path, not the 350 of the file
    assert [record.getMessage() for record in caplog.records] == [
        f"warning: scoring the text {str(path)!r} itself, which names a file; to score the file, pass its text: "
        f"score(pathlib.Path({str(path)!r}).read_text(encoding='utf-8'))"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textgen"):
        assert model.score(path.read_text(encoding="utf-8"))["characters"] == 349
    assert caplog.records == []


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate(temperature=-1), r"^temperature must be in \[0, 1e\+06\], got -1"),
    (lambda m: m.generate(top_k=0), r"^top_k must be an integer in \[1, inf\), got 0"),
    (lambda m: m.generate(prime="xyz"), "the prime contains characters the model never saw: 'x' 'y' 'z'; change the "
                                        r"prime or pass skip_unknown=True to drop them$"),  # was --skip-unknown
    (lambda m: m.score("a"), "the text has 1 character the model knows; scoring needs at least 2"),
    (lambda m: m.score("x"), "the text has 0 characters the model knows"),
    (lambda m: m.generate(stop=5), "^stop must be text or a list of texts, got 5"),
    (lambda m: m.stream(stop=b"g"), "^stop must be text or a list of texts, got b'g'"),
    (lambda m: m.generate(stop=[]), "^stop needs at least one text, or leave stop out"),
    (lambda m: m.generate(stop=["g", ""]), "^stop is empty; give the text, or leave stop out"),
    # Each is searched for in every stream after each chunk: a server's request sent 60,000 of them.
    (lambda m: m.generate(stop=["a"] * 17), "^at most 16 stop strings, got 17$"),
    (lambda m: m.generate(stop="x" * 1001), "^a stop string may have at most 1,000 characters, got one of 1,001$"),
    (lambda m: m.stream(prime="xyz"), "the prime contains characters the model never saw"),  # when called
    # A value of the wrong type says so: "got 10" would look valid.
    (lambda m: m.generate(temperature="0.5"), r"got the text '0\.5'; give it as a number, not in quotes$"),
    (lambda m: m.generate(length="100"), r"^length must be an integer in \[0, 1e\+07\], got the text '100'; give it "
                                         r"as a number, not in quotes$"),
    (lambda m: m.generate(length="1" * 300), r"^length must be an integer in \[0, 1e\+07\], got the text of 300 "
                                             r"characters; give it as a number, not in quotes$"),
    (lambda m: m.generate(temperature="warm"), r"got 'warm', which is not a number$"),
    (lambda m: m.next_char_probabilities("ab", temperature=[0.2, 1.0]),
     "^temperature must be one number here; call next_char_probabilities once per temperature$"),
])
def test_bad_input_raises_one_error_type_with_the_cli_message_in_keyword_names(model, call, message):
    with pytest.raises(textgen.TextgenError, match=message):
        call(model)


def test_a_text_given_for_a_path_is_told_to_be_a_file_and_too_long_a_path_is_not_an_oserror(tmp_path, trained_run):
    """Each was a raw OSError ("File name too long"), or "corpus file not found: hello world" over two lines."""
    for call, message in ((lambda: textgen.train("the quick brown fox " * 50, run="r", checkpoint_dir=tmp_path),
                           "corpus must be the path of a text file, got 1,000 characters that are too long for a "
                           "path (the text itself? save it to a file and give that file's path)"),
                          (lambda: textgen.train("hello world\nagain", run="r", checkpoint_dir=tmp_path),
                           "got 17 characters that hold a line break"),
                          # A path holding an option's spelling is not rewritten as a keyword (seed=5).
                          (lambda: textgen.train(tmp_path / "x --seed 5" / "c.txt", run="r", checkpoint_dir=tmp_path),
                           f"^corpus file not found: {re.escape(str(tmp_path))}/x --seed 5/c\\.txt "
                           "\\(check the path\\)$"),
                          # A path with spaces is a path: shown whole, without the hint.
                          (lambda: textgen.train(tmp_path / "My Books" / "the war of the worlds.txt", run="r",
                                                 checkpoint_dir=tmp_path),
                           f"^corpus file not found: {re.escape(str(tmp_path))}/My Books/the war of the worlds\\.txt "
                           "\\(check the path\\)$"),
                          (lambda: textgen.train("The cat sat on the mat. " * 10, run="r", checkpoint_dir=tmp_path),
                           "^corpus file not found: The cat sat on the mat. The cat sat on the mat. The cat s\\.\\.\\. "
                           "\\(check the path; the text itself\\? save it to a file and give that file's path\\)$"),
                          (lambda: textgen.train("hello world", checkpoint_dir=tmp_path),
                           "^corpus file not found: hello world \\(check the path; the text itself\\? save it"),
                          (lambda: textgen.train("notes 2024.txt", checkpoint_dir=tmp_path),  # a file's name
                           "^corpus file not found: notes 2024\\.txt \\(check the path\\)$"),
                          # Chinese has no spaces between words: a sentence, not a title
                          (lambda: textgen.train("从前有座山，山里有座庙", checkpoint_dir=tmp_path),
                           "^corpus file not found: 从前有座山，山里有座庙 \\(check the path; the text itself\\? save"),
                          (lambda: textgen.train("红楼梦第一回", checkpoint_dir=tmp_path),
                           "^corpus file not found: 红楼梦第一回 \\(check the path\\)$"),
                          (lambda: textgen.load("x" * 300, checkpoint_dir=tmp_path), "300 characters: too long"),
                          # a text with line breaks, given for a run: the message stays one line
                          (lambda: textgen.load("x" * 30 + "\n" + "y" * 300),
                           "^no run at 'x{30}\\\\nyyyyyyyyy'\\.\\.\\. \\(331 characters: too long for a path\\)"),
                          (lambda: textgen.load("ru\0n", checkpoint_dir=tmp_path),
                           "run holds a NUL character (\\0), which no path can hold"),
                          (lambda: textgen.train("c\0.txt", checkpoint_dir=tmp_path),
                           "corpus holds a NUL character (\\0), which no path can hold"),
                          (lambda: textgen.load("r", checkpoint_dir=tmp_path / ("y" * 300)),
                           "^checkpoint_dir: too long for a path")):
        with pytest.raises(textgen.TextgenError, match=re.escape(message) if "^" not in message else message) as raised:
            call()
        # A program's own `except FileNotFoundError` catches a missing file; a text that cannot be a path is no file
        assert isinstance(raised.value, FileNotFoundError) == ("file not found" in str(raised.value)), message
    with pytest.raises(FileNotFoundError, match="^text file not found: "):
        textgen.load(trained_run["run_dir"]).evaluate(tmp_path / "missing.txt")



def test_a_run_directory_loads_whatever_the_default_checkpoint_directory_is(trained_run, tmp_path, monkeypatch):
    """With a file named checkpoints in the working directory, loading a run by its directory was refused: "checkpoints
    is a file; give the directory of the runs as checkpoint_dir", a directory the caller never named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").write_text("not runs")
    assert textgen.load(trained_run["run_dir"]).run_dir == trained_run["run_dir"]


def test_train_returns_the_loaded_run_and_refuses_unknown_options(tmp_path, periodic_corpus, caplog):
    import inspect

    shown = inspect.signature(textgen.train).parameters  # what help(textgen.train) shows: every keyword by name
    assert list(shown)[:8] == ["corpus", "run", "checkpoint_dir", "resume", "overwrite", "callbacks", "tensorboard",
                               "strategy"]
    with pytest.raises(textgen.OptionError, match="unknown training option.*sequence_length"):
        textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, sequence_length=5)
    # another tool's name for an option, and a typo
    with pytest.raises(textgen.OptionError, match=r"^unknown training option\(s\): lr \(did you mean learning_rate"
                                                  r"\?\), unit \(did you mean units\?\), zzz; see "):
        textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, unit=5, lr=0.1, zzz=1)
    for wrong, message in ((dict(run=5), "run must be a run name"),
                           (dict(checkpoint_dir=None), "checkpoint_dir must be")):
        with pytest.raises(textgen.OptionError, match=rf"^{message}.*, got (5|None)$"):
            textgen.train(periodic_corpus, **dict(dict(run="r", checkpoint_dir=tmp_path), **wrong))
    with pytest.raises(textgen.OptionError, match=r"^run must be a run name \(str\), got PosixPath\('r'\)$"):
        textgen.train(periodic_corpus, run=Path("r"), checkpoint_dir=tmp_path)
    for call in (lambda: textgen.train(None, run="r", checkpoint_dir=tmp_path),
                 lambda: textgen.train(None, resume=True, checkpoint_dir=tmp_path)):  # no run to take the corpus of
        with pytest.raises(textgen.OptionError, match=r"^give the corpus \(a text file\), or run=NAME with "
                                                      r"resume=True to continue a run on its own corpus$"):
            call()
    with pytest.raises(textgen.OptionError, match="^run is empty; give a run name, or leave run out"):
        textgen.train(periodic_corpus, run="", checkpoint_dir=tmp_path)  # was named after the corpus file
    for wrong in (dict(run=None), dict(run=5), dict(run="r", checkpoint_dir=None)):
        with pytest.raises(textgen.OptionError, match=r"must be a path \(str or pathlib.Path\), got (None|5)$"):
            textgen.load(**dict(dict(checkpoint_dir=tmp_path), **wrong))
    # "" was read as the current directory (Path("") is "."), as --checkpoint-dir '' was before the command refused it
    for call in (lambda: textgen.load("", checkpoint_dir=tmp_path), lambda: textgen.load("r", checkpoint_dir=" "),
                 lambda: textgen.train(periodic_corpus, run="r", checkpoint_dir=""),
                 lambda: textgen.train("", run="r", checkpoint_dir=tmp_path)):
        with pytest.raises(textgen.OptionError, match=r"^(run is empty; give a run's directory|checkpoint_dir is "
                                                      r"empty; give a directory, such as 'checkpoints' or '\.' for "
                                                      r"the current one|corpus is empty; give a text file \(textgen"
                                                      r"\.data\.build_default_corpus\(\) writes the built-in one\))"):
            call()
    with pytest.raises(ValueError, match=r"^units must be an integer in \[1, inf\), got 0"):
        textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, units=0)
    for wrong, message in ((dict(overwrite="no"), "overwrite must be true or false, got 'no'"),
                           (dict(resume=1), "resume must be true or false, got 1"),
                           (dict(strategy="gpu"), "strategy must be one of auto, single, mirrored, multi-worker, "
                                                  "got 'gpu'"),
                           (dict(tensorboard="yes"), "tensorboard must be true or false, got 'yes'"),
                           (dict(callbacks=[5]), "callbacks must be textgen.callbacks.Callback objects, got 5"),
                           (dict(callbacks=5), "callbacks must be a list of textgen.callbacks.Callback objects, got 5"),
                           (dict(callbacks=Callback()),
                            "callbacks must be a list of textgen.callbacks.Callback objects, got <textgen.callbacks")):
        with pytest.raises(textgen.OptionError, match=f"^{re.escape(message)}"):
            textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, **wrong)
    import random

    import numpy as np
    import tensorflow as tf
    from tensorflow.python.eager import context

    import keras

    keras.utils.set_random_seed(9)
    keras_draws = [keras.random.uniform((3,)).numpy().tolist() for _ in range(2)]
    keras.utils.set_random_seed(9)
    # Keras before 3.13 (the newest Python 3.10 gets is 3.12) does not start keras.random again from a seed: there
    # the sequence has nothing of the caller's to keep, and its check below is left out
    keras_reseeds = keras.random.uniform((3,)).numpy().tolist() == keras_draws[0]
    assert keras_reseeds or tuple(map(int, keras.__version__.split(".")[:2])) < (3, 13), keras.__version__
    tf.random.set_seed(17)
    tensorflow_draws = [float(tf.random.uniform(())) for _ in range(4)]
    random.seed(3), np.random.seed(3), tf.random.set_seed(17)
    assert float(tf.random.uniform(())) == tensorflow_draws[0]
    with caplog.at_level(logging.INFO, logger="textgen"):
        trained = textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, epochs=1, tensorboard=True,
                                strategy="single", callbacks=None, **TINY_MODEL, **TINY_TRAINING)  # the command's too
    assert trained.run_dir == tmp_path / "r" and trained.info["epochs"] == 1
    # The log names the options as the call passed them, as its errors do.
    [sizing] = [record.getMessage() for record in caplog.records if record.getMessage().startswith("sizing")]
    assert sizing.startswith("sizing (size='auto'): ") and "(layers, units, embedding_dim yours)" in sizing
    assert sizing.endswith("explicit options win, size='fixed' keeps the defaults") and "--" not in sizing
    # The caller's generators as they were: training seeds all three and Keras draws from Python's for each layer.
    assert (random.random(), np.random.random()) == (random.Random(3).random(), np.random.RandomState(3).random())
    assert context.global_seed() == 17
    # TensorFlow's draws go on where they were (they started again: a notebook's seeded sequence repeated itself)
    assert [float(tf.random.uniform(())) for _ in range(3)] == tensorflow_draws[1:]
    if keras_reseeds:  # Keras's sequence goes on, not from 1234's
        assert keras.random.uniform((3,)).numpy().tolist() == keras_draws[1]
    random.seed(4)
    textgen.load(trained.run_dir)
    assert random.random() == random.Random(4).random()
    assert list((trained.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert set(trained.generate("abc", length=20, temperature=0)) <= set(PERIOD)
    # Resuming needs no corpus: the run's own, as with `textgen train --run r --resume`.
    resumed = textgen.train(run="r", checkpoint_dir=tmp_path, resume=True, epochs=2)
    assert resumed.info["epochs"] == 2 and resumed.info["corpus"] == str(periodic_corpus.resolve())
    with pytest.raises(textgen.TextgenError, match="^nothing to resume: no checkpoint in .*missing"):
        textgen.train(run="missing", checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(textgen.TextgenError, match=r"^nothing to resume: no checkpoint in .*R; to resume run 'r', "
                                                   r"give run='r'$"):  # a typo: not "train without resume"
        textgen.train(run="R", checkpoint_dir=tmp_path, resume=True)
    # Named as the keywords of the call, not the command's options (--resume, --epochs 1), commands kept as they are.
    with pytest.raises(textgen.TextgenError, match="already has checkpoints in .*: pass resume=True to continue it, "
                                                   "overwrite=True to replace it, or run=NAME to start another run$"):
        textgen.train(periodic_corpus, run="r", checkpoint_dir=tmp_path, epochs=1)
    with pytest.raises(textgen.TextgenError, match=r"^cannot resume: the run has done its 2 epochs; pass a larger "
                                                   r"epochs \(the total, such as epochs=4\) to train on$"):
        textgen.train(run="r", checkpoint_dir=tmp_path, resume=True, epochs=1)
    with pytest.raises(textgen.TextgenError, match="no run named 'missing'"):
        textgen.load("missing", checkpoint_dir=tmp_path)


def test_loading_and_generating_print_nothing_but_the_text_and_keep_pythons_random_state(trained_run):
    code = ("import random, sys, textgen; random.seed(7); seeded = random.getstate(); m = textgen.load({!r}); "
            "t = m.generate('abc', length=20, temperature=0); sys.stderr.write(t); "
            "sys.exit(0 if random.getstate() == seeded else 3)").format(str(trained_run["run_dir"]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # 3: importing TensorFlow moved the program's seeded random
    assert result.stdout == ""  # a notebook shows nothing but what the user prints
    assert result.stderr == ("abcdefg" * 4)[:23]  # TensorFlow's start-up notes are muted too


def test_the_api_and_the_server_take_every_sampling_option_with_its_default():
    """Each entry point restates SampleConfig's options: a new one left out, or a default changed in one place
    only, is caught here."""
    import dataclasses
    import inspect

    import textgen.generate
    from textgen.api import TextModel
    from textgen.config import SAMPLE_FIELDS, SampleConfig, temperature_values
    from textgen.serve import GenerateRequest

    def defaults(function, renamed=None):
        parameters = inspect.signature(function).parameters.items()
        return {(renamed or {}).get(name, name): parameter.default for name, parameter in parameters}

    expected = {field.name: field.default for field in dataclasses.fields(SampleConfig)}
    served = {name: field.default for name, field in GenerateRequest.model_fields.items()}
    for name, given in [("TextModel.generate", defaults(TextModel.generate)),
                        ("TextModel.stream", {**defaults(TextModel.stream), "num_samples": 1}),
                        ("generate.generate", defaults(textgen.generate.generate, {"temperatures": "temperature"})),
                        ("GenerateRequest", served)]:
        assert set(given) >= SAMPLE_FIELDS, (name, SAMPLE_FIELDS - set(given))
        got = {field: given[field] for field in SAMPLE_FIELDS}
        got["temperature"] = temperature_values(got["temperature"])
        assert got == expected, name
    assert set(inspect.signature(TextModel.stream).parameters) - {"self"} == SAMPLE_FIELDS - {"num_samples"}
    assert set(GenerateRequest.model_fields) - {"run", "stream"} == SAMPLE_FIELDS
    assert all(field.description for field in GenerateRequest.model_fields.values())  # the OpenAPI page's help


def test_every_entry_point_passes_each_sampling_option_on(monkeypatch):
    """generate.generate rebuilt its SampleConfig keyword by keyword: an option it took but left out there kept its
    default without a word, and the test above (signatures and defaults) passed."""
    import dataclasses

    import textgen.generate
    from textgen.api import TextModel
    from textgen.config import Limits, SampleConfig
    from textgen.generate import Sample
    from textgen.serve import GenerateRequest, _sample_config

    chosen = SampleConfig(temperature=(0.7,), top_k=3, top_p=0.9, min_p=0.1, max_repeat=4, length=7, prime="ab",
                          num_samples=2, seed=5, stop="x", skip_unknown=True)
    at_default = [field.name for field in dataclasses.fields(SampleConfig)
                  if getattr(chosen, field.name) == field.default]
    assert not at_default, f"give {at_default} a value other than the default in chosen here"
    options = {field.name: getattr(chosen, field.name) for field in dataclasses.fields(SampleConfig)}
    arrived = []

    class Generator:
        def samples(self, config, **_):
            arrived.append(config)
            return [Sample("ab", 0.7, 0, False)] * config.sample_count

        def stream(self, config, *_, **__):
            arrived.append(config)
            return iter(())

    model = TextModel.__new__(TextModel)  # its generator only: no checkpoint needed
    model.generator = Generator()
    monkeypatch.setattr(textgen.generate, "generate_with", lambda config, *_: arrived.append(config))
    model.generate(**dict(options, temperature=0.7))
    model.stream(**{name: value for name, value in options.items() if name != "num_samples"} | {"temperature": 0.7})
    textgen.generate.generate(**{name: value for name, value in options.items() if name != "temperature"},
                              temperatures=[0.7])
    arrived.append(_sample_config(GenerateRequest(**dict(options, temperature=0.7)), Limits()))
    assert arrived[0] == arrived[2] == arrived[3] == chosen
    assert arrived[1] == dataclasses.replace(chosen, num_samples=1)


def test_ctrl_c_in_train_is_a_keyboard_interrupt_that_says_how_to_resume_in_python(tmp_path, periodic_corpus):
    """It was a TextgenError, which a program catching Exception swallowed, with a shell command to resume."""
    import os
    import signal

    from textgen.callbacks import Callback, Interrupted

    class CtrlCAtStep3(Callback):
        steps = 0

        def on_step_end(self, run, loss):
            self.steps += 1
            if self.steps == 3:
                os.kill(os.getpid(), signal.SIGINT)

    options = dict(run="r", checkpoint_dir=str(tmp_path), epochs=1, size="fixed", **TINY_MODEL, **TINY_TRAINING)
    with pytest.raises(KeyboardInterrupt) as stopped:
        try:
            textgen.train(periodic_corpus, callbacks=[CtrlCAtStep3()], **options)
        except Exception:  # what a program's own error handling catches
            pytest.fail("Ctrl-C was caught as an Exception")
    assert isinstance(stopped.value, Interrupted) and stopped.value.exit_code == 130
    assert str(stopped.value).endswith(f"; resume with: textgen.train({str(periodic_corpus)!r}, run='r', "
                                       f"checkpoint_dir={str(tmp_path)!r}, resume=True)")
    resumed = textgen.train(run="r", checkpoint_dir=str(tmp_path), resume=True)
    assert resumed.info["epochs"] == 1


def test_export_writes_the_loaded_checkpoint_with_errors_in_keyword_names(model, tmp_path):
    """Exporting from Python meant textgen.export.export, whose errors named --format and --overwrite and which
    split format="keras" into the formats k, e, r, a, s."""
    import json

    import keras
    import numpy as np

    written = model.export(tmp_path / "out", format="keras")
    assert written == [tmp_path / "out" / "model.keras", tmp_path / "out" / "vocab.json"]
    stock = keras.saving.load_model(written[0])
    ids = np.array([[PERIOD.index(ch) for ch in "abcdefgab"]], np.int32)
    assert PERIOD[int(np.argmax(stock(ids)[0, -1]))] == "c"  # the trained period, in plain Keras
    assert json.loads(written[1].read_text())["epoch"] == model.info["epochs"]
    with pytest.raises(textgen.TextgenError, match=r"already exists; pass overwrite=True to replace it"):
        model.export(tmp_path / "out", format="keras")
    for bad, got in (("k", "k"), ([], "no format")):  # a bad option value, as every other one: a ValueError too
        with pytest.raises(textgen.OptionError, match=rf"^format must be among keras, savedmodel, litert or all, got "
                                                      rf"{got}$"):
            model.export(tmp_path / "other", format=bad)
    assert [path.name for path in model.export(tmp_path / "out", format=["keras", "litert"], overwrite=True)] == [
        "model.keras", "model.tflite", "vocab.json"]
    for bad, message in (dict(overwrite="no"), r"^overwrite must be true or false, got 'no'$"), (
            dict(format=None), r"^format must be a format's name or a list of them, got None$"):
        with pytest.raises(textgen.OptionError, match=message):  # "no" replaced an export; None, a TypeError
            model.export(tmp_path / "out", **bad)


def test_a_path_starting_with_a_tilde_is_under_the_home_directory(trained_run, periodic_corpus, tmp_path,
                                                                   monkeypatch):
    """As a shell reads it: export("~/x") wrote a folder named ~ in the working directory, and load and train
    said there was no such run or file."""
    import shutil

    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    elsewhere.mkdir()
    shutil.copytree(trained_run["checkpoint_dir"], home / "ck")
    shutil.copy(periodic_corpus, home / "corpus.txt")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    loaded = textgen.load("~/ck/period")
    assert loaded.run_dir == home / "ck" / "period"
    assert textgen.load("period", checkpoint_dir=Path("~/ck")).run_dir == home / "ck" / "period"
    assert loaded.export("~/exported", format="keras") == [home / "exported" / "model.keras",
                                                           home / "exported" / "vocab.json"]
    with pytest.raises(textgen.TextgenError, match=r"^cannot resume: the run has done its 3 epochs"):
        textgen.train("~/corpus.txt", run="period", checkpoint_dir="~/ck", resume=True)  # both found
    assert list(elsewhere.iterdir()) == []
    for path in ("~nosuchuser/x", Path("~nosuchuser/x")):  # left as typed (a Path raised RuntimeError)
        with pytest.raises(textgen.TextgenError, match=r"^no run at '~nosuchuser/x': no such directory"):
            textgen.load(path)


def test_export_writes_the_checkpoint_it_loaded_not_a_newer_one(trained_run, tmp_path):
    """It exported whatever checkpoint was on disk at the time: another epoch, if a training had saved since."""
    import json
    import shutil

    run_dir = tmp_path / "period"
    shutil.copytree(trained_run["run_dir"], run_dir)
    loaded = textgen.load(run_dir)
    meta = json.loads((run_dir / "best.json").read_text())
    (run_dir / "best.json").write_text(json.dumps(dict(meta, epoch=99)))  # as a training's next save would
    loaded.export(tmp_path / "out", format="keras")
    assert json.loads((tmp_path / "out" / "vocab.json").read_text())["epoch"] == 3


def test_next_char_probabilities_are_the_models_softmax_after_the_prime(model, trained_run):
    import warnings

    import numpy as np

    from textgen.checkpoint import load_model
    from textgen.model import reset_states

    probabilities = model.next_char_probabilities("abcdefgabc")
    assert list(probabilities)[0] == "d" and probabilities["d"] > 0.5  # the period, the likeliest first
    assert sorted(probabilities) == sorted(PERIOD) and sum(probabilities.values()) == pytest.approx(1.0)
    assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)
    keras_model, meta = load_model(trained_run["run_dir"])
    reset_states(keras_model)
    logits = np.asarray(keras_model(np.array([[PERIOD.index(ch) for ch in "abcdefgabc"]], np.int32)))[0, -1]
    for temperature in (1.0, 2.0):
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        got = model.next_char_probabilities("abcdefgabc", temperature=temperature)
        assert [got[ch] for ch in PERIOD] == pytest.approx(expected, abs=1e-5)
    assert model.next_char_probabilities("abc", temperature=0) == {"d": 1.0, **{ch: 0.0 for ch in "abcefg"}}
    with warnings.catch_warnings():  # a tiny temperature printed NumPy's overflow warning on stderr
        warnings.simplefilter("error")
        assert model.next_char_probabilities("abc", temperature=5e-324) == {"d": 1.0, **{ch: 0.0 for ch in "abcefg"}}
    assert model.generate("abcdefgabc", length=1, temperature=0) == "abcdefgabcd"
    with pytest.raises(textgen.TextgenError, match=r"never saw: 'x'; change the prime or pass skip_unknown=True"):
        model.next_char_probabilities("abcx")
    assert model.next_char_probabilities("abcx", skip_unknown=True) == model.next_char_probabilities("abc")
    with pytest.raises(textgen.OptionError, match=r"^temperature must be in \[0, 1e\+06\], got -1"):
        model.next_char_probabilities("abc", temperature=-1)


def test_the_training_log_in_keywords_keeps_paths_quoted_commands_and_other_threads(caplog):
    """Only the options of the calling thread's records are rewritten: a path or a quoted command holding ' --seed'
    stays as it is, another thread's records (a server's) keep the command line's words, and a record that
    cannot be formatted is left to logging to report, not raised into the training."""
    import threading

    from textgen.api import _keyword_record, _log_in_keywords

    log = logging.getLogger("textgen")
    with caplog.at_level(logging.INFO, logger="textgen"):
        with _log_in_keywords("/data --overwrite/c.txt", "/ck --seed 5"):
            log.info("training /ck --seed 5/r on /data --overwrite/c.txt: convert it first (dos2unix "
                     "'a --units 3.txt') and train again with --overwrite; --strategy mirrored found no GPU; --size %s",
                     "fixed")
            bad = log.makeRecord("textgen", logging.INFO, __file__, 1, "%d", ("not a number",), None)
            assert _keyword_record(bad) is True  # logging reports it as it would without the filter; not raised
            other = threading.Thread(target=lambda: log.info("another thread: --size fixed"))
            other.start()
            other.join()
        log.info("after the call: --size fixed")
    first, served, after = caplog.records
    assert first.getMessage() == ("training /ck --seed 5/r on /data --overwrite/c.txt: convert it first (dos2unix "
                                  "'a --units 3.txt') and train again with overwrite=True; strategy='mirrored' found "
                                  "no GPU; size='fixed'")
    assert served.getMessage() == "another thread: --size fixed"
    assert after.getMessage() == "after the call: --size fixed"


def test_a_training_in_a_program_without_logging_shows_its_lines_on_stderr(periodic_corpus, tmp_path):
    """A notebook configures no logging, so the training's INFO records reached no handler: an hour's training said
    nothing. They are shown as the command shows them, unless verbose=False or the program configured logging (its
    handlers get them, not a second copy); another thread's records stay as Python showed them (warnings only)."""
    code = f"""
import io, logging, sys, threading, textgen
options = dict(run="r", checkpoint_dir={str(tmp_path)!r}, overwrite=True, epochs=1, **{TINY_MODEL!r},
               **{TINY_TRAINING!r})

def shown(verbose=True, configure=False):
    sys.stderr = io.StringIO()
    other = lambda: (logging.getLogger("textgen").info("other thread info"),
                     logging.getLogger("textgen").warning("other thread warning"))
    class Other(textgen.callbacks.Callback):
        def on_epoch_start(self, run):
            if configure:  # the program's own logging, from now on
                logging.getLogger("textgen").setLevel(logging.DEBUG)
                logging.basicConfig(stream=late)
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
    textgen.train({str(periodic_corpus)!r}, verbose=verbose, callbacks=[Other()], **options)
    text, sys.stderr = sys.stderr.getvalue(), sys.__stderr__
    return text

default, quiet = shown(), shown(verbose=False)
logger = logging.getLogger("textgen")
left = (logger.handlers, logger.level)
late = io.StringIO()
before_configured = shown(configure=True)
late_level = logger.level
logger.setLevel(logging.NOTSET)
configured = io.StringIO()
logging.basicConfig(stream=configured, force=True)  # WARNING and above, as Python's default
print(repr((default, quiet, left, shown(), configured.getvalue(), before_configured, late.getvalue(), late_level)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    default, quiet, left, with_logging, configured, before_configured, late, late_level = eval(result.stdout)
    lines = default.splitlines()
    assert lines[0].startswith("sizing (size='auto'): 1 x 32 units")  # in the call's words, as its errors are
    assert any(line.startswith("epoch 1/1: train ") for line in lines) and lines[-1].startswith("stopped: 1 epoch")
    assert "other thread warning" in lines and "other thread info" not in default
    assert quiet == "other thread warning\n"  # Python's last resort, as before
    assert with_logging == ""
    assert left == ([], 0)  # the handler and the level are the program's again
    assert configured == "WARNING:textgen:other thread warning\n"
    # Logging configured during a training takes the lines from then on, without a second copy, and keeps its level
    assert before_configured.startswith("sizing (size='auto')") and "epoch 1/1" not in before_configured
    assert "INFO:textgen:epoch 1/1: train " in late and late_level == logging.DEBUG


def test_a_run_not_found_is_told_the_calls_that_list_and_train_runs(tmp_path):
    with pytest.raises(textgen.TextgenError, match=re.escape(
            f"the directory {tmp_path / 'no ck'} does not exist; give the directory of the runs as checkpoint_dir, or "
            f"train one first with: textgen.train(CORPUS, checkpoint_dir={str(tmp_path / 'no ck')!r}, run='r')")):
        textgen.load("r", checkpoint_dir=tmp_path / "no ck")
    with pytest.raises(textgen.TextgenError, match=re.escape(
            f"(runs there: none); list them with: textgen.list_runs(checkpoint_dir={str(tmp_path)!r})")):
        textgen.load("r", checkpoint_dir=tmp_path)


def test_train_init_from_fine_tunes_a_copy_and_speaks_in_keywords(trained_run, tmp_path):
    corpus = write_text(tmp_path / "more.txt", PERIOD * 400)
    with pytest.raises(OptionError, match=re.escape("init_from starts a new run from another run's weights")):
        textgen.train(corpus, checkpoint_dir=tmp_path, run="more", resume=True, init_from=trained_run["run_dir"])
    with pytest.raises(textgen.TextgenError, match="no run named 'period'"):  # a name is a run under checkpoint_dir
        textgen.train(corpus, checkpoint_dir=tmp_path, run="more", init_from="period", verbose=False)
    tuned = textgen.train(corpus, checkpoint_dir=tmp_path, run="more", init_from=trained_run["run_dir"],
                          verbose=False, epochs=1, learning_rate=1e-7, dropout=0.0, batch_size=8, seq_length=20)
    assert tuned.score(PERIOD * 20)["bpc"] < 0.5 * math.log2(len(PERIOD))


def test_textgen_generate_called_as_a_function_says_what_to_call():
    """textgen.generate("def ") said only "'module' object is not callable" (it is the generate module)."""
    with pytest.raises(TypeError, match=re.escape("textgen.generate is a module; load a run and generate from it: "
                                                  "textgen.load('NAME').generate('The ', length=200)")):
        textgen.generate("def ")
    assert textgen.generate.generate.__name__ == "generate"  # the module's functions are as they were


def test_every_mix_of_sampling_options_shares_one_compiled_loop(model, monkeypatch):
    """A loop per mix of filters (and temperature 0) grew a notebook's sweep by ~6 MB and 0.3-1 s of compiling per
    mix and engine size: 90 loops and 400 MB after 400 calls."""
    from textgen import engine as engine_module
    from textgen.sampling import FILTERS

    monkeypatch.setattr(engine_module, "_SHARED", {})  # what this test compiles, alone
    texts = [model.generate("ab", length=30, seed=1, **options) for options in (
        dict(temperature=0), dict(temperature=0.7), dict(temperature=0.7, top_k=3), dict(temperature=2, top_p=0.5),
        dict(temperature=2, min_p=0.1, max_repeat=0), dict(temperature=2, top_k=2, num_samples=2))]
    sampling_loops = [kind for kind, *_ in engine_module._SHARED if kind[0] == "sample"]
    assert sampling_loops == [("sample", False, tuple(sorted(FILTERS)))] * 2  # one per engine size: 1 and 4 streams
    assert texts[0] == ("abcdefg" * 5)[:32] and len(texts[5]) == 2  # temperature 0 greedy in that loop too
