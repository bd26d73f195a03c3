"""``mp --help`` for a clinician: metavars to type, whole summaries, examples as examples.

Help is rendered at 80 columns (a normal terminal). The README's command
blocks are checked against the help too, so the two cannot drift apart.
"""

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.helptext import ORDER, Typer

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("info", "adapt", "reconstruct", "eval", "watch", "meta-train")  # documented in the README
ALL = tuple(typer.main.get_command(app).commands)  # and any command added later


def help_text(*args) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    return res.stdout


def _summaries(top: str) -> dict[str, str]:
    """command → its summary in ``mp --help`` (continuation lines joined)."""
    block = top.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        m = re.match(r"  (\S+)\s+(.*)", line)
        if m and not line.startswith("    "):
            name = m.group(1)
            rows[name] = m.group(2).strip()
        elif name:
            rows[name] += " " + line.strip()
    return rows


def test_commands_listed_in_order_of_use_with_whole_summaries():
    top = help_text()
    rows = _summaries(top)
    listed = [n for n in rows if n in COMMANDS]
    assert listed == list(COMMANDS)
    assert sorted(rows) == sorted(ALL)
    known = [n for n in rows if n in ORDER]
    assert known == sorted(known, key=ORDER.index)
    for name in ALL:
        first_line = help_text(name).split("\n\n")[1].strip()  # the command's own first paragraph
        summary = rows[name]
        assert "..." not in summary and "…" not in summary, summary
        assert " ".join(first_line.split()) == summary, (name, summary)


@pytest.mark.parametrize("command", ("", *ALL))
def test_help_shows_what_to_type_not_python_types(command):
    text = help_text(*([command] if command else []))
    for python_ish in ("<list", "<path>", "<int>", "<str>", "<float>", "{", "no-overwrite", "no-resume"):
        assert python_ish not in text, (command, python_ish)
    assert all(len(line) <= 80 for line in text.splitlines()), [ln for ln in text.splitlines() if len(ln) > 80]
    if command:
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: mp {command} ") and usage.endswith("[OPTIONS]"), usage
        # every option that takes a value names it in capitals (or a literal such as shipped|FILE)
        for line in text.split("Options:\n", 1)[1].splitlines():
            m = re.match(r"\s+(?:-\w, )?(--[\w-]+)(?: (\S+))?", line)
            if m and m.group(2):
                assert re.search(r"[A-Z]", m.group(2)), line


def test_usage_lines_say_what_to_type():
    assert help_text("reconstruct").splitlines()[0] == "Usage: mp reconstruct SCAN|DIR... --out DIR [OPTIONS]"
    assert help_text("adapt").splitlines()[0] == "Usage: mp adapt --kspace SCAN|DIR [MORE_SCANS...] [OPTIONS]"
    assert help_text("info").splitlines()[0] == "Usage: mp info SCAN|DIR... [OPTIONS]"


def test_examples_render_one_per_line():
    text = help_text("meta-train")
    # the multi-GPU line is its own example, not glued to the previous sentence
    assert "prior.safetensors Multi-GPU" not in text
    assert re.search(r"^    torchrun --nproc_per_node=4 -m mpcli meta-train", text, re.M)
    for command in COMMANDS:
        examples = [ln.strip() for ln in help_text(command).splitlines() if ln.startswith("    mp ")]
        assert examples, command
        assert all(ex.startswith(f"mp {command} ") for ex in examples), examples


def test_exit_codes_are_one_per_line():
    text = help_text()
    table = text.split("Exit codes:\n", 1)[1].rstrip("\n").splitlines()
    codes = [int(line.split()[0]) for line in table if re.match(r"  \d", line)]
    assert codes == [0, 1, 2, 3, 4, 5, 6, 7, 130]  # the others are a long meaning's wrapped tail


def _readme_blocks(command: str) -> list[str]:
    """The README's code lines that run ``mp <command>``, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```\n(.*?)```", text, re.S))
    joined = re.sub(r"\n\s+(?=[\[-])", " ", code)  # synopsis continuation lines
    return [ln for ln in joined.splitlines() if re.match(rf"\s*(mp|.*-m mpcli) {re.escape(command)}\b", ln)]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_examples_use_only_options_the_help_lists(command):
    text = help_text(command)
    known = set(re.findall(r"(--[a-z][\w-]*)", text.split("Options:\n", 1)[1]))
    known |= set(re.findall(r"\s(-\w),", text))
    lines = _readme_blocks(command)
    assert lines, f"README shows no example of mp {command}"
    for line in lines:
        args = line.split("#", 1)[0].split(f" {command}", 1)[1]  # what follows the command (not torchrun's)
        for opt in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", args):
            assert opt in known, (command, opt, line)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_synopsis_is_the_help_usage_line(command):
    usage = help_text(command).splitlines()[0].removeprefix("Usage: ")
    assert usage in (ROOT / "README.md").read_text(), usage


def test_a_command_without_metavars_still_shows_words_to_type():
    """A command added later without ``metavar=`` gets its parameter names in capitals."""
    demo = Typer(add_completion=False, rich_markup_mode=None)

    @demo.command("watch")
    def watch(folder: Path = typer.Argument(...), out: Path = typer.Option(..., "--out"),
              every: float = typer.Option(2.0, "--every-seconds"), once: bool = typer.Option(False, "--once")):
        """Watch a folder."""

    @demo.command("other")
    def other():
        """Another."""

    res = CliRunner().invoke(demo, ["watch", "--help"], terminal_width=80)
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].endswith("watch FOLDER --out OUT [OPTIONS]")
    assert "--every-seconds EVERY_SECONDS" in res.stdout and re.search(r"^  --once$", res.stdout, re.M)
    assert "<" not in res.stdout and "{" not in res.stdout
