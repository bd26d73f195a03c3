"""Multi-coil k-space from images: coil sensitivities, smooth phase, noise.

Forward model (the SENSE model of :mod:`mpcli.physics.sense`, fully sampled)::

    k_c = F(S_c ⊙ x) + n_c,      c = 1..C,   n_c ~ CN(0, σ² I)

with F the centred orthonormal 2-D FFT. Because F is unitary, the noise has the
same standard deviation σ per complex sample in k-space and in each coil image.

Noise level (``noise_rel``)::

    σ = noise_rel · RMS(F(S ⊙ x)) = noise_rel · ‖S ⊙ x‖₂ / √(C·H·W)

i.e. σ is a fraction of the root-mean-square coil-image intensity (background
included); real and imaginary parts each have standard deviation σ/√2.

Coil maps are normalised so that max over pixels of √(Σ_c |S_c|²) = 1, which
keeps ‖A‖ ≤ 1 for the SENSE operator (see :mod:`mpcli.recon.network`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from mpcli.physics.fft import fft2c


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [−1, 1): rows (v, along H) and columns (u, along W)."""
    h, w = shape
    v = (np.arange(h) - h / 2) / (h / 2)
    u = (np.arange(w) - w / 2) / (w / 2)
    return np.meshgrid(v, u, indexing="ij")  # each [H, W]


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, strength: float = 1.0
                 ) -> np.ndarray:
    """A smooth random phase map φ (radians), ``[H, W]`` float32.

    φ = strength · p / max|p|, with p a random polynomial of degree ≤ 2 in the
    normalised coordinates (u, v) ∈ [−1, 1)² plus a random constant offset
    (Gaussian coefficients). ``strength`` is thus the largest |φ − φ_centre|
    scale, in radians. Use ``np.exp(1j * φ)`` to apply it.
    """
    v, u = _grid(shape)
    terms = [u, v, u * u, v * v, u * v]
    coef = rng.normal(size=len(terms))
    p = sum(c * t for c, t in zip(coef, terms))
    p = p / max(float(np.abs(p).max()), 1e-12)
    offset = rng.uniform(-np.pi, np.pi)
    return (strength * p + offset).astype(np.float32)


def biot_savart_maps(n_coils: int, shape: tuple[int, int], rng: np.random.Generator,
                     grid: int = 32, segments: int = 48) -> np.ndarray:
    """Receive sensitivities of circular loops by the Biot–Savart law, ``[C, H, W]`` complex64 (unnormalised).

    Geometry (units of the half field of view; slice plane z = 0, x along W, y along H):
    loops of radius a_c ~ U(0.3, 0.6) sit on an elliptic cylinder (semi-axes
    U(1.15, 1.4) each, close around an object inside the inscribed ellipse) around a
    centre shifted by N(0, 0.05²) in-plane, at angles
    spread evenly with a random rotation and ±0.2·2π/C jitter, at heights
    z_c ~ U(−0.4, 0.4) (coils above and below the slice), each loop facing the
    cylinder axis tilted by up to ±20°. With the loop discretised into
    ``segments`` straight elements dl at r_s::

        B(r) = Σ_s dl_s × (r − r_s) / max(|r − r_s|, 0.2)³,     S_c(r) = (B_x − i B_y)(r) · e^{iφ_c}

    (the circularly polarised receive field B₁⁻ up to a constant; φ_c ~ U(0, 2π) the
    receiver phase), evaluated on a ``grid``² grid and interpolated (the field is
    smooth inside the array) to ``shape``.
    """
    h, w = shape
    gh, gw = max(2, min(grid, h)), max(2, min(grid, w))
    y = (np.arange(gh) + 0.5) / gh * 2 - 1
    x = (np.arange(gw) + 0.5) / gw * 2 - 1
    yy, xx = np.meshgrid(y * h / max(h, w), x * w / max(h, w), indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1)  # [G, 3]
    ax, ay = rng.uniform(1.15, 1.4, 2)
    centre = np.r_[rng.normal(0, 0.05, 2), 0.0]
    rot = rng.uniform(0, 2 * np.pi)
    angles = rot + 2 * np.pi * (np.arange(n_coils) + rng.uniform(-0.2, 0.2, n_coils)) / n_coils
    t = 2 * np.pi * (np.arange(segments) + 0.5) / segments
    maps = np.empty((n_coils, gh, gw), dtype=np.complex128)
    for c, ang in enumerate(angles):
        a = rng.uniform(0.3, 0.6)
        pos = centre + np.r_[ax * np.cos(ang), ay * np.sin(ang), rng.uniform(-0.6, 0.6)]
        normal = np.r_[-np.cos(ang), -np.sin(ang), 0.0]
        tilt = np.deg2rad(rng.uniform(-20, 20))
        normal = np.cos(tilt) * normal + np.sin(tilt) * np.r_[0.0, 0.0, 1.0]
        e1 = np.cross(normal, [0.0, 0.0, 1.0]) if abs(normal[2]) < 0.99 else np.r_[1.0, 0.0, 0.0]
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(normal, e1)
        ring = pos + a * (np.cos(t)[:, None] * e1 + np.sin(t)[:, None] * e2)  # [S, 3]
        dl = a * (2 * np.pi / segments) * (-np.sin(t)[:, None] * e1 + np.cos(t)[:, None] * e2)  # [S, 3]
        r = pts[:, None, :] - ring[None]  # [G, S, 3]
        b = (np.cross(dl[None], r) / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 0.2) ** 3).sum(1)  # [G, 3]
        maps[c] = ((b[:, 0] - 1j * b[:, 1]) * np.exp(1j * rng.uniform(0, 2 * np.pi))).reshape(gh, gw)
    if (gh, gw) != (h, w):
        zoom = (h / gh, w / gw)
        maps = np.stack([ndimage.zoom(m.real, zoom, order=1, mode="nearest", grid_mode=True)
                         + 1j * ndimage.zoom(m.imag, zoom, order=1, mode="nearest", grid_mode=True) for m in maps])
    return maps[:, :h, :w].astype(np.complex64)


def coil_maps(n_coils: int, shape: tuple[int, int], rng: np.random.Generator,
              kind: str = "ring") -> np.ndarray:
    """Smooth surface-coil sensitivities, ``[C, H, W]`` complex64.

    Coils sit on an ellipse around the field of view (random semi-axes 1.0–1.4
    times the half-FOV, random rotation, jittered angles).

    - ``"ring"``: a small loop's near-field profile (Biot–Savart-like on-axis
      falloff) |S_c(r)| = (a² / (a² + d²))^{3/2}, d = distance to the coil
      centre, a ∈ [0.5, 0.9] the loop radius (normalised units).
    - ``"gaussian"``: Gaussian blobs exp(−d² / (2w²)), w ∈ [0.5, 0.9].

    Phase (both kinds): π·d²/4 (grows away from the coil) plus a smooth random
    field (:func:`smooth_phase`, which includes a random offset per coil).

    - ``"biot_savart"``: loops in 3-D around the slice, :func:`biot_savart_maps`;
      normalised on the inscribed disc (radius 0.9) and capped at √Σ|S|² = 1
      outside it (the field of view's corners lie behind the coils).

    Normalised so that max over pixels of √(Σ_c |S_c|²) = 1.
    """
    if n_coils < 1:
        raise ValueError(f"n_coils must be ≥ 1, got {n_coils}")
    if kind not in ("ring", "gaussian", "biot_savart"):
        raise ValueError(f"unknown coil kind {kind!r}; expected 'ring', 'gaussian' or 'biot_savart'")
    if kind == "biot_savart":
        maps = biot_savart_maps(n_coils, shape, rng)
        rss = np.sqrt((np.abs(maps) ** 2).sum(0))  # [H, W]
        v, u = _grid(shape)
        inside = u**2 + v**2 <= 0.9**2  # where an object can be; the corners lie behind the coils
        scale = float(rss[inside].max())
        maps = maps / scale / np.maximum(rss / scale, 1.0)  # max √Σ|S|² = 1 inside, ≤ 1 everywhere
        return maps.astype(np.complex64)
    v, u = _grid(shape)
    ax, ay = rng.uniform(1.0, 1.4, size=2)
    rot = rng.uniform(0, 2 * np.pi)
    angles = rot + 2 * np.pi * (np.arange(n_coils) + rng.uniform(-0.2, 0.2, n_coils)) / n_coils
    maps = np.empty((n_coils, *shape), dtype=np.complex64)
    for c, ang in enumerate(angles):
        cu, cv = ax * np.cos(ang), ay * np.sin(ang)
        d2 = (u - cu) ** 2 + (v - cv) ** 2
        size = rng.uniform(0.5, 0.9)
        if kind == "ring":
            mag = (size**2 / (size**2 + d2)) ** 1.5
        else:
            mag = np.exp(-d2 / (2 * size**2))
        # B1 phase grows with distance from the coil; plus a smooth random field
        phase = np.pi * d2 / 4 + smooth_phase(shape, rng, 0.5)
        maps[c] = mag * np.exp(1j * phase)
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))
    return (maps / rss.max()).astype(np.complex64)


def _as_tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).to(torch.complex64)


def simulate_kspace(image, maps, noise_rel: float, rng: np.random.Generator) -> np.ndarray:
    """Fully sampled noisy multi-coil k-space, ``[C, H, W]`` complex64 (numpy).

    k_c = fft2c(S_c ⊙ x) + n_c with σ = noise_rel · RMS(fft2c(S ⊙ x)) (see the
    module docstring). With ``noise_rel = 0`` this equals ``Sense(maps, 1)(x)``.

    Args:
        image: ``[H, W]`` complex (numpy or torch).
        maps: ``[C, H, W]`` complex coil sensitivities.
        noise_rel: relative noise level (≥ 0).
        rng: source of the noise.
    """
    if noise_rel < 0:
        raise ValueError(f"noise_rel must be ≥ 0, got {noise_rel}")
    x = _as_tensor(image)  # [H, W]
    s = _as_tensor(maps)  # [C, H, W]
    k = fft2c(s * x).numpy()  # [C, H, W]
    if noise_rel > 0:
        sigma = noise_rel * float(np.sqrt(np.mean(np.abs(k) ** 2)))
        noise = rng.normal(size=(2, *k.shape)) * (sigma / np.sqrt(2))
        k = k + (noise[0] + 1j * noise[1])
    return k.astype(np.complex64)
