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

The output directory is built under a temporary name and renamed into place, so a failure never
leaves a half-written export where a good one was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from textgen import lstm_step, sampling
from textgen.config import EXPORT_FORMATS, SampleConfig, rules
from textgen.errors import TextgenError
from textgen.generate import start_symbol

EXPORT_ENTRIES = {"model.keras", "savedmodel", "model.tflite", "vocab.json"}  # what an export directory holds


def stock_model(meta, trained) -> "keras.Model":  # noqa: F821
    """The run's network with stock Keras layers at batch 1, holding the trained weights."""
    from textgen.model import build_model

    model = build_model(meta.model, 1, stock=True)
    model.set_weights(trained.get_weights())
    return model


def _serving_module(meta, trained, vocab_file: Path):
    """A tf.Module whose functions carry the LSTM state explicitly (see the module docstring)."""
    import tensorflow as tf

    generate_inputs = [tf.TensorSpec([], tf.string, name="prime"), tf.TensorSpec([], tf.int32, name="length"),
                       tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int64, name="seed")]

    config, vocab = meta.model, meta.vocab
    layers = config.layers
    start_id = vocab.chars.index(start_symbol(vocab))

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="textgen")
            self.embedding = tf.Variable(trained.get_layer("embedding").get_weights()[0], trainable=False)
            self.lstm = []
            for index in range(layers):
                kernel, recurrent, bias = trained.get_layer(f"lstm_{index}").get_weights()
                self.lstm.append([tf.Variable(lstm_step.prescale_candidate(w), trainable=False)
                                  for w in (kernel, recurrent, bias)])
            dense_kernel, dense_bias = trained.get_layer("logits").get_weights()
            self.dense_kernel = tf.Variable(dense_kernel, trainable=False)
            self.dense_bias = tf.Variable(dense_bias, trainable=False)
            self.vocab_asset = tf.saved_model.Asset(str(vocab_file))
            self.char_to_id = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                self.vocab_asset, tf.int64, 0, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, delimiter="\t"), -1)
            self.id_to_char = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                self.vocab_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.int64, 0, delimiter="\t"), 0)
            for name, options in GENERATE_SIGNATURES.items():
                setattr(self, name, self._signature(options))

        def _one_step(self, ids, h, c):
            """ids (B,) -> logits (B, V) and the new h, c (L, B, U)."""
            x = tf.gather(self.embedding, ids)
            new_h, new_c = [], []
            for index, (kernel, recurrent, bias) in enumerate(self.lstm):
                s = tf.sigmoid(tf.matmul(x, kernel) + tf.matmul(h[index], recurrent) + bias)
                x, c_next = lstm_step.cell_update(*tf.split(s, lstm_step.GATES, axis=1), c[index])
                new_h.append(x)
                new_c.append(c_next)
            return tf.matmul(x, self.dense_kernel) + self.dense_bias, tf.stack(new_h), tf.stack(new_c)

        def _feed(self, ids, h, c):
            """ids (B, T): logits (B, T, V) after each id, and the final state."""
            steps = tf.shape(ids)[1]
            out = tf.TensorArray(tf.float32, size=steps)

            def body(t, out, h, c):
                logits, h, c = self._one_step(ids[:, t], h, c)
                return t + 1, out.write(t, logits), h, c

            _, out, h, c = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), out, h, c))
            return tf.transpose(out.stack(), [1, 0, 2]), h, c

        def _feed_last(self, ids, h, c):
            """ids (B, T >= 1): the logits after the last id (B, V), and the final state. Memory does not grow with
            T: keeping every step's logits, as _feed does, took 0.7 GB for a 100,000-character prime (61 symbols)."""
            first, h, c = self._one_step(ids[:, 0], h, c)

            def body(t, last, h, c):
                return t + 1, *self._one_step(ids[:, t], h, c)

            _, last, h, c = tf.while_loop(lambda t, *_: t < tf.shape(ids)[1], body, (tf.constant(1), first, h, c))
            return last, h, c

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"),
                                      tf.TensorSpec([layers, None, config.units], tf.float32, name="h"),
                                      tf.TensorSpec([layers, None, config.units], tf.float32, name="c")])
        def step(self, ids, h, c):
            """Feed ids (batch, T >= 1) from state (h, c) (layers, batch, units; zeros to start)."""
            checks = [tf.debugging.Assert(tf.shape(ids)[1] > 0, ["ids must hold at least one step: (batch, T >= 1)"]),
                      tf.debugging.Assert((tf.shape(h)[1] == tf.shape(ids)[0]) & (tf.shape(c)[1] == tf.shape(ids)[0]),
                                          ["h and c must hold one row per row of ids: (layers, batch, units)"])]
            with tf.control_dependencies(checks):  # T = 0 would fail later, in the loop's TensorArray; a batch of
                ids = tf.identity(ids)  # one against states of 3 was broadcast
            logits, h, c = self._feed(ids, h, c)
            return {"logits": logits, "h": h, "c": c}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids"),
                                      tf.TensorSpec([layers, None, config.units], tf.float32, name="h"),
                                      tf.TensorSpec([layers, None, config.units], tf.float32, name="c")])
        def next_logits(self, ids, h, c):
            """One character per stream, no loop: the form TFLite/LiteRT converts."""
            # A state of another batch than ids was broadcast (3 rows out for 1 id). LiteRT drops asserts; a
            # reshape to the batch of ids fails there too.
            rows = [layers, tf.shape(ids)[0], config.units]
            logits, h, c = self._one_step(ids, tf.reshape(h, rows), tf.reshape(c, rows))
            return {"logits": logits, "h": h, "c": c}

        def _generate(self, prime, length, temperature, seed, max_repeat=None, **cut_offs):
            """prime followed by length sampled characters (characters the model never saw are dropped); cut_offs:
            choose_tf's filters."""
            # The command line's rules: refused, not read as something else (-1 was greedy, -5 characters none).
            with tf.control_dependencies(_rule_checks(temperature=temperature, length=length, seed=seed)):
                length, temperature = tf.identity(length), tf.identity(temperature)  # before the TensorArray
            # A batch of primes passes the scalar signature of a loaded SavedModel and was read as one text.
            prime = tf.ensure_shape(prime, [], name="prime_must_be_one_string")
            ids = self.char_to_id.lookup(tf.cast(tf.strings.unicode_decode(prime, "UTF-8"), tf.int64))
            ids = tf.cast(tf.boolean_mask(ids, ids >= 0), tf.int32)
            known = tf.strings.unicode_encode(tf.cast(self.id_to_char.lookup(tf.cast(ids, tf.int64)), tf.int32),
                                              "UTF-8")
            context = tf.cond(tf.size(ids) > 0, lambda: ids, lambda: tf.constant([start_id], tf.int32))
            zeros = tf.zeros([layers, 1, config.units])
            last, h, c = self._feed_last(context[None, :], zeros, zeros)
            out = tf.TensorArray(tf.int32, size=length)
            temperatures = tf.fill([1], temperature)  # 0: always the most likely
            # The repeat guard, as textgen's engine keeps it: the last id and how many times in a row it has come,
            # the prime's own trailing run included.
            last_id = context[-1:]
            differs = tf.not_equal(context, last_id)
            run = tf.size(context) - 1 - tf.reduce_max(tf.where(differs, tf.range(tf.size(context)), -1))

            def body(t, out, last, h, c, last_id, run):
                if max_repeat is not None:  # a character that has come max_repeat times in a row cannot come again
                    blocked = (max_repeat > 0) & (run >= max_repeat)
                    last = tf.where(blocked & tf.equal(tf.range(len(vocab)), last_id)[None, :], float("-inf"), last)
                uniform = tf.random.stateless_uniform([1], seed=tf.stack([seed, tf.cast(t, tf.int64)]))
                chosen = sampling.choose_tf(last, tf.minimum(uniform, sampling.U_MAX), temperatures, **cut_offs)
                run = tf.where(tf.equal(chosen[0], last_id[0]), run + 1, 1)
                last, h, c = self._one_step(chosen, h, c)
                return t + 1, out.write(t, chosen[0]), last, h, c, chosen, run

            _, out, *_ = tf.while_loop(lambda t, *_: t < length, body,
                                       (tf.constant(0), out, last, h, c, last_id, run))
            chars = self.id_to_char.lookup(tf.cast(out.stack(), tf.int64))
            return {"text": known + tf.strings.unicode_encode(tf.cast(chars, tf.int32), "UTF-8")}

        def _signature(self, options: tuple):
            """A generate signature taking options (names of sampling.FILTERS) after prime, length, temperature and
            seed: 0 as top_k, 1 as top_p, 0 as min_p or max_repeat filter nothing."""
            specs = generate_inputs + [tf.TensorSpec([], sampling.FILTER_RULES[name].dtype, name=name)
                                       for name in options]

            def generate(prime, length, temperature, seed, *values):
                filters = dict(zip(options, values))
                _rule_checks(**filters)
                for name, off in NO_FILTER.items():  # outside the option's range: what keeps every token instead
                    if name in filters:
                        keep_all = sampling.FILTER_RULES[name].keep_all(len(vocab))
                        filters[name] = tf.where(tf.equal(filters[name], off), keep_all, filters[name])
                return self._generate(prime, length, temperature, seed, **filters)

            return tf.function(generate, input_signature=specs)

    return Serving()


NO_FILTER = {"top_k": 0}  # the exported signatures' value for "no filter" outside the option's own range

# The SavedModel's generate signatures, each with the sampling options it takes after prime, length, temperature and
# seed. A signature is fixed once exported (its callers feed every input): a new filter gets a new signature, which
# takes every filter so far.
GENERATE_SIGNATURES = {"generate": (), "generate_filtered": ("top_k", "top_p", "min_p"),
                       "generate_guarded": ("top_k", "top_p", "min_p", "max_repeat")}


def _rule_checks(**values) -> list:
    """An assertion per scalar tensor in values that it lies in SampleConfig's range for its option, with the
    command line's message ("temperature must be in [0, 1e+06]")."""
    import tensorflow as tf

    checks = []
    for name, value in values.items():
        rule = dataclasses.replace(rules(SampleConfig)[name], many=False)
        valid = tf.constant(True) if rule.integer else tf.math.is_finite(value)
        if rule.low is not None:
            valid &= value > rule.low if rule.low_open else value >= rule.low
        if rule.high is not None:
            valid &= value < rule.high if rule.high_open else value <= rule.high
        message = f"{name} must be in {rule.span()}"
        if name in NO_FILTER:
            valid |= tf.equal(value, NO_FILTER[name])
            message = f"{name} must be {NO_FILTER[name]} (no filter) or in {rule.span()}"
        checks.append(tf.debugging.Assert(valid, [message]))
    return checks


def _write_keras(meta, trained, out: Path, serving) -> list[Path]:
    model = stock_model(meta, trained)
    model.save(out / "model.keras")
    return [out / "model.keras"]


def _vocab_asset(meta, out: Path) -> Path:
    vocab_file = out / "vocab.tsv"  # becomes the SavedModel's asset; removed when the export is complete
    vocab_file.write_text("".join(f"{ord(ch)}\n" for ch in meta.vocab.chars), encoding="utf-8")
    return vocab_file


def _write_savedmodel(meta, trained, out: Path, serving) -> list[Path]:
    import tensorflow as tf

    module = serving()
    signatures = {name: getattr(module, name) for name in GENERATE_SIGNATURES}
    tf.saved_model.save(module, str(out / "savedmodel"),
                        signatures={"serving_default": module.generate, **signatures, "step": module.step})
    return [out / "savedmodel"]


def _write_litert(meta, trained, out: Path, serving) -> list[Path]:
    import tensorflow as tf

    config = meta.model
    module = serving()
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


# Each writer gets serving(): the SavedModel and LiteRT serving module, built on first use, once per export.
WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "litert": _write_litert}


def export(run_dir: Path, output: Path, formats: tuple[str, ...] = ("keras", "savedmodel"),
           overwrite: bool = False, loaded: Optional[tuple] = None) -> list[Path]:
    """Write the run's best checkpoint, or the (model, metadata) it was loaded as (a TextModel's: the checkpoint
    it loaded, whatever a training has saved since), in each of formats (names of EXPORT_FORMATS, or "all") under
    output; return the paths written."""
    from textgen.checkpoint import load_model

    # As the user means it: x/missing/.. is x, which every check below must see (the system's own lookup of
    # x/missing/.. fails, so x would pass as absent and then be replaced).
    output = Path(os.path.normpath(output))
    formats = EXPORT_FORMATS if "all" in formats else tuple(dict.fromkeys(formats))
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise TextgenError(f"--format must be among {', '.join(EXPORT_FORMATS)} or all, got "
                           f"{', '.join(unknown) or 'none'}")
    if Path.cwd().resolve().is_relative_to(output.resolve()):  # it is replaced as a whole: never under our feet
        raise TextgenError(f"--output {output} is the current directory or holds it; choose a directory for the "
                           "export, such as exports/NAME")
    # What --overwrite may never replace is refused first, so that no message suggests it in vain.
    if output.exists() and not output.is_dir():
        raise TextgenError(f"{output} is a file; choose a directory for --output")
    foreign = sorted(entry.name for entry in output.iterdir() if entry.name not in EXPORT_ENTRIES) \
        if output.is_dir() else []
    if foreign:  # --overwrite replaces an earlier export, never a directory of other things (a run, the checkpoints)
        raise TextgenError(f"{output} is not an earlier export (it holds {', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory for --output")
    if output.exists() and not overwrite and any(output.iterdir()):  # an empty directory has nothing to lose
        raise TextgenError(f"{output} already exists; pass --overwrite to replace it or choose another --output")
    trained, meta = loaded or load_model(Path(run_dir), batch_size=1)
    target = output.resolve()  # through a link named as --output: the link stays and shows the new export
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way (corpus.txt/x), or a directory we may not write in
        raise TextgenError(f"cannot create the directory {target.parent} for --output "
                           f"({error.strerror or error}); choose another --output") from None
    # An empty directory (a mount point, a shared folder with its owner and mode) is filled, not replaced: the
    # export is built inside it, where its files can be renamed into place.
    fills = target.is_dir() and not any(target.iterdir())
    building = target / f".tmp-export-{os.getpid()}" if fills else target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    serving = functools.cache(lambda: _serving_module(meta, trained, _vocab_asset(meta, building)))
    try:
        building.mkdir()
        written = []
        for name in formats:
            try:
                paths = WRITERS[name](meta, trained, building, serving)
            except OSError:
                raise
            except Exception as error:  # converters raise many types; the user needs the format and the reason
                raise TextgenError(f"could not export the {name} format ({_reason(error)}); nothing was "
                                   "written") from None
            written += [output / path.relative_to(building) for path in paths]
        (building / "vocab.tsv").unlink(missing_ok=True)  # the SavedModel holds its own copy in its assets
        (building / "vocab.json").write_text(json.dumps(dict(
            chars=list(meta.vocab.chars), unicode_form=meta.vocab.unicode_form, run=Path(run_dir).name,
            epoch=meta.state.epoch,
            val_loss=meta.state.val_loss, model=meta.model.to_dict(), textgen_version=meta.textgen_version),
            ensure_ascii=False, indent=1), encoding="utf-8")
        _fill_directory(building, target) if fills else _replace_directory(building, target)
    except OSError as error:
        raise TextgenError(f"could not write the export to {output} ({error.strerror or error}); "
                           "nothing was replaced") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return written + [output / "vocab.json"]


def _fill_directory(new: Path, target: Path) -> None:
    """Move new's entries into the empty directory target, which holds new; on a failure, take them out again."""
    moved = []
    try:
        for entry in sorted(new.iterdir()):
            os.replace(entry, target / entry.name)
            moved.append(target / entry.name)
    except OSError:
        for path in moved:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def _replace_directory(new: Path, target: Path) -> None:
    """Put new in target's place; an old target is moved aside first and removed only once new is in."""
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)

