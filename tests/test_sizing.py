"""--size auto: the model is chosen from the corpus, its vocabulary and the budget by a fixed rule."""

import math

import pytest

from conftest import write_text
from textgen import sizing
from textgen.checkpoint import read_meta
from textgen.config import ModelConfig, TrainConfig
from textgen.errors import TextgenError
from textgen.training import train


def constant_flops(flops_per_second):
    """A machine that trains every shape at the same FLOP/s (so the budget in characters is exact)."""
    return lambda shape, batch: flops_per_second / sizing.flops_per_char(shape, 65)


def chosen_shape(result: sizing.Sizing) -> tuple[int, int, int]:
    options = result.model_options
    return options["layers"], options["units"], options["embedding_dim"]


def meets_both_limits(candidate, chars, config, speed) -> bool:
    budget = config.epochs * chars
    if config.max_minutes:
        budget = min(budget, sizing.training_seconds(config.max_minutes) * speed(candidate, 64))
    parameters = sizing.parameter_count(candidate, 65)
    return budget >= sizing.CHARS_PER_PARAMETER * parameters and parameters <= sizing.PARAMETERS_PER_CHAR * chars


def test_the_chosen_shape_is_the_largest_that_meets_both_limits():
    for chars, minutes, flops in [(1_000_000, 2, 20e9), (1_000_000, 20, 20e9), (40_000, 5, 20e9),
                                  (20_000_000, 10, 50e9), (300_000, 0, 0)]:
        config = TrainConfig(max_minutes=minutes, epochs=1000 if minutes else 20)
        speed = constant_flops(flops)
        shape = chosen_shape(sizing.choose(chars, 65, config, {}, {}, speed))
        index = sizing.LADDER.index(shape)
        assert meets_both_limits(shape, chars, config, speed) or index == 0, (chars, minutes, shape)
        assert not any(meets_both_limits(larger, chars, config, speed) for larger in sizing.LADDER[index + 1:])


def test_more_time_or_more_text_never_gives_a_smaller_model():
    def parameters(chars, minutes):
        result = sizing.choose(chars, 65, TrainConfig(max_minutes=minutes, epochs=1000), {}, {}, constant_flops(30e9))
        return sizing.parameter_count(chosen_shape(result), 65)

    by_time = [parameters(1_000_000, minutes) for minutes in (1, 3, 10, 30, 100)]
    by_text = [parameters(chars, 10) for chars in (20_000, 200_000, 2_000_000, 20_000_000)]
    assert by_time == sorted(by_time) and by_time[0] < by_time[-1]
    assert by_text == sorted(by_text) and by_text[0] < by_text[-1]


def test_the_demo_and_the_defaults_come_out_of_the_rule():
    # The demo (6 epochs of the default corpus) is the shape hand-tuned before the rule: 1 x 256, embedding 64.
    demo = sizing.choose(418_616, 103, TrainConfig(epochs=6), {}, {})
    assert demo.model_options == dict(layers=1, units=256, embedding_dim=64, dropout=0.1)
    assert demo.train_options == dict(batch_size=64, weight_decay=0.0)
    # A small model that sees its text many times is regularised like the fixed defaults.
    many_epochs = sizing.choose(100_000, 65, TrainConfig(epochs=300), {}, {})
    assert (many_epochs.model_options["dropout"], many_epochs.train_options["weight_decay"]) == (0.3, 0.2)
    # A big text seen once: no dropout, no weight decay.
    once = sizing.choose(50_000_000, 65, TrainConfig(epochs=1), {}, {})
    assert (once.model_options["dropout"], once.train_options["weight_decay"]) == (0.0, 0.0)


def test_the_readmes_sizing_line_is_the_rules():
    """README's example said 1 x 256 for a budget of 10 epochs, where the rule chooses 1 x 384."""
    import re
    from pathlib import Path

    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").split())
    line = re.search(r"`(sizing \(--size auto\): [^`]*for ([\d,]+) training characters and a budget of (\d+) "
                     r"epochs)`", readme)
    chars, epochs = int(line[2].replace(",", "")), int(line[3])
    assert sizing.choose(chars, 103, TrainConfig(epochs=epochs), {}, {}).reason.startswith(line[1])


def test_a_tiny_corpus_gets_a_smaller_batch_and_a_small_model():
    result = sizing.choose(38_000, 1043, TrainConfig(epochs=1000, max_minutes=5), {}, {}, constant_flops(30e9))
    assert result.train_options["batch_size"] == 16  # 38,000 / (16 x 50) = 47 steps per epoch; 32 would give 23
    # said, since it depends on --seq-length too: a sweep of window lengths changed the batch without a word
    assert ", batch 16 (not 64 on a text this short, at --seq-length 50; give --batch-size to fix it): " \
        in result.reason
    longer = sizing.choose(38_000, 1043, TrainConfig(epochs=1000, max_minutes=5, seq_length=100), {}, {},
                           constant_flops(30e9))
    assert ", batch 8 (not 64 on a text this short, at --seq-length 100;" in longer.reason
    assert ", batch 64: " in sizing.choose(10**7, 65, TrainConfig(), {}, {}).reason
    assert ", batch 63: " in sizing.choose(10**7, 65, TrainConfig(), {}, {}, replicas=3).reason  # shared, not short
    # with 1,043 symbols even the smallest shape has more than 3 parameters per character: it is the choice
    assert chosen_shape(result) == sizing.LADDER[0]
    assert result.model_options["dropout"] == 0.3
    # and the log says so (it stated "126,003 parameters for 38,062 characters" as though within the rule)
    assert "38,000 training characters (the smallest shape, yet over 3 parameters per character: it will tend to " \
           "learn this text by heart, and a longer corpus helps)" in result.reason
    assert "by heart" not in sizing.choose(38_000, 65, TrainConfig(epochs=1000, max_minutes=5), {}, {},
                                           constant_flops(30e9)).reason


def test_a_validation_slice_too_short_for_the_smallest_batch_gets_a_batch_it_holds(tmp_path):
    result = sizing.choose(2_700, 60, TrainConfig(epochs=1), {}, {}, val_chars=300)
    assert result.train_options["batch_size"] == 5  # (300 - 1) // 50: one window of each of 5 streams
    # split across replicas, it is a multiple of their number (5 streams do not divide between 2)
    for replicas, batch in ((2, 4), (3, 3), (8, 8)):
        split = sizing.choose(2_700, 60, TrainConfig(epochs=1), {}, {}, val_chars=300, replicas=replicas)
        assert split.train_options["batch_size"] == batch, replicas
    assert sizing.choose(10**7, 60, TrainConfig(), {}, {}, replicas=3).train_options["batch_size"] == 63
    corpus = tmp_path / "c3k.txt"
    corpus.write_text(("".join(chr(97 + (i * 7) % 26) for i in range(120)) + "\n") * 25)  # 3,025 characters
    from textgen.training import train

    summary = train(corpus, tmp_path / "ck", model_options={}, train_options=dict(epochs=1, mixed_precision="off"),
                    log=lambda message: None)  # --size auto, no other option: it trains
    assert summary["epoch"] == 1


def test_explicit_options_win():
    # Part of the shape given: that part is the user's, the rest and the regularisation are chosen (they were the
    # fixed defaults: --units 64 got an embedding of 128, dropout 0.3 and weight decay 0.2 for one epoch).
    auto = sizing.choose(1_000_000, 65, TrainConfig(), {}, {})
    units = sizing.choose(1_000_000, 65, TrainConfig(), {"units": 100}, {})
    assert (units.model_options["units"], units.model_options["embedding_dim"]) == (100, 32)  # 128's embedding
    assert units.model_options["layers"] == auto.model_options["layers"]
    assert "embedding 32 (--units yours), dropout" in units.reason and "(yours)" not in units.reason
    given = sizing.choose(1_000_000, 65, TrainConfig(), {"dropout": 0.5}, {"batch_size": 32})
    assert "dropout 0.5 (yours), weight decay 0.0, batch 32 (yours): " in given.reason
    once = sizing.choose(1_000_000, 65, TrainConfig(epochs=1), {"units": 64, "layers": 1}, {"epochs": 1})
    assert once.model_options == dict(layers=1, units=64, embedding_dim=32, dropout=0.0)  # one pass: no dropout
    assert once.train_options == dict(epochs=1, batch_size=64, weight_decay=0.0)
    many = sizing.choose(1_000_000, 65, TrainConfig(epochs=300), {"embedding_dim": 16}, {})
    assert many.model_options["embedding_dim"] == 16 and many.model_options["dropout"] == 0.3
    assert many.train_options["weight_decay"] == 0.2 and "(--embedding-dim yours)" in many.reason
    # a shape of the user's own on a tiny corpus: the batch is chosen too
    tiny = sizing.choose(6_000, 65, TrainConfig(), {"units": 64}, {"epochs": 3})
    assert tiny.model_options["units"] == 64 and tiny.train_options["batch_size"] == 8
    assert sizing.choose(6_000, 65, TrainConfig(batch_size=4), {"units": 64}, {"batch_size": 4}).train_options[
        "batch_size"] == 4
    result = sizing.choose(418_616, 103, TrainConfig(epochs=6, batch_size=48), {"dropout": 0.5},
                           {"batch_size": 48, "weight_decay": 0.1})
    assert result.model_options["dropout"] == 0.5 and result.train_options == {"batch_size": 48, "weight_decay": 0.1}
    assert "dropout 0.5 (yours), weight decay 0.1 (yours), batch 48 (yours)" in result.reason


def test_calibration_measures_this_machine():
    speed = sizing.calibrated_speed(TrainConfig(mixed_precision="off"), 65)
    small, large = speed(sizing.LADDER[0], 64), speed(sizing.LADDER[-1], 64)
    assert math.isfinite(small) and small > 0 and large > 0
    # 2 x 1024 does ~200x the FLOPs per character of 1 x 64; its matmuls also run faster per FLOP
    assert small > 10 * large


def test_training_logs_the_choice_and_the_checkpoint_keeps_it(tmp_path, periodic_corpus):
    messages = []
    train(periodic_corpus, tmp_path, "auto", train_options=dict(epochs=1, seq_length=10), log=messages.append)
    sized = [message for message in messages if message.startswith("sizing (--size auto): ")]
    assert len(sized) == 1 and messages.index(sized[0]) < next(
        i for i, message in enumerate(messages) if message.startswith("training "))
    meta = read_meta(tmp_path / "auto", "best")
    assert f"{meta.model.layers} x {meta.model.units} units, embedding {meta.model.embedding_dim}" in sized[0]
    assert meta.training.size == "auto" and meta.training.batch_size < 64

    messages.clear()  # the whole shape given: the regularisation is still chosen for it (one pass: none)
    train(periodic_corpus, tmp_path, "shaped", model_options=dict(units=8, embedding_dim=4, layers=1),
          train_options=dict(epochs=1, seq_length=10, batch_size=4), log=messages.append)
    [sized] = [message for message in messages if message.startswith("sizing")]
    assert "1 x 8 units, embedding 4 (--layers, --units, --embedding-dim yours), dropout 0.0, weight decay 0.0, " \
           "batch 4 (yours): " in sized
    meta = read_meta(tmp_path / "shaped", "best")
    assert (meta.model.units, meta.model.dropout, meta.training.weight_decay) == (8, 0.0, 0.0)
    assert not any(message.startswith("note: ") for message in messages)  # 3 parameters per character at most
    messages.clear()
    train(periodic_corpus, tmp_path, "fixed", model_options=dict(units=8, embedding_dim=4, layers=1),
          train_options=dict(epochs=1, seq_length=10, batch_size=4, size="fixed"), log=messages.append)
    assert not any(message.startswith("sizing") for message in messages)
    meta = read_meta(tmp_path / "fixed", "best")
    assert (meta.model.units, meta.model.dropout, meta.training.weight_decay) == (8, ModelConfig.dropout, 0.2)
    messages.clear()
    small = write_text(tmp_path / "small.txt", "abcdefg" * 300)  # --size fixed: 2 x 512 on 1,890 characters
    train(small, tmp_path, "big", train_options=dict(epochs=1, size="fixed", batch_size=4, seq_length=10),
          log=messages.append)
    parameters = ModelConfig(vocab_size=7).parameter_count()
    assert [message for message in messages if message.startswith("note: ")] == [
        f"note: {parameters:,} parameters for 1,890 training characters ({parameters / 1890:,.0f} per character): the "
        "model will tend to learn this text by heart; --size auto without --layers, --units or --embedding-dim "
        "chooses a shape for it"]


@pytest.mark.parametrize("value", ["big", ""])
def test_size_takes_auto_or_fixed(value):
    with pytest.raises(ValueError, match=rf"^--size must be one of auto, fixed, got '{value}'$"):
        TrainConfig(size=value).validate()


def test_a_resumed_run_keeps_its_sizing(tmp_path, periodic_corpus):
    train(periodic_corpus, tmp_path, "sized", train_options=dict(epochs=1, seq_length=10), log=lambda message: None)
    with pytest.raises(TextgenError, match=r"different model or data layout: --size fixed \(checkpoint has auto\)"):
        train(periodic_corpus, tmp_path, "sized", train_options=dict(epochs=2, seq_length=10, size="fixed"),
              resume=True, log=lambda message: None)


def test_a_time_budget_leaves_out_the_start_up():
    """A budget of 0.3 minutes was sized for 3.1 epochs and trained 1.9: compiling the steps takes the first seconds."""
    assert sizing.training_seconds(10) == 600 - sizing.STARTUP_SECONDS
    assert sizing.training_seconds(0.05) == 3 / 4  # at least a quarter of a budget shorter than the start-up
    config = TrainConfig(max_minutes=0.3, epochs=0)
    result = sizing.choose(418_616, 103, config, {}, {}, lambda shape, batch: 50_000)
    assert "~550,000 characters (1.31 epochs)" in result.reason  # 11 s at 50,000 characters per second, not 18
    result = sizing.choose(418_616, 103, TrainConfig(max_minutes=10, epochs=0), {}, {}, lambda shape, batch: 50_000)
    assert "~29.6M characters (70.8 epochs)" in result.reason  # a million and more in millions



def test_a_whole_shape_given_times_only_that_shape():
    """With --max-minutes the ladder walk timed up to nine shapes at start-up, for a choice the user had made."""
    timed = []

    def speed(shape, batch):
        timed.append(shape)
        return 50_000

    given = dict(layers=1, units=64, embedding_dim=16)
    result = sizing.choose(1_000_000, 65, TrainConfig(max_minutes=2, epochs=0), given, {}, speed)
    assert timed == [(1, 64, 16)] and result.model_options["units"] == 64
