import numpy as np
import pytest

from textgen.vocab import Vocabulary

TEXTS = ["Hello, world!\n", "机器学习，长短期记忆网络。", "emoji 🎉🚀 and ZWJ 👩‍💻", "tabs\tand\r\nCRLF"]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(text):
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert len(ids) == len(text)  # one id per code point, astral emoji included


def test_vocabulary_is_sorted_code_points_and_smallest_dtype():
    vocab = Vocabulary.from_text("cab🎉")
    assert vocab.chars == "abc🎉"
    assert list(vocab.encode("abc🎉")) == [0, 1, 2, 3]
    assert vocab.id_dtype == np.uint8
    big = Vocabulary(range(0x4E00, 0x4E00 + 300))
    assert big.id_dtype == np.uint16


def test_json_round_trip_and_equality():
    vocab = Vocabulary.from_text("".join(TEXTS))
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.chars == vocab.chars
    assert Vocabulary.from_text("ab") != Vocabulary.from_text("abc")


def test_unknown_characters_are_reported_not_mapped():
    vocab = Vocabulary.from_text("abc")
    assert vocab.unknown("abxcyx") == ["x", "y"]
    with pytest.raises(KeyError, match="outside the vocabulary"):
        vocab.encode("abz")


def test_preview_escapes_control_characters():
    assert Vocabulary.from_text("\n a").preview() == "\\n a"


def test_preview_shows_a_combining_mark_as_a_symbol_of_its_own():
    assert Vocabulary.from_text("u\u0301\u4e00").preview() == "u\\u0301\u4e00"  # not the single glyph ú


def test_a_vocabulary_shows_its_size_and_first_characters():
    assert repr(Vocabulary.from_text("ba\n\u0301")) == "Vocabulary(4 characters: \\nab\\u0301)"


def test_characters_that_join_their_neighbours_are_escaped_and_named():
    from textgen.vocab import quoted, shown_chars

    # A Devanagari vowel sign, an emoji's variation selector and a flag's two letters: a terminal would draw each
    # into its neighbour (two regional indicators side by side show as a flag the text never had).
    assert Vocabulary.from_text("\u093f\ufe0f\U0001f1eb\U0001f1ef").preview() == "\\u093f\\ufe0f\\U0001f1eb\\U0001f1ef"
    assert quoted("a\u0303") == "'a' '\\u0303' (combining tilde)"
    assert shown_chars("A\u0300\u0301") == "'A\\u0300\\u0301'"
    assert shown_chars("abc", shown=2) == "'ab' and 1 more"
    assert shown_chars("'\\x") == "'\\'\\\\x'"  # a quote and a backslash do not read as an escape
    assert quoted("\u200d") == "'\\u200d' (zero width joiner)"


def test_the_unicode_form_a_vocabulary_shows():
    import unicodedata

    text = "café déjà vu"
    assert Vocabulary.from_text(unicodedata.normalize("NFD", text)).unicode_form == "NFD"
    assert Vocabulary.from_text(text).unicode_form == "NFC"
    assert Vocabulary.from_text("plain").unicode_form is None
    assert Vocabulary.from_text(text + "q\u0303").unicode_form is None  # precomposed letters and a mark: mixed
    assert Vocabulary.from_text(text + "\u2126").unicode_form is None  # the ohm sign: NFC makes it omega
    assert Vocabulary.from_text(unicodedata.normalize("NFD", "소설 한국어")).unicode_form == "NFD"  # jamo
    assert Vocabulary.from_text("소설 한국어").unicode_form == "NFC"


@pytest.mark.parametrize("corpus, text, expected", [
    ("cafe\u0301 senor", "se\u00f1or", "sen\u0303or"),  # decomposed corpus: only the tilde is unknown
    ("caf\u00e9 senor", "sen\u0303or", "sen\u0303or"),  # precomposed corpus: NFC would make the n unknown
    ("e\u00e9\uf900", "e\u0301\uf900", "\u00e9\uf900"),  # the accent joins its e; NFC would replace the known 豈
    ("e\u00e9\uf900", "e\u0301\u2126\uf900", "\u00e9\u2126\uf900"),  # by an unknown one, NFC and NFD the Ω too
    # José precomposed and naïve decomposed, as the corpus writes them (the whole prime in NFD decomposed José too)
    ("Jos\u00e9: nai\u0308ve", "Jos\u00e9: na\u00efve", "Jos\u00e9: nai\u0308ve"),
    ("cafe\u0301 caf\u00e9", "cafe\u0301 cafe\u0301 caf\u00e9 q\u0303", "cafe\u0301 cafe\u0301 caf\u00e9 q\u0303"),
    ("\u2126 ohm", "\u2126 oh\u0301m", "\u2126 oh\u0301m"),  # the ohm sign is known; NFC or NFD would lose it
    ("cafe\u0301", "caf\u00e9", "cafe\u0301"),
])
def test_a_text_takes_the_form_with_fewest_unknown_then_most_known_characters(corpus, text, expected):
    assert Vocabulary.from_text(corpus).in_known_form(text) == expected


def test_a_large_vocabulary_previews_its_start_and_a_spread_of_the_rest_marking_what_it_leaves_out():
    """A Chinese text's vocabulary sorts its ASCII first, which alone filled the preview."""
    chinese = Vocabulary.from_text("".join(map(chr, range(32, 127))) + "".join(map(chr, range(0x4E00, 0x4E00 + 900))))
    preview = chinese.preview(60)
    head, spread = preview.removesuffix(" ...").split(" ... ")
    assert head == "".join(map(chr, range(32, 62))) and len(spread) == 30 and preview.endswith(" ...")
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in spread) >= 25
    one_over = Vocabulary.from_text("".join(map(chr, range(0x4E00, 0x4E00 + 61))))
    assert one_over.preview(60) == ("".join(map(chr, range(0x4E00, 0x4E00 + 30))) + " ... "
                                    + "".join(map(chr, range(0x4E00 + 31, 0x4E00 + 61))))  # the 31st left out, no more


def test_a_text_with_many_unknown_characters_is_read_sequence_by_sequence_all_the_same():
    """Above 10,000 unknown characters the whole text was converted at once, which decomposed the José the corpus
    writes precomposed (eval of 10,001 such lines: 2.155 bpc, where 9,999 gave 1.977)."""
    vocab = Vocabulary.from_text("Jos\u00e9: nai\u0308ve \u65e5\u672c")
    typed = "Jos\u00e9 na\u00efve \u65e5\u672c\u8a9e " * 12_000  # 12,000 unknown ï, and 語 that no form changes
    assert vocab.in_known_form(typed) == "Jos\u00e9 nai\u0308ve \u65e5\u672c\u8a9e " * 12_000
