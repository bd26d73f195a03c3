"""How much memory a file may ask for: checked before a reader allocates it.

A header can declare any size (an HDF5 dataset of 100000×8×128² is a few bytes
on disk until read; an ISMRMRD matrix of 65536² is one number). Readers call
:func:`check_fits` with what they are about to allocate, so such a file is a
one-line input error naming the size instead of a ``MemoryError`` or the
kernel's out-of-memory killer.
"""

from __future__ import annotations

import os
from pathlib import Path

from mpcli.errors import InputError


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), or None without one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes() -> int | None:
    """Memory this process can still allocate (bytes), or None when unknown.

    ``MP_MEMORY_LIMIT`` (bytes) caps it, e.g. to share a workstation.
    """
    candidates = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    cap = os.environ.get("MP_MEMORY_LIMIT")
    if cap:
        try:
            candidates.append(int(float(cap)))
        except ValueError:
            pass
    return min(candidates) if candidates else None


def human_bytes(n: float) -> str:
    """``1.5 GB`` style (powers of 1000, like ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_fits(path: str | Path, nbytes: float, what: str) -> None:
    """``InputError`` when ``nbytes`` (what reading ``what`` needs) exceeds the available memory."""
    available = available_bytes()
    if available is not None and nbytes > available:
        raise InputError(path, f"{what} needs {human_bytes(nbytes)} of memory to read, "
                         f"{human_bytes(available)} available")
