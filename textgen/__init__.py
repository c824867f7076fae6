"""textgen: a character-level text generator on a Keras stateful LSTM."""

import importlib
import importlib.util
import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (CPU feature notes, "no CUDA driver") drowns our one-line
# diagnostics; real failures still surface as Python exceptions. Users can override this.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's default CPU allocator returns every large tensor's memory to the OS when it is freed (glibc
# unmaps allocations over 32 MB), so each training step page-faults its big intermediates in again. The BFC
# allocator keeps freed memory for reuse: training steps 1.2x faster on a 2-core AVX2 machine (BENCHMARKS.md).
# Read when TensorFlow makes its first CPU tensor, so it applies unless TensorFlow ran before textgen's import.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# Keras picks its backend at import; under JAX a stateful layer silently drops its state in training.
os.environ["KERAS_BACKEND"] = "tensorflow"

from textgen.address_space import reserve_less  # noqa: E402  (light: the standard library only)

reserve_less()  # under ulimit -v, before NumPy and TensorFlow start their threads


from textgen.errors import MissingFile, OptionError, TextgenError  # noqa: E402  (light: no TensorFlow)

# textgen.api's, imported on first use: `textgen --help` needs no NumPy
API = ("TextModel", "list_runs", "load", "train")


def __getattr__(name: str):
    if name in API:
        from textgen import api

        return getattr(api, name)
    # textgen.training.train, textgen.callbacks.Callback (README's lower level) after a bare `import textgen`
    if name.isidentifier() and not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'textgen' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(API))


__all__ = ["MissingFile", "OptionError", "TextgenError", *API, "__version__"]
