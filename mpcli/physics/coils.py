"""Coil sensitivities (ESPIRiT) and root-sum-of-squares combination.

ESPIRiT (Uecker et al. 2014) finds the maps S ``[C, H, W]`` from fully sampled
calibration data at the k-space centre: the calibration matrix's signal
subspace gives, pixel by pixel, a C×C operator whose eigenvector of eigenvalue
≈ 1 is (S_1 … S_C)(r), up to a phase per pixel. Maps are normalised so that
Σ_c |S_c(r)|² = 1 inside the object, and set to zero where the eigenvalue is
below ``crop`` (outside the object). The phase is made relative to coil 0.

Few calibration lines. The calibration matrix has one row per kernel window
whose samples were all acquired, anywhere in the centre 64² of k-space — for a
1-D line mask the whole readout extent of the calibration lines, not a square
of ACS width (with 10 lines and a 5² kernel a 10² square gives 36 rows for 200
unknowns, so the "signal subspace" is everything and the maps fail; the band
gives 300). The kernel is half the calibration width, within [3, 8]: wider
leaves too few shifts across the lines. ``bench/coil_acs.py`` measures both
choices and the crop at 8–24 ACS lines (``bench/results/coil_acs.md``).

Coarse grid. The per-pixel operator is built from kernels that are
``kernel_width`` samples wide in k-space, so it is a trigonometric polynomial
of low degree in r: smooth on the scale of FOV/kernel_width. Its value on a
coarse grid of the same FOV is exact, and eigenvectors/eigenvalues between grid
points are interpolated (bicubic, on exact grid coordinates: bilinear
interpolation under-estimates the eigenvalue where it bends down at the object
edge and cut a one-pixel rim of tissue). ``bench/coil_maps.py`` compares the
64² grid with the full one (``tests/test_coils.py`` bounds the agreement).

Pure torch (runs on the device of the k-space, CPU or CUDA); sigpy's
``EspiritCalib`` computes the same maps on a square block (a test checks).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import replace

import torch

from mpcli.physics.fft import ifft2c
from mpcli.scan import mask_from_kspace

log = logging.getLogger(__name__)

MAX_CALIB = 24  # calibration width clip (the kernel, half of it, stops at KERNEL = 8 before)
MIN_CALIB = 8  # below this the calibration is poorly determined (a warning)
ESPIRIT_GRID = 64  # coarse grid per axis for the eigen-decomposition (see module docstring)
KERNEL = 8  # largest ESPIRiT kernel side
KERNEL_MIN = 3  # smallest
RECT_KERNEL = False  # line masks: full-size kernel along the (fully sampled) readout
CALIB_REGION = 64  # side of the centred k-space block whose fully acquired windows calibrate
THRESH = 0.02  # singular-value threshold, relative to the largest
CROP = 0.95  # eigenvalue below which maps are zero
SOFT = None  # eigenvalue at which the soft-support ramp reaches 1 (None: hard cut)
LOWER_CROPS = (0.9,)  # crops tried below ``crop`` by :func:`select_crop` (auto_crop)
CROP_GAIN = 0.10  # … each must predict held-out k-space this much better (relative) to be taken
AUTO_CROP = True
WHITEN = True  # select_crop weighs held-out errors by 1 / (k-space power at their radius)
SPECTRUM_BINS = 16  # radial bins of that power profile


def centred_acs_width(mask: torch.Tensor) -> int:
    """Width of the fully sampled square block *centred* at the k-space centre.

    (What ESPIRiT calibrates on; :func:`mpcli.physics.masks.acs_width` is the
    largest fully sampled square merely *containing* the centre, for reporting.)

    ``mask`` is ``[..., H, W]`` or a line mask ``[..., 1, W]``; leading axes
    are reduced by "sampled in all". The block of width w is
    ``mask[H//2 − w//2 : H//2 − w//2 + w, W//2 − w//2 : …]`` (the crop that
    sigpy's ``resize`` takes); successive blocks are nested, so the first
    block with a hole ends the search. For a 1-D (line) mask this is the number
    of fully sampled centre lines.
    """
    m = mask.reshape(-1, *mask.shape[-2:]).amin(dim=0) > 0  # [H, W] (or [1, W])
    h, w = m.shape
    if h == 1:  # a line mask [..., 1, W]: every sampled column is a full line
        h = w
        m = m.expand(w, w)
    width = 0
    for n in range(1, min(h, w) + 1):
        top, left = h // 2 - n // 2, w // 2 - n // 2
        if not bool(m[top : top + n, left : left + n].all()):
            break
        width = n
    return width


def calibration_width(mask: torch.Tensor) -> int:
    """Calibration width for ESPIRiT: the ACS width clipped to [8, 24]; its half
    sets the kernel (:func:`kernel_size`).

    When the ACS is narrower than 8 the calibration uses what there is (at
    least 4) and logs a warning: maps from so few lines are poorly determined,
    but reconstruction still runs.
    """
    acs = centred_acs_width(mask)
    if acs < MIN_CALIB:
        log.warning("only %d fully sampled centre lines: coil maps calibrated on %d", acs, max(acs, 4))
        return max(acs, 4)
    return min(acs, MAX_CALIB)


def calibration_matrix(kspace: torch.Tensor, acquired: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """ESPIRiT's calibration matrix from every fully acquired kernel window.

    ``kspace`` ``[C, h, w]``, ``acquired`` ``[h, w]`` bool, ``kernel`` (kh, kw).
    A row is one kh × kw window of all coils, flattened coil-major (as sigpy's
    ``array_to_blocks``): ``[L, C·kh·kw]`` over the L windows whose samples
    were all acquired. With 1-D line masks this uses the whole readout extent of
    the calibration lines (and any run of kw adjacent lines), not only a square
    of ACS width: with 10 ACS lines and a 6 × 6 kernel, a 10 × 10 block gives 25
    rows for 288 unknowns, the 64 × 10 band 295.
    """
    kh, kw = kernel
    patches = kspace.unfold(1, kh, 1).unfold(2, kw, 1)  # [C, h−kh+1, w−kw+1, kh, kw]
    full = acquired.to(torch.float32).unfold(0, kh, 1).unfold(1, kw, 1).amin(dim=(-2, -1)) > 0  # [h−kh+1, w−kw+1]
    return patches.permute(1, 2, 0, 3, 4)[full].reshape(-1, kspace.shape[0] * kh * kw)  # [L, C·kh·kw]


def noise_level(kspace: torch.Tensor, acquired: torch.Tensor, region: int = CALIB_REGION) -> float | None:
    """σ̂, the standard deviation of complex white k-space noise per sample, from the
    calibration matrix; None where too few calibration windows were acquired.

    The calibration matrix M ``[L, n]`` (:func:`calibration_matrix`, ESPIRiT's kernel
    :func:`kernel_size`) holds the object seen through smooth coil maps: of low rank, its
    singular values fall fast. Noise fills every direction evenly. So the lower half of
    M's singular values is (nearly) noise, and compared with the same statistic of a
    unit-variance complex Gaussian matrix G of M's shape (a fixed seed; this replaces
    the Marchenko–Pastur law)::

        σ̂ = RMS(s_{n'/2 … n'}(M)) / RMS(s_{n'/2 … n'}(G)),   n' = min(L, n)

    Unlike the k-space periphery, it hardly mistakes fine texture for noise. On simulated
    256² line-mask scans (4–16 coils; brain, photograph, dead-leaves images) it reads back
    noise_rel 0.01 as 0.011–0.014 and 0.15 as 0.16–0.18 (``bench/noise_level.py``); without
    noise, dead leaves' sharp edges read ≤ 0.012 with 4 coils (more at 96²: few coils and a
    small kernel leave little null space; ``tests/test_coils.py``).
    It needs L ≥ n/2 (enough windows to see the null space): true for the line masks measured
    (8 % centre at 256², ~20 lines); 2-D masks with a small calibration square return None.

    Args: ``kspace`` ``[C, H, W]``, ``acquired`` ``[H, W]`` bool. σ̂ is in ``kspace``'s units.
    """
    H, W = kspace.shape[-2:]
    kernel = kernel_size(acquired[None])
    box = (min(region, H), min(region, W))
    M = calibration_matrix(centre_crop(kspace, box), centre_crop(acquired, box), kernel)  # [L, n]
    L, n = M.shape
    if L < max(n // 2, 2):
        return None
    s = torch.linalg.svdvals(M.to(torch.complex64).cpu())  # descending
    tail = s[min(L, n) // 2:]
    return float(tail.pow(2).mean().sqrt()) / _gaussian_tail_rms(L, n)


@functools.lru_cache(maxsize=64)
def _gaussian_tail_rms(L: int, n: int) -> float:
    """RMS of the lower half of the singular values of an ``[L, n]`` unit-variance complex
    Gaussian matrix (fixed seed): :func:`noise_level`'s reference, one SVD per shape."""
    g = torch.Generator().manual_seed(0)
    G = torch.complex(torch.randn(L, n, generator=g), torch.randn(L, n, generator=g)) / math.sqrt(2)
    return float(torch.linalg.svdvals(G)[min(L, n) // 2:].pow(2).mean().sqrt())


def espirit(calib: torch.Tensor, kernel: tuple[int, int], grid: tuple[int, int], thresh: float = THRESH
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """ESPIRiT maps and eigenvalues on an ``grid`` = (h, w) image grid.

    ``calib`` is the ``[L, C·kh·kw]`` calibration matrix. Its right singular
    vectors v_n above ``thresh``·σ_max span the signal subspace; each, as a
    kh × kw kernel per coil zero-padded to (h, w) and inverse-FFT'd, gives
    k_n(r) ∈ ℂ^C, and per pixel G(r) = (h·w / (kh·kw)) Σ_n k_n(r) k_n(r)ᴴ.
    The maps are G's top eigenvector (eigenvalue ≈ 1 inside the object, → 0
    outside), phase relative to coil 0 — sigpy's ``EspiritCalib``, with an
    exact Hermitian eigen-solver instead of power iterations, and G built
    from the kernels' projector Σ_n conj(v_n) v_nᵀ (:func:`_image_gram`) with
    C² FFTs instead of n·C.

    Returns ``([C, h, w]`` complex64 maps, ``[h, w]`` float32 eigenvalues).
    """
    kh, kw = kernel
    C = calib.shape[1] // (kh * kw)
    A = calib.to(torch.complex64)  # [L, C·kh·kw]
    if A.shape[0] >= A.shape[1]:
        lam, V = torch.linalg.eigh(A.mH @ A)  # σ² ascending; right singular vectors as columns
        V = V[:, lam > thresh**2 * lam.max()]  # [C·kh·kw, n]
    else:  # fewer rows than unknowns: the smaller Gram A Aᴴ = U σ² Uᴴ, and V = Aᴴ U / σ
        lam, U = torch.linalg.eigh(A @ A.mH)
        keep = lam > thresh**2 * lam.max()
        V = (A.mH @ U[:, keep]) / lam[keep].sqrt()
    G = _image_gram((V @ V.mH).conj(), C, kernel, grid)  # [h, w, C, C]; kernels are the conj(v_n), as sigpy's
    val, vec = torch.linalg.eigh(G)  # ascending
    maps = vec[..., -1].permute(2, 0, 1)  # [C, h, w]
    maps = maps * (maps[0].conj() / maps[0].abs().clamp_min(1e-12))
    return maps.to(torch.complex64), val[..., -1].to(torch.float32)


def _image_gram(P: torch.Tensor, C: int, kernel: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """G(r) = (h·w / (kh·kw)) Σ_n k_n(r) k_n(r)ᴴ ``[h, w, C, C]`` from the kernels'
    projector ``P`` = Σ_n κ_n κ_nᴴ ``[C·kh·kw, C·kh·kw]`` (κ_n the k-space kernel,
    coil-major as the calibration rows).

    With k_n,c(r) = ifft2c of v_n's coil-c kernel, the product k_n,c · conj(k_n,d)
    is (1/√(hw))·ifft2c of the cross-correlation of the two kernels, so
    Σ_n only needs P: R_cd[Δ] = Σ_{u − u' = Δ} P[(c, u), (d, u')], Δ ∈
    (2kh − 1) × (2kw − 1), placed around the k-space centre (modulo the grid).
    """
    kh, kw = kernel
    h, w = grid
    Q = P.reshape(C, kh, kw, C, kh, kw)
    R = P.new_zeros(C, C, 2 * kh - 1, 2 * kw - 1)  # [c, d, Δh + kh − 1, Δw + kw − 1]
    for p in range(kh):
        for q in range(kw):
            R[:, :, kh - 1 - p : 2 * kh - 1 - p, kw - 1 - q : 2 * kw - 1 - q] += Q[:, :, :, :, p, q].permute(0, 3, 1, 2)
    rows = (h // 2 + torch.arange(-(kh - 1), kh, device=P.device)) % h
    cols = (w // 2 + torch.arange(-(kw - 1), kw, device=P.device)) % w
    Z = P.new_zeros(C, C, h, 2 * kw - 1).index_add_(2, rows, R)
    Z = P.new_zeros(C, C, h, w).index_add_(3, cols, Z)  # [C, C, h, w]
    return ifft2c(Z).permute(2, 3, 0, 1) * ((h * w) ** 0.5 / (kh * kw))  # [h, w, C, C]


def estimate_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | None = None,
    calib_width: int | None = None,
    device: torch.device | str | None = None,
    thresh: float = THRESH,
    crop: float = CROP,
    kernel_width: int | tuple[int, int] | None = None,
    grid: int | None = ESPIRIT_GRID,
    region: int | None = CALIB_REGION,
    soft: float | None = SOFT,
    auto_crop: bool = AUTO_CROP,
) -> torch.Tensor:
    """ESPIRiT coil maps for each slice.

    Args:
        kspace: ``[S, C, H, W]`` complex k-space (zeros where not acquired).
        mask: ``[S, 1, H, W]`` (or ``[S, 1, 1, W]``) sampling mask; detected
            from the non-zeros of ``kspace`` when None. Calibration uses every
            kernel window whose samples were all acquired (:func:`calibration_matrix`).
        calib_width: calibrate on the centred ``calib_width²`` block only (the
            classical square ACS); by default on the centre ``region`` of k-space.
        device: where to compute (default: the device of ``kspace``).
        thresh: singular-value threshold of the calibration matrix (relative
            to the largest).
        crop: eigenvalue below which maps are zero (outside the object).
        kernel_width: kernel side, or (rows, columns); default
            :func:`kernel_size` of the mask.
        grid: eigen-decompose on a ``min(H, grid) × min(W, grid)`` grid of the
            same FOV and interpolate (see the module docstring); None: full grid.
        region: side of the centred k-space block whose acquired windows
            calibrate (None: all of k-space).
        soft: soft support: maps are weighted by a ramp of the eigenvalue from
            0 at ``crop`` to 1 at ``soft`` (None: the hard cut at ``crop``).
        auto_crop: lower the crop for the whole volume when the data say the
            support cuts tissue (:func:`select_crop`).

    Returns:
        ``[S, C, H, W]`` complex64 maps, on the device of ``kspace``.
    """
    if kspace.dim() != 4:
        raise ValueError(f"k-space must be [S, C, H, W], got {tuple(kspace.shape)}")
    out_device = kspace.device
    dev = torch.device(device) if device is not None else out_device
    S, _, H, W = kspace.shape
    if mask is None:
        mask = mask_from_kspace(kspace)  # [S, 1, H, W]
    acquired = (torch.broadcast_to(mask, (S, 1, H, W))[:, 0] > 0).to(dev)  # [S, H, W]
    ksp = kspace.to(dev, torch.complex64)  # [S, C, H, W]
    maps, eigs = espirit_volume(ksp, acquired, calib_width, thresh, kernel_width, grid, region)
    if auto_crop:
        crop = select_crop(ksp, acquired, maps, eigs, crop, soft)
    return (maps * _support(eigs, crop, soft)[:, None]).to(out_device)  # [S, C, H, W]


def espirit_volume(ksp: torch.Tensor, acquired: torch.Tensor, calib_width: int | None = None,
                   thresh: float = THRESH, kernel_width: int | tuple[int, int] | None = None,
                   grid: int | None = ESPIRIT_GRID, region: int | None = CALIB_REGION,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm ESPIRiT maps and their eigenvalues, slice by slice, before any support.

    Args: ``ksp`` ``[S, C, H, W]`` complex64, ``acquired`` ``[S, H, W]`` bool (same
    device); the rest as :func:`estimate_maps`. Returns maps ``[S, C, H, W]``
    (Σ_c |S_c|² = 1 everywhere) and eigenvalues ``[S, H, W]``.
    """
    S, _, H, W = ksp.shape
    dev = ksp.device
    if kernel_width is None:
        kernel_width = kernel_size(acquired)
    if isinstance(kernel_width, int):
        kernel_width = (kernel_width, kernel_width)
    kernel = (min(kernel_width[0], H), min(kernel_width[1], W))
    box = (calib_width, calib_width) if calib_width is not None else (H, W) if region is None else (region, region)
    box = (min(box[0], H), min(box[1], W))
    coarse = (H, W) if grid is None else (min(H, grid), min(W, grid))
    maps, eigs = [], []
    for s in range(S):
        A = calibration_matrix(centre_crop(ksp[s], box), centre_crop(acquired[s], box), kernel)  # [L, C·kh·kw]
        if A.shape[0] == 0:  # no calibration lines at all: the centre block, holes included (blurred maps)
            log.warning("no fully acquired %d×%d k-space window: coil maps from the centre block", *kernel)
            block = (min(H, 2 * kernel[0]), min(W, 2 * kernel[1]))
            A = calibration_matrix(centre_crop(ksp[s], block), torch.ones(block, dtype=torch.bool, device=dev), kernel)
        mps, eig = espirit(A, kernel, coarse, thresh)  # [C, h, w], [h, w]
        if coarse != (H, W):
            mps, eig = _upsample(mps, eig, (H, W))
        maps.append(mps)
        eigs.append(eig)
    return torch.stack(maps), torch.stack(eigs)  # [S, C, H, W] unit norm, [S, H, W]


def select_crop(kspace: torch.Tensor, acquired: torch.Tensor, maps: torch.Tensor, eig: torch.Tensor,
                crop: float = CROP, soft: float | None = SOFT, lower: tuple[float, ...] = LOWER_CROPS,
                gain: float = CROP_GAIN, slices: int = 4, iters: int = 20, whiten: bool = WHITEN) -> float:
    """The eigenvalue crop for a volume, chosen by held-out k-space prediction.

    With few calibration lines ESPIRiT's small kernel makes the eigenvalue fall
    below ``crop`` inside the object near its edge, and the support cuts tissue:
    nothing zero outside the support can represent it (``bench/quality.py``'s
    Poisson task: 0.4 % of the object cut, support ceiling 39.7 dB, CG-SENSE
    37.2 dB at crop 0.95 vs 44.8 dB at 0.9). A crop lower than needed costs
    ~0.8 dB elsewhere (noisier maps in the background), so it is lowered only
    when the data ask for it. On up to ``slices`` slices, a uniform 10 % Γ of
    the acquired samples is held out (Ω = T ⊔ Γ) and for each candidate crop c ::

        x_c = CG-SENSE(y_T; S·1[eig > c], μ = 1e-2, ``iters`` iterations)
        e_c = ‖w^½ (A_Γ x_c − y_Γ)‖² / ‖w^½ y_Γ‖²

    with w(k) = 1 / P(|k|), P the mean power of the acquired samples at k's
    radius (:func:`spectral_weight`; w = 1 without ``whiten``). Unweighted, the
    few centre samples carry almost all of ‖y_Γ‖², and at R ≈ 8 with 5 ACS lines
    a support that cut 1.5–3.5 % of the object's energy moved e by under 10 %; whitened, every
    band of k-space counts alike and the cut shows (``bench/crop_choice.py``).

    Candidates are tried from ``crop`` down through ``lower``; each replaces
    the current choice only when e_c < (1 − ``gain``) · e_current: tissue that
    the support cuts shows in every held-out sample, while background noise
    the lower crop admits changes e by a few per cent.

    Args: ``kspace`` ``[S, C, H, W]``, ``acquired`` ``[S, H, W]`` bool, ``maps``
    ``[S, C, H, W]`` unit-norm ESPIRiT maps (no support applied), ``eig``
    ``[S, H, W]`` their eigenvalues. Returns the crop.
    """
    from mpcli.physics.masks import split_mask
    from mpcli.physics.sense import Sense
    from mpcli.recon.classical import cg_sense  # imports this module: a local import

    lower = tuple(c for c in lower if c < crop)
    if not lower:
        return crop
    S = kspace.shape[0]
    idx = torch.linspace(0, S - 1, min(S, slices)).round().long().unique() if S > slices else torch.arange(S)
    y, omega = kspace[idx], acquired[idx][:, None].to(torch.float32)  # [s, C, H, W], [s, 1, H, W]
    t, g = split_mask(omega.cpu(), 0.1, torch.Generator().manual_seed(0), kind="uniform", keep_center=0)
    t, g = t.to(y.device), g.to(y.device)
    if not float(g.sum()) > 0:
        return crop
    w = spectral_weight(y, omega) if whiten else torch.ones((), device=y.device)  # [H, W] or scalar

    def error(c: float) -> float:
        A = Sense(maps[idx] * _support(eig[idx], c, soft)[:, None], t)
        x = cg_sense(y * t, A, tikhonov=1e-2, iters=iters, tol=0.0)
        r = A.with_mask(g)(x) - y * g
        return float((w * r.abs().pow(2)).sum() / (w * (y * g).abs().pow(2)).sum().clamp_min(1e-30))

    best, best_err = crop, error(crop)
    for c in lower:
        e = error(c)
        if e < (1 - gain) * best_err:
            best, best_err = c, e
    if best != crop:
        log.info("coil-map support: eigenvalue crop lowered to %g (held-out k-space error %.3g)", best, best_err)
    return best


def spectral_weight(kspace: torch.Tensor, acquired: torch.Tensor, bins: int = SPECTRUM_BINS) -> torch.Tensor:
    """w(k) = 1 / P(ρ(k)): the inverse radial power spectrum of the acquired data, ``[H, W]``.

    ρ = ‖(k_y / (H/2), k_x / (W/2))‖ / √2 ∈ [0, 1] (elliptical on non-square
    matrices), cut into ``bins`` rings; P is the mean of Σ_c |y_c(k)|² over the
    acquired samples of a ring (slices pooled). A ring with no acquired sample
    takes the value of the ring inside it; P is floored at 1e-6 · max P so that
    samples acquired as exact zeros cannot dominate.

    Args: ``kspace`` ``[S, C, H, W]``; ``acquired`` ``[S, 1, H, W]`` (bool or 0/1).
    """
    H, W = kspace.shape[-2:]
    dev = kspace.device
    ky = (torch.arange(H, device=dev) - H // 2) / (H / 2)
    kx = (torch.arange(W, device=dev) - W // 2) / (W / 2)
    rho = (ky[:, None] ** 2 + kx[None] ** 2).sqrt() / math.sqrt(2)  # [H, W] in [0, 1]
    ring = (rho * bins).long().clamp(max=bins - 1).flatten()  # [H·W]
    on = torch.broadcast_to(acquired, (kspace.shape[0], 1, H, W))[:, 0].to(torch.float32)  # [S, H, W]
    power = (kspace.abs().pow(2).sum(1) * on).sum(0).flatten()  # [H·W]
    count = on.sum(0).flatten()
    P = torch.zeros(bins, device=dev).index_add_(0, ring, power)
    n = torch.zeros(bins, device=dev).index_add_(0, ring, count)
    P = P / n.clamp_min(1)
    for i in range(1, bins):
        if n[i] == 0:
            P[i] = P[i - 1]
    P = P.clamp_min(float(P.max()) * 1e-6 + 1e-30)
    return (1 / P)[ring].reshape(H, W)


def kernel_size(acquired: torch.Tensor, rect: bool = RECT_KERNEL) -> tuple[int, int]:
    """ESPIRiT kernel (rows, columns) chosen from the sampling ``[S, H, W]`` (bool).

    Half the calibration width, within [3, 8]: a kernel wider than half the
    fully sampled centre leaves too few shifts across it to tell signal from
    null space (on the real MPRAGE, 8 ACS lines: kernel 6 gives 17 dB CG-SENSE,
    kernel 4 33 dB; ``bench/coil_acs.py``). With ``rect`` and a line mask (every
    readout fully acquired) the readout side is 8 whatever the ACS width.
    """
    acs = calibration_width(acquired[:, None])
    k = max(KERNEL_MIN, min(KERNEL, acs // 2))
    lines = bool((acquired.all(dim=-2) == acquired.any(dim=-2)).all())
    return (KERNEL, k) if rect and lines else (k, k)


def _support(eig: torch.Tensor, crop: float, soft: float | None) -> torch.Tensor:
    """Weight per pixel from the ESPIRiT eigenvalue: 1[eig > crop], or the ramp
    clamp((eig − crop)/(soft − crop), 0, 1) when ``soft`` is given."""
    if soft is None or soft <= crop:
        return (eig > crop).to(torch.float32)
    return ((eig - crop) / (soft - crop)).clamp(0, 1)


def centre_crop(kspace: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The centre ``shape`` of ``[..., H, W]`` k-space: rows ``H//2 − h//2 …`` (the
    DC sample H//2 lands on h//2, as in sigpy's ``resize``)."""
    (H, W), (h, w) = kspace.shape[-2:], shape
    top, left = H // 2 - h // 2, W // 2 - w // 2
    return kspace[..., top : top + h, left : left + w]


def _grid_coords(n: int, m: int, device: torch.device) -> torch.Tensor:
    """Normalised (align_corners=True) coordinates on an ``m``-grid of the ``n``
    pixels of the same FOV: pixel i sits at (i − n//2)/n FOV, coarse j at
    (j − m//2)/m FOV, so j = (i − n//2)·m/n + m//2."""
    j = (torch.arange(n, device=device, dtype=torch.float32) - n // 2) * (m / n) + m // 2
    return 2 * j / max(m - 1, 1) - 1


def resample_fov(planes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of real ``[P, h, w]`` images to ``[P, H, W]`` over the
    same FOV (pixel centres as in ``_grid_coords``; edges clamped)."""
    import torch.nn.functional as F

    (H, W), (h, w) = shape, planes.shape[-2:]
    gy, gx = _grid_coords(H, h, planes.device), _grid_coords(W, w, planes.device)
    g = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # [1, H, W, 2] as (x, y)
    return F.grid_sample(planes[None], g, mode="bicubic", padding_mode="border", align_corners=True)[0]


def _upsample_maps(maps: torch.Tensor, eig: torch.Tensor, shape: tuple[int, int], crop: float,
                   soft: float | None = None) -> torch.Tensor:
    """Coarse ESPIRiT output ``[C, h, w]``, eigenvalues ``[h, w]`` → ``[C, H, W]`` maps:
    :func:`_upsample`, then zero where the eigenvalue ≤ ``crop``."""
    fine, eig = _upsample(maps, eig, shape)
    return fine * _support(eig, crop, soft)


def _upsample(maps: torch.Tensor, eig: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse ESPIRiT output ``[C, h, w]``, eigenvalues ``[h, w]`` → (``[C, H, W]`` maps, ``[H, W]``
    eigenvalues): bicubic interpolation of real/imaginary parts and eigenvalues, then unit
    norm per pixel and phase relative to coil 0."""
    C = maps.shape[0]
    planes = torch.cat([torch.view_as_real(maps).permute(0, 3, 1, 2).reshape(2 * C, *maps.shape[-2:]), eig[None]])
    up = resample_fov(planes, shape)  # [2C + 1, H, W]
    fine = torch.complex(up[0 : 2 * C : 2], up[1 : 2 * C : 2])  # [C, H, W]
    fine = fine / fine.abs().pow(2).sum(0, keepdim=True).sqrt().clamp_min(1e-12)
    ref = fine[0]
    fine = fine * (ref.conj() / ref.abs().clamp_min(1e-12))
    return fine, up[2 * C]


def rss(coil_images: torch.Tensor) -> torch.Tensor:
    """Root sum of squares over coils: ``[..., C, H, W]`` → ``[..., H, W]`` real,
    sqrt(Σ_c |x_c|²)."""
    return coil_images.abs().pow(2).sum(dim=-3).sqrt()


def sense_combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Coil combination with maps: Σ_c conj(S_c) x_c, ``[..., C, H, W]`` → ``[..., H, W]``
    complex. With Σ_c |S_c|² = 1 this is the least-squares image of fully
    sampled data (x_c = S_c x gives back x)."""
    return (maps.conj() * coil_images).sum(dim=-3)


def compress_coils(kspace: torch.Tensor, virtual: int) -> tuple[torch.Tensor, list[float]]:
    """SVD coil compression (Buehrer et al. 2007; BART ``cc -S``), slice by slice.

    With U the left singular vectors of a slice's acquired samples Y ``[C, N]`` (columns: the
    k-space locations where any coil is non-zero) and σ its singular values::

        y_v = Σ_c conj(U[c, v]) y_c,   v < V,   energy kept = Σ_{v<V} σ_v² / Σ σ²

    a unitary map on the coil axis, truncated to the V strongest virtual coils; the sampling pattern
    is unchanged. ``kspace`` ``[S, C, H, W]`` → (``[S, V, H, W]``, energy kept per slice); unchanged
    (energy 1) when V ≥ C. ``bench/coil_compression.py`` measures what it costs.
    """
    if virtual < 1:
        raise ValueError(f"virtual coils must be >= 1, got {virtual!r}")
    if virtual >= kspace.shape[1]:
        return kspace, [1.0] * kspace.shape[0]
    slices, kept = [], []
    for k in kspace:  # [C, H, W]
        samples = k.reshape(k.shape[0], -1)
        samples = samples[:, samples.abs().sum(0) > 0]  # [C, N]
        u, s, _ = torch.linalg.svd(samples, full_matrices=False)  # u [C, C]
        slices.append(torch.einsum("cv,chw->vhw", u[:, :virtual].conj(), k))
        energy = float((s**2).sum())
        kept.append(float((s[:virtual] ** 2).sum()) / energy if energy > 0 else 1.0)
    return torch.stack(slices), kept


def with_virtual_coils(scan, virtual: int):
    """``scan`` (:class:`~mpcli.scan.Scan`) with its k-space compressed to ``virtual`` coils
    (:func:`compress_coils`); as it is when ``virtual`` is 0 or at least its coil count."""
    if not virtual or virtual >= scan.shape[1]:
        return scan
    kspace, kept = compress_coils(scan.kspace, virtual)
    log.info("%s: %d coils compressed to %d virtual coils, energy kept >= %.5f", scan.source.name,
             scan.shape[1], virtual, min(kept))
    return replace(scan, kspace=kspace)
