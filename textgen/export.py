"""export(): a trained run as files that plain Keras / TensorFlow load, without textgen.

OUTPUT/model.keras      the network with stock Keras layers only (Embedding, stateful LSTMs, Dense logits),
                        batch 1, the run's weights; ``keras.saving.load_model`` reads it
OUTPUT/vocab.json       the vocabulary: {"chars": [...]} (id i is chars[i]), "unicode_form" (NFC, NFD or null: the
                        form to give text in, as unicodedata.normalize(form, text)) and the model's facts
OUTPUT/savedmodel/      a TensorFlow SavedModel with stateless signatures (``tf.saved_model.load``,
                        TensorFlow Serving): ``step(ids, h, c) -> (logits, h, c)`` for any batch, and
                        ``generate(prime, length, temperature, seed) -> text`` with the whole sampling
                        loop in the graph and the vocabulary as an asset (savedmodel/assets/vocab.tsv), and
                        ``generate_filtered(..., top_k, top_p, min_p)``, the same with the sampling filters, and
                        ``generate_guarded(..., top_k, top_p, min_p, max_repeat)`` with the repeat guard too
OUTPUT/model.tflite     (format "litert") the stateless step for one stream and one character

The SavedModel and the TFLite step are written from exported_graph.ExportedGraph.

The output directory is built under a temporary name and renamed into place, so a failure never
leaves a half-written export where a good one was.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from textgen.config import EXPORT_FORMATS, GENERATE_SIGNATURES
from textgen.errors import OptionError, TextgenError
from textgen.files import check_path_length, links_to_itself

logger = logging.getLogger("textgen")

EXPORT_ENTRIES = {"model.keras", "savedmodel", "model.tflite", "vocab.json"}  # what an export directory holds


def stock_model(meta, trained) -> "keras.Model":  # noqa: F821
    """The run's network with stock Keras layers at batch 1, holding the trained weights."""
    from textgen.model import build_model

    model = build_model(meta.model, 1, stock=True)
    model.set_weights(trained.get_weights())
    return model


def _exported_graph(meta, trained, vocab_file: Path):
    from textgen.exported_graph import ExportedGraph

    return ExportedGraph(meta, trained, vocab_file)


def _write_keras(meta, trained, out: Path, graph) -> list[Path]:
    model = stock_model(meta, trained)
    model.save(out / "model.keras")
    return [out / "model.keras"]


def _vocab_asset(meta, out: Path) -> Path:
    vocab_file = out / "vocab.tsv"  # becomes the SavedModel's asset; removed when the export is complete
    vocab_file.write_text("".join(f"{ord(ch)}\n" for ch in meta.vocab.chars), encoding="utf-8")
    return vocab_file


def _write_savedmodel(meta, trained, out: Path, graph) -> list[Path]:
    import tensorflow as tf

    module = graph()
    signatures = {name: getattr(module, name) for name in GENERATE_SIGNATURES}
    tf.saved_model.save(module, str(out / "savedmodel"),
                        signatures={"serving_default": module.generate, **signatures, "step": module.step})
    return [out / "savedmodel"]


def _write_litert(meta, trained, out: Path, graph) -> list[Path]:
    import tensorflow as tf

    config = meta.model
    module = graph()
    one = module.next_logits.get_concrete_function(tf.TensorSpec([1], tf.int32),
                                                   tf.TensorSpec([config.layers, 1, config.units], tf.float32),
                                                   tf.TensorSpec([config.layers, 1, config.units], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([one], module)
    (out / "model.tflite").write_bytes(converter.convert())
    return [out / "model.tflite"]


def _reason(error: Exception) -> str:
    """An error's message in one line: its first, or for an error raised while TensorFlow traced a function
    ("in user code:", then the trace), its last, the error itself (the first said only "in user code:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if lines[0] == "in user code:" else lines[0]


# Each writer gets graph(): the ExportedGraph of the SavedModel and LiteRT, built on first use, once per export.
WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "litert": _write_litert}


@contextlib.contextmanager
def _root_logger_kept():
    """The caller's root logger as it was: TensorFlow's SavedModel writer logs through absl, which configures the
    root logger (logging.basicConfig) when it has no handler, so a program then printed every library's warnings as
    WARNING:name:... and its own basicConfig, called later, did nothing."""
    handlers = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in list(logging.root.handlers):
            if handler not in handlers:
                logging.root.removeHandler(handler)


def export(run_dir: Path, output: Path, formats: tuple[str, ...] = ("keras", "savedmodel"),
           overwrite: bool = False, loaded: Optional[tuple] = None) -> list[Path]:
    """Write the run's best checkpoint, or the (model, metadata) it was loaded as (a TextModel's: the checkpoint
    it loaded, whatever a training has saved since), in each of formats (names of EXPORT_FORMATS, or "all") under
    output; return the paths written."""
    import keras

    from textgen.checkpoint import load_model
    from textgen.generate import start_symbol

    # As the user means it: x/missing/.. is x, which every check below must see (the system's own lookup of
    # x/missing/.. fails, so x would pass as absent and then be replaced).
    output = Path(os.path.normpath(output))
    formats = EXPORT_FORMATS if "all" in formats else tuple(dict.fromkeys(formats))
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise OptionError(f"--format must be among {', '.join(EXPORT_FORMATS)} or all, got "
                          + (", ".join(unknown) if unknown else "no format"))
    check_path_length(output, "--output", "choose a directory for the export, such as exports/NAME")
    if links_to_itself(output):
        raise TextgenError(f"--output {output} is a symbolic link that leads back to itself; choose a directory for "
                           "the export, such as exports/NAME")
    if Path.cwd().resolve().is_relative_to(output.resolve()):  # it is replaced as a whole: never under our feet
        raise TextgenError(f"--output {output} is the current directory or holds it; choose a directory for the "
                           "export, such as exports/NAME")
    # What --overwrite may never replace is refused first, so that no message suggests it in vain.
    if output.exists() and not output.is_dir():
        raise TextgenError(f"{output} is a file; choose a directory for --output")
    unfinished = _unfinished_exports(output.resolve())  # removed once every check below has passed
    held = [entry for entry in output.iterdir() if entry.resolve() not in unfinished] if output.is_dir() else []
    foreign = sorted(entry.name for entry in held if entry.name not in EXPORT_ENTRIES)
    if foreign:  # --overwrite replaces an earlier export, never a directory of other things (a run, the checkpoints)
        raise TextgenError(f"{output} is not an earlier export (it holds {', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory for --output")
    if held and not overwrite:  # an empty directory has nothing to lose
        raise TextgenError(f"{output} already exists; pass --overwrite to replace it or choose another --output")
    trained, meta = loaded or load_model(Path(run_dir), batch_size=1)
    for leftover in unfinished:
        shutil.rmtree(leftover, ignore_errors=True)
    target = output.resolve()  # through a link named as --output: the link stays and shows the new export
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way (corpus.txt/x), or a directory we may not write in
        in_the_way = next((above for above in target.parents if above.exists()), None)
        if in_the_way is not None and not in_the_way.is_dir():  # it said "cannot create ... (File exists)"
            raise TextgenError(f"{in_the_way} is a file, so --output {output} cannot be a directory in it; choose "
                               "another --output") from None
        raise TextgenError(f"cannot create the directory {target.parent} for --output "
                           f"({error.strerror or error}); choose another --output") from None
    # An empty directory (a mount point, a shared folder with its owner and mode) is filled, not replaced: the
    # export is built inside it, where its files can be renamed into place.
    fills = target.is_dir() and not any(target.iterdir())
    directory, prefix = _building_places(target)[0 if fills else 1]
    building = directory / f"{prefix}{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    graph = functools.cache(lambda: _exported_graph(meta, trained, _vocab_asset(meta, building)))
    try:
        building.mkdir()
        written = []
        for name in formats:
            try:
                with _root_logger_kept():
                    paths = WRITERS[name](meta, trained, building, graph)
            except OSError:
                raise
            except Exception as error:  # converters raise many types; the user needs the format and the reason
                if os.strerror(errno.ENOSPC) in str(error):  # TensorFlow's writer: its op's name and a temporary path
                    raise TextgenError(f"could not export the {name} format: the disk is full; free some space or "
                                       "choose another --output; nothing was written") from None
                raise TextgenError(f"could not export the {name} format ({_reason(error)}); nothing was "
                                   "written") from None
            written += [output / path.relative_to(building) for path in paths]
        (building / "vocab.tsv").unlink(missing_ok=True)  # the SavedModel holds its own copy in its assets
        (building / "vocab.json").write_text(json.dumps(dict(
            chars=list(meta.vocab.chars), start=start_symbol(meta.vocab), unicode_form=meta.vocab.unicode_form,
            run=Path(run_dir).name, epoch=meta.state.epoch, step_in_epoch=meta.state.step_in_epoch,
            val_loss=meta.state.val_loss, model=meta.model.to_dict(), textgen_version=meta.textgen_version,
            keras_version=keras.__version__),  # model.keras loads in this Keras or a newer one, not an older
            ensure_ascii=False, indent=1), encoding="utf-8")
        _fill_directory(building, target) if fills else _replace_directory(building, target, output, overwrite)
    except OSError as error:
        if not fills and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and error.filename is not None \
                and Path(error.filename) == building:
            # A replacement is built beside --output (a mount point, a shared folder in a directory we may not write
            # in); an empty --output is filled in place.
            if not held:  # a new --output: nothing to empty
                raise TextgenError(f"cannot write in {target.parent} ({error.strerror or error}); choose another "
                                   "--output") from None
            raise TextgenError(f"cannot write in {target.parent} ({error.strerror or error}), where the new export "
                               f"is built before it replaces {output}; empty {output} first (an empty directory is "
                               "filled in place), or choose another --output; nothing was replaced") from None
        raise TextgenError(f"could not write the export to {output} ({error.strerror or error}); "
                           "nothing was replaced") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    written.append(output / "vocab.json")
    if dropped := sorted({entry.name for entry in held} - {path.relative_to(output).parts[0] for path in written}):
        logger.warning(f"note: the earlier export's {', '.join(dropped)} {'is' if len(dropped) == 1 else 'are'} "
                       "gone: --overwrite replaces the export whole (--format all writes every format)")
    return written


def _building_places(target: Path) -> tuple:
    """Where an export into target is built, and its directory's name before the process id: inside an empty
    --output, or beside it."""
    return (target, ".tmp-export-"), (target.parent, f".tmp-{target.name}-")


def _unfinished_exports(target: Path) -> list[Path]:
    """The directories that exports into target were built in and left when killed (SIGKILL, a power cut): named
    with the id of a process that has ended. One left inside an empty --output made it "not an earlier export", and
    beside it, it stayed for good. (A previous export moved aside, .old-NAME-PID, is not one: it may be the only
    copy. An export running on another machine into a shared folder is not seen as running.)"""
    found = []
    for directory, prefix in _building_places(target):
        for entry in directory.glob(glob.escape(prefix) + "*") if directory.is_dir() else ():
            pid = entry.name.removeprefix(prefix)
            if pid.isascii() and pid.isdigit() and len(pid) <= 9 and not _running(int(pid)):  # (a pid, as we write it)
                found.append(entry.resolve())
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _fill_directory(new: Path, target: Path) -> None:
    """Move new's entries into the empty directory target, which holds new; on a failure, take them out again."""
    moved = []
    try:
        for entry in sorted(new.iterdir()):
            os.replace(entry, target / entry.name)
            moved.append(target / entry.name)
    except BaseException:  # an interrupt (Ctrl-C, SIGTERM) too: never a half-filled --output
        for path in moved:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def _replace_directory(new: Path, target: Path, output: Path, overwrite: bool) -> None:
    """Put new in target's place; an old target is moved aside first and removed only once new is in. Without
    overwrite, a target another program wrote meanwhile (an export to the same new --output, started at the same
    time) is kept: rename() refuses to replace a directory that holds anything."""
    if not overwrite:
        try:
            os.rename(new, target)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TextgenError(f"{output} was written by another program while this export was built; pass "
                                   "--overwrite to replace it or choose another --output") from None
            raise
        return
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:  # an interrupt (Ctrl-C, SIGTERM) too: the old export is put back, not left aside
        if old.exists():
            os.replace(old, target)
        raise
    if not _removed(old):
        logger.warning(f"warning: the earlier export, moved aside to {old}, could not be removed; remove it by hand")


def _removed(tree: Path) -> bool:
    """Remove tree, also where its directories were made read-only (an export the user protected, which
    --overwrite was asked to replace: it stayed, hidden, as .old-NAME-PID); whether it is gone."""
    shutil.rmtree(tree, ignore_errors=True)
    if os.path.lexists(tree):
        with contextlib.suppress(OSError):
            os.chmod(tree, 0o700)
        for directory, subdirectories, _ in os.walk(tree):  # (top-down: each made listable before it is listed)
            for name in subdirectories:
                if not os.path.islink(os.path.join(directory, name)):  # never a directory a link leads to
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(directory, name), 0o700)
        shutil.rmtree(tree, ignore_errors=True)
    return not os.path.lexists(tree)
