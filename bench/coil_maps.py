"""Coarse-grid ESPIRiT against the full grid, on real and sample k-space.

For each scan: seconds per slice of ``estimate_maps`` on the full grid
(``grid=None``), on the default 64² grid and of the former default (sigpy's
EspiritCalib on the square ACS, medians of 3), the per-pixel coherence
|Σ_c conj(S_full,c) S_c| inside both supports (mean and 1st percentile), the Dice
of the two supports and the fraction of the full-grid support the coarse one
misses (a cut rim of tissue); for the sample scan also the shipped prior's PSNR
against its reference with either set of maps.

    python bench/coil_maps.py        # ~15 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # bench/common.py
from coil_acs import MPRAGE, scans, sigpy_square  # bench/coil_acs.py: the former default, the MPRAGE

from mpcli.io.readers import read_scans
from mpcli.metrics import psnr
from mpcli.physics.coils import estimate_maps
from mpcli.physics.masks import make_mask
from mpcli.recon.apply import reconstruct_network
from mpcli.scan import mask_from_kspace

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real" / "sigpy_brain_8ch_poisson_ksp.npy"
SAMPLE = REPO / "sample_data" / "brain_fastmri.h5"
REPEATS = 3


def simulated_8ch_256() -> torch.Tensor:
    """``[2, 8, 256, 256]`` k-space: Shepp–Logan, 8 simulated surface coils, 1.5 % noise."""
    import sigpy as sp

    from mpcli.data.simulate import coil_maps, simulate_kspace

    rng = np.random.default_rng(0)
    img = sp.shepp_logan((256, 256)).real.astype(np.float32)
    return torch.from_numpy(np.stack([simulate_kspace(img, coil_maps(8, (256, 256), rng), 0.015, rng)
                                      for _ in range(2)])).to(torch.complex64)


def compare(kspace: torch.Tensor, mask: torch.Tensor | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Agreement row, full-grid maps, coarse maps (``[S, C, H, W]``)."""
    t0 = time.perf_counter()
    full = estimate_maps(kspace, mask, grid=None)
    t_full = (time.perf_counter() - t0) / kspace.shape[0]
    t_coarse, t_old = [], []
    for _ in range(REPEATS):  # medians: this machine's timings are noisy
        t0 = time.perf_counter()
        coarse = estimate_maps(kspace, mask)
        t_coarse.append((time.perf_counter() - t0) / kspace.shape[0])
        t0 = time.perf_counter()
        sigpy_square(kspace, mask if mask is not None else mask_from_kspace(kspace))
        t_old.append((time.perf_counter() - t0) / kspace.shape[0])
    t_coarse, t_old = statistics.median(t_coarse), statistics.median(t_old)
    sf, sc = full.abs().pow(2).sum(1) > 0.5, coarse.abs().pow(2).sum(1) > 0.5
    both = sf & sc
    coh = (full.conj() * coarse).sum(1).abs()[both]
    return ({"full s/slice": t_full, "64² s/slice": t_coarse, "former s/slice": t_old, "coherence mean": float(coh.mean()),
             "coherence p1": float(coh.quantile(0.01)), "support Dice": float(2 * both.sum() / (sf.sum() + sc.sum())),
             "missed %": float(100 * (sf & ~sc).sum() / sf.sum()), "extra %": float(100 * (sc & ~sf).sum() / sf.sum())},
            full, coarse)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_common_args(ap)
    args = ap.parse_args(argv)
    device = c.setup(args)
    rows = []
    if REAL.exists():
        k = torch.from_numpy(np.load(REAL)).to(torch.complex64)[None]  # [1, 8, 230, 180]
        row, _, _ = compare(k, None)
        rows.append({"scan": "real sigpy brain 8ch 230×180 (Poisson)", **row})
    if MPRAGE.exists():
        full = next(f for name, f, _ in scans(quick=True) if name.startswith("MPRAGE"))  # [1, 4, 256, 256]
        mask = make_mask("random", (256, 256), 4, 24 / 256, seed=1024).expand(1, 1, 256, 256)
        row, _, _ = compare(full * mask, mask)
        rows.append({"scan": "real MPRAGE 4ch 256² (R 4 lines, 24 ACS)", **row})
    k = simulated_8ch_256()  # the speed target's slice shape
    mask = make_mask("random", (256, 256), 4, 0.08, seed=3).expand(1, 1, 256, 256)
    row, _, _ = compare(k * mask, mask)
    rows.append({"scan": "simulated Shepp–Logan 2×8ch 256² (R 4 lines, 20 ACS)", **row})
    scan = read_scans(SAMPLE)[0]
    row, full, coarse = compare(scan.kspace, scan.mask)
    rows.append({"scan": "sample_data brain 6×8ch 128² (R 4 lines)", **row})
    model, _, sha, _ = c.load_prior(args.prior, device)
    ref = h5py.File(SAMPLE, "r")["reconstruction_rss"][()]
    scores = {name: psnr(ref, np.abs(np.asarray(reconstruct_network(model, scan, maps, device))), float(ref.max()))
              for name, maps in (("full grid", full), ("64² grid", coarse))}
    print(c.header("Coarse-grid ESPIRiT vs full grid", device, args.prior, sha))
    cols = ["scan", "full s/slice", "64² s/slice", "former s/slice", "coherence mean", "coherence p1", "support Dice", "missed %",
            "extra %"]
    print(c.markdown_table(rows, cols, digits=6))
    print("\nshipped prior on the sample scan, PSNR vs its reference: "
          + ", ".join(f"{k} maps {v:.2f} dB" for k, v in scores.items()))
    c.save_json(args.json, {"rows": rows, "sample_psnr": scores})
    return 0


if __name__ == "__main__":
    sys.exit(main())
