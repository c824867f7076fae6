import numpy as np
import pytest

from conftest import PERIOD
from textgen.errors import TextgenError
from textgen.generate import format_samples, generate


def gen(trained_run, **options):
    return generate(trained_run["checkpoint_dir"], run="period", warn=options.pop("warn", lambda m: None), **options)


def test_greedy_sampling_reproduces_the_period(trained_run):
    [sample] = gen(trained_run, prime="abc", length=60, temperatures=[0])
    assert sample.text == (PERIOD * 10)[:63]


def test_same_seed_same_text_and_other_seed_other_text(trained_run):
    options = dict(prime="a", length=80, temperatures=[2.0], num_samples=3)
    first = [s.text for s in gen(trained_run, seed=5, **options)]
    again = [s.text for s in gen(trained_run, seed=5, **options)]
    other = [s.text for s in gen(trained_run, seed=6, **options)]
    assert first == again
    assert first != other
    assert len(set(first)) == 3  # the streams are independent


# Each filter's strictest value. A cut-off's leaves one character to draw from, so the seed no longer matters; those in
# KEEP_THE_LIKELIEST then give the greedy text. The repeat guard's never lets a character follow itself. A new filter
# in sampling.FILTER_RULES gets its value here; one with no value that leaves a single character needs a check of its
# own below (that the text changes), since the one-text check would call it lost on the way.
STRICTEST = dict(top_k=1, top_p=1e-6, min_p=1.0, max_repeat=1)
KEEP_THE_LIKELIEST = {"top_k", "top_p", "min_p"}
# The sampling options that are not filters: the engine takes them apart from sampling.FILTER_RULES.
NOT_FILTERS = {"temperature", "length", "prime", "num_samples", "seed", "stop", "skip_unknown"}


def test_every_filter_reaches_the_engine(trained_run):
    """The filters went to the engine one keyword each: one left out there changed nothing, without an error."""
    from textgen import sampling
    from textgen.config import SAMPLE_FIELDS

    assert SAMPLE_FIELDS - NOT_FILTERS == set(sampling.FILTERS), (
        "a SampleConfig field that changes which character is drawn is a filter: give its rule in "
        "sampling.FILTER_RULES (or, if it is not one, add it to NOT_FILTERS here); a field missing there reaches "
        "the command line and the server but never the engine")
    assert set(STRICTEST) == set(sampling.FILTERS), "give each filter's strictest value in STRICTEST"
    assert set(sampling.FILTERS) - set(sampling.RULE_FILTERS) == {"max_repeat"}, (
        "a new by_engine filter (one the engine's loop applies itself, as the repeat guard): test it here as "
        "max_repeat is tested below, then add its name to this set")
    options = dict(prime="a", length=60, temperatures=[100.0])  # near uniform: nothing like the period
    free = [gen(trained_run, **options, seed=seed)[0].text for seed in (3, 4)]
    assert free[0] != free[1] and free[0][:20] != (PERIOD * 3)[:20]
    for name in sampling.RULE_FILTERS:
        texts = {gen(trained_run, **options, seed=seed, **{name: STRICTEST[name]})[0].text for seed in (3, 4)}
        assert len(texts) == 1, f"{name} at its strictest left the draw to the seed: it did not reach the engine"
        if name in KEEP_THE_LIKELIEST:
            assert texts == {(PERIOD * 10)[:61]}, name
    repeats = [sum(a == b for a, b in zip(sample.text, sample.text[1:])) for guard in (0, STRICTEST["max_repeat"])
               for sample in gen(trained_run, prime="a", length=300, temperatures=[100.0], seed=3, max_repeat=guard)]
    assert repeats[0] > 10 and repeats[1] == 0  # max_repeat 1: never one character twice in a row


def test_runs_the_repeat_guard_ended_are_told(trained_run, monkeypatch, caplog):
    """At the default --max-repeat 20 a code model's deep indentation stopped at 20 spaces without a word."""
    import textgen.generate
    from textgen.config import SampleConfig
    from textgen.generate import TextStreams
    from textgen.vocab import Vocabulary

    quiet = []  # a small limit shapes ordinary text (no doubled letters): its ended runs are no news
    gen(trained_run, prime="a", length=200, temperatures=[100.0], seed=3, max_repeat=2, warn=quiet.append)
    assert quiet == []
    monkeypatch.setattr(textgen.generate, "REPEATS_TOLD_FROM", 1)  # the tiny model's runs are short: told from 1

    vocab = Vocabulary.from_text(" ab=\n")
    streams = TextStreams(vocab, SampleConfig(max_repeat=4, num_samples=2), "a   ")
    # The prime's 3 spaces and one generated reach 4 (the guard counts the prime's end); a run of 4 '=' is ended by
    # 'a', one of 2 spaces is not a run the guard ends, nor is the last '=' run (the text's end ended it)
    streams.add(vocab.encode(" b====a  a====")[None, :].repeat(2, axis=0))
    streams.texts[1] = "b===="  # the prime's 3 spaces, then a 'b': no run of 4
    assert streams.repeats_ended() == [
        "the repeat guard (--max-repeat 4) ended 2 runs of ' ' '=' at 4 in a row; a text with longer runs (code's "
        "indentation, a line of '=') needs a larger --max-repeat, or --max-repeat 0 for no guard"]
    streams.texts[0] = "b" + "=" * 8 + "a"  # (a run longer than the guard: not one it ended)
    assert streams.repeats_ended() == []
    # A prime that ends in the limit or more: the guard ends its run at once
    ended = TextStreams(vocab, SampleConfig(max_repeat=4), "ab     ")
    ended.texts[0] = "b"
    assert ended.repeats_ended()[0].startswith("the repeat guard (--max-repeat 4) ended 1 run of ' '")
    assert TextStreams(vocab, SampleConfig(max_repeat=0), "").repeats_ended() == []
    # Through generate: near-uniform draws at a guard of 2, and none for the greedy period
    told = []
    gen(trained_run, prime="a", length=200, temperatures=[100.0], seed=3, max_repeat=2, warn=told.append)
    gen(trained_run, prime="a", length=200, temperatures=[0], max_repeat=2, warn=quiet.append)
    assert len(told) == 1 and told[0].startswith("note: the repeat guard (--max-repeat 2) ended ") and quiet == []
    # The Python API says it in its keywords
    import logging

    import textgen
    with caplog.at_level(logging.WARNING, logger="textgen"):
        textgen.load(trained_run["run_dir"]).generate("a", length=200, temperature=100.0, seed=3, max_repeat=2)
    [said] = [record.getMessage() for record in caplog.records]
    assert said.startswith("note: the repeat guard (max_repeat=2) ended ") and said.endswith(
        "needs a larger max_repeat, or max_repeat=0 for no guard"), said


def test_stop_string_cuts_at_first_occurrence(trained_run):
    [sample] = gen(trained_run, prime="abc", length=50, temperatures=[0], stop="fg")
    assert sample.text == "abcde" and sample.stopped


def test_a_stop_string_with_characters_the_model_never_saw_is_said_to_never_end_a_sample(trained_run):
    """A Chinese keyboard's '，' as --stop, for a corpus of ',': accepted without a word, and the sample ran on."""
    warnings = []
    [sample] = gen(trained_run, prime="abc", length=20, temperatures=[0], stop=["，", "ab", "fé"], warn=warnings.append)
    assert sample.text == "abcdefg" and sample.stopped
    assert warnings == ["warning: the stop string '，' can never end a sample: the model never saw '，'",
                        "warning: the stop string 'fé' can never end a sample: the model never saw 'é'"]
    quiet = []
    gen(trained_run, prime="abc", length=5, temperatures=[0], stop="gab", warn=quiet.append)
    assert quiet == []
    # A line break typed as \n in a shell is a backslash and an n: said so where the model knows line breaks
    from textgen.config import SampleConfig
    from textgen.generate import TextStreams
    from textgen.vocab import Vocabulary

    streams = TextStreams(Vocabulary.from_text("ab\n"), SampleConfig(stop=("a\\n",)), "a")
    assert streams.unreachable_stops() == [
        "the stop string 'a\\\\n' can never end a sample: the model never saw '\\\\' 'n' (\\n here is a backslash "
        "and n, not a line break: in a shell, type $'\\n')"]
    assert TextStreams(Vocabulary.from_text("abn\\"), SampleConfig(stop=("a\\n",)), "a").unreachable_stops() == []
    # A long one is shown cut, with the first 20 characters it lacks (each is converted on its own: all 1,000 of
    # 16 such strings took half a second of a server's event loop)
    long_stop = "".join(map(chr, range(0xAC00, 0xAC00 + 1000)))
    gen(trained_run, prime="abc", length=5, temperatures=[0], stop=long_stop, warn=quiet.append)
    assert quiet == [f"warning: the stop string {long_stop[:40]!r}... (1,000 characters) can never end a sample: the "
                     f"model never saw {' '.join(map(repr, long_stop[:20]))}"]


def test_several_stop_strings_cut_where_the_text_first_completes_one_however_it_arrives():
    """The cut is before the stop string completed first ("de" in "abcde", though "bcdef" began sooner), whether the
    text comes in one piece or character by character, and what could begin any of them is held back."""
    from textgen.config import SampleConfig
    from textgen.generate import TextStreams
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.from_text(PERIOD)
    for pieces in (["abcdefg"], list("abcdefg"), ["ab", "cdefg"]):
        streams = TextStreams(vocab, SampleConfig(length=20, stop=("bcdef", "de", "x")), "")
        delivered = []
        for piece in pieces:
            streams.add(vocab.encode(piece)[None, :])
            delivered.append(streams.take_ready())
        [sample] = streams.samples()
        assert (sample.text, sample.stopped, "".join(delivered)) == ("abc", True, "abc"), pieces
        if len(pieces) == 7:  # up to "abcd", the longest stop string's length less one is held back: "bcdef" might come
            assert delivered[:5] == ["", "", "", "", "abc"]


def test_streaming_delivers_the_same_text_in_pieces(trained_run):
    pieces = []
    [sample] = gen(trained_run, prime="ab", length=45, temperatures=[0], stop="gab", on_text=pieces.append)
    assert "".join(pieces) == sample.text == "abcdef"
    assert len(pieces) >= 2


def test_prime_with_unknown_characters(trained_run):
    with pytest.raises(TextgenError, match=r"never saw: 'x' 'Z'.*--skip-unknown"):
        gen(trained_run, prime="abxZ", length=5)
    warnings = []
    [sample] = gen(trained_run, prime="abxZ", length=5, temperatures=[0], skip_unknown=True, warn=warnings.append)
    assert sample.text == "abcdefg"
    assert "dropped 2 unknown characters from the prime" in warnings[0]
    [sample] = gen(trained_run, prime="axxxZ", length=0, skip_unknown=True, warn=warnings.append)
    assert sample.text == "a" and warnings[1].endswith("dropped 4 unknown characters from the prime: 'x' 'Z'")  # not 2
    # a combining mark the model never saw is named by its escape and name: bare, it would join the quote before it
    with pytest.raises(TextgenError, match=r"never saw: '\\u0301' \(combining acute accent\) '\"' '\\x00';"):
        gen(trained_run, prime="a\u0301\"\x00", length=5)
    # Typed on a Chinese or Japanese keyboard: the full-width forms of characters the model knows are read as those
    # (with a note); the one it does not know is named
    warnings.clear()
    with pytest.raises(TextgenError) as refused:
        gen(trained_run, prime="ａｂ，", length=5, warn=warnings.append)
    assert str(refused.value) == ("the prime contains characters the model never saw: '，'; change the prime or pass "
                                  "--skip-unknown to drop them")
    [sample] = gen(trained_run, prime="ａｂ", length=0, warn=warnings.append)
    assert sample.text == "ab" and warnings[-1] == "note: read the prime's 'ａ' as 'a', 'ｂ' as 'b', as the model's " \
                                                   "text writes them"
    # é read as e + an accent: the error named é, then --skip-unknown kept the e and named the accent
    with pytest.raises(TextgenError) as refused:
        gen(trained_run, prime="cafég—", length=5)
    assert str(refused.value) == ("the prime contains characters the model never saw: 'é' '—'; change the prime or "
                                  "pass --skip-unknown to drop them (of 'é' it drops only the accent)")
    [sample] = gen(trained_run, prime="cafég—", length=0, skip_unknown=True)
    assert sample.text == "cafeg"


@pytest.mark.parametrize("prime, corpus, read, note", [
    # A --prime-file saved on Windows: refused for its '\r'
    ("ab\r\nb，", "ab,\n", "ab\nb,", "'\\r\\n' as '\\n', '，' as ','"),
    # Lyrics with curly quotes, a prime typed on a keyboard: refused, with a hint of '‘' for the apostrophe. An
    # opening quote at the start or after a space, bracket or dash, else a closing one (the apostrophe)
    ('Don\'t say "no" - ok', "Don’t say “no” — ok", "Don’t say “no” — ok", "\"'\" as '’', '\"' as '“' and '”', "
                                                                        "'-' as '—'"),
    ("'don't' ('go')\n'x'", "‘’()\ndgnotx ", "‘don’t’ (‘go’)\n‘x’", "\"'\" as '‘' and '’'"),
    ("it's", "it’s", "it’s", "\"'\" as '’'"),  # the corpus's only form, wherever it stands
    # an apostrophe at a word's start: opening only where a later quote closes it
    ("'cause it's the '90s", "‘’ acehirstu90", "’cause it’s the ’90s", "\"'\" as '’'"),
    ('"Hallo", sagte er', "„Hallo“, sagte er", "„Hallo“, sagte er", "'\"' as '„' and '“'"),  # German opens with „
    ("'tis", "’tis", "’tis", "\"'\" as '’'"),
])
def test_a_prime_typed_otherwise_than_the_corpus_is_read_as_the_corpus_writes_it(prime, corpus, read, note):
    from textgen.generate import prepare_prime
    from textgen.vocab import Vocabulary

    said = []
    assert prepare_prime(prime, Vocabulary.from_text(corpus), False, said.append) == read
    assert said == [f"note: read the prime's {note}, as the model's text writes them"]
    said.clear()  # refused for another character: no note of a reading that never happened
    with pytest.raises(TextgenError, match="never saw: '§'"):
        prepare_prime(prime + "§", Vocabulary.from_text(corpus), False, said.append)
    assert said == []


@pytest.mark.parametrize("prime, corpus, named, knows", [
    ("ab\r", "ab", "'\\r'", None),  # no line ends known
    ("a\rb", "ab\n", "'\\r'", "'\\n' for '\\r\\n' (Windows line ends)"),  # an old Mac's line end: not read as \n
])
def test_a_prime_character_the_model_knows_in_no_form_is_refused(prime, corpus, named, knows):
    from textgen.generate import prepare_prime
    from textgen.vocab import Vocabulary

    with pytest.raises(TextgenError) as refused:
        prepare_prime(prime, Vocabulary.from_text(corpus), False, None)
    hint = f" (the model knows {knows})" if knows else ""
    assert str(refused.value) == (f"the prime contains characters the model never saw: {named}; change the prime"
                                  f"{hint} or pass --skip-unknown to drop them")


def test_a_stop_string_typed_otherwise_than_the_corpus_is_told_every_form_the_model_knows():
    from textgen.config import SampleConfig
    from textgen.generate import TextStreams
    from textgen.vocab import Vocabulary

    streams = TextStreams(Vocabulary.from_text("it’s ‘so’\n"), SampleConfig(stop="'", length=5), "")
    assert streams.unreachable_stops() == ["the stop string \"'\" can never end a sample: the model never saw \"'\" "
                                           "(the model knows '‘' or '’' for \"'\")"]


def test_several_temperatures_each_get_a_labelled_sample(trained_run):
    samples = gen(trained_run, prime="a", length=20, temperatures=[0, 0.5, 1.5], seed=1)
    assert [s.temperature for s in samples] == [0, 0.5, 1.5]
    text = format_samples(samples, 3)
    assert [line for line in text.splitlines() if line.startswith("=====")] == [
        "===== temperature 0 =====", "===== temperature 0.5 =====", "===== temperature 1.5 ====="]


def test_one_temperature_or_a_list_and_a_wrong_type_is_an_option_error(trained_run):
    import numpy as np

    from textgen.errors import OptionError

    [one] = gen(trained_run, prime="abc", length=10, temperatures=0)
    for several, count in ((np.array([0, 0]), 2), ((t for t in (0, 0)), 2), (range(1), 1)):
        assert [s.text for s in gen(trained_run, prime="abc", length=10, temperatures=several)] == [one.text] * count
    with pytest.raises(OptionError, match=r"^--temperature must be in \[0, 1e\+06\], got 'a', which is not a number$"):
        gen(trained_run, prime="abc", length=10, temperatures=["a"])


def test_a_prime_in_the_other_unicode_form_is_read_in_the_corpus_form():
    from textgen.generate import prepare_prime
    from textgen.vocab import Vocabulary

    decomposed = Vocabulary(map(ord, "cafe\u0301 au lit"))  # the corpus wrote é as e + combining acute
    assert prepare_prime("caf\u00e9", decomposed, False, print) == "cafe\u0301"
    precomposed = Vocabulary(map(ord, "caf\u00e9 au lit"))
    assert prepare_prime("cafe\u0301", precomposed, False, print) == "caf\u00e9"
    with pytest.raises(TextgenError, match=r"never saw: 'x'"):
        prepare_prime("caf\u00e9x", decomposed, False, print)
    # ñ is unknown either way; in the corpus's form only its tilde is, so señor keeps its n, with or without an
    # accented letter beside it (which used to tip the choice of form).
    spanish = Vocabulary(map(ord, "cafe\u0301 senor"))
    for prime, expected in (("se\u00f1or", "senor"), ("se\u00f1or caf\u00e9", "senor cafe\u0301")):
        assert prepare_prime(prime, spanish, True, lambda warning: None) == expected
    # Refused, the prime's unknown characters are named as typed: ñ, not the tilde that n + tilde would lose.
    with pytest.raises(TextgenError, match=r"never saw: '\u00f1'; change the prime"):
        prepare_prime("se\u00f1or", spanish, False, print)


def test_seeds_that_differ_draw_differently():
    from textgen.generate import RequestDraws

    first_of_large, second_of_five = RequestDraws(5 + 2**32, [0]).next(50), RequestDraws(5, [1]).next(50)
    assert not np.array_equal(first_of_large, second_of_five)  # np.random.default_rng([5, 1]) is seed 5 + 2**32
    np.testing.assert_array_equal(RequestDraws(5, [0, 1]).next(50)[:, 1], second_of_five[:, 0])
    unseeded = RequestDraws(None, [0, 0]).next(50)
    assert not np.array_equal(unseeded[:, 0], unseeded[:, 1])


def test_a_stop_string_in_the_other_unicode_form_still_stops():
    import unicodedata

    from textgen.config import SampleConfig
    from textgen.generate import TextStreams
    from textgen.vocab import Vocabulary

    vocab = Vocabulary.from_text(unicodedata.normalize("NFD", "un café noir"))  # é as e + accent
    streams = TextStreams(vocab, SampleConfig(length=20, stop="é noir"), "")  # typed precomposed
    streams.add(vocab.encode(unicodedata.normalize("NFD", "un café noir"))[None, :])
    [sample] = streams.samples()
    assert sample.text == "un caf" and sample.stopped


def test_empty_prime_and_zero_length(trained_run):
    [sample] = gen(trained_run, prime="", length=0)
    assert sample.text == ""
    [sample] = gen(trained_run, prime="", length=14, temperatures=[0])
    assert len(sample.text) == 14 and sample.text in PERIOD * 4


def test_numbers_of_samples_share_bucket_sized_engines_and_keep_their_text(trained_run):
    import numpy as np

    from textgen.config import SampleConfig
    from textgen.engine import Engine
    from textgen.generate import Generator, RequestDraws

    generator = Generator.load(trained_run["run_dir"])
    texts = {}
    for count in (5, 6, 8):
        config = SampleConfig(temperature=(1.5,), num_samples=count, seed=count, length=300, prime="abc")
        texts[count] = [sample.text for sample in generator.samples(config)]
    assert {size: len(engines) for size, engines in generator._idle.items()} == {8: 1}
    # What an engine of exactly 5 streams draws with the request's generator: the same text.
    exact = Engine(generator.weights, 5)
    exact.prime(np.tile(generator.vocab.encode("abc")[None, :].astype(np.int32), (5, 1)))
    ids = exact.sample(300, temperature=1.5, uniforms=RequestDraws(5, range(5)).next(300))
    assert texts[5] == ["abc" + generator.vocab.decode(row) for row in ids]


def test_a_seeded_sample_is_the_same_whatever_else_the_request_asked_for(trained_run):
    def texts(**options):
        return [(s.temperature, s.index, s.text) for s in gen(trained_run, prime="abc", length=200, seed=5, **options)]

    [alone] = texts(temperatures=[1.5])
    four = texts(temperatures=[1.5], num_samples=4)
    assert four[0] == alone and len({text for _, _, text in four}) == 4  # the first of four, and four different texts
    assert texts(temperatures=[1.5], num_samples=2) == four[:2]
    both = texts(temperatures=[0.8, 1.5], num_samples=2)
    assert both[2:] == four[:2]  # each temperature's samples as if asked for alone
    assert [(t, i) for t, i, _ in both] == [(0.8, 0), (0.8, 1), (1.5, 0), (1.5, 1)]


def test_the_model_reads_the_start_symbol_before_the_prime(trained_run):
    """From a fresh state the model read a prime alone as if in mid-line ("JULIET:" was followed by a line break 26%
    of the time, 96% after "\nJULIET:"): it reads a line break first, as at a paragraph's start."""
    from textgen.generate import Generator, reading_context
    from textgen.vocab import Vocabulary

    lines = Vocabulary.from_text("\nJULIET:")
    assert [reading_context(prime, lines) for prime in ("JULIET:", "\nJULIET:", "")] == ["\nJULIET:", "\nJULIET:",
                                                                                        "\n"]
    assert reading_context("bc", Vocabulary.from_text(PERIOD)) == "abc"  # no line break: the first character
    generator = Generator.load(trained_run["run_dir"])

    def logits_after(text):
        with generator.engine(1) as engine:
            engine.prime(generator.vocab.encode(text)[None, :].astype(np.int32))
            return engine.last_logits[0].copy()

    read = generator.next_logits("gb")
    np.testing.assert_array_equal(read, logits_after("agb"))
    assert not np.array_equal(read, logits_after("gb"))
    # generation reads the same: its first character is the likeliest after "agb"
    [sample] = gen(trained_run, prime="gb", length=1, temperatures=[0], max_repeat=0)
    assert sample.text == "gb" + PERIOD[int(np.argmax(read))]
