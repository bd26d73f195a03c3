"""A folder of magnitude images (NIfTI or DICOM) as a training source: ``images:DIR``.

A hospital has image archives long before it has raw data. ``mp meta-train --data
DIR`` adds the folder's images to the training family; the tasks simulate their
k-space exactly as for the bundled scans (smooth phase, coils, noise, mask):

- NIfTI (``.nii``, ``.nii.gz``): a 3-D volume (4-D: its first volume) is re-sliced
  obliquely in the task's plane (:func:`mpcli.data.scans.oblique_slice`, RAS
  orientation, the file's voxel size); a 2-D image (one slice) is augmented like
  the bundled slices.
- DICOM (``.dcm``, ``.ima`` or no extension with the ``DICM`` preamble): each file
  is one 2-D slice (a multi-frame file: its middle frame), augmented.

Files are found recursively and sorted; names reserved for independent evaluation
(:data:`mpcli.data.scans.HELD_OUT_PATTERNS`) are refused. A file that cannot be read
is an :class:`~mpcli.errors.InputError` naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mpcli.data.scans import _MAX_TRIES, _MIN_FRACTION, _normalise, check_trainable, oblique_slice
from mpcli.errors import InputError

PREFIX = "images:"


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def find_images(folder: Path) -> list[Path]:
    """NIfTI and DICOM files under ``folder`` (recursive, sorted)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.lower().endswith((".nii", ".nii.gz")) or _is_dicom(p):
            out.append(p)
    return out


@functools.lru_cache(maxsize=4)
def load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image max 1: ``[X, Y, Z]`` RAS volume or ``[h, w]`` slice; voxel sizes mm)."""
    check_trainable(path)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.as_closest_canonical(nib.load(str(path)))
            data = np.asarray(img.dataobj, dtype=np.float32)
            zooms = np.asarray(img.header.get_zooms()[:3], float)
            if data.ndim == 4:
                data = data[..., 0]
            data = np.squeeze(data)
            if data.ndim == 3:
                return _normalise(data), zooms
            if data.ndim == 2:
                return _normalise(data.T[::-1]), zooms[:2]
            raise InputError(path, f"expected a 2-D or 3-D image, got shape {data.shape}")
        import pydicom

        ds = pydicom.dcmread(str(path))
        data = np.asarray(ds.pixel_array, dtype=np.float32)
        if data.ndim == 3:
            data = data[data.shape[0] // 2]
        if data.ndim != 2:
            raise InputError(path, f"expected a grey-level DICOM image, got shape {data.shape}")
        spacing = np.asarray([float(v) for v in getattr(ds, "PixelSpacing", [1.0, 1.0])], float)
        return _normalise(data), spacing
    except InputError:
        raise
    except Exception as err:  # nibabel / pydicom raise many types for a bad file
        raise InputError(path, f"cannot read as a training image: {err}") from None


class ImageFolderSource:
    """Training images from a folder of NIfTI/DICOM files (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.name = f"{PREFIX}{self.folder}"
        if not self.folder.is_dir():
            raise InputError(self.folder, "not a folder of NIfTI or DICOM images")
        self.files = find_images(self.folder)
        if not self.files:
            raise InputError(self.folder, "no NIfTI (.nii, .nii.gz) or DICOM files found")
        for f in self.files:
            check_trainable(f)

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        from mpcli.data.sources import resize
        from mpcli.data.synthetic import elastic_warp

        while True:
            img, voxel = load_image(self.files[int(rng.integers(len(self.files)))])
            if img.ndim == 3:
                for _ in range(_MAX_TRIES):
                    out = oblique_slice(img, voxel, plane, size, rng)
                    if (out > 0.1).mean() >= _MIN_FRACTION:
                        break
            else:
                out = elastic_warp(resize(img, size), rng, strength=0.02 * max(size))
            if rng.random() < 0.5:
                out = out[:, ::-1]
            yield _normalise(np.ascontiguousarray(out))
