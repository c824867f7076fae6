"""evaluate(): bits per character of a text under a checkpoint, with the state carried through the text."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import weakref
from pathlib import Path
from typing import Callable, Optional

from textgen.batching import StreamBatches
from textgen.config import DEFAULT_CHECKPOINT_DIR, check_range
from textgen.corpus import STANDARD_INPUT, encode_text, named_standard_input, scan, standard_input_copy
from textgen.errors import TextgenError, counted
from textgen.progress import progress_bar, stderr_is_terminal, told_when_slow
from textgen.vocab import quoted_first

logger = logging.getLogger("textgen")

LN2 = math.log(2)


def bpc(nats: float) -> float:
    """Bits per character from a loss in nats per character."""
    return nats / LN2


# A loss above this is damaged weights (math.exp overflows at 709.8; an untrained model's is the log of its vocabulary)
MAX_NATS = 700.0


def perplexity(nats: float) -> float:
    """exp(nats); a loss no trained or untrained model gives (NaN, or past MAX_NATS) says its weights are damaged."""
    if not math.isfinite(nats) or nats > MAX_NATS:
        from textgen.checkpoint import DamagedCheckpoint

        raise DamagedCheckpoint(f"the model's loss on this text is {nats:g} nats per character, so its weights are "
                                "damaged", "train again with --overwrite")
    return math.exp(nats)


def window_loss_sum(model, x, y):
    """Summed cross-entropy (nats) of one window, as validation and eval measure it (training's step computes its
    own, per stream, in session.Session: what it optimises may differ, as dropout is on there)."""
    import tensorflow as tf

    logits = model(x, training=False)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


def _loss_sum_step(model):
    import tensorflow as tf

    spec = tf.TensorSpec([model.inputs[0].shape[0], None], tf.int32)
    return tf.function(lambda x, y: window_loss_sum(model, x, y), input_signature=[spec, spec])


# Per trained model (a TextModel's), its copies for the batch sizes evaluate() was last asked for, with their compiled
# loss steps: building and tracing them took 0.3-0.5 s of a 0.9 s call on a text of 20 KB, and TensorFlow warned of
# retracing after a few files. A copy is taken out while it evaluates (its state is the call's own: two threads
# would interleave it) and put back after, the least recently used going beyond KEPT_COPIES.
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()
KEPT_COPIES = 4


@contextlib.contextmanager
def _copy_for(trained, config, batch_size: int):
    """trained's weights in a model of batch_size streams, and its loss step, for this call alone."""
    from textgen.model import build_model

    with _COPIES_LOCK:
        copy = _COPIES.setdefault(trained, {}).pop(batch_size, None)
    if copy is None:
        model = build_model(config, batch_size)
        model.set_weights(trained.get_weights())
        copy = model, _loss_sum_step(model)
    yield copy
    with _COPIES_LOCK:
        copies = _COPIES.setdefault(trained, {})
        copies[batch_size] = copy
        while len(copies) > KEPT_COPIES:
            del copies[next(iter(copies))]


def stream_loss(loss_sum_step, batches: StreamBatches, progress=None,
                stop: Optional[Callable[[], bool]] = None) -> tuple[Optional[float], int]:
    """Mean loss in nats per character over batches, in order, carrying the model's state; and the count. None for
    the loss when stop() turned true between two windows.

    loss_sum_step(x, y) returns the summed cross-entropy of one window."""
    total, count = 0.0, 0
    for k in range(len(batches)):
        if stop is not None and stop():
            return None, count
        x, y = batches[k]
        total += float(loss_sum_step(x, y))
        count += y.size
        if progress:
            progress(k + 1)
    return total / max(count, 1), count


def _check_length(path: Path, known: int, batch_size: int, unknown: list) -> None:
    if known < 2:
        named = f", and not {quoted_first(unknown)}" if unknown else ""
        raise TextgenError(f"{path} has {counted(known, 'character')} the model knows{named}; evaluation needs at "
                           "least 2 (is it a text in the corpus's language?)")
    if known < batch_size + 1:
        raise TextgenError(f"{path} has only {known:,} characters the model knows; evaluation needs more than "
                           f"--batch-size ({batch_size}); use a smaller --batch-size")


SHORT_STREAM = 1000  # characters per stream below which eval says that the batch size lowers the score
MOSTLY_KNOWN = 0.1  # the share of a text's characters outside the vocabulary above which eval warns


def evaluate(text_file: str | Path, checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, run: Optional[str] = None,
             batch_size: int = 32, seq_length: int = 200, show_progress: bool = False) -> dict:
    """Cross-entropy of text_file under the best checkpoint, laid out as batch_size parallel streams.

    A character the model's vocabulary lacks is read in the Unicode form (NFC or NFD) that it knows, if any
    (Vocabulary.in_known_form); the others are removed from the text and counted, never mapped. Each stream
    starts from a fresh state, so on a short text the score depends on batch_size (1 reads it as one stream).
    Returns nats, bpc, perplexity, characters (scored), unknown (removed), unknown_characters (each of them once, in
    order of appearance), unscored (the first character, which
    nothing predicts, and the fewer than batch_size at the end that do not fill a column), total (the file's
    characters as written: a conversion to NFD can make characters + unknown + unscored more)."""
    from textgen.runs import find_run

    path, total = _checked_text(text_file, batch_size, seq_length)
    return _evaluate(path, total, find_run(Path(checkpoint_dir), run), batch_size, seq_length, show_progress)


def evaluate_loaded(text_file: str | Path, run_dir: Path, loaded: tuple, batch_size: int = 32, seq_length: int = 200,
                    show_progress: bool = False) -> dict:
    """:func:`evaluate` under the (model, metadata) of a checkpoint already loaded from run_dir (a TextModel's: the
    one it holds, whatever a training has saved since)."""
    path, total = _checked_text(text_file, batch_size, seq_length)
    return _evaluate(path, total, Path(run_dir), batch_size, seq_length, show_progress, loaded)


def evaluate_standard_input(checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, run: Optional[str] = None,
                            batch_size: int = 32, seq_length: int = 200, show_progress: bool = False) -> dict:
    """:func:`evaluate` of the text on standard input (``textgen eval -``), which is copied to a temporary file
    first: a pipe can be read once, and the text is read twice. Messages call it standard input."""
    from textgen.runs import find_run

    _check_layout(batch_size, seq_length)
    run_dir = find_run(Path(checkpoint_dir), run)  # (a wrong run is told before the text is waited for)
    with standard_input_copy() as path, named_standard_input(path):
        path, total = _checked_text(path, batch_size, seq_length)
        return _evaluate(path, total, run_dir, batch_size, seq_length, show_progress, name=STANDARD_INPUT)


def _check_layout(batch_size: int, seq_length: int) -> None:
    check_range("batch_size", batch_size, low=1, integer=True)
    check_range("seq_length", seq_length, low=1, integer=True)


def _checked_text(text_file: str | Path, batch_size: int, seq_length: int) -> tuple[Path, int]:
    _check_layout(batch_size, seq_length)
    path = Path(text_file)
    total, _ = scan(path, what="text")
    return path, total


def _evaluate(path: Path, total: int, run_dir: Path, batch_size: int, seq_length: int, show_progress: bool,
              loaded: Optional[tuple] = None, name: Optional[str] = None) -> dict:
    from textgen.checkpoint import load_model, run_vocabulary
    from textgen.model import reset_states

    with contextlib.ExitStack() as kept_copy:  # a loaded model's copy, given back at the end
        if loaded is not None:  # its weights in a model of batch_size streams
            trained, meta = loaded
            ids, unknown = encode_text(path, meta.vocab, size_hint=total, named=(named := []))
            _check_length(path, len(ids), batch_size, named)
            model, loss_sum_step = kept_copy.enter_context(_copy_for(trained, meta.model, batch_size))
        else:
            # The text is read in the vocabulary's Unicode form, which can make it longer, before a model is built
            # for batch_size streams (a huge batch would not fit in memory).
            vocab = run_vocabulary(run_dir)
            if vocab is not None:
                ids, unknown = encode_text(path, vocab, size_hint=total, named=(named := []))
                _check_length(path, len(ids), batch_size, named)
            model, meta = load_model(run_dir, batch_size=batch_size)
            loss_sum_step = _loss_sum_step(model)
            if meta.vocab != vocab:  # the metadata read above was damaged (load_model fell back), or replaced
                ids, unknown = encode_text(path, meta.vocab, size_hint=total, named=(named := []))
                _check_length(path, len(ids), batch_size, named)
        kept = len(ids)
        if unknown > MOSTLY_KNOWN * (kept + unknown):  # the score is then of what is left: its bpc alone misleads
            logger.warning(f"warning: {unknown / (kept + unknown):.0%} of the characters of {name or path} "
                           f"({unknown:,}) are outside the model's vocabulary, so the score is of the other {kept:,} "
                           "alone (is it a text in the corpus's language?)")
        if batch_size > 1 and kept // batch_size < SHORT_STREAM:  # each stream's first characters are read cold
            logger.warning(f"note: each of the {batch_size} streams reads "
                           f"{counted(kept // batch_size, 'character')} from a fresh state, which scores worse than "
                           "reading on; --batch-size 1 reads the text as one stream")
        batches = StreamBatches(ids, batch_size, seq_length, keep_partial=True)
        reset_states(model)
        if stderr_is_terminal():
            progress = progress_bar(len(batches), f"evaluating {name or path}", unit="batch", enabled=show_progress)
        else:  # a script's log: a line with the time left, if it is long (an hour for a large text said nothing)
            progress = told_when_slow(len(batches), f"evaluating {name or path}", logger.info) \
                if show_progress else None
        nats, count = stream_loss(loss_sum_step, batches, progress=progress)
        return dict(run_dir=run_dir, nats=nats, bpc=bpc(nats), perplexity=perplexity(nats), characters=count,
                    unknown=unknown, unknown_characters=named,
                    unscored=kept - count, total=total, batches=len(batches))
