"""Synthetic training images for diversity: atlas label maps, dead leaves, natural images.

All yield ``[H, W]`` float32 magnitude images with max 1 (the task adds a smooth
phase, coils and noise, :mod:`mpcli.data.tasks`)::

    label_map    an atlas of mricron-data (aal, brodmann, HarvardOxford, JHU,
                 AICHA, natbrainlab, jhu189, inia19 NeuroMaps; BSD-3) re-sliced
                 obliquely (:func:`mpcli.data.scans.oblique_slice`, nearest
                 label), each label a random intensity U(0.05, 1) (background 0
                 or a dim U(0, 0.05)), partial-volume blur σ U(0.4, 1.2) px,
                 multiplicative texture 1 + t·n (n smooth Gaussian noise, t
                 U(0, 0.15)), a smooth bias field exp(b·p) (p a random
                 quadratic, b U(0, 0.6)), then an elastic warp.
    dead_leaves  occluding disks and ellipses (Achddou et al. 2021), radius
                 density ∝ r⁻³ on [r_min, r_max] = [0.01, 0.4]·size, intensity
                 U(0, 1) with a linear ramp, edges blurred σ U(0.3, 1) px,
                 inside an elliptical field of view (background 0).
    natural      a grey crop of a scikit-image bundled photograph (camera,
                 astronaut, coffee, chelsea, brick, grass, gravel, moon, coins,
                 page, rocket, horse, motorcycle_left; BSD-3 / public domain /
                 CC0 per skimage/data/README.txt), rotated ±180°, zoomed,
                 inside an elliptical field of view (Dar et al. 2020: natural
                 images with synthetic phase pretrain MRI reconstruction).

Elastic warp (:func:`elastic_warp`): displacement fields u, v = Gaussian-filtered
white noise (σ = size/8) scaled to a peak of ``strength`` pixels, linear
interpolation.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from mpcli.data.scans import APT_HINT, MRICRON, check_trainable, oblique_slice

ATLASES: tuple[str, ...] = (
    "aal.nii.gz", "brodmann.nii.gz", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
    "JHU-WhiteMatter-labels-1mm.nii.gz", "AICHAmc.nii.gz", "natbrainlab.nii.gz", "jhu189.nii.gz",
    "inia19-NeuroMaps.nii.gz",
)
NATURAL: tuple[str, ...] = ("camera.png", "astronaut.png", "coffee.png", "chelsea.png", "brick.png", "grass.png",
                            "gravel.png", "moon.png", "coins.png", "page.png", "rocket.jpg", "horse.png",
                            "motorcycle_left.png")


def _normalise(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0, None).astype(np.float32)
    m = float(img.max())
    return img / m if m > 0 else img


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to max |·| = 1."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return n / max(float(np.abs(n).max()), 1e-12)


def elastic_warp(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """``img`` warped by a smooth random displacement (peak ``strength`` pixels), order 1."""
    h, w = img.shape
    sigma = max(h, w) / 8
    du, dv = (strength * _smooth_noise((h, w), sigma, rng) for _ in range(2))
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return ndimage.map_coordinates(img, [ii + du, jj + dv], order=1, mode="constant").astype(np.float32)


def _quadratic(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    p = sum(c * t for c, t in zip(rng.normal(size=5), (u, v, u * u, v * v, u * v)))
    return p / max(float(np.abs(p).max()), 1e-12)


def _fov_ellipse(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft elliptical field of view (semi-axes 0.6–0.95 of the half-size)."""
    h, w = shape
    v, u = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    a, b = rng.uniform(0.6, 0.95, 2)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    return ndimage.gaussian_filter(inside.astype(np.float32), 1.0)


# ------------------------------------------------------------------------------ label maps

@functools.lru_cache(maxsize=2)
def _atlas(fname: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    from mpcli.errors import InputError

    path = MRICRON / fname
    if not path.is_file():
        raise InputError(path, f"atlas missing; install it with: {APT_HINT}")
    img = nib.as_closest_canonical(nib.load(str(check_trainable(path))))
    return np.asarray(img.dataobj).astype(np.int16), np.asarray(img.header.get_zooms()[:3], float)


class LabelMapSource:
    """Random-contrast images from atlas label maps (see the module docstring)."""

    name = "label_map"

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        while True:
            labels, voxel = _atlas(ATLASES[int(rng.integers(len(ATLASES)))])
            for _ in range(30):
                lab = np.rint(oblique_slice(labels.astype(np.float32), voxel, plane, size, rng)).astype(int)
                if (lab > 0).mean() >= 0.15:
                    break
            else:  # no slice of this atlas held enough labels (an all-background image): draw another atlas
                continue
            table = rng.uniform(0.05, 1.0, int(labels.max()) + 1)
            table[0] = rng.uniform(0, 0.05) if rng.random() < 0.5 else 0.0
            img = table[np.clip(lab, 0, len(table) - 1)]
            img = ndimage.gaussian_filter(img, rng.uniform(0.4, 1.2))
            img = img * (1 + rng.uniform(0, 0.15) * _smooth_noise(img.shape, rng.uniform(1, 4), rng))
            img = img * np.exp(rng.uniform(0, 0.6) * _quadratic(img.shape, rng))
            img = elastic_warp(img, rng, strength=0.02 * max(size))
            yield _normalise(img)


# ------------------------------------------------------------------------------ dead leaves

class DeadLeavesSource:
    """Dead-leaves images inside an elliptical field of view (see the module docstring)."""

    name = "dead_leaves"

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        h, w = size
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        s = max(h, w)
        rmin, rmax = 0.01 * s, 0.4 * s
        while True:
            img = np.full(size, np.nan, dtype=np.float32)
            for _ in range(400):
                # r with density ∝ r⁻³: inverse CDF of 1/r² between rmin and rmax
                r = 1 / np.sqrt(rng.uniform(1 / rmax**2, 1 / rmin**2))
                ci, cj = rng.uniform(0, h), rng.uniform(0, w)
                e, th = rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
                di, dj = ii - ci, jj - cj
                a = (di * np.cos(th) + dj * np.sin(th)) / r
                b = (-di * np.sin(th) + dj * np.cos(th)) / (r * e)
                shape = (a * a + b * b <= 1) & np.isnan(img)
                ramp = rng.uniform(0, 1) + rng.normal(0, 0.3) * (di * np.cos(th)) / s
                img[shape] = ramp[shape]
                if not np.isnan(img).any():
                    break
            img = np.nan_to_num(img, nan=float(rng.uniform(0, 1)))
            img = ndimage.gaussian_filter(np.clip(img, 0, None), rng.uniform(0.3, 1.0))
            yield _normalise(img * _fov_ellipse(size, rng))


# ------------------------------------------------------------------------------- natural

@functools.cache
def _natural(fname: str) -> np.ndarray:
    """A photograph from the files scikit-image installs in ``skimage/data`` (read, never downloaded)."""
    import imageio.v3 as iio

    from mpcli.data.scans import _existing, _package_file

    img = np.asarray(iio.imread(_existing(_package_file("skimage", "data", fname), "pip install scikit-image")),
                     dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(-1)
    return _normalise(img)


class NaturalImageSource:
    """Grey crops of scikit-image's bundled photographs (see the module docstring)."""

    name = "natural"

    def images(self, plane: str, size: tuple[int, int], rng: np.random.Generator) -> Iterator[np.ndarray]:
        from mpcli.data.sources import resize

        while True:
            img = _natural(NATURAL[int(rng.integers(len(NATURAL)))])
            img = ndimage.rotate(img, rng.uniform(-180, 180), reshape=False, order=1, mode="reflect")
            h, w = img.shape
            frac = rng.uniform(0.4, 1.0)
            ch, cw = max(16, int(h * frac)), max(16, int(w * frac))
            i0, j0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = resize(np.ascontiguousarray(img[i0:i0 + ch, j0:j0 + cw]), size)
            yield _normalise(img * _fov_ellipse(size, rng))


SYNTHETIC_SOURCES = {"label_map": LabelMapSource(), "dead_leaves": DeadLeavesSource(),
                     "natural": NaturalImageSource()}
