"""Named runs: each training run lives in its own directory under the checkpoint directory."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import shlex
import unicodedata
from pathlib import Path
from typing import Optional

from textgen.checkpoint import (KINDS, LOCK_FILE, NOT_YOURS, NotReadable, has_checkpoint, is_run_file, meta_path,
                                read_meta, training_pid)
from textgen.config import CHECKPOINT_DIR_VARIABLE, DEFAULT_CHECKPOINT_DIR
from textgen.corpus import CACHE_FILES
from textgen.errors import OptionError, TextgenError
from textgen.files import check_path_length, written_path

logger = logging.getLogger("textgen")
MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200  # in UTF-8 (100 Chinese characters take 300): file systems hold names of up to 255 bytes
# Checkpoint metadata is JSON with one such key (every quote inside a string value is escaped).
SAVED_AT = re.compile(rb'"saved_at"\s*:\s*"([^"\\]*)"')


def _name_character(ch: str) -> bool:
    """A letter or digit of any script, a combining mark (the vowel signs of Indic scripts), '.', '_' or '-'."""
    return ch.isalnum() or unicodedata.category(ch).startswith("M") or ch in "._-"


def is_run_name(name: str) -> bool:
    """Whether name is a run name: 1 to 100 of those characters, the first a letter or digit, in NFC (the form
    check_run_name gives it, so that --run finds its folder) and at most MAX_NAME_BYTES in UTF-8."""
    return (0 < len(name) <= MAX_NAME_CHARS and name[0].isalnum() and all(map(_name_character, name))
            and unicodedata.normalize("NFC", name) == name and _bytes(name) <= MAX_NAME_BYTES)


def _bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogatepass"))


def default_run_name(corpus: Path, checkpoint_dir: Optional[Path] = None) -> str:
    """The corpus file's name as a run name (笔记.txt trains the run 笔记), what a run name cannot hold replaced by
    '-'. A name that lost a character outside ASCII that way (an emoji) also gets a short hash of the whole name:
    two corpora must not both become the same run. A run in checkpoint_dir that was trained under the name
    earlier versions gave (ASCII only: 笔记 was run-<hash>, café cafe-<hash>, and before that caf-<hash>) is still
    found."""
    stem = Path(corpus).stem
    name = _cleaned(unicodedata.normalize("NFC", stem), stem)
    if checkpoint_dir is not None and not (Path(checkpoint_dir) / name).exists():
        for earlier in (_ascii_name(_without_accents(stem), stem), _ascii_name(stem, stem)):
            if earlier != name and (Path(checkpoint_dir) / earlier).is_dir():
                return earlier
    return name


def _without_accents(text: str) -> str:
    """text with its letters' accents dropped and compatibility forms (ﬁ, full-width Ａ) made plain."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def _cleaned(text: str, stem: str) -> str:
    """text with what a run name cannot hold replaced, and a hash of stem, the name it came from, if a character
    outside ASCII was lost (see default_run_name)."""
    kept = "".join(ch if _name_character(ch) else "\0" for ch in text)  # one per character of text
    start = next((index for index, ch in enumerate(kept) if ch.isalnum()), len(kept))  # a letter or digit first
    name = _shortened(re.sub("\0+", "-", kept[start:]), 0)
    lost = [original for ch, original in zip(kept, text) if ch == "\0"] + list(text[:start])
    if all(ch.isascii() for ch in lost):
        return name or "run"
    return f"{_shortened(name, 9) or 'run'}-{_digest(stem)}"


def _digest(stem: str) -> str:
    """8 hex digits of a corpus file's name, which tell apart the runs of names that lost characters."""
    return hashlib.blake2b(stem.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def _shortened(name: str, room: int) -> str:
    """name cut to a run name's length, less room characters (and bytes) for a suffix, without a '-' or '.' at
    its end."""
    name = name[:MAX_NAME_CHARS - room]
    while _bytes(name) > MAX_NAME_BYTES - room:
        name = name[:-1]
    return name.rstrip("-.")


def _ascii_name(text: str, stem: str) -> str:
    """The run name earlier versions gave a corpus called stem (from text, its name with or without accents):
    ASCII only, with a hash of stem when it was not ASCII."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip("-._")[:100].rstrip("-.")
    if stem.isascii():
        return name or "run"
    return f"{name[:91].rstrip('-.') or 'run'}-{_digest(stem)}"


def directory_option(checkpoint_dir: Path) -> str:
    """' --checkpoint-dir DIR' for the commands that messages suggest, or '' for the default directory (a listing of
    another directory said ``textgen info --run NAME``, which looked in the default one). Always given where
    TEXTGEN_CHECKPOINT_DIR is set: the command may be run without it, and a Python call never reads it."""
    if not os.environ.get(CHECKPOINT_DIR_VARIABLE) and \
            Path(checkpoint_dir).resolve() == Path(DEFAULT_CHECKPOINT_DIR).resolve():
        return ""
    return f" --checkpoint-dir {shlex.quote(str(checkpoint_dir))}"


def run_options(run_dir: Path) -> str:
    """The options that name run_dir on the command line, for the commands that messages suggest: ``--run NAME``
    after its :func:`directory_option`; a folder with a name no run is given ('my run', '.') as the directory."""
    run_dir = Path(run_dir)
    if run_dir.name in ("", ".", ".."):
        run_dir = run_dir.resolve()
    if not is_run_name(run_dir.name):  # --run refuses it; find_run takes a run's directory as --checkpoint-dir
        return f"--checkpoint-dir {shlex.quote(str(run_dir))}"
    return (directory_option(run_dir.parent) + f" --run {run_dir.name}").lstrip()


def check_run_name(name: str) -> str:
    """name as a run name (in NFC, the form its folder has), or a one-line error saying what to give."""
    if is_run_name(unicodedata.normalize("NFC", name)):
        return unicodedata.normalize("NFC", name)
    hint = ""
    if "/" in name.strip("/") and is_run_name(Path(name).name):  # a run directory given as a name
        hint = f" (for the run in {name}: {run_options(Path(name))})"
    elif name and "/" not in name:
        if re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]{0,8}", Path(name).suffix):  # a corpus file's name ('my notes.txt')
            hint = f" (a corpus file called {name!r} trains the run {default_run_name(Path(name))!r})"
        elif (cleaned := _cleaned(unicodedata.normalize("NFC", name), name)) != name:  # 'v1.2 beta'
            too_long = _bytes(name) > MAX_NAME_BYTES and len(name) <= MAX_NAME_CHARS  # 67 Chinese characters
            hint = f" (such as {cleaned!r}{f': at most {MAX_NAME_BYTES} bytes in UTF-8' if too_long else ''})"
    raise OptionError(f"invalid run name {name!r}: use 1 to 100 letters (of any script), digits, '.', '_' and "
                       f"'-', the first a letter or digit{hint}")


def run_path(checkpoint_dir: Path, name: str) -> Path:
    """The directory of the run named name (checked, NFC): checkpoint_dir/name, or the folder there whose name is
    name in another Unicode form (a decomposed é, as a Mac wrote it), which --run could not name."""
    path = Path(checkpoint_dir) / name
    if not path.exists() and path.parent.is_dir():
        folder = named_alike(name, [entry.name for entry in path.parent.iterdir() if entry.is_dir()])
        return path.parent / folder if folder else path
    return path


def named_alike(name: str, names) -> Optional[str]:
    """The one of names that is name, in whichever Unicode form (NFC or NFD) each is written; None if none is."""
    if name in names:
        return name
    wanted = unicodedata.normalize("NFC", name)
    return next((known for known in names if unicodedata.normalize("NFC", known) == wanted), None)


def probable_run(checkpoint_dir: Path, name: str, names: Optional[list[str]] = None) -> Optional[str]:
    """The run under checkpoint_dir (names: its runs' names, if read already) that name was probably meant to be:
    the same but for case (My-Songs for my-songs), or one close to it (a typo)."""
    import difflib

    names = [path.name for path in list_runs(checkpoint_dir)] if names is None else names
    same = [known for known in names if known.casefold() == name.casefold()]
    return (same or difflib.get_close_matches(name, names, n=1, cutoff=0.8) or [None])[0]


def all_runs(checkpoint_dir: Path) -> list[Path]:
    """What `textgen runs` lists: the runs a training is writing that have no checkpoint yet, the runs with a
    checkpoint, the most recently saved first, then those whose checkpoint files are left without metadata."""
    return list(dict.fromkeys(runs_before_their_first_save(checkpoint_dir) + list_runs(checkpoint_dir)
                              + runs_without_metadata(checkpoint_dir)  # (a first save between two looks)
                              + runs_ended_before_their_first_save(checkpoint_dir)))


def list_runs(checkpoint_dir: Path) -> list[Path]:
    """Run directories holding a checkpoint, most recently saved first."""
    if not checkpoint_dir.is_dir():
        return []
    # (a folder this user may not look into, another user's run in a shared directory, is listed: not readable)
    runs = [path for path in checkpoint_dir.iterdir() if path.is_dir() and has_checkpoint(path, unreadable=True)]
    if has_checkpoint(checkpoint_dir):
        runs.append(checkpoint_dir)
    return sorted(runs, key=_last_saved, reverse=True)


def runs_before_their_first_save(checkpoint_dir: Path) -> list[Path]:
    """Run directories a training holds that have no checkpoint yet (a run in its first epoch, which may take hours
    on a large text: the listing did not show it)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(path for path in checkpoint_dir.iterdir()
                  if path.is_dir() and not has_checkpoint(path, unreadable=True) and training_pid(path) is not None)


def ended_before_its_first_save(path: Path) -> bool:
    """Whether path is a run's folder that a training left before its first checkpoint and none holds now (killed
    outright, or the machine went down): only its corpus cache or lock, which may be hundreds of MB."""
    return (path.is_dir() and not has_checkpoint(path, unreadable=True) and training_pid(path) is None
            and not _left_without_metadata(path) and any((path / name).exists() for name in (LOCK_FILE, *CACHE_FILES)))


def runs_ended_before_their_first_save(checkpoint_dir: Path) -> list[Path]:
    """The run folders under checkpoint_dir that :func:`ended_before_its_first_save` (nothing listed them)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(path for path in checkpoint_dir.iterdir() if ended_before_its_first_save(path))


def runs_without_metadata(checkpoint_dir: Path) -> list[Path]:
    """Run directories whose checkpoint files are left without the best.json and last.json that named them: under
    checkpoint_dir, or checkpoint_dir itself (a run directory given as --checkpoint-dir, as list_runs takes it)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(path for path in (*checkpoint_dir.iterdir(), checkpoint_dir) if _left_without_metadata(path))


def without_checkpoint(run_dir: Path, named: str) -> TextgenError:
    """Why a run's folder has no checkpoint: a training running it now (loading it was called a damaged run, to
    train again), or one that ended before it saved (killed, or the machine went down)."""
    if (pid := training_pid(run_dir)) is not None:  # (which may still wait for its turn in its process)
        return TextgenError(f"{named} has no checkpoint yet: a training (pid {pid}) has it, which saves the first at "
                            "the end of its first epoch (sooner with --save-every, or when stopped with Ctrl-C); "
                            "try again then")
    held = sorted(path.name for path in run_dir.iterdir())
    listing = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "") if held else "nothing"
    return TextgenError(f"{named} has no checkpoint (no best.json or last.json; it holds {listing}): an unfinished "
                        f"or damaged run; {_train_again(run_dir)}")


def _train_again(run_dir: Path) -> str:
    """The advice to train a run again, under a run name: its folder as --checkpoint-dir would start a run inside."""
    resolved = Path(run_dir).resolve()
    if is_run_name(resolved.name):
        return f"train it again with: textgen train CORPUS {run_options(run_dir)}"
    return (f"train it again under a run name (its folder's, {resolved.name!r}, is not one): textgen train CORPUS"
            f"{directory_option(resolved.parent)} --run NAME")


def _left_without_metadata(path: Path) -> bool:
    return path.is_dir() and not has_checkpoint(path) and any(path.glob("ckpt-*.weights.h5"))


def _last_saved(run_dir: Path) -> tuple[float, float]:
    """When the run last saved: the newest time its metadata records (what `textgen runs` shows; a copied run keeps
    it, where the files' own times become the copy's), then the newest metadata file time, which also stands in for
    a time that cannot be read. A save may rename a file away while we look."""
    recorded, modified = [], []
    for kind in KINDS:
        path = meta_path(run_dir, kind)
        try:
            modified.append(path.stat().st_mtime)
        except OSError:  # none, or in a folder this user may not look into
            continue
        try:  # the one "saved_at" key of the file, found without parsing a history or vocabulary of megabytes
            saved_at = SAVED_AT.search(path.read_bytes()).group(1).decode("ascii")
            recorded.append(datetime.datetime.fromisoformat(saved_at).timestamp())
        except (OSError, ValueError, AttributeError):  # renamed away, older, or damaged metadata
            recorded.append(modified[-1])
    return max(recorded, default=0.0), max(modified, default=0.0)


def default_order(runs: list[Path], kind: str = "best") -> list[Path]:
    """runs (the latest first) in the order a run is taken when none is named: those this user may read (another
    user's, in a shared directory, would only say it cannot be read) and, for kind "best", that have a best
    checkpoint (one stopped before its first validation, a command taken back with Ctrl-C, would give half-trained
    text), then the others."""
    readable = [run_dir for run_dir in runs if _metadata_readable(run_dir)]
    return sorted(readable, key=lambda run_dir: kind == "best" and not has_checkpoint(run_dir, ("best",))) + \
        [run_dir for run_dir in runs if run_dir not in readable]


def _listable(directory: Path) -> bool:
    try:
        with os.scandir(directory):
            return True
    except PermissionError:
        return False


def _metadata_readable(run_dir: Path) -> bool:
    """Whether this user may read the run's metadata (any other problem is for loading it to tell)."""
    for kind in KINDS:
        try:
            with open(meta_path(run_dir, kind), "rb"):
                return True
        except PermissionError:
            return False
        except OSError:
            continue
    return True


def check_checkpoint_dir(checkpoint_dir: Path) -> None:
    """Refuse a --checkpoint-dir that is a file (else it reads as a directory without runs), or too long a path."""
    check_path_length(checkpoint_dir, "--checkpoint-dir", "give the directory of the runs")
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise TextgenError(f"{checkpoint_dir} is a file; give the directory of the runs as --checkpoint-dir")


def check_not_run_file(output: Path, run_dir: Path) -> None:
    """Refuse an --output that would write over what a run needs, which --overwrite does not give up: a file of a
    run's own (its metadata, a checkpoint), or the text run_dir was trained on, which a resume reads again."""
    written = written_path(Path(output))
    folder = written.parent
    if is_run_file(written.name):
        if has_checkpoint(folder) or (folder / "corpus.json").exists() or _left_without_metadata(folder):
            raise TextgenError(f"--output {output} would replace a file that run {folder.name!r} needs; write the "
                               "text elsewhere, such as samples.txt (another name in the run's folder is fine)")
        if folder == written_path(run_dir).parent or list_runs(folder):  # a best.json there makes it a run
            raise TextgenError(f"--output {output} would put a run's file in the directory of the runs {folder}, "
                               "which would then read as a damaged run; write the text elsewhere, such as samples.txt")
    for kind in KINDS:  # the text it trained on: recorded resolved, as written_path resolves
        try:
            meta = read_meta(run_dir, kind)
        except TextgenError:  # loading it says what is wrong
            continue
        if meta is not None and meta.corpus.get("path") and written == written_path(Path(meta.corpus["path"])):
            raise TextgenError(f"--output {output} is the text run {run_dir.name!r} was trained on (a resume reads it "
                               "again); write the samples to another file")


def is_export(directory: Path) -> bool:
    """Whether directory holds what textgen export writes (vocab.json beside a model)."""
    from textgen.export import EXPORT_ENTRIES

    return (directory / "vocab.json").is_file() and any((directory / entry).exists() for entry in EXPORT_ENTRIES
                                                        if entry != "vocab.json")


def not_a_run_but_an_export(directory: Path, folder: bool = False) -> TextgenError:
    """folder: a directory of exports, given as the directory of the runs."""
    what, them, source = ("holds exports (textgen export), not runs", "them", "the runs they were") if folder else \
        ("is an export (textgen export), not a run", "it", "the run it was")
    return TextgenError(f"{directory} {what}: plain Keras or TensorFlow loads {them} (README.md, \"Export and serve "
                        f"with TensorFlow\"); textgen reads {source} exported from (textgen runs lists them)")


def find_run(checkpoint_dir: Path, run: Optional[str], kind: str = "best") -> Path:
    """The run directory to read: the named run, the directory itself if it is one, or the latest run (for the best
    checkpoint, kind "best": the latest that has one)."""
    checkpoint_dir = Path(checkpoint_dir)
    check_checkpoint_dir(checkpoint_dir)
    if run:
        run_dir = run_path(checkpoint_dir, check_run_name(run))
        if run_dir.is_dir() and not has_checkpoint(run_dir):
            if not _listable(run_dir):  # another user's
                raise NotReadable(f"run {run!r} in {checkpoint_dir} cannot be read (Permission denied)", NOT_YOURS)
            if is_export(run_dir):
                raise not_a_run_but_an_export(run_dir)
            raise without_checkpoint(run_dir, f"run {run!r} in {checkpoint_dir}")
        if not has_checkpoint(run_dir) and checkpoint_dir.resolve().name == run and has_checkpoint(checkpoint_dir):
            return checkpoint_dir  # --checkpoint-dir is the run itself, named as its listing names it
        if not checkpoint_dir.exists():  # not "(runs there: none)", as if the directory had been read
            raise TextgenError(f"no run named {run!r}: the directory {checkpoint_dir} does not exist; give the "
                               f"directory of the runs as --checkpoint-dir, or train one first with: textgen train "
                               f"CORPUS {run_options(run_dir)}")
        if not has_checkpoint(run_dir):
            names = [path.name for path in list_runs(checkpoint_dir)]
            if close := probable_run(checkpoint_dir, run, names):
                raise TextgenError(f"no run named {run!r} in {checkpoint_dir}; did you mean {close!r}? (list the "
                                   f"runs with: textgen runs{directory_option(checkpoint_dir)})")
            known = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"
            raise TextgenError(f"no run named {run!r} in {checkpoint_dir} (runs there: {known}); "
                               f"list them with: textgen runs{directory_option(checkpoint_dir)}")
        return run_dir
    if has_checkpoint(checkpoint_dir):
        return checkpoint_dir
    runs = list_runs(checkpoint_dir)
    if not runs and _left_without_metadata(checkpoint_dir):  # the run itself, damaged
        raise TextgenError(f"{checkpoint_dir} holds checkpoint files but no best.json or last.json to name them: a "
                           f"damaged run; {_train_again(checkpoint_dir)}")
    if not runs:  # "train one first" into an export (or a folder of them) would make it a directory of runs
        if is_export(checkpoint_dir):
            raise not_a_run_but_an_export(checkpoint_dir)
        if checkpoint_dir.is_dir() and any(is_export(child) for child in checkpoint_dir.iterdir() if child.is_dir()):
            raise not_a_run_but_an_export(checkpoint_dir, folder=True)
        if any((checkpoint_dir / name).exists() for name in (LOCK_FILE, "corpus.json")):  # a run's folder
            raise without_checkpoint(checkpoint_dir, str(checkpoint_dir))
        if training := runs_before_their_first_save(checkpoint_dir):  # a first training, before its first save
            raise without_checkpoint(training[0], f"run {training[0].name!r} in {checkpoint_dir}")
        raise TextgenError(f"no checkpoint in {checkpoint_dir}; train one first with: textgen train CORPUS"
                           f"{directory_option(checkpoint_dir)}")
    chosen = default_order(runs, kind)[0]
    if chosen != runs[0] and not _metadata_readable(runs[0]):
        logger.info(f"using the latest run you may read, {chosen.name!r} (the newer {runs[0].name!r} is another "
                    f"user's, or its mode forbids it; list them with: textgen runs{directory_option(checkpoint_dir)})")
    elif chosen != runs[0]:
        logger.info(f"using the latest run with a best checkpoint, {chosen.name!r} (the newer {runs[0].name!r} has "
                    f"no best checkpoint; choose it with --run; list them with: textgen runs"
                    f"{directory_option(checkpoint_dir)})")
    elif len(runs) > 1:
        logger.info(f"using the latest run {runs[0].name!r} (choose another with --run; list them with: textgen runs"
                    f"{directory_option(checkpoint_dir)})")
    return chosen
