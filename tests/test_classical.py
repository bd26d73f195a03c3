"""Zero-filled, CG-SENSE and L1-wavelet CS; device resolution. Small synthetic data."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

sp = pytest.importorskip("sigpy")
import sigpy.mri as mr

from mpcli.device import is_oom, resolve_device
from mpcli.errors import DeviceError
from mpcli.physics.coils import rss
from mpcli.physics.fft import fft2c, ifft2c
from mpcli.physics.sense import Sense
from mpcli.recon.classical import (
    cg_sense,
    conjugate_gradient,
    l1_wavelet,
    reconstruct_classical,
    zero_filled,
)
from mpcli.scan import Geometry, Scan

N, C = 64, 4


def _truth(n=N, batch=1):
    """Shepp–Logan images [B, H, W] (varied per slice) and unit-norm maps [B, C, H, W]."""
    img = torch.from_numpy(sp.shepp_logan((n, n)).astype(np.complex64))
    imgs = torch.stack([img * (1 + 0.5 * b) * np.exp(1j * 0.3 * b) for b in range(batch)])
    maps = torch.from_numpy(mr.birdcage_maps((C, n, n)).astype(np.complex64))
    maps = maps / maps.abs().pow(2).sum(0, keepdim=True).sqrt()
    return imgs.to(torch.complex64), maps.expand(batch, C, n, n).contiguous()


def _line_mask(n, accel, centre, seed=None):
    """[1, 1, 1, W] 1-D mask: equispaced (seed None) or random lines, plus centre."""
    mask = torch.zeros(1, 1, 1, n)
    if seed is None:
        mask[..., ::accel] = 1
    else:
        g = torch.Generator().manual_seed(seed)
        mask[..., torch.rand(n, generator=g) < (n / accel - centre) / (n - centre)] = 1
    mask[..., n // 2 - centre // 2 : n // 2 - centre // 2 + centre] = 1
    return mask


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_zero_filled_of_full_kspace_is_rss_of_coil_images():
    img, maps = _truth(batch=2)
    coil_images = maps * img[:, None]  # [B, C, H, W]
    out = zero_filled(fft2c(coil_images))  # [B, H, W]
    assert out.dtype == torch.float32 and out.shape == (2, N, N)
    assert torch.allclose(out, rss(coil_images), atol=1e-5)


def test_cg_sense_recovers_image_from_full_noiseless_data():
    img, maps = _truth()
    A = Sense(maps, torch.ones(1, 1, N, N))
    x = cg_sense(A(img), A, iters=30)
    assert x.shape == (1, N, N) and x.is_complex()
    assert _rel(x, img) < 1e-3


def test_cg_sense_beats_zero_filled_at_2x():
    img, maps = _truth()
    A = Sense(maps, _line_mask(N, 2, 8))
    y = A(img)  # [1, C, H, W]
    x = cg_sense(y, A, iters=50)
    err_sense = _rel(x.abs(), img.abs())
    err_zf = _rel(zero_filled(y), img.abs())
    assert err_sense < 1e-2 < err_zf


def test_cg_converges_and_quadratic_objective_decreases():
    img, maps = _truth()
    A = Sense(maps, _line_mask(N, 3, 8))
    y = A(img)
    mu = 1e-3

    def normal(v):
        return A.H(A(v)) + mu * v

    def objective(v):  # ½‖Av − y‖² + μ/2‖v‖², minimised by CG over Krylov spaces
        return float(0.5 * (A(v) - y).norm() ** 2 + 0.5 * mu * v.norm() ** 2)

    _, history = conjugate_gradient(normal, A.H(y), iters=60, tol=0)
    assert history[0] == pytest.approx(1.0)
    assert history[-1] < 1e-4
    values = [objective(cg_sense(y, A, tikhonov=mu, iters=k)) for k in (1, 2, 4, 8, 16)]
    assert all(b <= a * (1 + 1e-5) for a, b in itertools.pairwise(values))
    assert values[-1] < 0.5 * values[0]


def test_cg_sense_batch_is_independent_per_slice():
    img, maps = _truth(batch=2)
    mask = torch.cat([_line_mask(N, 2, 8), _line_mask(N, 3, 8, seed=1)])  # [2, 1, 1, W]
    A = Sense(maps, mask)
    y = A(img)
    both = cg_sense(y, A, iters=10)
    one = cg_sense(y[1:], Sense(maps[1:], mask[1:]), iters=10)
    assert _rel(both[1:], one) < 1e-5


def test_cs_beats_zero_filled_at_4x_poisson():
    img, maps = _truth()
    poisson = mr.poisson((N, N), 4, calib=(12, 12), seed=0).real.astype(np.float32)
    mask = torch.from_numpy(poisson)[None, None]  # [1, 1, H, W], 2-D Poisson disc
    y = fft2c(maps * img[:, None]) * mask
    x = l1_wavelet(y, maps, mask, lam=1e-3, iters=100)  # [1, H, W]
    assert x.shape == (1, N, N) and x.dtype == torch.complex64
    err_cs, err_zf = _rel(x.abs(), img.abs()), _rel(zero_filled(y), img.abs())
    assert err_cs < 0.5 * err_zf, (err_cs, err_zf)


def test_cs_result_does_not_depend_on_data_scale():
    img, maps = _truth()
    mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    y = fft2c(maps * img[:, None]) * mask
    a = l1_wavelet(y, maps, mask, lam=3e-3, iters=30)
    b = l1_wavelet(1000 * y, maps, mask, lam=3e-3, iters=30)
    assert _rel(b / 1000, a) < 1e-3


def _scaled_data(mask):
    """Shepp–Logan k-space under ``mask`` at the scale ``l1_wavelet`` solves at (99th pct ≈ 1)."""
    img, maps = _truth()
    y = fft2c(maps * img[:, None]) * mask
    return img, maps, y / float(torch.quantile(zero_filled(y).flatten(), 0.99))


def test_cs_without_cycle_spinning_is_sigpys_l1_wavelet_recon():
    """Same problem as sigpy's L1WaveletRecon; its step comes from 30 power iterations, ours from
    the bound L (≈ 1 % smaller): the iterates agree closely after 50 iterations and the minimisers
    agree."""
    from sigpy.mri.app import L1WaveletRecon

    mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    _, maps, y = _scaled_data(mask)
    for iters, tol in ((50, 2e-2), (400, 2e-3)):
        ours = l1_wavelet(y, maps, mask, lam=3e-3, iters=iters, cycle_spin=False)[0]
        ref = L1WaveletRecon(y[0].numpy(), maps[0].numpy(), 3e-3, weights=mask[0, 0].numpy(),
                             max_iter=iters, show_pbar=False).run()
        assert _rel(ours, torch.from_numpy(ref)) < tol, iters


@pytest.mark.parametrize("kind", ["poisson", "lines"])
def test_the_step_bound_holds_and_is_tight_for_unit_rss_maps(kind):
    """L = max Σ_c|S_c|² · max w ≥ ‖AᴴA‖ (sigpy's power method), within 2 % with a sampled centre."""
    from mpcli.recon.wavelet import lipschitz_bound

    if kind == "poisson":
        mask = mr.poisson((N, N), 4, calib=(12, 12), seed=0).real.astype(np.float32)
    else:
        mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)[0, 0].numpy()
    maps = _truth()[1][0].numpy()
    A = mr.linop.Sense(maps, weights=mask)
    power = sp.app.MaxEig(A.N, dtype=np.complex64, max_iter=200, show_pbar=False).run()
    bound = lipschitz_bound(maps, mask)
    assert power <= bound * (1 + 1e-5) and bound < 1.02 * power, (power, bound)


@pytest.mark.parametrize("kind", ["poisson", "lines"])
def test_cycle_spinning_is_reproducible_and_lowers_the_error(kind):
    if kind == "poisson":
        mask = torch.from_numpy(mr.poisson((N, N), 4, calib=(12, 12), seed=0).real.astype(np.float32))[None, None]
    else:
        mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    img, maps = _truth()
    y = fft2c(maps * img[:, None]) * mask
    plain = l1_wavelet(y, maps, mask, lam=3e-3, cycle_spin=False)
    spun = l1_wavelet(y, maps, mask, lam=3e-3)
    assert torch.equal(spun, l1_wavelet(y, maps, mask, lam=3e-3))
    assert _rel(spun.abs(), img.abs()) < 0.9 * _rel(plain.abs(), img.abs())


def test_cs_from_a_start_image_keeps_it_as_the_weight_on_it_grows():
    """μ/2‖x − x₀‖²: μ → ∞ returns the start x₀; μ = 0 from x₀ is CS started there (a different
    early-stopped iterate, same problem); a weight without a start is refused."""
    img, maps = _truth()
    mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    y = fft2c(maps * img[:, None]) * mask
    start = img * 0.9  # [1, H, W], a close but imperfect image
    kept = l1_wavelet(y, maps, mask, lam=1e-3, iters=30, start=start, mu=1e4)
    assert _rel(kept, start) < 1e-3
    cold = l1_wavelet(y, maps, mask, lam=1e-3, iters=30)
    warm = l1_wavelet(y, maps, mask, lam=1e-3, iters=30, start=start)
    assert _rel(warm.abs(), img.abs()) < _rel(cold.abs(), img.abs())
    with pytest.raises(ValueError, match="start"):
        l1_wavelet(y, maps, mask, lam=1e-3, mu=0.1)


def test_weighted_l1_shrinks_each_coefficient_by_lambda_eps_over_the_reference_plus_eps():
    """prox(x) = Ψᴴ soft(Ψx, αλ·ε/(|Ψ R_δ z| + ε)) for the reference z rolled by the same δ (Ψ an isometry,
    ΨᴴΨ = I), against sigpy's Wavelet and soft threshold (odd sizes are zero-padded as sigpy pads them);
    no reference: the plain threshold αλ; a weight without a scale ε is refused."""
    from mpcli.recon.wavelet import DAUBECHIES_4, WaveletL1

    gen = np.random.default_rng(0)
    for shape in ((16, 24), (15, 22)):
        x = (gen.standard_normal(shape) + 1j * gen.standard_normal(shape)).astype(np.complex64)
        z = (gen.standard_normal(shape) * 3).astype(np.complex64)
        Psi = sp.linop.Wavelet(x.shape, wave_name=DAUBECHIES_4)
        lam, eps, alpha, shift = 0.3, 0.5, 0.7, (3, 5)
        rolled = np.roll(x, shift, axis=(-2, -1))
        out = WaveletL1(x.shape, lam, z, eps).prox(alpha, rolled, shift)
        thresh = alpha * lam * eps / (np.abs(Psi(np.roll(z, shift, axis=(-2, -1)))) + eps)
        np.testing.assert_allclose(out, Psi.H(sp.soft_thresh(thresh, Psi(rolled))), atol=1e-5)
        assert out.dtype == np.complex64 and out.shape == shape
        assert np.linalg.norm(out - Psi.H(sp.soft_thresh(alpha * lam, Psi(rolled)))) > 0.1 * np.linalg.norm(out)
        np.testing.assert_allclose(WaveletL1(x.shape, lam).prox(alpha, rolled, shift),
                                   Psi.H(sp.soft_thresh(alpha * lam, Psi(rolled))), atol=1e-5)
    with pytest.raises(ValueError, match="eps"):
        WaveletL1(x.shape, lam, z, None)


def test_soft_threshold_is_sigpys():
    from mpcli.recon.wavelet import soft_threshold

    gen = np.random.default_rng(1)
    c = (gen.standard_normal(200) + 1j * gen.standard_normal(200)).astype(np.complex64)
    c[:5] = 0
    t = np.abs(gen.standard_normal(200)).astype(np.float32)
    for threshold in (0.0, 0.5, t):
        np.testing.assert_allclose(soft_threshold(threshold, c), sp.soft_thresh(threshold, c), atol=1e-6)
    assert not np.isnan(soft_threshold(0.5, np.zeros(3, np.complex64))).any()


class _ShiftedWaveletProx(sp.prox.Prox):
    """The reference prox, from sigpy's parts: R₋δ Ψᴴ soft(Ψ R_δ x, αλw) with δ drawn as ``solve`` draws it."""

    def __init__(self, shape, lam, seed, reference=None, eps=None):
        from mpcli.recon.wavelet import DAUBECHIES_4, wavelet_depth

        self.Psi = sp.linop.Wavelet(shape, wave_name=DAUBECHIES_4)
        self.lam, self.reference, self.eps = lam, reference, eps
        self.rng, self.max_shift = np.random.default_rng(seed), tuple(2 ** wavelet_depth(n) for n in shape)
        super().__init__(shape)

    def _prox(self, alpha, x):
        shift = tuple(int(self.rng.integers(0, m)) for m in self.max_shift)
        lam = self.lam
        if self.reference is not None:
            lam = lam * self.eps / (np.abs(self.Psi(np.roll(self.reference, shift, axis=(-2, -1)))) + self.eps)
        out = self.Psi.H(sp.soft_thresh(alpha * lam, self.Psi(np.roll(x, shift, axis=(-2, -1)))))
        return np.roll(out, tuple(-s for s in shift), axis=(-2, -1))


@pytest.mark.parametrize("shape,kind", [((64, 64), "lines"), ((64, 48), "poisson"), ((37, 50), "poisson")])
def test_fista_with_cycle_spinning_is_sigpys_solver_with_a_shifted_wavelet_prox(shape, kind):
    """``solve`` (NumPy FFTs, PyWavelets' coefficient lists) against sigpy's LinearLeastSquares with its
    Sense and Wavelet operators and the same shifts and step, plain, weighted and with μ: the same
    iterates to float rounding, for line and 2-D masks, even and odd sizes."""
    from mpcli.recon.wavelet import lipschitz_bound, solve

    gen = np.random.default_rng(2)
    maps = mr.birdcage_maps((C, *shape)).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    if kind == "lines":
        mask = np.broadcast_to((gen.random(shape[1]) < 0.3).astype(np.float32), shape).copy()
        mask[:, shape[1] // 2 - 4: shape[1] // 2 + 4] = 1
    else:
        mask = (gen.random(shape) < 0.3).astype(np.float32)
    img = sp.shepp_logan(shape).astype(np.complex64)
    y = (mask * sp.fft(maps * img, axes=(-2, -1))).astype(np.complex64)
    x0 = (0.9 * img + 0.05 * gen.standard_normal(shape)).astype(np.complex64)
    for kw in ({}, {"x0": x0, "eps": 0.05}, {"x0": x0, "mu": 0.03, "eps": 0.05}):
        mu = kw.get("mu", 0.0)
        prox = _ShiftedWaveletProx(shape, 3e-3, seed=7, reference=kw.get("x0") if "eps" in kw else None,
                                   eps=kw.get("eps"))
        extra = {"lamda": mu, "z": x0} if mu else {}
        ref = sp.app.LinearLeastSquares(mr.linop.Sense(maps, weights=mask), y * mask**0.5,
                                        x=None if "x0" not in kw else x0.copy(), proxg=prox, max_iter=25,
                                        alpha=1 / (lipschitz_bound(maps, mask) + mu), show_pbar=False,
                                        **extra).run()
        ours = solve(y, maps, mask, 3e-3, 25, seed=7, **kw)
        assert ours.dtype == np.complex64 and ours.shape == shape
        assert np.linalg.norm(ours - ref) < 1e-5 * np.linalg.norm(ref), kw


def test_cs_weighted_by_a_good_reference_keeps_it_better_and_tends_to_plain_cs_as_eps_grows():
    """Started from a close image and weighted by it, CS keeps its structure better than plain CS (the
    shrinkage spares the coefficients the reference has); ε → ∞ is plain CS; a weight needs a start."""
    img, maps = _truth()
    mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    y = fft2c(maps * img[:, None]) * mask
    start = img * 0.95
    plain = l1_wavelet(y, maps, mask, lam=1e-2, iters=30, start=start)
    weighted = l1_wavelet(y, maps, mask, lam=1e-2, iters=30, start=start, eps=0.05)
    assert _rel(weighted.abs(), img.abs()) < 0.7 * _rel(plain.abs(), img.abs())
    flat = l1_wavelet(y, maps, mask, lam=1e-2, iters=30, start=start, eps=1e6)
    assert _rel(flat, plain) < 1e-3
    with pytest.raises(ValueError, match="start"):
        l1_wavelet(y, maps, mask, lam=1e-3, eps=0.05)


@pytest.mark.parametrize("n", [8, 31, 64, 100, 256, 320, 384])
def test_wavelet_depth_is_pywavelets_max_level(n):
    pywt = pytest.importorskip("pywt")
    from mpcli.recon.wavelet import wavelet_depth

    assert wavelet_depth(n) == max(1, pywt.dwt_max_level(n, pywt.Wavelet("db4").dec_len))


def _scan(kspace, mask, recon_size):
    return Scan(
        kspace=kspace,
        mask=mask,
        geometry=Geometry.default(kspace.shape[0]),
        source=Path("synthetic.h5"),
        sha256="0" * 64,
        format="fastmri",
        recon_size=recon_size,
    )


@pytest.mark.parametrize("method", ["zero-filled", "sense", "cs"])
def test_reconstruct_classical_returns_cropped_float_magnitude(method):
    img, maps = _truth(batch=2)
    mask = _line_mask(N, 2, 12).expand(2, 1, N, N).contiguous()  # [S, 1, H, W]
    ksp = fft2c(maps * img[:, None]) * mask
    out = reconstruct_classical(_scan(ksp, mask, (48, 40)), method, device="cpu", iters=20)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (2, 48, 40)
    ref = img.abs()[:, 8:56, 12:52].numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.5


def test_reconstruct_classical_rejects_unknown_method_and_option():
    img, maps = _truth()
    mask = torch.ones(1, 1, N, N)
    scan = _scan(fft2c(maps * img[:, None]), mask, (N, N))
    with pytest.raises(ValueError, match="unknown method"):
        reconstruct_classical(scan, "grappa", device="cpu")
    with pytest.raises(ValueError, match="unknown option"):
        reconstruct_classical(scan, "sense", device="cpu", lamda=1.0)


def test_reconstruct_classical_turns_gpu_oom_into_device_error(monkeypatch):
    from mpcli.recon import classical

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(classical, "cg_sense", oom)
    img, maps = _truth()
    scan = _scan(fft2c(maps * img[:, None]), torch.ones(1, 1, N, N), (N, N))
    with pytest.raises(DeviceError, match="out of GPU memory"):
        reconstruct_classical(scan, "sense", maps=maps, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_raises_device_error():
    with pytest.raises(DeviceError, match="no GPU is available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu")


def test_is_oom_recognises_torch_oom_only():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom(RuntimeError("something else"))
    assert not is_oom(MemoryError())


def test_ifft_of_zero_filled_kspace_keeps_acquired_samples():
    # zero-filled image's k-space equals the acquired samples (data consistency)
    img, maps = _truth()
    mask = _line_mask(N, 4, 8)
    y = fft2c(maps * img[:, None]) * mask
    assert torch.allclose(fft2c(ifft2c(y)) * mask, y, atol=1e-5)


def test_cs_is_the_same_whatever_the_number_of_threads():
    """Slices are solved in parallel threads on the CPU: each slice's result (shifts seeded by its
    index) is bit for bit what one thread gives."""
    img, maps = _truth()
    mask = _line_mask(N, 4, 8, seed=0).expand(1, 1, N, N)
    y = (fft2c(maps * img[:, None]) * mask).expand(3, -1, -1, -1) * torch.tensor([1.0, 0.5, 2.0])[:, None, None, None]
    maps3 = maps.expand(3, -1, -1, -1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = l1_wavelet(y, maps3, mask, lam=3e-3, iters=20)
        torch.set_num_threads(3)
        three = l1_wavelet(y, maps3, mask, lam=3e-3, iters=20)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)
