"""Regenerate the README's option reference from the CLI's own --help (make readme).

tests/test_readme.py fails when the README and the CLI disagree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from click.testing import CliRunner

    from textgen.cli import cli

    parts = []
    for args in ([], *[[name] for name in cli.commands]):
        result = CliRunner().invoke(cli, [*args, "--help"], prog_name="textgen", terminal_width=100)
        parts.append(f"### `textgen {' '.join(args) or '--help'}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


def updated(readme: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{render()}{END}", readme)


if __name__ == "__main__":
    before = README.read_text(encoding="utf-8")
    after = updated(before)
    if after == before:
        print(f"the option reference in {README} is up to date")
    else:
        README.write_text(after, encoding="utf-8")
        print(f"updated the option reference in {README}")
