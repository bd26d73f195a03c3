"""Contracts of the centred FFT and the SENSE operator algebra."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcli.physics.fft import fft1c, fft2c, ifft1c, ifft2c
from mpcli.physics.sense import (
    FFT2C,
    CoilExpand,
    Mask,
    adjointness_error,
    max_eigenvalue,
    sense,
)


def _crandn(*shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g)


@pytest.mark.parametrize("shape", [(8, 8), (7, 10), (3, 16, 9), (2, 6, 10), (6, 8), (2, 4), (230, 180), (5, 4)])
def test_fft2c_matches_numpy(shape):
    x = _crandn(*shape)
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(fft2c(x).numpy(), ref, atol=1e-12)
    iref = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(ifft2c(x).numpy(), iref, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (9, 6)])
def test_fft2c_is_unitary(shape):
    x = _crandn(*shape, seed=1)
    torch.testing.assert_close(ifft2c(fft2c(x)), x)
    assert torch.allclose(fft2c(x).norm(), x.norm())
    assert adjointness_error(FFT2C(), x, _crandn(*shape, seed=2)) < 1e-12


def test_fft1c_composes_to_fft2c():
    x = _crandn(6, 10, seed=3)
    torch.testing.assert_close(fft1c(fft1c(x, -1), -2), fft2c(x))
    torch.testing.assert_close(ifft1c(fft1c(x, -2), -2), x)


def test_centre_of_kspace_is_dc():
    """A constant image puts all its energy at index (H//2, W//2)."""
    x = torch.ones(6, 9, dtype=torch.complex128)
    k = fft2c(x)
    assert abs(k[3, 4]) == pytest.approx(np.sqrt(54))
    assert k.abs().sum() == pytest.approx(np.sqrt(54))


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 5),
    h=st.integers(2, 17),
    w=st.integers(2, 17),
    seed=st.integers(0, 2**16),
    mask_kind=st.sampled_from(["2d", "lines", "per-slice"]),
)
def test_sense_adjoint(b, c, h, w, seed, mask_kind):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(b, c, h, w, dtype=torch.complex128, generator=g)
    shape = {"2d": (1, 1, h, w), "lines": (1, 1, 1, w), "per-slice": (b, 1, h, w)}[mask_kind]
    mask = (torch.rand(*shape, generator=g) > 0.4).double()
    A = sense(maps, mask)
    x = torch.randn(b, h, w, dtype=torch.complex128, generator=g)
    y = torch.randn(b, c, h, w, dtype=torch.complex128, generator=g)
    assert adjointness_error(A, x, y) < 1e-12
    assert adjointness_error(A.H, y, x) < 1e-12
    # the fused operator equals its composition M ∘ F ∘ S
    torch.testing.assert_close(A(x), A.as_composition()(x))
    torch.testing.assert_close(A.H(y), A.as_composition().H(y))


def test_sense_is_linear():
    maps = _crandn(2, 3, 8, 6)
    A = sense(maps, torch.ones(1, 1, 1, 6, dtype=torch.float64))
    x1, x2 = _crandn(2, 8, 6, seed=4), _crandn(2, 8, 6, seed=5)
    torch.testing.assert_close(A(2.5 * x1 - 1j * x2), 2.5 * A(x1) - 1j * A(x2))


def test_normal_operator_is_self_adjoint_and_psd():
    maps = _crandn(1, 4, 10, 8)
    mask = (torch.rand(1, 1, 1, 8, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    N = sense(maps, mask).N
    x, z = _crandn(1, 10, 8, seed=6), _crandn(1, 10, 8, seed=7)
    assert adjointness_error(N, x, z) < 1e-12
    assert (x.conj() * N(x)).sum().real >= 0


@pytest.mark.parametrize("shape", [(10, 8), (9, 8), (10, 7), (230, 180)])
@pytest.mark.parametrize("kind", ["line", "line expanded to 2-D", "2-D"])
def test_fast_normal_equals_adjoint_of_forward(shape, kind):
    """Sense.normal (checkerboard folded into the maps, 1-D FFTs for line masks)
    is AᴴA exactly as adjoint(forward(x)) computes it."""
    H, W = shape
    g = torch.Generator().manual_seed(3)
    line = (torch.rand(2, 1, 1, W, generator=g) > 0.5).double()
    mask = {"line": line, "line expanded to 2-D": line.expand(2, 1, H, W),
            "2-D": (torch.rand(2, 1, H, W, generator=g) > 0.5).double()}[kind]
    A = sense(_crandn(2, 3, H, W), mask)
    x = _crandn(2, H, W, seed=4)
    torch.testing.assert_close(A.normal(x), A.adjoint(A.forward(x)), rtol=1e-12, atol=1e-12)


def test_normal_of_fully_sampled_sense_is_coil_energy():
    """With M = 1, AᴴA x = (Σ_c |S_c|²) x since F is unitary."""
    maps = _crandn(2, 3, 7, 5)
    A = sense(maps, torch.ones(1, 1, 1, 1, dtype=torch.float64))
    x = _crandn(2, 7, 5, seed=8)
    torch.testing.assert_close(A.N(x), maps.abs().pow(2).sum(1) * x)


def test_max_eigenvalue_is_operator_norm_squared():
    maps = _crandn(1, 2, 6, 6)
    A = sense(maps, torch.ones(1, 1, 1, 1, dtype=torch.float64))
    lam = max_eigenvalue(A, _crandn(1, 6, 6, seed=9), iters=200)
    assert lam == pytest.approx(float(maps.abs().pow(2).sum(1).max()), rel=1e-3)


def test_composition_and_adjoint_algebra():
    maps = _crandn(1, 2, 5, 4)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64).view(1, 1, 1, 4)
    op = Mask(mask) @ FFT2C() @ CoilExpand(maps)
    assert op.H.H is op
    y = _crandn(1, 2, 5, 4, seed=10)
    torch.testing.assert_close(op.H(y), CoilExpand(maps).H(FFT2C().H(Mask(mask).H(y))))
