"""The sampling math: logits -> next id.

:func:`choose_tf` is traced into the compiled generation loop (``textgen.engine``); the tests hold an
independent NumPy version of the same rule (tests/sampling_reference.py) and compare the two.

The rule, for one row of logits ``l`` (V,), a uniform ``u`` in [0, 1) and temperature ``T``:

1. ``T == 0``: greedy, the first index of ``max(l)``; ``u`` and every filter are ignored.
2. ``s = (l - max(l)) / T`` and unnormalised weights ``w = exp(s)`` (so softmax(l / T) = w / sum(w)).
3. Cut-off: sort ``s`` descending. top-k keeps the ``k`` best; top-p (nucleus) keeps the smallest
   prefix of that order whose probability reaches ``p`` (after top-k's cut, renormalised -- the
   usual "top-k, then top-p" composition). With ``m`` the kept count, every token with
   ``s >= sorted_s[m - 1]`` is kept, so tokens tied exactly at the cut-off are all kept.
   (For V <= PAIRWISE_MAX_VOCAB the TF version finds the same set without sorting: token j is
   kept iff fewer than k tokens score above it and the probability mass above it is below p.)
4. min-p: a token is also dropped when its probability is below ``min_p`` times the likeliest one's, i.e.
   when ``w < min_p`` (the likeliest has ``w = 1``). This looks at the whole distribution, not at what top-k
   and top-p kept, and never drops the likeliest, so a token always survives.
5. Inverse CDF in token-id order (the fixed order): ``cdf = cumsum(w * keep)``; the answer is the
   first id whose ``cdf`` exceeds ``u * cdf[-1]``. A filter added later that could keep nothing falls back
   to the greedy pick (``choose_tf`` does; so does the NumPy twin).

The repeat guard (``--max-repeat``, :func:`guard_repeats_tf`) is not part of the rule: the engine sets the logit of a
stream's last character to -inf before the rule when the stream has repeated it too often.

Uniforms are used at float32 precision and clamped to ``1 - 2**-23`` (float64 values just below 1
round to 1.0 in float32), which guarantees ``u * total < total`` so the pick is always a kept
token.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from textgen.config import SampleConfig, rules

U_MAX = float(np.float32(1.0 - 2.0**-23))
PAIRWISE_MAX_VOCAB = 256  # choose_tf finds the top-k / top-p cut-off without sorting up to this vocabulary


# SampleConfig's rules, each for one value (the temperature's is for a list): the ranges are declared once, there.
VALUE_RULES = {name: dataclasses.replace(rule, many=False) for name, rule in rules(SampleConfig).items()}


def check_sample_option(name: str, value) -> None:
    """Refuse one value of a sampling option outside SampleConfig's rule for it."""
    VALUE_RULES[name].check(name, value)


NO_TOP_P = 2.0  # a per-row top-p that keeps every token (the probability mass above any token is below 2)


def per_row(value, rows: int) -> list:
    """A filter given as None, a scalar or one value (or None) per row -> one value per row."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * rows
    if len(values) != rows:
        raise ValueError(f"expected one filter value per stream ({rows}), got {len(values)}")
    return values


@dataclasses.dataclass(frozen=True)
class Filter:
    """How the compiled loop takes one filter, one value per stream."""

    dtype: type  # the type the loop takes it in
    keep_all: Callable[[int], float]  # vocabulary size -> the value that keeps every token (a stream without it)
    stored: Callable[[float, int], float]  # (a checked value, vocabulary size) -> the value the loop gets
    acts: Callable  # (values, vocabulary size) -> where a value changes the draw (drops or reweights a token), as
    # NumPy arrays or tensors alike; where it does not, the stream does not use the filter
    by_engine: bool = False  # applied by the engine's loop, not passed to choose_tf: a filter that looks at what the
    # stream produced before (the repeat guard), which the loop carries


# Every filter, once: a new one is an entry here, a field of StreamFilters, a SampleConfig option and a keyword of
# choose_tf (the engine passes it every filter not by_engine), and its strictest value in
# tests/test_generate.STRICTEST. One lambda per line: choose_tf traces acts, and AutoGraph cannot tell two lambdas of
# one signature on one line apart (it printed a 9-line warning instead).
FILTER_RULES = {
    "top_k": Filter(np.int32, lambda vocab: vocab,
                    lambda k, vocab: min(int(k), vocab),
                    lambda k, vocab: k < vocab),
    "top_p": Filter(np.float32, lambda vocab: NO_TOP_P,
                    lambda p, vocab: NO_TOP_P if p >= 1 else float(p),
                    lambda p, vocab: p < 1.0),
    "min_p": Filter(np.float32, lambda vocab: 0.0,
                    lambda m, vocab: float(m),
                    lambda m, vocab: m > 0.0),
    "max_repeat": Filter(np.int32, lambda vocab: 0,
                         lambda n, vocab: int(n),
                         lambda n, vocab: n > 0, by_engine=True),
}
FILTERS = tuple(FILTER_RULES)
# The rule's filters (choose_tf's keywords; the others the engine's loop applies)
RULE_FILTERS = tuple(name for name, rule in FILTER_RULES.items() if not rule.by_engine)


@dataclasses.dataclass(frozen=True)
class StreamFilters:
    """Every filter's value for every one of N streams, as the compiled loop takes them (FILTER_RULES): a stream
    that does not use a filter gets the value that keeps every token."""

    top_k: np.ndarray  # (N,) int32; the vocabulary size keeps every token
    top_p: np.ndarray  # (N,) float32; NO_TOP_P keeps every token
    min_p: np.ndarray  # (N,) float32; 0 keeps every token
    max_repeat: np.ndarray  # (N,) int32; 0: no guard against one character repeated (applied by the engine)

    @classmethod
    def of(cls, rows: int, vocab_size: int, **filters) -> "StreamFilters":
        """Validate filters (names of FILTERS) given as None, a scalar or one value (or None) per stream."""
        if unknown := set(filters) - set(FILTERS):
            raise TypeError(f"unknown sampling filters: {', '.join(sorted(unknown))}")
        columns = {}
        for name, rule in FILTER_RULES.items():
            column = []
            for value in per_row(filters.get(name), rows):
                if value is not None:
                    check_sample_option(name, value)
                column.append(rule.keep_all(vocab_size) if value is None else rule.stored(value, vocab_size))
            columns[name] = np.array(column, rule.dtype)
        return cls(**columns)

    def in_use(self, vocab_size: int) -> frozenset:
        """The names of the filters some stream uses: the compiled loop leaves out the others."""
        return frozenset(name for name, rule in FILTER_RULES.items()
                         if np.any(rule.acts(getattr(self, name), vocab_size)))

    def tensors(self) -> dict:
        import tensorflow as tf

        return {name: tf.constant(getattr(self, name)) for name in FILTERS}


def temperatures(temperature, rows: int) -> np.ndarray:
    """Broadcast a scalar or (rows,) temperature to a float32 (rows,) array and validate it."""
    temp = np.asarray(temperature, dtype=np.float64)
    if temp.ndim > 1 or (temp.ndim == 1 and temp.shape[0] != rows):
        raise ValueError(f"temperature must be a scalar or shape ({rows},), got shape {temp.shape}")
    for value in temp.reshape(-1):
        check_sample_option("temperature", float(value))
    return np.broadcast_to(temp, (rows,)).astype(np.float32)


def clamp_uniforms(uniforms) -> np.ndarray:
    u = np.asarray(uniforms, dtype=np.float64)
    if np.any(u < 0) or np.any(u >= 1):
        raise ValueError("uniforms must lie in [0, 1)")
    return np.minimum(u.astype(np.float32), np.float32(U_MAX))


def choose_tf(logits, uniforms, temperature, *, top_k=None, top_p=None, min_p=None):
    """The rule above in TensorFlow, for use inside a compiled graph (tests/sampling_reference.py has it in NumPy).

    ``logits`` (N, V) float32 tensor, ``uniforms`` (N,) float32 already clamped (see
    :func:`clamp_uniforms`), ``temperature`` (N,) float32. ``top_k`` / ``top_p`` are either None
    (that filter is left out of the graph: a trace-time choice) or tensors (int32 / float32), a scalar
    or one value per row, whose values may change without retracing; a row with k >= V or p >= 1 is
    not filtered. ``min_p`` (None, or a scalar or per-row tensor) also drops every token whose
    probability, after the temperature, is below min_p times the most likely token's; 0 drops nothing.
    Returns (N,) int32 ids.
    """
    import tensorflow as tf

    vocab = tf.shape(logits)[1]
    greedy_ids = tf.argmax(logits, axis=1, output_type=tf.int32)
    greedy = tf.equal(temperature, 0.0)
    safe_t = tf.where(greedy, tf.ones_like(temperature), temperature)
    scaled = (logits - tf.reduce_max(logits, axis=1, keepdims=True)) / safe_t[:, None]
    weights = tf.exp(scaled)
    if top_k is not None or top_p is not None:
        def cut():
            if logits.shape[-1] is not None and logits.shape[-1] <= PAIRWISE_MAX_VOCAB:
                keep = _keep_pairwise(tf, scaled, weights, top_k, top_p)
            else:
                keep = _keep_sorted(tf, scaled, vocab, top_k, top_p)
            return tf.where(keep, weights, tf.zeros_like(weights))

        # The cut-off costs more than the rest of the sampling together (a server's loop carries the filters
        # for every request, mostly unused): skip it at run time when no row asks for it.
        wanted = tf.constant(False)
        for name, value in (("top_k", top_k), ("top_p", top_p)):
            if value is not None:
                wanted |= tf.reduce_any(FILTER_RULES[name].acts(value, vocab))
        weights = tf.cond(wanted, cut, lambda: weights)
    if min_p is not None:  # the most likely token has weight exp(0) = 1, so its probability ratio is the weight
        weights = tf.where(weights >= _column(tf, min_p, tf.float32), weights, tf.zeros_like(weights))
    cdf = tf.cumsum(weights, axis=1)
    threshold = uniforms * cdf[:, -1]
    sampled = tf.reduce_sum(tf.cast(cdf <= threshold[:, None], tf.int32), axis=1)
    # sampled == vocab: nothing was left to draw from (the filters and --max-repeat together excluded every
    # character), so the likeliest. (Testing the total weight instead made 64-stream sampling ~20% slower.)
    return tf.where(greedy | (sampled >= vocab), greedy_ids, sampled)


def guard_repeats_tf(logits, last_id, run, max_repeat):
    """The repeat guard (``--max-repeat``), before the rule: a stream whose last id (N,) has come ``run`` (N,) times
    in a row cannot pick it again once that reaches ``max_repeat`` (scalar or (N,)) > 0. The engine's loop and the
    exported graph both apply it."""
    import tensorflow as tf

    blocked = (max_repeat > 0) & (run >= max_repeat)
    repeat = tf.one_hot(last_id, tf.shape(logits)[1], on_value=True, off_value=False)
    return tf.where(blocked[:, None] & repeat, tf.constant(-np.inf, logits.dtype), logits)


def follow_runs_tf(ids, last_id, run):
    """The run lengths (N,) after ids (N,) follow last_id (N,): one more where a stream picked its last id again."""
    import tensorflow as tf

    return tf.where(tf.equal(ids, last_id), run + 1, tf.ones_like(run))


def _column(tf, value, dtype):
    """A scalar or per-row (N,) filter value as a column that broadcasts against (N, V)."""
    return tf.reshape(tf.cast(value, dtype), [-1, 1])


def _keep_pairwise(tf, scaled, weights, top_k, top_p):
    """Cut-off without a sort, O(V^2) per row: cheaper than a sort for a small vocabulary.

    Token j survives top-k iff fewer than k tokens score strictly higher, and survives top-p iff
    the (top-k-cut) probability mass strictly above it is below p: the same set as the sorted
    prefix rule with its ties-at-the-cut-off-kept threshold.
    """
    above = tf.cast(scaled[:, None, :] > scaled[:, :, None], tf.float32)  # [n, j, i]: i scores above j
    keep = None
    if top_k is not None:
        keep = tf.reduce_sum(above, axis=2) < _column(tf, top_k, tf.float32)
    if top_p is not None:
        w = weights if keep is None else tf.where(keep, weights, tf.zeros_like(weights))
        mass_above = tf.linalg.matvec(above, w)
        in_p = mass_above < _column(tf, top_p, tf.float32) * tf.reduce_sum(w, axis=1, keepdims=True)
        keep = in_p if keep is None else tf.logical_and(keep, in_p)
    return keep


def _keep_sorted(tf, scaled, vocab, top_k, top_p):
    """Cut-off by sorting each row (for large vocabularies): the rule's step 3 as written."""
    ordered = tf.sort(scaled, axis=1, direction="DESCENDING")
    kept = tf.fill(tf.shape(scaled)[:1], vocab)
    if top_k is not None:
        kept = tf.minimum(kept, tf.reshape(tf.cast(top_k, tf.int32), [-1]))
    if top_p is not None:
        sorted_w = tf.exp(ordered)
        if top_k is not None:
            in_k = tf.range(vocab)[None, :] < _column(tf, top_k, tf.int32)
            sorted_w = tf.where(in_k, sorted_w, tf.zeros_like(sorted_w))
        total = tf.reduce_sum(sorted_w, axis=1, keepdims=True)
        before = tf.cumsum(sorted_w, axis=1, exclusive=True)
        in_p = tf.cast(before < _column(tf, top_p, tf.float32) * total, tf.int32)
        kept = tf.minimum(kept, tf.reduce_sum(in_p, axis=1))
    # At least one: a row whose logits are all -inf (a one-character vocabulary under the repeat guard) counts none,
    # and gathering at -1 failed outside XLA (an export's graph) and was clamped inside it.
    cutoff = tf.gather(ordered, tf.maximum(kept, 1) - 1, axis=1, batch_dims=1)
    return scaled >= cutoff[:, None]
