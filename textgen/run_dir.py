"""A training's run directory: whether its checkpoints allow the training asked for (resume, overwrite, another
text's run of the same name), and the lock held on it while training, which leaves nothing behind a failure
before the first save."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
from pathlib import Path
from typing import Optional

from textgen import checkpoint
from textgen.errors import RunBusy, TextgenError
from textgen.runs import probable_run


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, corpus_path: Optional[Path] = None,
                  named: bool = True) -> None:
    """Refuse a training the run's checkpoints do not allow. corpus_path: the text it is to train on; named: whether
    the user named the run (else it was named after corpus_path, which another file's name may share)."""
    exists = checkpoint.has_checkpoint(run_dir)
    if resume and overwrite:
        raise TextgenError("--resume and --overwrite contradict each other; choose one")
    if resume and not exists:
        if (pid := checkpoint.training_pid(run_dir)) is not None:  # (then the lock refused it, naming no save)
            raise RunBusy(f"nothing to resume yet: a training (pid {pid}) has run {run_dir.name!r} and saves its "
                          "first checkpoint at the end of its first epoch; resume after it stops")
        if close := probable_run(run_dir.parent, run_dir.name):  # a typo
            raise TextgenError(f"nothing to resume: no checkpoint in {run_dir}; to resume run {close!r}, give "
                               f"--run {shlex.quote(close)}")
        raise TextgenError(f"nothing to resume: no checkpoint in {run_dir} (train without --resume to start)")
    if resume and not checkpoint.has_checkpoint(run_dir, ("last",)):  # best alone does not hold where training was
        raise TextgenError(f"cannot resume run {run_dir.name!r}: it has no last.json, only its best checkpoint; "
                           "sample from it as it is, or train a new run with --run NAME")
    other = other_corpus(run_dir, corpus_path) if exists and corpus_path is not None else None
    go_on = (f"add --run NAME to train {corpus_path.name} apart, or --run {run_dir.name} --resume to go on training "
             f"that run on it (its best checkpoint then starts over on the new text)") if other and not named else ""
    if exists and not (resume or overwrite):
        if go_on:  # the run of another file that names the same run: --resume alone is refused (below)
            raise TextgenError(f"run {run_dir.name!r}, trained on {other}, already has checkpoints in {run_dir}: "
                               f"{go_on}; --overwrite replaces it")
        trained = f", trained on {other}," if other else ""
        raise TextgenError(f"run {run_dir.name!r}{trained} already has checkpoints in {run_dir}: pass --resume to "
                           "continue it, --overwrite to replace it, or --run NAME to start another run")
    if resume and go_on:  # notes.txt resuming the run of notes.md: its best checkpoint would go
        raise TextgenError(f"run {run_dir.name!r} was trained on {other}, not {corpus_path.name}: the run takes its "
                           f"name from the file's; {go_on}")


def other_corpus(run_dir: Path, corpus_path: Path) -> Optional[str]:
    """The file the run was trained on when its name is not corpus_path's (a file moved keeps its name), else
    None; None too when the run's metadata cannot tell (the checks that read it say why)."""
    for kind in ("last", "best"):  # the text it is being trained on now
        try:
            meta = checkpoint.read_meta(run_dir, kind)
        except (TextgenError, OSError):
            continue
        if meta is not None:
            trained_on = meta.corpus.get("path")  # resolved when saved: a link's target
            same = not trained_on or Path(trained_on).name in (Path(corpus_path).name, Path(corpus_path).resolve().name)
            return None if same else trained_on
    return None


# Where an --overwrite run on another text encodes its corpus: the earlier run's cache stays until the first save
STAGED_CACHE = ".corpus-next"


@contextlib.contextmanager
def locked_run_dir(run_dir: Path):
    """Hold the run's lock, creating the directory if need be; on a failure before the first save, remove
    what this training created, so that no empty run is left for the listing to call unfinished or damaged.
    Only the lock holder cleans up: two trainings started at once into a new run both find it absent."""
    if run_dir.exists() and not run_dir.is_dir():  # else "cannot write ... (File exists)"
        raise TextgenError(f"{run_dir} is a file, not a run's directory; choose another name with --run NAME")
    created = [path for path in (run_dir.parent, run_dir) if not path.exists()]
    with contextlib.ExitStack() as held:
        probe = run_dir / ".write-test"  # the lock's file may be left from a killed run, writable in a read-only folder
        try:
            held.enter_context(checkpoint.RunLock(run_dir))
            probe.write_bytes(b"")  # only the lock holder gets here, so no other training shares the probe
            probe.unlink()
        except OSError as error:
            held.close()
            _remove_created(run_dir, created)  # a folder holding only .lock read as an unfinished run
            if error.errno in checkpoint.NO_LOCKS:  # a cluster's file system mounted without locks (Lustre's
                # noflock): "cannot write to the checkpoint directory (Function not implemented)"
                with contextlib.suppress(OSError):
                    if (lock := run_dir / checkpoint.LOCK_FILE).stat().st_size == 0:  # this refusal's own
                        lock.unlink()
                raise TextgenError(f"cannot lock {run_dir / checkpoint.LOCK_FILE} ({error.strerror}): its file "
                                   "system does not lock files, which keeps two trainings of a run apart; use a "
                                   "--checkpoint-dir on a local disk, or a file system mounted with locks (Lustre: "
                                   "flock)") from None
            if error.errno == errno.ENOSPC:  # not "choose a writable --checkpoint-dir"
                raise TextgenError(f"no space left for the run {run_dir}; free some space or choose another "
                                   "--checkpoint-dir") from None
            if error.errno == errno.EROFS:  # no chmod helps there
                copy = "" if run_dir in created else "copy the run to a writable place and give that " \
                                                     "--checkpoint-dir, or "
                raise TextgenError(f"cannot write in {run_dir}: its file system is read-only; {copy}choose another "
                                   "--checkpoint-dir") from None
            if run_dir not in created and os.access(run_dir.parent, os.W_OK) and error.errno == errno.EACCES:
                raise TextgenError(f"cannot write in the run's folder {run_dir} ({error.strerror}): a copy of "
                                   f"another user's run keeps its modes; make it yours with chmod -R u+w {run_dir}, "
                                   "or choose another --run") from None
            raise TextgenError(f"cannot write to the checkpoint directory {run_dir} ({error.strerror}); "
                               "choose a writable --checkpoint-dir") from None
        shutil.rmtree(run_dir / STAGED_CACHE, ignore_errors=True)  # left by a training killed before its first save
        try:
            yield
        except BaseException:
            shutil.rmtree(run_dir / STAGED_CACHE, ignore_errors=True)  # an --overwrite run's, never saved
            _remove_created(run_dir, created)
            raise


def _remove_created(run_dir: Path, created: list) -> None:
    """The run's folder (and the directory of runs), if this training created them and nothing was saved."""
    if run_dir in created and not checkpoint.has_checkpoint(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)  # the lock's file with it
        if run_dir.parent in created:
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()  # only if empty
