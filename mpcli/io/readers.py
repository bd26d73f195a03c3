"""One entry point for k-space inputs: detect the format by content, read, validate.

``read_scans(path)`` opens the file read-only, decides by what is inside (not
by the suffix):

- HDF5 with a ``kspace`` dataset → fastMRI (:func:`mpcli.io.fastmri.read_fastmri`);
- HDF5 with a group holding ``data`` and ``xml`` (normally ``dataset``) →
  ISMRMRD (:func:`mpcli.io.ismrmrd.read_ismrmrd`);
- a Siemens twix file header (VB or VD/VE) → twix (:func:`mpcli.io.twix.read_twix`);
- anything else (not HDF5, empty, truncated, other keys) → ``InputError``.

Only regular files are opened, and only HDF5 data stored in the file itself
is read: an external link, a virtual dataset or external raw storage would read
bytes the input's SHA-256 never saw (so ``--resume`` could skip a changed
input) and is refused. Every returned ``Scan`` is validated
(:func:`validate_scan`): rank 4, mask shape, finite, not all zero, plausible
geometry. All failures are ``InputError(path, reason)`` with a one-line reason.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
import torch

from mpcli.errors import InputError
from mpcli.io.fastmri import read_fastmri
from mpcli.io.ismrmrd import find_ismrmrd_group, list_ismrmrd_frames, one_line, read_ismrmrd
from mpcli.io.twix import list_twix_frames, looks_like_twix, read_twix
from mpcli.scan import KSPACE_SUFFIXES, Geometry, Scan

SUPPORTED_SUFFIXES = KSPACE_SUFFIXES
READERS = {"fastmri": read_fastmri, "ismrmrd": read_ismrmrd, "twix": read_twix}


READ_PATHS = {"fastmri": ("kspace", "ismrmrd_header", "mask", "reconstruction_rss"),
              "ismrmrd": ("data", "xml")}
"""The HDF5 objects each reader reads (ISMRMRD paths are inside its group)."""


def detect_format(path: str | Path) -> str:
    """``"fastmri"``, ``"ismrmrd"`` or ``"twix"`` from the file content; ``InputError`` otherwise."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(path, "broken symbolic link or link loop")
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a k-space file")
    if not path.is_file():
        raise InputError(path, "not a regular file (a FIFO, device or socket cannot be read as k-space)")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        if not h5py.is_hdf5(path):
            if looks_like_twix(path):
                return "twix"
            raise InputError(path, "not an HDF5 file (fastMRI, ISMRMRD) nor Siemens twix k-space")
        with h5py.File(path, "r") as f:
            if "kspace" in f:
                check_self_contained(path, f, READ_PATHS["fastmri"])
                return "fastmri"
            group = find_ismrmrd_group(f)
            if group is not None:
                check_self_contained(path, f, [group] + [f"{group}/{n}" for n in READ_PATHS["ismrmrd"]])
                return "ismrmrd"
            keys = ", ".join(sorted(f.keys())[:5]) or "none"
    except OSError as err:
        raise InputError(path, f"cannot open HDF5 file (truncated or corrupt): {one_line(err)}") from None
    raise InputError(path, f"HDF5 file has no fastMRI 'kspace' nor ISMRMRD 'dataset/data'+'dataset/xml' (keys: {keys})")


def check_self_contained(path: Path, f: h5py.File, names) -> None:
    """``InputError`` when an object a reader reads lives outside the file.

    Checks each component of each name: no external links, no virtual
    datasets, no external raw storage (data the input's hash never covered).
    """
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            link = f.get(sub, getlink=True)
            if link is None:
                break
            if isinstance(link, h5py.ExternalLink):
                raise InputError(path, f"'{sub}' is an external link to another file ({link.filename}); "
                                 "mp reads only data stored in the file itself")
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                raise InputError(path, f"'{name}' is a virtual dataset (data in other files); "
                                 "mp reads only data stored in the file itself")
            if obj.external:
                raise InputError(path, f"'{name}' has external raw storage (data in other files); "
                                 "mp reads only data stored in the file itself")


def is_kspace_file(path: str | Path) -> bool:
    """Cheap check (never raises): a supported suffix and fastMRI/ISMRMRD/twix content."""
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
    validate_geometry(path, scan.geometry, s)
    return scan


VOXEL_MM = (0.005, 500.0)
"""Plausible voxel sizes (mm): from MR microscopy to a thick localiser."""
MAX_POSITION_MM = 1e4
"""Slice centres further than this from the isocentre (10 m) are not a patient position."""


def validate_geometry(path: str | Path, g: Geometry, n_slices: int) -> None:
    """``InputError`` unless voxel sizes, directions and slice centres are physical.

    Voxel sizes finite and within :data:`VOXEL_MM`; read, phase and slice
    directions finite unit vectors (to 1e-3), read ⟂ phase; one finite slice
    centre per slice within :data:`MAX_POSITION_MM` of the isocentre, and the
    centres a monotonic stack: each step mostly along the slice normal.
    """
    lo, hi = VOXEL_MM
    voxel = np.asarray(g.voxel_size, dtype=np.float64)
    if voxel.shape != (3,) or not np.isfinite(voxel).all() or (voxel < lo).any() or (voxel > hi).any():
        raise InputError(path, f"implausible voxel size {tuple(float(v) for v in voxel.ravel())} mm "
                         f"(need {lo}–{hi:g} mm; check the header's field of view and matrix)")
    dirs = {"read": g.read_dir, "phase": g.phase_dir, "slice": g.slice_dir}
    for name, d in dirs.items():
        v = np.asarray(d, dtype=np.float64)
        if v.shape != (3,) or not np.isfinite(v).all() or abs(np.linalg.norm(v) - 1) > 1e-3:
            raise InputError(path, f"{name} direction {tuple(v.ravel())} is not a unit vector")
    if abs(float(np.dot(g.read_dir, g.phase_dir))) > 1e-3:
        raise InputError(path, "read and phase directions are not perpendicular")
    centres = np.asarray(g.slice_centres, dtype=np.float64)
    if centres.shape != (n_slices, 3):
        raise InputError(path, f"geometry has {len(g.slice_centres)} slice positions for {n_slices} slices")
    if not np.isfinite(centres).all() or (np.abs(centres) > MAX_POSITION_MM).any():
        raise InputError(path, f"implausible slice position (beyond {MAX_POSITION_MM:g} mm or not finite)")
    if n_slices >= 2:
        along = np.diff(centres, axis=0) @ np.asarray(g.slice_dir, dtype=np.float64)  # [S−1] mm
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        if not ((np.abs(along) > 1e-3) & (np.abs(along) >= 0.5 * steps)).all() or \
                not ((along > 0).all() or (along < 0).all()):
            raise InputError(path, "slice positions do not form a stack along the slice normal "
                             "(repeated, unordered or in-plane positions)")


def read_scans(path: str | Path) -> list[Scan]:
    """Read a k-space file as a list of validated ``Scan`` (one per frame).

    The input is opened read-only and never modified. Raises ``InputError``
    (``str`` = ``"<path>: <one-line reason>"``) for anything unreadable,
    malformed or unsupported.
    """
    path = Path(path)
    fmt = detect_format(path)
    try:
        with np.errstate(all="ignore"):
            scans = READERS[fmt](path)
    except InputError:
        raise
    except MemoryError:
        raise InputError(path, f"not enough memory to read this {fmt} file") from None
    except (OSError, KeyError, ValueError, IndexError, TypeError, AttributeError, OverflowError,
            RuntimeError, EOFError, struct.error) as err:
        raise InputError(path, f"cannot read {fmt} file: {one_line(err)}") from None
    return [validate_scan(path, s) for s in scans]


def list_frames(path: str | Path) -> list[str]:
    """The frame names ``read_scans(path)`` will return, without reading the k-space.

    Used to plan every output name of a batch before writing anything.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "fastmri":
        return [""]
    if fmt == "twix":
        return list_twix_frames(path)
    return list_ismrmrd_frames(path)


__all__ = ["SUPPORTED_SUFFIXES", "detect_format", "is_kspace_file", "list_frames", "read_scans", "validate_geometry",
           "validate_scan"]
