"""Run names and the run listing (textgen.runs)."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from textgen.errors import TextgenError
from textgen.runs import check_run_name, default_run_name, find_run, list_runs, run_options


def test_default_run_name_is_always_a_valid_name():
    assert default_run_name(Path("data/tiny shakespeare.txt")) == "tiny-shakespeare"
    assert default_run_name(Path("_draft.txt")) == "draft"
    assert default_run_name(Path("---.txt")) == "run"
    long = default_run_name(Path("a" * 60 + "-" + "b" * 60 + ".txt"))
    assert len(long) == 100 and check_run_name(long) == long
    assert check_run_name(default_run_name(Path(".hidden notes..txt")))
    # Letters of every script are kept (they became run-<hash> and cafe-creme-<hash>), in NFC, as --run gives them.
    assert default_run_name(Path("笔记.txt")) == "笔记" and default_run_name(Path("小说.txt")) == "小说"
    assert default_run_name(Path("café crème.txt")) == "café-crème"
    assert default_run_name(Path("e\u0301te\u0301.txt")) == "\u00e9t\u00e9"  # decomposed, as macOS names files
    assert default_run_name(Path("हिन्दी कविता.txt")) == "हिन्दी-कविता"  # vowel signs are combining marks
    # A character that cannot be kept (an emoji, a byte that is not UTF-8) adds a hash: two corpora, two runs.
    songs, tunes = default_run_name(Path("🎵 songs.txt")), default_run_name(Path("🎶 songs.txt"))
    assert songs != tunes and songs.startswith("songs-") and check_run_name(songs) == songs
    assert default_run_name(Path("my\udcffnotes.txt")).startswith("my-notes-")
    marked = default_run_name(Path("\u0301notes.txt"))  # a combining accent first: not a name's first character
    assert marked.startswith("notes-") and check_run_name(marked) == marked
    # 100 Chinese characters are 300 bytes in UTF-8, more than a file system takes in a name.
    wide = default_run_name(Path("红" * 150 + ".txt"))
    assert wide == "红" * 66 and check_run_name(wide) == wide


def test_a_run_named_as_earlier_versions_named_it_is_still_found(tmp_path):
    for corpus, new, earlier_names in (
            (Path("café crème.txt"), "café-crème", ("cafe-creme-", "caf-cr-me-")),  # two earlier versions
            (Path("笔记.txt"), "笔记", ("run-",))):
        for prefix in earlier_names:
            digest = hashlib.blake2b(corpus.stem.encode(), digest_size=4).hexdigest()
            earlier = tmp_path / f"{prefix}{digest}"  # what textgen called that corpus's run before
            earlier.mkdir()
            assert default_run_name(corpus, tmp_path) == earlier.name  # --resume without --run finds it
            earlier.rmdir()
        assert default_run_name(corpus, tmp_path) == new
        (tmp_path / new).mkdir()
        (tmp_path / f"{earlier_names[0]}{digest}").mkdir()
        assert default_run_name(corpus, tmp_path) == new


def test_an_invalid_run_name_says_what_was_probably_meant():
    with pytest.raises(TextgenError, match=r"invalid run name 'my corpus': .* \(such as 'my-corpus'\)$"):
        check_run_name("my corpus")
    with pytest.raises(TextgenError, match=r"for the run in old/ck/demo: --checkpoint-dir old/ck --run demo\)$"):
        check_run_name("old/ck/demo")
    with pytest.raises(TextgenError, match=r"a corpus file called '我的 笔记.txt' trains the run '我的-笔记'\)$"):
        check_run_name("我的 笔记.txt")
    with pytest.raises(TextgenError, match=r"'my corpus.txt' trains the run 'my-corpus'\)$"):
        check_run_name("my corpus.txt")
    # Not a file name: a name it could be (training a file called 'v1.2 beta' would name the run after 'v1').
    with pytest.raises(TextgenError, match=r"invalid run name 'v1.2 beta': .* \(such as 'v1.2-beta'\)$"):
        check_run_name("v1.2 beta")
    # Names of allowed characters broke the rules the message did not state: the first character, the length.
    rule = "use 1 to 100 letters (of any script), digits, '.', '_' and '-', the first a letter or digit"
    for name, hint in ((".", " (such as 'run')"), ("..", " (such as 'run')"), (".hidden", " (such as 'hidden')"),
                       ("-x", " (such as 'x')"), ("a" * 101, f" (such as '{'a' * 100}')"),
                       ("红" * 67, f" (such as '{'红' * 66}': at most 200 bytes in UTF-8)"), ("🎵", " (such as 'run-")):
        with pytest.raises(TextgenError) as refused:
            check_run_name(name)
        assert str(refused.value).startswith(f"invalid run name '{name}': {rule}{hint}")
    with pytest.raises(TextgenError, match=r"'my notes.markdown' trains the run 'my-notes'\)$"):
        check_run_name("my notes.markdown")
    # Any script is a name, given in NFC as its folder is (a decomposed é is the same run).
    assert check_run_name("红楼梦") == "红楼梦" and check_run_name("e\u0301te\u0301") == "\u00e9t\u00e9"
    assert check_run_name("红" * 66) == "红" * 66


def test_the_options_that_name_a_run_give_its_directory_unless_it_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_options(Path("checkpoints") / "demo") == "--run demo"
    assert run_options(tmp_path / "checkpoints" / "demo") == "--run demo"
    assert run_options(Path("my runs") / "demo") == "--checkpoint-dir 'my runs' --run demo"
    assert run_options(tmp_path / "demo") == f"--checkpoint-dir {tmp_path} --run demo"
    # A folder that --run cannot name, and '.', are given as the run's directory (find_run takes it so).
    assert run_options(tmp_path / "my run") == f"--checkpoint-dir '{tmp_path}/my run'"
    (tmp_path / "inside").mkdir()
    monkeypatch.chdir(tmp_path / "inside")
    assert run_options(Path(".")) == f"--checkpoint-dir {tmp_path} --run inside"
    with pytest.raises(TextgenError, match=rf"no run named 'x' in {tmp_path}.*list them with: textgen runs "
                                           rf"--checkpoint-dir {tmp_path}$"):
        find_run(tmp_path, "x")
    # It said "(runs there: none)" of a directory that is not there.
    with pytest.raises(TextgenError) as missing:
        find_run(Path("checkpoints"), "x")
    assert str(missing.value) == ("no run named 'x': the directory checkpoints does not exist; give the directory of "
                                  "the runs as --checkpoint-dir, or train one first with: textgen train CORPUS --run x")
    # A damaged run in such a folder: training with its directory as --checkpoint-dir would start a run inside it.
    (tmp_path / "my run").mkdir()
    (tmp_path / "my run" / "ckpt-1-000000001.weights.h5").write_bytes(b"w")
    with pytest.raises(TextgenError, match=rf"damaged run; train it again under a run name \(its folder's, 'my run', "
                                           rf"is not one\): textgen train CORPUS --checkpoint-dir {tmp_path} "
                                           r"--run NAME$"):
        find_run(tmp_path / "my run", None)


def test_runs_are_listed_by_their_last_save_and_a_save_in_flight_is_ignored(tmp_path):
    older, newer = tmp_path / "older", tmp_path / "newer"
    for age, run_dir in ((200, older), (100, newer)):
        run_dir.mkdir()
        for name in ("best.json", "last.json"):
            (run_dir / name).write_text("{}")
            os.utime(run_dir / name, (1_000_000 - age, 1_000_000 - age))
    (older / ".tmp-last.json").write_text("{")  # a save being written right now: renamed away at any moment
    (tmp_path / "no-checkpoint").mkdir()
    assert list_runs(tmp_path) == [newer, older]
    assert find_run(tmp_path, None) == newer


def test_the_default_run_is_the_latest_with_a_best_checkpoint(tmp_path, caplog):
    """A new training taken back with Ctrl-C before its first validation became the latest run, and sample, eval
    and serve took its half-trained last checkpoint by default instead of the trained run."""
    trained, stopped = tmp_path / "trained", tmp_path / "stopped"
    for age, run_dir, kinds in ((200, trained, ("best", "last")), (100, stopped, ("last",))):
        run_dir.mkdir()
        for kind in kinds:
            (run_dir / f"{kind}.json").write_text("{}")
            os.utime(run_dir / f"{kind}.json", (1_000_000 - age, 1_000_000 - age))
    with caplog.at_level("INFO", logger="textgen"):
        assert find_run(tmp_path, None) == trained
    assert caplog.messages == [f"using the latest run with a best checkpoint, 'trained' (the newer 'stopped' has no "
                               f"best checkpoint; choose it with --run; list them with: textgen runs --checkpoint-dir "
                               f"{tmp_path})"]
    assert find_run(tmp_path, "stopped") == stopped
    assert find_run(tmp_path, None, kind="last") == stopped  # its last checkpoint is what was asked for
    (trained / "best.json").unlink()  # none has one: the latest
    assert find_run(tmp_path, None) == stopped


def test_a_copied_run_keeps_its_place_by_the_time_its_checkpoint_records(tmp_path):
    """`cp -r` gives a copy new file times; the listing (and the default latest run) follows saved_at, the time
    the table shows, and falls back to the file time where a checkpoint records none."""
    runs = {"trained-first": ("2026-01-01T10:00:00+00:00", 300), "trained-last": ("2026-01-02T10:00:00+00:00", 100),
            "copied-later": ("2026-01-01T12:00:00+00:00", 50), "no-time": (None, 200)}
    for name, (saved_at, age) in runs.items():
        (tmp_path / name).mkdir()
        for kind in ("best", "last"):
            path = tmp_path / name / f"{kind}.json"
            trap = {"corpus": {"path": 'x "saved_at": "2099-01-01T00:00:00+00:00"'}}  # an escaped look-alike first
            path.write_text(json.dumps({**trap, "saved_at": saved_at} if saved_at else trap, indent=1))
            os.utime(path, (2_000_000_000 - age, 2_000_000_000 - age))  # 2033: every file is newer than saved_at
    assert [path.name for path in list_runs(tmp_path)] == ["no-time", "trained-last", "copied-later", "trained-first"]
    assert find_run(tmp_path, None).name == "no-time"


def test_a_checkpoint_dir_that_is_the_named_run_is_that_run(tmp_path):

    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    (run_dir / "best.json").write_text("{}")
    assert find_run(run_dir, "demo") == run_dir
    assert find_run(tmp_path, "demo") == run_dir
    with pytest.raises(TextgenError, match=r"no run named 'other' in .*demo \(runs there: demo\)"):
        find_run(run_dir, "other")


def test_a_missing_run_suggests_the_name_it_probably_meant(tmp_path):
    """Of 27 runs, --run My-Songs listed all 27 and did not point at my-songs."""
    names = ["my-songs", "notes", "shakespeare"] + [f"run{i:02}" for i in range(24)]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "best.json").write_text("{}")
    for typed, meant in (("My-Songs", "my-songs"), ("shakespear", "shakespeare")):
        with pytest.raises(TextgenError) as missing:
            find_run(tmp_path, typed)
        assert str(missing.value) == (f"no run named '{typed}' in {tmp_path}; did you mean '{meant}'? (list the runs "
                                      f"with: textgen runs --checkpoint-dir {tmp_path})")
    with pytest.raises(TextgenError, match=r"\(runs there: [a-z0-9-]+(, [a-z0-9-]+){9} and 17 more\); list them"):
        find_run(tmp_path, "poems")


def test_a_run_named_in_either_unicode_form_is_found_whichever_its_folder_has(trained_run, tmp_path):
    """A folder named in decomposed form (copied from a Mac) could not be named at all: 'no run named 'café'; did
    you mean 'café'?'; the server did not normalise the names it was sent."""
    import shutil

    from textgen.served_runs import Runs

    decomposed = tmp_path / "cafe\u0301"
    shutil.copytree(trained_run["run_dir"], decomposed)
    assert find_run(tmp_path, "caf\u00e9") == decomposed and find_run(tmp_path, "cafe\u0301") == decomposed
    runs = Runs(tmp_path, None, (1,))
    try:
        assert runs.get("caf\u00e9").path == decomposed
    finally:
        runs.stop()


def test_an_export_given_as_the_runs_directory_is_named_as_such(tmp_path):
    """textgen.load('exports/small') advised "train one first with: textgen train CORPUS --checkpoint-dir
    exports/small", which would have made the export folder a directory of runs."""
    export = tmp_path / "small"
    export.mkdir()
    (export / "vocab.json").write_text("{}")
    (export / "model.keras").write_bytes(b"")
    with pytest.raises(TextgenError, match=rf"^{export} is an export \(textgen export\), not a run: plain Keras or "
                                           "TensorFlow loads it"):
        find_run(export, None)
    with pytest.raises(TextgenError, match=rf"^{export} is an export"):  # named as a run of its folder
        find_run(tmp_path, "small")
    with pytest.raises(TextgenError, match=rf"^{tmp_path} holds exports \(textgen export\), not runs: plain Keras"):
        find_run(tmp_path, None)
    (export / "model.keras").unlink()  # vocab.json alone is not an export
    with pytest.raises(TextgenError, match=f"^no checkpoint in {export}; train one first"):
        find_run(export, None)


def test_a_run_folder_without_a_checkpoint_says_whether_a_training_is_running_it(tmp_path):
    """Loaded before its first save, a run being trained was called unfinished or damaged, to train again; named by
    its folder, it was taken for a directory of runs ("no checkpoint in ck/c; train one first with: ...")."""
    from textgen.checkpoint import RunLock

    run_dir = tmp_path / "ck" / "c"
    named_ways = ((tmp_path / "ck", "c", f"run 'c' in {tmp_path / 'ck'}"), (run_dir, None, str(run_dir)),
                  (tmp_path / "ck", None, f"run 'c' in {tmp_path / 'ck'}"))  # the latest run: the one in training
    with RunLock(run_dir):
        (run_dir / "corpus.json").write_text("{}")
        for checkpoint_dir, run, named in named_ways:
            with pytest.raises(TextgenError, match=rf"^{named} has no checkpoint yet: a training \(pid {os.getpid()}\) "
                                                   r"has it, which saves the first at the end of its first epoch "
                                                   r"\(sooner with --save-every, or when stopped with Ctrl-C\); try "
                                                   r"again then$"):
                find_run(checkpoint_dir, run)
    for checkpoint_dir, run, named in named_ways[:2]:
        with pytest.raises(TextgenError, match=rf"^{named} has no checkpoint \(no best.json or last.json; it holds "
                                               rf"corpus.json\): an unfinished or damaged run; train it again with: "
                                               rf"textgen train CORPUS --checkpoint-dir {tmp_path / 'ck'} --run c$"):
            find_run(checkpoint_dir, run)
    # Listed, where nothing showed it (a 200 MB text's cache is 192 MB); a folder that holds nothing of a run is not
    from textgen.report import run_rows, runs_table
    from textgen.runs import all_runs

    (tmp_path / "ck" / "notes").mkdir()
    (tmp_path / "ck" / "notes" / "todo.txt").write_text("not a run")
    assert all_runs(tmp_path / "ck") == [run_dir]
    ended = "no checkpoint: a training ended before its first save"
    [row] = run_rows([run_dir])
    assert row["problem"] == f"{ended} (train it again, or delete the folder)"
    assert runs_table([run_dir]).splitlines()[1].startswith(f"c    {ended}")
    hidden = tmp_path / "ck" / ".c"  # no run name: as --checkpoint-dir, the advice would train a run inside it
    run_dir.rename(hidden)
    with pytest.raises(TextgenError, match=r"train it again under a run name \(its folder's, '.c', is not one\): "
                                           rf"textgen train CORPUS --checkpoint-dir {tmp_path / 'ck'} --run NAME$"):
        find_run(hidden, None)


def test_a_look_at_a_runs_lock_never_stops_a_training_from_starting(tmp_path):
    """training_pid takes the lock for an instant: a training starting then was refused, naming the pid that a
    killed training had left in the lock's file."""
    import fcntl
    import threading

    from textgen.checkpoint import RunLock, training_pid

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("999999999")  # a killed training's
    assert training_pid(run_dir) is None
    with open(run_dir / ".lock") as looking:
        fcntl.flock(looking, fcntl.LOCK_EX)  # held by a training that has not written its pid yet
        assert training_pid(run_dir) == "unknown"  # (the file's pid is no process's)
        fcntl.flock(looking, fcntl.LOCK_SH)  # now as training_pid looks, for an instant
        threading.Timer(0.05, fcntl.flock, (looking, fcntl.LOCK_UN)).start()
        with RunLock(run_dir):
            assert training_pid(run_dir) == str(os.getpid())
