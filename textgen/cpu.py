"""What this CPU can multiply fast, read from /proc/cpuinfo (no TensorFlow import)."""

from __future__ import annotations

import functools
import platform

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


def has_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX); elsewhere it is emulated and slow."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
