"""Reading a corpus: validated UTF-8, encoded in chunks to a memory-mapped id cache."""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import re
import logging
import shlex
import shutil
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from textgen.errors import MissingFile, TextgenError, counted
from textgen.files import atomic_write, atomic_write_json, has_file_extension, too_long_for_a_path
from textgen.vocab import Vocabulary, starts_alone

CHUNK_BYTES = 8 << 20  # large enough to amortise Python overhead, small enough to bound memory
CACHE_VERSION = 1
CACHE_FILES = ("corpus.npy", "corpus.json")  # the encoded ids, and what they were encoded from
FORM_SEARCH = 4096  # characters searched back from a chunk's end for a place to cut it before a Unicode conversion


@dataclass
class Corpus:
    path: Path
    ids: np.ndarray  # every character's id, memory-mapped from the cache
    vocab: Vocabulary
    fingerprint: dict  # size, mtime_ns and blake2b digest of the file

    def __len__(self) -> int:
        return len(self.ids)


def _text_for_a_path(what: str) -> str:
    """What a text given as the path of what hears: a prime has an option of its own for its text."""
    return "the text itself? give it with --prime" if what == "prime" else \
        "the text itself? save it to a file and give that file's path"


def _name_reads_as_text(name: str) -> bool:
    """Whether a missing file's name reads as a text: several words, or (Chinese and Japanese have no spaces) a
    sentence's punctuation or a run of ideographs and kana longer than a title."""
    return len(name.split()) >= 2 or any(ch in "，。！？、；：「」" for ch in name) or \
        sum(unicodedata.category(ch) == "Lo" and ord(ch) >= 0x3040 for ch in name) >= 16


_STANDARD_INPUT_PATHS: set[Path] = set()  # standard_input_copy's copies and /dev/stdin, while read


STANDARD_INPUT = "standard input"


def _standard_input():
    """sys.stdin's bytes, refused when closed; a terminal is told how to end its text (else it looks stuck)."""
    stdin = getattr(sys.stdin, "buffer", None)
    if stdin is None:  # (`<&-`: Python has no sys.stdin)
        raise TextgenError("standard input is closed; pipe a text into it, or give a file")
    if stdin.isatty():
        logging.getLogger("textgen").warning("note: reading the text from the terminal; end it with Ctrl-D")
    return stdin


@contextlib.contextmanager
def named_standard_input(path: Path) -> Iterator[None]:
    """Messages about path, standard input or a copy of it, call it standard input."""
    try:
        yield
    except TextgenError as error:
        error.args = tuple(str(arg).replace(f" file {path}", f" on {STANDARD_INPUT}").replace(str(path), STANDARD_INPUT)
                           for arg in error.args)
        raise


@contextlib.contextmanager
def standard_input_copy() -> Iterator[Path]:
    """Standard input copied to a temporary file, for a reader that reads its text more than once (a pipe can be read
    once), and removed at the end; messages about it give no command to run on the copy."""
    stdin = _standard_input()
    with tempfile.TemporaryDirectory(prefix="textgen-stdin-") as folder:
        path = Path(folder) / "stdin"
        try:
            with open(path, "wb") as copy:
                shutil.copyfileobj(stdin, copy, 1 << 20)
        except OSError as error:
            raise TextgenError(f"cannot keep standard input in a temporary file in {tempfile.gettempdir()} "
                               f"({error.strerror or error}); set TMPDIR to a directory with room, or save the text "
                               "to a file and give its name") from None
        _STANDARD_INPUT_PATHS.add(path)
        try:
            yield path
        finally:
            _STANDARD_INPUT_PATHS.discard(path)


def read_standard_input(what: str = "text", max_chars: Optional[int] = None) -> str:
    """:func:`read_text` of standard input (``--prime-file -``)."""
    _standard_input()
    path = Path("/dev/stdin")
    _STANDARD_INPUT_PATHS.add(path)  # a file redirected there (< f.txt) is no path to give a repair command
    try:
        with named_standard_input(path):
            return read_text(path, what, max_chars)
    finally:
        _STANDARD_INPUT_PATHS.discard(path)


def _repairable(path: Path) -> bool:
    """Whether a command can mend the file at path (not standard input, nor a copy of it)."""
    return path.is_file() and path not in _STANDARD_INPUT_PATHS


def check_readable(path: Path, what: str = "corpus", read_once: bool = False) -> None:
    """Refuse paths that cannot be a text file, before any work is done. A corpus is read more than once (its
    fingerprint, its vocabulary, its encoding), so only a file that is ``read_once`` may be a pipe."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise TextgenError(f"{what} file name is not valid UTF-8: {str(path)!r} (rename the file)") from None
    if too_long_for_a_path(path) or (not path.exists() and "\n" in str(path)):  # its text given for the file
        why = "hold a line break" if "\n" in str(path) else "are too long for a path"
        raise TextgenError(f"{what} must be the path of a text file, got {len(str(path)):,} characters that {why} "
                           f"({_text_for_a_path(what)})")
    if not path.exists():
        name = str(path)
        # Words given for the file (train("hello world"), a Chinese sentence), not a file name with a space
        # ("notes 2024.txt")
        if _name_reads_as_text(name) and os.sep not in name and "/" not in name and not has_file_extension(name):
            raise MissingFile(f"{what} file not found: {name if len(name) <= 60 else name[:57] + '...'} (check the "
                               f"path; {_text_for_a_path(what)})")
        raise MissingFile(f"{what} file not found: {name} (check the path)")
    if path.is_dir():
        # A folder of texts (lyrics, letters) is trained on as one: char-rnn's users join them with cat
        joined = f", or join its texts into one: cat {shlex.quote(str(path))}/*.txt > " \
                 f"{shlex.quote((path.name if path.name not in ('', '..') else 'corpus') + '.txt')}" \
            if what == "corpus" else ""
        raise TextgenError(f"{what} path is a directory, not a file: {path} (give a text file inside it{joined})")
    if not os.access(path, os.R_OK):
        raise TextgenError(f"{what} file is not readable: {path} (check its permissions)")
    if not read_once and not path.is_file():
        piped = "; textgen eval - reads standard input" if what == "text" else ""
        raise TextgenError(f"{what} file must be a regular file: {path} is a pipe or a device, which can be read "
                           f"only once (save the text to a file first{piped})")
    if path.is_file() and path.stat().st_size == 0:  # a pipe (e.g. /dev/stdin) reports size 0
        raise TextgenError(f"{what} file is empty: {path} (give a UTF-8 text file with some text in it)")


def _chunks(path: Path):
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block


def _decoded_chunks(path: Path, what: str):
    """Yield the file as text, chunk by chunk, refusing non-UTF-8 or binary content with its byte offset. A byte
    order mark at the start is not text (editors on Windows add one): it is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    lines = 1  # the line the next block starts in
    utf8_bytes = 0  # bytes of non-ASCII UTF-8 characters read so far, counted up to UTF8_EVIDENCE
    for block in _chunks(path):
        if offset == 0 and (other := _recognised_encoding(block)):
            raise TextgenError(f"{what} file is {other.upper()} text, not UTF-8: {path} (convert it, e.g. with "
                               f"iconv -f {other} -t utf-8 in.txt > out.txt)")
        nul = block.find(b"\0")
        if nul >= 0:
            line = lines + block[:nul].count(b"\n")
            where = f"at byte offset {offset + nul}, on line {line:,}"
            # (a short prime file's one NUL is no binary; a few in bytes that are no UTF-8 around them, as in a small
            # gzip or random data, are: without them the file is still no text)
            if block.count(b"\0") > max(8, len(block) // 1000) or not _utf8_around(block, nul):
                raise TextgenError(f"{what} file looks binary (NUL byte {where}): {path} (give a UTF-8 text file)")
            # A few NULs in text (a cat that took in a stray file's bytes, an editor's slip) are removed, not the file
            command = f", e.g. with tr -d '\\000' < {shlex.quote(str(path))} > clean.txt" if _repairable(path) else ""
            raise TextgenError(f"{what} file holds NUL bytes, which no text has (the first {where}): {path} (remove "
                               f"them{command})")
        buffered = decoder.getstate()[0]  # the start of a character the previous block ended inside
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as error:  # error.start counts from the buffered bytes
            at = offset - len(buffered) + error.start
            if at == 0 and (cut := _cut_at_start(block)):  # tail -c of a UTF-8 text
                command = f", e.g. with tail -c +{cut + 1} {shlex.quote(str(path))} > whole.txt" \
                    if _repairable(path) else ""
                first = "its first byte ends" if cut == 1 else f"its first {cut} bytes end"
                raise TextgenError(f"{what} file starts in the middle of a UTF-8 character ({first} a character cut "
                                   f"off: the file was cut at its start): {path} (remove {'it' if cut == 1 else 'them'}"
                                   f"{command})") from None
            utf8_bytes += _high_bytes((buffered + block)[:error.start])
            # its value and line, to find it (0x92, a Windows-1252 quote) in an editor
            bad = (buffered + block)[error.start]
            line = lines + block[:max(0, error.start - len(buffered))].count(b"\n")
            advice = _conversion_advice(path, at, utf8_bytes >= UTF8_EVIDENCE, buffered + block, error.start, line)
            raise TextgenError(f"{what} file is not valid UTF-8 (first bad byte at byte offset {at}, 0x{bad:02X} on "
                               f"line {line:,}): {path} ({advice})") from None
        if utf8_bytes < UTF8_EVIDENCE and not text.isascii():  # isascii is O(1): an ASCII block costs nothing
            utf8_bytes += _high_bytes(block)
        if offset == 0:  # the first block holds the whole mark (blocks are CHUNK_BYTES long)
            text = text.removeprefix("\ufeff")
        offset += len(block)
        lines += block.count(b"\n")
        yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        cut = len(decoder.getstate()[0])
        if utf8_bytes:  # UTF-8 before the cut: a UTF-8 text cut short (head -c, a download stopped)
            command = f", e.g. with head -c {offset - cut} {shlex.quote(str(path))} > whole.txt" \
                if _repairable(path) else ""
            raise TextgenError(
                f"{what} file ends in the middle of a UTF-8 character (from byte offset {offset - cut}: the file was "
                f"cut short): {path} (remove its last {counted(cut, 'byte')}{command})") from None
        raise TextgenError(
            f"{what} file is not valid UTF-8 (truncated character at its end, byte offset {offset - cut}): {path} "
            "(convert it to UTF-8)"
        ) from None


_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes that continue a UTF-8 character


def _utf8_around(block: bytes, at: int) -> bool:
    """Whether the bytes of block within 1 KB of offset at, NULs removed, read as UTF-8 (a character cut at either
    end of that window allowed)."""
    start = max(0, at - 1024)
    window = block[start : at + 1024]
    cut = len(window) - len(window.lstrip(_CONTINUATION))
    if start and cut <= 3:
        window = window[cut:]
    return _decodes(window.replace(b"\0", b""), "utf-8") is not None


def _cut_at_start(block: bytes) -> int:
    """How many bytes block starts with that end a UTF-8 character whose start was cut off (0: it does not), when
    the rest reads as UTF-8."""
    cut = len(block) - len(block.lstrip(_CONTINUATION))
    if not 1 <= cut <= 3:
        return 0
    try:
        codecs.getincrementaldecoder("utf-8")().decode(block[cut : cut + LEGACY_SAMPLE])
    except UnicodeDecodeError:
        return 0
    return cut


# The escape sequences that switch an ISO-2022 text (7-bit: it decodes as ASCII) into a multi-byte character set,
# those of the larger variants first: a JP-2 text (JIS X 0212, Korean, Chinese) also holds ISO-2022-JP's escapes,
# and iconv -f iso-2022-jp garbles it.
_ISO_2022 = ((b"\x1b$(Q", "iso-2022-jp-3"), (b"\x1b$(O", "iso-2022-jp-3"), (b"\x1b$(P", "iso-2022-jp-3"),
             (b"\x1b$(D", "iso-2022-jp-2"), (b"\x1b$(C", "iso-2022-jp-2"), (b"\x1b$(A", "iso-2022-jp-2"),
             (b"\x1b$A", "iso-2022-jp-2"), (b"\x1b(I", "iso-2022-jp-3"),  # half-width katakana
             (b"\x1b$B", "iso-2022-jp"), (b"\x1b$@", "iso-2022-jp"), (b"\x1b$)C", "iso-2022-kr"),
             (b"\x1b$)A", "iso-2022-cn"), (b"\x1b$)G", "iso-2022-cn"))


def _recognised_encoding(head: bytes) -> Optional[str]:
    """The iconv name of the UTF-16, UTF-32 or ISO-2022 a file's first bytes are in (Windows tools often save text
    in the first two, old Japanese mail in the last), or None. Known by a byte order mark or ISO-2022's escapes; or
    without them, by UTF-32 that reads as text, or in mostly-ASCII text by a NUL in every other byte; or, in other
    scripts, by NULs (each ASCII character, space or newline has one) in a sample that reads as text in UTF-16 of
    one byte order, the characters its NULs are in too, and is no UTF-8 text with a stray NUL (as UTF-16, ASCII
    reads as CJK ideographs)."""
    for mark, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # UTF-16's mark begins
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):  # UTF-32-LE's: first
        if head.startswith(mark):
            return name
    if (b"\x1b$" in head or b"\x1b(I" in head) and head.isascii():  # the whole block: an English preface first
        return next((name for escape, name in _ISO_2022 if escape in head), None)
    sample = head[:4096]
    if len(sample) < 16 or b"\0" not in sample:
        return None
    for name in ("utf-32le", "utf-32be"):  # code points beyond U+10FFFF: UTF-16 or binary data never decode
        text = _decodes(sample[:len(sample) - len(sample) % 4], name)
        if text is not None and _mostly_text(text):
            return name
    sample = sample[:len(sample) - len(sample) % 2]
    for zeros, other, name in ((sample[1::2], sample[0::2], "utf-16le"), (sample[0::2], sample[1::2], "utf-16be")):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) <= 0.1 * len(other) \
                and _mostly_text(sample.decode(name, errors="replace")):
            return name
    stripped = _decodes(sample.replace(b"\0", b""), "utf-8")  # NULs in UTF-8 text, or the text without them:
    if stripped is not None and _mostly_text(stripped):  # then it is text
        return None  # (Cyrillic UTF-16 without its NULs is ASCII too, a control character before each letter)
    # The characters its NULs are in must read as text too (ASCII, or CJK ideographs such as U+4E00), where in binary
    # data read as UTF-16 (an array of small numbers) many are control characters
    with_nul = b"".join(bytes(pair) for pair in zip(sample[0::2], sample[1::2]) if 0 in pair)
    for name in ("utf-16le", "utf-16be"):
        if _mostly_text(sample.decode(name, errors="replace")) and _mostly_text(with_nul.decode(name, "replace")):
            return name
    return None


def _mostly_text(text: str) -> bool:
    """Whether 95% or more of text are characters of ordinary text."""
    return sum(map(_reads_as_text, text)) >= 0.95 * len(text)


def _decodes(data: bytes, encoding: str) -> Optional[str]:
    """data as text in encoding, allowing it to end inside a character, or None."""
    for cut in range(4):
        try:
            return data[:len(data) - cut].decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def _reads_as_text(ch: str) -> bool:
    """Whether ch is a character of ordinary text: printable or a line break, not a surrogate, private-use or
    unassigned code point (what bytes read in the wrong encoding mostly give)."""
    return ch in "\n\r\t" or (ch.isprintable() and unicodedata.category(ch) not in ("Co", "Cn", "Cs", "So"))


_HIGH = bytes(range(128, 256))
UTF8_EVIDENCE = 64  # bytes of valid non-ASCII UTF-8 before a bad byte that make the file UTF-8 (GBK pairs can be
# valid UTF-8 by chance, but decoding stops at the first that is not, a few characters in)


def _high_bytes(data: bytes) -> int:
    return len(data) - len(data.translate(None, _HIGH))


def _conversion_advice(path: Path, at: int, utf8_before: bool, block: bytes, start: int, line: int) -> str:
    """What to do about a file that is not UTF-8 from byte at, which is block[start] (the bytes read last), on line.

    - Fix the bytes there if it is UTF-8 (utf8_before: plenty of UTF-8 before them).
    - Else convert it from the double-byte (CJK) encoding it reads as convincingly, if one.
    - Else fix the bytes if valid UTF-8 characters after them are at least as many as the bad bytes (a few curly
      quotes, then one Windows-1252 word; a legacy part, then a UTF-8 one, as `cat` joins them). A CJK text can read
      as UTF-8 in places (GBK's 天下大势 has as many valid pairs as bad bytes): its guess comes first.
    - Else, for Latin letters, name the usual 8-bit encodings without choosing one: Windows-1252, -1250 and -1254
      read each other's bytes as letters too (Czech č as è), so a guess would be confidently wrong.
    - Else ask for the file's encoding."""
    if utf8_before:
        return _mixed_advice(path, block, start, line)
    if path.is_file():  # from the file: a block may end just after the bad byte
        with open(path, "rb") as handle:
            handle.seek(max(0, at - LEGACY_SAMPLE))
            before = handle.read(at - max(0, at - LEGACY_SAMPLE))
            rest = handle.read(MIXED_SPAN)
    else:  # a pipe (a prime on standard input) cannot be read again: its seek was told as an output error
        before, rest = block[max(0, start - LEGACY_SAMPLE):start], block[start:start + MIXED_SPAN]
    guess = _legacy_encoding(rest[:LEGACY_SAMPLE])
    if guess is not None and guess[0] != LATIN:
        return f"it looks like {guess[1]} text: convert it, e.g. with iconv -f {guess[0]} -t utf-8 in.txt > out.txt"
    near = (before + rest).decode("utf-8", errors="replace")
    bad = near.count("\ufffd")
    if sum(ord(ch) > 127 for ch in near) - bad >= max(2, bad):
        return _mixed_advice(path, block, start, line)
    if guess is not None:
        return ("it looks like text in an 8-bit Latin encoding, such as Windows-1252 (Western European), Windows-1250 "
                "(Central European) or Windows-1254 (Turkish): convert it with iconv -f ENCODING -t utf-8 in.txt > "
                "out.txt, ENCODING being the file's (iconv -l lists them)")
    return "convert it to UTF-8, e.g. with iconv -f ENCODING -t utf-8 in.txt > out.txt"


MIXED = "it is UTF-8 around that byte, so the file mixes encodings"
REMOVES_ALL = "iconv -f utf-8 -t utf-8 -c in.txt > out.txt"  # (which drops every byte that is not UTF-8)
_LISTED_LINES = 5
_BAD_RUN = re.compile("[\udc80-\udcff]+")  # bytes that are not UTF-8, as surrogateescape decodes them
_BAD_LINE = re.compile("^[^\n]*?[\udc80-\udcff]", re.M)  # a line holding some


def _mixed_advice(path: Path, block: bytes, start: int, line: int) -> str:
    """What to do about a UTF-8 file holding bytes that are not: how many, on which lines, and what they read as.
    A cat of files in two encodings holds Windows-1252 letters, which `iconv -c` would silently delete ("crit" for
    "écrit"): those are converted in their own file. The whole file is read again (a pipe's block from start)."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    count, lines, line_count, bad = 0, [], 0, bytearray()
    at_line = 1 if path.is_file() else line
    open_line_bad = False  # whether the line the last chunk ended in holds a bad byte

    def read(text: str) -> None:
        nonlocal count, line_count, at_line, open_line_bad
        found = len(text) - len(_BAD_RUN.sub("", text))  # (at C speed: a 40 MB Latin-1 part took 10 s run by run)
        if found:
            count += found
            first_end = text.find("\n")
            # a line the last chunk ended in, already counted
            line_count += len(_BAD_LINE.findall(text)) - (open_line_bad and bool(
                _BAD_RUN.search(text, 0, first_end if first_end >= 0 else len(text))))
            done, number = 0, at_line
            for run in _BAD_RUN.finditer(text):
                if len(lines) > _LISTED_LINES and len(bad) >= 256:
                    break
                number += text.count("\n", done, run.start())
                done = run.start()
                if not lines or lines[-1] != number:
                    lines.append(number)
                bad.extend(run.group()[:256].encode("utf-8", "surrogateescape"))
        open_line_bad = bool(_BAD_RUN.search(text, text.rfind("\n") + 1)) or (open_line_bad and "\n" not in text)
        at_line += text.count("\n")

    for chunk in (_chunks(path) if path.is_file() else [block[start:]]):
        read(decoder.decode(chunk))
    read(decoder.decode(b"", final=True))  # (a bad byte at the end is held until then)
    shown = ", ".join(f"{number:,}" for number in lines[:_LISTED_LINES]) + (", ..." if len(lines) > _LISTED_LINES
                                                                              else "")
    where = f"{counted(count, 'bad byte')} on " + (f"line {shown}" if line_count == 1 else
                                                     f"{line_count:,} lines ({shown})")
    latin = bytes(bad).decode("cp1252", errors="replace")
    if sum(ch.isalpha() or ch in "‘’“”–—…«»°€" for ch in latin) >= 0.8 * len(latin):
        examples = ", ".join(f"0x{byte:02X} is {bytes([byte]).decode('cp1252', errors='replace')!r}"
                             for byte in list(dict.fromkeys(bad))[:3])
        return (f"{MIXED}: {where}, which read as 8-bit Latin text (in Windows-1252, {examples}): convert the part in "
                f"that encoding before joining the files (iconv -f windows-1252 -t utf-8 part.txt > part-utf8.txt for "
                f"Western European text), or fix those lines; {REMOVES_ALL} would remove the bytes, and those "
                "characters with them")
    return f"{MIXED}: {where}; fix or remove them, or remove every one with {REMOVES_ALL}"


LEGACY_SAMPLE = 4096  # bytes from the first non-UTF-8 byte that the encoding guess reads
MIXED_SPAN = 1 << 20  # and that the count of valid UTF-8 characters after it reads
LATIN = ""  # the "iconv name" of a guess that the text is in one of the 8-bit Latin encodings, unknown which
_PUNCTUATION = ("LEFT", "RIGHT", "EN DASH", "EM DASH", "HORIZONTAL", "MIDDLE DOT", "IDEOGRAPHIC", "FULLWIDTH")
_JAPANESE = ("HIRAGANA", "KATAKANA", "CJK", "CIRCLED", "PARENTHESIZED", "SQUARE", "ROMAN NUMERAL", *_PUNCTUATION)
_KANA = (("HIRAGANA", "KATAKANA"), 0.1)
# The commonest Chinese characters (simplified and traditional): a quarter of running text, and rare in the
# ideographs other scripts' bytes make when read as GB18030 or Big5 (Thai TIS-620 read as GB18030).
_COMMON_HANZI = frozenset("的一是不了在人有我他这個个们們中来來上大为為和国國"
                          "地到以说說时時要就出会會可也你对對生能而子那得于於着著下自之年")
# Legacy encodings a text that is not UTF-8 is often in, tried in this order: (Python codec, iconv name, description,
# the scripts its non-ASCII characters come from, the share of them that one script must reach, which tells the
# double-byte encodings apart (Japanese has kana, Korean is mostly Hangul syllables, where GB2312's Chinese read as
# EUC-KR is part Hangul, part Hanja, and GBK's read as Shift-JIS has half-width katakana), and whether common
# Chinese characters must appear). Windows' supersets (cp932, cp949) decode what their base encodings refuse
# (①, 똠), and iconv's cp932 keeps '\' and '~' where its SHIFT_JIS makes them '¥' and '‾'.
_LEGACY = (
    ("cp932", "cp932", "Japanese Shift-JIS (Windows cp932)", _JAPANESE, _KANA, False),
    ("euc_jp", "euc-jp", "Japanese EUC-JP", _JAPANESE, _KANA, False),
    ("cp949", "cp949", "Korean EUC-KR (Windows cp949)", ("HANGUL", "CJK", *_PUNCTUATION), (("HANGUL SYLLABLE",), 0.8),
     False),
    ("gb18030", "gb18030", "Chinese GB18030 (GBK, GB2312)", ("CJK", *_PUNCTUATION), None, True),
    ("big5", "big5", "Traditional Chinese Big5", ("CJK", *_PUNCTUATION), None, True),
    ("cp1252", LATIN, "8-bit Latin", ("LATIN", "EURO", "DEGREE", "NO-BREAK", "INVERTED", "SECTION", "COPYRIGHT",
                                      *_PUNCTUATION), None, False),
)
LEGACY_MIN_CHARS = 10  # fewer non-ASCII characters than this make no guess (two CJK characters fit every table)
DOUBLE_BYTE_RUN = 2.0  # mean length of the non-ASCII runs a double-byte (CJK) reading must reach: Windows-1252's
# accented letters and curly quotes read as GB18030 make one ideograph each between Latin letters ("It抯")
SINGLE_BYTE_RUN = 1.5  # and the most a Latin reading may have: its accented letters stand among ASCII ones, where
# Cyrillic, Greek, Hebrew or Arabic words, also "Latin" letters in Windows-1252, are runs of them


def _legacy_encoding(sample: bytes) -> Optional[tuple[str, str]]:
    """(iconv name, description) of the legacy encoding that sample (bytes that are not UTF-8) reads as text in,
    judged by its non-ASCII characters' scripts; (LATIN, ...) for some 8-bit Latin encoding; None when none fits
    convincingly. A guess for the error message only: the text is never decoded with it."""
    for codec, iconv_name, description, scripts, dominant, chinese in _LEGACY:
        text = _decodes(sample, codec)
        if text is None:
            continue
        wide = [unicodedata.name(ch, "") for ch in text if ord(ch) > 127]
        if len(wide) < LEGACY_MIN_CHARS or sum(label.startswith(scripts) for label in wide) < 0.9 * len(wide):
            continue
        if dominant and sum(label.startswith(dominant[0]) for label in wide) < dominant[1] * len(wide):
            continue
        runs = len(re.findall(r"[^\x00-\x7f]+", text))
        if len(wide) < DOUBLE_BYTE_RUN * runs if iconv_name != LATIN else len(wide) > SINGLE_BYTE_RUN * runs:
            continue
        if chinese and not _COMMON_HANZI.intersection(text):
            continue
        return iconv_name, description
    return None


def plain_line_ends_command(path: Path) -> str:
    """A command that turns the file's Windows line ends (\\r\\n), and an old Mac's (\\r alone), into plain ones in
    place: Perl's, since dos2unix is often missing and sed -i differs between Linux and macOS. (s/\\r$// left a file
    of lone \\r as it was: Perl reads it as one line.)"""
    return f"perl -pi -e 's/\\r\\n?/\\n/g' {shlex.quote(str(path))}"


def no_byte_order_marks_command(path: Path) -> str:
    """A command that removes the file's byte order marks (U+FEFF) in place, its other characters kept."""
    return f"perl -CSD -pi -e 's/\\x{{FEFF}}//g' {shlex.quote(str(path))}"


def fingerprint(path: Path) -> dict:
    """The file's size, modification time and digest; for a file that starts with a UTF-8 byte order mark, also
    the digest of the rest (text_blake2b), which reading keeps: the text saved again by an editor that adds or drops
    a mark is the same text (same_text)."""
    digest, text_digest = hashlib.blake2b(digest_size=16), None
    for number, block in enumerate(_chunks(path)):
        digest.update(block)
        if number == 0 and block.startswith(codecs.BOM_UTF8):  # (blocks are CHUNK_BYTES long: it is whole there)
            text_digest = hashlib.blake2b(block[len(codecs.BOM_UTF8):], digest_size=16)
        elif text_digest is not None:
            text_digest.update(block)
    stat = path.stat()
    marked = {} if text_digest is None else {"text_blake2b": text_digest.hexdigest()}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": digest.hexdigest(), **marked}


def text_digest(stamp: dict) -> str:
    """The digest of a fingerprint's (or a checkpoint's corpus record's) text, a byte order mark left out."""
    return stamp.get("text_blake2b", stamp.get("blake2b", ""))


def same_text(stamp: dict, other: dict) -> bool:
    """Whether two fingerprints (or the corpus records of checkpoints, which hold one) are of the same text: a file
    touched, copied or moved keeps its text, and so does one saved with a byte order mark added or dropped."""
    return all(stamp.get(key) == other.get(key) for key in ("size", "blake2b")) or \
        text_digest(stamp) == text_digest(other) != ""


def scan(path: Path, what: str = "corpus") -> tuple[int, Vocabulary]:
    """Validate the file and return its length in characters and its vocabulary."""
    check_readable(path, what)
    count = 0
    symbols: set[str] = set()
    for text in _decoded_chunks(path, what):
        count += len(text)
        symbols.update(text)
    if count == 0:
        raise TextgenError(f"{what} file holds no characters: {path}")
    return count, Vocabulary(map(ord, symbols))


def encode_into(path: Path, vocab: Vocabulary, out: np.ndarray, what: str = "corpus",
                progress: Optional[Callable[[int], None]] = None) -> tuple[int, int]:
    """Encode the file into out; characters outside vocab are dropped and counted.

    Returns (ids written, characters dropped)."""
    written = dropped = 0
    for text in _decoded_chunks(path, what):
        kept, unknown = vocab.encode_known(text)
        out[written:written + len(kept)] = kept
        written += len(kept)
        dropped += unknown
        if progress:
            progress(len(text))
    return written, dropped


def encode_text(path: Path, vocab: Vocabulary, size_hint: int = 0, what: str = "text",
                named: Optional[list] = None) -> tuple[np.ndarray, int]:
    """The ids of a text file read against another text's vocabulary, a character it lacks in the Unicode form (NFC
    or NFD) it knows, if any (Vocabulary.in_known_form); characters outside it are dropped and counted.
    size_hint: the file's length in characters (scan()), so that the ids are written into one array.
    named: a list that gets every distinct character dropped, in order of appearance (eval --json gave the first 11
    without saying that the list was cut).

    Returns (ids, characters dropped)."""
    ids = np.empty(size_hint, dtype=vocab.id_dtype)
    written = dropped = 0
    carried = ""
    seen_unknown = set()

    def encode(text: str) -> None:
        nonlocal ids, written, dropped
        known_form, kept, unknown = vocab.encode_in_known_form(text)
        if unknown and named is not None:
            new = [ch for ch in vocab.unknown(known_form) if ch not in seen_unknown]
            named.extend(new)
            seen_unknown.update(new)
        if written + len(kept) > len(ids):  # a conversion to NFD made the text longer
            ids = np.resize(ids, max(2 * len(ids), written + len(kept)))
        ids[written:written + len(kept)] = kept
        written += len(kept)
        dropped += unknown

    for chunk in _decoded_chunks(path, what):
        text = carried + chunk
        cut = _form_boundary(text)  # a letter and its accents are converted together, never split by a chunk
        carried = text[cut:]
        encode(text[:cut])
    encode(carried)
    return ids[:written], dropped


def _form_boundary(text: str) -> int:
    """Where text can be cut so that each part converts to NFC or NFD as the whole would: before its last
    character that starts a sequence of its own (vocab.starts_alone), searched for near its end. Only a text
    without one there (thousands of combining marks in a row) is cut at its end."""
    for index in range(len(text) - 1, max(len(text) - FORM_SEARCH, 0) - 1, -1):
        if text[index] < "\u0300" or starts_alone(text[index]):  # the first test settles Latin text at once
            return index
    return len(text)


def _cached_corpus(path: Path, cache_ids: Path, cache_meta: Path, stamp: dict) -> Optional[Corpus]:
    """The cached corpus if the cache was built from this very file and is whole, else None (it is rebuilt).
    A cache damaged by hand or by a disk must not reach the model: an id past the vocabulary fails deep
    inside TensorFlow, so every id is checked, a pass over memory that costs less than the file's fingerprint."""
    try:
        meta = json.loads(cache_meta.read_text(encoding="utf-8"))
        if not (isinstance(meta, dict) and meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == stamp):
            return None
        vocab = Vocabulary.from_json(meta["vocab"])
        ids = np.load(cache_ids, mmap_mode="r")
        whole = ids.ndim == 1 and len(ids) == meta["length"] and ids.dtype == vocab.id_dtype
        if whole and len(ids) and int(ids.max()) < len(vocab):
            return Corpus(path, ids, vocab, stamp)
    except OSError as error:
        if error.errno == errno.ENOMEM:  # the cache is whole: a rebuild would fail the same way, and take minutes
            raise no_memory_to_map(cache_ids, cache_ids.stat().st_size) from None
    except (ValueError, KeyError, TypeError, OverflowError):
        pass
    return None


def no_memory_to_map(cache_ids: Path, size: int) -> TextgenError:
    """The error for a corpus cache of size bytes that could not be memory-mapped (ENOMEM): a process's address
    space limit (ulimit -v), which a disk's advice would not help."""
    from textgen.address_space import address_space_limit, limit_text

    limit = address_space_limit()
    where = f"{limit_text(limit)}: raise the limit" if limit is not None else "free some memory"
    return TextgenError(f"not enough memory to map the corpus's cache ({cache_ids}, {size / 1e6:,.0f} MB); {where}, "
                        "or train on a smaller text")


def load_corpus(path: Path, cache_dir: Path, progress: Optional[Callable[[int, int], None]] = None,
                stamp: Optional[dict] = None, new_cache_dir: Optional[Path] = None) -> Corpus:
    """Return the corpus ids, memory-mapped from cache_dir/corpus.npy, rebuilding the cache when the file changed
    (in new_cache_dir if given: an --overwrite run keeps the earlier run's cache until it saves; CACHE_FILES).

    progress(done, total) is called while a cache is built (characters encoded so far, total);
    stamp is the file's fingerprint() if the caller already computed it (it reads the whole file)."""
    path = Path(path)
    check_readable(path)
    stamp = stamp or fingerprint(path)
    if (cached := _cached_corpus(path, *(cache_dir / name for name in CACHE_FILES), stamp)) is not None:
        return cached
    cache_dir = new_cache_dir or cache_dir
    cache_ids, cache_meta = (cache_dir / name for name in CACHE_FILES)
    count, vocab = scan(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = 0

    def advance(chars: int) -> None:
        nonlocal done
        done += chars
        if progress:
            progress(done, count)

    def encode(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.id_dtype, shape=(count,))
        _reserve(tmp)
        encode_into(path, vocab, out, progress=advance)
        out.flush()
        del out

    try:
        atomic_write(cache_ids, encode)
        atomic_write_json(cache_meta, {"version": CACHE_VERSION, "source": str(path.resolve()),
                                       "fingerprint": stamp, "length": count, "vocab": vocab.to_json()})
    except OSError as error:
        if error.filename == str(path):  # the corpus itself could not be read
            raise
        if error.errno == errno.ENOMEM:
            raise no_memory_to_map(cache_ids, count * np.dtype(vocab.id_dtype).itemsize) from None
        reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise TextgenError(f"could not write the corpus's cache in {cache_dir} ({reason}); free some space, or "
                           "choose another --checkpoint-dir") from None
    return Corpus(path, np.load(cache_ids, mmap_mode="r"), vocab, stamp)


def _reserve(path: Path) -> None:
    """Allocate the whole of a file just sized (sparse) for writing through a memory map: a page that a full disk
    cannot hold kills the process with SIGBUS when written through the map, where this raises an OSError (ENOSPC)."""
    if hasattr(os, "posix_fallocate"):  # (not on macOS, whose file systems are seldom full this way)
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as error:  # a file system or C library that cannot reserve: written as before
                if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise


def read_text(path: Path, what: str = "text", max_chars: Optional[int] = None) -> str:
    """A whole (small) UTF-8 file, validated like a corpus; one of more than max_chars characters is refused as soon
    as they are read (an endless pipe, such as `yes`, was read until memory ran out)."""
    path = Path(path)
    check_readable(path, what, read_once=True)
    pieces, count = [], 0
    for piece in _decoded_chunks(path, what):
        pieces.append(piece)
        count += len(piece)
        if max_chars is not None and count > max_chars:
            raise TextgenError(f"{what} file {path} holds more than {max_chars:,} characters; give a shorter "
                               f"{what} (its end is what the continuation follows)")
    text = "".join(pieces)
    if not text:
        raise TextgenError(f"{what} file is empty: {path} (give a UTF-8 text file with some text in it)")
    return text
