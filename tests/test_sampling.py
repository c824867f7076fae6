"""The sampling rule (textgen.sampling): NumPy reference and the TF version the compiled loop uses."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
import pytest

import sampling_reference as oracle
from textgen import sampling

# Fixed logits: one row with a clear order and a spread of probabilities.
LOGITS = np.array([1.3, -0.2, 2.9, 0.4, 2.1, -1.5, 0.0, 1.7, -0.7, 0.9], dtype=np.float32)
V = LOGITS.size
ORDER = np.argsort(-LOGITS, kind="stable")  # best first


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def draws(n, temperature, seed=0, **filters):
    rng = np.random.default_rng(seed)
    logits = np.broadcast_to(LOGITS, (n, V))
    return oracle.choose(logits, rng.random(n), temperature, **filters)


def test_greedy_is_argmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 37)).astype(np.float32) * 3
    u = rng.random(500)
    expected = logits.argmax(axis=1)
    for filters in ({}, {"top_k": 3}, {"top_p": 0.5}):
        np.testing.assert_array_equal(oracle.choose(logits, u, 0.0, **filters), expected)
        np.testing.assert_array_equal(oracle.choose_compiled(logits, u, 0.0, **filters), expected)
    # per-row temperatures: rows at 0 are greedy, the others are not all greedy
    temps = np.where(np.arange(500) % 2 == 0, 0.0, 5.0)
    picked = oracle.choose(logits, u, temps)
    np.testing.assert_array_equal(picked[::2], expected[::2])
    assert np.mean(picked[1::2] != expected[1::2]) > 0.5


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_stays_in_k_best(k, temperature):
    picked = draws(20000, temperature, top_k=k)
    assert set(np.unique(picked)) == set(ORDER[:k].tolist())  # inside the k best, and all of them used


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_top_p_stays_in_nucleus(p, temperature):
    probs = softmax(LOGITS.astype(np.float64) / temperature)[ORDER]
    size = int(np.searchsorted(np.cumsum(probs), p) + 1)  # smallest prefix whose probability reaches p
    picked = draws(20000, temperature, top_p=p)
    assert set(np.unique(picked)) == set(ORDER[:size].tolist())


def test_top_k_then_top_p():
    # top-p acts on the top-k renormalised distribution
    probs = softmax(LOGITS.astype(np.float64)[ORDER[:5]])
    size = int(np.searchsorted(np.cumsum(probs), 0.8) + 1)
    picked = draws(20000, 1.0, top_k=5, top_p=0.8)
    assert set(np.unique(picked)) == set(ORDER[: min(size, 5)].tolist())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_match_softmax(temperature):
    """Empirical frequencies of n draws match softmax(logits / T).

    Tolerance: every token's frequency within 5 standard errors, sqrt(p (1 - p) / n), of its
    probability (n = 200000, so at most ~0.0056 absolute); the draws are seeded, so this is exact
    and repeatable, not flaky.
    """
    n = 200_000
    expected = softmax(LOGITS.astype(np.float64) / temperature)
    freq = np.bincount(draws(n, temperature, seed=7), minlength=V) / n
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9
    assert np.all(np.abs(freq - expected) <= tolerance), (freq, expected)


def test_ties_at_the_cut_off_are_kept():
    logits = np.array([[0.0, 2.0, 1.0, 2.0, 2.0, -1.0]], dtype=np.float32)
    u = np.linspace(0, 0.999, 200)
    rows = np.repeat(logits, len(u), axis=0)
    for filters, allowed in (({"top_k": 2}, {1, 3, 4}), ({"top_p": 0.3}, {1, 3, 4}), ({"top_k": 4}, {1, 2, 3, 4})):
        reference = oracle.choose(rows, u, 1.0, **filters)
        assert set(np.unique(reference)) == allowed
        np.testing.assert_array_equal(oracle.choose_compiled(rows, u, 1.0, **filters), reference)


def test_uniform_edges():
    logits = LOGITS[None, :]
    assert oracle.choose(logits, [0.0], 1.0)[0] == 0  # first token in id order
    just_below_one = np.nextafter(1.0, 0.0)  # rounds to 1.0 in float32: clamped
    assert oracle.choose(logits, [just_below_one], 1.0)[0] == V - 1
    kept = sorted(ORDER[:3].tolist())
    assert oracle.choose(logits, [0.0], 1.0, top_k=3)[0] == kept[0]
    assert oracle.choose(logits, [just_below_one], 1.0, top_k=3)[0] == kept[-1]
    assert oracle.choose_compiled(logits, [just_below_one], 1.0, top_k=3)[0] == kept[-1]


def test_validation():
    logits = LOGITS[None, :]
    with pytest.raises(ValueError):
        oracle.choose(logits, [0.5], -1.0)
    with pytest.raises(ValueError):
        oracle.choose(logits, [0.5], 1.0, top_k=0)
    with pytest.raises(ValueError):
        oracle.choose(logits, [0.5], 1.0, top_p=0.0)
    with pytest.raises(ValueError):
        oracle.choose(logits, [1.0], 1.0)


def _boundary_margin(logits, u, temperature, top_k, top_p, min_p=None):
    """Smallest relative distance (float64) of any decision in the rule to its threshold."""
    x = logits.astype(np.float64)
    if temperature == 0:
        top = np.sort(x)[-2:]
        return abs(top[1] - top[0])
    s = (x - x.max()) / temperature
    w = np.exp(s)
    order = np.argsort(-s, kind="stable")
    margins = [np.inf]
    kept = len(x)
    if top_k is not None:
        kept = min(kept, top_k)
        margins.append(abs(s[order[top_k - 1]] - s[order[top_k]]))
    if top_p is not None:
        sw = w[order].copy()
        if top_k is not None:
            sw[top_k:] = 0
        total = sw.sum()
        before = np.cumsum(sw) - sw
        margins.append(np.min(np.abs(before - top_p * total)) / total)
        kept = min(kept, int(np.sum(before < top_p * total)))
    cutoff = s[order[kept - 1]]
    ww = np.where(s >= cutoff, w, 0)
    if min_p is not None:  # w is each token's probability ratio to the likeliest
        margins.append(np.min(np.abs(w - min_p)))
        ww = np.where(w >= min_p, ww, 0)
    cdf = np.cumsum(ww)
    margins.append(np.min(np.abs(cdf - u * cdf[-1])) / cdf[-1])
    return min(margins)


# The filters compared between choose_tf and the NumPy reference: a new filter gets cases here.
COMPARED = [{}, {"top_k": 5}, {"top_p": 0.7}, {"top_k": 4, "top_p": 0.5}, {"min_p": 0.1}, {"top_p": 0.9, "min_p": 0.05}]


def test_every_filter_choose_tf_applies_is_compared_with_its_numpy_twin():
    compared = {name for case in COMPARED for name in case}
    assert compared == set(sampling.RULE_FILTERS), ("give the new filter cases in COMPARED, and its rule in "
                                                "tests/sampling_reference.py's choose")


@pytest.mark.parametrize("vocab", [7, 65, 300])  # 300 > PAIRWISE_MAX_VOCAB: the sort-based cut-off
@pytest.mark.parametrize("filters", COMPARED)
def test_tf_matches_numpy(vocab, filters):
    """The compiled TF rule picks the same ids as the NumPy reference on many random cases.

    Disagreement is allowed only where float32 rounding decides (a decision within 1e-4 of its
    threshold: ties aside), and must stay rare.
    """
    rng = np.random.default_rng(vocab + len(filters))
    rows = 4000 if vocab <= sampling.PAIRWISE_MAX_VOCAB else 1000
    scale = rng.choice([0.1, 1.0, 5.0], size=(rows, 1))
    logits = (rng.normal(size=(rows, vocab)) * scale).astype(np.float32)
    u = rng.random(rows)
    temps = rng.choice([0.0, 0.3, 1.0, 2.5], size=rows)
    reference = oracle.choose(logits, u, temps, **filters)
    compiled = oracle.choose_compiled(logits, u, temps, **filters)
    assert len(np.unique(reference)) > min(vocab, 5)
    bad = np.flatnonzero(reference != compiled)
    assert len(bad) <= rows // 1000
    uf = sampling.clamp_uniforms(u).astype(np.float64)
    for row in bad:
        margin = _boundary_margin(logits[row], uf[row], temps[row], filters.get("top_k"), filters.get("top_p"),
                                  filters.get("min_p"))
        assert margin < 1e-4, (row, margin)


@pytest.mark.parametrize("vocab", [12, 300])  # the pairwise and the sorted cut-off
def test_stream_filters_equal_the_rule_applied_row_by_row(vocab):
    import tensorflow as tf

    rng = np.random.default_rng(vocab)
    rows = 6
    logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
    u = rng.random(rows)
    temps = np.array([1.0, 0.7, 1.3, 1.0, 0.5, 2.0], np.float32)
    ks = [None, 3, None, 5, 1, None]
    ps = [None, None, 0.6, 0.9, None, 0.3]
    ms = [0.1, None, None, 0.05, None, 0.3]
    filters = sampling.StreamFilters.of(rows, vocab, top_k=ks, top_p=ps, min_p=ms)
    assert filters.in_use(vocab) == {"top_k", "top_p", "min_p"}
    got = sampling.choose_tf(tf.constant(logits), tf.constant(sampling.clamp_uniforms(u)), tf.constant(temps),
                             **{name: tf.constant(getattr(filters, name)) for name in sampling.RULE_FILTERS}).numpy()
    for row in range(rows):
        expected = oracle.choose(logits[row:row + 1], u[row:row + 1], temps[row], top_k=ks[row], top_p=ps[row],
                                 min_p=ms[row])
        assert got[row] == expected[0], row


def test_min_p_drops_characters_below_a_fraction_of_the_most_likely():
    import tensorflow as tf

    logits = np.log(np.array([[0.50, 0.30, 0.12, 0.05, 0.03]], np.float32))  # probabilities at temperature 1
    u = np.linspace(0, 0.999, 400)
    rows = np.repeat(logits, len(u), axis=0)
    for min_p, allowed in ((0.2, {0, 1, 2}), (0.5, {0, 1}), (0.0, {0, 1, 2, 3, 4}), (1.0, {0})):
        picked = oracle.choose(rows, u, 1.0, min_p=min_p)
        assert set(np.unique(picked)) == allowed, min_p
        filters = sampling.StreamFilters.of(len(u), 5, min_p=min_p)
        m = filters.min_p if "min_p" in filters.in_use(5) else None
        compiled = sampling.choose_tf(tf.constant(rows), tf.constant(sampling.clamp_uniforms(u)),
                                      tf.constant(np.ones(len(u), np.float32)),
                                      min_p=None if m is None else tf.constant(m)).numpy()
        np.testing.assert_array_equal(compiled, picked)
    # After the temperature: at 0.5 the ratios square, 0.12/0.5 = 0.24 -> 0.0576 < 0.2: dropped.
    assert set(np.unique(oracle.choose(rows, u, 0.5, min_p=0.2))) == {0, 1}
    with pytest.raises(ValueError, match=r"--min-p must be in \[0, 1\], got 1.5"):
        sampling.StreamFilters.of(1, 5, min_p=1.5)
    with pytest.raises(ValueError, match=r"--max-repeat must be an integer in \[0, 1e\+09\], got -1"):
        sampling.StreamFilters.of(1, 5, max_repeat=-1)
    assert sampling.StreamFilters.of(3, 5, top_k=[None, 9, 2]).in_use(5) == {"top_k"}  # k >= V cuts nothing
    with pytest.raises(TypeError, match="unknown sampling filters: top_a"):
        sampling.StreamFilters.of(1, 5, top_a=0.5)


@pytest.mark.parametrize("vocab", [40, 300])  # the cut-off without and with sorting (PAIRWISE_MAX_VOCAB)
def test_a_row_without_a_finite_logit_falls_back_to_the_likeliest_under_every_filter(vocab):
    """The sorted cut-off counted no token kept in such a row and gathered at -1: an error outside XLA (an export's
    graph runs without it), a clamped index inside."""
    import tensorflow as tf

    logits = np.full((2, vocab), -np.inf, np.float32)
    logits[1] = np.arange(vocab)  # beside an ordinary row
    for compiled in (False, True):
        choose = tf.function(sampling.choose_tf, jit_compile=compiled)
        ids = choose(tf.constant(logits), tf.constant([0.5, 0.5], tf.float32), tf.constant([1.0, 1.0]),
                     top_k=tf.constant([3, 3]), top_p=tf.constant([0.5, 0.5]), min_p=tf.constant([0.1, 0.1])).numpy()
        assert ids.tolist() == [0, vocab - 1], compiled


@pytest.mark.parametrize("vocab", [40, 300])  # the cut-off without and with sorting (PAIRWISE_MAX_VOCAB)
def test_one_compiled_cut_off_serves_filtered_and_unfiltered_calls(vocab):
    """The loop a server runs carries top-k/top-p for every row and skips the cut-off when no row uses it:
    the same compiled function must give the unfiltered picks then, and the filtered ones when a row asks."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    rows = 8
    logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
    u = rng.random(rows)
    temps = np.full(rows, 1.0, np.float32)
    choose = tf.function(sampling.choose_tf, jit_compile=True)

    def picks(ks, ps):
        k = np.array([vocab if v is None else v for v in ks], np.int32)
        p = np.array([sampling.NO_TOP_P if v is None else v for v in ps], np.float32)
        return choose(tf.constant(logits), tf.constant(sampling.clamp_uniforms(u)), tf.constant(temps),
                      top_k=tf.constant(k), top_p=tf.constant(p)).numpy()

    unfiltered = oracle.choose(logits, u, 1.0)
    np.testing.assert_array_equal(picks([None] * rows, [None] * rows), unfiltered)
    # Two rows whose draw is not their most likely character; filters that keep only that one change them.
    by_k, by_p = np.flatnonzero(unfiltered != logits.argmax(axis=1))[:2]
    ks, ps = [None] * rows, [None] * rows
    ks[by_k], ps[by_p] = 1, 1e-6
    got = picks(ks, ps)
    for row in range(rows):
        expected = oracle.choose(logits[row:row + 1], u[row:row + 1], 1.0, top_k=ks[row], top_p=ps[row])
        assert got[row] == expected[0], row
    np.testing.assert_array_equal(got[[by_k, by_p]], logits[[by_k, by_p]].argmax(axis=1))
    np.testing.assert_array_equal(np.delete(got, [by_k, by_p]), np.delete(unfiltered, [by_k, by_p]))


def test_nothing_left_to_draw_from_gives_the_likeliest_not_an_id_past_the_vocabulary():
    import tensorflow as tf

    # --max-repeat blocks a stream's only remaining character (-inf), or min_p 1 meets a row with no finite logit.
    logits = tf.constant([[-np.inf, -np.inf, -np.inf], [0.0, 2.0, -np.inf]], tf.float32)
    for min_p in (None, tf.constant(1.0)):
        picked = sampling.choose_tf(logits, tf.constant([0.5, 0.999], tf.float32), tf.constant([1.0, 1.0]),
                                    min_p=min_p).numpy()
        assert 0 <= picked[0] < 3 and picked[1] == 1


def test_the_filters_trace_without_an_autograph_warning(caplog):
    """Two lambdas of the same signature on one line of FILTER_RULES made AutoGraph print 9 lines ("could not
    transform <lambda>") on stderr at each first use of top_k in a process, and twice in every export."""
    import logging

    import tensorflow as tf

    filters = sampling.StreamFilters.of(2, 5, top_k=[1, None], top_p=[0.5, None], min_p=[None, 0.1])

    @tf.function
    def choose(logits, uniforms):  # every filter choose_tf applies, a new one too
        return sampling.choose_tf(logits, uniforms, tf.ones([2]),
                                  **{name: tf.constant(getattr(filters, name)) for name in sampling.RULE_FILTERS})

    with caplog.at_level(logging.WARNING):
        choose(tf.zeros([2, 5]), tf.constant([0.5, 0.5]))
    assert not [record.getMessage() for record in caplog.records if "AutoGraph" in record.getMessage()]
