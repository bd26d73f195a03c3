"""Multi-coil k-space simulation (mpcli/data/simulate.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpcli.data.simulate import coil_maps, simulate_kspace, smooth_phase
from mpcli.physics.sense import Sense


def _image(shape=(40, 36), seed=0):
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    img = ((u / 0.8) ** 2 + (v / 0.9) ** 2 < 1).astype(np.float32) * (0.5 + 0.5 * rng.random(shape))
    return (img * np.exp(1j * smooth_phase(shape, rng, 1.0))).astype(np.complex64)


@pytest.mark.parametrize("kind", ["ring", "gaussian"])
def test_noiseless_kspace_is_the_sense_operator(kind):
    rng = np.random.default_rng(1)
    x = _image()
    maps = coil_maps(6, x.shape, rng, kind=kind)
    k = simulate_kspace(x, maps, 0.0, rng)
    assert k.shape == (6, *x.shape) and k.dtype == np.complex64
    A = Sense(torch.from_numpy(maps)[None], torch.ones(1, 1, *x.shape))
    ref = A(torch.from_numpy(x)[None])[0]
    assert torch.allclose(torch.from_numpy(k), ref, atol=1e-5)
    # Aᴴy = x · Σ|S|² for fully sampled noiseless data
    back = A.adjoint(torch.from_numpy(k)[None])[0].numpy()
    assert np.allclose(back, x * (np.abs(maps) ** 2).sum(0), atol=1e-5)


def test_noise_std_matches_noise_rel():
    rng = np.random.default_rng(2)
    x = _image((64, 64))
    maps = coil_maps(8, x.shape, rng)
    clean = simulate_kspace(x, maps, 0.0, rng)
    noisy = simulate_kspace(x, maps, 0.05, np.random.default_rng(3))
    sigma = 0.05 * np.sqrt(np.mean(np.abs(clean) ** 2))
    n = noisy - clean
    assert np.std(n) == pytest.approx(sigma, rel=0.03)
    assert np.std(n.real) == pytest.approx(sigma / np.sqrt(2), rel=0.03)
    assert abs(np.mean(n)) < 0.05 * sigma
    same = simulate_kspace(x, maps, 0.05, np.random.default_rng(3))
    assert np.array_equal(noisy, same)  # deterministic given the rng


@pytest.mark.parametrize("kind", ["ring", "gaussian"])
@pytest.mark.parametrize("n_coils", [1, 4, 16])
def test_coil_maps_normalised_and_smooth(kind, n_coils):
    maps = coil_maps(n_coils, (64, 48), np.random.default_rng(n_coils), kind=kind)
    assert maps.shape == (n_coils, 64, 48) and maps.dtype == np.complex64
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))
    assert rss.max() == pytest.approx(1.0, abs=1e-5)
    # smooth: small first and second differences on a 64×48 grid (white noise
    # of the same magnitude would give differences of order 1)
    for axis in (1, 2):
        assert np.abs(np.diff(maps, axis=axis)).max() < 0.1
        assert np.abs(np.diff(maps, 2, axis=axis)).max() < 0.02
    # distinct coils see the object differently
    if n_coils > 1:
        assert np.abs(np.abs(maps[0]) - np.abs(maps[1])).max() > 0.05


def test_smooth_phase_bounded_and_seeded():
    a = smooth_phase((32, 40), np.random.default_rng(5), strength=0.7)
    b = smooth_phase((32, 40), np.random.default_rng(5), strength=0.7)
    assert a.shape == (32, 40) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.max() - a.min() <= 2 * 0.7 + 1e-5
    assert np.abs(np.diff(a, axis=0)).max() < 0.2  # smooth on the pixel scale
