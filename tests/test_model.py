import keras
import numpy as np

from textgen.config import ModelConfig
from textgen.fast_lstm import FastLSTM
from textgen.model import build_model, lstm_layers, reset_states

CONFIG = ModelConfig(vocab_size=11, embedding_dim=6, units=16, layers=2, dropout=0.0)


def test_lstm_layers_are_stateful_and_glorot_initialised():
    model = build_model(CONFIG, batch_size=3)
    layers = lstm_layers(model)
    assert len(layers) == 2
    for layer in layers:
        assert isinstance(layer, keras.layers.LSTM)  # FastLSTM is a stock LSTM with a faster CPU step
        assert isinstance(layer, FastLSTM)
        assert layer.stateful and layer.return_sequences
        assert isinstance(layer.cell.recurrent_initializer, keras.initializers.GlorotUniform)
    assert model.output.shape == (3, None, 11)


def test_the_configs_parameter_count_is_the_built_models():
    """Sizing counts parameters from the config before any model exists: the count must be the model's own."""
    for shape in (dict(layers=1, units=8, embedding_dim=3), dict(layers=3, units=16, embedding_dim=6),
                  dict(layers=2, units=24, embedding_dim=40)):
        config = ModelConfig(vocab_size=11, dropout=0.0, **shape)
        assert build_model(config, batch_size=2).count_params() == config.parameter_count(), shape
        assert config.layers_text() == f"{shape['layers']} x LSTM({shape['units']})"


def test_state_is_carried_between_calls_and_reset_clears_it():
    model = build_model(CONFIG, batch_size=2)
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 11, (2, 2, 5)).astype("int32")
    model(first)
    carried = np.array(model(second))
    reset_states(model)
    fresh = np.array(model(second))
    assert np.abs(carried - fresh).max() > 1e-4  # the state from the first window mattered
    for layer in lstm_layers(model):
        model(first)
        layer.reset_state()
        assert all(np.all(np.array(state) == 0) for state in layer.states)
    reset_states(model)
    np.testing.assert_allclose(np.array(model(second)), fresh, atol=1e-6)


def test_weights_trained_at_one_batch_size_load_at_another(tmp_path):
    big = build_model(CONFIG, batch_size=4)
    path = tmp_path / "w.weights.h5"
    big.save_weights(str(path))
    small = build_model(CONFIG, batch_size=1)
    small.load_weights(str(path))
    ids = np.arange(7, dtype="int32")[None, :] % 11
    reset_states(big)
    np.testing.assert_allclose(np.array(small(ids)), np.array(big(np.repeat(ids, 4, axis=0)))[:1], atol=1e-6)


def test_a_checkpoint_a_training_replaces_while_it_loads_still_loads(trained_run, tmp_path, monkeypatch):
    """A training saving every few steps removed the weights file while sample built the model, at every attempt:
    "cannot be loaded (FileNotFoundError); train again with --overwrite", about a healthy run."""
    import shutil

    import textgen.model
    from textgen.checkpoint import load_model

    run_dir = shutil.copytree(trained_run["run_dir"], tmp_path / "run")
    expected, meta = load_model(run_dir, batch_size=1)
    weights = run_dir / meta.files["weights"]["name"]
    built = textgen.model.build_model

    def build_while_a_save_removes_the_file(*args, **kwargs):
        if weights.exists():
            weights.unlink()  # as the training's next save does to the checkpoint before it
        return built(*args, **kwargs)

    monkeypatch.setattr(textgen.model, "build_model", build_while_a_save_removes_the_file)
    model, _ = load_model(run_dir, batch_size=1)
    assert not weights.exists()
    for loaded, saved in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
