import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from update_readme import END, README, START, updated  # noqa: E402


def test_readme_option_reference_matches_the_cli():
    readme = README.read_text(encoding="utf-8")
    assert START in readme and END in readme
    assert updated(readme) == readme, "the README's option reference is stale: run make readme"


def test_the_architecture_table_names_every_module_and_the_test_table_every_test_file():
    guide = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for heading, first, folder in (("## Architecture", "| module |", "textgen"), ("## Tests", "| tests |", "tests")):
        table = guide[guide.index(heading):]
        table = table[:table.index("\n\n", table.index(first))]
        files = {path.name for path in (ROOT / folder).glob("test_*.py" if folder == "tests" else "*.py")}
        missing = sorted(name for name in files - {"__init__.py", "__main__.py"} if f"`{name}`" not in table)
        assert not missing, f"CONTRIBUTING.md's {heading[3:]} table does not name {missing}"


def test_the_training_and_sampling_tables_name_every_option():
    """The hand-written tables are a user's first look at the options: --weight-decay, which --size auto chooses,
    was missing from the training table (only the generated reference is checked against the CLI)."""
    import re

    from textgen.cli import cli

    readme = README.read_text(encoding="utf-8")
    for command, section in (("train", "## Training"), ("sample", "## Sampling")):
        text = readme[readme.index(section):]
        table = text[text.index("| option |"):]
        table = table[:table.index("\n\n")]
        listed = set(re.findall(r"`(--[a-z][a-z0-9-]*)", table))
        options = {name for param in cli.commands[command].params for name in param.opts if name.startswith("--")}
        assert options - {"--help"} <= listed, f"README's {section[3:]} table lacks {sorted(options - listed)}"


def test_the_training_and_sampling_tables_give_each_options_default():
    """The tables restate each default by hand, and only their option names were checked: a default changed in
    config.py would have gone on being shown as it was."""
    import dataclasses
    import re

    from textgen.config import ModelConfig, SampleConfig, TrainConfig

    def defaults_of(*configs):
        return {f"--{field.name.replace('_', '-')}": field.default for config in configs
                for field in dataclasses.fields(config) if field.default is not dataclasses.MISSING}

    shown_as = {None: {"off", "none", "random"}, False: {"off"}, "": {"none"}}
    readme = README.read_text(encoding="utf-8")
    for section, defaults in (("## Training", defaults_of(ModelConfig, TrainConfig)),
                              ("## Sampling", defaults_of(SampleConfig))):
        compared = 0
        text = readme[readme.index(section):]
        table = text[text.index("| option |"):]
        for row in table[:table.index("\n\n")].splitlines()[2:]:
            names_cell, default_cell = row.split(" | ")[:2]
            names = re.findall(r"`(--[a-z][a-z0-9-]*)", names_cell)
            shown = [value.strip("` ") for value in default_cell.split(",")] if len(names) > 1 else [default_cell]
            for name, value in zip(names, shown):
                if name not in defaults:
                    continue
                value, default = re.sub(r" \(fixed\)$", "", value.strip("` ")), defaults[name]
                if isinstance(default, tuple):  # --temperature: one value by default
                    default = default[0]
                stale = f"README's {section[3:]} table gives {name} '{value}'; it is {default!r}"
                if isinstance(default, (int, float)) and not isinstance(default, bool):
                    assert float(value) == default, stale
                else:
                    assert value == default or value in shown_as.get(default, ()), stale
                compared += 1
        assert compared == len(defaults), f"README's {section[3:]} table gives {compared} of {len(defaults)} defaults"


def test_make_train_on_ones_own_corpus_writes_only_the_default_one():
    """make train CORPUS=mine.txt ran `python -m textgen.data mine.txt` first: Python's docs over the user's text."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    quiet = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    planned = subprocess.run(["make", "--no-print-directory", "-n", "train", "CORPUS=mine.txt"], cwd=ROOT, env=quiet,
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert [line for line in planned if "textgen.data" in line] == \
        [".venv/bin/python -m textgen.data --overwrite data/pydoc_topics.txt"]
    assert planned[-1] == ".venv/bin/textgen train mine.txt"


def test_the_readme_lists_every_make_target_and_ci_runs_the_test_command_it_gives():
    import re

    readme = README.read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z-]+):.*## ", makefile, re.M)) - {"help"}  # the lister itself
    listing = readme[readme.index("`make help` lists every target:"):]
    listed = set(re.findall(r"`([a-z-]+)`", listing[:listing.index(".\n")]))
    assert listed == targets, f"README's target list lacks {sorted(targets - listed)}, names {sorted(listed - targets)}"
    development = readme[readme.index("## Development"):]
    tests = re.findall(r"^(make test[a-z-]*) +#", development[:development.index("```\n\n")], re.M)
    ci_commands = [line.split("#")[0].strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert re.search(r"^make test +#", readme, re.M) and tests == ["make test", "make test-slow"]
    assert [command for command in ci_commands if command.startswith("make test")] == tests


def test_the_readme_gives_the_servers_body_limit_as_it_is():
    """It said 300 KB where the server's 413 said 305536 bytes."""
    from textgen.config import Limits

    assert f"413 for a body over\n{Limits().max_body_bytes:,} bytes by default" in README.read_text(encoding="utf-8")
