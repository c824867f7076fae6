"""Self-describing, atomically written checkpoints, and the lock that guards a run directory.

A run directory holds:
  last.json / best.json         metadata; renaming one into place is the commit point of a save
  ckpt-<run>-<step>.weights.h5  model weights (Keras format), named by the metadata with a sha256
  ckpt-<run>-<step>.state.npz   what resuming needs: optimizer slots, dropout RNG, LSTM state
  corpus.npy / corpus.json      the encoded corpus cache
Files are written to a temporary name, fsync'ed and renamed, and the metadata is renamed last,
so at every instant last.json and best.json each name complete files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from textgen import __version__
from textgen.config import ModelConfig, TrainConfig
from textgen.corpus import CACHE_FILES, text_digest
from textgen.errors import RunBusy, TextgenError, counted
from textgen.files import atomic_write, atomic_write_together, json_writer
from textgen.vocab import Vocabulary

FORMAT = "textgen-checkpoint"
# 2: options and records that a textgen reading format 1 misreads rather than refuses: --epochs 0 (until
# --max-minutes), which it called damage and advised deleting the run over; --val-max-chars, which it dropped on
# resuming, holding out another slice (characters trained on among them); started_from; the history's text. A textgen
# reading format 1 refuses a format-2 run as written by a newer textgen. This one reads both.
FORMAT_VERSION = 2
KINDS = ("best", "last")
LOCK_FILE = ".lock"
HISTORY_FILE, CURVE_FILE = "history.csv", "curve.png"  # rewritten after every epoch (report.py)
REPORT_FILES = (HISTORY_FILE, CURVE_FILE)
CHECKPOINT_PREFIXES = ("ckpt-", ".tmp-ckpt-")  # a save's weights and state, and the save in progress
logger = logging.getLogger("textgen")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def text_of(corpus: dict) -> str:
    """A history row's "text": the start of its corpus record's text digest, what tells the texts of a run resumed on
    another one apart (report.spans_of)."""
    return text_digest(corpus)[:16]


@dataclass
class RunState:
    """How far a run has got: what the training loop advances and every checkpoint records."""

    run_id: str  # names this run's checkpoint files (a new id per fresh run)
    epoch: int = 0  # epochs completed (validated)
    step_in_epoch: int = 0  # steps done in the current epoch (0 at an epoch boundary)
    global_step: int = 0  # steps done over the whole run
    chars_seen: int = 0  # training characters consumed over the whole run
    epoch_loss_sum: float = 0.0  # sum of this epoch's step losses so far (nats)
    best_val_loss: Optional[float] = None  # lowest validation loss so far (nats)
    best_epoch: int = 0  # the epoch that reached best_val_loss
    history: list = field(default_factory=list)  # one dict per validated epoch (report.HISTORY_FIELDS; text_of)
    elapsed_seconds: float = 0.0  # training time so far, across resumes
    train_loss: Optional[float] = None  # mean training loss of the epoch at this checkpoint
    val_loss: Optional[float] = None  # validation loss at this checkpoint (None mid-epoch)
    started_from: Optional[dict] = None  # --init-from: the run whose weights this one started from (run, kind, epoch,
    # step_in_epoch, corpus: its checkpoint's epochs done and steps into the next; runs of before step_in_epoch lack it)

    @property
    def epoch_mean_loss(self) -> float:
        return self.epoch_loss_sum / max(1, self.step_in_epoch)

    def checkpoint_epoch(self) -> str:
        """The epoch a checkpoint was saved in: "epoch 3", or "epoch 3 after 29 steps" when saved mid-epoch (a time
        budget, a signal, --save-every), whose state counts the 2 epochs done."""
        return saved_epoch_text(self.epoch, self.step_in_epoch)

    def position(self) -> str:
        """Where the run stands, as the training log counts epochs (from 1): "in epoch 5, after step 12"."""
        if self.step_in_epoch:
            return f"in epoch {self.epoch + 1}, after step {self.step_in_epoch}"
        return f"at the start of epoch {self.epoch + 1}"


def saved_epoch_text(epochs_done: int, step_in_epoch: int) -> str:
    """:meth:`RunState.checkpoint_epoch` from its two numbers (also what a run's ``started_from`` keeps of them)."""
    return (f"epoch {epochs_done + 1} after {counted(step_in_epoch, 'step')}" if step_in_epoch
            else f"epoch {epochs_done}")


@dataclass
class CheckpointMeta:
    """Everything last.json / best.json hold: one checkpoint that describes itself.

    The JSON is flat (today's keys, unchanged since 0.1.0): the RunState fields sit beside
    model, training, vocab, corpus, files and the format stamp."""

    model: ModelConfig
    training: TrainConfig
    vocab: Vocabulary
    corpus: dict  # path, length, and the fingerprint (size, mtime_ns, blake2b) of the corpus file
    state: RunState
    files: dict = field(default_factory=dict)  # role ("weights", "state") -> {"name", "sha256"}
    kind: str = "last"  # "last" or "best"
    saved_at: str = ""  # ISO time of the save, UTC
    textgen_version: str = __version__  # the release that wrote it

    def to_json(self) -> dict:
        state = {name: value for name, value in dataclasses.asdict(self.state).items()
                 if value is not None or name != "started_from"}  # (a run of its own: as before the field existed)
        return dict(model=self.model.to_dict(), training=self.training.to_dict(), vocab=self.vocab.to_json(),
                    corpus=self.corpus, **state, format=FORMAT,
                    format_version=FORMAT_VERSION, textgen_version=self.textgen_version, saved_at=self.saved_at,
                    files=self.files, kind=self.kind)

    @classmethod
    def from_json(cls, values: dict) -> "CheckpointMeta":
        if not isinstance(values, dict) or values.get("format") != FORMAT:
            raise ValueError("not a textgen checkpoint")
        version = values.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"its format_version is {version!r}, not a whole number from 1")
        if version > FORMAT_VERSION:  # not damage: deleting the run would lose it
            raise CheckpointTooNew(f"was written by a newer textgen (checkpoint format {version}; this textgen "
                                   f"{__version__} reads format {FORMAT_VERSION}); upgrade textgen to use it")
        _check_shape(values)
        _check_state(values)
        state_fields = {f.name for f in dataclasses.fields(RunState)}
        meta = cls(model=ModelConfig.from_dict(values["model"]), training=TrainConfig.from_dict(values["training"]),
                   vocab=Vocabulary.from_json(values["vocab"]), corpus=values["corpus"],
                   state=RunState(**{key: value for key, value in values.items() if key in state_fields}),
                   files=values["files"], kind=values.get("kind", "last"), saved_at=values.get("saved_at", ""),
                   textgen_version=values.get("textgen_version", ""))
        meta.model.validate()  # a field of the wrong type or range would fail far from here (OptionError: a ValueError)
        if not isinstance(meta.state.history, list) or not all(
                isinstance(row, dict) and isinstance(row.get("epoch"), int)
                and isinstance(row.get("precision", ""), str) and isinstance(row.get("text", ""), str)
                for row in meta.state.history):
            raise ValueError("its history is not a list of epoch rows")
        meta.training.validate()
        if meta.model.vocab_size != len(meta.vocab):
            raise ValueError(f"its model's vocab_size {meta.model.vocab_size} is not its {len(meta.vocab)} symbols")
        return meta


def _check_shape(values: dict) -> None:
    """Refuse metadata whose parts are not what the code reads from them, so that a hand-edited or damaged file is
    "damaged" in one line, not a TypeError or a path outside the run far from here."""
    for key, kind in (("model", dict), ("training", dict), ("corpus", dict), ("files", dict), ("vocab", list)):
        if not isinstance(values.get(key), kind):
            raise ValueError(f"its {key} is not a JSON {'object' if kind is dict else 'list'}")
    if not all(isinstance(code, int) and 0 <= code <= 0x10FFFF for code in values["vocab"]):
        raise ValueError("its vocab holds something that is not a character's code point")
    corpus = values["corpus"]
    if not (isinstance(corpus.get("path"), str) and all(isinstance(corpus.get(key), int) for key in ("length", "size"))
            and isinstance(corpus.get("blake2b"), str)):
        raise ValueError("its corpus record lacks the path, length, size or blake2b")
    for role in ("weights", "state"):
        entry = values["files"].get(role)
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("sha256"), str)
                and entry["name"] == Path(entry["name"]).name and entry["name"] not in ("", ".", "..")):
            raise ValueError(f"its files do not name the {role} file in the run's directory")


# RunState's fields by their declared type (the annotations are text here): a new field is checked as its kind is.
STATE_FIELDS = {kind: tuple(f.name for f in dataclasses.fields(RunState) if f.type == kind)
                for kind in ("int", "float", "Optional[float]")}


def _check_state(values: dict) -> None:
    """Refuse RunState fields that are not what the training loop and the listings compute with (a count as text,
    a negative step, a null time): each was a TypeError, IndexError or ValueError traceback far from here."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (isinstance(values.get("run_id"), str) and re.fullmatch(r"[A-Za-z0-9]{1,64}", values["run_id"])):
        raise ValueError("its run_id is not letters and digits, which the checkpoint files are named with")
    for name in STATE_FIELDS["int"]:  # counts
        value = values.get(name, 0)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"its {name} is {value!r}, not a whole number from 0")
    for name in STATE_FIELDS["float"] + STATE_FIELDS["Optional[float]"]:  # losses and times, some not known yet
        value = values.get(name, None if name in STATE_FIELDS["Optional[float]"] else 0)
        if not (number(value) or (value is None and name in STATE_FIELDS["Optional[float]"])):
            raise ValueError(f"its {name} is {value!r}, not a number")
    if not isinstance(values.get("saved_at", ""), str):
        raise ValueError(f"its saved_at is {values['saved_at']!r}, not a time")
    started = values.get("started_from")

    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not (started is None or isinstance(started, dict) and isinstance(started.get("run"), str)
            and count(started.get("epoch")) and isinstance(started.get("corpus"), str)
            and isinstance(started.get("kind", "best"), str) and count(started.get("step_in_epoch", 0))):
        raise ValueError(f"its started_from is {started!r}, not the run it started from")


class SaveFailed(TextgenError):
    """A checkpoint could not be written; the metadata still names the previous one (if the run has one)."""

    def __init__(self, run_dir: Path, reason: str):
        self.run_dir, self.reason = run_dir, reason
        super().__init__(f"could not save the checkpoint in {run_dir}: {reason}; the previous checkpoint is kept "
                         "(free some space or fix the directory, then resume with --resume)")


def save(run_dir: Path, kinds: tuple[str, ...], meta: CheckpointMeta, model,
         training_state: dict[str, np.ndarray]) -> None:
    """Write one checkpoint and point each of kinds ("last", "best") at it.

    An I/O failure (disk full, permissions) raises SaveFailed; the previous checkpoint stays intact."""
    # A save at a step already saved (a run stopped on an epoch's last step saves again when resumed) takes new
    # names: rewritten in place, the files would no longer match the checksums the other metadata file holds.
    # (A leftover that no metadata names also makes it move on; remove_unreferenced removes that.)
    stem = f"ckpt-{meta.state.run_id}-{meta.state.global_step:09d}"
    for again in itertools.count(1):
        if not (run_dir / f"{stem}.weights.h5").exists() and not (run_dir / f"{stem}.state.npz").exists():
            break
        stem = f"ckpt-{meta.state.run_id}-{meta.state.global_step:09d}-{again}"
    weights_path = run_dir / f"{stem}.weights.h5"
    state_path = run_dir / f"{stem}.state.npz"
    # Each kind's metadata as it was: a failure after "last" was rewritten puts it back, so that a run's two files
    # never name two different checkpoints (a new run's with an --overwrite run's earlier one) after a failure.
    previous, rewritten = {}, []
    try:
        previous = {kind: meta_path(run_dir, kind).read_bytes() if meta_path(run_dir, kind).is_file() else None
                    for kind in kinds}
        _check_room(run_dir, model, training_state)
        atomic_write(weights_path, lambda tmp: _write_weights(model, tmp))
        atomic_write(state_path, lambda tmp: np.savez(tmp, **training_state))
        meta = dataclasses.replace(
            meta, textgen_version=__version__,
            saved_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            files={"weights": {"name": weights_path.name, "sha256": sha256(weights_path)},
                   "state": {"name": state_path.name, "sha256": sha256(state_path)}})
        # Both written before either is renamed: a disk that another program filled after "last" was rewritten
        # left "last" naming this checkpoint and "best" the earlier one, and could not take "last" back either.
        rewritten.extend(kinds)  # before: a failure after a rename (or the directory's fsync) has replaced some
        atomic_write_together([(meta_path(run_dir, kind), json_writer(dataclasses.replace(meta, kind=kind).to_json()))
                               for kind in kinds])
    except OSError as error:
        with contextlib.suppress(OSError):  # the old metadata is no larger than the new (its history is shorter)
            # "best" first: should putting one back fail, both still name the same (new) checkpoint
            for kind in reversed(rewritten):
                path = meta_path(run_dir, kind)
                if (path.read_bytes() if path.is_file() else None) == previous[kind]:
                    continue  # its write failed before the rename: nothing to put back, no write to fail
                if previous[kind] is None:
                    meta_path(run_dir, kind).unlink(missing_ok=True)
                else:
                    atomic_write(meta_path(run_dir, kind), lambda tmp, old=previous[kind]: tmp.write_bytes(old))
        still_named = _referenced(run_dir)  # should putting "last" back have failed, it names them
        for written in (weights_path, state_path):
            if written.name not in still_named:
                with contextlib.suppress(OSError):
                    written.unlink(missing_ok=True)
        raise SaveFailed(run_dir, "the disk is full" if error.errno == errno.ENOSPC
                         else (error.strerror or str(error))) from None
    remove_unreferenced(run_dir)


def _write_weights(model, path: Path) -> None:
    """The model's weights as a .weights.h5 file at path, built in memory, then written as bytes: h5py writing to a
    file that fails midway (a quota, a file-size limit, a disk another user fills meanwhile) raised its own error,
    several lines long, and the objects it left half-closed could crash the process when collected (a segfault,
    after pages of tracebacks); a write of bytes that fails is an OSError like any other."""
    import io

    buffer = io.BytesIO()
    try:  # Keras's own writer of .weights.h5 files, which save_weights calls with a path
        from keras.src.saving.saving_lib import H5IOStore, _save_state

        store = H5IOStore(buffer, mode="w")
        try:
            _save_state(model, store, None, "", set())
        finally:
            store.close()
    except (ImportError, TypeError, AttributeError):  # a Keras that moved or changed them: straight to the file
        model.save_weights(str(path))
        return
    path.write_bytes(buffer.getbuffer())


def _check_room(run_dir: Path, model, training_state: dict[str, np.ndarray]) -> None:
    """Raise ENOSPC before a save that the disk cannot hold, before the weights are built in memory."""
    weights = sum(math.prod(variable.shape) * np.dtype(variable.dtype).itemsize for variable in model.weights)
    needed = weights + sum(array.nbytes for array in training_state.values()) + 4096 * len(model.weights) + 2**16
    if (free := _free_bytes(run_dir)) is not None and free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _free_bytes(directory: Path) -> Optional[int]:
    """What this process may still write there, or None where the system does not say: a FUSE file system without
    the statistics reports no blocks at all. Root may write into the blocks reserved for it."""
    usage = os.statvfs(directory)
    if usage.f_blocks == 0:
        return None
    return (usage.f_bfree if os.geteuid() == 0 else usage.f_bavail) * usage.f_frsize


def _referenced(run_dir: Path) -> set[str]:
    """The names of the files that the run's metadata files name."""
    referenced = set()
    for kind in KINDS:
        try:
            meta = json.loads(meta_path(run_dir, kind).read_text(encoding="utf-8"))
            referenced.update(entry["name"] for entry in meta["files"].values())
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return referenced


def is_run_file(name: str) -> bool:
    """Whether name is one that textgen writes in a run's folder: its metadata, lock, corpus cache, report or a
    checkpoint's files."""
    return name in (*(f"{kind}.json" for kind in KINDS), LOCK_FILE, *CACHE_FILES, *REPORT_FILES) \
        or name.startswith(CHECKPOINT_PREFIXES)


def remove_unreferenced(run_dir: Path) -> None:
    referenced = _referenced(run_dir)
    for path in [path for prefix in CHECKPOINT_PREFIXES for path in run_dir.glob(prefix + "*")]:
        if path.name not in referenced:
            path.unlink(missing_ok=True)


def retire_others(run_dir: Path, kinds: tuple[str, ...]) -> None:
    """After a new run's first save over an earlier one (--overwrite): remove the earlier run's checkpoint
    kinds that were not just rewritten, its weights, and its history and curve, so that nothing mixes the two."""
    for kind in KINDS:
        if kind not in kinds:
            meta_path(run_dir, kind).unlink(missing_ok=True)
    for report in REPORT_FILES:
        (run_dir / report).unlink(missing_ok=True)
    remove_unreferenced(run_dir)


class CheckpointTooNew(TextgenError):
    """Metadata of a later checkpoint format than this textgen reads: intact, not damaged."""


class DamagedCheckpoint(TextgenError):
    """A checkpoint's file that cannot be used. ``problem`` says what is wrong without the advice (train again,
    delete the run), which does not fit while the run's other checkpoint still loads."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


class NotReadable(DamagedCheckpoint):
    """A run's file this user may not read (another user's run in a shared directory): not damage, whose advice is
    to delete the run."""


NOT_YOURS = "ask its owner to make it readable (chmod -R a+rX), or choose another run"  # NotReadable's advice


class UnreadableMeta(DamagedCheckpoint):
    """Metadata that cannot be read or parsed."""

    def __init__(self, problem: str):
        super().__init__(problem, "delete the run directory or train again with --overwrite")


def read_meta(run_dir: Path, kind: str) -> Optional[CheckpointMeta]:
    """The metadata of kind, or None if there is none; damaged metadata is a TextgenError."""
    path = meta_path(run_dir, kind)
    try:
        if not path.exists():
            return None
    except PermissionError as error:  # a folder this user may not look into
        raise NotReadable(f"cannot read run {run_dir} ({error.strerror})", NOT_YOURS) from None
    try:
        raw = path.read_bytes()
    except PermissionError as error:  # another user's run: not damaged, and not to be deleted
        raise NotReadable(f"cannot read checkpoint metadata {path} ({error.strerror})", NOT_YOURS) from None
    except OSError as error:  # a directory in its place
        raise UnreadableMeta(f"cannot read checkpoint metadata {path} ({error.strerror})") from None
    try:
        return CheckpointMeta.from_json(json.loads(raw))  # bytes: invalid UTF-8 is damage, caught below
    except CheckpointTooNew as error:
        raise CheckpointTooNew(f"checkpoint {path} {error}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise UnreadableMeta(f"checkpoint metadata {path} is damaged ({error})") from None


@dataclass(frozen=True)
class RunMeta:
    """A run's two metadata files as far as they can be read: one that is damaged is None, with its problem."""

    best: Optional[CheckpointMeta]
    last: Optional[CheckpointMeta]
    problems: dict  # kind -> why its metadata cannot be read, while the other kind's can

    @property
    def latest(self) -> Optional[CheckpointMeta]:
        """The last checkpoint, or the best one when that is all a run has left."""
        return self.last or self.best

    @property
    def best_else_last(self) -> Optional[CheckpointMeta]:
        """The checkpoint that sampling loads (load_model's default): the best, else the last."""
        return self.best or self.last


def read_run_meta(run_dir: Path) -> RunMeta:
    """Both metadata files of a run. One damaged file does not hide the other, as load_model falls back from one to
    the other; both damaged (or one written by a newer textgen) is a TextgenError."""
    found, problems = {}, {}
    for kind in KINDS:
        try:
            found[kind] = read_meta(run_dir, kind)
        except (UnreadableMeta, NotReadable) as error:  # (as loading falls back from one to the other)
            found[kind], problems[kind] = None, error
    if problems and not any(found.values()):
        raise next(iter(problems.values()))
    return RunMeta(found["best"], found["last"], {kind: error.problem for kind, error in problems.items()})


CHECKSUM_OK, MISSING = "checksum ok", "missing"


def file_check(run_dir: Path, entry: dict) -> str:
    """What a file that metadata names is: CHECKSUM_OK, MISSING or "corrupted (checksum mismatch)"."""
    path = run_dir / entry["name"]
    if not path.is_file():
        return MISSING
    try:
        return CHECKSUM_OK if sha256(path) == entry["sha256"] else "corrupted (checksum mismatch)"
    except PermissionError as error:
        raise NotReadable(f"cannot read checkpoint file {path} ({error.strerror})", NOT_YOURS) from None


def verified_file(run_dir: Path, meta: CheckpointMeta, role: str) -> Path:
    entry = meta.files[role]
    path = run_dir / entry["name"]
    check = file_check(run_dir, entry)
    if check == MISSING:
        raise DamagedCheckpoint(f"checkpoint file {path} is missing", f"the checkpoint in {run_dir} is incomplete "
                                "(train again with --overwrite)")
    if check != CHECKSUM_OK:
        raise DamagedCheckpoint(f"checkpoint file {path} is {check}",
                                "train again with --overwrite or restore the file from a backup")
    return path


def meta_path(run_dir: Path, kind: str) -> Path:
    """Where a run's metadata of kind ("best" or "last") lives; renaming it into place commits a save."""
    return run_dir / f"{kind}.json"


def has_checkpoint(run_dir: Path, kinds: tuple[str, ...] = KINDS, unreadable: bool = False) -> bool:
    """Whether run_dir holds metadata of one of kinds. A folder this user may not look into (another user's, in a
    shared directory of runs: Path.exists raised PermissionError) answers unreadable: True to list it as a run
    that cannot be read, False where it would be loaded."""
    try:
        return any(meta_path(run_dir, kind).exists() for kind in kinds)
    except PermissionError:
        return unreadable


_QUIET_LOAD = threading.Lock()
LOAD_ATTEMPTS = 3  # reads of a checkpoint that a training replaces while it is read


def meta_stamp(run_dir: Path, kind: str) -> Optional[tuple]:
    """What changes when a save renames a new metadata file of kind into place (None: there is none)."""
    try:
        stat = meta_path(run_dir, kind).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _load_kind(run_dir: Path, kind: str, batch_size: int):
    """(model, meta) of the run's checkpoint of kind, or None when it has none. A training that saves meanwhile
    removes the files the metadata read here names: then the new metadata is read (the run is fine)."""
    from textgen.model import build_model

    for attempt in range(LOAD_ATTEMPTS):
        stamp = meta_stamp(run_dir, kind)
        try:
            checked = _verified(run_dir, kind)
            if checked is None:
                return None
            meta, weights = checked
            # Held open while the model is built (a second): a training saving every few steps removed the file
            # in that time at every attempt, and the error said to train again with --overwrite
            with _opened(weights) as held:
                model = build_model(meta.model, batch_size)
                _load_weights(model, weights, held)
            return model, meta
        except TextgenError:
            if attempt + 1 == LOAD_ATTEMPTS or meta_stamp(run_dir, kind) == stamp:
                raise


def _opened(weights: Path):
    try:
        return open(weights, "rb")
    except FileNotFoundError:  # removed since its checksum was checked: a save replaced it (the loop reads again)
        raise DamagedCheckpoint(f"checkpoint file {weights} is missing", "train again with --overwrite") from None


def _load_weights(model, weights: Path, held) -> None:
    """Load weights into model; from a copy of the held file when a save removed it meanwhile (its bytes, which
    the checksum verified, stay readable through the handle)."""
    import tempfile

    # Keras warns of each group it cannot match, then raises. The filters are the process's: one load at a time
    # changes them (the server loads runs from several threads).
    with _QUIET_LOAD, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.load_weights(str(weights))
            return
        except Exception as error:  # h5py and Keras raise many types for a bad file
            if _same_file(held, weights):
                raise DamagedCheckpoint(f"checkpoint file {weights} cannot be loaded ({type(error).__name__})",
                                        "train again with --overwrite") from None
        try:
            with tempfile.TemporaryDirectory(prefix="textgen-load-") as copy_dir:
                copy = Path(copy_dir) / weights.name
                with open(copy, "wb") as out:
                    held.seek(0)
                    while block := held.read(1 << 20):
                        out.write(block)
                model.load_weights(str(copy))
        except Exception:  # (a full TMPDIR: the caller reads the checkpoint that replaced it)
            raise DamagedCheckpoint(f"checkpoint file {weights} was replaced while it was read", "try again") \
                from None


def run_vocabulary(run_dir: Path) -> Optional[Vocabulary]:
    """The run's vocabulary, read from its metadata alone (no model built); None if no metadata can be read,
    which load_model then reports."""
    with contextlib.suppress(TextgenError):
        if (meta := read_run_meta(run_dir).latest) is not None:  # both files name the run's one vocabulary
            return meta.vocab
    return None


def _verified(run_dir: Path, kind: str) -> Optional[tuple[CheckpointMeta, Path]]:
    """The checkpoint of kind's metadata and its weights file, checked against the checksum it records; None when
    the run has no checkpoint of kind."""
    meta = read_meta(run_dir, kind)
    return None if meta is None else (meta, verified_file(run_dir, meta, "weights"))


def _first_kind(kind: str, take) -> tuple[Optional[str], object, list]:
    """take(candidate) for kind, then the other kind, until one gives something: (that kind, what it gave, the
    problems (TextgenErrors) of the kinds tried before it); the first problem is raised when none gives anything
    and one had a problem; (None, None, []) when the run has no checkpoint at all."""
    problems = []
    for candidate in [kind] + [other for other in KINDS if other != kind]:
        try:
            taken = take(candidate)
        except TextgenError as problem:
            problems.append(problem)
            continue
        if taken is not None:
            return candidate, taken, problems
    if problems:
        raise problems[0]
    return None, None, []


def servable_meta(run_dir: Path, kind: str = "best") -> Optional[CheckpointMeta]:
    """The metadata of the checkpoint load_model would load, checked as it checks one (its weights file there, with
    the checksum recorded), without loading it; None when the run has none. A damaged run's problem is raised."""
    _, checked, _ = _first_kind(kind, lambda candidate: _verified(run_dir, candidate))
    return None if checked is None else checked[0]


def load_model(run_dir: Path, batch_size: int = 1, kind: str = "best"):
    """Build the checkpoint's architecture at batch_size and load its verified weights.

    Falls back from a damaged "best" to "last" with a warning. Returns (model, meta)."""
    candidate, loaded, problems = _first_kind(kind, lambda candidate: _load_kind(run_dir, candidate, batch_size))
    if loaded is None:
        raise TextgenError(f"no checkpoint in {run_dir}; train one first with: textgen train CORPUS")
    model, meta = loaded
    if problems:  # without the advice to delete the run, which does not fit while another checkpoint loads
        problem = problems[0].problem if isinstance(problems[0], DamagedCheckpoint) else problems[0]
        logger.warning(f"warning: {problem}; using the {candidate} checkpoint instead")
    elif kind == "best" and candidate == "last":  # a run stopped before its first validation: half trained
        why = "yet (no epoch of it has ended in a validation)" if meta.state.best_val_loss is None else \
            f"(its best.json is missing, though it was validated in epoch {_best_validated_epoch(meta.state)})"
        logger.warning(f"note: run {run_dir.name!r} has no best checkpoint {why}; using its last one, saved "
                       f"{meta.state.position()}")
    elif candidate != kind:
        logger.warning(f"note: run {run_dir.name!r} has no {kind} checkpoint; using its {candidate} one")
    return model, meta


def _best_validated_epoch(state: RunState) -> int:
    """The epoch (from 1) whose validation reached the run's best loss: its history row's (best_epoch counts the
    epochs done, 0 for a best reached by a stop in the first epoch, which its note called "after epoch 0")."""
    rows = [row for row in state.history if row.get("val_loss") == state.best_val_loss]
    return rows[-1]["epoch"] if rows else max(1, state.best_epoch)


NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)  # flock on a file system mounted without locks (Lustre)


class RunLock:
    """An exclusive lock on a run directory, released by the kernel even if the process is killed."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.handle = None

    def _open(self):
        return open(self.path, "a+")

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + 0.2  # a lock held that briefly is another command's look (training_pid)
        while True:
            handle = self._open()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(handle)
                handle.close()
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                # (a program training in several threads: "pid" named its own process as another's)
                who = "another training in this program (another thread)" if str(holder) == str(os.getpid()) \
                    else f"another training (pid {holder})"
                raise RunBusy(f"{who} is using {self.path.parent}; wait for it to finish or choose another "
                              "--run") from None
            # A holder removes the file as it lets go: if that happened between our open and our flock, we hold
            # a lock on a file nobody else will open, so we take it again on the file the path names now.
            if _same_file(handle, self.path):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if _same_file(self.handle, self.path):  # not another holder's file, if ours went with its directory
            with contextlib.suppress(OSError):
                self.path.unlink()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _holder(handle) -> str:
    """The pid a lock's file names, or "unknown" before its holder has written it (the file then holds nothing, or
    the pid of a training killed since)."""
    handle.seek(0)
    pid = handle.read().strip()
    try:
        if int(pid) > 0:
            os.kill(int(pid), 0)
            return pid
    except (ValueError, OverflowError, ProcessLookupError):
        pass
    except PermissionError:  # another user's process
        return pid
    return "unknown"


def training_pid(run_dir: Path) -> Optional[str]:
    """The pid of the training that holds run_dir's lock now (see _holder), or None."""
    try:
        handle = open(run_dir / LOCK_FILE)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(handle)
        except OSError as error:
            if error.errno in NO_LOCKS:  # a file system without locks: no training can be seen there
                return None
            raise
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _same_file(handle, path: Path) -> bool:
    try:
        named = os.stat(path)
    except OSError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
