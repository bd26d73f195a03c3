"""Typed errors and the exit-code table.

Library code raises these; only :mod:`mpcli.cli` turns them into an exit code and
one line on stderr. Every error names the file it is about and the reason.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | internal error (a bug: please report it) |
| 2 | usage error (bad option or argument) |
| 3 | input error: unreadable, malformed, unsupported or too large input file |
| 4 | output error: cannot write, or an output would replace an input or a file mp did not write |
| 5 | model error: weights missing, tampered (SHA-256) or wrong architecture |
| 6 | device error: CUDA requested but absent, or out of GPU memory |
| 7 | partial: a batch finished but some files failed (see the summary) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_MODEL = 5
EXIT_DEVICE = 6
EXIT_PARTIAL = 7
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_USAGE: "usage error (bad option or argument)",
    EXIT_INPUT: "input error: unreadable, malformed, unsupported or too large input file",
    EXIT_OUTPUT: "output error: cannot write, or would replace an input or a file mp did not write",
    EXIT_MODEL: "model error: weights missing, tampered or wrong architecture",
    EXIT_DEVICE: "device error: CUDA absent or out of GPU memory",
    EXIT_PARTIAL: "partial: some files of a batch failed (see the summary)",
    EXIT_INTERRUPTED: "interrupted",
}


def printable(text: object) -> str:
    """``text`` with every control, format or line-separator character escaped.

    File names are data: a newline in a name must not start a second error line
    and an escape sequence must not reach the terminal, so ``"\\n"`` becomes the
    two characters ``\\n`` and ESC becomes ``\\x1b``. Printable characters of
    any script are kept as they are.
    """
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in str(text))


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class MpError(Exception):
    """Base class: ``str(err)`` is the one line the CLI prints (control characters escaped)."""

    exit_code = EXIT_INTERNAL

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(printable(f"{path}: {reason}" if path is not None else reason))


class UsageError(MpError):
    """A bad option value or a bad combination of options."""

    exit_code = EXIT_USAGE


class InputError(MpError):
    """An input file is unreadable, malformed or unsupported."""

    exit_code = EXIT_INPUT


class OutputError(MpError):
    """An output cannot be written, or would overwrite or enter an input."""

    exit_code = EXIT_OUTPUT


class ModelError(MpError):
    """Weights are missing, tampered with, or of another architecture."""

    exit_code = EXIT_MODEL


class DeviceError(MpError):
    """The requested device is missing, or it ran out of memory."""

    exit_code = EXIT_DEVICE
