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
# TensorFlow turns its oneDNN kernels on by default (TF_ENABLE_ONEDNN_OPTS unset) only on CPUs with one of these
ONEDNN_BY_DEFAULT = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})


def onednn_cap_setting() -> tuple[str, str]:
    """The variable that holds TensorFlow's oneDNN kernels to an instruction set and its value, read as oneDNN
    reads it (ONEDNN_MAX_CPU_ISA, else the older DNNL_MAX_CPU_ISA; upper-cased): ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    or ("", "") where nothing holds them (unset, or TensorFlow's oneDNN kernels off)."""
    enabled = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").lower()
    if enabled in ("0", "false") or (enabled not in ("1", "true") and not ONEDNN_BY_DEFAULT & cpu_flags()):
        return "", ""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(name):
            return name, os.environ[name].upper()
    return "", ""


def onednn_cap() -> str:
    """The instruction set TensorFlow's oneDNN kernels are held to ("AVX2"), or "" (see onednn_cap_setting)."""
    return onednn_cap_setting()[1]


def onednn_cap_text() -> str:
    """The setting as the user wrote it, for messages: "ONEDNN_MAX_CPU_ISA=AVX2", or ""."""
    name, cap = onednn_cap_setting()
    return f"{name}={cap}" if name else ""


def has_bfloat16_instructions() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def bfloat16_held_back() -> bool:
    """Whether this CPU has bfloat16 instructions that ONEDNN_MAX_CPU_ISA keeps oneDNN from using."""
    return has_bfloat16_instructions() and onednn_cap() in ONEDNN_BELOW_BFLOAT16


def has_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX) and oneDNN may use it; elsewhere it is
    emulated and slow."""
    return has_bfloat16_instructions() and not bfloat16_held_back()


def bfloat16_matmul_crashes() -> bool:
    """Whether TensorFlow's bfloat16 matmul would kill the process here: where TensorFlow sends it to oneDNN (CPUs
    with AVX-512, or AVX-NE-CONVERT) while oneDNN is held below any bfloat16 kernel, the process dies of a
    segmentation fault (seen on TensorFlow 2.21, AVX-512 and ONEDNN_MAX_CPU_ISA=AVX2; the AVX-NE-CONVERT case is
    from TensorFlow's source)."""
    flags, cap = cpu_flags(), onednn_cap()
    return ("avx512f" in flags and cap in ONEDNN_BELOW_AVX512) or \
        ("avx_ne_convert" in flags and cap in ONEDNN_BELOW_AVX512 - {"AVX2_VNNI_2"})


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
