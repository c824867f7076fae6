"""Errors meant for the user: the CLI prints their message as one line, no traceback."""


def counted(count: int, noun: str) -> str:
    """"1 epoch", "3 epochs", "1,200 characters": a count with its noun, for messages."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


class TextgenError(Exception):
    """A problem the user can fix; the message names it and says what to do."""

    exit_code = 1


class OptionError(TextgenError, ValueError):
    """An option value outside what it accepts (a ValueError too, for library callers)."""
