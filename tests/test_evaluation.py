import math

import numpy as np
import pytest

from conftest import write_text
from textgen.checkpoint import load_model
from textgen.errors import TextgenError
from textgen.evaluation import evaluate


def numpy_cross_entropy(model, ids):
    """An independent reference: the LSTM equations in NumPy over one stream, mean nats per character."""
    weights = {w.path: np.array(w) for w in model.weights}
    h = np.zeros(model.get_layer("lstm_0").units)
    c = np.zeros_like(h)
    kernel, recurrent, bias = (weights[f"lstm_0/lstm_cell/{n}"] for n in ("kernel", "recurrent_kernel", "bias"))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    total = 0.0
    for current, following in zip(ids[:-1], ids[1:]):
        z = weights["embedding/embeddings"][current] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        logits = h @ weights["logits/kernel"] + weights["logits/bias"]
        total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[following]
    return total / (len(ids) - 1)


def test_eval_matches_an_independent_cross_entropy_and_reports_unknowns(trained_run, tmp_path, caplog):
    text = "abcdefgabcdeggfabcdefgab" * 5
    path = write_text(tmp_path / "held_out.txt", text[:50] + "XY" + text[50:])
    result = evaluate(path, trained_run["checkpoint_dir"], "period", batch_size=1, seq_length=17)
    model, meta = load_model(trained_run["run_dir"], batch_size=1)
    expected = numpy_cross_entropy(model, np.array([meta.vocab.chars.index(ch) for ch in text]))
    assert result["nats"] == pytest.approx(expected, abs=1e-4)
    assert result["bpc"] == pytest.approx(expected / math.log(2), abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert result["unknown"] == 2 and result["characters"] == len(text) - 1 and result["unscored"] == 1
    assert result["unknown_characters"] == ["X", "Y"]
    # (textgen's: TensorFlow's retracing warning may come, after the evaluations of the tests before this one)
    assert [record for record in caplog.records if record.name == "textgen"] == []
    in_streams = evaluate(path, trained_run["checkpoint_dir"], "period", batch_size=7, seq_length=17)
    assert in_streams["characters"] == (len(text) - 1) // 7 * 7  # 119 of the 120 are predicted: 17 per stream
    assert in_streams["unscored"] == len(text) - in_streams["characters"]
    said = [record.getMessage() for record in caplog.records if record.name == "textgen"]
    assert said == [  # 32 cold streams of 9 characters said nothing
        "note: each of the 7 streams reads 17 characters from a fresh state, which scores worse than reading on; "
        "--batch-size 1 reads the text as one stream"]
    caplog.clear()  # 2 unknown of 122 said nothing; most of a text in another language is said (its bpc misleads)
    foreign = write_text(tmp_path / "foreign.txt", text[:40] + "长江后浪推前浪" * 5)
    assert evaluate(foreign, trained_run["checkpoint_dir"], "period", batch_size=1)["unknown"] == 35
    assert [record.getMessage() for record in caplog.records if record.name == "textgen"] == [
        f"warning: 47% of the characters of {foreign} (35) are outside the model's vocabulary, so the score is of "
        "the other 40 alone (is it a text in the corpus's language?)"]
    letters = "ABCDEFGHIJKLMN"  # every one of them, in order (eval --json held 11 without saying the list was cut)
    many = write_text(tmp_path / "many.txt", text[:60] + letters + text[60:] + letters[::-1])
    result = evaluate(many, trained_run["checkpoint_dir"], "period", batch_size=1)
    assert (result["unknown"], result["unknown_characters"]) == (28, list(letters))


def test_eval_on_the_validation_slice_agrees_with_training(trained_run, tmp_path):
    text = trained_run["corpus"].read_text()
    val = write_text(tmp_path / "val.txt", text[len(text) - int(len(text) * 0.1):])
    result = evaluate(val, trained_run["checkpoint_dir"], "period", batch_size=8, seq_length=20)
    assert abs(result["bpc"] - trained_run["best_val_loss"] / math.log(2)) < 0.01


def test_eval_and_score_read_a_text_in_the_unicode_form_of_the_corpus(tmp_path):
    import unicodedata

    import textgen
    from conftest import TINY_MODEL, TINY_TRAINING
    from textgen.training import train

    words = "café résumé naïve déjà vu "
    corpus = write_text(tmp_path / "decomposed.txt", unicodedata.normalize("NFD", words * 200))
    summary = train(corpus, tmp_path / "checkpoints", run="accents", model_options=TINY_MODEL,
                    train_options=dict(TINY_TRAINING, epochs=1), log=lambda message: None)
    text = words * 6
    scores = {}
    for form in ("NFD", "NFC"):  # as the corpus wrote it, and precomposed as most keyboards type it
        path = write_text(tmp_path / f"{form}.txt", unicodedata.normalize(form, text))
        scores[form] = evaluate(path, tmp_path / "checkpoints", "accents", batch_size=1, seq_length=50)
        assert scores[form]["unknown"] == 0
    assert scores["NFC"]["nats"] == pytest.approx(scores["NFD"]["nats"], abs=1e-6)
    # 28 characters precomposed are 35 in the corpus's form: enough for 34 streams, which the length as written
    # (28) would have refused.
    short = write_text(tmp_path / "short.txt", unicodedata.normalize("NFC", "café résumé naïve déjà vu dé"))
    assert evaluate(short, tmp_path / "checkpoints", "accents", batch_size=34, seq_length=5)["unknown"] == 0
    foreign = write_text(tmp_path / "foreign.txt", "日本語のテキスト")
    with pytest.raises(TextgenError, match=r"foreign.txt has 0 characters the model knows, and not '日' '本' '語' 'の' "
                                           r"'テ' 'キ' 'ス' 'ト'; evaluation needs at least 2 \(is it a text in the "
                                           r"corpus's language\?\)$"):
        evaluate(foreign, tmp_path / "checkpoints", "accents", batch_size=1)
    model = textgen.load(summary["run_dir"])
    scored = model.score(unicodedata.normalize("NFC", text))
    assert scored["excluded"] == 0 and scored["characters"] == len(unicodedata.normalize("NFD", text)) - 1
    assert scored["nats"] == pytest.approx(scores["NFD"]["nats"], abs=1e-4)


def test_a_loss_no_model_gives_is_called_damaged_weights():
    """textgen eval of a run whose weights had turned NaN printed perplexity nan, and a loss past 709 nats per
    character (math.exp's limit) was an OverflowError traceback."""
    from textgen.checkpoint import DamagedCheckpoint
    from textgen.evaluation import perplexity

    assert perplexity(1.0) == pytest.approx(math.e)
    for nats in (float("nan"), float("inf"), 800.0):
        with pytest.raises(DamagedCheckpoint, match=r"the model's loss on this text is \S+ nats per character, so its "
                                                    "weights are damaged; train again with --overwrite"):
            perplexity(nats)


def test_the_command_names_the_characters_it_excluded(trained_run, tmp_path):
    """A Chinese held-out text has many characters the model never saw: the command counted them, never named."""
    from click.testing import CliRunner

    from textgen.cli import cli

    where = ["--checkpoint-dir", str(trained_run["checkpoint_dir"]), "--batch-size", "1"]
    unseen = "".join(chr(0x4E00 + i) for i in range(12))
    many = " ".join(repr(ch) for ch in unseen[:10]) + ", and others"
    for text, named in (("abcdefg" * 5 + "门控门" + "abcdefg" * 5, "'门' '控'"),
                        ("abcdefg" * 5 + unseen + "abcdefg" * 5, many)):
        result = CliRunner().invoke(cli, ["eval", str(write_text(tmp_path / "held_out.txt", text)), *where])
        assert result.exit_code == 0, result.output
        assert result.stdout.count("\n") == 1 and "outside the vocabulary excluded" in result.stdout
        assert result.stderr.splitlines()[-1] == f"note: excluded as the model never saw them: {named}"
    typed = CliRunner().invoke(cli, ["eval", str(write_text(tmp_path / "typed.txt", "abcdefg" * 5 + "ａｂ")), *where])
    assert typed.stderr.splitlines()[-1] == "note: excluded as the model never saw them: 'ａ' 'ｂ' (the model knows " \
                                            "'a' for 'ａ', 'b' for 'ｂ': convert the text to score it whole)"
    import shutil  # a damaged best.json: the score falls back to the last checkpoint, and the note's hint with it

    shutil.copytree(trained_run["run_dir"], tmp_path / "ck" / "period")
    (tmp_path / "ck" / "period" / "best.json").write_text("{garbage")
    fallen_back = CliRunner().invoke(cli, ["eval", str(tmp_path / "typed.txt"), "--checkpoint-dir",
                                           str(tmp_path / "ck"), "--batch-size", "1"])
    assert fallen_back.exit_code == 0 and fallen_back.stderr.splitlines()[-1] == typed.stderr.splitlines()[-1], \
        fallen_back.output
    clean = CliRunner().invoke(cli, ["eval", str(write_text(tmp_path / "clean.txt", "abcdefg" * 10)), *where])
    assert clean.exit_code == 0 and "never saw" not in clean.stderr


def test_a_long_eval_says_how_long_it_has_left_in_a_log(trained_run, tmp_path, caplog, monkeypatch):
    """An eval of a large text (an hour) wrote nothing where stderr is not a terminal (a script's log)."""
    import logging

    import textgen.progress

    text = write_text(tmp_path / "text.txt", "abcdefg" * 400)
    with caplog.at_level(logging.INFO, logger="textgen"):
        evaluate(text, trained_run["checkpoint_dir"], "period", batch_size=2, seq_length=50, show_progress=True)
        assert not [record for record in caplog.records if "left" in record.getMessage()]  # a quick one: nothing
        monkeypatch.setattr(textgen.progress, "SLOW_S", 0.0)
        evaluate(text, trained_run["checkpoint_dir"], "period", batch_size=2, seq_length=50, show_progress=True)
    [line] = [record.getMessage() for record in caplog.records if "left" in record.getMessage()]
    assert line.startswith(f"evaluating {text}: ~") and line.endswith(" s left"), line
