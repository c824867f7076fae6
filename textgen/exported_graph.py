"""The graph an export carries: a tf.Module whose functions take and return the LSTM state explicitly.

``export.py`` writes it as the SavedModel (its ``step`` and generate signatures, config.GENERATE_SIGNATURES) and
converts ``next_logits`` for LiteRT. Only export imports this module, when it runs: it imports TensorFlow at the top.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from textgen import lstm_step, sampling
from textgen.config import GENERATE_SIGNATURES
from textgen.generate import start_symbol

NO_FILTER = {"top_k": 0}  # the exported signatures' value for "no filter" outside the option's own range

GENERATE_INPUTS = [tf.TensorSpec([], tf.string, name="prime"), tf.TensorSpec([], tf.int32, name="length"),
                   tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int64, name="seed")]


def rule_checks(**values) -> list:
    """An assertion per scalar tensor in values that it lies in SampleConfig's range for its option, with the
    command line's message ("temperature must be in [0, 1e+06]")."""
    checks = []
    for name, value in values.items():
        rule = sampling.VALUE_RULES[name]
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


class ExportedGraph(tf.Module):
    """The run's weights as constants of the graph (the candidate gate prescaled, as lstm_step computes it) and the
    vocabulary as an asset, with stateless functions: step and next_logits (ids and state in, logits and state out)
    and one generate function per entry of GENERATE_SIGNATURES."""

    def __init__(self, meta, trained, vocab_file: Path):
        super().__init__(name="textgen")
        config, self.vocab = meta.model, meta.vocab
        self.layers, self.units = config.layers, config.units
        self.start_id = self.vocab.chars.index(start_symbol(self.vocab))
        self.zero_state = tf.zeros([config.layers, 1, config.units])
        self.embedding = tf.Variable(trained.get_layer("embedding").get_weights()[0], trainable=False)
        self.lstm = []
        for index in range(config.layers):
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
        states = [tf.TensorSpec([config.layers, None, config.units], tf.float32, name=name) for name in "hc"]
        self.step = tf.function(self._step, input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"),
                                                             *states])
        self.next_logits = tf.function(self._next_logits, input_signature=[tf.TensorSpec([None], tf.int32, name="ids"),
                                                                           *states])
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

    def _step(self, ids, h, c):
        """Feed ids (batch, T >= 1) from state (h, c) (layers, batch, units; zeros to start)."""
        checks = [tf.debugging.Assert(tf.shape(ids)[1] > 0, ["ids must hold at least one step: (batch, T >= 1)"]),
                  tf.debugging.Assert((tf.shape(h)[1] == tf.shape(ids)[0]) & (tf.shape(c)[1] == tf.shape(ids)[0]),
                                      ["h and c must hold one row per row of ids: (layers, batch, units)"]),
                  # (else "indices[0] = 103 is not in [0, 103)", at a node named while/Gather)
                  tf.debugging.Assert(tf.reduce_all((ids >= 0) & (ids < len(self.vocab))), [
                      f"ids must be in [0, {len(self.vocab)}): an id is a place in the chars of vocab.json"])]
        with tf.control_dependencies(checks):  # T = 0 would fail later, in the loop's TensorArray; a batch of
            ids = tf.identity(ids)  # one against states of 3 was broadcast
        logits, h, c = self._feed(ids, h, c)
        return {"logits": logits, "h": h, "c": c}

    def _next_logits(self, ids, h, c):
        """One character per stream, no loop: the form TFLite/LiteRT converts."""
        # A state of another batch than ids was broadcast (3 rows out for 1 id). LiteRT drops asserts; a
        # reshape to the batch of ids fails there too.
        rows = [self.layers, tf.shape(ids)[0], self.units]
        logits, h, c = self._one_step(ids, tf.reshape(h, rows), tf.reshape(c, rows))
        return {"logits": logits, "h": h, "c": c}

    def _generate(self, prime, length, temperature, seed, max_repeat=None, **cut_offs):
        """prime followed by length sampled characters (characters the model never saw are dropped); cut_offs:
        choose_tf's filters."""
        # The command line's rules: refused, not read as something else (-1 was greedy, -5 characters none).
        with tf.control_dependencies(rule_checks(temperature=temperature, length=length, seed=seed)):
            length, temperature = tf.identity(length), tf.identity(temperature)  # before the TensorArray
        # A batch of primes passes the scalar signature of a loaded SavedModel and was read as one text.
        prime = tf.ensure_shape(prime, [], name="prime_must_be_one_string")
        ids = self.char_to_id.lookup(tf.cast(tf.strings.unicode_decode(prime, "UTF-8"), tf.int64))
        ids = tf.cast(tf.boolean_mask(ids, ids >= 0), tf.int32)
        known = tf.strings.unicode_encode(tf.cast(self.id_to_char.lookup(tf.cast(ids, tf.int64)), tf.int32),
                                          "UTF-8")
        # generate.reading_context: the start symbol first, unless the prime starts with it
        start = tf.constant([self.start_id], tf.int32)
        context = tf.cond(tf.reduce_any(tf.equal(ids[:1], self.start_id)), lambda: ids,
                          lambda: tf.concat([start, ids], axis=0))
        last, h, c = self._feed_last(context[None, :], self.zero_state, self.zero_state)
        out = tf.TensorArray(tf.int32, size=length)
        temperatures = tf.fill([1], temperature)  # 0: always the most likely
        # The repeat guard, as textgen's engine keeps it: the last id and how many times in a row it has come,
        # the prime's own trailing run included.
        last_id = tf.reshape(context[-1], [1])
        differs = tf.not_equal(context, last_id)
        run = tf.size(context) - 1 - tf.reduce_max(tf.where(differs, tf.range(tf.size(context)), -1))
        run = tf.reshape(run, [1])

        def body(t, out, last, h, c, last_id, run):
            if max_repeat is not None:
                last = sampling.guard_repeats_tf(last, last_id, run, max_repeat)
            uniform = tf.random.stateless_uniform([1], seed=tf.stack([seed, tf.cast(t, tf.int64)]))
            chosen = sampling.choose_tf(last, tf.minimum(uniform, sampling.U_MAX), temperatures, **cut_offs)
            run = sampling.follow_runs_tf(chosen, last_id, run)
            last, h, c = self._one_step(chosen, h, c)
            return t + 1, out.write(t, chosen[0]), last, h, c, chosen, run

        _, out, *_ = tf.while_loop(lambda t, *_: t < length, body,
                                   (tf.constant(0), out, last, h, c, last_id, run))
        chars = self.id_to_char.lookup(tf.cast(out.stack(), tf.int64))
        return {"text": known + tf.strings.unicode_encode(tf.cast(chars, tf.int32), "UTF-8")}

    def _signature(self, options: tuple):
        """A generate signature taking options (names of sampling.FILTERS) after prime, length, temperature and
        seed: 0 as top_k, 1 as top_p, 0 as min_p or max_repeat filter nothing."""
        specs = GENERATE_INPUTS + [tf.TensorSpec([], sampling.FILTER_RULES[name].dtype, name=name)
                                   for name in options]

        def generate(prime, length, temperature, seed, *values):
            filters = dict(zip(options, values))
            rule_checks(**filters)
            for name, off in NO_FILTER.items():  # outside the option's range: what keeps every token instead
                if name in filters:
                    keep_all = sampling.FILTER_RULES[name].keep_all(len(self.vocab))
                    filters[name] = tf.where(tf.equal(filters[name], off), keep_all, filters[name])
            return self._generate(prime, length, temperature, seed, **filters)

        return tf.function(generate, input_signature=specs)

