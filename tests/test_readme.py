import sys
from pathlib import Path

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
