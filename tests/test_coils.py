"""Coil maps (ESPIRiT through sigpy) and RSS: properties on small synthetic data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

sp = pytest.importorskip("sigpy")
import sigpy.mri as mr

from mpcli.physics.coils import (
    _image_gram,
    calibration_matrix,
    calibration_width,
    centre_crop,
    centred_acs_width,
    estimate_maps,
    kernel_size,
    resample_fov,
    rss,
    sense_combine,
)
from mpcli.physics.fft import fft2c, ifft2c
from mpcli.physics.masks import make_mask

N, C = 64, 4


def _phantom():
    """Shepp–Logan image [H, W] and smooth birdcage maps [C, H, W], Σ|S|² = 1."""
    img = torch.from_numpy(sp.shepp_logan((N, N)).astype(np.complex64))  # [H, W]
    maps = torch.from_numpy(mr.birdcage_maps((C, N, N)).astype(np.complex64))  # [C, H, W]
    maps = maps / maps.abs().pow(2).sum(0, keepdim=True).sqrt()
    return img, maps


def _kspace(img, maps, noise=0.0, seed=0):
    k = fft2c(maps * img)[None]  # [1, C, H, W]
    if noise:
        g = torch.Generator().manual_seed(seed)
        k = k + noise * torch.randn(k.shape, dtype=torch.complex64, generator=g)
    return k


def _line_mask(every: int, centre: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, N, N)  # [1, 1, H, W]
    mask[..., ::every] = 1
    mask[..., N // 2 - centre // 2 : N // 2 - centre // 2 + centre] = 1
    return mask


def test_espirit_maps_match_true_maps_up_to_phase():
    img, maps = _phantom()
    est = estimate_maps(_kspace(img, maps))  # [1, C, H, W]
    assert est.shape == (1, C, N, N) and est.dtype == torch.complex64
    obj = img.abs() > 0
    coherence = (est[0].conj() * maps).sum(0).abs()  # [H, W]: |<Ŝ, S>| per pixel
    assert float(coherence[obj].min()) > 0.98


def test_espirit_projection_recovers_coil_images():
    img, maps = _phantom()
    est = estimate_maps(_kspace(img, maps))[0]  # [C, H, W]
    coil_images = maps * img  # [C, H, W]
    projected = est * sense_combine(coil_images, est)  # Ŝ Ŝᴴ x_c
    err = (projected - coil_images).norm() / coil_images.norm()
    assert float(err) < 0.02


def test_espirit_from_undersampled_acs_lines():
    img, maps = _phantom()
    mask = _line_mask(every=3, centre=12)  # [1, 1, H, W]
    est = estimate_maps(_kspace(img, maps) * mask, mask)  # [1, C, H, W]
    coherence = (est[0].conj() * maps).sum(0).abs()
    assert float(coherence[img.abs() > 0].mean()) > 0.98


def test_espirit_maps_are_zero_far_outside_object_and_unit_inside():
    img, maps = _phantom()
    est = estimate_maps(_kspace(img, maps, noise=0.01))[0]  # [C, H, W]
    energy = est.abs().pow(2).sum(0)  # [H, W]
    obj = (img.abs() > 0).numpy()
    far = torch.from_numpy(~ndi.binary_dilation(obj, iterations=4))
    assert torch.allclose(energy[torch.from_numpy(obj)], torch.ones(()), atol=1e-3)
    assert float((energy[far] == 0).float().mean()) > 0.8


@pytest.mark.parametrize("n, m", [(256, 64), (192, 64), (230, 64), (180, 64), (65, 32), (64, 21)])
def test_resample_fov_puts_coarse_pixels_at_their_fov_positions(n, m):
    """Fine pixel i sits at (i − n//2)/n FOV and coarse j at (j − m//2)/m FOV: where
    they coincide (the centre always; every n/m-th pixel for an integer ratio) the
    interpolating kernel returns the coarse value itself."""
    coarse = torch.randn(2, m, m, generator=torch.Generator().manual_seed(0))
    fine = resample_fov(coarse, (n, n))  # [2, n, n]
    r = n // m if n % m == 0 else 0
    steps = range(-(m // 2) + 2, m - m // 2 - 2) if r else [0]  # away from the clamped edges
    for t in steps:
        for u in steps:
            assert torch.allclose(fine[:, n // 2 + r * t, n // 2 + r * u], coarse[:, m // 2 + t, m // 2 + u], atol=1e-5)


def test_resample_fov_is_smooth_and_bounded_between_nodes():
    """A smooth image (one period over the FOV, 64 samples) comes back within
    O(h²) of its analytic values between the nodes (measured 0.005)."""
    pos = lambda k: (torch.arange(k, dtype=torch.float32) - k // 2) / k  # FOV units
    f = lambda p, q: torch.cos(2 * torch.pi * p)[:, None] * torch.sin(2 * torch.pi * q)[None, :]
    fine = resample_fov(f(pos(64), pos(64))[None], (256, 256))[0]
    assert float((fine - f(pos(256), pos(256)))[8:-8, 8:-8].abs().max()) < 1e-2


def test_centre_crop_keeps_dc_at_the_centre():
    k = torch.zeros(2, 230, 181)
    k[:, 115, 90] = 1
    c = centre_crop(k, (64, 63))
    assert c.shape == (2, 64, 63) and c[:, 32, 31].eq(1).all()


def test_coarse_grid_espirit_matches_full_grid_on_real_brain():
    """The 64² eigen-decomposition + interpolation gives the full-grid maps on
    real 8-coil k-space (230×180): per-pixel coherence and object support."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sigpy_brain_8ch_poisson_ksp.npy"
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    k = torch.from_numpy(np.load(path)).to(torch.complex64)[None]  # [1, 8, 230, 180]
    full, coarse = estimate_maps(k, grid=None)[0], estimate_maps(k)[0]  # [C, H, W]
    sf, sc = full.abs().pow(2).sum(0) > 0.5, coarse.abs().pow(2).sum(0) > 0.5
    both = sf & sc
    coherence = (full.conj() * coarse).sum(0).abs()[both]
    assert float(coherence.mean()) > 0.9999 and float(coherence.quantile(0.01)) > 0.9999
    assert float(2 * both.sum() / (sf.sum() + sc.sum())) > 0.99  # Dice of the supports
    # no rim of tissue cut: bilinear eigenvalue interpolation lost 0.50 % of the support (149 px), bicubic 0.22 %
    assert float((sf & ~sc).sum() / sf.sum()) < 0.004


def test_acs_width_of_line_and_block_masks():
    assert centred_acs_width(_line_mask(every=4, centre=10)) == 10
    block = torch.zeros(1, 1, N, N)
    block[..., N // 2 - 12 : N // 2 + 12, N // 2 - 12 : N // 2 + 12] = 1
    block[..., ::7, ::5] = 1
    assert centred_acs_width(block) == 24
    assert centred_acs_width(torch.zeros(1, 1, N, N)) == 0
    assert centred_acs_width(_line_mask(every=4, centre=10)[..., :1, :]) == 10  # [1, 1, 1, W]


def test_calibration_width_is_clipped_and_warns_when_narrow(caplog):
    assert calibration_width(_line_mask(every=4, centre=40)) == 24
    assert calibration_width(_line_mask(every=4, centre=12)) == 12
    with caplog.at_level(logging.WARNING, logger="mpcli.physics.coils"):
        assert calibration_width(_line_mask(every=4, centre=6)) == 6
    assert "fully sampled centre lines" in caplog.text


def test_espirit_runs_with_narrow_acs():
    img, maps = _phantom()
    mask = _line_mask(every=2, centre=6)
    est = estimate_maps(_kspace(img, maps) * mask, mask)
    assert torch.isfinite(est.abs()).all()
    coherence = (est[0].conj() * maps).sum(0).abs()
    assert float(coherence[img.abs() > 0].mean()) > 0.8


def test_rss_of_sense_coil_images_is_image_magnitude():
    img, maps = _phantom()
    out = rss(maps * img)  # [H, W]
    assert out.dtype == torch.float32 and out.shape == (N, N)
    assert torch.allclose(out, img.abs(), atol=1e-6)


def test_espirit_equals_sigpy_espiritcalib_on_a_square_block():
    """Same calibration (24² block, 6² kernel, no crop, full grid): the maps are sigpy's
    (100 power iterations) up to numerical error, pixel by pixel."""
    img, maps = _phantom()
    k = _kspace(img, maps)
    ref = torch.from_numpy(mr.app.EspiritCalib(k[0].numpy(), calib_width=24, kernel_width=6, crop=0.0, max_iter=100,
                                               show_pbar=False).run())  # [C, H, W]
    est = estimate_maps(k, calib_width=24, kernel_width=6, crop=0.0, grid=None)[0]
    assert float((ref.conj() * est).sum(0).abs()[img.abs() > 0].min()) > 0.9999


@pytest.mark.parametrize("kernel, grid", [((6, 6), (64, 64)), ((5, 3), (21, 17)), ((6, 6), (8, 9))])
def test_image_gram_from_projector_equals_sum_over_kernels(kernel, grid):
    """G(r) = (hw/(kh·kw)) Σ_n k_n(r) k_n(r)ᴴ, with k_n the inverse FFT of each kernel
    placed at the k-space centre (wrapping when the grid is smaller than the kernel's
    correlation): built from the projector it equals the direct sum."""
    (kh, kw), (h, w), C, n = kernel, grid, 3, 7
    g = torch.Generator().manual_seed(1)
    kern = torch.randn(n, C, kh, kw, dtype=torch.complex64, generator=g)
    rows, cols = (h // 2 - kh // 2 + torch.arange(kh)) % h, (w // 2 - kw // 2 + torch.arange(kw)) % w
    pad = kern.new_zeros(n, C, h, kw).index_add_(2, rows, kern)
    pad = kern.new_zeros(n, C, h, w).index_add_(3, cols, pad)
    img = ifft2c(pad)  # [n, C, h, w]
    direct = torch.einsum("nchw,ndhw->hwcd", img, img.conj()) * (h * w / (kh * kw))
    flat = kern.reshape(n, -1)
    G = _image_gram(flat.T @ flat.conj(), C, kernel, grid)
    assert torch.allclose(G, direct, atol=1e-4 * float(direct.abs().max()))


def test_calibration_matrix_rows_are_the_fully_acquired_windows():
    """A line mask with 10 centre lines: every (kh, kw) window inside the centre band,
    over the whole readout, is a row — (H − kh + 1)(10 − kw + 1) of them — and no
    window touching an unacquired line."""
    img, maps = _phantom()
    mask = _line_mask(every=4, centre=10)[0, 0] > 0  # [H, W]
    k = _kspace(img, maps)[0] * mask  # [C, H, W]
    A = calibration_matrix(k, mask, (6, 5))
    assert A.shape == ((N - 5) * (10 - 4), C * 6 * 5)
    first = k[:, 0:6, N // 2 - 5 : N // 2].reshape(-1)  # the band's first window, coil-major
    assert (A == first).all(dim=1).any()


@pytest.mark.parametrize("lines, kernel", [(6, 3), (8, 4), (10, 5), (12, 6), (17, 8), (40, 8)])
def test_kernel_is_half_the_calibration_width_within_3_to_8(lines, kernel):
    mask = _line_mask(every=4, centre=lines)[:, 0] > 0  # [1, H, W]
    assert kernel_size(mask) == (kernel, kernel)
    assert kernel_size(mask, rect=True) == (8, kernel)  # line mask: readout fully acquired


def test_no_tissue_cut_at_10_acs_lines_on_a_phantom_with_known_support():
    """Shepp–Logan 128², 8 simulated surface coils, smooth phase, 1.5 % noise, 1-D random
    mask R = 4 with 10 centre lines (the sample scan's regime). The maps cover the
    object (≤ 0.5 % missed; the former square-ACS calibration missed 6.2 %), are
    unit-norm wherever non-zero, and match the true maps (coherence mean and 1st
    percentile > 0.99; formerly 0.94 and 0.0)."""
    from mpcli.data.simulate import coil_maps, simulate_kspace, smooth_phase

    n, rng = 128, np.random.default_rng(0)
    img = sp.shepp_logan((n, n)).real.astype(np.float32)
    true = coil_maps(8, (n, n), rng)  # [8, H, W]
    k = simulate_kspace(img * np.exp(1j * smooth_phase(img.shape, rng, 1.0)), true, 0.015, rng)
    k = torch.from_numpy(k).to(torch.complex64)[None]  # [1, 8, H, W]
    mask = make_mask("random", (n, n), 4, 10 / n, seed=7)  # [1, 1, 1, W]
    assert centred_acs_width(mask) == 10
    est = estimate_maps(k * mask, mask)[0]  # [8, H, W]
    energy = est.abs().pow(2).sum(0)
    obj = torch.from_numpy(img) > 0
    assert float((obj & (energy < 0.5)).sum() / obj.sum()) < 0.005
    assert torch.allclose(energy[energy > 0], torch.ones(()), atol=1e-4)
    true = torch.from_numpy(true)
    coherence = ((est.conj() * true).sum(0).abs() / true.abs().pow(2).sum(0).sqrt())[obj]
    assert float(coherence.mean()) > 0.99 and float(coherence.quantile(0.01)) > 0.99


def test_espirit_without_calibration_lines_warns_and_still_gives_maps(caplog):
    """No fully sampled centre at all (every 4th line only): a warning, finite maps
    from the centre block, not an exception."""
    img, maps = _phantom()
    mask = torch.zeros(1, 1, N, N)
    mask[..., ::4] = 1
    with caplog.at_level(logging.WARNING, logger="mpcli.physics.coils"):
        est = estimate_maps(_kspace(img, maps) * mask, mask)
    assert "no fully acquired" in caplog.text
    assert est.shape == (1, C, N, N) and torch.isfinite(est.abs()).all()


def _task_volume(task_dict: dict):
    from mpcli.data.tasks import Task

    b = Task.from_dict(task_dict).sample(4, 0)
    S, (H, W) = b.y.shape[0], b.y.shape[-2:]
    mask = b.A.mask.expand(S, 1, H, W).contiguous()
    ref = b.x.abs() * b.A.maps.abs().pow(2).sum(1).sqrt()  # |x|·RSS(S): the coil-combined truth
    return b.y, mask, ref


def _tissue_cut(maps, ref) -> float:
    """Fraction of the truth's energy outside the maps' support."""
    inside = maps.abs().pow(2).sum(1) > 0
    return float((ref * ~inside).pow(2).sum() / ref.pow(2).sum())


# bench/quality.py's held-out Poisson and contrast tasks (bench/common.draw_task(family, 0))
POISSON_TASK = {"mask_kind": "poisson", "acceleration": 4.0, "center_fraction": 0.065, "n_coils": 8,
                "noise_rel": 0.0112, "source": "mni_t1", "plane": "axial", "size": [128, 128],
                "seed": 955058143, "coil_model": "classic"}
EQUISPACED_TASK = {"mask_kind": "equispaced", "acceleration": 4.0, "center_fraction": 0.079, "n_coils": 6,
                   "noise_rel": 0.0104, "source": "mni_flairlike", "plane": "axial", "size": [128, 128],
                   "seed": 304863048, "coil_model": "classic"}


def test_auto_crop_lowers_the_crop_only_where_the_support_cuts_tissue(caplog):
    """On the Poisson task crop 0.95 cuts tissue (held-out k-space says so) and 0.9 is
    chosen; on the equispaced task 0.95 already holds the object and is kept."""
    y, mask, ref = _task_volume(POISSON_TASK)
    fixed = estimate_maps(y, mask, auto_crop=False)
    with caplog.at_level(logging.INFO, logger="mpcli.physics.coils"):
        auto = estimate_maps(y, mask)
    assert "crop lowered to 0.9" in caplog.text
    assert _tissue_cut(fixed, ref) > 1e-4 and _tissue_cut(auto, ref) < 0.1 * _tissue_cut(fixed, ref)
    torch.testing.assert_close(auto, estimate_maps(y, mask, crop=0.9, auto_crop=False))
    y, mask, ref = _task_volume(EQUISPACED_TASK)
    torch.testing.assert_close(estimate_maps(y, mask), estimate_maps(y, mask, auto_crop=False))


# bench/crop_choice.py's acceleration_8 task of seed 2: R = 8, 5 ACS lines, kernel 3
R8_TASK = {"mask_kind": "equispaced", "acceleration": 8.0, "center_fraction": 0.04, "n_coils": 10,
           "noise_rel": 0.0064, "source": "mni_t1", "plane": "axial", "size": [128, 128],
           "seed": 1224687801, "coil_model": "classic"}


def test_whitened_crop_choice_sees_the_tissue_cut_at_r8_with_five_acs_lines():
    """At R = 8 the unweighted held-out error is carried by the centre samples and misses a
    support that cuts 1.5 % of the object; weighted by the inverse power spectrum it lowers the
    crop and the cut all but vanishes."""
    from mpcli.physics.coils import espirit_volume, select_crop

    y, mask, ref = _task_volume(R8_TASK)
    acquired = mask[:, 0] > 0
    maps, eigs = espirit_volume(y.to(torch.complex64), acquired)
    assert select_crop(y, acquired, maps, eigs, whiten=False) == 0.95
    assert select_crop(y, acquired, maps, eigs, whiten=True) == 0.9
    assert _tissue_cut(estimate_maps(y, mask, auto_crop=False), ref) > 0.01
    assert _tissue_cut(estimate_maps(y, mask), ref) < 1e-3


def test_spectral_weight_flattens_the_radial_power_spectrum():
    """k-space with power P(ρ) = 1/(1 + (30ρ)²): w·|y|² averages to 1 in every ring that has
    acquired samples; rings with none (outside the acquired block) take the weight of the
    ring inside them; samples acquired as zeros do not blow the weight up."""
    from mpcli.physics.coils import SPECTRUM_BINS, spectral_weight

    H, W = 96, 64
    ky = (torch.arange(H) - H // 2) / (H / 2)
    kx = (torch.arange(W) - W // 2) / (W / 2)
    rho = (ky[:, None] ** 2 + kx[None] ** 2).sqrt() / 2**0.5
    g = torch.Generator().manual_seed(0)
    phase = torch.exp(2j * torch.pi * torch.rand(2, 3, H, W, generator=g))
    y = phase / (1 + (30 * rho) ** 2).sqrt() / 3**0.5  # Σ_c |y_c|² = P(ρ)
    acquired = torch.zeros(2, 1, H, W, dtype=torch.bool)
    acquired[..., 24:72, 16:48] = True  # the centre block only: ρ ≤ 0.5
    w = spectral_weight(y, acquired)
    ring = (rho * SPECTRUM_BINS).long().clamp(max=SPECTRUM_BINS - 1)
    white = w * y.abs().pow(2).sum(1)  # [2, H, W]
    on = acquired[:, 0]
    for r in ring[on[0]].unique():
        torch.testing.assert_close(white[on & (ring == r)].mean(), torch.tensor(1.0), rtol=0.05, atol=0)
    last = int(ring[on[0]].max())
    outside = ring > last
    assert bool(outside.any()) and torch.allclose(w[outside], w[ring == last].max().expand(int(outside.sum())))
    y[..., 40:44, :] = 0  # acquired as exact zeros: the weight stays bounded
    assert bool(torch.isfinite(spectral_weight(y, acquired)).all())


def test_select_crop_never_raises_the_crop_and_keeps_it_without_candidates():
    y, mask, _ = _task_volume(EQUISPACED_TASK)
    from mpcli.physics.coils import select_crop

    ones = torch.ones(y.shape[0], *y.shape[-2:])
    maps = y[:, :, :, :] * 0 + 1 / y.shape[1] ** 0.5
    assert select_crop(y, mask[:, 0] > 0, maps, ones, crop=0.95, lower=()) == 0.95
    assert select_crop(y, mask[:, 0] > 0, maps, ones, crop=0.8, lower=(0.9,)) == 0.8


@pytest.mark.parametrize("source", ["dead_leaves", "nibabel_epi"])
@pytest.mark.parametrize("noise_rel", [0.0, 0.02, 0.15])
def test_noise_level_reads_back_the_simulated_noise_whatever_the_image(source, noise_rel):
    """The calibration-matrix estimate of σ, over RMS of the noise-free full k-space, recovers the
    simulation's noise_rel within 20 % + 0.015 on 256² line masks (4 and 12 coils): texture is
    hardly taken for noise (≤ 0.012 without noise on dead leaves' sharp edges with 4 coils);
    too few calibration windows give None. (At 96² with 4 coils, dead leaves read as
    noise_rel ≈ 0.05: a small kernel on few coils leaves little null space.)"""
    from mpcli.data.tasks import Task
    from mpcli.physics.coils import noise_level

    for coils, kind in ((4, "random"), (12, "equispaced")):
        task = Task(kind, 4.0, 0.08, coils, noise_rel, source, "axial", (256, 256), 3, "biot_savart")
        b = task.sample(1, 1)
        rms = float(b.A.with_mask(torch.ones_like(b.A.mask))(b.x).abs().pow(2).mean().sqrt())
        sigma = noise_level(b.y[0], b.A.mask.expand(1, 1, 256, 256)[0, 0] > 0)
        assert abs(sigma / rms - noise_rel) <= 0.2 * noise_rel + 0.015, (coils, sigma / rms)
    acs = torch.zeros(256, 256, dtype=torch.bool)
    acs[124:132, 124:132] = True  # an 8 × 8 calibration square: 4 windows of a 5 × 5 kernel, far fewer than n/2
    assert noise_level(b.y[0] * acs, acs) is None


def _masked_kspace(coils: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    """[2, coils, 16, 12] random k-space with unacquired columns zero; with ``rank`` the coils are
    mixtures of that many independent ones."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, rank or coils, 16, 12, dtype=torch.complex64, generator=g)
    if rank is not None:
        mix = torch.randn(coils, rank, dtype=torch.complex64, generator=g)
        base = torch.einsum("cr,srhw->schw", mix, base)
    mask = (torch.rand(12, generator=g) < 0.5).float()
    mask[5:7] = 1
    return base * mask


def test_coil_compression_is_a_truncated_unitary_map_on_the_coil_axis():
    from mpcli.physics.coils import compress_coils

    y = _masked_kspace(6)
    same, kept = compress_coils(y, 6)
    assert same is y and kept == [1.0, 1.0]
    z, kept = compress_coils(y, 3)
    assert z.shape == (2, 3, 16, 12)
    acquired = y.abs().sum(1) > 0
    assert torch.equal(z.abs().sum(1) > 0, acquired)  # the sampling pattern is unchanged
    for s in range(2):  # energy kept = ‖y'‖² / ‖y‖², at least the V strongest of C coils' share
        ratio = float(z[s].abs().pow(2).sum() / y[s].abs().pow(2).sum())
        assert kept[s] == pytest.approx(ratio, rel=1e-4) and 0.5 <= kept[s] < 1
    low = _masked_kspace(6, rank=2, seed=1)  # six coils that are mixtures of two: nothing is lost at V = 2
    z, kept = compress_coils(low, 2)
    assert min(kept) == pytest.approx(1.0, abs=1e-5)
    assert float(z.abs().pow(2).sum()) == pytest.approx(float(low.abs().pow(2).sum()), rel=1e-4)
    with pytest.raises(ValueError, match="virtual"):
        compress_coils(y, 0)


def test_a_scan_with_virtual_coils_keeps_its_mask_and_geometry():
    from mpcli.physics.coils import with_virtual_coils
    from mpcli.scan import Geometry, Scan

    y = _masked_kspace(6)
    mask = (y.abs().sum(1, keepdim=True) > 0).float()
    scan = Scan(y, mask, Geometry.default(2), Path("scan.h5"), "0" * 64, "fastmri", (16, 12))
    assert with_virtual_coils(scan, 0) is scan and with_virtual_coils(scan, 8) is scan
    small = with_virtual_coils(scan, 4)
    assert small.shape == (2, 4, 16, 12) and small.mask is scan.mask and small.geometry is scan.geometry
