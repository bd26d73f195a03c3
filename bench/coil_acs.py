"""Coil maps from few calibration lines: CG-SENSE and CS PSNR per ESPIRiT variant.

Fully sampled k-space (ground truth = RSS of all coils) is undersampled with a
seeded 1-D random mask at R = 4 whose centre holds 8, 12, 16 or 24 fully
sampled lines; each map estimator's maps go into CG-SENSE (30 iterations,
μ = 1e-2) and L1-wavelet CS (the default λ, 100 iterations; image × map
support, as ``mp reconstruct`` does), scored by PSNR against the truth.

Scans: the real LORAKS MPRAGE (4 coils, 256², ``../shared/data/real/``,
bench only: non-commercial licence) and the sample scan's fully sampled
simulation (:func:`mpcli.data.sample.simulate_scan`, 6 × 8 coils × 128²).

Estimators: ``sigpy square`` is the former default (sigpy's EspiritCalib on a
square ACS block, kernel min(6, ACS/2), crop 0.95, coarse 64² grid);
``band`` calibrates on every fully acquired window in the centre 64² (the
whole readout extent of the calibration lines); ``bart`` is ``bart ecalib -m1``
(when the ``bart`` command exists).

    python bench/coil_acs.py            # ~10 min on 2 busy cores
    python bench/coil_acs.py --quick    # 1 ACS width, MPRAGE only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bart_pics as bart  # bench/bart_pics.py: .cfl files and the bart command
import common as c  # bench/common.py

from mpcli.physics.coils import _upsample_maps, calibration_width, centre_crop, estimate_maps, kernel_size
from mpcli.physics.fft import ifft2c
from mpcli.physics.masks import make_mask
from mpcli.physics.sense import Sense
from mpcli.recon.classical import DEFAULT_LAM, cg_sense, l1_wavelet

REPO = Path(__file__).resolve().parents[1]
MPRAGE = REPO.parent / "shared" / "data" / "real" / "loraks_mprage_4ch_full.mat"
ACS = (8, 10, 12, 16, 24)


def sigpy_square(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The former default: sigpy EspiritCalib on the square ACS block (≤ 24), 64² grid, crop 0.95."""
    from sigpy.mri.app import EspiritCalib

    S, _, H, W = y.shape
    cw = calibration_width(torch.broadcast_to(mask, (S, 1, H, W)))
    kw = max(2, min(6, cw // 2))
    coarse = (min(H, max(64, cw)), min(W, max(64, cw)))
    out = []
    for s in range(S):
        mps, eig = EspiritCalib(centre_crop(y[s], coarse).numpy(), calib_width=cw, thresh=0.02, kernel_width=kw,
                                crop=0.0, max_iter=30, output_eigenvalue=True, show_pbar=False).run()
        out.append(_upsample_maps(torch.from_numpy(mps).to(torch.complex64),
                                  torch.from_numpy(eig).real.float().reshape(coarse), (H, W), 0.95))
    return torch.stack(out)


def bart_ecalib(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``bart ecalib -m1 -r ACS`` per slice (BART's defaults otherwise: crop 0.8)."""
    S, C, H, W = y.shape
    cw = calibration_width(torch.broadcast_to(mask, (S, 1, H, W)))
    out = []
    with tempfile.TemporaryDirectory(prefix="mp-bart-") as tmp:
        d = Path(tmp)
        for s in range(S):
            bart.write_cfl(d / "k", y[s].numpy().transpose(1, 2, 0)[:, :, None, :])  # [H, W, 1, C]
            bart._bart("ecalib", "-m1", "-r", str(cw), str(d / "k"), str(d / "m"))
            out.append(torch.from_numpy(bart.read_cfl(d / "m").reshape(H, W, C).transpose(2, 0, 1).copy()))
    return torch.stack(out)


ESTIMATORS = {
    "sigpy square (old)": sigpy_square,
    # the default: crop 0.95, lowered to 0.9 when held-out k-space says the support cuts tissue (select_crop)
    "band k½ crop .95": lambda y, m: estimate_maps(y, m, crop=0.95),
    "band k½ crop .95 fixed": lambda y, m: estimate_maps(y, m, crop=0.95, auto_crop=False),
    "band k½ crop .9": lambda y, m: estimate_maps(y, m, crop=0.9, auto_crop=False),
    "band k½ crop .98": lambda y, m: estimate_maps(y, m, crop=0.98, auto_crop=False),
    "band k½ soft .9→.98": lambda y, m: estimate_maps(y, m, crop=0.9, soft=0.98, auto_crop=False),
    "band k8×½ crop .95": lambda y, m: estimate_maps(y, m, crop=0.95, auto_crop=False, kernel_width=kernel_size(
        torch.broadcast_to(m, (y.shape[0], 1, *y.shape[-2:]))[:, 0] > 0, rect=True)),
}


def scans(quick: bool) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, fully sampled k-space ``[S, C, H, W]``, RSS truth ``[S, H, W]``)."""
    out = []
    if MPRAGE.exists():
        import scipy.io

        data = scipy.io.loadmat(MPRAGE)["kData"]  # (256, 256, 4) complex128, coils last
        full = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).to(torch.complex64)[None]
        out.append(("MPRAGE 4ch 256² (real)", full, ifft2c(full).abs().pow(2).sum(1).sqrt().numpy()))
    if not quick:
        from mpcli.data.sample import simulate_scan

        k, _, ref, _ = simulate_scan()
        out.append(("sample sim 6×8ch 128²", torch.from_numpy(k).to(torch.complex64), ref))
    return out


def evaluate(y: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    """(CG-SENSE PSNR, CS PSNR) with ``maps``."""
    inside = (maps.abs().pow(2).sum(1) > 0).numpy()
    m = torch.broadcast_to(mask, y[:, :1].shape)
    sense = cg_sense(y, Sense(maps, m), tikhonov=1e-2, iters=30).abs().numpy()
    cs = l1_wavelet(y, maps, m, lam=DEFAULT_LAM, iters=100).abs().numpy() * inside
    return c.score(ref, sense)[0], c.score(ref, cs)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_common_args(ap)
    ap.add_argument("--acs", type=int, nargs="*", default=None)
    ap.add_argument("--estimators", nargs="*", default=None, help="subset of the estimator names")
    args = ap.parse_args(argv)
    device = c.setup(args)
    names = args.estimators or list(ESTIMATORS) + (["bart ecalib"] if bart.available() else [])
    estimators = {**ESTIMATORS, "bart ecalib": bart_ecalib}
    acs_list = args.acs or ((12,) if args.quick else ACS)
    rows = []
    for scan, full, ref in scans(args.quick):
        S, _, H, W = full.shape
        for acs in acs_list:
            mask = make_mask("random", (H, W), 4, acs / W, seed=1000 + acs).expand(1, 1, H, W)  # [1, 1, H, W]
            y = full * mask
            for name in names:
                t0 = time.perf_counter()
                try:
                    maps = estimators[name](y, mask)
                except (RuntimeError, ValueError) as exc:
                    print(f"{scan} ACS {acs} {name}: failed ({str(exc).splitlines()[0][:80]})", file=sys.stderr)
                    continue
                t = (time.perf_counter() - t0) / S
                p_sense, p_cs = evaluate(y, mask, maps.to(torch.complex64), ref)
                rows.append({"scan": scan, "ACS": str(calibration_width(mask)), "maps": name, "s/slice": t,
                             "SENSE dB": p_sense, "CS dB": p_cs})
                print(rows[-1], file=sys.stderr, flush=True)
    print(c.header("Coil maps from few calibration lines (1-D random mask, R = 4)", device, "-", "-",
                   f"CG-SENSE 30 it μ=1e-2; CS λ={DEFAULT_LAM} 100 it; truth = RSS of the full k-space"))
    print(c.markdown_table(rows, ["scan", "ACS", "maps", "s/slice", "SENSE dB", "CS dB"]))
    c.save_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
