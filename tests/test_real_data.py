"""Classical reconstruction of real measured k-space (../shared/data/real).

(a) sigpy's 8-coil brain, Poisson-undersampled (12 %, no ground truth): hold
    out 15 % of the acquired samples outside the calibration block, reconstruct
    from the rest, and check that CS fits what it saw and predicts what it did
    not see better than the best-scaled zero-filled image.
(b) LORAKS 4-coil MPRAGE, fully sampled: undersample 4× (random lines, 8 %
    centre) and compare zero-filled, CG-SENSE and CS with the fully sampled RSS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sigpy")

from mpcli.physics.coils import estimate_maps
from mpcli.physics.sense import Sense
from mpcli.recon.classical import DEFAULT_LAM, cg_sense, l1_wavelet, zero_filled
from mpcli.scan import mask_from_kspace

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
BRAIN = REAL / "sigpy_brain_8ch_poisson_ksp.npy"
MPRAGE = REAL / "loraks_mprage_4ch_full.mat"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"real data not present: {path} (see shared/data/real/README.md)")


def _psnr(ref: np.ndarray, x: np.ndarray) -> float:
    try:
        from mpcli.metrics import psnr
    except ImportError:  # pragma: no cover - metrics written in parallel
        return float(10 * np.log10(ref.max() ** 2 / np.mean((ref - x) ** 2)))
    return psnr(ref, x)


def _mask_4x(n: int) -> torch.Tensor:
    """[1, 1, 1, W] random-line mask, 4×, 8 % centre (mpcli.physics.masks if present)."""
    try:
        from mpcli.physics.masks import make_mask
    except ImportError:  # pragma: no cover - masks written in parallel
        rng = np.random.default_rng(0)
        centre = round(0.08 * n)
        m = (rng.random(n) < (n / 4 - centre) / (n - centre)).astype(np.float32)
        m[n // 2 - centre // 2 : n // 2 - centre // 2 + centre] = 1
        return torch.from_numpy(m).reshape(1, 1, 1, n)
    return make_mask("random", (n, n), 4, 0.08, seed=0).reshape(1, 1, 1, n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_cs_on_real_poisson_brain_fits_data_and_predicts_held_out_kspace():
    _need(BRAIN)
    ksp = torch.from_numpy(np.load(BRAIN)).to(torch.complex64)[None]  # [1, 8, 230, 180]
    assert ksp.shape == (1, 8, 230, 180)
    mask = mask_from_kspace(ksp)  # [1, 1, H, W]
    h, w = mask.shape[-2:]
    calib = torch.zeros_like(mask)
    calib[..., h // 2 - 12 : h // 2 + 12, w // 2 - 12 : w // 2 + 12] = 1
    g = torch.Generator().manual_seed(0)
    held = (torch.rand(mask.shape, generator=g) < 0.15) * mask * (1 - calib)  # [1, 1, H, W]
    seen = mask - held
    y = ksp * seen  # [1, 8, H, W]

    maps = estimate_maps(y, seen)  # [1, 8, H, W]
    x_cs = l1_wavelet(y, maps, seen, lam=DEFAULT_LAM, iters=100)  # [1, H, W]
    x_zf = Sense(maps, seen).H(y)  # [1, H, W] coil-combined zero-filled

    fit = _rel(Sense(maps, seen)(x_cs), y)
    held_y = ksp * held
    pred = Sense(maps, held)(x_zf)
    best_zf = (pred.flatten().conj() @ held_y.flatten()) / pred.norm() ** 2  # optimal scale
    err_zf = _rel(Sense(maps, held)(best_zf * x_zf), held_y)
    err_cs = _rel(Sense(maps, held)(x_cs), held_y)
    msg = f"CS data fit {fit:.3f}, held-out error CS {err_cs:.3f} vs zero-filled {err_zf:.3f}"
    print(msg)
    assert fit < 0.1, msg
    assert err_cs < 0.6 * err_zf and err_cs < 0.5, msg


def test_sense_and_cs_beat_zero_filled_on_real_mprage_4x():
    _need(MPRAGE)
    import scipy.io

    data = scipy.io.loadmat(MPRAGE)["kData"]  # (256, 256, 4) complex128, coils last
    full = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).to(torch.complex64)[None]
    assert full.shape == (1, 4, 256, 256)
    ref = zero_filled(full).numpy()  # [1, H, W] fully sampled RSS
    mask = _mask_4x(256).expand(1, 1, 256, 256)  # [1, 1, H, W]
    y = full * mask  # [1, 4, H, W]

    maps = estimate_maps(y, mask)
    psnr = {
        "zero-filled": _psnr(ref, zero_filled(y).numpy()),
        "sense": _psnr(ref, cg_sense(y, Sense(maps, mask), tikhonov=0.01, iters=30).abs().numpy()),
        "cs": _psnr(ref, l1_wavelet(y, maps, mask, lam=DEFAULT_LAM, iters=100).abs().numpy()),
    }
    msg = "MPRAGE 4x PSNR (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in psnr.items())
    msg += f" (acceleration {mask.numel() / float(mask.sum()):.2f})"
    print(msg)
    assert psnr["sense"] > psnr["zero-filled"] + 2, msg
    assert psnr["cs"] > psnr["zero-filled"] + 2, msg


@pytest.mark.parametrize("acs", [8, 12])
def test_maps_from_few_calibration_lines_serve_sense_as_well_as_fully_sampled_maps_on_real_mprage(acs):
    """R = 4 line mask with only ``acs`` centre lines: CG-SENSE with maps calibrated on
    that data is within 1 dB of CG-SENSE with maps from the fully sampled k-space
    (the former square-ACS calibration lost 6–8 dB here; bench/coil_acs.py)."""
    _need(MPRAGE)
    import scipy.io

    from mpcli.physics.masks import make_mask

    data = scipy.io.loadmat(MPRAGE)["kData"]  # (256, 256, 4) complex128, coils last
    full = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).to(torch.complex64)[None]
    ref = zero_filled(full).numpy()  # [1, H, W]
    mask = make_mask("random", (256, 256), 4, acs / 256, seed=1000 + acs).expand(1, 1, 256, 256)
    y = full * mask  # [1, 4, H, W]

    def sense_psnr(maps):
        return _psnr(ref, cg_sense(y, Sense(maps, mask), tikhonov=0.01, iters=30).abs().numpy())

    few, all_data = sense_psnr(estimate_maps(y, mask)), sense_psnr(estimate_maps(full))
    assert few > all_data - 1.0, f"{acs} ACS lines: SENSE {few:.2f} dB vs {all_data:.2f} dB with fully sampled maps"
