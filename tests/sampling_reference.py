"""An independent NumPy implementation of textgen.sampling's rule, and the TF rule run on its own.

The tests compare textgen.sampling.choose_tf (what the compiled engine runs) against :func:`choose`.
"""

from __future__ import annotations

import numpy as np

from textgen import sampling
from textgen.sampling import check_sample_option, choose_tf, clamp_uniforms, temperatures


def normalize_filters(top_k, top_p, vocab_size: int) -> tuple[int | None, float | None]:
    """Validate top_k / top_p; None for filters that cannot cut anything (k >= V, p >= 1)."""
    if top_k is not None:
        check_sample_option("top_k", top_k)
        top_k = None if top_k >= vocab_size else int(top_k)
    if top_p is not None:
        check_sample_option("top_p", top_p)
        top_p = None if top_p >= 1.0 else float(top_p)
    return top_k, top_p


def choose(logits, uniforms, temperature, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """NumPy reference: pick one id per row of ``logits`` (N, V). Returns (N,) int64 ids."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, V), got shape {logits.shape}")
    rows, vocab = logits.shape
    u = clamp_uniforms(uniforms).reshape(rows)
    temp = temperatures(temperature, rows)
    top_k, top_p = normalize_filters(top_k, top_p, vocab)

    greedy = temp == 0
    safe_t = np.where(greedy, np.float32(1), temp)
    scaled = (logits - logits.max(axis=1, keepdims=True)) / safe_t[:, None]
    weights = np.exp(scaled)
    if top_k is not None or top_p is not None:
        ordered = -np.sort(-scaled, axis=1)  # descending
        kept = np.full(rows, vocab)
        if top_k is not None:
            kept = np.minimum(kept, top_k)
        if top_p is not None:
            sorted_w = np.exp(ordered)
            if top_k is not None:
                sorted_w[:, top_k:] = 0
            total = sorted_w.sum(axis=1, keepdims=True, dtype=np.float32)
            before = np.cumsum(sorted_w, axis=1, dtype=np.float32) - sorted_w  # exclusive cumsum
            kept = np.minimum(kept, (before < np.float32(top_p) * total).sum(axis=1))
        cutoff = ordered[np.arange(rows), kept - 1]
        weights = np.where(scaled >= cutoff[:, None], weights, np.float32(0))
    if min_p is not None:  # probability ratio to the most likely token, computed the long way round
        probability = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
        ratio = probability / probability.max(axis=1, keepdims=True)
        weights = np.where(ratio >= np.float32(min_p), weights, np.float32(0))
    cdf = np.cumsum(weights, axis=1, dtype=np.float32)
    threshold = u * cdf[:, -1]
    sampled = (cdf <= threshold[:, None]).sum(axis=1)
    # sampled == vocab: the filters kept nothing (a rule added after top-k/top-p may): the likeliest, as choose_tf
    return np.where(greedy | (sampled >= vocab), logits.argmax(axis=1), sampled).astype(np.int64)


_COMPILED: dict = {}


def choose_compiled(logits, uniforms, temperature, jit_compile=True, **filters) -> np.ndarray:
    """Run :func:`choose_tf` as its own compiled function (the arguments of :func:`choose`): each filter given that
    can change the draw is fed as a tensor (every one of sampling.RULE_FILTERS, a new one too); the others are left
    out."""
    import tensorflow as tf

    logits = np.asarray(logits, dtype=np.float32)
    rows, vocab = logits.shape
    u = clamp_uniforms(uniforms).reshape(rows)
    temp = temperatures(temperature, rows)
    filters["top_k"], filters["top_p"] = normalize_filters(filters.get("top_k"), filters.get("top_p"), vocab)
    used = tuple(name for name in sampling.RULE_FILTERS if filters.get(name) is not None)
    key = (used, bool(jit_compile))
    if key not in _COMPILED:

        @tf.function(jit_compile=jit_compile)
        def run(lg, un, tp, values):
            return choose_tf(lg, un, tp, **dict(zip(used, values)))

        _COMPILED[key] = run
    values = [tf.constant(filters[name], sampling.FILTER_RULES[name].dtype) for name in used]
    out = _COMPILED[key](tf.constant(logits), tf.constant(u), tf.constant(temp), values)
    return out.numpy().astype(np.int64)
