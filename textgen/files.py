"""Writing files so that a crash or a full disk never leaves half a file or clobbers the old one."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

from textgen.errors import TextgenError


def too_long_for_a_path(path: Path) -> bool:
    """Whether the system refuses path as too long (a name over 255 bytes, or the whole over its limit): every
    lookup of it raises an OSError (ENAMETOOLONG) instead of answering whether it exists."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ENAMETOOLONG
    return False


def check_path_length(path: Path, option: str, advice: str) -> None:
    """Refuse, in one line naming the option as the command line does, a path the system finds too long."""
    if too_long_for_a_path(path):
        raise TextgenError(f"{option}: too long for a path ({len(str(path)):,} characters); {advice}")


def links_to_itself(path: Path) -> bool:
    """Whether path is a symbolic link that leads back to itself (a loop), which no file can be written through."""
    try:
        path.resolve(strict=True)
    except (RuntimeError, OSError) as error:  # a loop: RuntimeError in Python 3.11, OSError (ELOOP) later
        return isinstance(error, RuntimeError) or error.errno == errno.ELOOP
    return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write path through write(tmp_path), fsync it, then rename it into place.

    Until the rename, path keeps its old content (or stays absent); a failure removes the temporary file."""
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename in (str(tmp), tmp):  # named as the user knows it
            error.filename, error.filename2 = str(path), None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, ensure_ascii=False))
