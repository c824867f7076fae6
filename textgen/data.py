"""The default corpus, built from text every Python install carries (no download).

pydoc_data.topics holds the language-reference topics that `help()` shows: about half a
megabyte of English prose and Python code, ASCII, public with Python's documentation."""

from __future__ import annotations

import sys
from pathlib import Path

from textgen.files import atomic_write_text

DEFAULT_CORPUS = Path("data") / "pydoc_topics.txt"


def default_corpus_text() -> str:
    from pydoc_data.topics import topics

    return "".join(f"{topics[name].strip()}\n\n\n" for name in sorted(topics))


def build_default_corpus(path: Path = DEFAULT_CORPUS) -> Path:
    """Write the default corpus to path (idempotent) and return the path."""
    path = Path(path)
    text = default_corpus_text()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


if __name__ == "__main__":
    target = build_default_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS)
    print(f"wrote {target} ({target.stat().st_size:,} bytes)", file=sys.stderr)
