"""The network: Embedding -> stacked stateful LSTMs -> Dense logits."""

from __future__ import annotations

import functools
import random
import threading
from typing import Optional

import keras

from textgen.config import ModelConfig
from textgen.fast_lstm import FastLSTM


# Held while a model is built: Keras seeds each layer from Python's generator, which the process shares
_DRAWING = threading.Lock()


# Every layer's, whatever a program set as Keras's global policy (keras.config.set_dtype_policy("mixed_bfloat16") in
# a notebook made a training's layers compute in bfloat16 while its history said float32); mixed precision is
# matmul_dtype's
LAYER_DTYPE = "float32"


def build_model(config: ModelConfig, batch_size: int, matmul_dtype: str = "float32",
                stock: bool = False, seed: Optional[int] = None) -> keras.Model:
    """Build the model for a fixed number of parallel streams.

    The LSTM state lives in the layers between calls, so the batch size is part of the
    graph. Weights do not depend on it: a model trained at batch 64 loads into batch 1.
    ``matmul_dtype="bfloat16"`` is mixed-precision training (see FastLSTM); weights stay float32.
    ``stock=True`` builds the same network from plain ``keras.layers.LSTM`` without dropout: an inference
    network that Keras loads without textgen (``textgen export``).
    ``seed`` seeds the process's random generators first (keras.utils.set_random_seed: a training's initial
    weights). Python's generator is given back as it was after the seed, and builds in other threads wait: a
    model loaded in one thread while a training started in another drew from the training's seeded generator, or
    gave back its own state in the middle of the training's build, and a seed no longer gave the same run.
    """
    with _DRAWING:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        drawn_from = random.getstate()
        try:
            return _build(config, batch_size, matmul_dtype, stock)
        finally:
            random.setstate(drawn_from)


def _build(config: ModelConfig, batch_size: int, matmul_dtype: str, stock: bool) -> keras.Model:
    inputs = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    # N(0, 1) like PyTorch's nn.Embedding: Keras's default, uniform in +-0.05, feeds the first LSTM inputs ~20x
    # weaker than its recurrent signal, and a first epoch of tinyshakespeare then ends at 2.81 nats instead of 1.90.
    embedding = keras.layers.Embedding(config.vocab_size, config.embedding_dim, name="embedding", dtype=LAYER_DTYPE,
                                       embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))
    x = embedding(inputs)
    dropout = 0.0 if stock else config.dropout
    for index in range(config.layers):
        lstm = keras.layers.LSTM if stock else functools.partial(FastLSTM, matmul_dtype=matmul_dtype)
        layer = lstm(config.units, stateful=True, return_sequences=True, recurrent_initializer="glorot_uniform",
                     dropout=dropout, name=f"lstm_{index}", dtype=LAYER_DTYPE)
        if index == 0 and not stock:
            layer.read_ids_from(embedding)  # its input projection becomes a table lookup (FastLSTM)
            x = layer(x, ids=inputs)
        else:
            x = layer(x)
    if dropout:
        # Dropout on the last LSTM's output too (Zaremba et al.: every non-recurrent connection); it has
        # no weights, so checkpoints load with or without it.
        x = keras.layers.Dropout(dropout, name="output_dropout", dtype=LAYER_DTYPE)(x)
    logits = keras.layers.Dense(config.vocab_size, name="logits", dtype=LAYER_DTYPE)(x)
    return keras.Model(inputs, logits, name="textgen")


def lstm_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]


def reset_states(model: keras.Model) -> None:
    """Zero the carried (h, c) of every LSTM layer (Keras 3 has no model.reset_states)."""
    for layer in lstm_layers(model):
        layer.reset_state()
