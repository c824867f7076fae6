"""textgen: a character-level text generator on a Keras stateful LSTM."""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CPU feature notes, "no CUDA driver") drowns our one-line
# diagnostics; real failures still surface as Python exceptions. Users can override this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keras picks its backend at import; under JAX a stateful layer silently drops its state in training.
os.environ["KERAS_BACKEND"] = "tensorflow"
