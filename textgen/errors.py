"""Errors meant for the user: the CLI prints their message as one line, no traceback."""

import re
import shlex
from json import dumps
from typing import Collection


def counted(count: int, noun: str) -> str:
    """"1 epoch", "3 epochs", "1,200 characters": a count with its noun, for messages."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def shown_start(text: str, limit: int = 40, why: str = "") -> str:
    """text quoted for a message, cut after limit characters with its length (and why it matters) when longer:
    "'abc'", or "'abcd...'... (1,000 characters: too long for a path)"."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters{': ' + why if why else ''})"


def minutes_text(minutes: float) -> str:
    """"0.0567 minutes", "1 minute", "12.3 minutes", "1,234 minutes": three digits, where a budget may be a fraction
    of a minute, and never 1.23e+03."""
    shown = f"{minutes:.3g}" if minutes < 100 else f"{minutes:,.0f}"
    return f"{shown} minute{'' if shown == '1' else 's'}"


class TextgenError(Exception):
    """A problem the user can fix; the message names it and says what to do."""

    exit_code = 1
    python_message = None  # the message for a caller of the Python API, where its advice is a call, not a command


class OptionError(TextgenError, ValueError):
    """An option value outside what it accepts (a ValueError too, for library callers). The command exits 2, as
    for an option click itself refuses (an unknown one, a word for a number): a script tells a wrong call from a
    failure (1)."""

    exit_code = 2


class RunBusy(TextgenError):
    """Another training holds the run. The command exits 75 (EX_TEMPFAIL, "try again later"): a batch job that was
    requeued while its old copy still saves tells this from a failure (1), and retries."""

    exit_code = 75


class MissingFile(TextgenError, FileNotFoundError):
    """A file the user named does not exist (a FileNotFoundError too, for library callers: ``except
    FileNotFoundError`` around ``textgen.train("notes.txt")`` catches it)."""


# A command inside a message ("train it again with: textgen train CORPUS --run NAME"), which keeps its spelling.
_COMMAND = re.compile(r"textgen [a-z]+(?: [^;()]*)?")
# An option as the command line spells it (a word of its own, not inside a path such as a--b), whether it is asked
# for (after "pass", "with", ...) and the word after it, which may be its value.
_OPTION = re.compile(r"(?P<asked>\b(?:pass|add|with|without|use) )?(?<![^\s(])--(?P<name>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
                     r"(?P<after> (?P<word>'[^']*'|[^\s;,:)]+))?")  # a word, or one quoted as the shell quotes it
_NUMBER = re.compile(r"-?\d[\d,.]*")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")  # NAME, CORPUS


# The commands with a Python call of their own, which a message to a Python caller suggests instead
_CALLS = {"runs": ("textgen.list_runs", {"checkpoint_dir"}), "train": ("textgen.train", None)}
# The arguments that are names or paths: a string in the call whatever they look like (a run 2025, a folder DATA),
# but for the placeholders the messages write
_NAMED = {"corpus": "CORPUS", "run": "NAME", "checkpoint_dir": "DIR"}


def _argument(name: str, value: str) -> str:
    if name in _NAMED:
        return value if value == _NAMED[name] else repr(value)
    return value if _PLACEHOLDER.fullmatch(value) or re.fullmatch(r"-?\d+(\.\d+)?", value) else repr(value)


def _as_call(command: str) -> str:
    """A suggested ``textgen runs`` or ``textgen train`` command as the call that does the same
    (textgen.list_runs(checkpoint_dir='ck'), textgen.train(CORPUS, run='r', resume=True)); other commands, and any
    the call cannot say word for word, as they are."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) < 2 or words[1] not in _CALLS:
        return command
    if command.rstrip()[-1] in ".,:" and words[-1] not in (".", ".."):  # mid-sentence (not a directory . or ..)
        return command
    function, keywords = _CALLS[words[1]]
    rest, arguments = words[2:], []
    if rest and keywords is None and not rest[0].startswith("-"):
        arguments.append(_argument("corpus", rest.pop(0)))
    while rest:
        option = rest.pop(0)
        name = option[2:].replace("-", "_")
        if not option.startswith("--") or name == "help" or (keywords is not None and name not in keywords):
            return command
        if not rest or rest[0].startswith("--"):  # a flag
            arguments.append(f"{name}=True")
            continue
        arguments.append(f"{name}={_argument(name, rest.pop(0))}")
    return f"{function}({', '.join(arguments)})" + command[len(command.rstrip()):]


def as_keywords(error: TextgenError, names: Collection[str], flags: Collection[str] = (), json: bool = False,
                valued: Collection[str] = (), choices: Collection[str] = (),
                keep: Collection[str] = ()) -> TextgenError:
    """The error as the Python API (or, with json, the HTTP API) gives it: the options in names spelled as keywords
    (--epochs 20 as epochs=20, --run NAME as run=NAME, a flag in flags when asked for, "pass --resume" or "--resume
    to", as resume=True) or JSON fields ("epochs": 20, "skip_unknown": true). The word after an option is its value
    when it is a number or a placeholder, one of choices (--size auto), or whatever follows an option in valued
    (--run demo); else it stays a word of the sentence (--epochs must be ...). The rest of the message, and the
    commands in it, as the command line has it, and the texts in keep (paths, which may hold " --seed 5"). Of the
    same class as error, with its attributes."""

    def keyword(match: re.Match) -> str:
        name, word, tail = match["name"].replace("-", "_"), match["word"], match["after"] or ""
        if name not in names:
            return match.group(0)
        value = None
        if word is not None and name not in flags:
            if _NUMBER.fullmatch(word) or _PLACEHOLDER.fullmatch(word):
                value, tail = word, ""
            elif name in valued or word in choices:
                word = word[1:-1] if word.startswith("'") else word  # shlex.quote's 'my runs'
                value, tail = (dumps(word) if json else repr(word)), ""
        elif name in flags and (match["asked"] or word == "to"):  # not "--resume must be true or false"
            value = "true" if json else "True"
        spelled = name if value is None else f'"{name}": {value}' if json else f"{name}={value}"
        return (match["asked"] or "") + spelled + tail

    text, pieces, start = str(error), [], 0
    masks = {f"\0{index}\0": piece for index, piece in enumerate(sorted(set(keep) - {""}, key=len, reverse=True))}
    for mask, piece in masks.items():
        text = text.replace(piece, mask)
    for command in _COMMAND.finditer(text):
        suggested = command.group(0)
        if not json:
            for mask, piece in masks.items():
                suggested = suggested.replace(mask, piece)
            suggested = _as_call(suggested)
        pieces += [_OPTION.sub(keyword, text[start:command.start()]), suggested]
        start = command.end()
    pieces.append(_OPTION.sub(keyword, text[start:]))
    text = "".join(pieces)
    for mask, piece in masks.items():
        text = text.replace(mask, piece)
    renamed = type(error).__new__(type(error))  # not type(error)(message): subclasses take other arguments
    renamed.__dict__.update(error.__dict__)
    renamed.args = (text,)
    return renamed
