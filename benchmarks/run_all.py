"""`make bench`: run every speed benchmark and record its output in BENCHMARKS.md.

Each benchmark measures its comparison side by side in one run and prints ratios, so results
from a noisy shared machine stay meaningful; absolute figures drift from run to run.
Each benchmark owns one section of BENCHMARKS.md, replaced when it runs again."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "BENCHMARKS.md"
SPEED_BENCHMARKS = [
    ("Sampling speed", ["benchmarks/bench_sample.py"]),
    ("Training throughput", ["benchmarks/bench_train.py"]),
    ("Large corpus: encode time and peak memory", ["benchmarks/bench_corpus.py"]),
    ("Distributed training overhead", ["benchmarks/bench_distribute.py"]),
]
PREAMBLE = ("# Benchmarks\n\nLatest results of `make bench` and `make bench-quality` (each section is rewritten "
            "when its benchmark runs). Ratios are measured side by side in the same run; absolute speeds drift "
            "on a shared machine.\n")


# The flags that decide which matmul kernels a CPU can run (AVX2/FMA, AVX-512, bfloat16, AMX).
RELEVANT_FLAGS = re.compile(r"^(avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_\w+)$")


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith(name)), "")
    except OSError:
        return ""


def cpu_flags() -> str:
    """The matmul-relevant CPU flags, e.g. "avx2 fma" or "avx2 fma avx512f avx512_bf16 amx_bf16"."""
    flags = [flag for flag in _cpuinfo_field("flags").split() if RELEVANT_FLAGS.match(flag)]
    return " ".join(flags) or "none of avx2/fma/avx512/amx"


def machine() -> str:
    model = _cpuinfo_field("model name") or platform.processor() or "unknown CPU"
    return f"{os.cpu_count()} cores ({model}; {cpu_flags()}), Python {platform.python_version()}"


def update_section(title: str, command: list[str], output: str, exit_code: int = 0) -> None:
    text = RECORD.read_text(encoding="utf-8") if RECORD.exists() else PREAMBLE
    body = (f"## {title}\n\n`python {' '.join(command)}` (exit code {exit_code}), "
            f"{datetime.date.today().isoformat()}, {machine()}\n\n```\n{output.strip()}\n```\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    RECORD.write_text(text.rstrip() + "\n", encoding="utf-8")


def run(title: str, command: list[str]) -> int:
    print(f"== {title}: python {' '.join(command)}", flush=True)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(result.stdout, flush=True)
    update_section(title, command, result.stdout, result.returncode)
    return result.returncode


def main() -> None:
    failures = sum(run(title, command) != 0 for title, command in SPEED_BENCHMARKS)
    print(f"updated {RECORD}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
