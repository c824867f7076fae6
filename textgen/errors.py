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


# A command inside a message ("train it again with: textgen train CORPUS --run NAME"), which keeps its spelling.
_COMMAND = re.compile(r"textgen [a-z]+(?: [^;()]*)?")
# An option as the command line spells it, with the value after it if there is one (a number or a placeholder),
# and whether it is asked for: after "pass", "with", ... or before "to" (pass --resume to continue it).
_OPTION = re.compile(r"(?P<asked>\b(?:pass|add|with|without|use) )?--(?P<name>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
                     r"(?: (?P<value>-?\d[\d,.]*|[A-Z][A-Z_]*)\b)?(?P<to> to\b)?")


def as_keywords(error: TextgenError, names: Collection[str], flags: Collection[str] = (),
                json: bool = False) -> TextgenError:
    """The error as the Python API (or, with json, the HTTP API) gives it: the options in names spelled as keywords
    (--epochs 20 as epochs=20; a flag in flags, when asked for, "pass --resume", as resume=True) or JSON fields
    ("epochs": 20, "skip_unknown": true); the rest of the message, and the commands in it, as the command line has
    it. Of the same class as error, with its attributes."""

    def keyword(match: re.Match) -> str:
        name, value = match["name"].replace("-", "_"), match["value"]
        if name not in names:
            return match.group(0)
        if value is None and name in flags and (match["asked"] or match["to"]):  # not "--resume must be a bool"
            value = "true" if json else "True"
        spelled = name if value is None else f'"{name}": {value}' if json else f"{name}={value}"
        return (match["asked"] or "") + spelled + (match["to"] or "")

    text, pieces, start = str(error), [], 0
    for command in _COMMAND.finditer(text):
        pieces += [_OPTION.sub(keyword, text[start:command.start()]), command.group(0)]
        start = command.end()
    pieces.append(_OPTION.sub(keyword, text[start:]))
    renamed = type(error).__new__(type(error))  # not type(error)(message): subclasses take other arguments
    renamed.__dict__.update(error.__dict__)
    renamed.args = ("".join(pieces),)
    return renamed
