"""Errors meant for the user: the CLI prints their message as one line, no traceback."""

import re
from typing import Collection


def counted(count: int, noun: str) -> str:
    """"1 epoch", "3 epochs", "1,200 characters": a count with its noun, for messages."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


class TextgenError(Exception):
    """A problem the user can fix; the message names it and says what to do."""

    exit_code = 1


class OptionError(TextgenError, ValueError):
    """An option value outside what it accepts (a ValueError too, for library callers)."""


def as_keywords(error: OptionError, names: Collection[str]) -> OptionError:
    """The error as the Python API and the HTTP API give it: the options in names spelled as their keywords and JSON
    fields are (--top-k as top_k); the rest of the message (--help, commands to run) as the command line has it."""

    def keyword(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return name if name in names else match.group(0)

    return OptionError(re.sub(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", keyword, str(error)))
