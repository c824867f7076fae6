import errno
import os

import pytest

from textgen.files import atomic_write, atomic_write_together, text_writer


def disk_full(tmp):
    """What a write() into a full disk raises: an OSError with no file name (the open had worked)."""
    tmp.write_text("half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_fails_keeps_the_old_file_and_names_it(tmp_path):
    """A full disk while matplotlib wrote curve.png said "cannot write None"."""
    path = tmp_path / "curve.png"
    path.write_text("old")
    with pytest.raises(OSError) as failed:
        atomic_write(path, disk_full)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(path))
    assert str(failed.value) == f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: '{path}'"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]

    def refused(tmp):  # an error naming the temporary file and another, as a failed rename does
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(tmp), None, str(path))
    with pytest.raises(PermissionError) as failed:
        atomic_write(path, refused)
    assert str(failed.value) == f"[Errno {errno.EPERM}] {os.strerror(errno.EPERM)}: '{path}'"  # not "... -> None"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_files_written_together_all_keep_their_old_text_when_one_cannot_be_written(tmp_path):
    """A disk filled between last.json and best.json left last.json new and best.json old: two checkpoints."""
    last, best = tmp_path / "last.json", tmp_path / "best.json"
    last.write_text("old last")
    best.write_text("old best")
    with pytest.raises(OSError) as failed:
        atomic_write_together([(last, text_writer("new last")), (best, disk_full)])
    assert failed.value.filename == str(best)
    assert (last.read_text(), best.read_text()) == ("old last", "old best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "last.json"]
    atomic_write_together([(last, text_writer("new last")), (best, text_writer("new best"))])
    assert (last.read_text(), best.read_text()) == ("new last", "new best")
