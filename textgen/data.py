"""The default corpus, built from text every Python install carries (no download).

pydoc_data.topics holds the language-reference topics that `help()` shows: about half a
megabyte of English prose and Python code, ASCII, public with Python's documentation."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from textgen.files import atomic_write_text

DEFAULT_CORPUS = Path("data") / "pydoc_topics.txt"


def default_corpus_text() -> str:
    from pydoc_data.topics import topics

    return "".join(f"{topics[name].strip()}\n\n\n" for name in sorted(topics))


def build_default_corpus(path: Path = DEFAULT_CORPUS, overwrite: bool = False, text: str | None = None) -> Path:
    """Write the default corpus (text, if the caller has it already) to path and return the path; a file already
    there is kept (it may be the user's) unless overwrite."""
    path = Path(path)
    if overwrite or not path.exists():
        created = [parent for parent in reversed(path.parents) if not parent.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_text(path, default_corpus_text() if text is None else text)
        except BaseException:  # (a full disk left an empty data/ behind)
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textgen.data",
                                     description="Write the built-in corpus (Python's documentation topics, from the "
                                                 "Python that runs this) to PATH.")
    parser.add_argument("path", nargs="?", default=str(DEFAULT_CORPUS), metavar="PATH",
                        help=f"the file to write (default: {DEFAULT_CORPUS})")
    parser.add_argument("--overwrite", action="store_true", help="replace PATH if it holds something else")
    options = parser.parse_args(argv)
    path = Path(options.path)
    if path.is_dir():
        print(f"error: {path} is a directory; give a file path, such as {path / DEFAULT_CORPUS.name}", file=sys.stderr)
        return 1
    text = default_corpus_text()
    if path.exists() and not options.overwrite and path.read_bytes() != text.encode("utf-8"):
        print(f"error: {path} already exists and is not the built-in corpus; pass --overwrite to replace it, or "
              "give another path", file=sys.stderr)
        return 1
    build_default_corpus(path, overwrite=True, text=text)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
