"""The `textgen` command: parses options and delegates to the library (train, generate, evaluate)."""

from __future__ import annotations

import atexit
import codecs
import contextlib
import dataclasses
import errno
import functools
import io
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
from pathlib import Path

import click

from textgen.config import (CHECKPOINT_DIR_VARIABLE, DEFAULT_CHECKPOINT_DIR, DEFAULT_SHUTDOWN_TIMEOUT, EXPORT_FORMATS,
                            GENERATE_SIGNATURES, MAX_PRIME_FILE_CHARS, SERVER_LOG_LEVELS, Limits, ModelConfig,
                            SampleConfig, TrainConfig, command_line_options, meant_option, option_flag,
                            reads_as_number, split_training_options)
from textgen.distribute import STRATEGIES
from textgen.progress import CurrentStderr
from textgen.quiet_import import import_tensorflow_quietly

LIST = "LIST"  # the metavar of an option that takes several values as one comma-separated text


def _config_options(config_class):
    """One click option per declared field (textgen.config), default None so we know what the user chose."""

    def decorate(command):
        for name, (rule, default) in reversed(command_line_options(config_class).items()):
            names = [option_flag(name), *([rule.short] if rule.short else []), name]
            if isinstance(default, bool):
                command = click.option(*names, is_flag=True, default=None, help=rule.help)(command)
                continue
            if rule.many and rule.text:  # once per text: a comma may be part of one
                command = click.option(*names, multiple=True, callback=lambda ctx, param, texts: texts or None,
                                       help=rule.help)(command)
                continue
            if rule.choices:
                kind = click.Choice(rule.choices)
            elif rule.many or not rule.numeric:
                kind = str
            else:
                kind = int if rule.integer else float
            notes = [f"default: {','.join(f'{v:g}' for v in default) if rule.many else default}"]
            notes = notes if default not in (None, "") else []
            notes += [f"range: {rule.span()}"] if rule.numeric else []
            # given more than once (-t 0.2 -t 0.5), a list's values add up, as a repeated --stop's do (click kept the
            # last one without a word)
            split = (lambda ctx, param, texts, rule=rule, name=name:
                     _parsed_list(rule, name, texts) if texts else None) if rule.many else None
            command = click.option(*names, type=kind, default=None, callback=split, metavar=LIST if rule.many else None,
                                   multiple=rule.many,
                                   help=rule.help + (f"  [{'; '.join(notes)}]" if notes else ""))(command)
        return command
    return decorate


DECIMAL_COMMA_ABOVE = 2  # "-t D,N" with N above this is told it gave two temperatures: none that high is meant


def _parsed_list(rule, name: str, texts: tuple) -> tuple:
    """The values of a list option given once or more; one typed as a decimal comma ("-t 0,7", which French or German
    habits type for 0.7) is told that it gave two (temperatures 0 and 7 were sampled without a word)."""
    values = rule.parse_many(name, ",".join(texts))
    decimal = re.fullmatch(r"(\d)[,，](\d+)", texts[0].strip()) if len(texts) == 1 else None
    if decimal and values[1] > DECIMAL_COMMA_ABOVE:  # (-t 0,1, greedy and 1, is a pair worth asking for)
        meant = f"{decimal[1]}.{decimal[2]}"
        click.echo(f"note: {option_flag(name)} {texts[0].strip()} is two values, {values[0]:g} and {values[1]:g}; for "
                   f"{meant}, type a point: {option_flag(name)} {meant}", err=True)
    return values


def _chosen(values: dict, names) -> dict:
    return {name: values[name] for name in names if values.get(name) is not None}


def _not_empty(advice: str, convert=str):
    """A callback refusing an empty or blank value (an empty shell variable) with advice, and converting the others:
    "" would silently mean something else -- not given (--run: the latest run, or the corpus's name), every interface
    (--host), or the current directory (a path, which the command would read or write instead, or report as a
    directory the user never named). For a click.Path() of str, which hands the callback the text as typed."""

    def check(ctx, param, value):
        if value is None:
            return None
        if not value.strip():
            raise click.BadParameter(advice)
        return convert(value)

    return check


_run_name_given = _not_empty("give a run name, or leave --run out")


def _user_path(value: str) -> Path:
    """A path with ~ expanded: the shell leaves it as typed in --option=~/x and within quotes, and the command then
    read or wrote a folder named ~ in the current directory."""
    from textgen.files import expand_user

    return Path(expand_user(value))


def _origins(ctx, param, values):
    """Web origins as browsers send them (scheme://host[:port]): one with a path or a trailing slash never matches,
    and the API stayed closed to the page without a word."""
    for value in values:
        if value != "*" and not re.fullmatch(r"https?://[^/\s]+", value):
            raise click.BadParameter(f"{value!r} is not an origin; give scheme://host[:port] without a path, such as "
                                     "http://localhost:3000, or * for any")
    return values


def _host_names(ctx, param, values):
    """Host names as a Host header carries them (with no scheme or path, which would never match), a domain's names
    as .example.org, or * for any."""
    for value in values:
        if value != "*" and not re.fullmatch(r"(\*?\.)?[A-Za-z0-9_.-]+(:\d+)?|\[[0-9A-Fa-f:.%]+\](:\d+)?", value):
            raise click.BadParameter(f"{value!r} is not a host name; give one as a browser's address bar has it, "
                                     "without http:// or a path, such as gpu-box.lab.example.org, .example.org for "
                                     "every name in that domain, or * for any")
    return values


def _finite_seconds(ctx, param, value):
    if not math.isfinite(value):  # click.FloatRange lets nan and inf through (nan waited no time, inf for ever)
        raise click.BadParameter(f"must be a number of seconds, such as 10, not {value}")
    return value


_checkpoint_dir_given = _not_empty("give a directory, such as checkpoints or . for the current one", _user_path)


def _checkpoint_dir(ctx, param, value):
    path = _checkpoint_dir_given(ctx, param, value)
    if ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT and path.is_file():
        # (a message about --checkpoint-dir would name an option the user never typed)
        raise click.UsageError(f"{CHECKPOINT_DIR_VARIABLE} is {value}, a file; set it to the directory of the runs, "
                               "or give --checkpoint-dir")
    return path


checkpoint_dir_option = click.option(
    "--checkpoint-dir", type=click.Path(), default=DEFAULT_CHECKPOINT_DIR, show_default=True,
    envvar=CHECKPOINT_DIR_VARIABLE, show_envvar=True, callback=_checkpoint_dir, help="Directory holding the runs.")
run_option = click.option("--run", default=None, callback=_run_name_given,
                          help="Run name (a directory under --checkpoint-dir); default: the latest run with a "
                               "best checkpoint.")


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as one JSON document, for scripts (its keys are the Python "
                                "API's: README.md, \"Python API\").")


def _json_text(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"  # default: paths as strings


def _echo_json(value) -> None:
    click.echo(_json_text(value), nl=False)


_COMMAND_LINES = CurrentStderr()


def _report_diagnostics_on_stderr() -> None:
    """The library reports through the "textgen" logger; the command shows its messages as plain lines."""
    logger = logging.getLogger("textgen")
    if _COMMAND_LINES not in logger.handlers:  # (not textgen.train's own, in another thread of a program)
        logger.addHandler(_COMMAND_LINES)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _hold_with_devnull(descriptor: int) -> None:
    """/dev/null as the closed standard descriptor: else the next file opened took it (a run's lock file), where a
    library's or a child process's output (TensorFlow's C++ log lines on 2) would have gone."""
    if (null := os.open(os.devnull, os.O_WRONLY)) != descriptor:
        os.dup2(null, descriptor)
        os.close(null)


class _ClosedOutput(io.TextIOBase):
    """Standard output when its descriptor is closed: Python leaves sys.stdout None, on which the command failed with
    a traceback (even after a training that saved its run). Writing to it fails as writing to a closed descriptor
    does, which the command reports in one line (exit 1); a command that writes nothing there succeeds."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def isatty(self) -> bool:
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, in the commands that clean up after an interrupt; they then exit 143
    (128 + the signal), as a process the signal ended. (An interrupt carries its exit code, as training's does.)"""

    exit_code = 128 + signal.SIGTERM


def _sigterm_as_interrupt(command):
    """Run command with SIGTERM (kill, docker stop, a job's time limit) raising Terminated: an export removes what it
    built, a sample to --output keeps its text so far (they left temporary directories, or lost the text). Training
    and the server handle SIGTERM themselves; the other commands keep its default, which ends them at once."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            return command(*args, **kwargs)

        def terminate(signum, frame):
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            return command(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return run


class RepeatsNoted(click.Command):
    """A command that notes an option of one value given more than once, of which click keeps the last: a sweep's
    `plot --run a --run b` drew b alone, without a word."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            raw, _, order = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:  # said by click's own parsing, below
            raw, order = {}, []
        args = super().parse_args(ctx, args)
        for param in dict.fromkeys(order):
            if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag) \
                    and (times := order.count(param)) > 1 and not ctx.resilient_parsing:
                _tell(f"note: {param.opts[-1]} is given {times} times; the last one is used: {raw.get(param.name)}")
        return args


class OneLineErrors(click.Group):
    """Every failure is one line on stderr and a non-zero exit code, never a traceback."""

    command_class = RepeatsNoted

    def main(self, args=None, prog_name=None, **extra):
        from textgen.errors import TextgenError

        extra.pop("standalone_mode", None)
        if sys.stdout is None:  # started with its standard output closed (>&-)
            sys.stdout = _ClosedOutput()
            _hold_with_devnull(1)
        if sys.stderr is None:  # started with its standard error closed (2>&-): the diagnostics go nowhere; sample,
            # eval and export failed (exit 1, nothing written), muting TensorFlow's import with os.dup(2)
            _hold_with_devnull(2)
            sys.stderr = open(os.devnull, "w")
        _report_diagnostics_on_stderr()
        _escape_what_stdout_cannot_encode()
        try:
            result = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.Abort as aborted:  # (click's own name for a KeyboardInterrupt it met)
            _tell("terminated" if isinstance(aborted.__cause__, Terminated) else "aborted")
            sys.exit(getattr(aborted.__cause__, "exit_code", 130))
        except click.exceptions.NoArgsIsHelpError as error:  # plain `textgen`: the help, not an error line
            _tell(error.format_message())
            sys.exit(error.exit_code)
        except click.ClickException as error:
            argv = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
            if isinstance(error, click.NoSuchOption) and error.ctx is not None:
                _suggest_our_name(error)
            command = error.ctx.command_path if getattr(error, "ctx", None) else \
                next((f"{prog_name or 'textgen'} {arg}" for arg in argv if arg in self.commands
                      and isinstance(error, click.UsageError)), None)  # --stop given no value: no context
            meant = _extra_argument_hint(error.ctx, argv) if getattr(error, "ctx", None) and \
                error.format_message().startswith("Got unexpected extra argument") else ""
            _tell(f"error: {error.format_message()}{meant}{f' (see: {command} --help)' if command else ''}")
            sys.exit(error.exit_code)
        except TextgenError as error:
            _tell(str(error) if error.exit_code > 128 else f"error: {error}")  # > 128: stopped by a signal
            sys.exit(error.exit_code)
        except KeyboardInterrupt as interrupted:
            _tell("interrupted")
            sys.exit(getattr(interrupted, "exit_code", 130))
        except BrokenPipeError:
            sys.exit(0)
        except PermissionError as error:  # one that nothing above foresaw: another user's file in a shared folder
            what = f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
            _tell(f"error: {what} (see who owns it and its mode with ls -l); choose another path, or ask its owner")
            sys.exit(1)
        except OSError as error:
            if error.filename is not None:  # a file's own error: the library says what to do about those
                raise
            _stdout_failed(error)
        try:
            sys.stdout.flush()  # here, where a full disk behind stdout can still be reported
        except BrokenPipeError:
            sys.exit(0)
        except OSError as error:
            _stdout_failed(error)
        sys.exit(result if isinstance(result, int) else 0)


def _tell(message: str) -> None:
    """A diagnostic on stderr, unless stderr is gone (EIO once a training's terminal hung up): the exit code still
    tells what happened, where writing the message raised and made it 1."""
    with contextlib.suppress(OSError):
        click.echo(message, err=True)


def _escape_what_stdout_cannot_encode() -> None:
    """On an output that is not UTF-8 (a GBK console, a redirect on Windows), a listing's character the encoding
    lacks is written escaped (\\u2022) instead of ending the command in a traceback: `runs` and `info` print run
    names and corpus characters. sample's text is refused instead (_strict_stdout), since escaped it would be wrong.
    An error handler the user chose (PYTHONIOENCODING=gbk:replace) is left as it is."""
    global _stdout_escaped
    _stdout_escaped = False
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    if not codecs.lookup(encoding).name.startswith("utf") and getattr(sys.stdout, "errors", None) == "strict" \
            and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
        _stdout_escaped = True


_stdout_escaped = False  # _escape_what_stdout_cannot_encode changed stdout's error handler


@contextlib.contextmanager
def _strict_stdout():
    """Generated text is not written escaped: at the first character the output's encoding lacks, the command fails
    in one line with the advice to write UTF-8 instead (a sample streamed live has printed its text up to there)."""
    from textgen.errors import TextgenError

    if _stdout_escaped:
        sys.stdout.reconfigure(errors="strict")
    try:
        yield
    except UnicodeEncodeError as error:
        character = error.object[error.start] if isinstance(error.object, str) else "?"
        raise TextgenError(f"cannot print {character!r} (U+{ord(character):04X}): this output's encoding "
                           f"({error.encoding}) has no such character; write the text to a UTF-8 file with --output "
                           "FILE, or set PYTHONIOENCODING=utf-8") from None


def _extra_argument_hint(ctx: click.Context, argv: list[str]) -> str:
    """What an extra argument was probably meant as: another value of the option before it (-t 0.5 0.8), the rest
    of an unquoted value (--prime Oh niño), or a prime given as sample's argument."""
    from textgen.files import has_file_extension

    values = {flag: param for param in ctx.command.params if isinstance(param, click.Option) and not param.is_flag
              and not param.count for flag in param.opts + param.secondary_opts}
    arguments = sum(isinstance(param, click.Argument) for param in ctx.command.params)
    tokens = argv[argv.index(ctx.info_name) + 1:] if ctx.info_name in argv else argv
    positional, after_value, index = [], {}, 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            positional += [(arg, None) for arg in tokens[index + 1:]]
            break
        if token in values and index + 1 < len(tokens):  # an option and its value, as two words
            after_value[index + 2] = (token, tokens[index + 1])
            index += 2
            continue
        flag, equals, value = token.partition("=")
        if equals and flag in values or len(token) > 2 and (flag := token[:2]) in values:  # --top-k=3, -t0.5
            after_value[index + 1] = (flag, value if equals else token[2:])
        elif not token.startswith("-") or token == "-":
            positional.append((token, after_value.get(index)))
        index += 1
    if len(positional) <= arguments:
        return ""
    extras = [token for token, _ in positional[arguments:]]
    option = positional[arguments][1]
    as_prime = f"; sample takes no arguments: give the start of the text as --prime {shlex.quote(' '.join(extras))}"
    if option is not None:
        flag, value = option
        param = values[flag]
        one = f": {flag} takes one value"
        # sample --run NAME "Once upon", --seed 1 "Once upon": a prime, not the rest of the option's value (a run
        # name has no spaces, a number no words; -n 2 3 is another number)
        if ctx.info_name == "sample" and not extras[0].startswith("-") and (param.name == "run" or (
                param.metavar == LIST or not isinstance(param.type, (click.types.StringParamType, click.Path)))
                and not reads_as_number(extras[0])):
            return as_prime
        if param.name == "run":
            return one
        if param.metavar == LIST:
            return f"{one}; give several as one list, as in {flag} {shlex.quote(','.join([value, *extras]))}"
        if param.multiple:
            return f"{one}; repeat it for each, as in " + " ".join(f"{flag} {shlex.quote(v)}" for v in [value, *extras])
        if isinstance(param.type, (click.types.StringParamType, click.Path)):
            return f"{one}; quote a value with spaces, as in {flag} {shlex.quote(' '.join([value, *extras]))}"
        return one
    if ctx.info_name == "sample" and not extras[0].startswith("-"):
        return as_prime
    if not arguments and "--run" in values and len(extras) == 1 and not extras[0].startswith("-"):  # info demo
        return f"; {ctx.info_name} takes no arguments: name the run with --run {shlex.quote(extras[0])}"
    if arguments == 1:  # train my corpus.txt
        (name,) = [param.human_readable_name for param in ctx.command.params if isinstance(param, click.Argument)]
        typed = [token for token, _ in positional]
        if all(has_file_extension(token) or os.path.isfile(token) for token in typed):  # a.txt b.txt
            return (f"; {ctx.info_name} takes one {name}, a file: to use several, join them into one first (cat "
                    f"{shlex.join(typed)} > all.txt)")
        return f"; {ctx.info_name} takes one {name}: quote a name with spaces, as in {shlex.quote(' '.join(typed))}"
    return ""


def _suggest_our_name(error: click.NoSuchOption) -> None:
    """click suggests the options spelled close to an unknown one: --lr got --layers and --run, not --learning-rate."""
    flags = {flag.lstrip("-").replace("-", "_"): flag for param in error.ctx.command.params for flag in param.opts}
    if meant := meant_option(error.option_name.lstrip("-").replace("-", "_"), list(flags)):
        error.possibilities = [flags[meant]]


def _stdout_failed(error: OSError) -> None:
    """Standard output cannot be written (a full disk, /dev/full): say so and exit 1, not 0 with the text lost."""
    click.echo(f"error: cannot write the output ({error.strerror or error}); write it elsewhere", err=True)
    try:  # the interpreter would flush the rest at exit and print a traceback-like note
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(1)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="textgen")
def cli():
    """Character-level text generation with a stateful LSTM."""


@cli.command(short_help="Train on CORPUS, a UTF-8 text file (default: the built-in corpus).")
@click.argument("corpus", required=False, type=click.Path(),
                callback=_not_empty("give a text file, or leave CORPUS out for the built-in corpus", _user_path))
@checkpoint_dir_option
@click.option("--run", default=None, callback=_run_name_given,
              help="Run name; default: the corpus file's name without its extension.")
@click.option("--resume", is_flag=True, help="Continue the run from its last checkpoint.")
@click.option("--auto-resume", is_flag=True,
              help="Continue the run if it has a checkpoint, else start it; a run with nothing left to train is "
                   "reported complete (exit 0): one command for a batch job that is requeued.")
@click.option("--overwrite", is_flag=True, help="Replace the run's existing checkpoints.")
@click.option("--init-from", metavar="RUN", default=None,
              callback=_not_empty("give a run's name, or its directory", str),
              help="Start a new run from the best weights of RUN (a run under --checkpoint-dir, or a run's "
                   "directory): fine-tuning on another text. The shape is RUN's; RUN is only read.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard logs to RUN/tensorboard.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto",
              show_default=True, help="tf.distribute strategy: mirrored = every local GPU, multi-worker = every "
                                      "host in TF_CONFIG, auto = mirrored if there are several GPUs.")
@_config_options(ModelConfig)
@_config_options(TrainConfig)
def train(corpus, checkpoint_dir, run, resume, auto_resume, overwrite, init_from, tensorboard, strategy, **options):
    """Train on CORPUS, a UTF-8 text file (default: the built-in corpus, data/pydoc_topics.txt; with --resume, or
    --auto-resume once the run has a checkpoint, the run's own corpus)."""
    from textgen.callbacks import Interrupted
    from textgen.data import DEFAULT_CORPUS, build_default_corpus
    from textgen.errors import TextgenError
    from textgen.runs import default_run_name
    from textgen.training import check_start, has_resumable_checkpoint
    from textgen.training import train as run_training

    model_options, train_options = split_training_options(options)
    if corpus is None and (resume or auto_resume and has_resumable_checkpoint(
            checkpoint_dir, run or default_run_name(DEFAULT_CORPUS), None)):
        # the run resumes on its own corpus; without --run, the built-in corpus's run
        run = run or default_run_name(DEFAULT_CORPUS)
    elif corpus is None:
        if not DEFAULT_CORPUS.is_file():  # a file the user did not name, in the current directory: said, and not
            # written for a training that is refused
            check_start(DEFAULT_CORPUS, checkpoint_dir, run, model_options, train_options, resume, overwrite,
                        init_from)
            logging.getLogger("textgen").info(f"no corpus given: writing the built-in one (Python's own "
                                              f"documentation) to {DEFAULT_CORPUS}")
        try:
            corpus = build_default_corpus(DEFAULT_CORPUS)
        except OSError as error:  # a read-only or full working directory (a traceback; "cannot write the output")
            raise TextgenError(f"cannot write the built-in corpus to {DEFAULT_CORPUS} ({error.strerror or error}); "
                               "give a CORPUS, or run textgen train in a directory you can write in") from None
    try:
        run_training(corpus, checkpoint_dir, run, model_options, train_options,
                     resume="auto" if auto_resume else resume, overwrite=overwrite, tensorboard=tensorboard,
                     strategy=strategy, init_from=init_from)
    except Interrupted as stopped:  # click would report a KeyboardInterrupt as "aborted", exit code 1
        raise stopped.for_command() from None


@cli.command()
@checkpoint_dir_option
@run_option
@_config_options(SampleConfig)
@click.option("--prime-file", type=click.Path(allow_dash=True), default=None,
              callback=_not_empty("give a file, or - for standard input", _user_path),
              help="Read the prime from a file (used as it is, a final newline included); - reads standard input.")
@click.option("--output", "-o", type=click.Path(allow_dash=True), default=None,
              callback=_not_empty("give a file name, such as samples.txt, or leave --output out for stdout",
                                  lambda value: None if value == "-" else _user_path(value)),  # (- was a file)
              help="Write the text to this file instead of stdout (- is stdout, as --prime-file - is stdin).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the samples as one JSON document, for scripts: the options used (the seed drawn if none "
                   "was given) and each sample's text, temperature, index and whether a stop string ended it.")
@_sigterm_as_interrupt
def sample(checkpoint_dir, run, prime_file, output, overwrite, as_json, **options):
    """Generate text from the best checkpoint of a run."""
    from textgen.corpus import read_standard_input, read_text
    from textgen.errors import counted
    from textgen.files import check_output, holds_text, write_output
    from textgen.generate import BATCH_CHUNK, STREAM_CHUNK, format_samples, generate_with, with_seed_drawn
    from textgen.runs import check_not_run_file, find_run

    if output is not None:
        check_output(output, overwrite)
    chosen = _chosen(options, command_line_options(SampleConfig))
    if prime_file is not None:
        if "prime" in chosen:
            raise click.UsageError("use either --prime or --prime-file, not both")
        chosen["prime"] = read_standard_input("prime", MAX_PRIME_FILE_CHARS) if str(prime_file) == "-" else \
            read_text(prime_file, "prime", MAX_PRIME_FILE_CHARS)
    _check_typed_text(chosen)
    config = SampleConfig(**chosen)
    config.validate()  # a bad option is told before a missing run
    if as_json:
        config = with_seed_drawn(config)
    run_dir = find_run(checkpoint_dir, run)
    if output is not None:
        check_not_run_file(output, run_dir)
    _note_typed_escapes(config.stops, config.prime if prime_file is None else None, run_dir)
    # One sample goes out as it is produced: to stdout (into a pipe too: `| head` waited for the whole text), or
    # kept for --output, which a Ctrl-C then still gets. Short pieces on a terminal, longer (faster) ones elsewhere.
    kept: list[str] = []
    live = config.sample_count == 1 and not as_json
    replacing = output is not None and holds_text(output)  # with --overwrite: only by a whole text
    chunk = STREAM_CHUNK if output is None and sys.stdout.isatty() else BATCH_CHUNK
    streamed, held = [], []  # a note that comes while the text streams is told after its last line, not on it

    def on_text(piece: str) -> None:
        streamed.append(True)
        (_echo_live if output is None else kept.append)(piece)

    def warn(message: str) -> None:
        (held.append if streamed and output is None else logging.getLogger("textgen").warning)(message)
    with _strict_stdout():
        try:
            samples = generate_with(config, run_dir, None, on_text=on_text if live else None,
                                    show_progress=output is not None, chunk=chunk, warn=warn)
        except KeyboardInterrupt as interrupted:
            if output is None or not kept:
                raise
            so_far = f"the text so far ({counted(len(''.join(kept)), 'character')}, the prime included)"
            if replacing:  # what the user had is not given up for a part of what they asked for
                click.echo(f"interrupted: {output} is kept as it was; {so_far} is not written over it", err=True)
            else:
                write_output(output, "".join(kept), overwrite)
                click.echo(f"interrupted: {so_far} is in {output}", err=True)
            sys.exit(getattr(interrupted, "exit_code", 130))
        # One line break at the end, to stdout and --output alike: one sample's text, then one; several end with
        # theirs (a second made a blank line at the end)
        if as_json:
            used = dict(dataclasses.asdict(config), stop=list(config.stops), run=run_dir.name)
            ended = _json_text(dict(options=used, samples=[dataclasses.asdict(sample) for sample in samples]))
        else:
            text = format_samples(samples, len(config.temperature))
            ended = text + "\n" if live else text
        if output is not None:
            write_output(output, ended, overwrite)
        else:
            click.echo("\n" if live else ended, nl=False)
        for message in held:
            logging.getLogger("textgen").warning(message)


def _check_typed_text(chosen: dict) -> None:
    """Refuse a text option whose bytes on the command line are not UTF-8 (a prime typed in a GBK terminal): Python
    reads each such byte as a lone surrogate, which check_text would call a JSON request's fault."""
    from textgen.errors import OptionError

    for name, value in chosen.items():
        for text in (value,) if isinstance(value, str) else value if isinstance(value, tuple) else ():
            if isinstance(text, str) and (bad := re.search("[\udc80-\udcff]", text)):
                elsewhere = ", or give the prime in a UTF-8 file with --prime-file" if name == "prime" else ""
                if _utf8_bytes(text):  # Python read them in the C locale's ASCII
                    raise OptionError(f"{option_flag(name)} came as UTF-8, but this Python reads the command line as "
                                      "ASCII: the locale is C or POSIX (LC_ALL=C); set LC_ALL=C.UTF-8 (or "
                                      f"PYTHONUTF8=1){elsewhere}")
                raise OptionError(f"{option_flag(name)} is not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02X} at "
                                  f"character {bad.start()}): the terminal sends another encoding, such as GBK or "
                                  f"Latin-1; set it to UTF-8{elsewhere}")


def _utf8_bytes(text: str) -> bool:
    """Whether the bytes text was read from (undecodable ones kept as surrogates) are UTF-8."""
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
        return True
    except UnicodeError:
        return False


def _note_typed_escapes(stops: tuple, prime: str | None, run_dir: Path) -> None:
    """--stop '\\n' or --prime 'def f():\\n\\treturn' in a shell is backslashes and letters: said where the model
    writes the line break or tab meant (a stop string that is one, typed so, never ended a sample at a line break;
    a prime is said before any refusal of a backslash the model never saw). prime: as typed with --prime (None: from
    a file, where a backslash is the file's). The run's vocabulary is read only when there is something to say."""
    from textgen.checkpoint import run_vocabulary
    from textgen.generate import TYPED_ESCAPES

    typed_stops = [stop for stop in stops if stop in TYPED_ESCAPES]
    in_prime = [escape for escape in TYPED_ESCAPES if prime is not None and escape in prime]
    vocab = run_vocabulary(run_dir) if typed_stops or in_prime else None
    if vocab is None:
        return
    say = logging.getLogger("textgen").warning
    for stop in typed_stops:
        meant, what = TYPED_ESCAPES[stop]
        if meant in vocab and not vocab.unknown(stop):
            say(f"note: --stop '{stop}' is a backslash and {stop[1]}, which the model also writes, not {what}; for "
                f"{what}, type --stop $'{stop}'")
    meant = [escape for escape in in_prime if TYPED_ESCAPES[escape][0] in vocab]
    if meant:
        what = ", and ".join(f"{escape} is a backslash and {escape[1]}, not {TYPED_ESCAPES[escape][1]}"
                             for escape in meant)
        say(f"note: in --prime, {what}; to mean {'them' if len(meant) > 1 else 'it'}, type --prime $'...' in a "
            "shell (or give the prime with --prime-file)")


def _echo_live(text: str) -> None:
    try:
        click.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader has gone (| head): the end of a pipe, not an error (click would exit 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at the exit
        sys.exit(0)


def _file_or_dash(value: str):
    """"-" as it is (standard input), else the path: ./- stays the file named -."""
    return value if value == "-" else _user_path(value)


@cli.command(name="eval", short_help="Bits per character and perplexity of FILE under a run's best checkpoint.")
@click.argument("file", type=click.Path(allow_dash=True),
                callback=_not_empty("give a text file, or - for standard input", _file_or_dash))
@checkpoint_dir_option
@run_option
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Parallel streams the text is cut into, each starting from a fresh state (1 reads a short text "
                   "as one stream).")
@click.option("--seq-length", type=int, default=200, show_default=True, help="Characters per evaluation window.")
@json_option
@_sigterm_as_interrupt
def evaluate(file, checkpoint_dir, run, batch_size, seq_length, as_json):
    """Bits per character and perplexity of FILE under a run's best checkpoint; - reads the text from standard
    input."""
    import_tensorflow_quietly()
    from textgen.corpus import STANDARD_INPUT
    from textgen.evaluation import evaluate_standard_input
    from textgen.evaluation import evaluate as run_evaluation

    if file == "-":
        result = evaluate_standard_input(checkpoint_dir, run, batch_size, seq_length, show_progress=True)
    else:
        result = run_evaluation(file, checkpoint_dir, run, batch_size, seq_length, show_progress=True)
    if as_json:
        _echo_json(dict(file=str(file), **{key: value for key, value in result.items() if key != "batches"}))
        return
    left_over = result["unscored"] - 1  # (the first character is never scored)
    shown = STANDARD_INPUT if file == "-" else file
    click.echo(f"{shown}: {result['bpc']:.4f} bits per character, {result['nats']:.4f} nats, "
               f"perplexity {result['perplexity']:.3f} over {result['characters']:,} characters "
               f"({result['unknown']:,} outside the vocabulary excluded, {result['unscored']:,} unscored: the "
               "first" + (f" and the last {'one' if left_over == 1 else f'{left_over:,}'}, too few to fill all "
                          f"{batch_size} streams)" if left_over else ")"))
    if result["unknown_characters"]:  # (on stderr: stdout's line is the score, for scripts)
        from textgen.checkpoint import run_vocabulary
        from textgen.generate import known_variants
        from textgen.vocab import quoted_first

        # straight quotes in a poem scored by a model of curly ones: its score read as "my poem fits better" (a
        # damaged best.json, which the score fell back from, is no reason to fail here)
        vocab = run_vocabulary(result["run_dir"])
        variants = known_variants(result["unknown_characters"], vocab) if vocab is not None else ""
        logging.getLogger("textgen").warning(
            f"note: excluded as the model never saw them: {quoted_first(result['unknown_characters'])}"
            + (f" (the model knows {variants}: convert the text to score it whole)" if variants else ""))


@cli.command(name="export", short_help="Export a run's best checkpoint for plain Keras, TensorFlow Serving or LiteRT.")
@checkpoint_dir_option
@run_option
@click.option("--format", "formats", multiple=True, type=click.Choice([*EXPORT_FORMATS, "all"]),
              default=["keras", "savedmodel"], show_default=True,
              help="keras = model.keras (stock layers, batch 1); savedmodel = TensorFlow SavedModel with "
                   f"step, {', '.join(list(GENERATE_SIGNATURES)[:-1])} and {list(GENERATE_SIGNATURES)[-1]} "
                   "signatures; litert = model.tflite of one step. Repeat for several. Each export also has "
                   "vocab.json.")
@click.option("--output", "-o", type=click.Path(), required=True,
              callback=_not_empty("give a directory to write, such as exports/NAME", _user_path),
              help="Directory to write (new or empty, or an earlier export with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT, an earlier export, whole (only once the new export "
                                                "is complete): the formats not written again are removed.")
@_sigterm_as_interrupt
def export_command(checkpoint_dir, run, formats, output, overwrite):
    """Export a run's best checkpoint for plain Keras, TensorFlow Serving or LiteRT (no textgen needed)."""
    import_tensorflow_quietly()
    from textgen.export import export
    from textgen.runs import find_run

    for path in export(find_run(checkpoint_dir, run), output, formats, overwrite):
        click.echo(str(path))


@cli.command()
@checkpoint_dir_option
@click.option("--run", default=None, callback=_run_name_given,
              help="The run served by default; default: the latest run with a best checkpoint (the next, with a "
                   "warning, if it cannot be loaded). Every run in --checkpoint-dir can be asked for by name.")
@click.option("--host", default="127.0.0.1", show_default=True,
              callback=_not_empty("give an address such as 127.0.0.1 (0.0.0.0 for every interface)"),
              help="Address to listen on; 0.0.0.0 makes the server reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--max-length", type=click.IntRange(1), default=Limits.max_length, show_default=True,
              help="Most characters one request may generate.")
@click.option("--max-samples", type=click.IntRange(1), default=Limits.max_samples, show_default=True,
              help="Most samples one request may ask for.")
@click.option("--max-prime-chars", type=click.IntRange(1), default=Limits.max_prime_chars, show_default=True,
              help="Most characters of a request's prime. A long prime holds up the other requests generating "
                   "with the same run while it is read.")
@click.option("--max-score-chars", type=click.IntRange(2), default=Limits.max_score_chars, show_default=True,
              help="Most characters of a text sent to /v1/score. With --max-prime-chars it sets the largest "
                   "request body accepted.")
@click.option("--max-loaded-runs", type=click.IntRange(2), default=Limits.max_loaded_runs, show_default=True,
              help="Runs kept in memory at once; a request for another unloads the one used least recently "
                   "(a run still generating last, never the default run).")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=DEFAULT_SHUTDOWN_TIMEOUT, show_default=True,
              callback=_finite_seconds,
              help="Seconds that Ctrl-C or SIGTERM lets the requests in flight finish; then the rest are cut "
                   "(a stream gets an error event, another request a 503). Keep it below your service manager's own "
                   "(docker stop: 10, systemd: 90).")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN", callback=_origins,
              help="Let web pages from this origin (such as http://localhost:3000, or * for any) call the API "
                   "from a browser (CORS). Repeat for several. Default: only the server's own page.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME", callback=_host_names,
              help="Also answer requests for this host name: a proxy in front that passes its own on (such as "
                   "Caddy), or a name others reach this machine by on the network (a container's service name); "
                   ".example.org for every name in that domain, * for any. Repeat for several. Default: this "
                   "machine's names (and, beyond the loopback interface, any IP address) only.")
@click.option("--log-level", type=click.Choice(SERVER_LOG_LEVELS), default="info", show_default=True,
              help="The least severe log lines shown (each with its time): info has one per request, warning only "
                   "problems.")
def serve(checkpoint_dir, run, host, port, max_length, max_samples, max_prime_chars, max_score_chars, max_loaded_runs,
          shutdown_timeout, allow_origins, allow_hosts, log_level):
    """Serve the runs over HTTP: a JSON API under /v1 and a playground page at /."""
    from textgen.serve import serve as run_server

    limits = Limits(max_length=max_length, max_samples=max_samples, max_prime_chars=max_prime_chars,
                    max_score_chars=max_score_chars, max_loaded_runs=max_loaded_runs)
    run_server(checkpoint_dir, run, host, port, limits,
               shutdown_timeout=shutdown_timeout, allow_origins=allow_origins, allow_hosts=allow_hosts,
               log_level=log_level)


@cli.command()
@checkpoint_dir_option
@run_option
@click.option("--vocabulary", is_flag=True, help="Print every character the model knows instead (one line, in "
              "code point order, control characters and joining marks escaped).")
@json_option
def info(checkpoint_dir, run, vocabulary, as_json):
    """Configuration, progress, losses and files of a run."""
    from textgen.report import info_record, info_text, vocabulary_text
    from textgen.runs import find_run

    if as_json and vocabulary:
        raise click.UsageError("--json holds the vocabulary (its \"vocabulary\" key): give --json or --vocabulary, "
                               "not both")
    run_dir = find_run(checkpoint_dir, run)
    if as_json:
        _echo_json(info_record(run_dir))
    else:
        click.echo((vocabulary_text if vocabulary else info_text)(run_dir))


@cli.command()
@checkpoint_dir_option
@json_option
def runs(checkpoint_dir, as_json):
    """List the runs with their corpus, epochs and best validation bits per character."""
    from textgen.report import runs_table
    from textgen.runs import all_runs, check_checkpoint_dir, directory_option

    check_checkpoint_dir(checkpoint_dir)
    train_command = f"textgen train CORPUS{directory_option(checkpoint_dir)}"
    if not checkpoint_dir.is_dir():
        raise click.ClickException(f"no checkpoint directory {checkpoint_dir}; train a run with: {train_command}"
                                   + ("" if directory_option(checkpoint_dir) else " (or give --checkpoint-dir)"))
    found = all_runs(checkpoint_dir)
    if as_json:
        from textgen.report import run_rows

        _echo_json(run_rows(found))
    elif found:
        click.echo(runs_table(found))
    else:  # an empty listing is an answer, as with ls
        click.echo(f"no runs in {checkpoint_dir} yet; train one with: {train_command}", err=True)


def _run_names_given(ctx, param, values):
    return tuple(dict.fromkeys(_run_name_given(ctx, param, value) for value in values))  # (each once)


@cli.command()
@checkpoint_dir_option
@click.option("--run", "runs", multiple=True, callback=_run_names_given,
              help="Run name (a directory under --checkpoint-dir); default: the latest run with a best checkpoint. "
                   "Repeat it to draw several runs' validation curves in one picture (with --output).")
@click.option("--output", "-o", type=click.Path(), default=None,
              callback=_not_empty("give a file name, such as curve.png, or leave --output out for RUN/curve.png",
                                  _user_path),
              help="Draw the curve into this file (.png, .svg or .pdf) instead of RUN/curve.png, and leave the run "
                   "as it is (for a run you may not write in).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def plot(checkpoint_dir, runs, output, overwrite):
    """Redraw a run's curve and history, or compare several runs' curves."""
    from textgen.files import check_output
    from textgen.report import (curve_format, plot_history, plot_runs, steps_cut_short, validation_difference,
                                write_history)

    if len(runs) > 1 and output is None:
        raise click.ClickException("several runs are drawn into one picture: name its file with --output, such as "
                                   "--output runs.png")
    if output is not None:
        curve_format(output)
        check_output(output, overwrite, example="curve.png")
    plotted = [_plotted_run(checkpoint_dir, run) for run in runs or (None,)]
    try:
        if len(plotted) > 1:
            if unlike := validation_difference([meta for _, meta in plotted]):
                click.echo(f"note: {unlike}", err=True)
            click.echo(plot_runs([(run_dir.name, meta.state.history, meta.state.best_val_loss)
                                  for run_dir, meta in plotted], output))
            return
        (run_dir, meta), = plotted
        if output is None:
            click.echo(write_history(run_dir, meta.state.history))
        click.echo(plot_history(run_dir, meta.state.history, meta.state.best_val_loss, output,
                                steps_cut_short(meta.state)))
    except OSError as error:
        advice = "write elsewhere" if output else "fix the run directory and plot again, or draw the curve elsewhere " \
                                                  "with --output FILE.png"
        raise click.ClickException(f"cannot write {error.filename} ({error.strerror}); {advice}") from None


def _plotted_run(checkpoint_dir: Path, run: str | None) -> tuple:
    """(run directory, latest checkpoint metadata) of a run with a finished epoch to plot."""
    from textgen.checkpoint import read_run_meta
    from textgen.runs import find_run, run_options

    run_dir = find_run(checkpoint_dir, run)
    meta = read_run_meta(run_dir).latest
    if meta is None or not meta.state.history:
        raise click.ClickException(f"run {run_dir.name!r} has no finished epoch to plot yet; train it on to the end of "
                                   f"its first epoch with: textgen train {run_options(run_dir)} --resume")
    return run_dir, meta


def main(argv=None) -> None:
    """Console-script entry point (`textgen`, `python -m textgen`). A program that runs a command with
    main(ARGS) (or cli.main) keeps its own signal handlers and exit."""
    if argv is not None or threading.current_thread() is not threading.main_thread():
        cli.main(args=argv, prog_name="textgen")
        return
    try:
        cli.main(args=None, prog_name="textgen")
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        _exit_now(done.code if isinstance(done.code, int) else int(done.code is not None))
    _exit_now(0)


def _exit_now(status: int) -> None:
    """End the process with the command's status once it is over: its files saved, its lock let go, its output
    flushed. What Python's exit does that matters runs first (other threads finish, exit handlers run, the streams
    are flushed), with SIGINT and SIGTERM ending it at once with that status; Python's unloading of TensorFlow's
    modules (~0.6 s) is skipped: a signal there killed a training that had finished and saved (143: a batch job
    requeued), and one in an exit handler printed a traceback from it."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: os._exit(status))
    threading._shutdown()  # as Python's exit: a thread pool's workers told to stop, the other threads waited for
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
