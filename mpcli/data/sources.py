"""Image sources for training tasks, all available offline.

A *source* yields real-valued magnitude images ``[H, W]`` float32 normalised to
max 1, for a plane ("axial", "coronal", "sagittal") and matrix size::

    src = get_source("mni_t1")
    img = next(src.images("axial", (128, 128), np.random.default_rng(0)))

Sources (``SOURCES``):

- ``mni_t1``: the MNI152 ICBM 2009a symmetric T1 template that nilearn ships
  (197×233×189, 1 mm), read with nibabel (nilearn is located, not imported).
- ``mni_t2like``, ``mni_pdlike``, ``mni_flairlike``: synthetic contrasts from
  the template's grey/white-matter probability maps p_GM, p_WM, with
  p_CSF = brain − p_GM − p_WM (brain: the filled, closed GM+WM mask)::

      I = a_GM p_GM + a_WM p_WM + a_CSF p_CSF,  times (1 + 0.05 n), n a fixed
      smooth random texture.

      contrast   a_GM  a_WM  a_CSF
      t2like     0.55  0.35  1.00    (CSF bright, WM dark)
      pdlike     0.85  0.70  0.95
      flairlike  0.80  0.55  0.05    (CSF suppressed)

- ``shepp_logan``: sigpy's Shepp–Logan phantom with randomly perturbed ellipse
  amplitudes, sizes, positions and angles (plane ignored).
- scan-like sources (via :func:`get_source` only): real MR volumes and slices
  installed by Debian packages and wheels (:mod:`mpcli.data.scans`: ``colin27``,
  ``colin27_hires``, ``macaque_t1``, ``nibabel_epi``, ``itk_slices``,
  ``mpl_s1045``, ``pydicom_mr``, and the validation-only ``itk_t1_head``) and
  synthetic images (:mod:`mpcli.data.synthetic`: ``label_map``, ``dead_leaves``,
  ``natural``).
- ``images:DIR`` (via :func:`get_source` only): a folder of NIfTI/DICOM magnitude
  images (:mod:`mpcli.data.folders`), what ``mp meta-train --data`` adds.
- ``fastmri:DIR`` (via :func:`get_source` only): fully sampled fastMRI
  multi-coil HDF5 files; images are the RSS of the file's coil images, and
  :meth:`FastMRISource.kspace_slices` gives the file's own k-space (see
  :mod:`mpcli.data.tasks`).

Slices with little anatomy are skipped: a slice is used when ≥ 15 % of its
pixels exceed 0.1 × the volume maximum. Random draws pick a slice uniformly
among those, and flip it left–right with probability ½. Slices are resampled
to the requested size keeping the aspect ratio (zero padding, Gaussian
anti-aliasing before linear interpolation).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from mpcli.errors import InputError

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
_MIN_FRACTION = 0.15  # a slice needs ≥ 15 % of pixels above 0.1 · volume max
_NILEARN_HINT = "training images need nilearn: pip install mpcli[train]"
_MNI = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_CONTRASTS: dict[str, tuple[float, float, float]] = {  # (GM, WM, CSF)
    "t2like": (0.55, 0.35, 1.00),
    "pdlike": (0.85, 0.70, 0.95),
    "flairlike": (0.80, 0.55, 0.05),
}


class Source(Protocol):
    """Anything that yields normalised training images."""

    name: str

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator
               ) -> Iterator[np.ndarray]:
        """Endless iterator of ``[H, W]`` float32 images with max 1."""
        ...


def _check_plane(plane: str) -> None:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}")


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``img`` ``[h, w]`` to the aspect ratio of ``size``, then resample.

    Down-sampling is preceded by a Gaussian low-pass (σ = (1/zoom − 1)/2 pixels).
    """
    h, w = img.shape
    H, W = size
    ratio = H / W
    ph, pw = (max(h, round(w * ratio)), w) if h / w < ratio else (h, max(w, round(h / ratio)))
    pad = ((ph - h) // 2, ph - h - (ph - h) // 2), ((pw - w) // 2, pw - w - (pw - w) // 2)
    img = np.pad(img, pad)
    zoom = (H / ph, W / pw)
    sigma = [max(0.0, (1 / z - 1) / 2) for z in zoom]
    if max(sigma) > 0:
        img = ndimage.gaussian_filter(img, sigma)
    out = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="grid-constant")
    return out[:H, :W].astype(np.float32)


def _normalise(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0, None).astype(np.float32)
    m = float(img.max())
    return img / m if m > 0 else img


# ----------------------------------------------------------------------------- MNI

def nilearn_data_dir() -> Path:
    """nilearn's bundled data folder (``nilearn/datasets/data``), without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, _NILEARN_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not (folder / _MNI.format("t1")).is_file():
        raise InputError(folder, f"MNI152 template missing; {_NILEARN_HINT}")
    return folder


@functools.cache
def _mni_raw(kind: str) -> np.ndarray:
    """One template volume ("t1", "gm", "wm") as float32 in [0, 1] (RAS voxel axes)."""
    import nibabel as nib

    vol = np.asarray(nib.load(nilearn_data_dir() / _MNI.format(kind)).dataobj, dtype=np.float32)
    return vol / max(float(vol.max()), 1e-12)


@functools.lru_cache(maxsize=1)
def _mni_tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """p_GM, p_WM, p_CSF = brain − p_GM − p_WM, and a fixed smooth texture in [−1, 1]."""
    gm, wm = _mni_raw("gm"), _mni_raw("wm")
    tissue = gm + wm
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue > 0.1, iterations=3))
    csf = np.clip(brain.astype(np.float32) - tissue, 0, 1)
    noise = np.random.default_rng(12345).standard_normal(gm.shape, dtype=np.float32)
    texture = ndimage.gaussian_filter(noise, 2.0)
    texture /= max(float(np.abs(texture).max()), 1e-12)
    return gm, wm, csf, texture


@functools.cache
def mni_volume(contrast: str) -> np.ndarray:
    """The MNI volume in ``contrast`` ("t1" or a key of the contrast table), max 1."""
    if contrast == "t1":
        return _mni_raw("t1")
    if contrast not in _CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}")
    gm, wm, csf, texture = _mni_tissues()
    a_gm, a_wm, a_csf = _CONTRASTS[contrast]
    vol = (a_gm * gm + a_wm * wm + a_csf * csf) * (1 + 0.05 * texture)
    return _normalise(ndimage.gaussian_filter(vol, 0.5))


def take_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice ``index`` of an RAS volume, displayed radiologically (anterior/superior up)."""
    if plane == "axial":
        return vol[:, ::-1, index].T  # [y (A→P), x]
    if plane == "coronal":
        return vol[:, index, ::-1].T  # [z (S→I), x]
    if plane == "sagittal":
        return vol[index, :, ::-1].T  # [z (S→I), y]
    raise ValueError(f"unknown plane {plane!r}")


@functools.cache
def valid_slices(contrast: str, plane: str) -> np.ndarray:
    """Indices of slices with ≥ 15 % of pixels above 0.1 × the volume maximum."""
    vol = mni_volume(contrast)
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    other = tuple(a for a in range(3) if a != axis)
    frac = (vol > 0.1 * vol.max()).mean(axis=other)
    return np.flatnonzero(frac >= _MIN_FRACTION)


class MNISource:
    """Slices of the MNI152 template in one contrast (see the module docstring)."""

    def __init__(self, contrast: str = "t1"):
        self.contrast = contrast
        self.name = f"mni_{contrast}"

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator
               ) -> Iterator[np.ndarray]:
        _check_plane(plane)
        vol = mni_volume(self.contrast)
        idx = valid_slices(self.contrast, plane)
        while True:
            img = take_slice(vol, plane, int(rng.choice(idx)))
            if rng.random() < 0.5:
                img = img[:, ::-1]
            yield _normalise(resize(np.ascontiguousarray(img), size))


# ---------------------------------------------------------------------- Shepp–Logan

class SheppLoganSource:
    """sigpy Shepp–Logan phantoms with random ellipse perturbations.

    Each ellipse: amplitude × U(0.8, 1.2) (the outer skull ellipse kept),
    semi-axes × U(0.9, 1.1), centre + N(0, 0.02²), angle + N(0, 5°).
    """

    name = "shepp_logan"

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator
               ) -> Iterator[np.ndarray]:
        from sigpy import sim

        _check_plane(plane)
        amps = np.asarray(sim.sl_amps, dtype=float)
        scales = np.asarray(sim.sl_scales, dtype=float)
        offsets = np.asarray(sim.sl_offsets, dtype=float)
        angles = np.asarray(sim.sl_angles, dtype=float)
        n = len(amps)
        while True:
            a = amps * np.r_[1.0, rng.uniform(0.8, 1.2, n - 1)]
            s = scales * rng.uniform(0.9, 1.1, scales.shape)
            o = offsets + np.c_[rng.normal(0, 0.02, (n, 2)), np.zeros(n)]
            t = angles + np.c_[rng.normal(0, 5.0, n), np.zeros((n, 2))]
            img = np.abs(sim.phantom(tuple(size), a, s, o, t, np.float64))
            yield _normalise(img)


# --------------------------------------------------------------------------- fastMRI

def _crop_or_pad(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop / zero-pad the last two axes to ``shape`` (k-space centre kept)."""
    out = a
    for axis, n in zip((-2, -1), shape):
        m = out.shape[axis]
        if m > n:
            start = m // 2 - n // 2  # keeps the centre index m//2 at n//2
            out = np.take(out, np.arange(start, start + n), axis=axis)
        elif m < n:
            pad = [(0, 0)] * out.ndim
            before = n // 2 - m // 2
            pad[axis] = (before, n - m - before)
            out = np.pad(out, pad)
    return out


class FastMRISource:
    """Fully sampled fastMRI multi-coil files in a folder (``*.h5`` with ``kspace``).

    ``kspace_slices`` yields the file's own coil k-space ``[C, H, W]`` at the
    requested size: readout oversampling removed when H ≥ 2·W·0.9 (image crop
    to the central half along H), then k-space centre-cropped / zero-padded to
    ``size`` (a lower resolution of the same field of view), scaled so the RSS
    image has max 1. ``images`` yields that RSS image.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.name = f"fastmri:{self.folder}"
        if not self.folder.is_dir():
            raise InputError(self.folder, "not a folder of fastMRI files")
        self.files = sorted(self.folder.glob("*.h5"))
        if not self.files:
            raise InputError(self.folder, "no .h5 files (fully sampled fastMRI multi-coil)")

    def kspace_slices(self, size: tuple[int, int], rng: np.random.Generator,
                      file_index: int | None = None) -> Iterator[np.ndarray]:
        """Endless ``[C, H, W]`` complex64 k-space slices from random files (or
        from file ``file_index % len(files)`` only: one coil array per task)."""
        import h5py
        import torch

        from mpcli.physics.fft import fft2c, ifft2c

        while True:
            i = int(rng.integers(len(self.files))) if file_index is None else file_index
            path = self.files[i % len(self.files)]
            try:
                with h5py.File(path, "r") as f:
                    ds = f["kspace"]
                    if ds.ndim != 4:
                        raise InputError(path, "expected multi-coil kspace [S, C, H, W]")
                    s = int(rng.integers(ds.shape[0] // 4, max(ds.shape[0] // 4 + 1, 3 * ds.shape[0] // 4)))
                    k = np.asarray(ds[s], dtype=np.complex64)  # [C, H, W]
            except (OSError, KeyError) as err:
                raise InputError(path, f"cannot read fastMRI k-space: {err}") from None
            coil = ifft2c(torch.from_numpy(k)).numpy()  # [C, H, W]
            h, w = coil.shape[-2:]
            if h >= 1.8 * w:  # readout oversampling (fastMRI knee/brain: 2×)
                coil = coil[:, h // 4 : h // 4 + h // 2]
            kk = _crop_or_pad(fft2c(torch.from_numpy(np.ascontiguousarray(coil))).numpy(), size)
            rss = np.sqrt((np.abs(ifft2c(torch.from_numpy(kk)).numpy()) ** 2).sum(0))
            yield (kk / max(float(rss.max()), 1e-12)).astype(np.complex64)

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator
               ) -> Iterator[np.ndarray]:
        import torch

        from mpcli.physics.fft import ifft2c

        for k in self.kspace_slices(size, rng):
            coil = ifft2c(torch.from_numpy(k)).numpy()
            yield _normalise(np.sqrt((np.abs(coil) ** 2).sum(0)))


# -------------------------------------------------------------------------- registry

SOURCES: dict[str, Source] = {
    "mni_t1": MNISource("t1"),
    "mni_t2like": MNISource("t2like"),
    "mni_pdlike": MNISource("pdlike"),
    "mni_flairlike": MNISource("flairlike"),
    "shepp_logan": SheppLoganSource(),
}


@functools.lru_cache(maxsize=8)
def _folder_source(cls, folder: str):
    """One source object per folder (its file index is built once)."""
    return cls(folder)


def all_source_names() -> list[str]:
    """Every named source: ``SOURCES`` and the scan-like and synthetic ones."""
    from mpcli.data.scans import SCAN_SOURCES
    from mpcli.data.synthetic import SYNTHETIC_SOURCES

    return [*SOURCES, *SCAN_SOURCES, *SYNTHETIC_SOURCES]


def get_source(name: str) -> Source:
    """The source called ``name`` (see :func:`all_source_names`, or ``fastmri:DIR``)."""
    if name.startswith("fastmri:"):
        return FastMRISource(name.split(":", 1)[1])
    if name.startswith("images:"):
        from mpcli.data.folders import ImageFolderSource

        return _folder_source(ImageFolderSource, name.split(":", 1)[1])
    if name in SOURCES:
        return SOURCES[name]
    from mpcli.data.scans import SCAN_SOURCES
    from mpcli.data.synthetic import SYNTHETIC_SOURCES

    extra = {**SCAN_SOURCES, **SYNTHETIC_SOURCES}
    if name not in extra:
        raise ValueError(f"unknown image source {name!r}; expected one of "
                         f"{', '.join(all_source_names())} or fastmri:DIR / images:DIR")
    return extra[name]
