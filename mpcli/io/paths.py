"""Say what was found when a path is not the kind of thing expected.

A folder given where a file is expected used to read "no such file" or
"weights file not found", which sends a user looking for a missing file that is
not missing. These checks name what is there (a folder and a few of the files
in it, a file, nothing) and what was expected, in the one-line error of the
caller's type (:class:`InputError` for data, :class:`ModelError` for weights,
:class:`OutputError` for outputs).
"""

from __future__ import annotations

from pathlib import Path

from mpcli.errors import InputError, MpError

_SHOWN = 3  # files named in the message when a folder was given


def _folder_hint(folder: Path, suffixes: tuple[str, ...]) -> str:
    """``"holds a.h5, b.h5, …"`` (files with one of ``suffixes``), or what else it holds."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return "cannot be listed"
    if not entries:
        return "is empty"
    matching = [p.name for p in entries if p.is_file() and p.name.lower().endswith(suffixes)] if suffixes else []
    if not matching:
        return f"holds {len(entries)} entries, none of them {'/'.join(suffixes)}" if suffixes else \
            f"holds {len(entries)} entries"
    more = len(matching) - _SHOWN
    return "holds " + ", ".join(matching[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def expect_file(path: str | Path, expected: str, *, suffixes: tuple[str, ...] = (),
                error: type[MpError] = InputError) -> Path:
    """Return ``path`` when it is a regular file; else raise ``error`` saying what is there.

    Args:
        path: the path the user gave.
        expected: what should be there, e.g. ``"a weights file (.safetensors)"``.
        suffixes: file name endings worth naming when ``path`` is a folder.
        error: the typed error to raise (its exit code is the caller's).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise error(path, f"is a folder, expected {expected}; the folder {_folder_hint(path, suffixes)}")
    if path.exists():
        raise error(path, f"is not a regular file (a device, pipe or socket), expected {expected}")
    if path.is_symlink():
        raise error(path, f"is a broken symbolic link, expected {expected}")
    raise error(path, f"no such file; expected {expected}")


def expect_file_to_write(path: str | Path, expected: str, example: str, *, error: type[MpError]) -> Path:
    """Return ``path`` unless it is a folder: then raise ``error`` with a file name to use instead."""
    path = Path(path)
    if path.is_dir():
        raise error(path, f"is a folder, expected {expected} to write (for example {path / example})")
    return path
