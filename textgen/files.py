"""Writing files so that a crash or a full disk never leaves half a file or clobbers the old one, and the sample
command's --output file checked before any text is generated."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import Callable

from textgen.errors import TextgenError


def expand_user(path: str | os.PathLike) -> str:
    """path with a leading ~ (or ~user) read as that home directory, as a shell reads it: left as it is when there
    is no such user (Path.expanduser raised RuntimeError)."""
    return os.path.expanduser(os.fspath(path))


def has_file_extension(name: str) -> bool:
    """Whether name ends as a file's name does (notes.txt, data.json): words given for a path do not."""
    return re.search(r"\.\w{1,5}$", name) is not None


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
    atomic_write_together([(path, write)])


def atomic_write_together(writes: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """atomic_write for files that must change together (a run's last.json and best.json): every one is written to
    its temporary file and fsynced before any is renamed into place, so that a failure while writing (a disk that
    another program fills meanwhile) leaves them all as they were. Only a failing rename or directory fsync can
    leave some replaced."""
    staged: list[tuple[Path, Path]] = []
    current = None  # the file (or directory) being written when a failure comes
    try:
        for path, write in writes:
            current = path = Path(path)
            tmp = path.with_name(".tmp-" + path.name)
            staged.append((tmp, path))
            _write_synced(tmp, path, write)
        for tmp, current in staged:
            os.replace(tmp, current)
        for current in dict.fromkeys(path.parent for _, path in staged):
            _fsync_dir(current)
    except BaseException as error:
        named = None  # the file as the user knows it, for an error that names a temporary file or none
        for tmp, path in staged:
            tmp.unlink(missing_ok=True)
            if isinstance(error, OSError) and error.filename in (str(tmp), tmp):
                named = path
        if isinstance(error, OSError) and error.filename is None:  # a write, not an open: "cannot write None"
            named = current
        if named is None or error.errno is None:
            raise
        # A new error of the same type: one whose filename2 is set to None reads "... -> None"
        raise OSError(error.errno, error.strerror, str(named)).with_traceback(error.__traceback__) from None


def _write_synced(tmp: Path, path: Path, write: Callable[[Path], None]) -> None:
    """Write tmp through write(tmp) with path's mode (when path exists), and fsync it."""
    mode = None
    with contextlib.suppress(OSError):  # the file it replaces keeps its mode (a private 600 became 644), from the
        # first byte on (write() keeps an existing file's mode), writable by its owner until it is complete
        mode = os.stat(path).st_mode & 0o7777
        os.close(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600))
        os.chmod(tmp, mode | 0o600)
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    if mode is not None:
        os.chmod(tmp, mode)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text_writer(text))


def atomic_write_json(path: Path, payload) -> None:
    atomic_write(path, json_writer(payload))


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def json_writer(payload) -> Callable[[Path], None]:
    """What atomic_write_json writes, for atomic_write_together."""
    return text_writer(json.dumps(payload, indent=1, ensure_ascii=False))


# The sample command's --output file.

def check_output(path: Path, overwrite: bool = False, example: str = "samples.txt") -> None:
    """Refuse an --output that cannot become a file, or that would replace a file's text without overwrite (an
    empty one, as mktemp makes, holds nothing to lose), before any text is generated."""
    path = Path(path)
    check_path_length(path, "--output", f"give a file name, such as {example}")
    if links_to_itself(path):  # (any other link is written through, to the file it names)
        raise TextgenError(f"--output {path} is a symbolic link that leads back to itself; give a file name")
    if path.name in ("", "..") or path.is_dir():  # "", ".", "/", "..", or an existing directory
        raise TextgenError(f"--output {str(path)!r} is a directory; give a file name, such as {example}")
    if not (written := written_path(path)).parent.is_dir():  # (a dangling link's file: its directory too)
        raise TextgenError(f"cannot write {path}: directory {written.parent} does not exist")
    # Said after the whole text was generated (9 s for 100,000 characters); only where a file is renamed into
    # place: a device, a pipe or a descriptor (/dev/null, /dev/stdout on a terminal) is written where it is.
    renamed = not names_a_descriptor(path) and (written.is_file() or not written.exists())
    if renamed and not os.access(written.parent, os.W_OK):
        raise TextgenError(f"cannot write {path}: you may not write in directory {written.parent}; give a file "
                           "elsewhere")
    if not overwrite and holds_text(path):  # (a run's corpus, given by mistake)
        raise TextgenError(f"--output {path} already exists; pass --overwrite to replace it, or choose another file")


def written_path(path: Path) -> Path:
    """The file --output path names: through a link (a dangling one too) to its file, so that the user keeps the
    link (replaced by a file, it was lost)."""
    return Path(os.path.realpath(path))


def holds_text(path: Path) -> bool:
    """Whether --output path is a file with something in it to lose (an empty one, as mktemp makes, has not; nor
    has a descriptor of this process, /dev/stdout for one, which the text goes after)."""
    return path.is_file() and path.stat().st_size > 0 and not names_a_descriptor(path)


def names_a_descriptor(path: Path) -> bool:
    """Whether --output path is one of this process's open descriptors (/dev/stdout, /dev/stderr, /dev/fd/N,
    /proc/self/fd/N): the file, pipe or terminal the shell opened there, written after what it holds. A rename
    replaced the file the shell redirected into, losing what the script wrote there before and after."""
    return re.fullmatch(rf"/dev/(stdout|stderr|fd/\d+)|/proc/(self|{os.getpid()})/fd/\d+", str(path)) is not None


def write_output(path: Path, text: str, overwrite: bool = False) -> None:
    """Write the text to path atomically, so a failure never leaves half a file or clobbers the old one; into a
    device or pipe that exists (/dev/stdout, a FIFO) directly, which an atomic rename would replace by a file."""
    check_output(path, overwrite)
    descriptor = names_a_descriptor(path)
    path = path if descriptor else written_path(path)
    try:
        if descriptor or (path.exists() and not path.is_file()):  # after what a descriptor holds
            with open(path, "a" if descriptor else "w", encoding="utf-8") as handle:
                handle.write(text)
        else:
            atomic_write_text(path, text)
    except OSError as error:
        raise TextgenError(f"cannot write {path} ({error.strerror}); choose another --output") from None
