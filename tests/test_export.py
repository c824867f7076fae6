"""textgen export: each format reloads without textgen and computes what textgen computes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import PERIOD, files_snapshot
from textgen import export as export_module
from textgen.checkpoint import load_model
from textgen.cli import cli
from textgen.errors import TextgenError
from textgen.model import reset_states

CHECK = Path(__file__).parent / "export_check.py"
TEXT = "abcdefgabcdgfe"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    result = CliRunner().invoke(cli, ["export", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run",
                                      "period", "--format", "all", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(out / name) for name in
                                     ("model.keras", "savedmodel", "model.tflite", "vocab.json")]
    check = subprocess.run([sys.executable, str(CHECK), str(out), TEXT], capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    return dict(out=out, loaded=json.loads(check.stdout))


def textgen_logits(run_dir):
    model, meta = load_model(run_dir, batch_size=1)
    reset_states(model)
    return np.asarray(model(np.array([[meta.vocab.chars.index(ch) for ch in TEXT]], np.int32)))[0]


def test_every_format_gives_textgens_logits_without_textgen(trained_run, exported):
    expected = textgen_logits(trained_run["run_dir"])
    loaded = exported["loaded"]
    assert loaded["layers"] == ["keras"]  # stock layers only
    np.testing.assert_allclose(loaded["keras"], expected, atol=1e-5)
    for row in loaded["savedmodel_batch2"]:  # stateless step, any batch size
        np.testing.assert_allclose(row, expected, atol=1e-5)
    np.testing.assert_allclose(loaded["litert"], expected, atol=1e-5)


def test_savedmodel_generates_in_graph_reproducibly(trained_run, exported):
    greedy, first, again, other = exported["loaded"]["generated"]
    assert all(len(text) == 43 and text.startswith("abc") and set(text) <= set(PERIOD)
               for text in (greedy, first, again, other))
    assert greedy == ("abcdefg" * 7)[:43]  # what this model predicts, as textgen's own greedy sample
    assert first == again  # same seed, same text
    filtered = exported["loaded"]["filtered"]
    assert filtered["unfiltered"] == filtered["unguarded"] == first  # no filter: the same draws as generate
    # generate_filtered keeps the inputs it was exported with (a caller feeding them broke when max_repeat joined)
    assert exported["loaded"]["filtered_inputs"] == ["length", "min_p", "prime", "seed", "temperature", "top_k",
                                                     "top_p"]
    assert exported["loaded"]["guarded_inputs"] == sorted(exported["loaded"]["filtered_inputs"] + ["max_repeat"])
    # at temperature 5 the draws wander; each filter that keeps only the most likely character gives the greedy text
    assert filtered["hot"] != greedy
    assert filtered["top_k_1"] == filtered["top_p_small"] == filtered["min_p_1"] == greedy
    assert "top_p must be in (0, 1]" in filtered["bad_top_p"]
    assert "top_k must be 0 (no filter) or in [1, inf)" in filtered["bad_top_k"]
    assert "max_repeat must be in [0, 1e+09]" in filtered["bad_max_repeat"]
    repeats = exported["loaded"]["repeats"]  # the prime "abcc", then near-uniform draws

    def longest_run(text):
        return max(len(match.group()) for match in re.finditer(r"(.)\1*", text))

    assert max(longest_run(text) for text in repeats["0"]) >= 3  # without the guard, runs of 3 and more
    assert all(longest_run(text[3:]) == 1 for text in repeats["1"])  # from the prime's last c on, none twice
    assert all(longest_run(text) == 2 and text[4] != "c" for text in repeats["2"])  # the prime's cc counted
    assert all("temperature must be in [0, 1e+06]" in refusal  # the command line's rules and words
               for refusal in exported["loaded"]["bad_temperature"])  # NaN, infinity, -1
    assert "length must be in [0, 1e+07]" in exported["loaded"]["negative_length"]
    assert "seed must be in [0, inf)" in exported["loaded"]["negative_seed"]
    assert "ids must hold at least one step" in exported["loaded"]["no_step"]
    # a Gather's "indices[0] = 7 is not in [0, 7)" before
    assert all(f"ids must be in [0, {len(PERIOD)}): an id is a place in the chars of vocab.json" in refusal
               for refusal in exported["loaded"]["id_out_of_range"]), exported["loaded"]["id_out_of_range"]
    # Each was accepted: a length that runs for days, two primes read as one text, a state broadcast to 3 streams.
    assert "length must be in [0, 1e+07]" in exported["loaded"]["huge_length"]
    assert "Shape of tensor prime [2] is not compatible with expected shape []" in \
        exported["loaded"]["batch_of_primes"] and "prime_must_be_one_string" in exported["loaded"]["batch_of_primes"]
    assert "h and c must hold one row per row of ids" in exported["loaded"]["state_of_other_batch"]
    assert "reshape" in exported["loaded"]["litert_state_of_other_batch"].lower(), exported["loaded"][
        "litert_state_of_other_batch"]  # refused by LiteRT too, where asserts are dropped
    assert exported["loaded"]["long_prime"] == "abcdefg" * 301  # the prime fed without keeping its logits
    vocab = json.loads((exported["out"] / "vocab.json").read_text())
    assert vocab["chars"] == list(PERIOD) and vocab["run"] == "period" and vocab["model"]["units"] == 32
    assert (vocab["epoch"], vocab["step_in_epoch"]) == (3, 0)  # the best checkpoint's place, as info names it
    assert vocab["unicode_form"] is None  # plain letters show neither form
    import keras

    # What to feed before a prompt (a text without line breaks, as this one: its first character), and the Keras
    # that wrote model.keras (older ones cannot load it)
    assert (vocab["start"], vocab["keras_version"]) == ("a", keras.__version__)


def test_the_newest_generate_signature_takes_every_sampling_filter():
    """A filter added to textgen's sampling and not to the export was silently missing from it: a new filter gets a
    new signature (the ones exported keep their inputs), and the command line's help names each signature."""
    from click.testing import CliRunner

    from textgen import sampling
    from textgen.cli import cli
    from textgen.config import GENERATE_SIGNATURES

    *_, newest = GENERATE_SIGNATURES.values()
    assert set(newest) == set(sampling.FILTERS), "add a generate signature with the new filter to GENERATE_SIGNATURES"
    shown = " ".join(CliRunner().invoke(cli, ["export", "--help"]).output.split())
    assert all(name in shown for name in GENERATE_SIGNATURES), shown


def test_vocab_json_names_the_unicode_form_to_write_prompts_in(trained_run, tmp_path):
    """An export of a model trained on decomposed text (é as e + accent) dropped a typed é from its prompts without
    a word, and nothing in the export said which form its text was in."""
    import shutil

    run_dir = tmp_path / "decomposed"
    shutil.copytree(trained_run["run_dir"], run_dir)
    for kind in ("best", "last"):  # the same weights, with g read as a combining acute accent
        meta = json.loads((run_dir / f"{kind}.json").read_text())
        meta["vocab"] = [ord(ch) for ch in "abcdef\u0301"]
        (run_dir / f"{kind}.json").write_text(json.dumps(meta))
    export_module.export(run_dir, tmp_path / "out", ("keras",))
    assert json.loads((tmp_path / "out" / "vocab.json").read_text())["unicode_form"] == "NFD"


def test_existing_output_is_kept_unless_overwrite_and_a_failed_export_replaces_nothing(trained_run, exported,
                                                                                         monkeypatch):
    out = exported["out"]
    before = files_snapshot(out)
    refused = CliRunner().invoke(cli, ["export", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run",
                                       "period", "-o", str(out)])
    assert refused.exit_code == 1
    assert refused.output.strip() == f"error: {out} already exists; pass --overwrite to replace it or choose another " \
                                     "--output"

    failures = [  # what a converter raised, and what the user is told
        (lambda building: RuntimeError("converter crashed"),
         r"^could not export the savedmodel format \(converter crashed\); nothing was written$"),
        # as TensorFlow words an error in a function it traces
        (lambda building: TypeError('in user code:\n\n    File "export.py", line 1, in generate  *\n        return '
                                    "self._generate(...)\n\n    TypeError: choose_tf() got an unexpected keyword "
                                    "argument 'typical_p'\n"),
         r"^could not export the savedmodel format \(TypeError: choose_tf\(\) got an unexpected keyword argument "
         r"'typical_p'\); nothing was written$"),
        # TensorFlow's words for a full disk under its SaveV2 op
        (lambda building: RuntimeError("{{function_node __wrapped__SaveV2_dtypes_7_device_/job:localhost/replica:0/"
                                       f"task:0/device:CPU:0}} {building}/savedmodel/variables/variables_temp/part-"
                                       "00000-of-00001.data-00000-of-00001.tempstate1; No space left on device "
                                       "[Op:SaveV2]"),
         r"^could not export the savedmodel format: the disk is full; free some space or choose another --output; "
         r"nothing was written$")]
    for failure, message in failures:
        def broken(meta, trained, building, serving, failure=failure):
            raise failure(building)
        monkeypatch.setitem(export_module.WRITERS, "savedmodel", broken)
        with pytest.raises(TextgenError, match=message):
            export_module.export(trained_run["run_dir"], out, ("keras", "savedmodel"), overwrite=True)
        assert files_snapshot(out) == before
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_an_export_leaves_the_callers_root_logger_as_it_was(trained_run, tmp_path, monkeypatch):
    """TensorFlow's SavedModel writer logs through absl, which gave a root logger without handlers one of its own
    (logging.basicConfig): the program's later basicConfig did nothing, and every library's warnings printed."""
    import logging

    from textgen import export as export_module

    monkeypatch.setattr(logging.root, "handlers", [])  # as in a program that configured no logging (pytest did)
    export_module.export(trained_run["run_dir"], tmp_path / "out", ("savedmodel",))
    assert logging.root.handlers == [] and (tmp_path / "out" / "savedmodel" / "saved_model.pb").is_file()


def test_an_empty_directory_takes_an_export_without_overwrite(trained_run, tmp_path):
    """It was refused as "already exists; pass --overwrite", after the message for a directory holding other files
    had asked for "a new or empty directory"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o2770)  # a folder prepared to share (or a mount point): filled, not replaced by a new directory
    before = empty.stat()
    result = CliRunner().invoke(cli, ["export", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--run",
                                      "period", "-o", str(empty), "--format", "keras"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in empty.iterdir()) == ["model.keras", "vocab.json"]
    after = empty.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]  # nothing left beside it


def test_overwrite_through_a_link_replaces_the_export_it_points_to_and_keeps_the_link(trained_run, tmp_path):
    run_dir = trained_run["run_dir"]
    export_module.export(run_dir, tmp_path / "exports" / "v1", ("keras",))
    (tmp_path / "exports" / "v1" / "model.keras").write_bytes(b"stale")
    latest = tmp_path / "latest"
    latest.symlink_to(tmp_path / "exports" / "v1")
    export_module.export(run_dir, latest, ("keras",), overwrite=True)
    assert latest.is_symlink() and latest.resolve() == (tmp_path / "exports" / "v1").resolve()
    assert (latest / "model.keras").read_bytes()[:2] == b"PK"  # a fresh Keras archive (zip) replaced the stale one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "latest"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["v1"]
    export_module.export(run_dir, tmp_path / "exports" / "v1" / "new" / "..", ("keras",), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "exports" / "v1").iterdir()) == ["model.keras", "vocab.json"]
    mine = tmp_path / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("precious")
    for overwrite in (False, True):  # never "pass --overwrite", which could not replace it either
        with pytest.raises(TextgenError, match=r"mine is not an earlier export \(it holds notes.txt\); choose a new"):
            export_module.export(run_dir, mine / "missing" / "..", ("keras",), overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(TextgenError, match=r"notes.txt is a file; choose a directory for --output$"):
            export_module.export(run_dir, tmp_path / "notes.txt", ("keras",), overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_missing_run_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint-dir", str(tmp_path), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"error: no checkpoint in {tmp_path}; train one first with: textgen train CORPUS " \
                                    f"--checkpoint-dir {tmp_path}"
    assert not (tmp_path / "x").exists()


def test_what_a_killed_export_left_is_removed_and_a_link_loop_is_refused(trained_run, tmp_path):
    """An export killed before its cleanup (SIGKILL) left its building directory: inside an empty --output, which
    the next export then refused as "not an earlier export", or beside it, for good. A link loop was a traceback."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = ended.stdout.strip()  # the id of a process that has ended
    (tmp_path / "empty" / f".tmp-export-{dead}" / "savedmodel").mkdir(parents=True)
    (tmp_path / f".tmp-new-{dead}").mkdir()
    (tmp_path / ".tmp-new-1").mkdir()  # process 1 runs: an export in progress is left alone
    for output in ("empty", "new"):
        export_module.export(trained_run["run_dir"], tmp_path / output, ("keras",))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".tmp-new-1", "empty", "new"]
    assert sorted(entry.name for entry in (tmp_path / "empty").iterdir()) == ["model.keras", "vocab.json"]
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(TextgenError, match="^--output .*a is a symbolic link that leads back to itself; choose a "
                                           "directory for the export"):
        export_module.export(trained_run["run_dir"], tmp_path / "a", ("keras",))


def test_sigterm_during_an_export_removes_what_it_built_and_exits_143(trained_run, tmp_path, monkeypatch):
    """SIGTERM ended an export at once and left its building directory beside --output (hundreds of MB for a real
    model), never removed."""
    import os
    import signal

    def terminated(meta, trained, out, graph):
        (out / "model.keras").write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setitem(export_module.WRITERS, "keras", terminated)
    result = CliRunner().invoke(cli, ["export", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "-o",
                                      str(tmp_path / "out"), "--format", "keras"])
    assert (result.exit_code, result.output.strip()) == (143, "terminated")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_names_the_formats_it_removes_and_an_export_written_meanwhile_is_kept(trained_run, tmp_path,
                                                                                       monkeypatch, caplog):
    """--overwrite with fewer formats removed the others without a word; two exports started at once to the same
    new --output both succeeded, the second replacing the first without --overwrite."""
    import logging

    run_dir = trained_run["run_dir"]
    earlier = tmp_path / "earlier"
    (earlier / "savedmodel").mkdir(parents=True)
    for name in ("model.tflite", "vocab.json", "model.keras"):
        (earlier / name).write_text("an earlier export's")
    with caplog.at_level(logging.WARNING, logger="textgen"):
        written = export_module.export(run_dir, earlier, ("keras",), overwrite=True)
    assert [path.name for path in written] == ["model.keras", "vocab.json"]
    assert sorted(path.name for path in earlier.iterdir()) == ["model.keras", "vocab.json"]
    assert [record.getMessage() for record in caplog.records] == [
        "note: the earlier export's model.tflite, savedmodel are gone: --overwrite replaces the export whole "
        "(--format all writes every format)"]

    new = tmp_path / "new"
    write_keras = export_module.WRITERS["keras"]

    def another_export_finishes_first(meta, trained, building, graph):
        (new / "model.keras").parent.mkdir()
        (new / "model.keras").write_text("the other export's")
        return write_keras(meta, trained, building, graph)

    monkeypatch.setitem(export_module.WRITERS, "keras", another_export_finishes_first)
    with pytest.raises(TextgenError, match=r"^.*new was written by another program while this export was built; "
                                           r"pass --overwrite to replace it or choose another --output$"):
        export_module.export(run_dir, new, ("keras",))
    assert [path.name for path in new.iterdir()] == ["model.keras"]
    assert (new / "model.keras").read_text() == "the other export's"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier", "new"]  # nothing left beside them


def test_an_output_in_a_file_and_an_empty_output_are_told_what_to_give(trained_run, tmp_path):
    import textgen

    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(TextgenError, match=r"^.*notes.txt is a file, so --output .*notes.txt/x/y cannot be a "
                                           r"directory in it; choose another --output$"):  # was "(File exists)"
        export_module.export(trained_run["run_dir"], tmp_path / "notes.txt" / "x" / "y", ("keras",))
    with pytest.raises(textgen.OptionError, match=r"^output is empty; give a directory for the export, such as "
                                                  r"'exports/NAME'$"):  # it suggested '.', which export refuses
        textgen.load(trained_run["run_dir"]).export("")
    assert (tmp_path / "notes.txt").read_text() == "precious"


UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]  # root as any user: modes apply


@pytest.mark.skipif(sys.platform != "linux", reason="setpriv and file modes as on Linux")
def test_overwrite_removes_a_read_only_export_and_a_parent_it_cannot_write_in_is_named(trained_run, tmp_path):
    """A read-only earlier export, replaced with --overwrite, stayed whole beside it as .old-NAME-PID, hidden, with
    exit 0; an export in a writable directory whose parent is not (a mount point) failed --overwrite with
    "could not write the export to OUTPUT (Permission denied)", naming the directory that can be written."""
    import os
    import shutil

    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root, which file modes do not stop, without setpriv to run as if not")
    prefix = UNPRIVILEGED if os.geteuid() == 0 else []
    protected, mount = tmp_path / "protected", tmp_path / "ro" / "mount"
    for output in (protected, mount):
        export_module.export(trained_run["run_dir"], output, ("keras",))
    protected.chmod(0o555)
    mount.parent.chmod(0o555)
    before = files_snapshot(mount)
    script = ("import sys; from textgen.export import export; from textgen.errors import TextgenError\n"
              "for output in sys.argv[2:]:\n"
              "    try:\n"
              "        export(sys.argv[1], output, ('keras',), overwrite=True); print('exported')\n"
              "    except TextgenError as error:\n"
              "        print(error)\n")
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", script, str(trained_run["run_dir"]), str(protected),
                               str(mount)], capture_output=True, text=True, timeout=300)
    finally:
        mount.parent.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "exported", f"cannot write in {mount.parent} (Permission denied), where the new export is built before it "
        f"replaces {mount}; empty {mount} first (an empty directory is filled in place), or choose another --output; "
        "nothing was replaced"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["protected", "ro"]  # no .old-protected-PID
    assert sorted(path.name for path in protected.iterdir()) == ["model.keras", "vocab.json"]
    assert files_snapshot(mount) == before
