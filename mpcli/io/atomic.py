"""Atomic output writes and the never-touch-the-input check.

A reader of the final path sees either the old content or the complete new
content, never a half-written file: everything is written to a hidden
temporary sibling (same directory, hence same file system), flushed to disk
with ``fsync``, then renamed onto the final name (``os.replace`` is atomic on
POSIX). On any exception the temporary is removed and the final path is left
untouched.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mpcli.errors import OutputError


def _temp_sibling(final: Path, tag: str) -> Path:
    """Hidden sibling name ``.{name}.{tag}-{pid}-{rand}`` in ``final``'s folder."""
    return final.parent / f".{final.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but is not ours (or an impossible pid: treat as stale below)
    return True


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def remove_stale_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporaries a killed ``mp`` left for ``names`` in ``folder``; return them.

    Only names of this module's own pattern (``.{name}.tmp-{pid}-{hex8}`` and
    ``.{name}.old-{pid}-{hex8}``, see :func:`_temp_sibling`) for one of
    ``names``, whose process no longer runs, are touched: a concurrent ``mp``
    writing the same folder (another shard) keeps its own.
    """
    wanted = set(names)
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_NAME.fullmatch(p.name)
        if m is None or m["name"] not in wanted:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entry table's) data to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some file systems refuse to open directories: best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepare_parent(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(final, f"cannot create the output folder ({e.strerror or e})") from e


@contextmanager
def atomic_file(final: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it onto ``final``.

    Usage::

        with atomic_file(out) as tmp:
            tmp.write_bytes(data)

    Args:
        final: the file to create or replace.
        overwrite: when False, an existing ``final`` raises :class:`OutputError`
            (checked before writing and again just before the rename).

    Raises:
        OutputError: the folder cannot be created/written, or ``final`` exists
            and ``overwrite`` is False. Exceptions raised inside the ``with``
            block propagate unchanged after the temporary is removed.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputError(final, "already exists (use --overwrite to replace it)")
    _prepare_parent(final)
    tmp = _temp_sibling(final, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(final, "nothing was written")
        _fsync_path(tmp)
        if final.exists() and not overwrite:
            raise OutputError(final, "already exists (use --overwrite to replace it)")
        try:
            os.replace(tmp, final)
        except OSError as e:
            raise OutputError(final, f"cannot write ({e.strerror or e})") from e
        _fsync_path(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on success it becomes ``final``.

    All files written into the yielded folder appear at ``final`` together, or
    none do. If ``final`` already exists and ``overwrite`` is True it is
    replaced safely: old renamed aside, new renamed in, old deleted (if the
    second rename fails the old folder is put back).

    Raises:
        OutputError: ``final`` exists and ``overwrite`` is False, it is not a
            folder, or the file system refuses the renames.
    """
    final = Path(final)

    def _check_existing() -> None:
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise OutputError(final, "already exists (use --overwrite to replace it)")
            if not final.is_dir() or final.is_symlink():
                raise OutputError(final, "exists and is not a folder; will not replace it")

    _check_existing()
    _prepare_parent(final)
    tmp = _temp_sibling(final, "tmp")
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(final, f"cannot create a folder here ({e.strerror or e})") from e
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        _check_existing()
        old = None
        if final.exists():
            old = _temp_sibling(final, "old")
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if old is not None:
                os.rename(old, final)
            raise OutputError(final, f"cannot write ({e.strerror or e})") from e
        _fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_path(out: str | Path, inputs: list[str | Path], *, container: bool = False) -> None:
    """Refuse an output that would overwrite or enter an input (symlinks resolved).

    Raises :class:`OutputError` when ``out`` (resolved):
      * is the same file as an input (same path, or same inode: hard links);
      * is an input folder or lies inside one (outputs must not enter an
        input tree);
      * contains an input (only when ``container`` is False, i.e. ``out`` is a
        file or a folder that a write would *replace* as a whole, such as a
        DICOM series folder written with :func:`atomic_dir`).

    Args:
        out: the output file or folder about to be written or replaced.
        inputs: input files or folders.
        container: True when ``out`` is a folder that outputs are written
            *into* (never replaced as a whole), so inputs may live in it.
    """
    out_r = Path(os.path.realpath(Path(out).expanduser()))  # never raises, even on link loops
    for inp in inputs:
        inp_p = Path(inp).expanduser()
        inp_r = Path(os.path.realpath(inp_p))
        same = out_r == inp_r
        if not same and out_r.exists() and inp_r.exists():
            try:
                same = os.path.samefile(out_r, inp_r)
            except OSError:
                same = False
        if same:
            raise OutputError(out, f"is the input {inp}; refusing to overwrite an input")
        if inp_r.is_dir() and _is_within(out_r, inp_r):
            raise OutputError(out, f"lies inside the input folder {inp}; choose another output")
        if not container and _is_within(inp_r, out_r):
            raise OutputError(out, f"contains the input {inp}; writing it would replace the input")
