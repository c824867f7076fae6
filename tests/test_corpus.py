import errno
import gzip
import io
import json
import os
import random
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write_text
from textgen import corpus as corpus_module
from textgen.corpus import CACHE_FILES, MIXED, load_corpus, read_text, scan
from textgen.errors import TextgenError


def test_corpus_kept_exactly_and_cached_as_memmap(tmp_path):
    text = "Line one\r\n\tTabbed 中文 🎉\n" * 50
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8", newline="")
    data = load_corpus(path, tmp_path / "run")
    assert isinstance(data.ids, np.memmap) or isinstance(data.ids.base, np.memmap)
    assert data.ids.dtype == np.uint8
    assert data.vocab.decode(data.ids) == text
    assert (tmp_path / "run" / "corpus.npy").exists()


def test_encoding_in_small_chunks_splits_multibyte_characters_safely(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 5)  # forces splits inside UTF-8 sequences
    text = "中文🎉abc" * 40
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    data = load_corpus(path, tmp_path / "run")
    assert data.vocab.decode(data.ids) == text


def test_cache_reused_then_rebuilt_when_the_file_changes(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc" * 100, encoding="utf-8")
    load_corpus(path, tmp_path / "run")
    cache = tmp_path / "run" / "corpus.npy"
    first_mtime = cache.stat().st_mtime_ns
    load_corpus(path, tmp_path / "run")
    assert cache.stat().st_mtime_ns == first_mtime  # unchanged file: cache reused
    path.write_text("xyz" * 100, encoding="utf-8")  # same size, new content
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    data = load_corpus(path, tmp_path / "run")
    assert data.vocab.chars == "xyz"
    assert data.vocab.decode(data.ids[:6]) == "xyzxyz"


@pytest.mark.parametrize("damage", ["id past the vocabulary", "wrong dtype", "metadata a list",
                                    "vocabulary null", "code point -1"])
def test_a_damaged_cache_is_rebuilt_not_used(tmp_path, damage):
    path = tmp_path / "c.txt"
    path.write_text("abcd" * 100, encoding="utf-8")
    load_corpus(path, tmp_path / "run")
    ids_file, meta_file = tmp_path / "run" / "corpus.npy", tmp_path / "run" / "corpus.json"
    meta = json.loads(meta_file.read_text())
    if damage == "id past the vocabulary":
        ids = np.load(ids_file)
        ids[7] = 200
        np.save(ids_file, ids)
    elif damage == "wrong dtype":
        np.save(ids_file, np.load(ids_file).astype(np.int64))
    elif damage == "metadata a list":
        meta_file.write_text(json.dumps([meta]))
    elif damage == "vocabulary null":
        meta_file.write_text(json.dumps(dict(meta, vocab=None)))
    else:
        meta_file.write_text(json.dumps(dict(meta, vocab=[-1, *meta["vocab"][1:]])))
    data = load_corpus(path, tmp_path / "run")
    assert data.vocab.decode(data.ids) == "abcd" * 100 and data.ids.dtype == np.uint8
    assert json.loads(meta_file.read_text()) == meta  # and the cache itself is whole again


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"good text\xff\xfe more", "not valid UTF-8 (first bad byte at byte offset 9, 0xFF on line 1)"),
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 57, "looks binary (NUL byte at byte offset 7, on line 1)"),
    (b"ends mid character \xe4\xb8", "truncated character"),
])
def test_bad_files_are_refused_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(TextgenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan(path)


def test_a_stray_nul_in_text_is_told_where_and_how_to_remove_it(tmp_path):
    """One NUL in a text (a cat of source files) was "looks binary (...) (give a UTF-8 text file)", without its line."""
    path = tmp_path / "code.txt"
    path.write_bytes(b"int main(void)\n{\n" * 600 + b"  return 0;\0\n}\n" + b"/* end */\n" * 100)
    with pytest.raises(TextgenError) as stray:
        scan(path)
    assert str(stray.value) == (f"corpus file holds NUL bytes, which no text has (the first at byte offset 10211, on "
                                f"line 1,201): {path} (remove them, e.g. with tr -d '\\000' < {path} > clean.txt)")
    short = tmp_path / "prime.txt"  # one NUL in a short file is no binary file either
    short.write_bytes(b"the\0x\n")
    with pytest.raises(TextgenError, match=re.escape("prime file holds NUL bytes, which no text has (the first at "
                                                     "byte offset 3, on line 1)")):
        read_text(short, "prime")
    cleaned = tmp_path / "clean.txt"
    with open(path, "rb") as given, open(cleaned, "wb") as out:
        subprocess.run(["tr", "-d", "\\000"], stdin=given, stdout=out, check=True)  # the command it gives
    assert scan(cleaned)[0] == path.stat().st_size - 1


CHINESE = "长短期记忆网络（LSTM）是一种时间循环神经网络，" \
          "是为了解决一般的循环神经网络存在的长期依赖问题而专门设计出来的。\n"


def test_utf8_text_cut_mid_character_is_told_to_drop_its_last_bytes(tmp_path):
    """It was told to convert a file that is UTF-8 already (head -c of a Chinese text)."""
    whole = (CHINESE * 20).rstrip("\n").encode("utf-8")  # ends with 。, 3 bytes
    path = tmp_path / "第一回 cut.txt"
    path.write_bytes(whole[:-1])  # the last character's third byte is missing
    at = len(whole) - 3
    with pytest.raises(TextgenError) as cut:
        scan(path)
    assert str(cut.value) == (f"corpus file ends in the middle of a UTF-8 character (from byte offset {at}: the file "
                              f"was cut short): {path} (remove its last 2 bytes, e.g. with head -c {at} "
                              f"'{path}' > whole.txt)")
    path.write_bytes(whole[:at])  # what that command leaves reads
    assert scan(path)
    path.write_bytes("It’s an English text, one curly quote, cut in a second ’".encode()[:-1])  # 3 UTF-8 bytes before
    with pytest.raises(TextgenError, match=r"ends in the middle of a UTF-8 character .* \(remove its last 2 bytes, "):
        scan(path)
    path.write_bytes(whole[1:])  # tail -c: the first character's first byte is missing
    with pytest.raises(TextgenError) as cut:
        scan(path)
    assert str(cut.value) == (f"corpus file starts in the middle of a UTF-8 character (its first 2 bytes end a "
                              f"character cut off: the file was cut at its start): {path} (remove them, e.g. with "
                              f"tail -c +3 '{path}' > whole.txt)")
    path.write_bytes(whole[2:])
    with pytest.raises(TextgenError, match=r"\(its first byte ends a character cut off: .* \(remove it, e\.g\. with "
                                           r"tail -c \+2 "):
        scan(path)
    path.write_bytes(b"\x80\xe9t\xe9")  # not UTF-8 after the first byte either: not said to be cut
    with pytest.raises(TextgenError, match=r"is not valid UTF-8 \(first bad byte at byte offset 0, 0x80 on line "
                                           r"1\)"):
        scan(path)
    path.write_bytes("Fin de l'ete".encode() + b"\xe9")  # Latin-1, its one non-ASCII byte at the end
    with pytest.raises(TextgenError, match=r"truncated character at its end.*\(convert it to UTF-8\)$"):
        scan(path)


@pytest.mark.parametrize("content, told", [
    # A GBK file was told "convert it to UTF-8, e.g. with iconv", and the README's example (-f latin1) made mojibake.
    ((CHINESE * 30).encode("gbk"), "(it looks like Chinese GB18030 (GBK, GB2312) text: convert it, e.g. with iconv "
                                   "-f gb18030 -t utf-8 in.txt > out.txt)"),
    ("中華民國憲法第一條：中華民國基於三民主義，為民有民治民享之民主共和國。\n".encode("big5") * 30,
     "(it looks like Traditional Chinese Big5 text: convert it, e.g. with iconv -f big5 -t utf-8"),
    ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n".encode("shift_jis") * 30,
     "(it looks like Japanese Shift-JIS (Windows cp932) text: convert it, e.g. with iconv -f cp932 -t utf-8"),
    ("대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있다.\n".encode("euc-kr") * 30,
     "(it looks like Korean EUC-KR (Windows cp949) text: convert it, e.g. with iconv -f cp949 -t utf-8"),
    ("Plain at first. Voilà l'été, « déjà » — ça va.\n".encode("cp1252") * 30,
     "(it looks like text in an 8-bit Latin encoding, such as Windows-1252 (Western European), Windows-1250 "
     "(Central European) or Windows-1254 (Turkish): convert it with iconv -f ENCODING -t utf-8 in.txt > out.txt, "
     "ENCODING being the file's (iconv -l lists them))"),
    ("Café crème, déjà vu: UTF-8 here, ".encode() * 20 + "but not here: été.".encode("latin-1"),
     f"({MIXED}: 2 bad bytes on line 1, which read as 8-bit Latin text (in Windows-1252, 0xE9 is 'é'): convert the "
     "part in that encoding before joining the files (iconv -f windows-1252 -t utf-8 part.txt > part-utf8.txt for "
     "Western European text), or fix those lines; iconv -f utf-8 -t utf-8 -c in.txt > out.txt would remove the "
     "bytes, and those characters with them)"),
    # A few UTF-8 characters, then one Windows-1252 line: mixed (it was told to convert the whole file).
    ("It\u2019s a truth \u2014 universally acknowledged.\n".encode() + b"Caf\xe9 au lait.\n" + b"plain text\n" * 200,
     f"({MIXED}: 1 bad byte on line 2, which read as 8-bit Latin text"),
    # Cyrillic, Greek, Arabic in their legacy encodings are whole words of "Latin" letters in Windows-1252: no guess
    # (they were told Windows-1252, which made mojibake that trained); two CJK characters fit every table: none.
    ("Съешь же ещё этих мягких французских булок, да выпей чаю.\n".encode("cp1251") * 30,
     "(convert it to UTF-8, e.g. with iconv -f ENCODING -t utf-8"),
    ("Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.\n".encode("cp1253") * 30, "(convert it to UTF-8, e.g. with iconv -f ENCODING"),
    ("你好".encode("gbk"), "(convert it to UTF-8, e.g. with iconv -f ENCODING"),
    # Czech in Windows-1250 reads as Windows-1252 letters (č as è): the Latin encodings are named, none chosen.
    ("Včera jsme šli do divadla a potom na večeři.\nPraha je hlavní město České republiky.\n".encode("cp1250") * 5,
     "8-bit Latin encoding"),
    # Windows' Japanese (①) and Korean (똠) beyond Shift-JIS and EUC-KR read as GB18030; Thai as Chinese garbage.
    ("価格は～5,000円、詳しくは①と②を参照。\n今日はとても良い天気ですね。\n".encode("cp932") * 5, "iconv -f cp932"),
    ("똠방각하 햏자 쌰라있네 뷁.\n안녕하세요, 오늘 날씨가 정말 좋네요.\n".encode("cp949") * 5, "iconv -f cp949"),
    ("ฉันชอบอ่านหนังสือตอนเย็น\n".encode("tis-620"), "(convert it to UTF-8, e.g. with iconv -f ENCODING"),
    # A legacy part, then a UTF-8 one (cat joins them): converting the whole garbled the UTF-8 part.
    ("Voilà l'été, déjà.\n".encode("cp1252") * 100 + "Voilà l'été, déjà.\n".encode() * 200,
     f"({MIXED}: 500 bad bytes on 100 lines (1, 2, 3, 4, 5, ...), which read as 8-bit Latin text (in Windows-1252, "
     "0xE0 is 'à', 0xE9 is 'é'): convert the part"),
    # A Latin-1 letter at the very end (a decoder holds a lead byte until told the text has ended) is counted
    ("déjà vu, ".encode() * 30 + b"caf\xe9\n" + b"plain\n" * 3 + b"caf\xe9",
     f"({MIXED}: 2 bad bytes on 2 lines (1, 5), which read as 8-bit Latin text"),
    # Bytes that read as no text: no encoding to convert from
    ("déjà vu, ".encode() * 30 + b"\x81\x8d\n" + b"plain\n" * 3 + b"\x9d",
     f"({MIXED}: 3 bad bytes on 2 lines (1, 5); fix or remove them, or remove every one with iconv -f utf-8 -t utf-8 "
     "-c in.txt > out.txt)"),
    # As many valid UTF-8 pairs as bad bytes: still GBK, not a UTF-8 file with bad bytes.
    ("天下大势，分久必合，合久必分。\n".encode("gbk") * 50, "looks like Chinese GB18030"),
    ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n".encode("euc_jp") * 10,
     "(it looks like Japanese EUC-JP text: convert it, e.g. with iconv -f euc-jp -t utf-8"),  # was "Korean EUC-KR"
    # Russian in UTF-16 without NULs is ASCII with a control character before each letter: not UTF-8 with NULs.
    ("Съешь же ещё этих мягких французских булок.\n".encode("utf-16-le") * 30, "is UTF-16LE text, not UTF-8"),
    (bytes(byte or 1 for byte in random.Random(0).randbytes(4096)),  # no NUL: not "binary"
     "(convert it to UTF-8, e.g. with iconv -f ENCODING -t utf-8 in.txt > out.txt)"),
    # Chinese in UTF-16 without a byte order mark was "binary"; UTF-32 was told UTF-16.
    ((CHINESE * 30).encode("utf-16-le"), "is UTF-16LE text, not UTF-8: {path} (convert it, e.g. with iconv -f utf-16le "
                                         "-t utf-8 in.txt > out.txt)"),
    ((CHINESE * 30).encode("utf-16-be"), "is UTF-16BE text, not UTF-8"),
    ("To be, or not to be.\n".encode("utf-16-le"), "is UTF-16LE text, not UTF-8"),
    ((CHINESE * 30).encode("utf-32"), "is UTF-32 text, not UTF-8: {path} (convert it, e.g. with iconv -f utf-32 -t "
                                      "utf-8"),
    ("To be.".encode("utf-16"), "is UTF-16 text, not UTF-8"),
    # Windows-1252 whose accented letters and curly quotes each precede a letter read as GB18030 pairs ("It抯").
    ("It\u2019s a dog\u2019s life, isn\u2019t it?\n".encode("cp1252") * 40, "8-bit Latin encoding"),
    ("Schr\u00f6dinger and G\u00f6del met M\u00fcller in Z\u00fcrich.\n".encode("cp1252") * 40,
     "8-bit Latin encoding"),
    # GBK whose first characters happen to be valid UTF-8 pairs (小 is D0 A1): not "mixes encodings".
    ("小王子\n第一章\n当我还只有六岁的时候…\n".encode("gbk") * 20, "looks like Chinese GB18030"),
    # GB2312 also decodes as EUC-KR (part Hangul, part Hanja): Korean is mostly Hangul.
    ("我爱北京天安门。".encode("gb2312") * 30, "looks like Chinese GB18030"),
    # UTF-8 with stray NULs is binary, not UTF-16 (as UTF-16 ASCII reads as CJK ideographs).
    (b"hello there world this is text\0" * 20, "looks binary (NUL byte at byte offset 30, on line 1)"),
    (("第一章 风起\n" + "天下大势，分久必合，合久必分。周末七国分争，并入于秦。" * 20).encode("utf-16-le"),
     "is UTF-16LE text"),
    # UTF-32 without a byte order mark was "binary"; ISO-2022 (7-bit, old mail) trained as ASCII with escapes.
    ((CHINESE * 30).encode("utf-32-le"), "is UTF-32LE text, not UTF-8: {path} (convert it, e.g. with iconv -f "
                                         "utf-32le -t utf-8 in.txt > out.txt)"),
    ("To be, or not to be.\n".encode("utf-32-be") * 3, "is UTF-32BE text, not UTF-8"),
    ("吾輩は猫である。名前はまだ無い。\n".encode("iso2022_jp") * 10, "is ISO-2022-JP text, not UTF-8: {path} (convert "
                                                                  "it, e.g. with iconv -f iso-2022-jp -t utf-8"),
    ("대한민국은 민주공화국이다.\n".encode("iso2022_kr") * 10, "is ISO-2022-KR text, not UTF-8"),
    (b"An English preface.\n" * 300 + "吾輩は猫である。\n".encode("iso2022_jp"), "is ISO-2022-JP text"),
    # Its larger variants, whose escapes ISO-2022-JP's converter garbles or refuses, were ASCII.
    ("대한민국\n".encode("iso2022_jp_2") * 20, "is ISO-2022-JP-2 text"),
    ("丂丄 吾輩は猫\n".encode("iso2022_jp_1") * 20, "is ISO-2022-JP-2 text"),
    ("𠀋𡈽𡌛 俱剝\n".encode("iso2022_jp_2004") * 20, "is ISO-2022-JP-3 text"),
    ("ｶﾀｶﾅ 吾輩は猫\n".encode("iso2022_jp_ext") * 20, "is ISO-2022-JP-3 text"),  # iconv's -JP left ESC ( I in
])
def test_a_file_in_another_encoding_is_told_which_it_looks_like(tmp_path, content, told):
    path = tmp_path / "other.txt"
    path.write_bytes(content)
    with pytest.raises(TextgenError) as refused:
        scan(path)
    assert told.format(path=path) in str(refused.value)


def _npy(array: np.ndarray) -> bytes:
    with io.BytesIO() as out:
        np.save(out, array)
        return out.getvalue()


def _stored_zip(**members: bytes) -> bytes:
    """A zip whose members are stored, not compressed: how Keras writes a .keras file."""
    with io.BytesIO() as out:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return out.getvalue()


_HAMLET = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 60
_SMALL_IDS = np.unique(list(_HAMLET), return_inverse=True)[1]  # a corpus's character ids, as textgen caches them
_KERAS_CONFIG = json.dumps(dict(module="keras", class_name="Sequential", config=dict(layers=[
    dict(class_name="LSTM", config=dict(name=f"lstm_{n}", units=512, stateful=True, return_sequences=True,
                                        recurrent_initializer="glorot_uniform")) for n in range(12)])))
_NO_NUL = bytes(byte or 1 for byte in random.Random(1).randbytes(3000))


@pytest.mark.parametrize("content", [
    # Arrays of small numbers and a .keras model were "UTF-16LE / UTF-16BE text, not UTF-8 (convert it, e.g. with
    # iconv ...)": their NULs fall on both sides of the byte pairs, where UTF-16 text has them on one.
    _npy(_SMALL_IDS.astype(np.uint16)),
    _npy(_SMALL_IDS.astype(np.uint8)),
    _stored_zip(**{"metadata.json": b'{"keras_version": "3.15.1", "date_saved": "2026-12-05@06:40:00"}',
                   "config.json": _KERAS_CONFIG.encode(), "model.weights.h5": bytes(4096)}),
    # A small gzip or random bytes with a few NULs were "holds NUL bytes (remove them, e.g. with tr -d '\000' ...)",
    # after which they are still no text.
    gzip.compress(b"To be, or not to be, that is the question.\n" * 40, mtime=0),
    _NO_NUL[:1500] + b"\0" + _NO_NUL[1500:],
])
def test_binary_files_are_told_binary(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(TextgenError, match=re.escape("corpus file looks binary (NUL byte at byte offset")):
        scan(path)


def test_bad_byte_offset_is_exact_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 4)
    path = tmp_path / "bad.txt"
    path.write_bytes("中文中文".encode() + b"\xff")
    with pytest.raises(TextgenError, match="byte offset 12"):
        scan(path)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(TextgenError, match="not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(TextgenError, match="is a directory"):
        read_text(tmp_path)


def test_a_byte_order_mark_is_not_text_and_offsets_stay_exact(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "ab\ufeffc".encode())  # only the leading mark goes
    count, vocab = scan(path)
    assert count == 4 and sorted(vocab.chars) == sorted("abc\ufeff")
    assert read_text(path) == "ab\ufeffc"
    ids = load_corpus(path, tmp_path / "cache").ids
    assert len(ids) == 4
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(TextgenError, match="byte offset 5"):
        scan(path)
    path.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(TextgenError, match="holds no characters"):
        scan(path)


def piped(text: str) -> tuple[Path, int]:
    """A pipe already holding text, its writer closed (reading it never blocks), as a path like /dev/stdin."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    return Path(f"/dev/fd/{read}"), read


def test_a_pipe_is_refused_as_a_corpus_but_read_as_a_prime():
    path, handle = piped("le roi " * 100)
    with pytest.raises(TextgenError, match=r"must be a regular file: /dev/fd/\d+ is a pipe or a device, which can "
                                           r"be read only once \(save the text to a file first\)"):
        scan(path)
    os.close(handle)
    path, handle = piped("le roi " * 100)  # a text to score: eval can read a pipe as standard input
    with pytest.raises(TextgenError, match=r"\(save the text to a file first; textgen eval - reads standard input\)$"):
        scan(path, what="text")
    os.close(handle)
    path, handle = piped("le roi")
    assert read_text(path, what="prime") == "le roi"
    os.close(handle)


def test_a_file_name_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9.txt")
    path.write_bytes(b"abc")
    with pytest.raises(TextgenError, match=r"corpus file name is not valid UTF-8: .*caf\\udce9.txt.*rename the file"):
        scan(path)


@pytest.mark.parametrize("file_form, corpus_form", [("NFC", "NFD"), ("NFD", "NFC")])
def test_a_text_is_read_in_the_unicode_form_of_the_vocabulary_even_across_chunks(tmp_path, monkeypatch,
                                                                                  file_form, corpus_form):
    import unicodedata

    from textgen.corpus import encode_text
    from textgen.vocab import Vocabulary

    words = "café résumé naïve Ångström\n"
    vocab = Vocabulary.from_text(unicodedata.normalize(corpus_form, words))
    path = write_text(tmp_path / "held_out.txt", unicodedata.normalize(file_form, words * 40 + "x"))
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 7)  # chunks end between letters and their accents
    ids, dropped = encode_text(path, vocab)
    assert dropped == 1  # the x
    assert vocab.decode(ids) == unicodedata.normalize(corpus_form, words * 40)


def test_a_long_text_without_a_place_to_cut_is_still_read_whole(tmp_path, monkeypatch):
    from textgen.corpus import encode_text
    from textgen.vocab import Vocabulary

    text = "中文字" * 5000  # no character below U+0300 within FORM_SEARCH of a chunk's end
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1000)
    ids, dropped = encode_text(write_text(tmp_path / "cjk.txt", text), Vocabulary.from_text(text))
    assert dropped == 0 and Vocabulary.from_text(text).decode(ids) == text


def test_a_long_line_of_decomposed_kana_is_cut_between_letters_not_inside_one(tmp_path, monkeypatch):
    import unicodedata

    from textgen.corpus import encode_text
    from textgen.vocab import Vocabulary

    text = "がぎぐげご" * 3000  # each kana + a combining voicing mark in NFD; nothing below U+0300
    vocab = Vocabulary.from_text(text)  # the corpus wrote them precomposed
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 20000)
    ids, dropped = encode_text(write_text(tmp_path / "nfd.txt", unicodedata.normalize("NFD", text)), vocab)
    assert dropped == 0 and vocab.decode(ids) == text


def test_a_disk_too_full_for_the_cache_is_one_error_and_leaves_no_file(tmp_path, monkeypatch):
    """The cache is written through a memory map: on a full disk the process died of SIGBUS, with no message. Its
    space is reserved first, which fails as an OSError (here as a full disk would make it fail)."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    path = write_text(tmp_path / "c.txt", "hello world\n" * 100)
    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)  # where it cannot reserve: as before
    assert load_corpus(path, tmp_path / "elsewhere").vocab.decode(load_corpus(path, tmp_path / "elsewhere").ids) == \
        "hello world\n" * 100
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    message = f"could not write the corpus's cache in {tmp_path / 'cache'} (the disk is full); free some space, or " \
              "choose another --checkpoint-dir"
    with pytest.raises(TextgenError, match=f"^{re.escape(message)}$"):
        load_corpus(path, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cache_that_memory_cannot_map_is_told_as_memory_not_disk_and_not_rebuilt(tmp_path, monkeypatch):
    """Under ulimit -v a whole cache whose map failed (ENOMEM) was taken for a damaged one and encoded again, and the
    new map failing too said "free some space" on the disk."""
    import textgen.address_space

    path = write_text(tmp_path / "c.txt", "hello world\n" * 100)
    load_corpus(path, tmp_path / "cache")
    cache = tmp_path / "cache" / CACHE_FILES[0]
    before = cache.stat().st_mtime_ns
    real_load = np.load

    def no_memory(*args, **kwargs):
        if kwargs.get("mmap_mode"):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", no_memory)
    monkeypatch.setattr(textgen.address_space, "address_space_limit", lambda: 2 * 1024**3)
    told = (f"not enough memory to map the corpus's cache ({cache}, 0 MB); this process may use only 2.0 GiB of "
            "address space (ulimit -v 2097152): raise the limit, or train on a smaller text")
    with pytest.raises(TextgenError, match=f"^{re.escape(told)}$"):
        load_corpus(path, tmp_path / "cache")
    assert cache.stat().st_mtime_ns == before  # not encoded again
    monkeypatch.setattr(np.lib.format, "open_memmap", lambda *args, **kwargs: no_memory(mmap_mode="w+"))
    with pytest.raises(TextgenError, match=r"^not enough memory to map the corpus's cache \(.*, 0 MB\); this process"):
        load_corpus(path, tmp_path / "new")
    assert [entry.name for entry in (tmp_path / "new").iterdir()] == []


def test_a_text_read_whole_is_refused_past_its_limit_as_soon_as_it_is_read(tmp_path, monkeypatch):
    """--prime-file read an endless pipe (yes | textgen sample --prime-file -) until memory ran out."""
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 10)
    chunks = []
    decoded = corpus_module._decoded_chunks
    monkeypatch.setattr(corpus_module, "_decoded_chunks", lambda *args: (chunks.append(piece) or piece
                                                                          for piece in decoded(*args)))
    path = write_text(tmp_path / "prime.txt", "y\n" * 1000)
    assert read_text(path, "prime", max_chars=2000) == "y\n" * 1000
    chunks.clear()
    with pytest.raises(TextgenError, match=f"^prime file {re.escape(str(path))} holds more than 100 characters; give "
                                           r"a shorter prime \(its end is what the continuation follows\)$"):
        read_text(path, "prime", max_chars=100)
    assert sum(map(len, chunks)) <= 110  # it stopped reading there


def test_writing_the_built_in_corpus_keeps_a_file_already_there(tmp_path, monkeypatch, capsys):
    """python -m textgen.data mine.txt replaced the user's mine.txt with the corpus, and --help wrote a file named
    --help; a bare `textgen train` rewrote a data/pydoc_topics.txt that differed from the built-in text."""
    from textgen.data import build_default_corpus, default_corpus_text, main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0 and "--overwrite" in capsys.readouterr().out and not any(tmp_path.iterdir())
    mine = write_text(tmp_path / "mine.txt", "precious")
    assert main(["mine.txt"]) == 1 and mine.read_text() == "precious"
    assert capsys.readouterr().err == ("error: mine.txt already exists and is not the built-in corpus; pass "
                                       "--overwrite to replace it, or give another path\n")
    assert build_default_corpus(mine) == mine and mine.read_text() == "precious"
    assert main(["mine.txt", "--overwrite"]) == 0 and mine.read_text(encoding="utf-8") == default_corpus_text()
    assert main(["mine.txt"]) == 0 and main([]) == 0  # the same text again; the default path, made with its folder
    assert (tmp_path / "data" / "pydoc_topics.txt").read_text(encoding="utf-8") == default_corpus_text()
    assert main(["data"]) == 1 and "error: data is a directory; give a file path" in capsys.readouterr().err

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr("textgen.data.atomic_write_text", full)  # a full disk leaves no empty folders behind
    with pytest.raises(OSError):
        build_default_corpus(Path("new") / "data" / "pydoc_topics.txt")
    assert not (tmp_path / "new").exists() and (tmp_path / "data").is_dir()


def test_a_pipe_that_is_not_utf8_is_told_how_to_convert_it_not_that_the_output_failed():
    """A GBK prime piped to --prime-file -: the encoding guess read the file again with a seek, which a pipe refuses,
    and the command said "cannot write the output (File or stream is not seekable.)"."""
    read_end, write_end = os.pipe()
    os.write(write_end, "长短期记忆网络是一种时间循环神经网络，可以学习长期依赖。".encode("gbk"))
    os.close(write_end)
    try:
        with pytest.raises(TextgenError, match=r"^prime file is not valid UTF-8 \(first bad byte at byte offset 0, "
                                               r"0xB3 on line 1\): /dev/fd/\d+ \(it looks like Chinese GB18030 "
                                               r"\(GBK, GB2312\) text: "
                                               r"convert it, e.g. with iconv -f gb18030 -t utf-8 in.txt > out.txt\)$"):
            read_text(Path(f"/dev/fd/{read_end}"), what="prime")
    finally:
        os.close(read_end)


@pytest.mark.parametrize("chunk", [7, 8 << 20])  # blocks that end inside lines and characters, and one block
def test_a_stray_byte_is_named_by_its_value_and_line(tmp_path, monkeypatch, chunk):
    """A few stray bytes in a UTF-8 text (Windows-1252 quotes pasted in) were named by their byte offset alone: no
    line to find them at in an editor, no value to tell what they were, nothing to remove them all."""
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", chunk)
    text = "".join(f"ligne {n} : déjà vu, été\n" for n in range(1, 40)).encode() + b"le \x92mot\x92\n" + b"fin\n" * 9
    path = tmp_path / "mixed.txt"
    path.write_bytes(text)
    with pytest.raises(TextgenError) as refused:
        read_text(path)
    at = text.index(b"\x92")
    assert str(refused.value) == (f"text file is not valid UTF-8 (first bad byte at byte offset {at}, 0x92 on line "
                                  f"40): {path} ({MIXED}: 2 bad bytes on line 40, which read as 8-bit Latin text (in "
                                  "Windows-1252, 0x92 is '’'): convert the part in that encoding before joining the "
                                  "files (iconv -f windows-1252 -t utf-8 part.txt > part-utf8.txt for Western European "
                                  "text), or fix those lines; iconv -f utf-8 -t utf-8 -c in.txt > out.txt would remove "
                                  "the bytes, and those characters with them)")


def test_standard_input_closed_is_said_and_a_copy_of_it_goes_at_the_end(monkeypatch, caplog):
    import io
    import sys

    from textgen.corpus import standard_input_copy

    monkeypatch.setattr(sys, "stdin", None)  # started with <&-
    with pytest.raises(TextgenError, match=r"^standard input is closed; pipe a text into it, or give a file$"):
        with standard_input_copy():
            pass
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("le roi ".encode() * 3)))
    with standard_input_copy() as copy:
        assert copy.read_text() == "le roi " * 3
    assert not copy.exists() and not copy.parent.exists()

    class Terminal(io.BytesIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Terminal(b"typed")))  # where it waits for Ctrl-D
    with standard_input_copy() as copy:
        assert copy.read_text() == "typed"
    assert caplog.messages == ["note: reading the text from the terminal; end it with Ctrl-D"]
