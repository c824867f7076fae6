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
sys.path.insert(0, str(ROOT))

from textgen.cpu import cpu_model, matmul_flags  # noqa: E402

RECORD = ROOT / "BENCHMARKS.md"
SPEED_BENCHMARKS = [
    ("Sampling speed", ["benchmarks/bench_sample.py"]),
    ("Training throughput", ["benchmarks/bench_train.py"]),
    ("Large corpus: encode time and peak memory", ["benchmarks/bench_corpus.py"]),
    ("Distributed training overhead", ["benchmarks/bench_distribute.py"]),
    ("Serving concurrent clients", ["benchmarks/bench_serve.py"]),
]
PREAMBLE = ("# Benchmarks\n\nLatest results of `make bench` and `make bench-quality` (each section is rewritten "
            "when its benchmark runs). Ratios are measured side by side in the same run; absolute speeds drift "
            "on a shared machine.\n")


def missing_corpus(path: Path) -> str:
    """The message of a benchmark whose shared corpus is not there: the repository does not ship it."""
    return (f"needs {path}, beside the repository and not part of it: put a copy of tinyshakespeare (karpathy's "
            f"char-rnn, data/tinyshakespeare/input.txt) there")


def machine() -> str:
    return f"{os.cpu_count()} cores ({cpu_model()}; {matmul_flags()}), Python {platform.python_version()}"


def update_section(title: str, command: list[str], output: str, exit_code: int = 0) -> None:
    """Replace the section's command line and output block; notes written under the block (and its ###
    subsections, such as results kept from another CPU) stay."""
    text = RECORD.read_text(encoding="utf-8") if RECORD.exists() else PREAMBLE
    body = (f"## {title}\n\n`python {' '.join(command)}` (exit code {exit_code}), "
            f"{datetime.date.today().isoformat()}, {machine()}\n\n```\n{output.strip()}\n```\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    if match:
        notes = re.sub(r"\A.*?^```\n.*?^```\n", "", match.group(0), count=1, flags=re.S | re.M).strip()
        body += f"\n{notes}\n" if notes else ""
        text = text[:match.start()] + body + "\n" + text[match.end():]
    else:
        text = text.rstrip() + "\n\n" + body
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
