"""NIfTI-1 output with exact scanner geometry (qform = sform, code 1).

The image ``[S, H, W]`` is stored as the NIfTI data array ``(i, j, k) = (H, W, S)``
(``image.transpose(1, 2, 0)``), so the affine from voxel indices to RAS mm is
exactly :meth:`Geometry.voxel_to_ras`::

    (x, y, z, 1)ᵀ_RAS = A · (i, j, k, 1)ᵀ,   A = diag(−1, −1, 1, 1) · voxel_to_lps

Header: qform and sform both set to ``A`` with code 1 (scanner anatomical),
units mm, ``pixdim`` from the affine's column norms, ``descrip`` a short
method/version string (never a patient identifier). ``.nii.gz`` is gzipped
with a fixed timestamp, so a re-run writes byte-identical files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from mpcli.errors import InputError, OutputError
from mpcli.io.atomic import atomic_file
from mpcli.scan import Geometry

_SCANNER = 1  # NIfTI xform code "scanner anatomical"


def _as_volume(image) -> np.ndarray:
    """``[S, H, W]`` real float32 numpy array from a numpy array or torch tensor."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if np.iscomplexobj(arr):
        raise ValueError("write a magnitude (real) image, not a complex one")
    if arr.ndim != 3:
        raise ValueError(f"expected an image [S, H, W], got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def nifti_image(image, geometry: Geometry, description: str = "mp") -> nib.Nifti1Image:
    """Build the in-memory NIfTI-1 image (see the module docstring for the maths).

    Args:
        image: ``[S, H, W]`` real image (float32 is stored).
        geometry: where the voxels are (LPS mm).
        description: method/version text for ``descrip`` (≤ 79 bytes kept).
    """
    vol = _as_volume(image)  # [S, H, W]
    s, h, w = vol.shape
    if len(geometry.slice_centres) != s:
        raise ValueError(f"geometry has {len(geometry.slice_centres)} slice centres for {s} slices")
    affine = geometry.voxel_to_ras((h, w))  # [4, 4] (i, j, k) -> RAS mm
    data = np.ascontiguousarray(vol.transpose(1, 2, 0))  # [H, W, S] = (i, j, k)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(np.float32)
    img.set_qform(affine, code=_SCANNER)
    img.set_sform(affine, code=_SCANNER)
    hdr.set_xyzt_units(xyz="mm", t="sec")
    hdr.set_zooms(tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)))
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    return img


def write_nifti(path: str | Path, image, geometry: Geometry, description: str = "mp", *,
                overwrite: bool = True) -> Path:
    """Write ``image`` ``[S, H, W]`` as NIfTI-1 (``.nii`` or ``.nii.gz`` by suffix), atomically.

    Returns the path written. Raises :class:`OutputError` for a bad suffix, an
    existing file when ``overwrite`` is False, or a write failure. (The
    overwrite *policy* belongs to the caller: the default replaces atomically.)
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise OutputError(path, "NIfTI output must end in .nii or .nii.gz")
    payload = nifti_image(image, geometry, description).to_bytes()
    if name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    try:
        with atomic_file(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(payload)
    except OSError as e:
        raise OutputError(path, f"cannot write ({e.strerror or e})") from e
    return path


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI written by :func:`write_nifti`.

    Returns:
        image ``[S, H, W]`` float32 (the inverse of the ``(1, 2, 0)`` transpose)
        and the 4×4 voxel ``(i, j, k)`` → RAS mm affine (sform, else qform).
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # [H, W, S]
    except Exception as e:  # nibabel raises many types for bad files
        raise InputError(path, f"not a readable NIfTI file ({e})") from e
    if data.ndim == 2:
        data = data[..., None]
    return np.ascontiguousarray(data.transpose(2, 0, 1)), np.asarray(img.affine, dtype=np.float64)
