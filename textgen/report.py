"""What a run looks like from outside: the history CSV, the training-curve PNG, `info` and `runs`."""

from __future__ import annotations

import csv
import datetime
import io
import logging
import unicodedata
from pathlib import Path
from typing import Optional

from textgen.checkpoint import (CURVE_FILE, HISTORY_FILE, KINDS, CheckpointTooNew, NotReadable, RunMeta, file_check,
                                has_checkpoint, read_run_meta, saved_epoch_text, training_pid)
from textgen.config import epoch_text
from textgen.files import atomic_write, atomic_write_text
from textgen.evaluation import bpc
from textgen.errors import TextgenError, counted, minutes_text
from textgen.runs import ended_before_its_first_save, run_options

logger = logging.getLogger("textgen")
HISTORY_FIELDS = ["epoch", "step", "chars_seen", "train_loss", "train_bpc", "val_loss", "val_bpc",
                  "learning_rate", "seconds", "precision", "text"]


def write_history(run_dir: Path, history: list[dict]) -> Path:
    """history.csv: one row per validated epoch, rewritten whole so it always matches last.json."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        row = {"precision": "", "text": "", **row}  # older rows lack them
        writer.writerow({key: row[key] for key in HISTORY_FIELDS})
    path = run_dir / HISTORY_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


CURVE_FORMATS = ("png", "svg", "pdf")  # by an --output's suffix


def plot_history(run_dir: Path, history: list[dict], best_val_loss: Optional[float] = None,
                 output: Optional[Path] = None, cut_short_steps: int = 0) -> Path:
    """curve.png (or output, in the format its suffix names): train and validation bits per character against
    characters seen, the run's best checkpoint marked: the last row of best_val_loss, the run's (after a resume on
    another text the lowest validation loss is not the best checkpoint's, which starts over on the new text; a
    row's epoch is not the best epoch's when it was saved mid-epoch); without it, the lowest. cut_short_steps: the
    steps of the last row's epoch when it stopped mid-epoch (steps_cut_short), whose training point is marked."""
    figure, axes = _figure()
    seen = [row["chars_seen"] / 1e6 for row in history]
    # One line per text the run trained on, so that a resume on another text (fine-tuning) is not drawn as a jump of
    # the same curve.
    for number, (first, last) in enumerate(text_spans(history)):
        rows = slice(first, last + 1)
        axes.plot(seen[rows], [row["train_bpc"] for row in history[rows]], "o-", color="C0",
                  label=None if number else "training (mean over the epoch)")
        axes.plot(seen[rows], [row["val_bpc"] for row in history[rows]], "s-", color="C1",
                  label=None if number else "validation")
        if number:
            axes.axvline((seen[first - 1] + seen[first]) / 2, color="gray", linestyle="--", linewidth=1,
                         label=None if number > 1 else "resumed on another text")
    if cut_short_steps:  # its training mean is of the epoch's first steps alone: an uptick that is not one
        axes.plot(seen[-1:], [history[-1]["train_bpc"]], "o", color="C0", markerfacecolor="white", markersize=9,
                  label=f"training, an epoch stopped after {counted(cut_short_steps, 'step')} (their mean)")
    best = _best_row(history, best_val_loss)
    axes.annotate(f"best {best['val_bpc']:.3f}", (best["chars_seen"] / 1e6, best["val_bpc"]),
                  textcoords="offset points", xytext=(0, 10), ha="center")
    return _saved(figure, axes, curve_title(run_dir.name), output or run_dir / CURVE_FILE)


def steps_cut_short(state) -> int:
    """The steps of the epoch of the history's last row when the run stopped mid-epoch (a time budget, Ctrl-C, a
    --save-every save), else 0: that row is numbered the epoch after the last one completed."""
    history = state.history
    return state.step_in_epoch if history and history[-1]["epoch"] > state.epoch else 0


def plot_runs(runs: list[tuple[str, list[dict], Optional[float]]], output: Path) -> Path:
    """Several runs' validation curves in one picture (output, in the format its suffix names): for each run, given as
    (name, history, best_val_loss), validation bits per character against characters seen, its best marked."""
    figure, axes = _figure()
    for number, (name, history, best_val_loss) in enumerate(runs):
        color = f"C{number % 10}"
        for first, last in text_spans(history):  # (a resume on another text is not drawn as a jump)
            rows = history[first:last + 1]
            axes.plot([row["chars_seen"] / 1e6 for row in rows], [row["val_bpc"] for row in rows], "o-",
                      color=color, markersize=3, label=None if first else name)
        best = _best_row(history, best_val_loss)
        axes.plot([best["chars_seen"] / 1e6], [best["val_bpc"]], "*", color=color, markersize=12)
    axes.plot([], [], "*", color="gray", markersize=12, label="each run's best checkpoint")
    return _saved(figure, axes, "validation loss of textgen runs", output)


def validation_difference(metas: list) -> Optional[str]:
    """What makes the validation losses of runs (their checkpoints' metadata) unlike, or None: another text held out
    (corpus, fraction, cap), or another layout (each of --batch-size streams read from a fresh state in windows of
    --seq-length, the end that fills no batch left out)."""
    from textgen.batching import training_length
    from textgen.training import validation_cap

    def held_out(meta) -> tuple:
        length = meta.corpus["length"]
        return meta.corpus["blake2b"], length - training_length(length, meta.training.val_fraction,
                                                                validation_cap(meta.training))

    if len({held_out(meta) for meta in metas}) > 1:
        return "these runs were validated on different texts (another corpus, --val-fraction or --val-max-chars): " \
               "their curves compare the texts as well as the runs"
    if len({(meta.training.batch_size, meta.training.seq_length) for meta in metas}) > 1:
        return "these runs read their validation text in different layouts (--batch-size streams, each from a fresh " \
               "state, in --seq-length windows), which moves their losses a little apart (1% in a small test)"
    return None


def _figure():
    """A figure of its own and its axes, drawn by Agg, outside pyplot: matplotlib.use("Agg") switched the whole
    process, and a notebook's own plots stopped showing after a training."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _saved(figure, axes, title: str, path: Path) -> Path:
    axes.set_xlabel("characters seen (millions)")
    axes.set_ylabel("loss (bits per character)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=curve_format(path)))  # (no pyplot figure to close)
    return path


def _best_row(history: list[dict], best_val_loss: Optional[float]) -> dict:
    """The row of the run's best checkpoint: the last of best_val_loss, the run's (after a resume on another text the
    lowest validation loss is not the best checkpoint's); without it, the lowest."""
    return next((row for row in reversed(history) if best_val_loss is not None and row["val_loss"] == best_val_loss),
                None) or min(history, key=lambda row: row["val_bpc"])


def curve_format(path: Path) -> str:
    """The picture format a curve's file name asks for by its suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in CURVE_FORMATS:
        raise TextgenError(f"--output {path}: give a file name ending in "
                           + ", ".join(f".{name}" for name in CURVE_FORMATS[:-1]) + f" or .{CURVE_FORMATS[-1]}")
    return suffix


def spans_of(history: list[dict], key: str) -> list[tuple]:
    """The history's rows in spans of one value of key, [(value, first row, last row)]: where a resume changed the
    text trained on, or the precision (another CPU). A row without the key (an older textgen's) has the value None;
    a resume fills in the text of such rows (the checkpoint's), so that they do not make a span of their own."""
    spans = []
    for index, row in enumerate(history):
        if spans and spans[-1][0] == row.get(key):
            spans[-1][2] = index
        else:
            spans.append([row.get(key), index, index])
    return [tuple(span) for span in spans]


def text_spans(history: list[dict]) -> list[tuple[int, int]]:
    """The history's rows as spans trained on one text, [(first row, last row)]. A row without a text after one
    with it is an older textgen's that resumed the run, which did not record its text: it counts with the rows
    before it (it made a span of its own: "changed at 1 resume" for a run on one text throughout)."""
    texts = [row.get("text") for row in history]
    for index in range(1, len(texts)):
        texts[index] = texts[index] or texts[index - 1]
    return [(first, last) for _, first, last in spans_of([dict(text=text) for text in texts], "text")]


def curve_title(run_name: str) -> str:
    """The curve's title, with the run's name if the plot's font draws each of its characters: matplotlib's
    DejaVu Sans has no Chinese, which came out as squares and a warning on stderr per character."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    if all(font.get_char_index(ord(ch)) for ch in run_name):
        return f"textgen run '{run_name}'"
    return "textgen run"


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def vocabulary_text(run_dir: Path) -> str:
    """Every character of the run's vocabulary, escaped as the preview is."""
    meta = read_run_meta(run_dir).latest  # neither metadata file reads: its error says why
    if meta is None:
        raise TextgenError(f"no checkpoint in {run_dir}; train one first with: textgen train CORPUS")
    return meta.vocab.preview(len(meta.vocab))


INFO_SYMBOLS = 128  # the vocabulary's symbols info shows: a Latin-script text's in full, a Chinese one's a spread


def info_text(run_dir: Path) -> str:
    run = read_run_meta(run_dir)
    _warn_unreadable(run, run_dir.name)
    last, best = run.latest, run.best_else_last.state
    model, vocab, training, corpus, state = last.model, last.vocab, last.training, last.corpus, last.state
    lines = [
        f"run            {run_dir}",
        f"model          {model.layers_text()}, embedding {model.embedding_dim}, "
        f"dropout {model.dropout}; {model.parameter_count():,} parameters",
        # in full up to 128: a sample of an English text's ~100 symbols looked as if letters were missing
        f"vocabulary     {len(vocab):,} symbols: {vocab.preview(INFO_SYMBOLS)}"
        + (f" (textgen info {run_options(run_dir)} --vocabulary lists them all)" if len(vocab) > INFO_SYMBOLS
           else ""),
        "training       " + ", ".join(f"{key} {value}" for key, value in training.to_dict().items()
                                      if training.in_effect(key)),
        # (in parentheses: the rest of the line was the else branch's alone, and a run of --epochs lost it)
        (f"progress       {state.epoch} of {counted(training.epochs, 'epoch')}" if training.epochs else
         f"progress       {counted(state.epoch, 'epoch')} (until --max-minutes {training.max_minutes:g})")
        + steps_text(state.step_in_epoch)
        + f", {counted(state.global_step, 'step')}, {state.chars_seen:,} characters, "
          f"{minutes_text(state.elapsed_seconds / 60)}",
        f"precision      {_precision_text(state.history)}",
        *_texts_line(state.history),
        "best           best.json cannot be read (see the warning)" if "best" in run.problems else
        f"best           {best.checkpoint_epoch()}: validation {best.val_loss:.4f} nats ({bpc(best.val_loss):.3f} bpc)"
        if best.val_loss is not None else "best           none yet",
        "last           last.json cannot be read (see the warning)" if "last" in run.problems else
        "last           none (no last.json, so the run cannot be resumed)" if run.last is None else
        f"last           {state.checkpoint_epoch()}: validation "
        + (f"{state.val_loss:.4f} nats ({bpc(state.val_loss):.3f} bpc)" if state.val_loss is not None
           else "not measured (saved mid-epoch)")
        + (f", training {state.train_loss:.4f} nats ({bpc(state.train_loss):.3f} bpc)"
           if state.train_loss is not None else ""),
        f"corpus         {_controls_escaped(corpus['path'])} ({corpus['length']:,} characters, "
        f"{corpus['size']:,} bytes, "
        f"blake2b {corpus['blake2b']})",
        *([f"started from   {_controls_escaped(started['run'])} (its {started.get('kind', 'best')} checkpoint, "
           f"{saved_epoch_text(started['epoch'], started.get('step_in_epoch', 0))}, trained on "
           f"{_controls_escaped(started['corpus'])})"]
          if (started := state.started_from) else []),
        f"saved          {last.saved_at}",
        "files",
    ]
    named = {}  # file name -> (the checkpoints that name it, its entry)
    for kind, meta in (("best", run.best), ("last", run.last)):
        for entry in (meta.files.values() if meta is not None else ()):
            named.setdefault(entry["name"], ([], entry))[0].append(kind)
    checks = {name: f"{', '.join(kinds)}: {file_check(run_dir, entry)}" for name, (kinds, entry) in named.items()}
    present = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    for name in sorted(set(present) | set(checks)):
        size = _size((run_dir / name).stat().st_size) if name in present else "-"
        lines.append(f"  {name:<40} {size:>10}  {checks.get(name, '')}".rstrip())
    return "\n".join(lines)


def _warn_unreadable(run: RunMeta, name: str) -> None:
    """One line per metadata file that cannot be read while the other can: the run still samples, from the other."""
    for kind, problem in run.problems.items():
        other = next(other for other in KINDS if other != kind)
        logger.warning(f"warning: run {name!r}: {problem}; sample and eval use its {other} checkpoint")


PRECISIONS = {"bfloat16": "LSTM matmuls in bfloat16 (mixed precision)", "float32": "float32",
              None: "not recorded (an older textgen)"}


def _precision_text(history: list[dict]) -> str:
    """What each epoch trained in, from the history: "float32 in every epoch", or spans of epochs where a resume on
    another CPU changed it."""
    spans = [(precision, history[first]["epoch"], history[last]["epoch"])
             for precision, first, last in spans_of(history, "precision")]
    if not spans:
        return "not known before the first epoch ends"
    if len(spans) == 1:
        return f"{PRECISIONS.get(spans[0][0], spans[0][0])} in every epoch"
    return ", ".join(PRECISIONS.get(precision, precision) + (f" in epochs {first}-{last}" if last > first
                                                              else f" in epoch {first}")
                     for precision, first, last in spans)


def _texts_line(history: list[dict]) -> list[str]:
    """info's line for a run resumed on other texts, with the epochs on each (none for a run on one text)."""
    spans = text_spans(history)
    if len(spans) < 2:
        return []
    epochs = [(history[first]["epoch"], history[last]["epoch"]) for first, last in spans]
    return [f"texts          changed at {counted(len(spans) - 1, 'resume')}: epochs "
            + ", ".join(f"{first}-{last}" if last > first else f"{first}" for first, last in epochs)
            + " (the curve draws each apart)"]


def steps_text(step_in_epoch: int) -> str:
    """" + 40 steps" after the epochs of a run saved in mid-epoch (nothing at an epoch's end)."""
    return f" + {counted(step_in_epoch, 'step')}" if step_in_epoch else ""


def info_record(run_dir: Path) -> dict:
    """`textgen info --json`: the run's row of `textgen runs --json`, with its vocabulary (the characters in id
    order) and its history (history.csv's rows, one per validated epoch)."""
    run = read_run_meta(run_dir)  # a run that cannot be read is an error here, as for `textgen info`
    return dict(run_rows([run_dir])[0], vocabulary=list(run.latest.vocab.chars), history=run.latest.state.history)


def run_rows(run_dirs: list[Path]) -> list[dict]:
    """What `textgen runs` lists of each run: name, path, corpus, characters, epochs (trained), step_in_epoch (the
    steps of an epoch left unfinished: a run on a large text stopped by its time budget may have trained for hours in
    its "0" epochs), planned_epochs (None: until its time budget), val_bpc, best_epoch (the epoch val_bpc was
    measured after), seconds (of training, all resumes included), saved_at, model and options (the shape and the
    training options the run trained with, as dicts: what --size auto chose too), started_from (for a run
    fine-tuned by --init-from: the run, kind, epoch, step_in_epoch and corpus it started from; else None) and training
    (the pid of the training writing the run now, or None); for a run that cannot be read, "problem" ("damaged",
    "written by a newer textgen", "not readable by you", "no checkpoint yet" or "no checkpoint: a training ended
    before its first save (...)"), its other fields None; "problem" is None for a run that can be read."""
    rows = []
    for run_dir in run_dirs:
        row = dict(name=run_dir.name, path=run_dir, corpus=None, characters=None, epochs=None, step_in_epoch=None,
                   planned_epochs=None, val_bpc=None, best_epoch=None, seconds=None, saved_at=None, started_from=None,
                   model=None, options=None, training=_training(run_dir), problem=None)
        if row["training"] is not None and not has_checkpoint(run_dir, unreadable=True):
            rows.append(dict(row, problem="no checkpoint yet"))
            continue
        if ended_before_its_first_save(run_dir):
            rows.append(dict(row, problem="no checkpoint: a training ended before its first save (train it again, "
                                          "or delete the folder)"))
            continue
        try:
            run = read_run_meta(run_dir)
        except CheckpointTooNew:
            rows.append(dict(row, problem="written by a newer textgen"))
            continue
        except NotReadable:
            rows.append(dict(row, problem="not readable by you"))
            continue
        except TextgenError:  # one damaged run does not hide the others
            run = None
        if run is None or run.latest is None:  # damaged, or its checkpoint files left without metadata
            rows.append(dict(row, problem="damaged"))
            continue
        _warn_unreadable(run, run_dir.name)
        meta = run.latest
        best = run.best.state if run.best is not None else None  # else last.json's record of it
        best_val_loss = best.val_loss if best is not None else meta.state.best_val_loss
        best_epoch = best.epoch if best is not None else meta.state.best_epoch
        # The options and shape beside the results, for comparing the runs of a sweep (--size auto chooses some)
        rows.append(dict(row, corpus=meta.corpus["path"], characters=meta.corpus["length"],
                         epochs=meta.state.epoch, step_in_epoch=meta.state.step_in_epoch,
                         planned_epochs=meta.training.epochs or None,
                         val_bpc=None if best_val_loss is None else bpc(best_val_loss),
                         best_epoch=None if best_val_loss is None else best_epoch,
                         seconds=round(meta.state.elapsed_seconds, 1), saved_at=meta.saved_at,
                         started_from=meta.state.started_from, model=meta.model.to_dict(),
                         options=meta.training.to_dict()))
    return rows


def _training(run_dir: Path) -> Optional[int]:
    """The pid of the training writing run_dir now (0 where its lock does not name it yet), or None."""
    pid = training_pid(run_dir)
    return None if pid is None else int(pid) if pid.isdigit() else 0


def runs_table(run_dirs: list[Path]) -> str:
    header = ("run", "corpus", "characters", "epochs", "best val bpc", "saved")
    rows = []
    for run in run_rows(run_dirs):
        training = "" if run["training"] is None else ", training now" + (f" (pid {run['training']})" if run["training"]
                                                                          else "")
        if run["problem"]:
            why = f"damaged (textgen info {run_options(run['path'])} says why)" if run["problem"] == "damaged" else \
                run["problem"]
            rows.append((_controls_escaped(run["name"]), why + training, "-", "-", "-", "-"))
            continue
        saved = datetime.datetime.fromisoformat(run["saved_at"]).astimezone().strftime("%Y-%m-%d %H:%M") + training
        started = f" (from {Path(run['started_from']['run']).name})" if run["started_from"] else ""
        rows.append((_controls_escaped(run["name"]), _controls_escaped(Path(run["corpus"]).name + started),
                     f"{run['characters']:,}",
                     epoch_text(run["epochs"], run["planned_epochs"]) + steps_text(run["step_in_epoch"]),
                     "-" if run["val_bpc"] is None else f"{run['val_bpc']:.3f}", saved))
    widths = [max(_columns(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(str(cell) + " " * (width - _columns(str(cell))) for cell, width in zip(row, widths))
                     .rstrip() for row in [header] + rows)


_DIRECTION_MARKS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _controls_escaped(text: str) -> str:
    """A name or path as the runs table and info show it: control characters and the marks that set a text's
    direction escaped (a name holding U+202E, right-to-left override, showed the rest of its line reversed on a
    terminal)."""
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) == "Cc" or ch in _DIRECTION_MARKS else ch
                   for ch in text)


def _columns(text: str) -> int:
    """How many terminal columns text takes: CJK characters take two, combining marks, variation selectors and
    joiners none (they draw into the character before them)."""
    return sum(0 if _zero_width(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _zero_width(ch: str) -> bool:
    """Marks, joiners and Hangul vowel and final jamo (a decomposed syllable's tail) take no column of their own;
    the soft hyphen and the Arabic number signs, format characters too, are drawn."""
    code = ord(ch)
    if code == 0xAD or 0x600 <= code <= 0x605:
        return False
    return unicodedata.category(ch) in ("Mn", "Me", "Cf") or 0x1160 <= code <= 0x11FF or 0xD7B0 <= code <= 0xD7FF


