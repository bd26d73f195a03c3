"""Typed errors and the exit-code table.

Library code raises these; only :mod:`mpcli.cli` turns them into an exit code and
one line on stderr. Every error names the file it is about and the reason.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | internal error (a bug: please report it) |
| 2 | usage error (bad option or argument) |
| 3 | input error: unreadable, malformed or unsupported input file |
| 4 | output error: cannot write, or output would overwrite/enter the input |
| 5 | model error: weights missing, tampered (SHA-256) or wrong architecture |
| 6 | device error: CUDA requested but absent, or out of GPU memory |
| 7 | partial: a batch finished but some files failed (see the summary) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

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
    EXIT_INPUT: "input error: unreadable, malformed or unsupported input file",
    EXIT_OUTPUT: "output error: cannot write, or output would overwrite the input",
    EXIT_MODEL: "model error: weights missing, tampered or wrong architecture",
    EXIT_DEVICE: "device error: CUDA absent or out of GPU memory",
    EXIT_PARTIAL: "partial: some files of a batch failed (see the summary)",
    EXIT_INTERRUPTED: "interrupted",
}


class MpError(Exception):
    """Base class: ``str(err)`` is the one line the CLI prints."""

    exit_code = EXIT_INTERNAL

    def __init__(self, path: str | Path | None, reason: str):
        self.path = None if path is None else Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


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
