"""The refinement's L1 weighted by the network's wavelets, against plain L1, through ``mp adapt``.

``mp adapt`` ends with CS around the adapted network's image z (:mod:`mpcli.recon.refine`). Since the
fourteenth session its L1 term is weighted by z's own wavelet coefficients, λ‖w ⊙ Ψx‖₁ with
w_i = ε / (|(Ψz)_i| + ε) (``AdaptConfig.refine_eps``, ε = 0.05 of the tissue's intensity; λ on
``LAMS_WEIGHTED``), so that what the network put in the image is shrunk less. This bench runs ``mp adapt``
twice on each task, with its defaults and with plain L1 (``refine_eps=None``, λ on ``LAMS``: the
refinement before), and scores both inside the ESPIRiT support as ``bench/quality.py`` does (the plain
column of seeds 0 and 1 equals ``bench/quality.py``'s ``adapt`` column of the thirteenth session).

    python bench/refine_weights.py --threads 2 --seeds 0,1,2,3     # 8 families × 4 seeds, ~25 min
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig


def refine_cell(refine: dict | None) -> str:
    """λ / μ of a chosen refinement, or why there is none."""
    return "none" if refine is None else f"{refine['lam']:g} / {refine['mu']:g}"


def main() -> None:
    args, device, model, theta, sha = c.prior_task_grid(__doc__)
    weighted, plain = AdaptConfig(), dataclasses.replace(AdaptConfig(), refine_eps=None)
    rows, gains = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            runs = {name: c.run_adapt(vol, model, theta, cfg) for name, cfg in (("weighted", weighted),
                                                                                ("plain", plain))}
            psnr = {name: c.score(vol.ref, r.image)[0] for name, r in runs.items()}
            gains.setdefault(seed, []).append(psnr["weighted"] - psnr["plain"])
            rows.append([fam, seed, c.task_label(task), psnr["plain"], refine_cell(runs["plain"].info["refine"]),
                         psnr["weighted"], refine_cell(runs["weighted"].info["refine"]), gains[seed][-1]])
            print("  " + " | ".join(str(v) for v in rows[-1]), file=sys.stderr, flush=True)
    every = [g for v in gains.values() for g in v]
    for seed, g in gains.items():
        rows.append([f"mean, seed {seed}", "", "", "", "", "", "", float(np.mean(g))])
    rows.append(["mean, all", "", f"{sum(g > 0.005 for g in every)} better, {sum(g < -0.005 for g in every)} "
                 f"worse, {sum(abs(g) <= 0.005 for g in every)} level", "", "", "", "", float(np.mean(every))])
    cols = ["family", "seed", "task", "plain L1 PSNR", "plain λ / μ", "weighted PSNR", "weighted λ / μ",
            "weighted − plain dB"]
    print(c.header("mp adapt's refinement: L1 weighted by the network's wavelets vs plain L1, PSNR dB", device,
                   args.prior, sha, f"{args.slices} slices per task; ε {weighted.refine_eps}; "
                   "level: within 0.005 dB (where the prior is kept, nothing is refined)"))
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
