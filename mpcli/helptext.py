"""How ``mp --help`` reads: plain words a clinician can type, in the order of use.

Click and Typer describe parameters by their Python types (``<list[Path]>``,
``{inputs}...``) and cut command summaries at ~45 characters. Here:

- :class:`Typer` makes every command a :class:`Command`, which prints each
  argument by its ``metavar`` (``SCAN|DIR...``)
  and a usage line that starts with what must be typed
  (``mp reconstruct SCAN|DIR... --out DIR [OPTIONS]``);
- :class:`Group` lists the commands in :data:`ORDER` (then any others in the
  order they were added), never cuts a summary, and ends with the exit codes;
- :func:`verbatim` marks a block (examples) that click
  must print line by line instead of re-wrapping it into a paragraph.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from mpcli.errors import EXIT_CODES

# typer vendors its own click: parameters are told apart by ``param_type_name``
_ARG, _OPT = "argument", "option"

# The order a new user meets the commands: look at the files, adapt, reconstruct,
# score; training a prior is for later.
ORDER = ("info", "adapt", "reconstruct", "eval", "watch", "meta-train")


def verbatim(lines: str) -> str:
    """A help block click prints as is (``\\b`` stops its paragraph re-wrapping)."""
    return "\b\n" + "\n".join(line.rstrip() for line in lines.strip("\n").splitlines())


class Command(TyperCommand):
    """A Typer command whose help shows metavars, not Python types.

    A parameter declared without ``metavar`` gets its own name in capitals
    (``--device DEVICE``, ``INPUTS...``), never Typer's ``<list[Path]>``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for p in self.params:
            if p.metavar is None and not getattr(p, "is_flag", False) and not getattr(p, "count", False):
                if p.param_type_name == _ARG:
                    p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
                elif p.param_type_name == _OPT:
                    p.metavar = max(p.opts, key=len).lstrip("-").replace("-", "_").upper()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """What must be typed first: required arguments, required options, then the rest."""
        params = self.get_params(ctx)
        name = lambda p: p.metavar or p.name.upper()
        pieces = [name(p) for p in params if p.param_type_name == _ARG and p.required]
        pieces += [f"{max(p.opts, key=len)} {name(p)}" for p in params if p.param_type_name == _OPT and p.required]
        pieces += [f"[{name(p)}]" for p in params if p.param_type_name == _ARG and not p.required]
        return [*pieces, self.options_metavar] if self.options_metavar else pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args = [(p.metavar or p.name.upper(), p.help or "") for p in self.get_params(ctx)
                if p.param_type_name == _ARG and not getattr(p, "hidden", False)]
        opts = [rv for p in self.get_params(ctx) if p.param_type_name == _OPT
                and (rv := p.get_help_record(ctx)) is not None]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


class Typer(typer.Typer):
    """``typer.Typer`` whose commands are :class:`Command` unless told otherwise."""

    def command(self, *args: Any, cls: type | None = None, **kwargs: Any):
        return super().command(*args, cls=cls or Command, **kwargs)


class Group(TyperGroup):
    """The ``mp`` group: commands in the order of use, summaries never cut, then the exit codes."""

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        """The exit-code table, one code per row (long meanings wrap under themselves)."""
        with formatter.section("Exit codes"):
            formatter.write_dl([(str(code), text) for code, text in EXIT_CODES.items()])

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(self.commands)
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), names.index(n)))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.short_help or cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
