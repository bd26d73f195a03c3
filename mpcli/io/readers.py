"""One entry point for k-space inputs: detect the format by content, read, validate.

``read_scans(path)`` opens the file read-only, decides by what is inside (not
by the suffix):

- HDF5 with a ``kspace`` dataset → fastMRI (:func:`mpcli.io.fastmri.read_fastmri`);
- HDF5 with a group holding ``data`` and ``xml`` (normally ``dataset``) →
  ISMRMRD (:func:`mpcli.io.ismrmrd.read_ismrmrd`);
- anything else (not HDF5, empty, truncated, other keys) → ``InputError``.

Every returned ``Scan`` is validated (:func:`validate_scan`): rank 4,
mask shape, finite, not all zero. All failures are ``InputError(path, reason)``
with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import torch

from mpcli.errors import InputError
from mpcli.io.fastmri import read_fastmri
from mpcli.io.ismrmrd import find_ismrmrd_group, one_line, read_ismrmrd
from mpcli.scan import Scan

SUPPORTED_SUFFIXES = (".h5", ".hdf5", ".mrd")


def detect_format(path: str | Path) -> str:
    """``"fastmri"`` or ``"ismrmrd"`` from the file content; ``InputError`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        if not h5py.is_hdf5(path):
            raise InputError(path, "not an HDF5 file (expected fastMRI or ISMRMRD k-space)")
        with h5py.File(path, "r") as f:
            if "kspace" in f:
                return "fastmri"
            if find_ismrmrd_group(f) is not None:
                return "ismrmrd"
            keys = ", ".join(sorted(f.keys())[:5]) or "none"
    except OSError as err:
        raise InputError(path, f"cannot open HDF5 file (truncated or corrupt): {one_line(err)}") from None
    raise InputError(path, f"HDF5 file has no fastMRI 'kspace' nor ISMRMRD 'dataset/data'+'dataset/xml' (keys: {keys})")


def is_kspace_file(path: str | Path) -> bool:
    """Cheap check (never raises): a supported suffix and fastMRI/ISMRMRD content."""
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return False
    try:
        detect_format(path)
    except (InputError, OSError):
        return False
    return True


def validate_scan(path: str | Path, scan: Scan) -> Scan:
    """Check a ``Scan`` is usable; each failure is an ``InputError`` with its own reason.

    - ``kspace`` is ``[S, C, H, W]`` complex with S, C, H, W ≥ 1;
    - ``mask`` is ``[S, 1, H, W]``;
    - every sample is finite (no NaN/Inf);
    - k-space is not all zero, and the mask keeps at least one sample.
    """
    k, m = scan.kspace, scan.mask
    if k.ndim != 4 or min(k.shape) < 1:
        raise InputError(path, f"k-space has shape {tuple(k.shape)}; need [S, C, H, W]")
    if not k.is_complex():
        raise InputError(path, f"k-space is {k.dtype}, need complex")
    s, _, h, w = k.shape
    if tuple(m.shape) != (s, 1, h, w):
        raise InputError(path, f"mask shape {tuple(m.shape)} does not match k-space {tuple(k.shape)}")
    re_im = torch.view_as_real(k)
    if bool(torch.isnan(re_im).any()):
        raise InputError(path, "k-space contains NaN values")
    if bool(torch.isinf(re_im).any()):
        raise InputError(path, "k-space contains Inf values")
    if not bool((k != 0).any()):
        raise InputError(path, "k-space is all zero")
    if not bool((m > 0).any()):
        raise InputError(path, "sampling mask is empty (no acquired samples)")
    return scan


def read_scans(path: str | Path) -> list[Scan]:
    """Read a k-space file as a list of validated ``Scan`` (one per frame).

    The input is opened read-only and never modified. Raises ``InputError``
    (``str`` = ``"<path>: <one-line reason>"``) for anything unreadable,
    malformed or unsupported.
    """
    path = Path(path)
    fmt = detect_format(path)
    reader = read_fastmri if fmt == "fastmri" else read_ismrmrd
    try:
        scans = reader(path)
    except InputError:
        raise
    except (OSError, KeyError, ValueError, IndexError, TypeError, AttributeError) as err:
        raise InputError(path, f"cannot read {fmt} file: {one_line(err)}") from None
    return [validate_scan(path, s) for s in scans]


__all__ = ["SUPPORTED_SUFFIXES", "detect_format", "is_kspace_file", "read_scans", "validate_scan"]
