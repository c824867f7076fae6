"""What this CPU can multiply fast: its flags, read from /proc/cpuinfo (no TensorFlow import), and timed products
(TensorFlow imported when they run)."""

from __future__ import annotations

import functools
import math
import os
import platform
import time

# The flags that decide which matmul kernels a CPU can run: AVX2/FMA, AVX-512, bfloat16, AMX.
MATMUL_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
CPUINFO = "/proc/cpuinfo"


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields ("model name", "flags", ...); empty where /proc/cpuinfo is missing."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as info:
            for line in info:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The model name, with its family and model numbers where cpuinfo has them: virtual machines often show only
    "AMD EPYC", and the numbers tell its generations apart (family 25 is Zen 3 at model 1, Zen 4 at model 17)."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or "unknown CPU"
    if info.get("cpu family") and info.get("model"):
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def matmul_flags() -> str:
    """The matmul-relevant flags this CPU has, e.g. "fma avx2" or "fma avx2 avx512f avx512_bf16 amx_bf16"."""
    return " ".join(flag for flag in MATMUL_FLAGS if flag in cpu_flags()) or "none of fma/avx2/avx512/amx"


# oneDNN's instruction sets below AVX-512, and below its bfloat16 ones, as ONEDNN_MAX_CPU_ISA names them
ONEDNN_BELOW_AVX512 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})
ONEDNN_BELOW_BFLOAT16 = ONEDNN_BELOW_AVX512 | {"AVX512_CORE", "AVX512_CORE_VNNI"}


def onednn_cap() -> str:
    """The instruction set ONEDNN_MAX_CPU_ISA holds TensorFlow's oneDNN kernels to ("AVX2"), or "" where it does
    not (unset, or TF_ENABLE_ONEDNN_OPTS=0: no oneDNN kernels)."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false"):
        return ""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()


def has_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX) and oneDNN may use it; elsewhere it is
    emulated and slow."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and onednn_cap() not in ONEDNN_BELOW_BFLOAT16


def bfloat16_matmul_crashes() -> bool:
    """Whether TensorFlow's bfloat16 matmul would kill the process here: on an AVX-512 CPU whose oneDNN is held
    below AVX-512 (ONEDNN_MAX_CPU_ISA=AVX2), TensorFlow 2.21 sends the product to oneDNN, which has no kernel
    for it then, and the process dies of a segmentation fault."""
    return "avx512f" in cpu_flags() and onednn_cap() in ONEDNN_BELOW_AVX512


def matmul_operands(rows: int, width: int, columns: int, dtypes) -> dict:
    """(rows, width) and (width, columns) operands in each of dtypes (TensorFlow dtypes), the same numbers in each.
    Drawn from NumPy, not TensorFlow's generator: a run seeded before a timing draws the same weights."""
    import numpy as np
    import tensorflow as tf

    numbers = np.random.default_rng(0)
    a, b = numbers.standard_normal((rows, width), np.float32), numbers.standard_normal((width, columns), np.float32)
    return {dtype: (tf.cast(a, dtype), tf.cast(b, dtype)) for dtype in dtypes}


def matmul_seconds(operands: dict, blocks: int = 5) -> dict:
    """Seconds per product of each (a, b) in operands: the best of blocks of at least 10 ms, the operands taking
    turns block by block (a busy moment of a shared machine slows each, not one); a first product of each, which
    creates its kernels, is not timed."""
    import tensorflow as tf

    for a, b in operands.values():
        tf.linalg.matmul(a, b).numpy()
    best = dict.fromkeys(operands, math.inf)
    for _ in range(blocks):
        for key, (a, b) in operands.items():
            repeats, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < 0.01:
                for _ in range(5):
                    result = tf.linalg.matmul(a, b)
                result.numpy()
                repeats += 5
            best[key] = min(best[key], elapsed / repeats)
    return best
