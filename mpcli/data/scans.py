"""Real MR images installed by Debian packages and Python wheels, as training sources.

Every file here is installed offline by the project's own recipe (README,
"Training data"): ``apt-get install mricron-data insighttoolkit5-examples`` and
the wheels in ``pyproject.toml`` (matplotlib, nibabel, pydicom)::

    name            file(s)                                          kind             licence
    colin27         mricron templates/ch2.nii.gz (Colin27 T1, 1 mm)  3-D head T1      BSD-3 (MRIcron)
    colin27_hires   mricron templates/ch2better.nii.gz (0.5 mm)      3-D head T1      BSD-3 (MRIcron)
    macaque_t1      mricron templates/inia19-t1-brain.nii.gz         3-D macaque T1   BSD-3 (MRIcron)
    nibabel_epi     nibabel tests/data/example4d.nii.gz (volume 0)   3-D EPI          MIT (nibabel)
    itk_slices      ITK BrainProtonDensitySlice, BrainT1Slice,       2-D brain PD/T1/ Apache-2.0 (ITK)
                    BrainMidSagittalSlice (.png)                     sagittal slices
    mpl_s1045       matplotlib sample_data/s1045.ima.gz (256² MR)    2-D head         matplotlib (PSF-style)
    pydicom_mr      pydicom test_files/MR_small.dcm (64² MR)         2-D MR           MIT (pydicom)
    itk_t1_head     ITK KmeansTest_T1UCharRaw.nii.gz (noisy T1 head) 3-D head T1      Apache-2.0 (ITK)

``itk_t1_head`` is the *validation* anatomy of :mod:`mpcli.meta.curriculum`: it is in
``VALIDATION_ONLY`` and training families never list it. Files reserved for the
project's independent evaluation (``HELD_OUT_PATTERNS``: pydicom's ``MR2_*`` and
``MR-SIEMENS*``, dipy's ``S0_10slices``, ITK's abdominal ``FatMRISlice``) are
refused by :func:`check_trainable`, which every source calls on every file it opens.

Volumes are re-sliced obliquely (:func:`oblique_slice`): the task's plane (axial /
coronal / sagittal, in the volume's RAS orientation) tilted by up to ±20° about
both in-plane axes, a random slice position in the central 70 % of the volume
along the normal, a field of view of U(0.85, 1.25) × the largest extent of the
volume in that plane, trilinear interpolation (with 2×2 supersampling when the
pixel is over 1.5 voxels). A draw is kept when ≥ 15 % of its pixels exceed
0.1 × the volume maximum (at most 30 tries). 2-D slices are augmented by a
random rotation (±15°), a zoom U(0.9, 1.2), a left–right flip and an elastic
warp (:func:`mpcli.data.synthetic.elastic_warp`).
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from mpcli.errors import InputError

MRICRON = Path("/usr/share/mricron/templates")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
APT_HINT = "apt-get install mricron-data insighttoolkit5-examples"

HELD_OUT_PATTERNS: tuple[str, ...] = ("MR2_*", "MR-SIEMENS*", "S0_10slices*", "FatMRISlice*")
"""File names reserved for independent evaluation: never trained or tuned on."""

VALIDATION_ONLY: tuple[str, ...] = ("itk_t1_head",)
"""Sources used to validate training, never to train (checked by the curriculum)."""

_MIN_FRACTION = 0.15
_MAX_TRIES = 30


def check_trainable(path: str | Path) -> Path:
    """``path`` unless its name matches ``HELD_OUT_PATTERNS`` (then ``ValueError``)."""
    path = Path(path)
    for pat in HELD_OUT_PATTERNS:
        if fnmatch.fnmatch(path.name, pat):
            raise ValueError(f"{path}: reserved for independent evaluation ({pat}); never train on it")
    return path


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(None, f"training images need the {package} wheel: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def _existing(path: Path, hint: str) -> Path:
    check_trainable(path)
    if not path.is_file():
        raise InputError(path, f"training image missing; install it with: {hint}")
    return path


def _normalise(img: np.ndarray) -> np.ndarray:
    img = np.nan_to_num(np.clip(img, 0, None)).astype(np.float32)
    m = float(img.max())
    return img / m if m > 0 else img


# ------------------------------------------------------------------------------- files

def _nifti_ras(path: Path, volume: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(volume in RAS voxel order, float32 max 1; voxel sizes ``[3]`` mm)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., volume]
    return _normalise(np.asarray(data, dtype=np.float32)), np.asarray(img.header.get_zooms()[:3], float)


_VOLUMES: dict[str, tuple[str, str]] = {  # name -> (where, file)
    "colin27": ("mricron", "ch2.nii.gz"),
    "colin27_hires": ("mricron", "ch2better.nii.gz"),
    "macaque_t1": ("mricron", "inia19-t1-brain.nii.gz"),
    "nibabel_epi": ("nibabel", "example4d.nii.gz"),
    "itk_t1_head": ("itk", "KmeansTest_T1UCharRaw.nii.gz"),
}


def volume_path(name: str) -> Path:
    """Where the volume source ``name`` lives (raises ``InputError`` when not installed)."""
    where, fname = _VOLUMES[name]
    if where == "mricron":
        return _existing(MRICRON / fname, APT_HINT)
    if where == "itk":
        return _existing(ITK_DATA / fname, APT_HINT)
    return _existing(_package_file("nibabel", "tests", "data", fname), "pip install nibabel")


@functools.lru_cache(maxsize=2)
def load_volume(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RAS volume max 1, voxel sizes mm) of the volume source ``name`` (cached)."""
    return _nifti_ras(volume_path(name))


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    a = np.asarray(iio.imread(path), dtype=np.float32)
    return a[..., :3].mean(-1) if a.ndim == 3 else a


def slice_images(name: str) -> list[np.ndarray]:
    """The 2-D images ``[h, w]`` float32 (max 1) of the slice source ``name``."""
    if name == "itk_slices":
        files = ("BrainProtonDensitySlice.png", "BrainT1Slice.png", "BrainMidSagittalSlice.png")
        return [_normalise(_read_png(_existing(ITK_DATA / f, APT_HINT))) for f in files]
    if name == "mpl_s1045":
        path = _existing(_package_file("matplotlib", "mpl-data", "sample_data", "s1045.ima.gz"),
                         "pip install matplotlib")
        with gzip.open(path) as fh:
            raw = np.frombuffer(fh.read(), np.uint16)
        return [_normalise(raw.reshape(256, 256).astype(np.float32))]
    if name == "pydicom_mr":
        import pydicom

        path = _existing(_package_file("pydicom", "data", "test_files", "MR_small.dcm"), "pip install pydicom")
        return [_normalise(pydicom.dcmread(path).pixel_array.astype(np.float32))]
    raise ValueError(f"unknown slice source {name!r}")


# ---------------------------------------------------------------------------- geometry

_PLANE_AXES = {  # (row direction, column direction) in RAS voxel axes; display convention
    "axial": ((0, -1, 0), (1, 0, 0)),  # rows A→P, columns R→… (+x)
    "coronal": ((0, 0, -1), (1, 0, 0)),  # rows S→I
    "sagittal": ((0, 0, -1), (0, 1, 0)),
}


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about unit ``axis``."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_slice(vol: np.ndarray, voxel: np.ndarray, plane: str, size: tuple[int, int],
                  rng: np.random.Generator, max_tilt_deg: float = 20.0) -> np.ndarray:
    """One oblique slice ``[H, W]`` float32 of ``vol`` (see the module docstring)."""
    r, c = (np.asarray(v, float) for v in _PLANE_AXES[plane])
    n = np.cross(r, c)
    tilt = np.deg2rad(rng.uniform(-max_tilt_deg, max_tilt_deg, 2))
    rot = _rotation(r, tilt[0]) @ _rotation(c, tilt[1])
    r, c, n = rot @ r, rot @ c, rot @ n
    extent = np.asarray(vol.shape) * voxel  # mm
    centre = extent / 2 + n * rng.uniform(-0.35, 0.35) * float(np.abs(n) @ extent)
    centre += rng.normal(0, 0.03, 3) * extent
    H, W = size
    fov = rng.uniform(0.85, 1.25) * max(float(np.abs(r) @ extent), float(np.abs(c) @ extent))
    pix = fov / max(H, W)
    sup = 2 if pix > 1.5 * float(voxel.min()) else 1
    i = (np.arange(H * sup) - (H * sup - 1) / 2) * pix / sup
    j = (np.arange(W * sup) - (W * sup - 1) / 2) * pix / sup
    pts = centre[:, None, None] + r[:, None, None] * i[None, :, None] + c[:, None, None] * j[None, None, :]
    coords = pts / voxel[:, None, None] - 0.5  # voxel centres at (k + ½)·voxel
    out = ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
    if sup > 1:
        out = out.reshape(H, sup, W, sup).mean(axis=(1, 3))
    return out.astype(np.float32)


class VolumeSource:
    """Oblique slices of one real 3-D MR volume (see the module docstring)."""

    def __init__(self, name: str):
        if name not in _VOLUMES:
            raise ValueError(f"unknown volume source {name!r}")
        self.name = name

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        vol, voxel = load_volume(self.name)
        while True:
            for _ in range(_MAX_TRIES):
                img = oblique_slice(vol, voxel, plane, size, rng)
                if (img > 0.1).mean() >= _MIN_FRACTION:
                    break
            if rng.random() < 0.5:
                img = img[:, ::-1]
            yield _normalise(img)


class SliceSource:
    """Augmented copies of a few real 2-D MR slices (see the module docstring)."""

    def __init__(self, name: str):
        self.name = name

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        from mpcli.data.sources import resize
        from mpcli.data.synthetic import elastic_warp

        imgs = slice_images(self.name)
        while True:
            img = imgs[int(rng.integers(len(imgs)))]
            img = ndimage.rotate(img, rng.uniform(-15, 15), reshape=True, order=1)
            z = rng.uniform(0.9, 1.2)
            h, w = img.shape
            ch, cw = min(h, round(h / z)), min(w, round(w / z))
            i0, j0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = resize(np.ascontiguousarray(img[i0:i0 + ch, j0:j0 + cw]), size)
            img = elastic_warp(img, rng, strength=0.02 * max(size))
            if rng.random() < 0.5:
                img = img[:, ::-1]
            yield _normalise(img)


SCAN_SOURCES: dict[str, VolumeSource | SliceSource] = {
    **{name: VolumeSource(name) for name in _VOLUMES},
    **{name: SliceSource(name) for name in ("itk_slices", "mpl_s1045", "pydicom_mr")},
}
