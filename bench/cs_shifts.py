"""L1-wavelet CS with and without cycle spinning, beside BART's PICS, on held-out tasks.

``mp reconstruct --method cs`` shifts the wavelet grid at random every FISTA
iteration (``mpcli/recon/wavelet.py``); sigpy's ``L1WaveletRecon`` does not,
BART's ``pics -R W`` does. This script measures what the shifts are worth: one
task per family of ``bench/quality.py`` and per ``--seeds`` draw, ``--slices``
test slices each, ESPIRiT maps from the undersampled data, every λ of the grid,
PSNR against the coil-combined truth inside the maps' support (as
``common.run_cs_tuned``). It prints, per task, the best PSNR of each solver over
the grid (λ tuned on the truth: optimistic for all three), the λ it chose, and
seconds per slice at that λ.

    python bench/cs_shifts.py --threads 1          # 4 families × seeds 0, 1 × 2 slices, ~5 min, 1 thread
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bart_pics
import common as c

from mpcli.recon.classical import l1_wavelet

LAMS = c.CS_LAMS  # the grid of the tuned-CS anchor in every bench, BART's too


def sweep_cs(vol: c.Volume, cycle_spin: bool) -> tuple[float, float, float]:
    """(best PSNR, its λ, seconds per slice at it) of ``l1_wavelet`` over ``LAMS``."""
    inside = c.support(vol.maps).cpu().numpy()  # [S, H, W]
    best = (-np.inf, np.nan, np.nan)
    for lam in LAMS:
        t0 = time.perf_counter()
        image = np.abs(l1_wavelet(vol.y, vol.maps, vol.mask, lam=lam, cycle_spin=cycle_spin).cpu().numpy())
        seconds = (time.perf_counter() - t0) / vol.y.shape[0]
        best = max(best, (c.score(vol.ref, image * inside)[0], lam, seconds))
    return best


def sweep_bart(vol: c.Volume) -> tuple[float, float, float]:
    """(best PSNR, its λ, seconds per slice per λ) of BART's PICS over ``LAMS``; NaN without BART."""
    if not bart_pics.available():
        return (np.nan, np.nan, np.nan)
    try:
        images, per_slice = bart_pics.pics(vol.y.cpu().numpy(), LAMS)
    except RuntimeError:
        return (np.nan, np.nan, np.nan)
    psnr, lam = max((c.score(vol.ref, im)[0], lam) for lam, im in images.items())
    return (psnr, lam, per_slice)


def _cells(result: tuple[float, float, float]) -> list:
    """(PSNR, λ, seconds) as table cells, λ as text so that 1e-4 stays readable."""
    psnr, lam, seconds = result
    return [float(psnr), f"{lam:g}", float(seconds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(c.HELD_OUT_FAMILIES))
    c.add_task_grid_args(ap, slices=2)
    args = ap.parse_args()
    device = c.setup(args)

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            print(f"[{fam} seed {seed}] {c.task_label(task)}", file=sys.stderr)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            plain, spun, bart = sweep_cs(vol, False), sweep_cs(vol, True), sweep_bart(vol)
            rows.append([fam, seed, c.task_label(task), *_cells(plain), *_cells(spun), *_cells(bart),
                         spun[0] - plain[0], spun[0] - bart[0]])

    cols = ["family", "seed", "task", "plain PSNR", "plain λ*", "plain s/slice", "shifted PSNR", "shifted λ*",
            "shifted s/slice", "BART PSNR", "BART λ*", "BART s/slice/λ", "shifted − plain", "shifted − BART"]
    means = [float(np.nanmean([r[i] for r in rows])) if isinstance(rows[0][i], float) else "" for i in range(3, len(cols))]
    rows.append(["mean", "", "", *means])
    print("# L1-wavelet CS: cycle spinning on / off, and BART PICS (PSNR dB, λ tuned on the truth)\n")
    print(f"- machine: {c.machine(device)}")
    print(f"- {args.slices} slices per task, λ grid {LAMS}; sigpy scored inside the ESPIRiT support, "
          "BART on its own maps\n")
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
