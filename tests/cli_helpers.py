"""Running ``mp`` in-process from tests, and reading what it printed."""

from __future__ import annotations

from typer.testing import CliRunner

from mpcli.cli import app

runner = CliRunner()


def mp(*args):
    """Run ``mp`` in-process; returns the click Result (stdout, stderr, exit_code)."""
    return runner.invoke(app, [str(a) for a in args])


def nonblank_lines(text: str) -> list[str]:
    """The lines of ``text`` that are not blank (one-line error checks)."""
    return [line for line in text.splitlines() if line.strip()]
