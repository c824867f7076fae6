"""The compiled generation loop (textgen.engine) against the stateful Keras model it replaces."""

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
import pytest

from textgen.config import ModelConfig
from textgen.engine import CHUNK, Engine, StreamHistory
from textgen.model import build_model, reset_states

CONFIG = ModelConfig(vocab_size=23, embedding_dim=8, units=16, layers=2, dropout=0.1)
TOL = 1e-5


@pytest.fixture(scope="module")
def weights():
    """Random weights, scaled up so gates saturate sometimes and logits are far from uniform."""
    rng = np.random.default_rng(0)
    model = build_model(CONFIG, 1)
    return [rng.normal(scale=0.6, size=w.shape).astype(np.float32) for w in model.get_weights()]


@pytest.fixture(scope="module")
def keras1(weights):
    model = build_model(CONFIG, 1)
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def engine1(keras1):
    return Engine.from_model(keras1, 1)


@pytest.fixture(scope="module")
def engine4(weights):
    model = build_model(CONFIG, 4)  # weights are read whatever the model's batch size
    model.set_weights(weights)
    return Engine.from_model(model, 4)


def keras_logits(model, ids):
    """Feed ids one at a time to the stateful batch-1 Keras model; (T, V) logits."""
    return np.stack([np.asarray(model(np.array([[i]]), training=False))[0, -1] for i in ids])


def text(seed, length):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, size=length)


def test_logits_match_keras_step_by_step(keras1, engine1):
    ids = text(1, 40)
    reset_states(keras1)
    expected = keras_logits(keras1, ids)
    engine1.reset()
    got = np.concatenate(
        [engine1.logits(ids[None, a:b])[0] for a, b in [(0, 1), (1, 2), (2, 9), (9, 10), (10, 40)]]
    )
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOL
    assert np.abs(engine1.last_logits[0] - expected[-1]).max() < TOL


def test_logits_after_prime_match_keras(keras1, engine1):
    prime, cont = text(2, 13), text(3, 70)  # 70 > 64: crosses forced-loop buckets
    engine1.prime(text(4, 5)[None])  # prime must zero whatever state was there
    engine1.prime(prime[None])
    reset_states(keras1)
    expected_prime = keras_logits(keras1, prime)
    assert np.abs(engine1.last_logits[0] - expected_prime[-1]).max() < TOL
    expected = keras_logits(keras1, cont)
    got = engine1.logits(cont[None])[0]
    assert np.abs(got - expected).max() < TOL


def test_greedy_sample_is_argmax_path(keras1, engine1):
    prime = text(5, 9)
    engine1.prime(prime[None])
    got = engine1.sample(30, temperature=0.0, rng=np.random.default_rng(0))[0]
    reset_states(keras1)
    last = keras_logits(keras1, prime)[-1]
    expected = []
    for _ in range(30):
        expected.append(int(np.argmax(last)))
        last = keras_logits(keras1, expected[-1:])[-1]
    np.testing.assert_array_equal(got, expected)
    # top_k=1 or a tiny top_p at T=1 is also greedy (the filters reach the loop)
    for filters in ({"top_k": 1}, {"top_p": 1e-6}):
        engine1.prime(prime[None])
        again = engine1.sample(30, temperature=1.0, rng=np.random.default_rng(1), **filters)[0]
        np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize("filters", [{}, {"top_k": 5, "top_p": 0.9}])
def test_chunked_equals_whole(engine4, filters):
    prime = np.stack([text(10 + i, 6) for i in range(4)])
    length, split = CHUNK + 40, 7  # also crosses the compiled loop's chunk boundary
    engine4.prime(prime)
    whole = engine4.sample(length, temperature=1.0, rng=np.random.default_rng(42), **filters)
    engine4.prime(prime)
    rng = np.random.default_rng(42)
    first = engine4.sample(split, temperature=1.0, rng=rng, **filters)
    second = engine4.sample(length - split, temperature=1.0, rng=rng, **filters)
    assert whole.shape == (4, length)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), whole)


def test_seeded_runs_repeat(engine1, weights):
    prime = text(6, 8)[None]
    runs = []
    for seed in (3, 3, 4):
        engine1.prime(prime)
        runs.append(engine1.sample(200, temperature=1.0, rng=np.random.default_rng(seed)))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    model = build_model(CONFIG, 1)
    model.set_weights(weights)
    fresh = Engine.from_model(model, 1)  # a new engine: same answer
    fresh.prime(prime)
    np.testing.assert_array_equal(fresh.sample(200, temperature=1.0, rng=np.random.default_rng(3)), runs[0])


def test_engines_of_the_same_shapes_share_compiled_loops_and_keep_their_own_weights(keras1, engine1):
    from textgen import engine as engine_module

    prime = text(9, 12)
    engine1.prime(prime[None])
    engine1.sample(20, temperature=1.0, rng=np.random.default_rng(0))
    compiled = dict(engine_module._SHARED)
    other_weights = [np.asarray(w) * 0.5 for w in keras1.get_weights()]  # a second model, same shapes
    other = build_model(CONFIG, 1)
    other.set_weights(other_weights)
    second = Engine.from_model(other, 1)
    second.prime(prime[None])
    second.sample(20, temperature=1.0, rng=np.random.default_rng(0))
    assert engine_module._SHARED == compiled  # nothing compiled again, nothing kept per engine
    wider = Engine(second.weights, 4)  # engines of one model hold its weights once
    assert all(a is b for a, b in zip(wider._weights, second._weights))
    reset_states(other)
    expected = keras_logits(other, prime)
    second.prime(prime[None])
    assert np.abs(second.last_logits[0] - expected[-1]).max() < TOL  # its own weights, not engine1's
    engine1.prime(prime[None])
    assert np.abs(engine1.last_logits[0] - expected[-1]).max() > 1e-3


def test_streams_are_independent(engine4):
    engine4.prime(np.tile(text(7, 5), (4, 1)))  # same prime everywhere
    out = engine4.sample(60, temperature=1.0, rng=np.random.default_rng(0))
    assert out.shape == (4, 60)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(out[i], out[j])


def test_stream_matches_single_stream_run(engine1, engine4):
    primes = np.stack([text(20 + i, 11) for i in range(4)])
    engine4.prime(primes)
    many = engine4.sample(40, temperature=0.0, rng=np.random.default_rng(0))
    for i in range(4):
        engine1.prime(primes[i : i + 1])
        np.testing.assert_array_equal(many[i], engine1.sample(40, temperature=0.0, rng=np.random.default_rng(9))[0])


def test_a_wide_engine_gathering_table_columns_matches_the_single_stream_run(engine1, keras1):
    wide = Engine.from_model(keras1, 16)
    assert wide._gathers_columns and not engine1._gathers_columns
    primes = np.stack([text(40 + i, 9) for i in range(16)])
    wide.prime(primes)
    logits = wide.logits(primes[:, :3])
    many = wide.sample(30, temperature=0.0, rng=np.random.default_rng(0))
    for i in (0, 7, 15):
        engine1.prime(primes[i : i + 1])
        np.testing.assert_allclose(logits[i], engine1.logits(primes[i : i + 1, :3])[0], atol=1e-5)
        np.testing.assert_array_equal(many[i], engine1.sample(30, temperature=0.0, rng=np.random.default_rng(9))[0])


def test_per_stream_temperatures(engine1, engine4):
    primes = np.stack([text(30 + i, 7) for i in range(4)])
    temps = np.array([0.0, 1.5, 0.0, 1.5])
    engine4.prime(primes)
    mixed = engine4.sample(80, temperature=temps, rng=np.random.default_rng(5))
    engine4.prime(primes)
    greedy = engine4.sample(80, temperature=0.0, rng=np.random.default_rng(5))
    engine4.prime(primes)
    hot = engine4.sample(80, temperature=1.5, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(mixed[[0, 2]], greedy[[0, 2]])
    np.testing.assert_array_equal(mixed[[1, 3]], hot[[1, 3]])  # same uniforms, same temperature
    assert not np.array_equal(mixed[1], greedy[1]) and not np.array_equal(mixed[3], greedy[3])
    with pytest.raises(ValueError):
        engine4.sample(5, temperature=np.ones(3), rng=np.random.default_rng(0))


def test_uncompiled_loop_agrees(keras1, engine1):
    plain = Engine.from_model(keras1, 1, jit_compile=False)
    prime = text(8, 10)[None]
    plain.prime(prime)
    engine1.prime(prime)
    assert np.abs(plain.last_logits - engine1.last_logits).max() < TOL
    np.testing.assert_array_equal(
        plain.sample(25, temperature=0.0, rng=np.random.default_rng(0)),
        engine1.sample(25, temperature=0.0, rng=np.random.default_rng(0)),
    )


def test_input_checks(engine1, engine4):
    with pytest.raises(ValueError):
        engine4.prime(np.zeros((3, 5), int))  # wrong number of streams
    with pytest.raises(ValueError):
        engine1.prime(np.full((1, 2), CONFIG.vocab_size))  # id out of range
    fresh = Engine(engine1.weights, 2)
    with pytest.raises(RuntimeError):
        fresh.sample(3, temperature=1.0, rng=np.random.default_rng(0))  # nothing primed
    fresh.prime(np.zeros((2, 1), int))
    assert fresh.sample(0, temperature=1.0, rng=np.random.default_rng(0)).shape == (2, 0)


def test_a_stream_joining_with_prime_rows_leaves_the_others_untouched(engine4):
    primes = np.stack([text(30 + i, 9) for i in range(4)])
    engine4.prime(primes)
    reference = engine4.logits(np.tile(text(5, 6), (4, 1)))  # what every stream computes next, undisturbed
    engine4.prime(primes)
    engine4.prime_rows([2], text(77, 13)[None, :])  # stream 2 starts over with another prime
    after = engine4.logits(np.tile(text(5, 6), (4, 1)))
    for row in (0, 1, 3):
        np.testing.assert_array_equal(after[row], reference[row])
    fresh = Engine(engine4.weights, 4)
    fresh.prime(np.tile(text(77, 13), (4, 1)))
    np.testing.assert_allclose(after[2], fresh.logits(np.tile(text(5, 6), (4, 1)))[2], atol=1e-5)


def test_primes_of_different_lengths_join_in_one_call_as_each_would_alone(engine4, monkeypatch):
    """The server primed joining streams one engine call per prime length: 16 requests with primes of ~4,000
    characters, each a little shorter, kept every stream waiting 40 s. Streams fed primes of 560, 5 and 13 ids in one
    call (the 5 and 13 end in its first chunk of 512) end as each ends joining alone: the same last logits and state,
    to the bit; stream 1 keeps its state and logits, and the history (the repeat guard's) is each prime's."""
    primes = np.stack([text(30 + i, 9) for i in range(4)])
    engine4.prime(primes)
    untouched = engine4.logits(np.tile(text(5, 6), (4, 1)))[1]
    engine4.prime(primes)
    untouched_last = engine4.last_logits[1]
    joining = {0: text(70, 560), 2: np.array([1, 2, 3, 3, 3]), 3: text(90, 13)}
    calls = []
    monkeypatch.setattr(engine4, "_forced_function", lambda bucket, ragged, fn=engine4._forced_function: calls.append(
        bucket) or fn(bucket, ragged))
    engine4.prime_rows(list(joining), list(joining.values()))
    assert calls == [512, 64]  # one feed of 560 steps: a whole chunk and the rest
    assert (engine4._history.last_id.tolist(), engine4._history.run.tolist()) == (
        [joining[0][-1], primes[1][-1], 3, joining[3][-1]],
        [StreamHistory.empty(1).after(joining[0][None]).run[0], StreamHistory.empty(1).after(primes[1:2]).run[0], 3,
         StreamHistory.empty(1).after(joining[3][None]).run[0]])
    last = engine4.last_logits
    np.testing.assert_array_equal(last[1], untouched_last)
    after = engine4.logits(np.tile(text(5, 6), (4, 1)))
    np.testing.assert_array_equal(after[1], untouched)
    for row, ids in joining.items():
        alone = Engine(engine4.weights, 4)
        alone.prime_rows([row], [ids])
        np.testing.assert_array_equal(last[row], alone.last_logits[row])
        np.testing.assert_array_equal(after[row], alone.logits(np.tile(text(5, 6), (4, 1)))[row])
        fresh = Engine(engine4.weights, 4)  # and as prime() reads it, to the last bits XLA may round otherwise
        fresh.prime(np.tile(ids, (4, 1)))
        np.testing.assert_allclose(last[row], fresh.last_logits[row], atol=1e-5)


def test_streams_moved_to_a_larger_engine_continue_where_they_were(engine4):
    primes = np.stack([text(40 + i, 7) for i in range(4)])
    engine4.prime(primes)
    reference = engine4.logits(np.tile(text(6, 5), (4, 1)))
    engine4.prime(primes)
    larger = Engine(engine4.weights, 8)
    larger.take_streams(engine4, [3, 1])
    moved = larger.logits(np.tile(text(6, 5), (8, 1)))
    np.testing.assert_allclose(moved[0], reference[3], atol=1e-5)
    np.testing.assert_allclose(moved[1], reference[1], atol=1e-5)


def stuck_on_3(engine, streams: int) -> Engine:
    """engine's model with its logits' bias making id 3 the likeliest always."""
    bias = np.zeros_like(engine.weights.dense_bias)
    bias[3] = 50.0
    return Engine(dataclasses.replace(engine.weights, dense_bias=bias), streams)


def test_max_repeat_caps_a_run_of_one_character(engine1):
    stuck = stuck_on_3(engine1, 2)

    def longest_runs(ids):
        runs = []
        for row in ids:
            best = current = 1
            for a, b in zip(row[:-1], row[1:]):
                current = current + 1 if a == b else 1
                best = max(best, current)
            runs.append(best)
        return runs

    prime = np.array([[1, 3, 3], [2, 2, 1]])  # stream 0's prime already ends with two 3s
    stuck.prime(prime)
    free = stuck.sample(50, temperature=[0.0, 1.0], rng=np.random.default_rng(0))
    assert longest_runs(free) == [50, 50]
    stuck.prime(prime)
    guarded = stuck.sample(30, temperature=[0.0, 1.0], max_repeat=[4, 2], rng=np.random.default_rng(0))
    guarded = np.concatenate([guarded, stuck.sample(30, temperature=[0.0, 1.0], max_repeat=[4, 2],
                                                    rng=np.random.default_rng(1))], axis=1)  # across calls
    assert longest_runs(guarded) == [4, 2]
    assert list(guarded[0][:3]) == [3, 3, guarded[0][2]] and guarded[0][2] != 3  # 2 from the prime + 2 = 4
    assert (guarded == 3).mean() > 0.6  # it still prefers 3 whenever it may
    stuck.prime(np.array([[1, 3], [3, 3]]))
    stuck.logits(np.array([[3], [3]]))  # a piece of one id continues the run before it: 2 and 3 in a row now
    ids = stuck.sample(3, temperature=[0.0, 0.0], max_repeat=[4, 4], rng=np.random.default_rng(0))
    assert list(ids[0][:2]) == [3, 3] and ids[0][2] != 3 and ids[1][0] == 3 and ids[1][1] != 3


def test_the_repeat_guard_goes_with_a_stream_that_joins_or_moves(engine1):
    """A server's request joins a running batch (prime_rows), then the batch moves into a larger engine
    (take_streams): each stream's last character and its run go with it."""
    stuck = stuck_on_3(engine1, 2)
    stuck.prime(np.array([[1, 3], [1, 2]]))
    stuck.prime_rows([1], np.array([[1, 3, 3]]))  # the request joining ends its prime with two 3s
    larger = stuck_on_3(engine1, 4)
    larger.take_streams(stuck, [1, 0])
    ids = larger.sample(3, temperature=[0.0] * 4, max_repeat=[2, 2, 0, 0], rng=np.random.default_rng(0))
    assert ids[0, 0] != 3 and list(ids[0, 1:]) == [3, 3]  # the prime's 3, 3 already met the limit
    assert ids[1, 0] == 3 and ids[1, 1] != 3 and ids[1, 2] == 3  # the running stream's own 3 counted, not the join's
