"""Character vocabulary: the sorted set of Unicode code points of a corpus."""

from __future__ import annotations

import unicodedata
from typing import Iterable

import numpy as np


def escaped(ch: str) -> str:
    """ch as a one-line message shows it: control characters escaped, and combining marks too, which would
    otherwise join the character before them (a quote) and show as nothing of their own."""
    return ch if ch.isprintable() and not unicodedata.combining(ch) else ascii(ch)[1:-1]


def quoted(chars) -> str:
    """Characters for a message, each quoted as Python would, a combining mark escaped: 'x' '"' '\\u0301'."""
    return " ".join(repr(ch) if not unicodedata.combining(ch) else f"'{escaped(ch)}'" for ch in chars)


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

    def in_known_form(self, text: str) -> str:
        """text, or its NFC or NFD form if that has fewer characters outside the vocabulary: an accented letter
        typed precomposed (é) where the corpus has e + accent, or the other way round."""
        return self._known_form(text)[0]

    def encode_in_known_form(self, text: str) -> tuple[np.ndarray, int]:
        """encode_known() of in_known_form(text)."""
        return self._known_form(text)[1:]

    def _known_form(self, text: str) -> tuple[str, np.ndarray, int]:
        best = (text, *self.encode_known(text))
        for form in ("NFC", "NFD") if best[2] else ():
            converted = unicodedata.normalize(form, text)
            if converted == text:  # already in that form: one emoji in ASCII text need not be encoded thrice
                continue
            if (candidate := (converted, *self.encode_known(converted)))[2] < best[2]:
                best = candidate
        return best

    def encode_known(self, text: str) -> tuple[np.ndarray, int]:
        """Ids of the characters of text that are in the vocabulary, and how many others were dropped."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self.code_points, code_points)
        known = (ids < len(self)) & (self.code_points[np.minimum(ids, len(self) - 1)] == code_points)
        kept = ids[known].astype(self.id_dtype)
        return kept, len(code_points) - len(kept)

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
        """The first symbols, with control characters escaped so the line stays one line, and combining marks
        escaped so that each shows as a symbol of its own instead of joining the one before it."""
        shown = "".join(map(escaped, self.chars[:limit]))
        return shown + (" ..." if len(self) > limit else "")
