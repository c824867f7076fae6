"""The command line, driven through click's CliRunner: output streams, exit codes, one-line errors."""

import dataclasses
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

from conftest import PERIOD, files_snapshot, tensorflow_load_failing, write_text
from textgen.cli import cli
from textgen.config import ModelConfig, SampleConfig, TrainConfig, command_line_options

TINY = ["--units", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-length", "10", "--epochs", "1",
        "--dropout", "0"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_option():
    train_help = invoke("train", "--help").output
    for field in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig):
        if field.name != "vocab_size":
            assert "--" + field.name.replace("_", "-") in train_help
    assert "[auto|on|off]" in train_help
    sample_help = invoke("sample", "--help").output
    sampling = ["--" + name.replace("_", "-") for name in command_line_options(SampleConfig)]
    assert {"--temperature", "--min-p", "--max-repeat", "--skip-unknown"} <= set(sampling)
    for option in sampling + ["--prime-file", "--output", "--run", "--checkpoint-dir"]:
        assert option in sample_help
    main_help = CliRunner().invoke(cli, ["--help"], terminal_width=100)  # the width the README's reference uses
    assert main_help.exit_code == 0
    # Click cuts a command's summary (its docstring's first sentence) with "..." where it does not fit.
    summaries = main_help.output.split("Commands:")[1].splitlines()
    assert not [line for line in summaries if line.rstrip().endswith("...")], main_help.output


def test_checkpoint_dir_from_the_environment(trained_run, tmp_path, monkeypatch):
    """TEXTGEN_CHECKPOINT_DIR stands for --checkpoint-dir, which still wins; what a message suggests names the
    directory, since the command may be run where the variable is not set."""
    runs_dir = trained_run["checkpoint_dir"]
    monkeypatch.setenv("TEXTGEN_CHECKPOINT_DIR", str(runs_dir))
    monkeypatch.chdir(tmp_path)  # (no checkpoints/ here)
    listed = invoke("runs", "--json")
    assert listed.exit_code == 0, listed.output
    assert [row["name"] for row in json.loads(listed.stdout)] == ["period"]
    sampled = invoke("sample", "--prime", "abc", "-n", 12, "--seed", 1)
    assert sampled.exit_code == 0, sampled.output
    assert sampled.stdout.startswith("abc") and len(sampled.stdout) == 3 + 12 + 1
    given = invoke("sample", "--checkpoint-dir", tmp_path / "elsewhere")
    assert given.exit_code == 1 and "no checkpoint in" in given.stderr and str(runs_dir) not in given.stderr
    unknown = invoke("sample", "--run", "nope")
    assert unknown.exit_code == 1
    assert f"textgen runs --checkpoint-dir {runs_dir}" in unknown.stderr, unknown.stderr
    shutil.copytree(runs_dir, tmp_path / "checkpoints")  # the default directory, given while the variable is set
    unknown = invoke("sample", "--checkpoint-dir", "checkpoints", "--run", "nope")
    assert unknown.exit_code == 1 and "textgen runs --checkpoint-dir checkpoints" in unknown.stderr, unknown.stderr
    assert "TEXTGEN_CHECKPOINT_DIR" in invoke("sample", "--help").output
    monkeypatch.setenv("TEXTGEN_CHECKPOINT_DIR", str(trained_run["corpus"]))  # named as the variable, not the option
    refused = invoke("runs")
    assert refused.exit_code == 2 and refused.stderr.startswith(
        f"error: TEXTGEN_CHECKPOINT_DIR is {trained_run['corpus']}, a file; set it to the directory of the runs"), \
        refused.stderr


def test_bfloat16_where_tensorflow_would_crash_on_it_is_refused(tmp_path, monkeypatch):
    """On an AVX-512 CPU whose oneDNN ONEDNN_MAX_CPU_ISA holds to AVX2, TensorFlow's bfloat16 matmul kills the
    process (a segmentation fault): --mixed-precision on is refused before it starts (--max-minutes' sizing times
    products in it first), auto trains in float32 without timing bfloat16 and says why."""
    import textgen.cpu
    import textgen.session
    from textgen.session import mixed_precision_note, training_precision

    corpus = write_text(tmp_path / "letters.txt", (PERIOD * 50 + "\n") * 8)
    monkeypatch.setattr(textgen.cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    # Not the variable itself, which this process's oneDNN would obey (test_cpu reads it): a bfloat16 product let
    # through would then kill the test run, not fail this test.
    monkeypatch.setattr(textgen.cpu, "onednn_cap_setting", lambda: ("ONEDNN_MAX_CPU_ISA", "AVX2"))
    error = ("error: --mixed-precision on cannot run while ONEDNN_MAX_CPU_ISA=AVX2 holds TensorFlow's oneDNN below "
             "its bfloat16 kernels (TensorFlow crashes multiplying bfloat16 then); unset it, or train with "
             "--mixed-precision off or auto")
    for budget in ([], ["--max-minutes", 1]):
        refused = invoke("train", corpus, "--checkpoint-dir", tmp_path / "ck", *TINY, "--mixed-precision", "on",
                         *budget)
        assert refused.exit_code == 2 and refused.stderr.splitlines()[-1] == error, refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "ck" / "letters").exists()
    assert refused.stderr == error + "\n"  # refused by the sizing, before it timed anything
    monkeypatch.setattr(textgen.session, "_probe_bfloat16", lambda: pytest.fail("bfloat16 timed"))
    assert training_precision(TrainConfig(mixed_precision="auto"), 512) == "float32"
    assert mixed_precision_note("auto", 512, "float32") == (
        "mixed precision (auto): float32, since ONEDNN_MAX_CPU_ISA=AVX2 holds TensorFlow's oneDNN below this CPU's "
        "bfloat16 instructions")


def test_train_init_from_fine_tunes_a_new_run(trained_run, tmp_path, monkeypatch):
    corpus = write_text(tmp_path / "letters.txt", (PERIOD * 50 + "\n") * 8)
    options = ["--checkpoint-dir", tmp_path / "ck", "--init-from", trained_run["run_dir"], "--batch-size", 4,
               "--seq-length", 10, "--epochs", 1]
    shaped = invoke("train", corpus, *options, "--units", 16)
    assert shaped.exit_code == 2 and shaped.stderr.startswith("error: --units 16 differs from the run it starts "
                                                              "from (period: --units 32)"), shaped.stderr
    tuned = invoke("train", corpus, *options)
    assert tuned.exit_code == 0, tuned.stderr
    assert f"starting from the weights of run {trained_run['run_dir']} (its best checkpoint, epoch 3" in tuned.stderr
    assert "the characters it never saw start untrained: '\\n'" in tuned.stderr
    assert "embedding 8 (run period's)" in tuned.stderr
    info = invoke("info", "--checkpoint-dir", tmp_path / "ck", "--run", "letters")
    assert f"started from   {trained_run['run_dir'].resolve()}" in info.stdout
    listed = invoke("runs", "--checkpoint-dir", tmp_path / "ck")
    assert re.search(r"^letters +letters\.txt \(from period\) ", listed.stdout, re.M), listed.stdout
    (row,) = json.loads(invoke("runs", "--checkpoint-dir", tmp_path / "ck", "--json").stdout)
    assert row["started_from"] == dict(run=str(trained_run["run_dir"].resolve()), kind="best", epoch=3, step_in_epoch=0,
                                       corpus=str(trained_run["corpus"].resolve())), row
    (tmp_path / "empty").mkdir()  # without a CORPUS: refused before the built-in corpus is written here
    monkeypatch.chdir(tmp_path / "empty")
    refused = invoke("train", "--checkpoint-dir", tmp_path / "ck", "--init-from", "nosuch")
    assert refused.exit_code == 1 and "no run named 'nosuch'" in refused.stderr
    assert list((tmp_path / "empty").iterdir()) == []


def test_train_then_sample_writes_only_text_to_stdout(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt", PERIOD * 400)
    trained = invoke("train", corpus, "--checkpoint-dir", tmp_path / "ck", *TINY)
    assert trained.exit_code == 0, trained.stderr
    assert trained.stdout == ""
    assert "val" in trained.stderr and "bpc" in trained.stderr
    assert (tmp_path / "ck" / "corpus" / "best.json").exists()
    args = ("sample", "--checkpoint-dir", tmp_path / "ck", "--length", 40, "--prime", "abc", "--seed", 1)
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("abc") and len(first.stdout) == 3 + 40 + 1  # prime, text, newline
    out = tmp_path / "out.txt"
    written = invoke(*args, "--output", out)
    assert written.stdout == "" and out.read_text() == first.stdout  # the line break at the end too, as with >
    out.write_text("my own text")  # it replaced any file without a word (a run's corpus, given by mistake)
    refused = invoke(*args[:-2], "--seed", 2, "--output", out)
    assert (refused.exit_code, refused.stderr) == (1, f"error: --output {out} already exists; pass --overwrite to "
                                                      "replace it, or choose another file\n")
    assert out.read_text() == "my own text"
    out.chmod(0o600)  # private: it became 644, readable by every user of a shared machine
    replaced = invoke(*args, "--output", out, "--overwrite")
    assert replaced.exit_code == 0 and out.read_text() == first.stdout
    assert out.stat().st_mode & 0o777 == 0o600


def test_one_sample_goes_out_as_it_is_produced_and_ctrl_c_keeps_the_output_so_far(trained_run, tmp_path,
                                                                                  monkeypatch):
    """Piped, the text waited for its end (| head -c 50 took 48 s of a 2M-character sample); with --output, Ctrl-C
    lost all of it."""
    from textgen.generate import BATCH_CHUNK, Generator

    real_stream, seen = Generator.stream, []

    def interrupted_stream(self, config, warn, chunk, show_progress=False):
        pieces = real_stream(self, config, warn, chunk, show_progress)
        while True:
            try:
                seen.append(next(pieces))
            except StopIteration as finished:
                return finished.value
            yield seen[-1]
            if len(seen) == 3 and config.length > 1000:  # the prime, then two pieces of text
                raise KeyboardInterrupt

    monkeypatch.setattr(Generator, "stream", interrupted_stream)
    args = ("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime", "abc", "--seed", 1)
    piped = invoke(*args, "-n", 600)
    assert piped.exit_code == 0 and [len(piece) for piece in seen] == [3, BATCH_CHUNK, BATCH_CHUNK, 600 - 2 * 256]
    assert piped.stdout == "".join(seen) + "\n"
    seen.clear()
    out = tmp_path / "long.txt"
    result = CliRunner().invoke(cli, [str(a) for a in (*args, "-n", 100_000, "-o", out)])
    assert result.exit_code == 130, result.output
    assert result.stderr == f"interrupted: the text so far (515 characters, the prime included) is in {out}\n"
    assert out.read_text() == "".join(seen) and out.read_text().startswith(piped.stdout[:515])
    out.write_text("a whole sample, kept")  # --overwrite replaces it with a whole text only
    seen.clear()
    result = CliRunner().invoke(cli, [str(a) for a in (*args, "-n", 100_000, "-o", out, "--overwrite")])
    assert result.exit_code == 130 and result.stderr == (
        f"interrupted: {out} is kept as it was; the text so far (515 characters, the prime included) is not written "
        "over it\n")
    assert out.read_text() == "a whole sample, kept"


def test_sigterm_to_sample_keeps_the_output_so_far_and_exits_143(trained_run, tmp_path, monkeypatch):
    """SIGTERM (kill, a job's time limit) ended a sample to --output at once: the text so far was lost, without a
    word. It is now Ctrl-C for the command, with the exit status of a process the signal ended."""
    import signal

    from textgen.generate import Generator

    real_stream = Generator.stream

    def terminated_stream(self, config, warn, chunk, show_progress=False):
        for count, piece in enumerate(real_stream(self, config, warn, chunk, show_progress)):
            yield piece
            if count == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # through the handler the command installed

    monkeypatch.setattr(Generator, "stream", terminated_stream)
    out = tmp_path / "long.txt"
    before = signal.getsignal(signal.SIGTERM)
    result = invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime", "abc", "-n", 100_000, "-o",
                    out)
    assert result.exit_code == 143, result.output
    assert result.stderr == f"interrupted: the text so far (515 characters, the prime included) is in {out}\n"
    assert len(out.read_text()) == 515 and signal.getsignal(signal.SIGTERM) == before


def test_sample_json_gives_the_options_used_and_each_sample(trained_run, tmp_path):
    """sample --json: one document whose samples are the texts the command prints (no separator lines to split on,
    which a text may contain), and whose seed, drawn where none was given, has the text again."""
    ck = trained_run["checkpoint_dir"]
    drawn = invoke("sample", "--checkpoint-dir", ck, "--prime", "abc", "-n", 12, "--json")
    assert drawn.exit_code == 0, drawn.output
    document = json.loads(drawn.stdout)
    options, (only,) = document["options"], document["samples"]
    assert options["run"] == "period" and options["prime"] == "abc" and options["temperature"] == [0.5]
    assert isinstance(options["seed"], int) and only["text"].startswith("abc") and len(only["text"]) == 3 + 12
    again = invoke("sample", "--checkpoint-dir", ck, "--prime", "abc", "-n", 12, "--seed", options["seed"])
    assert again.stdout == only["text"] + "\n"

    args = ("sample", "--checkpoint-dir", ck, "--prime", "ab", "-t", "0,1", "--num-samples", 2, "-n", 30, "--seed", 5,
            "--stop", "fg")
    out = tmp_path / "samples.json"
    written = invoke(*args, "--json", "-o", out)
    assert written.exit_code == 0 and written.stdout == "", written.output
    assert written.stderr == ""  # (-t 0,1: greedy and 1, a pair worth asking for)
    # a decimal comma (French, German; a Chinese keyboard's) gave temperatures 0 and 7 for "-t 0,7" without a word
    comma = invoke("sample", "--checkpoint-dir", ck, "--prime", "ab", "-t", "0，7", "-n", 5)
    assert comma.exit_code == 0 and comma.stderr == \
        "note: --temperature 0，7 is two values, 0 and 7; for 0.7, type a point: --temperature 0.7\n"
    samples = json.loads(out.read_text(encoding="utf-8"))["samples"]
    assert [(sample["temperature"], sample["index"]) for sample in samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert samples[0] == {"text": "abcde", "temperature": 0, "index": 0, "stopped": True}  # greedy: the period
    printed = invoke(*args).stdout
    for sample in samples:
        assert f"temperature {sample['temperature']:g} =====\n{sample['text']}\n" in printed
    # -t given twice adds its values up, as a repeated --stop does (the last one alone was used, without a word)
    given_twice = invoke(*[("0" if arg == "0,1" else arg) for arg in args], "-t", "1")
    assert given_twice.stdout == printed and given_twice.stderr == ""
    listed = invoke(*[("0,1.0" if arg == "0,1" else arg) for arg in args])
    assert listed.stdout == printed and listed.stderr == ""


def test_a_note_that_comes_while_the_text_streams_is_told_after_its_last_line(trained_run, monkeypatch):
    """The repeat guard's note was written on the sample's last line: "...o onote: the repeat guard ..."."""
    import textgen.generate

    monkeypatch.setattr(textgen.generate, "REPEATS_TOLD_FROM", 1)  # (the tiny model's runs are short)
    told = invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime", "a", "-t", 100, "-n", 200,
                  "--seed", 3, "--max-repeat", 2)
    assert told.exit_code == 0 and told.stderr.startswith("note: the repeat guard (--max-repeat 2) ended "), told.stderr
    assert told.output == told.stdout + told.stderr  # (both, in the order they were written)


def test_sample_takes_several_stop_strings_each_given_once(trained_run):
    stopped = invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime", "ab", "-t", 0, "-n", 50,
                     "--stop", "f,g", "--stop", "e")  # once per text: the comma is part of the first
    assert (stopped.exit_code, stopped.stdout) == (0, "abcd\n")
    stopped = invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime", "ab", "-t", 0, "-n", 50,
                     "--stop", "f,g")
    assert (stopped.exit_code, stopped.stdout) == (0, "ab" + (PERIOD * 9)[2:52] + "\n")  # "f,g" never comes


def test_sample_num_samples_are_delimited(trained_run, tmp_path):
    args = ("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--num-samples", 2, "-n", 10, "--seed", 3)
    result = invoke(*args)
    assert result.exit_code == 0
    headers = [line for line in result.stdout.splitlines() if line.startswith("=====")]
    assert headers == ["===== sample 1/2, temperature 0.5 =====", "===== sample 2/2, temperature 0.5 ====="]
    # one line break at the end (a blank line followed the last sample), and --output gets the same
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
    assert invoke(*args, "-o", tmp_path / "s.txt").exit_code == 0 and (tmp_path / "s.txt").read_text() == result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Files for the bad-input table: corpora of every kind, and a run to damage."""
    from textgen.training import train

    root = tmp_path_factory.mktemp("bad")
    write_text(root / "good.txt", PERIOD * 400)
    write_text(root / "short.txt", "abc")
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "binary.bin").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 57)  # an ELF header: padded with NULs
    (root / "utf16.txt").write_bytes("To be, or not to be.\n".encode("utf-16"))  # with a byte order mark
    (root / "utf16le.txt").write_bytes("To be, or not to be.\n".encode("utf-16-le"))
    (root / "adir").mkdir()
    train(root / "good.txt", root / "ck", run="good", model_options=dict(units=16, embedding_dim=8, dropout=0.0),
          train_options=dict(batch_size=4, seq_length=10, epochs=1), log=lambda m: None)
    return root


EDITS = {
    "corpus-null": lambda meta: meta.update(corpus=None),
    "model-null": lambda meta: meta.update(model=None),
    "training-null": lambda meta: meta.update(training=None),
    "vocab-negative": lambda meta: meta["vocab"].__setitem__(0, -5),
    "vocab-size": lambda meta: meta["model"].update(vocab_size=5),
    "files-empty": lambda meta: meta.update(files={}),
    "weights-outside": lambda meta: meta["files"]["weights"].update(name="../../../keep.txt"),
    "format-newer": lambda meta: meta.update(format_version=999),
    "format-text": lambda meta: meta.update(format_version="2"),
    "format-zero": lambda meta: meta.update(format_version=0),
    "units-edited": lambda meta: meta["model"].update(units=meta["model"]["units"] + 1),  # not the weights' shape
    "step-text": lambda meta: meta.update(step_in_epoch="abc"),
    "step-negative": lambda meta: meta.update(step_in_epoch=-5),
    "elapsed-null": lambda meta: meta.update(elapsed_seconds=None),
    "loss-text": lambda meta: meta.update(val_loss="x"),
    "saved-at-number": lambda meta: meta.update(saved_at=5),
    "run-id-path": lambda meta: meta.update(run_id="../../x"),
}


def damage(run_dir, how):
    import json
    meta = json.loads((run_dir / "best.json").read_text())
    weights = run_dir / meta["files"]["weights"]["name"]
    if how == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "json":
        for kind in ("best", "last"):
            (run_dir / f"{kind}.json").write_text('{"format": "textgen-checkpoint", "model": ')
    elif how == "list":  # valid JSON, but not a checkpoint's object
        for kind in ("best", "last"):
            (run_dir / f"{kind}.json").write_text("[]")
    elif how == "field":  # valid JSON of a checkpoint, one field of the wrong type
        for kind in ("best", "last"):
            edited = json.loads((run_dir / f"{kind}.json").read_text())
            edited["model"]["units"] = "many"
            (run_dir / f"{kind}.json").write_text(json.dumps(edited))
    elif how in EDITS:  # valid JSON of a checkpoint, one part edited by hand
        for kind in ("best", "last"):
            edited = json.loads((run_dir / f"{kind}.json").read_text())
            EDITS[how](edited)
            (run_dir / f"{kind}.json").write_text(json.dumps(edited))
    elif how == "directory":  # a directory where the metadata should be
        for kind in ("best", "last"):
            (run_dir / f"{kind}.json").unlink()
            (run_dir / f"{kind}.json").mkdir()
    elif how == "history":  # an epoch row without its number
        for kind in ("best", "last"):
            edited = json.loads((run_dir / f"{kind}.json").read_text())
            del edited["history"][0]["epoch"]
            (run_dir / f"{kind}.json").write_text(json.dumps(edited))
    elif how == "junk":  # the run's files gone, something else left in its directory
        shutil.rmtree(run_dir)
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("mine")


BAD_INPUTS = [
    # (command line, expected message fragment, exit code, damage to do first)
    (["train", "{root}/missing.txt"], "not found", 1, None),
    (["train", "{root}/adir"], "is a directory, not a file: {root}/adir (give a text file inside it, or join its "
     "texts into one: cat {root}/adir/*.txt > adir.txt)", 1, None),
    (["train", "{root}/empty.txt"], "is empty", 1, None),
    (["train", "{root}/latin1.txt"], "not valid UTF-8 (first bad byte at byte offset 3, 0xE9 on line 1)", 1, None),
    (["train", "{root}/binary.bin"], "looks binary (NUL byte at byte offset 7, on line 1)", 1, None),
    (["train", "{root}/utf16.txt"], "is UTF-16 text, not UTF-8", 1, None),
    (["train", "{root}/utf16le.txt"], "is UTF-16LE text, not UTF-8", 1, None),
    (["train", "{root}/short.txt"], "too short", 1, None),
    (["train", "{root}/good.txt", "--epochs", "0"], "--epochs 0 trains until --max-minutes, which is 0 (no limit)", 2,
     None),
    (["train", "{root}/good.txt", "--epochs", "-1"], "--epochs must be an integer in [0, inf)", 2, None),
    (["train", "{root}/good.txt", "--batch-size", "-1"], "--batch-size must be", 2, None),
    (["train", "{root}/good.txt", "--seq-length", "0"], "--seq-length must be", 2, None),
    (["train", "{root}/good.txt", "--units", "0"], "--units must be", 2, None),
    (["train", "{root}/good.txt", "--layers", "0"], "--layers must be", 2, None),
    (["train", "{root}/good.txt", "--embedding-dim", "0"], "--embedding-dim must be", 2, None),
    (["train", "{root}/good.txt", "--dropout", "1"], "--dropout must be in [0, 1)", 2, None),
    (["train", "{root}/good.txt", "--learning-rate", "0"], "--learning-rate must be in (0, inf)", 2, None),
    (["train", "{root}/good.txt", "--learning-rate", "nan"], "--learning-rate must be", 2, None),
    (["train", "{root}/good.txt", "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)", 2, None),
    (["train", "{root}/good.txt", "--weight-decay", "-0.1"], "--weight-decay must be in [0, inf)", 2, None),
    (["train", "{root}/good.txt", "--epochs", "many"], "'many' is not a valid integer", 2, None),
    (["train", "{root}/good.txt", "--bogus"], "No such option '--bogus'", 2, None),
    (["train", "{root}/good.txt", "--lr-schedule", "linear"], "'linear' is not one of 'cosine', 'step'", 2, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--run", "good"], "already has checkpoints", 1,
     None),
    (["train", "{root}/good.txt", "--run", "../escape"], "invalid run name", 2, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/good.txt/sub"], "cannot write to the checkpoint", 1,
     None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/good.txt"], "/good.txt is a file; give the directory "
     "of the runs as --checkpoint-dir", 1, None),
    (["sample", "--checkpoint-dir", "{root}/nothing"], "no checkpoint in", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--run", "nope"], "no run named 'nope'", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-t", "-1"], "--temperature must be in [0, 1e+06]", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-t", "nan"], "--temperature must be", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-t", "hot"], "--temperature must be a number", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-t", "0.5,,1"],
     "--temperature must be a number or a comma-separated list such as 0.2,0.5,1.0, got '0.5,,1'", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-t", "0.5,"], "got '0.5,'", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--top-p", "0"], "--top-p must be in (0, 1]", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--top-p", "1.1"], "--top-p must be in (0, 1]", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--top-k", "0"], "--top-k must be", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--max-repeat", "-1"], "--max-repeat must be an integer in [0, 1e+09]",
     2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--length", "-5"], "--length must be", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--num-samples", "1000000000"],
     "--num-samples must be an integer in [1, 10000], got 1000000000", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--num-samples", "5001", "-t", "0.5,1"],
     "at most 10,000 samples at once, got 2 temperatures x --num-samples 5001; draw them in several runs", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--length", "100000000000000000000"],
     "--length must be an integer in [0, 1e+07], got 100000000000000000000", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--length", "10000000", "--num-samples", "6", "-t", "0.5,1"],
     "at most 100,000,000 characters at once, got 12 samples x --length 10,000,000; draw them in several runs", 2,
     None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime", "xyz"], "never saw: 'x' 'y' 'z'", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime-file", "{root}/missing.txt"], "prime file not found", 1,
     None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime-file", "The king"], "prime file not found: The king (check "
     "the path; the text itself? give it with --prime)", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime", "a", "--prime-file", "{root}/good.txt"], "not both", 2,
     None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--output", "{root}/no/dir/out.txt"], "does not exist", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--output", "{root}/ck"], "is a directory; give a file name", 1,
     None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--stop", "\udcff"], "--stop is not UTF-8 text (byte 0xFF at "
     "character 0): the terminal sends another encoding, such as GBK or Latin-1; set it to UTF-8", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime", "a\udcc3\udcc5"], "--prime is not UTF-8 text (byte 0xC3 "
     "at character 1): the terminal sends another encoding, such as GBK or Latin-1; set it to UTF-8, or give the "
     "prime in a UTF-8 file with --prime-file", 2, None),
    # 😀 as UTF-8 bytes, which a Python in the C locale read as ASCII: the terminal was right, the locale not
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime", "\udcf0\udc9f\udc98\udc80a"], "--prime came as UTF-8, but "
     "this Python reads the command line as ASCII: the locale is C or POSIX (LC_ALL=C); set LC_ALL=C.UTF-8 (or "
     "PYTHONUTF8=1), or give the prime in a UTF-8 file with --prime-file", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck"], "corrupted (checksum mismatch)", 1, "flip"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "corrupted (checksum mismatch)", 1, "truncate"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "metadata", 1, "json"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "not a textgen checkpoint", 1, "list"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "not a textgen checkpoint", 1, "list"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"],
     "is damaged (--units must be an integer in [1, inf), got 'many', which is not a number)", 1, "field"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "is damaged (--units must be an integer", 1, "field"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "is damaged (its history is not a list of epoch rows)",
     1, "history"),
    (["sample", "--checkpoint-dir", "{root}/ck", "--run", "good"], "run 'good' in ", 1, "junk"),
    # Found by a sweep of hand-damaged metadata: each was a TypeError, AttributeError or OverflowError traceback,
    # or blamed the weights.
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "best.json (Is a directory)", 1, "directory"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "damaged (its corpus is not a JSON object)", 1,
     "corpus-null"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "damaged (its model is not a JSON object)", 1, "model-null"),
    (["plot", "--checkpoint-dir", "{root}/ck"], "damaged (its training is not a JSON object)", 1, "training-null"),
    (["eval", "{root}/good.txt", "--checkpoint-dir", "{root}/ck"], "damaged (its vocab holds something that is not",
     1, "vocab-negative"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "damaged (its model's vocab_size 5 is not its 7 symbols)", 1,
     "vocab-size"),
    (["export", "--checkpoint-dir", "{root}/ck", "-o", "{root}/exp"], "damaged (its files do not name the weights "
     "file in the run's directory)", 1, "files-empty"),
    (["sample", "--checkpoint-dir", "{root}/ck"], "its files do not name the weights file", 1, "weights-outside"),
    (["sample", "--checkpoint-dir", "{root}/good.txt"], "good.txt is a file; give the directory of the runs", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--run", ""], "give a run name, or leave --run out", 2, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--run", ""], "give a run name", 2, None),
    (["train", "{root}/good.txt", "--seed", "4294967296"], "--seed must be an integer in [0, 4,294,967,295]", 2, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/big", "--size", "fixed", "--units", "99999999999999",
      "--batch-size", "4", "--seq-length", "10"],
     "parameters) does not fit in this machine's memory", 1, None),
    (["serve", "--checkpoint-dir", "{root}/ck", "--host", ""], "give an address such as 127.0.0.1", 2, None),
    # A RunState field edited by hand: each was a TypeError, IndexError or ValueError traceback.
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--run", "good", "--resume", "--epochs", "9"],
     "is damaged (its step_in_epoch is 'abc', not a whole number from 0)", 1, "step-text"),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--run", "good", "--resume", "--epochs", "9"],
     "is damaged (its step_in_epoch is -5, not a whole number from 0)", 1, "step-negative"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"],
     "is damaged (its elapsed_seconds is None, not a number)", 1, "elapsed-null"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "is damaged (its val_loss is 'x', not a number)", 1,
     "loss-text"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "is damaged (its saved_at is 5, not a time)", 1,
     "saved-at-number"),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--run", "good", "--resume", "--epochs", "9"],
     "is damaged (its run_id is not letters and digits", 1, "run-id-path"),
    # Each of these was accepted: a newer checkpoint read as this version's, '' as the current directory, and
    # --stop '' as no stop string.
    (["sample", "--checkpoint-dir", "{root}/ck"], "was written by a newer textgen (checkpoint format 999; this "
     "textgen", 1, "format-newer"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "is damaged (its format_version is '2', not a "
     "whole number from 1)", 1, "format-text"),
    (["info", "--checkpoint-dir", "{root}/ck", "--run", "good"], "is damaged (its format_version is 0,", 1,
     "format-zero"),
    (["sample", "--checkpoint-dir", ""], "give a directory, such as checkpoints or . for the current one", 2, None),
    # Keras's UserWarning about each weight group it could not match came first (two lines and a file path).
    (["sample", "--checkpoint-dir", "{root}/ck"], "cannot be loaded (ValueError); train again with --overwrite", 1,
     "units-edited"),
    (["runs", "--checkpoint-dir", " "], "give a directory", 2, None),
    # An empty path (an empty shell variable) read as the current directory: "corpus path is a directory, not a
    # file: .", or an export into the current directory refused only because no run was found there.
    (["train", ""], "Invalid value for '[CORPUS]': give a text file, or leave CORPUS out for the built-in corpus",
     2, None),
    (["eval", "", "--checkpoint-dir", "{root}/ck"], "Invalid value for 'FILE': give a text file", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--prime-file", ""], "give a file, or - for standard input", 2,
     None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-o", ""], "give a file name, such as samples.txt", 2, None),
    (["export", "--checkpoint-dir", "{root}/ck", "-o", ""], "give a directory to write, such as exports/NAME", 2, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "--stop", ""], "--stop is empty; give the text, or leave --stop out",
     2, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "{root}", "--run", "good.txt"],
     "good.txt is a file, not a run's directory; choose another name with --run NAME", 1, None),  # was "(File exists)"
    (["export", "--checkpoint-dir", "{root}/ck", "--run", "good", "-o", "{root}/ck", "--overwrite"],
     "is not an earlier export (it holds good)", 1, None),
    (["export", "--checkpoint-dir", "{root}/ck", "--run", "good", "-o", "{root}/ck/good", "--overwrite"],
     "is not an earlier export", 1, None),
    (["export", "--checkpoint-dir", "{root}/ck", "--run", "good", "-o", "{root}/good.txt/x"],
     "good.txt is a file, so --output", 1, None),
    (["eval", "{root}/missing.txt", "--checkpoint-dir", "{root}/ck"], "not found", 1, None),
    (["eval", "{root}/binary.bin", "--checkpoint-dir", "{root}/ck"], "looks binary", 1, None),
    (["eval", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--batch-size", "0"], "--batch-size must be", 2,
     None),
    (["eval", "{root}/good.txt", "--checkpoint-dir", "{root}/nothing"], "no checkpoint in", 1, None),
    (["eval", "{root}/good.txt", "--checkpoint-dir", "{root}/ck", "--batch-size", "1000000000000"],
     "evaluation needs more than --batch-size (1000000000000); use a smaller --batch-size", 1, None),
    # Each was an OSError traceback ("File name too long"): a name past 255 bytes, such as the text itself given as the
    # corpus's path.
    (["train", "x" * 300], "corpus must be the path of a text file, got 300 characters that are too long for a path",
     1, None),
    (["eval", "x" * 300, "--checkpoint-dir", "{root}/ck"], "text must be the path of a text file", 1, None),
    (["train", "{root}/good.txt", "--checkpoint-dir", "x" * 300], "--checkpoint-dir: too long for a path", 1, None),
    (["runs", "--checkpoint-dir", "x" * 300], "--checkpoint-dir: too long for a path (300 characters)", 1, None),
    (["export", "--checkpoint-dir", "{root}/ck", "-o", "x" * 300], "--output: too long for a path", 1, None),
    (["sample", "--checkpoint-dir", "{root}/ck", "-o", "x" * 300], "--output: too long for a path", 1, None),
]


def test_a_training_that_fails_before_its_first_save_leaves_no_run_directory(workspace, tmp_path):
    for corpus in ("utf16.txt", "short.txt"):
        result = invoke("train", str(workspace / corpus), "--checkpoint-dir", str(tmp_path / "ck"), "--epochs", "1")
        assert result.exit_code == 1 and result.stderr.startswith("error: ")
        assert not (tmp_path / "ck").exists()  # nor the checkpoint directory it made for it
    (tmp_path / "ck").mkdir()
    invoke("train", str(workspace / "short.txt"), "--checkpoint-dir", str(tmp_path / "ck"), "--epochs", "1")
    assert (tmp_path / "ck").is_dir() and not list((tmp_path / "ck").iterdir())  # the user's own directory stays


@pytest.mark.parametrize("args, message, code, damaged", BAD_INPUTS,
                         ids=[" ".join(a[:1] + a[2:]).replace("{root}/", "")[:60] + (f" [{d}]" if d else "")
                              for a, _, _, d in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_changes_nothing(workspace, tmp_path, args, message, code, damaged):
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    if damaged:
        damage(root / "ck" / "good", damaged)
    before = files_snapshot(root)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        result = invoke(*[a.format(root=root) for a in args])
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # by Python's defaults
    assert [str(warning.message) for warning in warned if not issubclass(warning.category, hidden)] == []
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(root=root) in lines[0]
    assert "Traceback" not in result.output
    assert files_snapshot(root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_corpus(tmp_path):
    locked = write_text(tmp_path / "locked.txt", PERIOD * 400)
    locked.chmod(0)
    result = invoke("train", locked, "--checkpoint-dir", tmp_path / "ck")
    assert result.exit_code == 1 and "not readable" in result.stderr


def test_export_over_the_working_directory_is_refused(workspace, tmp_path, monkeypatch):
    (tmp_path / "full" / "inner").mkdir(parents=True)
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    for where, output in (("full", "."), ("empty", "."), ("full/inner", "..")):
        monkeypatch.chdir(tmp_path / where)
        result = invoke("export", "--checkpoint-dir", workspace / "ck", "--run", "good", "-o", output, "--overwrite")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.stderr.strip() == f"error: --output {output} is the current directory or holds it; choose a " \
                                        "directory for the export, such as exports/NAME"
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not any((tmp_path / "empty").iterdir())


def test_runs_lists_every_run_and_marks_a_damaged_one(workspace, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    shutil.copytree(root / "ck" / "good", root / "ck" / "broken")
    damage(root / "ck" / "broken", "list")
    shutil.copytree(root / "ck" / "good", root / "ck" / "newer")
    damage(root / "ck" / "newer", "format-newer")
    result = invoke("runs", "--checkpoint-dir", root / "ck")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    hint = f"damaged (textgen info --checkpoint-dir {root / 'ck'} --run broken says why)"
    assert hint in rows["broken"] and "good.txt" in rows["good"]
    assert "written by a newer textgen" in rows["newer"]  # intact: not called damaged
    # The suggested command finds that run (it looked in ./checkpoints: "no run named 'broken'").
    info = invoke(*shlex.split(hint.removeprefix("damaged (textgen ").removesuffix(" says why)")))
    assert info.exit_code == 1 and "no run named" not in info.stderr and "broken" in info.stderr, info.output
    # For scripts: the rows of textgen.list_runs(), in JSON (the table's cells hold spaces: "0/2 + 108 steps")
    import textgen

    listed = invoke("runs", "--checkpoint-dir", root / "ck", "--json")
    assert listed.exit_code == 0 and listed.stderr == ""
    rows = json.loads(listed.stdout)
    assert rows == [dict(row, path=str(row["path"])) for row in textgen.list_runs(root / "ck")]
    assert {row["name"]: row.get("problem") for row in rows} == {"good": None, "broken": "damaged",
                                                                 "newer": "written by a newer textgen"}


def test_prime_file_dash_reads_standard_input(workspace):
    import subprocess
    import sys

    def sample(prime_input):
        return subprocess.run([sys.executable, "-m", "textgen", "sample", "--checkpoint-dir", str(workspace / "ck"),
                               "--prime-file", "-", "-n", "5", "-t", "0", "--seed", "1"], input=prime_input,
                              capture_output=True, timeout=300)

    piped = sample("abcd".encode())
    assert piped.returncode == 0, piped.stderr.decode()[-2000:]
    assert piped.stdout.decode().startswith("abcd") and len(piped.stdout.decode().rstrip("\n")) == 9
    refused = sample(b"\xff\xfe\x00binary")
    assert refused.returncode == 1 and b"Traceback" not in refused.stderr
    assert refused.stderr.decode().startswith("error: prime file ")
    # The prime's messages name standard input, not /dev/stdin, a path the user never gave
    for given, message in ((b"", "error: prime file is empty: standard input (give"),
                           (b"a\xffb", "error: prime file is not valid UTF-8 (first bad byte at byte offset 1, 0xFF on "
                                        "line 1): standard input (convert it")):
        refused = sample(given)
        assert refused.returncode == 1 and refused.stderr.decode().startswith(message), refused.stderr.decode()
    nul = workspace / "nul.txt"  # redirected from a file (< nul.txt): no repair command run on "standard input"
    nul.write_bytes(b"abc" * 1000 + b"\0")
    with open(nul, "rb") as redirected:
        refused = subprocess.run([sys.executable, "-m", "textgen", "sample", "--checkpoint-dir", str(workspace / "ck"),
                                  "--prime-file", "-"], stdin=redirected, capture_output=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.decode().endswith("standard input (remove them)\n"), \
        refused.stderr.decode()
    closed = subprocess.run([sys.executable, "-m", "textgen", "sample", "--checkpoint-dir", str(workspace / "ck"),
                             "--prime-file", "-"], stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                            preexec_fn=lambda: os.close(0))
    assert closed.returncode == 1 and closed.stderr.decode() == \
        "error: standard input is closed; pipe a text into it, or give a file\n", closed.stderr.decode()


def test_eval_names_what_it_did_not_score(workspace):
    """Its 2,800 characters: the first is unscored, then 2,799 read in 1, 3 or 4 streams (3 left over)."""
    one, three, four = (invoke("eval", workspace / "good.txt", "--checkpoint-dir", workspace / "ck", "--batch-size",
                               batch) for batch in (1, 3, 4))
    assert one.exit_code == three.exit_code == four.exit_code == 0
    assert one.stdout.rstrip().endswith("over 2,799 characters (0 outside the vocabulary excluded, 1 unscored: the "
                                        "first)")
    # It said "the first and the end that does not fill all 3 streams" where no end was left
    assert three.stdout.rstrip().endswith("over 2,799 characters (0 outside the vocabulary excluded, 1 unscored: the "
                                          "first)")
    assert four.stdout.rstrip().endswith("over 2,796 characters (0 outside the vocabulary excluded, 4 unscored: the "
                                         "first and the last 3, too few to fill all 4 streams)")
    two = invoke("eval", workspace / "good.txt", "--checkpoint-dir", workspace / "ck", "--batch-size", 2)
    assert two.stdout.rstrip().endswith("2 unscored: the first and the last one, too few to fill all 2 streams)")
    scored = invoke("eval", workspace / "good.txt", "--checkpoint-dir", workspace / "ck", "--batch-size", 4, "--json")
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert (result["file"], result["characters"], result["unscored"], result["unknown"]) == (
        str(workspace / "good.txt"), 2796, 4, 0)
    assert f"{result['bpc']:.4f} bits per character, {result['nats']:.4f} nats" in four.stdout


def test_eval_dash_scores_standard_input_as_the_same_file_and_names_it_in_its_messages(workspace):
    """A piped text was refused (a pipe can be read once, and eval reads a text twice)."""
    options = ("--checkpoint-dir", workspace / "ck", "--batch-size", 4)
    text = (workspace / "good.txt").read_text()
    from_file = json.loads(invoke("eval", workspace / "good.txt", *options, "--json").stdout)
    piped = CliRunner().invoke(cli, [str(a) for a in ("eval", "-", *options, "--json")], input=text)
    assert piped.exit_code == 0, piped.output
    from_stdin = json.loads(piped.stdout)
    assert from_stdin.pop("file") == "-" and from_file.pop("file") == str(workspace / "good.txt")
    assert from_stdin == from_file
    said = CliRunner().invoke(cli, [str(a) for a in ("eval", "-", *options)], input=text)
    assert said.stdout.startswith(f"standard input: {from_file['bpc']:.4f} bits per character")
    for given, message in (("", "error: text file is empty: standard input (give a UTF-8 text file"),
                           ("abc", "error: standard input has only 3 characters the model knows; evaluation needs "
                                   "more than --batch-size (4)")):
        refused = CliRunner().invoke(cli, [str(a) for a in ("eval", "-", *options)], input=given)
        assert refused.exit_code == 1 and refused.stderr.startswith(message), refused.output
        assert "Traceback" not in refused.output and "textgen-eval-" not in refused.output
    mostly_unknown = CliRunner().invoke(cli, [str(a) for a in ("eval", "-", *options)], input="☃" * 90 + text[:30])
    assert "warning: 75% of the characters of standard input (90) are outside" in mostly_unknown.stderr
    cut = CliRunner().invoke(cli, [str(a) for a in ("eval", "-", *options)], input=("é" + text).encode() + b"\xc3")
    assert cut.exit_code == 1 and cut.stderr.rstrip().endswith("standard input (remove its last 1 byte)"), cut.stderr
    # A wrong run is told as for a file
    unknown_run = CliRunner().invoke(cli, ["eval", "-", "--checkpoint-dir", str(workspace / "ck"), "--run", "nope"],
                                     input="never read")
    assert unknown_run.exit_code == 1 and "no run named 'nope'" in unknown_run.stderr


def test_eval_dash_stopped_by_sigterm_while_reading_leaves_no_copy_of_the_text(workspace, tmp_path, monkeypatch):
    import tempfile

    class Terminated(io.RawIOBase):  # a job's time limit, while the text is still coming
        def readable(self):
            return True

        def readinto(self, buffer):
            os.kill(os.getpid(), signal.SIGTERM)
            return 0

    def unhandled(signum, frame):  # (not the command's: without its own handler, SIGTERM would end the tests)
        raise RuntimeError("the command left SIGTERM to its default, which ends it at once")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        stopped = CliRunner().invoke(cli, ["eval", "-", "--checkpoint-dir", str(workspace / "ck")],
                                     input=io.BufferedReader(Terminated()))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.exit_code == 143 and stopped.stderr.strip() == "terminated", stopped.output
    assert list(tmp_path.iterdir()) == []


def test_runs_in_an_empty_directory_is_an_empty_answer_and_a_missing_one_an_error(tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path)])
    assert (result.exit_code, result.stdout) == (0, "")
    listed = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path), "--json"])
    assert (listed.exit_code, listed.stdout, listed.stderr) == (0, "[]\n", "")
    # The commands it suggests name the directory: without it, they train into ./checkpoints.
    assert result.stderr.strip() == f"no runs in {tmp_path} yet; train one with: textgen train CORPUS " \
                                    f"--checkpoint-dir {tmp_path}"
    result = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == f"error: no checkpoint directory {tmp_path / 'missing'}; train a run with: " \
                                    f"textgen train CORPUS --checkpoint-dir {tmp_path / 'missing'}"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["runs"])
    assert result.stderr.strip() == "error: no checkpoint directory checkpoints; train a run with: textgen train " \
                                    "CORPUS (or give --checkpoint-dir)"
    (tmp_path / "a.txt").write_text("text")
    result = CliRunner().invoke(cli, ["runs", "--checkpoint-dir", str(tmp_path / "a.txt")])
    assert result.exit_code == 1 and result.stderr.strip() == \
        f"error: {tmp_path / 'a.txt'} is a file; give the directory of the runs as --checkpoint-dir"


def test_resume_without_a_corpus_trains_on_the_runs_own(tmp_path):
    corpus = write_text(tmp_path / "own.txt", PERIOD * 400)
    options = ["--checkpoint-dir", tmp_path / "ck", "--run", "own", "--units", "8", "--embedding-dim", "4",
               "--batch-size", "4", "--seq-length", "10"]
    assert invoke("train", corpus, *options, "--epochs", "1").exit_code == 0
    result = invoke("train", *options, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and "epoch 2/2" in result.stderr
    corpus.unlink()
    gone = invoke("train", *options, "--epochs", "3", "--resume")
    assert gone.exit_code == 1
    assert gone.stderr.strip() == f"error: run 'own' was trained on {corpus}, which no longer exists; pass the " \
                                  "corpus to resume on (the file where it is now, or an edited copy)"
    from textgen.training import _resume_corpus

    with pytest.raises(FileNotFoundError, match="which no longer exists"):  # as textgen.train raises it in Python
        _resume_corpus(tmp_path / "ck", "own")


def test_auto_resume_is_one_command_that_starts_resumes_and_finds_the_run_complete(tmp_path, monkeypatch):
    """A batch job that is requeued runs the same command again: --resume failed the first start ("nothing to
    resume") and a plain start failed every later one; a finished run, re-run, was an error (exit 1), which a job
    script could not tell from a real one."""
    corpus = write_text(tmp_path / "own.txt", PERIOD * 400)
    job = ["train", corpus, "--checkpoint-dir", tmp_path / "ck", "--run", "own", "--auto-resume", "--units", "8",
           "--embedding-dim", "4", "--batch-size", "4", "--seq-length", "10", "--seed", "3"]
    started = invoke(*job, "--epochs", "1")
    assert started.exit_code == 0 and "resuming" not in started.stderr and "epoch 1/1" in started.stderr
    run_dir = tmp_path / "ck" / "own"
    before = files_snapshot(run_dir)
    again = invoke(*job, "--epochs", "1")
    best = json.loads((run_dir / "best.json").read_text())["best_val_loss"]
    assert (again.exit_code, again.stderr) == (0, f"nothing to train: run 'own' is complete: it has done its 1 "
                                                  f"epoch; best validation loss {best:.4f} nats "
                                                  f"({best / math.log(2):.3f} bpc); checkpoints in {run_dir}\n")
    assert files_snapshot(run_dir) == before
    longer = invoke(*job, "--epochs", "2")
    assert longer.exit_code == 0 and "resuming" in longer.stderr and "epoch 2/2" in longer.stderr
    assert "epoch 1/2" not in longer.stderr
    monkeypatch.chdir(tmp_path)  # without CORPUS: the run's own (it trained on the built-in corpus, not written)
    own = invoke("train", "--checkpoint-dir", tmp_path / "ck", "--run", "own", "--auto-resume", "--epochs", "3")
    assert own.exit_code == 0 and "resuming" in own.stderr and "epoch 3/3" in own.stderr, own.stderr
    assert not (tmp_path / "data").exists()
    refused = invoke(*job, "--overwrite")
    assert (refused.exit_code, refused.stderr) == (2, "error: --auto-resume and --overwrite contradict each other; "
                                                      "choose one\n")


def test_auto_resume_finds_a_run_that_patience_stopped_complete(tmp_path):
    """A run --patience had stopped trained one more epoch at each resume, and stopped again (exit 0 each time)."""
    corpus = write_text(tmp_path / "own.txt", PERIOD * 400)
    job = ["train", corpus, "--checkpoint-dir", tmp_path / "ck", "--auto-resume", "--units", "8", "--embedding-dim",
           "4", "--batch-size", "4", "--seq-length", "10", "--epochs", "6", "--patience", "1",
           "--learning-rate", "1e-12"]  # (too small to change a float32 weight: no epoch does better than the first)
    stopped = invoke(*job)
    assert stopped.exit_code == 0 and "no validation improvement for 1 epochs" in stopped.stderr, stopped.stderr
    history = (tmp_path / "ck" / "own" / "history.csv").read_text()
    again = invoke(*job)
    assert again.exit_code == 0 and again.stderr.startswith("nothing to train: run 'own' is complete: it stopped "
                                                            "early, 1 epoch without a better validation loss at "
                                                            "--patience 1; a larger --patience, or 0, trains on; ")
    assert (tmp_path / "ck" / "own" / "history.csv").read_text() == history
    reshaped = invoke(*job, "--units", "16")  # (not complete: a resume that cannot be)
    assert reshaped.exit_code == 1 and "cannot resume with a different model" in reshaped.stderr, reshaped.stderr
    assert "\nresuming " in invoke(*job, "--patience", "2").stderr  # (the advice taken)


def test_output_over_a_runs_own_file_or_its_corpus_is_refused_even_with_overwrite(trained_run, tmp_path):
    """--output --overwrite wrote samples over best.json (the run could no longer be loaded) or over the text the run
    was trained on (a resume then said the corpus had changed)."""
    run_dir = trained_run["checkpoint_dir"] / "period"
    before = files_snapshot(trained_run["corpus"].parent)
    args = ("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "-n", 5, "--seed", 1, "--overwrite", "-o")
    for target in (run_dir / "best.json", run_dir / "corpus.npy", next(run_dir.glob("ckpt-*.weights.h5"))):
        refused = invoke(*args, target)
        assert (refused.exit_code, refused.stderr) == (1, f"error: --output {target} would replace a file that run "
                                                          "'period' needs; write the text elsewhere, such as "
                                                          "samples.txt (another name in the run's folder is fine)\n")
    for target in (trained_run["checkpoint_dir"] / "best.json", trained_run["checkpoint_dir"] / ".lock"):
        refused = invoke(*args, target)  # the directory of the runs, which would then read as a run itself
        assert (refused.exit_code, refused.stderr) == (1, f"error: --output {target} would put a run's file in the "
                                                          f"directory of the runs {trained_run['checkpoint_dir']}, "
                                                          "which would then read as a damaged run; write the text "
                                                          "elsewhere, such as samples.txt\n")
    (tmp_path / "corpus-link.txt").symlink_to(trained_run["corpus"])  # the same file by another name
    for target in (trained_run["corpus"], tmp_path / "corpus-link.txt"):
        refused = invoke(*args, target)
        assert (refused.exit_code, refused.stderr) == (1, f"error: --output {target} is the text run 'period' was "
                                                          "trained on (a resume reads it again); write the samples "
                                                          "to another file\n")
    assert files_snapshot(trained_run["corpus"].parent) == before
    kept_beside = invoke(*args, run_dir / "samples.txt")
    assert kept_beside.exit_code == 0 and len((run_dir / "samples.txt").read_text()) == 5 + 1
    (run_dir / "samples.txt").unlink()


def test_output_into_a_pipe_or_a_full_device_is_written_there_or_refused(workspace, tmp_path):
    import subprocess
    import sys
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()), daemon=True)
    reader.start()
    # An atomic rename would replace the FIFO (or /dev/null, as root) by a regular file. (The reader, started first,
    # keeps the open for writing from blocking.)
    options = ["sample", "--checkpoint-dir", str(workspace / "ck"), "-n", "5", "-t", "0", "--prime", "ab"]
    result = invoke(*options, "-o", fifo)
    reader.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert fifo.is_fifo() and received == [invoke(*options).stdout] and len(received[0]) == 7 + 1
    if os.path.exists("/dev/full"):  # a write that fails: exit 1 in one line, not 0 with the text lost
        with open("/dev/full", "w") as full:
            refused = subprocess.run([sys.executable, "-m", "textgen", "sample", "--checkpoint-dir",
                                      str(workspace / "ck"), "-n", "5"], stdout=full, stderr=subprocess.PIPE,
                                     text=True, timeout=300)
        assert refused.returncode == 1
        assert refused.stderr.strip() == "error: cannot write the output (No space left on device); write it elsewhere"


def test_output_to_dev_stdout_goes_after_what_the_redirected_file_holds(tmp_path, capfd):
    """-o /dev/stdout was refused ("already exists") when stdout went into a file, and with --overwrite the
    rename replaced that file: what the script had written there before and after was lost."""
    from pathlib import Path

    from textgen.files import write_output

    print("before", flush=True)  # pytest's capture holds stdout in a file, as a shell's redirect does
    write_output(Path("/dev/stdout"), "é sample")
    assert capfd.readouterr().out == "before\né sample"
    kept = tmp_path / "kept.txt"  # any descriptor of the process: 4>>kept.txt, -o /dev/fd/4
    kept.write_text("precious\n")
    inode = kept.stat().st_ino
    descriptor = os.open(kept, os.O_WRONLY | os.O_APPEND)
    try:
        write_output(Path(f"/dev/fd/{descriptor}"), "é sample", overwrite=True)
    finally:
        os.close(descriptor)
    assert kept.read_text(encoding="utf-8") == "precious\né sample" and kept.stat().st_ino == inode


def test_plot_reads_a_run_left_with_its_best_checkpoint_and_says_what_it_cannot_write(workspace, tmp_path):
    run_dir = shutil.copytree(workspace / "ck" / "good", tmp_path / "ck" / "good")
    (run_dir / "last.json").unlink()
    (run_dir / "curve.png").unlink()
    result = invoke("plot", "--checkpoint-dir", tmp_path / "ck")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(run_dir / "history.csv"), str(run_dir / "curve.png")]
    (run_dir / "curve.png").unlink()
    (run_dir / "curve.png").mkdir()
    refused = invoke("plot", "--checkpoint-dir", tmp_path / "ck")
    assert refused.exit_code == 1 and refused.stderr.startswith(f"error: cannot write {run_dir / 'curve.png'}")
    assert len(refused.stderr.strip().splitlines()) == 1
    # A run stopped before its first validation: how to get one (it said only that it had none)
    early = shutil.copytree(workspace / "ck" / "good", tmp_path / "ck2" / "early")
    (early / "best.json").unlink()
    (early / "last.json").write_text(json.dumps(dict(json.loads((early / "last.json").read_text()), history=[])))
    empty = invoke("plot", "--checkpoint-dir", tmp_path / "ck2")
    assert (empty.exit_code, empty.stderr) == (1, "error: run 'early' has no finished epoch to plot yet; train it on "
                                                  "to the end of its first epoch with: textgen train --checkpoint-dir "
                                                  f"{tmp_path / 'ck2'} --run early --resume\n")


def test_plot_output_draws_the_curve_elsewhere_and_leaves_the_run_as_it_is(workspace, tmp_path):
    """plot rewrote RUN/history.csv and RUN/curve.png, and could write nothing else: a run the user may not write in
    (another user's, a read-only copy) could not be plotted at all."""
    run_dir = shutil.copytree(workspace / "ck" / "good", tmp_path / "ck" / "good")
    (run_dir / "curve.png").unlink()
    history = (run_dir / "history.csv").read_bytes()
    os.utime(run_dir / "history.csv", (0, 0))
    drawn = invoke("plot", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "curve.svg")
    assert (drawn.exit_code, drawn.stdout) == (0, f"{tmp_path / 'curve.svg'}\n"), drawn.stderr
    assert "<svg" in (tmp_path / "curve.svg").read_text(encoding="utf-8")
    assert not (run_dir / "curve.png").exists() and (run_dir / "history.csv").stat().st_mtime == 0
    assert (run_dir / "history.csv").read_bytes() == history
    invoke("plot", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "curve.pdf")
    assert (tmp_path / "curve.pdf").read_bytes().startswith(b"%PDF")
    kept = invoke("plot", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "curve.svg")
    assert (kept.exit_code, kept.stderr) == (1, f"error: --output {tmp_path / 'curve.svg'} already exists; pass "
                                                "--overwrite to replace it, or choose another file\n")
    jpeg = invoke("plot", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "curve.jpg")
    assert (jpeg.exit_code, jpeg.stderr) == (1, f"error: --output {tmp_path / 'curve.jpg'}: give a file name ending "
                                                "in .png, .svg or .pdf\n")
    assert not (tmp_path / "curve.jpg").exists()
    # Where the run cannot be written, the refusal says how to draw it anyway
    (run_dir / "curve.png").mkdir()
    refused = invoke("plot", "--checkpoint-dir", tmp_path / "ck")
    assert refused.exit_code == 1 and refused.stderr.endswith("or draw the curve elsewhere with --output FILE.png\n")


def test_textgen_alone_shows_the_help_without_an_error_prefix():
    result = invoke()
    assert result.exit_code == 2 and result.stderr.startswith("Usage: ") and "COMMAND [ARGS]" in result.stderr
    assert "error" not in result.stderr


def test_the_built_in_corpus_is_written_only_for_a_training_that_starts_and_it_is_said(tmp_path, monkeypatch):
    """textgen train without a corpus wrote data/pydoc_topics.txt into the current directory without a word, also
    for a training it then refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck" / "pydoc_topics").mkdir(parents=True)
    (tmp_path / "ck" / "pydoc_topics" / "last.json").write_text("{}")  # a run of that name, trained elsewhere
    for refused, code, message in (
            (["--learning-rate", "-1"], 2, "error: --learning-rate must be in (0, inf), got -1\n"),
            ([], 1, "error: run 'pydoc_topics' already has checkpoints in ck/pydoc_topics: pass --resume to continue "
                    "it, --overwrite to replace it, or --run NAME to start another run\n")):
        result = invoke("train", "--checkpoint-dir", "ck", *refused)
        assert (result.exit_code, result.stderr) == (code, message)
        assert [path.name for path in tmp_path.iterdir()] == ["ck"]
    started = invoke("train", "--checkpoint-dir", "ck", "--run", "new", "--batch-size", 100_000)  # refused later
    assert started.exit_code == 1
    assert started.stderr.startswith("no corpus given: writing the built-in one (Python's own documentation) to "
                                     "data/pydoc_topics.txt\n")
    assert (tmp_path / "data" / "pydoc_topics.txt").stat().st_size > 400_000


def test_a_reader_that_stops_reading_ends_the_sample_quietly(trained_run):
    """`textgen sample | head -c 50` exited 1, silently, once one sample streamed into the pipe: click's own answer
    to a broken pipe, before the command line's (exit 0, as the end of a pipe is not an error)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "textgen", "sample", "--checkpoint-dir",
                                str(trained_run["checkpoint_dir"]), "-n", "300000", "--seed", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert len(process.stdout.read(50)) == 50  # as head -c 50 reads, then leaves
        process.stdout.close()
        assert process.wait(timeout=120) == 0
        assert process.stderr.read() == b""
    finally:
        process.kill()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_shutdown_timeout_that_is_no_number_of_seconds_is_refused(value):
    """click's FloatRange(0) let both through: nan stopped the server's requests at once, inf never."""
    result = CliRunner().invoke(cli, ["serve", "--shutdown-timeout", value])
    assert result.exit_code == 2
    assert f"Invalid value for '--shutdown-timeout': must be a number of seconds, such as 10, not {value}" in \
        result.output


@pytest.mark.parametrize("origin", ["http://localhost:3000/", "localhost:3000", "http://example.com/app"])
def test_an_allowed_origin_that_no_browser_sends_is_refused(origin):
    """A trailing slash or a path never matches the Origin a browser sends: the API stayed closed to the page."""
    result = CliRunner().invoke(cli, ["serve", "--allow-origin", "http://ok.example", "--allow-origin", origin])
    assert result.exit_code == 2
    assert f"Invalid value for '--allow-origin': {origin!r} is not an origin; give scheme://host[:port] without a " \
           "path, such as http://localhost:3000, or * for any" in " ".join(result.output.split())


@pytest.mark.parametrize("name", ["http://gpu-box:8000", "gpu-box/", "*.", "a b"])
def test_an_allowed_host_that_no_request_names_is_refused(name):
    """--allow-host took http://gpu-box:8000 and *.example.org without a word, and matched nothing."""
    result = CliRunner().invoke(cli, ["serve", "--allow-host", "ok.example", "--allow-host", name])
    assert result.exit_code == 2
    assert f"Invalid value for '--allow-host': {name!r} is not a host name; give one as a browser's address bar has " \
           "it, without http:// or a path, such as gpu-box.lab.example.org, .example.org for every name in that " \
           "domain, or * for any" in " ".join(result.output.split())


def test_a_closed_standard_output_is_one_error_line(trained_run):
    """Started with its standard output closed (>&-), every command ended in a traceback (sys.stdout is None)."""
    import subprocess

    import sys

    result = subprocess.run([sys.executable, "-m", "textgen", "runs", "--checkpoint-dir",
                             str(trained_run["checkpoint_dir"])], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(1), timeout=120)
    assert (result.returncode, result.stderr) == (1, "error: cannot write the output (standard output is closed); "
                                                     "write it elsewhere\n")
    # And its descriptor is kept by /dev/null: the next file opened took it (a run's lock file, in training).
    script = ("import os, sys\nfrom textgen.cli import cli\n"
              "try:\n    cli.main(['info', '--checkpoint-dir', 'missing'])\n"  # (it writes nothing there)
              "except SystemExit:\n    sys.stderr.write(os.readlink('/proc/self/fd/1'))")
    result = subprocess.run([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(1), timeout=120)
    assert result.stderr.splitlines()[-1] == os.devnull


def test_ctrl_c_while_tensorflow_loads_is_one_line(trained_run):
    """Ctrl-C (or SIGTERM) while TensorFlow loaded its libraries made its import fail ("initialization failed") in
    the middle of the interrupt: a traceback of 100 lines and exit 1. Now it ends as any other interrupted command
    (the empty line first ends the terminal's ^C)."""
    for raised, code, told in (("KeyboardInterrupt()", 130, "aborted"),
                               ("__import__('textgen.cli').cli.Terminated()", 143, "terminated")):
        script = tensorflow_load_failing(raised) + "from textgen.cli import cli\ncli.main(sys.argv[1:])\n"
        result = subprocess.run([sys.executable, "-c", script, "sample", "--checkpoint-dir",
                                 str(trained_run["checkpoint_dir"]), "-n", "5"], capture_output=True, text=True,
                                timeout=300)
        assert (result.returncode, result.stdout, result.stderr) == (code, "", f"\n{told}\n")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_ends_the_process_with_its_status(trained_run, tmp_path, stop):
    """Ctrl-C as an export finished (in TensorFlow's exit handlers) printed a traceback from one of them; a SIGTERM
    as a finished training's process unloaded TensorFlow (~0.6 s) killed it, exit 143 (a batch job requeued). The
    command had done its work: the exit handlers run with the signals ending the process at once with the command's
    status, and Python's unloading of modules, where no handler of ours runs any more, is skipped."""
    unloading = ("class Unloading:\n    def __del__(self):\n"
                 "        print('unloading', file=sys.stderr, flush=True)\n        time.sleep(60)\n"
                 "kept = Unloading()\n")
    exiting = "atexit.register(lambda: (print('exiting', file=sys.stderr, flush=True), time.sleep(60)))\n"
    for arguments, status in ((["runs", "--checkpoint-dir", str(trained_run["checkpoint_dir"])], 0),
                              (["runs", "--checkpoint-dir", str(tmp_path / "none")], 1)):
        for stage in (exiting, ""):  # a signal in an exit handler; none, and modules that would take long to unload
            script = ("import atexit, sys, time\nfrom textgen.cli import main\n" + unloading + stage
                      + "sys.argv[1:] = sys.argv[2:]\nmain()")  # (as the console script: main(), no arguments)
            process = subprocess.Popen([sys.executable, "-c", script, "textgen", *arguments], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            if stage:
                told = process.stderr.readline()
                while not told.endswith("exiting\n"):
                    assert told, "the exit handler never ran"
                    told = process.stderr.readline()
                process.send_signal(stop)
            output, rest = process.communicate(timeout=30)
            assert process.returncode == status and "unloading" not in rest and "Traceback" not in rest, rest
            if status == 0:
                assert output.splitlines()[1].startswith("period "), output  # (the command's own output, whole)


def test_the_console_script_exits_with_a_thread_pool_alive(trained_run):
    """Ending the process itself, the console script waited for every other thread, and a thread pool's workers,
    which Python's exit tells to stop, waited forever."""
    script = ("import concurrent.futures, sys\nfrom textgen.cli import main\n"
              "pool = concurrent.futures.ThreadPoolExecutor(2)\npool.submit(print, 'pooled').result()\n"
              "sys.argv[1:] = sys.argv[2:]\nmain()")
    done = subprocess.run([sys.executable, "-c", script, "textgen", "runs", "--checkpoint-dir",
                           str(trained_run["checkpoint_dir"])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("pooled\nrun "), done.stdout + done.stderr


def test_a_program_running_a_command_keeps_its_signal_handlers(trained_run):
    """main(ARGS) from a program left handlers behind that ended the program at its next Ctrl-C, with the command's
    old status, skipping its own except and finally."""
    previous = signal.getsignal(signal.SIGINT)
    from textgen.cli import main

    with pytest.raises(SystemExit) as done:
        main(["runs", "--checkpoint-dir", str(trained_run["checkpoint_dir"])])
    assert done.value.code == 0 and signal.getsignal(signal.SIGINT) is previous


def test_a_closed_standard_error_still_samples(trained_run):
    """Started with its standard error closed (2>&-), sample, eval and export failed (exit 1, nothing on stdout):
    os.dup(2), which mutes TensorFlow's import, raised EBADF."""
    import subprocess

    import sys

    script = ("import os, sys\nfrom textgen.cli import cli\n"
              "try:\n    cli.main(sys.argv[1:])\n"
              "except SystemExit as stop:\n    print(stop.code, os.readlink('/proc/self/fd/2'))")
    result = subprocess.run([sys.executable, "-c", script, "sample", "--checkpoint-dir",
                             str(trained_run["checkpoint_dir"]), "-n", "20", "--seed", "3"], stdout=subprocess.PIPE,
                            text=True, preexec_fn=lambda: os.close(2), timeout=300)
    assert result.returncode == 0 and result.stdout.endswith(f"\n0 {os.devnull}\n"), result.stdout
    text = result.stdout.rsplit("\n", 2)[0]
    assert text == invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "-n", 20, "--seed", 3).stdout \
        .rstrip("\n")


def test_sample_output_dash_is_standard_output(trained_run, tmp_path, monkeypatch):
    """-o - wrote a file named - (where --prime-file - and eval - read standard input)."""
    monkeypatch.chdir(tmp_path)
    args = ("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "-n", 30, "--seed", 4)
    dashed = invoke(*args, "-o", "-")
    assert dashed.exit_code == 0 and dashed.stdout == invoke(*args).stdout and len(dashed.stdout) > 30
    assert not (tmp_path / "-").exists()
    assert invoke(*args, "-o", "./-").exit_code == 0 and (tmp_path / "-").is_file()  # ./- is the file named -


def test_sample_output_through_a_symbolic_link_keeps_the_link(trained_run, tmp_path):
    """--output replaced a link (a dangling one without --overwrite) by a file, and a link loop by a file too."""
    (tmp_path / "target.txt").write_text("precious")
    for name, points_to in (("link.txt", "target.txt"), ("dangling.txt", "missing.txt"), ("a", "b"), ("b", "a")):
        (tmp_path / name).symlink_to(points_to)
    args = ("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "-n", 5, "--seed", 1, "-o")
    assert invoke(*args, tmp_path / "link.txt").exit_code == 1 and (tmp_path / "target.txt").read_text() == "precious"
    assert invoke(*args, tmp_path / "link.txt", "--overwrite").exit_code == 0
    assert invoke(*args, tmp_path / "dangling.txt").exit_code == 0
    assert all((tmp_path / name).is_symlink() for name in ("link.txt", "dangling.txt"))
    assert len((tmp_path / "target.txt").read_text()) == len((tmp_path / "missing.txt").read_text()) == 5 + 1
    loop = invoke(*args, tmp_path / "a")
    assert (loop.exit_code, loop.stderr) == (1, f"error: --output {tmp_path / 'a'} is a symbolic link that leads back "
                                                "to itself; give a file name\n")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    (tmp_path / "far.txt").symlink_to(tmp_path / "nowhere" / "x.txt")  # refused before the text is generated, not after
    far = invoke(*args, tmp_path / "far.txt")
    assert (far.exit_code, far.stderr) == (1, f"error: cannot write {tmp_path / 'far.txt'}: directory "
                                              f"{tmp_path / 'nowhere'} does not exist\n")


def test_an_unknown_option_named_as_other_tools_name_it_is_given_textgens_name():
    """click suggests the options spelled close to it: --lr got '--help', '--layers', '--run'."""
    for args, meant in ((("train", "--lr", "0.01"), "--learning-rate"), (("train", "--rnn-size", "64"), "--units"),
                        (("sample", "--temp", "0.5"), "--temperature"), (("train", "--unit", "64"), "--units")):
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (2, f"error: No such option '{args[1]}'. Did you mean '{meant}'? "
                                                        f"(see: cli {args[0]} --help)\n")


@pytest.mark.parametrize("args, meant", [
    (("sample", "-t", "0.5", "0.8"), " (0.8): -t takes one value; give several as one list, as in -t 0.5,0.8"),
    (("sample", "--temperature=0.5", "0.8"), " (0.8): --temperature takes one value; give several as one list, as in "
                                             "--temperature 0.5,0.8"),
    (("sample", "--stop", "a", "b"), " (b): --stop takes one value; repeat it for each, as in --stop a --stop b"),
    (("sample", "--prime", "Oh", "niño"), " (niño): --prime takes one value; quote a value with spaces, as in --prime "
                                          "'Oh niño'"),
    (("sample", "-n", "2", "3"), " (3): -n takes one value"),
    # a prime after an option (a run name has no spaces, a number no words): it said to quote --run 'demo Once'
    (("sample", "--run", "demo", "Once upon"), " (Once upon); sample takes no arguments: give the start of the text "
                                               "as --prime 'Once upon'"),
    (("sample", "--seed", "1", "长短期"), " (长短期); sample takes no arguments: give the start of the text as --prime "
                                        "'长短期'"),
    (("info", "--run", "demo", "x"), " (x): --run takes one value"),
    (("sample", "-t", "0.5", "Once"), " (Once); sample takes no arguments: give the start of the text as --prime Once"),
    (("sample", "Oh niño"), " (Oh niño); sample takes no arguments: give the start of the text as --prime 'Oh niño'"),
    (("sample", "--top-k", "3", "--", "x"), " (x); sample takes no arguments: give the start of the text as --prime x"),
    (("train", "my", "corpus.txt"), " (corpus.txt); train takes one CORPUS: quote a name with spaces, as in "
                                    "'my corpus.txt'"),
    (("eval", "a", "b", "c"), "s (b c); eval takes one FILE: quote a name with spaces, as in 'a b c'"),
    # every extra word, not the first alone
    (("sample", "Oh", "niño"), "s (Oh niño); sample takes no arguments: give the start of the text as --prime "
                               "'Oh niño'"),
    (("sample", "-t", "0.5", "0.8", "0.9"), "s (0.8 0.9): -t takes one value; give several as one list, as in "
                                            "-t 0.5,0.8,0.9"),
    (("sample", "--stop", "a", "b", "c"), "s (b c): --stop takes one value; repeat it for each, as in --stop a "
                                          "--stop b --stop c"),
    (("sample", "--", "--prime", "x"), "s (--prime x)"),
    (("info", "demo"), " (demo); info takes no arguments: name the run with --run demo"),
    (("export", "my run", "-o", "x"), " (my run); export takes no arguments: name the run with --run "
                                      "'my run'"),  # not "--prime --prime"
    (("train", "a.txt", "b.txt", "c.txt"), "s (b.txt c.txt); train takes one CORPUS, a file: to use several, join "
                                           "them into one first (cat a.txt b.txt c.txt > all.txt)"),
])
def test_an_extra_argument_is_told_what_it_was_probably_meant_as(args, meant):
    """click's bare "Got unexpected extra argument (0.8)" left the user to guess (a hobbyist's -t 0.5 0.8)."""
    result = invoke(*args)
    assert (result.exit_code, result.stderr) == (2, f"error: Got unexpected extra argument{meant} (see: cli {args[0]} "
                                                    "--help)\n")


@pytest.mark.parametrize("vocabulary, stops, told", [
    ("ab\\n\n", ("\\n",), ["note: --stop '\\n' is a backslash and n, which the model also writes, not a line break; "
                          "for a line break, type --stop $'\\n'"]),
    ("ab\\t\t", ("x", "\\t"), ["note: --stop '\\t' is a backslash and t, which the model also writes, not a tab; for "
                               "a tab, type --stop $'\\t'"]),
    ("ab\\n", ("\\n",), []),  # no line breaks: a backslash and an n is what it can mean
    ("abn\n", ("\\n",), []),  # no backslash: the warning that the model never saw it says so
    ("ab\\n\n", ("\n", "a\\n"), []),  # a line break typed as one; a longer string with \n is meant as it is
])
def test_a_stop_typed_as_backslash_n_is_noted_where_the_model_writes_both(monkeypatch, caplog, vocabulary, stops,
                                                                          told):
    """--stop '\\n' on a model that writes backslashes never ended a sample at a line break, and nothing said why."""
    import textgen.checkpoint
    from textgen.cli import _note_typed_escapes
    from textgen.vocab import Vocabulary

    monkeypatch.setattr(textgen.checkpoint, "run_vocabulary", lambda run_dir: Vocabulary.from_text(vocabulary))
    with caplog.at_level(logging.WARNING, logger="textgen"):
        _note_typed_escapes(stops, None, "unused")
    assert [record.getMessage() for record in caplog.records] == told


def test_a_prime_typed_with_backslash_n_is_noted_where_the_model_writes_line_breaks(trained_run, tmp_path,
                                                                                     monkeypatch):
    """--prime 'def f():\\n\\treturn' was read as backslashes and letters without a word."""
    import textgen.checkpoint
    from textgen.vocab import Vocabulary

    monkeypatch.setattr(textgen.checkpoint, "run_vocabulary", lambda run_dir: Vocabulary.from_text("abc\n\t"))
    common = ["sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "-n", 3]
    typed = invoke(*common, "--prime", "ab\\nc\\t")
    assert typed.exit_code == 1 and typed.stderr.splitlines()[0] == (
        "note: in --prime, \\n is a backslash and n, not a line break, and \\t is a backslash and t, not a tab; "
        "to mean them, type --prime $'...' in a shell (or give the prime with --prime-file)"), typed.stderr
    assert "never saw: '\\\\' 'n' 't'" in typed.stderr  # the period's model has no backslash: refused after the note
    from_file = invoke(*common, "--prime-file", write_text(tmp_path / "prime.txt", "ab\\n"))  # as written: no note
    assert from_file.exit_code == 1 and "note:" not in from_file.stderr, from_file.stderr


def test_an_option_given_no_value_names_the_commands_help():
    result = invoke("sample", "--stop")
    assert (result.exit_code, result.stderr) == (2, "error: Option '--stop' requires an argument. (see: cli sample "
                                                    "--help)\n")


def test_a_tilde_in_a_path_option_is_the_home_directory(trained_run, tmp_path, monkeypatch):
    """--checkpoint-dir=~/x reaches the program as typed (the shell expands ~ only at a word's start): it read and
    wrote a folder named ~ in the current directory."""
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    shutil.copytree(trained_run["checkpoint_dir"], home / "ck")
    write_text(home / "prime.txt", "abc")
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    result = invoke("sample", "--checkpoint-dir=~/ck", "--prime-file=~/prime.txt", "-o", "~/out.txt", "-n", 9,
                    "--seed", 1)
    assert result.exit_code == 0, result.stderr
    assert (home / "out.txt").read_text().startswith("abc") and len((home / "out.txt").read_text()) == 12 + 1
    scored = invoke("eval", "~/prime.txt", "--checkpoint-dir=~/ck", "--batch-size", 1)
    assert scored.exit_code == 0 and scored.stdout.startswith(f"{home / 'prime.txt'}: ")
    assert list(elsewhere.iterdir()) == []


def test_a_prime_file_past_the_limit_is_refused(trained_run, tmp_path, monkeypatch):
    import textgen.cli

    monkeypatch.setattr(textgen.cli, "MAX_PRIME_FILE_CHARS", 10)
    prime = write_text(tmp_path / "prime.txt", "abcdefg" * 3)
    result = invoke("sample", "--checkpoint-dir", trained_run["checkpoint_dir"], "--prime-file", prime, "-n", 5)
    assert (result.exit_code, result.stderr) == (1, f"error: prime file {prime} holds more than 10 characters; give a "
                                                    "shorter prime (its end is what the continuation follows)\n")


def test_an_output_encoding_without_a_character_refuses_a_sample_and_escapes_a_listing(tmp_path):
    """A GBK console (or a redirect on Chinese Windows) lacks characters such as '•' and '−': sample, runs and
    info --vocabulary ended in a traceback."""
    corpus = write_text(tmp_path / "notes😀.txt", "ab•c−d " * 300)
    assert invoke("train", corpus, "--checkpoint-dir", tmp_path / "ck", "--run", "笔记", *TINY).exit_code == 0
    gbk = CliRunner(charset="gbk")
    where = ["--checkpoint-dir", tmp_path / "ck"]
    sampled = gbk.invoke(cli, [str(a) for a in ["sample", *where, "--prime", "ab•", "--length", 20]])
    assert (sampled.exit_code, sampled.stdout) == (1, "")
    assert sampled.stderr == ("error: cannot print '\\u2022' (U+2022): this output's encoding (gbk) has no such "
                              "character; write the text to a UTF-8 file with --output FILE, or set "
                              "PYTHONIOENCODING=utf-8\n")
    written = gbk.invoke(cli, [str(a) for a in ["sample", *where, "--prime", "ab•", "--length", 20,
                                                "--output", tmp_path / "s.txt"]])
    assert written.exit_code == 0 and (tmp_path / "s.txt").read_text(encoding="utf-8").startswith("ab•")
    listed = gbk.invoke(cli, [str(a) for a in ["runs", *where]])
    assert listed.exit_code == 0 and "笔记" in listed.stdout and "notes\\U0001f600.txt" in listed.stdout
    vocabulary = gbk.invoke(cli, [str(a) for a in ["info", *where, "--vocabulary"]])
    assert vocabulary.exit_code == 0 and "\\u2022" in vocabulary.stdout and "\\u2212" in vocabulary.stdout
    # An error handler the user chose is theirs: PYTHONIOENCODING=gbk:replace writes '?' for what GBK lacks.
    chosen = subprocess.run([sys.executable, "-m", "textgen", "sample", *map(str, where), "--prime", "ab•",
                             "--length", "20"], capture_output=True,
                            env=dict(os.environ, PYTHONIOENCODING="gbk:replace"))
    assert chosen.returncode == 0 and chosen.stdout.startswith(b"ab?"), chosen.stderr


AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]  # root, as file modes see anyone


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="file owners and modes as on Linux")
def test_another_users_runs_in_a_shared_directory_are_named_not_tracebacks(trained_run, tmp_path):
    """On a machine shared by a class: one run another user kept private (a folder of mode 700, or files of mode
    600) gave a traceback (PermissionError) in runs, sample, info, eval, export and serve for everyone, was picked as
    the latest run, and was called damaged, to be deleted."""
    import pwd

    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root, which file modes do not stop, without setpriv to run as if not")
    if os.geteuid() != 0:
        pytest.skip("needs root to give runs to another user")
    nobody = pwd.getpwnam("nobody").pw_uid
    shared = tmp_path / "shared"
    for age, name in enumerate(["good", "locked", "private"]):
        shutil.copytree(trained_run["run_dir"], shared / name)
        for kind in ("best", "last"):
            meta = json.loads((shared / name / f"{kind}.json").read_text())
            (shared / name / f"{kind}.json").write_text(json.dumps(dict(meta, saved_at=f"202{age}-01-01T00:00:00")))
    for name, mode in (("private", 0o700), ("locked", 0o600)):
        for path in [shared / name, *(shared / name).iterdir()]:
            os.chown(path, nobody, nobody)
            if path.is_file() or mode == 0o700:
                path.chmod(mode)
    readonly_cwd = tmp_path / "readonly"
    readonly_cwd.mkdir(mode=0o555)
    script = f"""
import json, os
from click.testing import CliRunner
from textgen.cli import cli
import textgen
results = {{}}
for name, args in {{"runs": ["runs"], "sample": ["sample", "-n", "5", "-t", "0", "--prime", "abc"],
                    "sample private": ["sample", "--run", "private"], "info locked": ["info", "--run", "locked"],
                    "sample locked": ["sample", "--run", "locked"],
                    "sample into readonly": ["sample", "--run", "good", "-o", {str(readonly_cwd / "o.txt")!r}],
                    "export into readonly": ["export", "--run", "good", "-o",
                                             {str(readonly_cwd / "exported")!r}]}}.items():
    result = CliRunner().invoke(cli, args + ["--checkpoint-dir", {str(shared)!r}])
    results[name] = [result.exit_code, result.stdout, result.stderr, repr(result.exception)]
results["list_runs"] = [(run["name"], run.get("problem")) for run in textgen.list_runs({str(shared)!r})]
os.chdir({str(readonly_cwd)!r})
result = CliRunner().invoke(cli, ["train", "--checkpoint-dir", {str(tmp_path / "mine")!r}, "--epochs", "1"])
results["train here"] = [result.exit_code, result.stdout, result.stderr, repr(result.exception)]
print(json.dumps(results))
"""
    prefix = AS_A_USER if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    for name, (_, _, stderr, exception) in [(name, result) for name, result in results.items() if name != "list_runs"]:
        assert "Traceback" not in stderr and "PermissionError" not in exception, (name, stderr, exception)
    code, stdout, _, _ = results["runs"]
    # (locked's time cannot be read: its files' own, the copy's, come after good's 2020; private's, none, last)
    assert code == 0 and [line.split()[:2] for line in stdout.splitlines()[1:]] == [["locked", "not"],
                                                                                    ["good", "period.txt"],
                                                                                    ["private", "not"]]
    code, stdout, stderr, _ = results["sample"]
    assert (code, stdout) == (0, "abcdefga\n") and "using the latest run you may read, 'good' (the newer 'locked'" in \
        stderr
    assert results["sample private"][:1] == [1] and results["sample private"][2].strip() == (
        f"error: run 'private' in {shared} cannot be read (Permission denied); ask its owner to make it readable "
        "(chmod -R a+rX), or choose another run")
    for name in ("info locked", "sample locked"):
        assert results[name][0] == 1 and results[name][2].strip() == (
            f"error: cannot read checkpoint metadata {shared / 'locked' / 'best.json'} (Permission denied); ask its "
            "owner to make it readable (chmod -R a+rX), or choose another run"), results[name]
    assert results["list_runs"] == [["locked", "not readable by you"], ["good", None],
                                    ["private", "not readable by you"]]
    assert results["sample into readonly"][:1] == [1] and results["sample into readonly"][2].strip() == (
        f"error: cannot write {readonly_cwd / 'o.txt'}: you may not write in directory {readonly_cwd}; give a file "
        "elsewhere")  # before generating, not after
    assert results["export into readonly"][:1] == [1] and results["export into readonly"][2].strip() == (
        f"error: cannot write in {readonly_cwd} (Permission denied); choose another --output")  # not "empty it first"
    code, _, stderr, _ = results["train here"]
    assert code == 1 and stderr.strip().endswith(
        "error: cannot write the built-in corpus to data/pydoc_topics.txt (Permission denied); give a CORPUS, or "
        "run textgen train in a directory you can write in")


def test_the_command_shows_its_lines_while_a_python_training_shows_its_own_in_another_thread(monkeypatch):
    """textgen.train's handler for a program without logging is a CurrentStderr too: the command took it for its
    own, and its INFO lines were left to that handler's filter (another thread's: dropped)."""
    import logging

    from textgen import cli as cli_module
    from textgen import progress

    logger = logging.getLogger("textgen")
    for name in ("handlers", "propagate", "level"):
        monkeypatch.setattr(logger, name, getattr(logger, name) if name != "handlers" else [progress._LINES])
    cli_module._report_diagnostics_on_stderr()
    assert cli_module._COMMAND_LINES in logger.handlers and logger.level == logging.INFO


def test_an_option_of_one_value_given_twice_is_noted(trained_run):
    """click keeps the last value of an option given more than once: a sweep's `plot --run a --run b` drew b alone,
    and `eval --run a --run b` scored b, without a word."""
    ck = ["--checkpoint-dir", str(trained_run["checkpoint_dir"])]
    result = CliRunner().invoke(cli, ["info", *ck, "--run", "elsewhere", "--run", "period"])
    assert result.exit_code == 0 and result.stdout.startswith(f"run            {trained_run['run_dir']}\n")
    assert result.stderr == "note: --run is given 2 times; the last one is used: period\n"
    # options that take several values, and flags, are not noted; nor is a command line click refuses
    many = CliRunner().invoke(cli, ["sample", *ck, "-t", "0", "-t", "0", "--length", "5", "--seed", "1"])
    assert many.exit_code == 0 and "note:" not in many.stderr, many.stderr
    flags = CliRunner().invoke(cli, ["info", *ck, "--vocabulary", "--vocabulary"])
    assert flags.exit_code == 0 and flags.stderr == ""
    refused = CliRunner().invoke(cli, ["info", *ck, "--run", "a", "--run", "b", "--bogus"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "note:" not in refused.stderr
