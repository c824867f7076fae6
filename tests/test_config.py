"""Options are declared once (textgen.config): validation, old-checkpoint defaults and the CLI follow."""

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen import cli
from textgen.config import ModelConfig, SampleConfig, TrainConfig, command_line_options, rules
from textgen.errors import OptionError, TextgenError


@pytest.mark.parametrize("config_class", [ModelConfig, TrainConfig])
def test_every_command_line_option_has_help_a_rule_and_a_valid_default(config_class):
    options = command_line_options(config_class)
    assert options and all(rule.help.endswith(".") for rule, _ in options.values())
    config = config_class(vocab_size=3) if config_class is ModelConfig else config_class()
    config.validate()  # the defaults obey their own rules


def test_validation_names_the_option_and_its_range():
    with pytest.raises(OptionError, match=r"^--seq-length must be an integer in \[1, inf\), got 0$"):
        TrainConfig(seq_length=0).validate()
    with pytest.raises(OptionError, match=r"^--lr-schedule must be one of cosine, step, got 'linear'$"):
        TrainConfig(lr_schedule="linear").validate()
    with pytest.raises(ValueError, match=r"--dropout must be in \[0, 1\), got nan"):
        ModelConfig(vocab_size=3, dropout=float("nan")).validate()


def test_integer_options_take_integers_and_text_options_text():
    import numpy as np

    from textgen.config import SampleConfig

    with pytest.raises(OptionError, match=r"^--length must be an integer in \[0, 1e\+07\], got 100.0$"):
        SampleConfig(length=1e2).validate()  # whole, but a float: it would fail later as a slice bound
    with pytest.raises(OptionError, match=r"^--seq-length must be an integer in \[1, inf\), got 20.0$"):
        TrainConfig(seq_length=20.0).validate()
    with pytest.raises(OptionError, match=r"^--prime must be text, got None$"):
        SampleConfig(prime=None).validate()
    with pytest.raises(OptionError, match=r"^--skip-unknown must be true or false, got 1$"):
        SampleConfig(skip_unknown=1).validate()
    SampleConfig(length=np.int64(5), num_samples=np.int32(2), temperature=(np.float32(0.5), 1)).validate()
    flagged = SampleConfig(skip_unknown=np.float32(3) > 2)
    flagged.validate()  # a NumPy comparison's bool, as NumPy numbers are taken: it was refused
    assert flagged.skip_unknown is True
    with pytest.raises(OptionError, match=r"^--skip-unknown must be true or false, got array\(\[ True\]\)$"):
        SampleConfig(skip_unknown=np.array([True])).validate()
    from textgen.config import check_flag
    check_flag("resume", np.bool_(False))


def test_old_checkpoints_get_the_behaviour_they_trained_with():
    old = TrainConfig.from_dict({"epochs": 3, "unknown_future_key": 1})
    assert (old.epochs, old.lr_schedule, old.weight_decay, old.mixed_precision, old.size) == (
        3, "step", 0.0, "off", "fixed")
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    choices = {name for name, rule in rules(TrainConfig).items() if rule.choices}
    assert choices == {"lr_schedule", "mixed_precision", "size"}


def test_help_shows_each_declared_option_with_its_default_and_range():
    result = CliRunner().invoke(cli.cli, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, (_rule, default) in {**command_line_options(ModelConfig), **command_line_options(TrainConfig)}.items():
        assert f"--{name.replace('_', '-')}" in text
        assert f"[default: {default}" in text
    assert ("--units INTEGER Hidden units of each LSTM layer (unless given, --size auto chooses it). "
            "[default: 512; range: [1, inf)]") in text
    assert "--val-fraction FLOAT" in text and "range: (0, 1)" in text


def test_a_new_field_is_a_new_validated_command_line_option(monkeypatch):
    from textgen.config import option

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        example_option: int = option(0, "An option that no release has.", low=0, integer=True, before=0)

    assert command_line_options(Extended)["example_option"][1] == 0
    with pytest.raises(OptionError, match=r"--example-option must be an integer in \[0, inf\), got -1"):
        Extended(example_option=-1).validate()
    assert Extended.from_dict({}).example_option == 0


def test_sampling_options_are_declared_and_checked_the_same_way():
    from textgen.config import SampleConfig

    SampleConfig().validate()
    SampleConfig(temperature=(0.0, 1.5), top_k=3, top_p=1.0, seed=0).validate()
    for bad, message in [(dict(temperature=()), "--temperature needs at least one value"),
                         (dict(temperature=(0.5, -1.0)), r"--temperature must be in \[0, 1e\+06\], got -1$"),
                         (dict(top_p=0.0), r"--top-p must be in \(0, 1\], got 0$"),
                         (dict(seed=-3), r"--seed must be an integer in \[0, inf\), got -3"),
                         (dict(length=2.5), r"--length must be an integer")]:
        with pytest.raises(OptionError, match=message):
            SampleConfig(**bad).validate()


def test_cli_refuses_a_negative_seed_in_one_line(trained_run):
    result = CliRunner().invoke(cli.cli, ["sample", "--checkpoint-dir", str(trained_run["checkpoint_dir"]),
                                          "--seed", "-1"])
    assert result.exit_code == 2  # a wrong call, as click's own refusals; 1 is for what failed
    assert result.output.strip() == "error: --seed must be an integer in [0, inf), got -1"


def test_a_list_of_temperatures_typed_on_a_chinese_keyboard_is_read_as_typed(trained_run):
    """Its input method types '，' (or '、') between the numbers and may type '．': the list was refused."""
    where = ["sample", "--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--length", "5", "--prime", "a"]
    for typed in ("0，1.5", "0、1.5", "０．０，1.5", "0。0、1。5"):
        result = CliRunner().invoke(cli.cli, [*where, "-t", typed])
        assert result.exit_code == 0, result.output
        assert [line for line in result.stdout.splitlines() if line.startswith("=====")] == [
            "===== temperature 0 =====", "===== temperature 1.5 ====="]
    for typo in ("0，，1", "0.5,1²"):  # (NFKC read 1² as 12)
        refused = CliRunner().invoke(cli.cli, [*where, "-t", typo])
        assert (refused.exit_code, refused.output.strip()) == (
            2, f"error: --temperature must be a number or a comma-separated list such as 0.2,0.5,1.0, got '{typo}'")


def test_numpy_numbers_become_python_numbers():
    # The checks accept NumPy numbers; a checkpoint's JSON and Keras's layer arguments do not.
    import json

    import numpy as np

    model = ModelConfig(vocab_size=np.int64(5), units=np.int32(16), dropout=np.float32(0.25))
    training = TrainConfig(epochs=np.int64(2), learning_rate=np.float64(0.01))
    sampling = SampleConfig(temperature=(np.float32(0.5), 1.0), num_samples=np.int64(2))
    assert (type(model.units), type(model.dropout), type(training.epochs)) == (int, float, int)
    assert [type(t) for t in sampling.temperature] == [float, float] and type(sampling.num_samples) is int
    assert json.loads(json.dumps(model.to_dict()))["dropout"] == 0.25
    assert json.loads(json.dumps(training.to_dict()))["epochs"] == 2
    model.validate(), training.validate(), sampling.validate()


def test_whole_numbers_for_real_valued_options_become_floats():
    # Keras's Adam refused learning_rate=1 (an int) with its own ValueError, after the range check had passed it.
    from textgen.config import ModelConfig
    from textgen.session import Session

    training = TrainConfig(learning_rate=1, max_minutes=2, clip_norm=5, batch_size=2, mixed_precision="off")
    sampling = SampleConfig(temperature=[1, 0.5], top_p=1)  # a list too
    assert [type(value) for value in (training.learning_rate, training.max_minutes, training.clip_norm,
                                      *sampling.temperature, sampling.top_p)] == [float] * 6
    assert type(training.epochs) is int and type(training.batch_size) is int  # integer options stay integers
    assert Session(ModelConfig(vocab_size=5, units=4, embedding_dim=3), training).optimizer.learning_rate == 1.0
    with pytest.raises(OptionError, match=r"^--learning-rate must be in \(0, inf\), got a number of 401 digits$"):
        TrainConfig(learning_rate=10 ** 400).validate()  # beyond any float: refused by its value, not an overflow


def test_as_keywords_renames_only_the_options_it_is_given():
    from textgen.errors import as_keywords

    renamed = as_keywords(OptionError("at most 10 samples, got 2 temperatures x --num-samples 6; see textgen sample "
                                      "--help or pass --top-k"), {"num_samples"})
    assert isinstance(renamed, OptionError)
    assert str(renamed) == "at most 10 samples, got 2 temperatures x num_samples=6; see textgen sample --help or " \
                           "pass --top-k"
    # Flags as keywords set to true, and a command's options as it spells them; the error keeps its class.
    from textgen.checkpoint import SaveFailed

    renamed = as_keywords(SaveFailed(Path("r"), "disk full"), {"resume"}, {"resume"})
    assert isinstance(renamed, SaveFailed) and renamed.reason == "disk full" and str(renamed).endswith(
        "then resume with resume=True)")
    renamed = as_keywords(TextgenError("pass --skip-unknown; or run: textgen train CORPUS --run NAME --skip-unknown"),
                          {"skip_unknown", "run"}, {"skip_unknown"}, json=True)
    assert str(renamed) == 'pass "skip_unknown": true; or run: textgen train CORPUS --run NAME --skip-unknown'
    # Inside a path, "--" is not an option; a word after one is its value only when it can be one.
    names = {"units", "run", "checkpoint_dir", "size", "epochs", "overwrite"}
    renamed = as_keywords(TextgenError("corpus file not found: /tmp/exp--units/a.txt; for the run in c/d: "
                                       "--checkpoint-dir c --run d (chosen by --size auto); --epochs must be whole; "
                                       "--overwrite must be true or false"), names, {"overwrite"},
                          valued={"run", "checkpoint_dir"}, choices={"auto"})
    assert str(renamed) == "corpus file not found: /tmp/exp--units/a.txt; for the run in c/d: checkpoint_dir='c' " \
                           "run='d' (chosen by size='auto'); epochs must be whole; overwrite must be true or false"


def test_as_keywords_suggests_the_calls_of_the_commands_that_have_one():
    """A Python caller is told textgen.list_runs(...) and textgen.train(...), not the commands; a command the call
    cannot say word for word, or one with no call, stays; the HTTP API's messages keep the commands."""
    from textgen.errors import as_keywords

    names = {"run", "checkpoint_dir", "resume", "epochs"}
    message = ("no run named 'r' in my ck (runs there: none); list them with: textgen runs --checkpoint-dir 'my ck'; "
               "or train one first with: textgen train CORPUS --checkpoint-dir 'my ck' --run r --resume --epochs 4; "
               "see textgen train --help for the options; textgen runs lists them; (textgen train notes.txt "
               "--seq-length 50.) then textgen export --run r")
    renamed = as_keywords(TextgenError(message), names, {"resume"}, valued={"run", "checkpoint_dir"}, keep=["my ck"])
    assert str(renamed) == (
        "no run named 'r' in my ck (runs there: none); list them with: textgen.list_runs(checkpoint_dir='my ck'); or "
        "train one first with: textgen.train(CORPUS, checkpoint_dir='my ck', run='r', resume=True, epochs=4); see "
        "textgen train --help for the options; textgen runs lists them; (textgen train notes.txt --seq-length 50.) "
        "then textgen export --run r")
    assert str(as_keywords(TextgenError("list them with: textgen runs; or textgen train c.txt --run r"), names)) == \
        "list them with: textgen.list_runs(); or textgen.train('c.txt', run='r')"
    # Names and paths are strings whatever they look like (a call with run=2025 or checkpoint_dir=DATA failed)
    assert str(as_keywords(TextgenError("list them with: textgen runs --checkpoint-dir DATA; or textgen train CORPUS "
                                        "--checkpoint-dir . --run 007 --epochs 4"), names)) == (
        "list them with: textgen.list_runs(checkpoint_dir='DATA'); or textgen.train(CORPUS, checkpoint_dir='.', "
        "run='007', epochs=4)")
    assert str(as_keywords(TextgenError("in it: textgen runs --checkpoint-dir .."), names)) == \
        "in it: textgen.list_runs(checkpoint_dir='..')"
    assert str(as_keywords(TextgenError(message), names, {"resume"}, json=True, keep=["my ck"])).endswith(
        "list them with: textgen runs --checkpoint-dir 'my ck'; or train one first with: textgen train CORPUS "
        "--checkpoint-dir 'my ck' --run r --resume --epochs 4; see textgen train --help for the options; textgen "
        "runs lists them; (textgen train notes.txt --seq-length 50.) then textgen export --run r")


def test_as_keywords_reads_a_shell_quoted_value_whole():
    from textgen.errors import as_keywords
    from textgen.runs import check_run_name

    with pytest.raises(TextgenError) as raised:
        check_run_name("my runs/v1/demo")
    renamed = as_keywords(raised.value, {"run", "checkpoint_dir"}, valued={"run", "checkpoint_dir"})
    assert str(renamed).endswith("(for the run in my runs/v1/demo: checkpoint_dir='my runs/v1' run='demo')")
    renamed = as_keywords(raised.value, {"run", "checkpoint_dir"}, valued={"run", "checkpoint_dir"}, json=True)
    assert str(renamed).endswith('(for the run in my runs/v1/demo: "checkpoint_dir": "my runs/v1" "run": "demo")')
