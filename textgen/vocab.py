"""Character vocabulary: the sorted set of Unicode code points of a corpus."""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Iterable, Optional

import numpy as np


def joins_neighbours(ch: str) -> bool:
    """Whether a terminal draws ch into the character before it (a combining mark or vowel sign, a variation
    selector, a skin tone), joins it with its neighbours (the zero-width joiner and non-joiner) or pairs it with
    the next (a regional indicator: two make a flag)."""
    code = ord(ch)
    return (unicodedata.category(ch).startswith("M") or code in (0x200C, 0x200D) or 0x1F3FB <= code <= 0x1F3FF
            or 0x1F1E6 <= code <= 0x1F1FF)


def escaped(ch: str) -> str:
    """ch as a one-line message shows it: control characters escaped, and the characters that would join their
    neighbours too (joins_neighbours), which would otherwise show as nothing of their own or as another symbol."""
    return ch if ch.isprintable() and not joins_neighbours(ch) else ascii(ch)[1:-1]


def quoted(chars) -> str:
    """Characters for a message, each quoted as Python would, a joining one escaped and named:
    'x' '"' '\\u0301' (combining acute accent)."""
    return " ".join(repr(ch) if not joins_neighbours(ch) else f"'{escaped(ch)}' ({unicodedata.name(ch, '?').lower()})"
                    for ch in chars)


def quoted_first(chars, shown: int = 10) -> str:
    """quoted() of the first shown characters, and ", and others" when there are more (a list of shown + 1 says so)."""
    return quoted(chars[:shown]) + (", and others" if len(chars) > shown else "")


def shown_chars(chars: str, shown: int = 40) -> str:
    """A run of characters for a one-line message, quoted, each escaped as escaped() does; a large vocabulary
    (CJK) can differ by thousands, so only the first ones are shown."""
    text = "'" + "".join("\\" + ch if ch in "'\\" else escaped(ch) for ch in chars[:shown]) + "'"
    return text if len(chars) <= shown else f"{text} and {len(chars) - shown:,} more"


def starts_alone(ch: str) -> bool:
    """Whether nothing before ch can join it under NFC or NFD: a character that is not a combining mark, does not
    decompose into one first, and is never the second of a composed pair (which some vowel signs and Hangul jamo
    are). Every character below U+0300 is one."""
    return not (unicodedata.combining(ch) or unicodedata.combining(unicodedata.normalize("NFD", ch)[0])
                or ch in composition_seconds())


@functools.cache
def composition_seconds() -> frozenset:
    """The characters that NFC can join to the one before them: the second of every two-character canonical
    decomposition, and the Hangul vowel and final jamo (composed by rule, not listed)."""
    seconds = {chr(code) for code in [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]}
    for code in range(sys.maxunicode + 1):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


# Typographic quotes and dashes, which NFKC keeps, as typed on a keyboard: a corpus of curly quotes and a prime of
# straight ones ("Don't" for "Don’t")
_TYPED_FORM = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                             "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                             "\u2013": "-", "\u2014": "-"})


def compatibility_form(ch: str) -> str:
    """What ch is typed as, whatever its width or typography: NFKC ('，' -> ','), and curly quotes and dashes as
    the straight ones."""
    return unicodedata.normalize("NFKC", ch).translate(_TYPED_FORM)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _convertible(code_points: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """The places in unknown (of code_points, a text's) whose sequence NFC or NFD could change: not those of a
    character both forms keep that starts a sequence alone, with the next one starting its own (an emoji, a CJK
    character: most of a text in another script), told apart by their distinct characters rather than one by one."""
    following = np.minimum(unknown + 1, len(code_points) - 1)
    distinct, inverse = np.unique(np.concatenate([code_points[unknown], code_points[following]]), return_inverse=True)
    characters = [chr(int(code)) for code in distinct]
    alone = np.array([starts_alone(ch) for ch in characters], bool)[inverse]
    stable = np.array([unicodedata.is_normalized("NFC", ch) and unicodedata.is_normalized("NFD", ch)
                       for ch in characters], bool)[inverse]
    count = len(unknown)
    next_alone = alone[count:] | (unknown == len(code_points) - 1)
    return unknown[~(stable[:count] & alone[:count] & next_alone)]


class Vocabulary:
    def __init__(self, code_points: Iterable[int]):
        self.code_points = np.array(sorted(set(int(c) for c in code_points)), dtype=np.uint32)
        self.chars = "".join(map(chr, self.code_points))
        self._index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        return cls(map(ord, set(text)))

    def __len__(self) -> int:
        return len(self.code_points)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} characters: {self.preview(40)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and np.array_equal(self.code_points, other.code_points)

    def __contains__(self, ch: str) -> bool:
        return ch in self._index

    @functools.cached_property
    def by_compatibility_form(self) -> dict[str, str]:
        """Each compatibility_form -> the characters of the vocabulary with it, in order ('，' and ',' share ','; '‘'
        and '’' share "'"): made once, since reading another form of an unknown character looks it up for each one."""
        forms: dict = {}
        for ch in self.chars:
            forms[compatibility_form(ch)] = forms.get(compatibility_form(ch), "") + ch
        return forms

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        for dtype in (np.uint8, np.uint16):
            if len(self) <= np.iinfo(dtype).max + 1:
                return np.dtype(dtype)
        return np.dtype(np.uint32)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text outside the vocabulary, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self._index))

    @functools.cached_property
    def unicode_form(self) -> Optional[str]:
        """The Unicode form the corpus was written in, where the vocabulary shows it: "NFD" if no character
        changes under NFD and some are marks (or vowel signs, Hangul jamo) that NFC would join to the one before,
        "NFC" if no character changes under NFC and some would be decomposed by NFD, else None (plain text, both
        kinds, or characters such as the ohm sign that both forms replace)."""
        def stable(form: str) -> bool:
            return all(unicodedata.normalize(form, ch) == ch for ch in self.chars)

        joining = any(not starts_alone(ch) for ch in self.chars)
        composed = any(unicodedata.normalize("NFD", ch) != ch for ch in self.chars)
        if joining and not composed and stable("NFD"):
            return "NFD"
        return "NFC" if composed and not joining and stable("NFC") else None

    def decomposed(self) -> set[str]:
        """The characters of the vocabulary's NFD form: equal for two vocabularies of one text in either form."""
        return set(unicodedata.normalize("NFD", self.chars))

    def in_known_form(self, text: str) -> str:
        """text with each sequence that holds a character outside the vocabulary (a letter and the marks after it) in
        its NFC or NFD form where that leaves fewer characters unknown, or as few and more known: an accented letter
        typed precomposed (é) where the corpus has e + accent, or the other way round. On a decomposed corpus without
        ñ, señor becomes sen + tilde + or, so that only the tilde is unknown; a character both forms would replace by
        an unknown one (the ohm sign Ω) is kept as it is. The other sequences stay as typed: a corpus that writes José
        precomposed and naïve decomposed reads both so (a whole prime converted at once decomposed José too)."""
        return self._known_form(text)[0]

    def encode_in_known_form(self, text: str) -> tuple[str, np.ndarray, int]:
        """in_known_form(text), and encode_known() of it."""
        return self._known_form(text)

    def _known_form(self, text: str) -> tuple[str, np.ndarray, int]:
        code_points = _code_points(text)
        ids, known = self._lookup(code_points)
        unknown = np.flatnonzero(~known)
        if not len(unknown) or unicodedata.is_normalized("NFC", text) and unicodedata.is_normalized("NFD", text):
            return text, ids[known].astype(self.id_dtype), len(unknown)  # (one emoji in ASCII text: as it is)
        pieces, end, chosen = [], 0, {}
        for index in _convertible(code_points, unknown):
            if index < end:  # in the sequence before
                continue
            start = index
            while start > end and not starts_alone(text[start]):
                start -= 1
            pieces.append(text[end:start])
            end = index + 1
            while end < len(text) and not starts_alone(text[end]):
                end += 1
            sequence = text[start:end]
            if sequence not in chosen:  # (a text in another script repeats a few thousand of them)
                chosen[sequence] = self._best_form(sequence)
            pieces.append(chosen[sequence])
        pieces.append(text[end:])
        converted = "".join(pieces)
        return converted, *self.encode_known(converted)

    def _best_form(self, text: str) -> str:
        """text, or its NFC or NFD form if that leaves fewer characters unknown, then more known; ties keep text."""
        def rank(candidate):
            ids, dropped = self.encode_known(candidate)
            return dropped, -len(ids)

        return min([text, unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)], key=rank)

    def _lookup(self, code_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per character (code point), its place in the vocabulary and whether the vocabulary has it."""
        ids = np.searchsorted(self.code_points, code_points)
        return ids, (ids < len(self)) & (self.code_points[np.minimum(ids, len(self) - 1)] == code_points)

    def encode_known(self, text: str) -> tuple[np.ndarray, int]:
        """Ids of the characters of text that are in the vocabulary, and how many others were dropped."""
        ids, known = self._lookup(_code_points(text))
        kept = ids[known].astype(self.id_dtype)
        return kept, len(ids) - len(kept)

    def encode(self, text: str) -> np.ndarray:
        """Ids of text; every character must be in the vocabulary (check with unknown())."""
        ids, dropped = self.encode_known(text)
        if dropped:
            raise KeyError(f"characters outside the vocabulary: {self.unknown(text)!r}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).ravel())

    def to_json(self) -> list[int]:
        return [int(c) for c in self.code_points]

    @classmethod
    def from_json(cls, code_points: list[int]) -> "Vocabulary":
        return cls(code_points)

    def preview(self, limit: int = 80) -> str:
        """Up to limit symbols, with control characters escaped so the line stays one line, and combining marks
        escaped so that each shows as a symbol of its own instead of joining the one before it. A larger vocabulary
        shows its first half of them, then symbols taken evenly from the rest: a Chinese text's 1,000 symbols sort
        its ASCII first, which alone filled the preview."""
        if len(self) <= limit:
            return "".join(map(escaped, self.chars))
        head, rest = self.chars[:limit // 2], self.chars[limit // 2:]
        count = limit - len(head)  # each taken from inside a stretch of the rest: a "..." on either side leaves some
        spread = [rest[(index + 1) * len(rest) // (count + 1)] for index in range(count)]
        return "".join(map(escaped, head)) + " ... " + "".join(map(escaped, spread)) + \
            (" ..." if spread[-1] != rest[-1] else "")
