"""FastLSTM is a drop-in keras.layers.LSTM: same outputs, carried states, gradients, config and weights.

Tiny sizes (vocab 11, embedding 6, 2 stacked LSTMs of 5 units, batch 3, windows of 4 and 6 steps).
Numerical tolerance: max abs difference < 1e-5 for outputs, states and every gradient (float32;
the observed differences are ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import textgen.fast_lstm as fast_lstm  # noqa: E402
import textgen.native_loops as native_loops  # noqa: E402
from textgen.fast_lstm import FastLSTM  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("FastLSTM's fused path is TensorFlow-only", allow_module_level=True)

VOCAB, EMBED, UNITS, BATCH = 11, 6, 5, 3
TOL = 1e-5


def build(lstm_cls, batch=BATCH, dropout=0.0, seed=3, layers=2):
    inputs = keras.Input(batch_shape=(batch, None), dtype="int32", name="ids")
    x = keras.layers.Embedding(VOCAB, EMBED, name="embedding")(inputs)
    for index in range(layers):
        x = lstm_cls(
            UNITS,
            stateful=True,
            return_sequences=True,
            recurrent_initializer="glorot_uniform",
            dropout=dropout,
            seed=seed + index,
            name=f"lstm_{index}",
        )(x)
    return keras.Model(inputs, keras.layers.Dense(VOCAB, name="logits")(x))


def lstm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]


def twin_models(dropout=0.0):
    keras.utils.set_random_seed(0)
    stock, fast = build(keras.layers.LSTM, dropout=dropout), build(FastLSTM, dropout=dropout)
    fast.set_weights(stock.get_weights())
    assert [type(layer) for layer in lstm_layers(fast)] == [FastLSTM, FastLSTM]
    return stock, fast


def windows():
    rng = np.random.default_rng(1)
    return [(rng.integers(0, VOCAB, (BATCH, n)).astype("int32"), rng.integers(0, VOCAB, (BATCH, n))) for n in (4, 6)]


def train_call(model, x, y, training=True):
    with tf.GradientTape() as tape:
        logits = model(x, training=training)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    grads = tape.gradient(loss, model.trainable_variables)
    states = [np.array(v) for layer in lstm_layers(model) for v in layer.states]
    return np.array(logits), [tf.convert_to_tensor(g).numpy() for g in grads], states


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def assert_trains_like_stock(stock, fast, batches, check_inference=False):
    """Consecutive training calls on both models give the same logits, carried states and gradients."""
    for x, y in batches:  # the second call starts from the carried states
        logits_s, grads_s, states_s = train_call(stock, x, y)
        logits_f, grads_f, states_f = train_call(fast, x, y)
        assert max_diff(logits_s, logits_f) < TOL
        for a, b in zip(states_s, states_f):
            assert max_diff(a, b) < TOL
        assert len(grads_s) == len(grads_f) == len(stock.trainable_variables)
        for variable, a, b in zip(stock.trainable_variables, grads_s, grads_f):
            assert a.shape == b.shape and max_diff(a, b) < TOL, variable.path
        if check_inference:
            assert max_diff(stock(x, training=False), fast(x, training=False)) < TOL


@pytest.fixture
def count_fast_calls(monkeypatch):
    """Count entries into the fused training path, to prove the test did not just hit the fallback."""
    calls = {"n": 0}
    original = fast_lstm._lstm_with_grad

    def spy(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(fast_lstm, "_lstm_with_grad", spy)
    return calls


@pytest.fixture(params=["native", "xla"])
def training_loops(request, monkeypatch):
    """The float32 training loops under test: textgen's C++ ops (textgen.native_loops; skipped where this machine
    cannot build them, unless required) or XLA's. Counts the C++ ops' calls."""
    calls = {"native": 0, "in C++": request.param == "native"}
    if request.param == "xla":
        monkeypatch.setattr(native_loops, "_loaded", [None])
        return calls
    library = request.getfixturevalue("native_library")

    class Counted:
        def __getattr__(self, name):
            def op(*args, **kwargs):
                calls["native"] += 1
                return getattr(library, name)(*args, **kwargs)

            return op

    monkeypatch.setattr(native_loops, "_loaded", [Counted()])
    return calls


def test_matches_stock_outputs_states_and_gradients(count_fast_calls, training_loops):
    stock, fast = twin_models()
    assert_trains_like_stock(stock, fast, windows())
    assert count_fast_calls["n"] == 4  # 2 layers x 2 windows took the fused path
    assert training_loops["native"] == 8 * training_loops["in C++"]  # each one's forward and backward


def test_trains_inside_a_step_that_xla_compiles_whole(training_loops):
    """A program's own jit_compile=True (model.compile's): the C++ loops have no XLA kernel, so the XLA loops serve
    there, and it trains like the stock layer."""
    stock, fast = twin_models()
    for model in (stock, fast):
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = windows()[0]
    losses = [model.train_on_batch(x, y) for model in (stock, fast)]
    assert abs(float(losses[0]) - float(losses[1])) < TOL
    for a, b in zip(stock.get_weights(), fast.get_weights()):
        assert max_diff(a, b) < TOL
    assert training_loops["native"] == 0


def test_inference_matches_stock_and_keeps_state():
    stock, fast = twin_models()
    for x, _ in windows():
        assert max_diff(stock(x, training=False), fast(x, training=False)) < TOL
    for a, b in zip(lstm_layers(stock), lstm_layers(fast)):
        for va, vb in zip(a.states, b.states):
            assert max_diff(va, vb) < TOL
    for layer in lstm_layers(fast):
        layer.reset_state()
        assert all(not np.any(np.array(v)) for v in layer.states)


def test_initial_state_gradients_match_stock(training_loops):
    check_initial_state_gradients()
    assert training_loops["native"] == 2 * training_loops["in C++"]


def check_initial_state_gradients():
    keras.utils.set_random_seed(0)
    stock = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    fast = FastLSTM(UNITS, return_sequences=True, return_state=True)
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(BATCH, 4, EMBED)), tf.float32)
    h0 = tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32)
    c0 = tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32)
    stock(x, initial_state=[h0, c0])
    fast(x, initial_state=[h0, c0])
    fast.set_weights(stock.get_weights())
    results = []
    for layer in (stock, fast):
        with tf.GradientTape() as tape:
            tape.watch([x, h0, c0])
            out, h, c = layer(x, initial_state=[h0, c0], training=True)
            loss = tf.reduce_sum(out * out) + tf.reduce_sum(h) + 2.0 * tf.reduce_sum(c)
        results.append(tape.gradient(loss, [x, h0, c0] + layer.trainable_variables))
    for a, b in zip(*results):
        assert max_diff(a, b) < TOL


def test_dropout_runs_and_is_training_only(count_fast_calls):
    stock, fast = twin_models(dropout=0.3)
    x, y = windows()[1]
    logits_s, grads_s, _ = train_call(stock, x, y)
    logits_f, grads_f, _ = train_call(fast, x, y)
    assert count_fast_calls["n"] == 2
    assert np.all(np.isfinite(logits_f)) and all(np.all(np.isfinite(g)) for g in grads_f)
    # Same seed, same one-mask-per-(batch, feature) semantics as the stock layer's cached mask.
    assert max_diff(logits_s, logits_f) < TOL
    for layer in lstm_layers(fast):
        layer.reset_state()
    assert max_diff(fast(x, training=False), logits_f) > 1e-3


def test_fallback_when_fast_path_does_not_apply():
    x = tf.zeros((2, 3, 4))
    assert FastLSTM(3).fast_path_applies(x)
    for kwargs in (dict(recurrent_dropout=0.1), dict(go_backwards=True), dict(activation="relu"), dict(use_bias=False)):
        layer = FastLSTM(3, **kwargs)
        layer.build(x.shape)
        assert not layer.fast_path_applies(x), kwargs
    assert not FastLSTM(3).fast_path_applies(x, mask=tf.ones((2, 3), bool))
    # A fallback layer still computes the stock result.
    keras.utils.set_random_seed(0)
    stock, fast = keras.layers.LSTM(3, go_backwards=True), FastLSTM(3, go_backwards=True)
    data = tf.random.normal((2, 3, 4))
    stock(data)
    fast(data)
    fast.set_weights(stock.get_weights())
    assert max_diff(stock(data), fast(data)) < TOL


def test_bfloat16_matmuls_stay_close_and_everything_else_stays_float32(count_fast_calls):
    """Mixed precision: bfloat16 keeps 8 significant bits, so each product is off by up to ~0.4%.
    Tolerance: logits and gradients within 3% of their largest magnitude."""
    keras.utils.set_random_seed(0)
    exact = build(FastLSTM)
    mixed = build(lambda *args, **kwargs: FastLSTM(*args, matmul_dtype="bfloat16", **kwargs))
    mixed.set_weights(exact.get_weights())
    for x, y in windows():
        logits_e, grads_e, states_e = train_call(exact, x, y)
        logits_m, grads_m, states_m = train_call(mixed, x, y)
        assert 0 < max_diff(logits_e, logits_m) < 0.03 * np.abs(logits_e).max()
        for g_e, g_m in zip(grads_e, grads_m):
            assert g_m.dtype == np.float32 and max_diff(g_e, g_m) < 0.03 * np.abs(g_e).max()
        assert all(s.dtype == np.float32 and max_diff(a, s) < 0.03 for a, s in zip(states_e, states_m))
    assert count_fast_calls["n"] == 8  # 2 models x 2 layers x 2 windows on the fused path
    assert all(w.dtype == np.float32 for w in mixed.get_weights())
    # Inference (validation, eval) stays exact float32.
    for model in (exact, mixed):
        for layer in lstm_layers(model):
            layer.reset_state()
    x = windows()[0][0]
    np.testing.assert_array_equal(exact(x, training=False), mixed(x, training=False))
    with pytest.raises(ValueError, match="matmul_dtype must be"):
        FastLSTM(3, matmul_dtype="float16")


def test_get_config_round_trip(tmp_path):
    layer = FastLSTM(7, stateful=True, return_sequences=True, dropout=0.25, recurrent_initializer="glorot_uniform",
                     seed=5, name="lstm_0", matmul_dtype="bfloat16")
    config = layer.get_config()
    assert config["matmul_dtype"] == "bfloat16"
    stock_config = {key: value for key, value in config.items() if key != "matmul_dtype"}
    assert stock_config == keras.layers.LSTM.from_config(stock_config).get_config()
    clone = FastLSTM.from_config(config)
    assert type(clone) is FastLSTM and clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is FastLSTM and restored.get_config() == config
    assert keras.saving.get_registered_name(FastLSTM) == "textgen>FastLSTM"
    # A whole saved model comes back with FastLSTM layers.
    model = build(FastLSTM)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert [type(layer) for layer in lstm_layers(loaded)] == [FastLSTM, FastLSTM]


def test_weights_load_into_stock_lstm_at_batch_one(tmp_path):
    keras.utils.set_random_seed(0)
    trained = build(FastLSTM)
    x, y = windows()[0]
    optimizer = keras.optimizers.Adam(0.05)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, trained(x, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, trained.trainable_variables), trained.trainable_variables))
    path = tmp_path / "fast.weights.h5"
    trained.save_weights(path)

    stock, fast = build(keras.layers.LSTM, batch=1), build(FastLSTM, batch=1)
    stock.load_weights(path)
    fast.load_weights(path)
    for a, b in zip(stock.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    ids = np.array([[1, 4, 2, 9, 0, 3]], dtype="int32")
    logits_stock = np.array(stock(ids, training=False))
    np.testing.assert_allclose(np.array(fast(ids, training=False)), logits_stock, rtol=0, atol=TOL)
    # ... and match the batch-3 FastLSTM model that wrote the weights, row by row.
    for layer in lstm_layers(trained):
        layer.reset_state()
    logits_trained = np.array(trained(np.repeat(ids, BATCH, axis=0), training=False))
    for row in range(BATCH):
        np.testing.assert_allclose(logits_trained[row], logits_stock[0], rtol=0, atol=TOL)


@pytest.fixture
def count_table_projections(monkeypatch):
    """Count traces of the first layer's table projection (ids -> rows of embeddings @ kernel)."""
    calls = {"n": 0}
    original = fast_lstm._TableProjection.forward

    def spy(self, *args):
        calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(fast_lstm._TableProjection, "forward", spy)
    return calls


def table_twins(dropout=0.0, vocab=VOCAB, matmul_dtype="float32"):
    from textgen.config import ModelConfig
    from textgen.model import build_model

    config = ModelConfig(vocab_size=vocab, embedding_dim=EMBED, units=UNITS, layers=2, dropout=dropout)
    keras.utils.set_random_seed(0)
    stock, fast = build_model(config, BATCH, stock=True), build_model(config, BATCH, matmul_dtype=matmul_dtype)
    stock.set_weights(fast.get_weights())
    return stock, fast


def long_windows(vocab=VOCAB):
    """Windows long enough (3 x 8 ids >= 2 x 11 symbols) that the first layer gathers its input projection."""
    rng = np.random.default_rng(4)
    return [(rng.integers(0, vocab, (BATCH, n)).astype("int32"), rng.integers(0, vocab, (BATCH, n))) for n in (8, 12)]


def test_first_layer_gathers_its_input_projection_and_matches_stock(count_table_projections):
    stock, fast = table_twins()
    # The embedding's gradient now comes from lstm_0's table, as a dense (vocab, E) tensor: same shape as stock's.
    assert_trains_like_stock(stock, fast, long_windows(), check_inference=True)
    assert count_table_projections["n"] == 4  # 2 windows x (training + inference)


def test_table_projection_is_skipped_when_it_would_not_pay(count_table_projections):
    # Input dropout draws a mask per stream: training projects densely, inference still gathers.
    _, fast = table_twins(dropout=0.3)
    x, y = long_windows()[0]
    train_call(fast, x, y)
    assert count_table_projections["n"] == 0
    fast(x, training=False)
    assert count_table_projections["n"] == 1
    # A vocabulary larger than half the window: the table would cost more than the projection.
    stock, fast = table_twins(vocab=40)
    x, y = long_windows(vocab=40)[0]
    logits_s, grads_s, _ = train_call(stock, x, y)
    logits_f, grads_f, _ = train_call(fast, x, y)
    assert count_table_projections["n"] == 1
    assert max_diff(logits_s, logits_f) < TOL and all(max_diff(a, b) < TOL for a, b in zip(grads_s, grads_f))


def test_table_projection_in_bfloat16_stays_close(count_table_projections):
    _, exact = table_twins()
    _, mixed = table_twins(matmul_dtype="bfloat16")
    x, y = long_windows()[0]
    logits_e, grads_e, _ = train_call(exact, x, y)
    logits_m, grads_m, _ = train_call(mixed, x, y)
    assert count_table_projections["n"] == 2
    assert 0 < max_diff(logits_e, logits_m) < 0.03 * np.abs(logits_e).max()
    for g_e, g_m in zip(grads_e, grads_m):
        assert g_m.dtype == np.float32 and max_diff(g_e, g_m) < 0.03 * np.abs(g_e).max()


def test_table_model_weights_load_into_the_stock_model(tmp_path):
    """lstm_0 holds the embedding only through a function: the weight file lists each variable once,
    under the same paths as the stock network's."""
    stock, fast = table_twins()
    path = tmp_path / "fast.weights.h5"
    fast.save_weights(path)
    import h5py

    def variables(file):
        names = []
        file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        return sorted(names)

    stock.save_weights(tmp_path / "stock.weights.h5")
    with h5py.File(path) as ours, h5py.File(tmp_path / "stock.weights.h5") as theirs:
        assert variables(ours) == variables(theirs) and len(variables(ours)) == len(stock.weights)
    fresh_stock = table_twins()[0]
    fresh_stock.set_weights([np.zeros_like(w) for w in fresh_stock.get_weights()])
    fresh_stock.load_weights(path)
    x = long_windows()[0][0]
    np.testing.assert_allclose(np.array(fresh_stock(x, training=False)), np.array(fast(x, training=False)),
                               rtol=0, atol=TOL)


def test_row_width_pads_only_power_of_two_rows_of_compiled_loops():
    assert fast_lstm._compiles_loops(tf.float32, training=True)
    assert not fast_lstm._compiles_loops(tf.float32, training=False)  # inference
    assert not fast_lstm._compiles_loops(tf.bfloat16, training=True)
    assert fast_lstm._row_width(2048, True) == 2064  # 512 units: 8 KB rows
    assert fast_lstm._row_width(1024, True) == 1040
    assert fast_lstm._row_width(1536, True) == 1536  # 6 KB rows do not alias
    assert fast_lstm._row_width(2048, False) == 2048


def test_padded_rows_match_stock(monkeypatch, count_table_projections, training_loops):
    """Training with zero columns after 4U (what 256, 512, ... units get) computes the same as the stock layer,
    through the table projection (layer 0) and the dense one (layer 1)."""
    monkeypatch.setattr(fast_lstm, "_row_width", lambda gates, compiled: gates + 3 if compiled else gates)
    stock, fast = table_twins()
    assert_trains_like_stock(stock, fast, long_windows())
    assert count_table_projections["n"] == 2
    assert training_loops["native"] == 8 * training_loops["in C++"]


@pytest.fixture
def feature_major_loops(monkeypatch):
    """Every compiled recurrence loop feature-major (what 512 units and more get), at these tiny sizes: counts
    the loops traced that way; the compiled loops are traced afresh on both sides of the test."""
    monkeypatch.setattr(fast_lstm, "FEATURE_MAJOR_MIN_UNITS", 1)
    monkeypatch.setattr(native_loops, "_loaded", [None])  # the C++ loops, where built, are batch-major
    traced = {"feature-major": 0}
    original = fast_lstm._feature_major

    def spy(units, compiled):
        chosen = original(units, compiled)
        traced["feature-major"] += chosen
        return chosen

    monkeypatch.setattr(fast_lstm, "_feature_major", spy)
    fast_lstm._compiled.cache_clear()
    yield traced
    fast_lstm._compiled.cache_clear()


def test_feature_major_loops_match_stock(feature_major_loops, monkeypatch, count_fast_calls):
    stock, fast = twin_models()
    assert_trains_like_stock(stock, fast, windows(), check_inference=True)
    assert count_fast_calls["n"] == 4 and feature_major_loops["feature-major"] == 4  # inference stays batch-major
    # with the padded rows and the first layer's table, as a 512-unit model trains
    monkeypatch.setattr(fast_lstm, "_row_width", lambda gates, compiled: gates + 3 if compiled else gates)
    stock, fast = table_twins()
    assert_trains_like_stock(stock, fast, long_windows())
    assert count_fast_calls["n"] == 8 and feature_major_loops["feature-major"] == 8


def test_feature_major_initial_state_gradients_match_stock(feature_major_loops):
    check_initial_state_gradients()
    assert feature_major_loops["feature-major"] == 1
