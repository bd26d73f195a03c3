"""The refinement's L1 weighted by the network's wavelets, against plain L1, through ``mp adapt``.

``mp adapt`` ends with CS around the adapted network's image z (:mod:`mpcli.recon.refine`). Since the
fourteenth session its L1 term is weighted by z's own wavelet coefficients, λ‖w ⊙ Ψx‖₁ with
w_i = ε / (|(Ψz)_i| + ε) (``AdaptConfig.refine_eps``, ε = 0.05 of the tissue's intensity; λ on
``LAMS_WEIGHTED``), so that what the network put in the image is shrunk less. This bench runs ``mp adapt``
twice on each task, with its defaults and with one setting of the refinement changed (``--against``),
and scores both inside the ESPIRiT support as ``bench/quality.py`` does:

- ``plain-l1``: plain L1 (``refine_eps=None``, λ on ``LAMS``: the refinement before; in the fourteenth
  session's run, before ``refine_whiten``, its column of seeds 0 and 1 equals ``bench/quality.py``'s
  ``adapt`` column of the thirteenth session);
- ``unwhitened``: the candidates scored by the unweighted held-out error (``refine_whiten=False``: the
  choice before the fifteenth session);
- ``grid``: λ on its grid alone, without the midpoints tried around the best (``refine_midpoints=False``:
  the search before the sixteenth session).

    python bench/refine_weights.py --threads 2 --seeds 0,1,2,3     # 8 families × 4 seeds, ~25 min
    python bench/refine_weights.py --threads 2 --seeds 0,1,2,3 --against unwhitened
    python bench/refine_weights.py --threads 2 --seeds 0,1,2,3 --against grid
    python bench/refine_weights.py --threads 2 --seeds 0,1,2,3 --against one-pass
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig

AGAINST = {"plain-l1": {"refine_eps": None}, "unwhitened": {"refine_whiten": False},
           "grid": {"refine_midpoints": False}, "one-pass": {"refine_reweight": ()}}


def refine_cell(refine: dict | None) -> str:
    """λ / μ of a chosen refinement, or why there is none."""
    if refine is None:
        return "none"
    return f"{refine['lam']:g} / {refine['mu']:g}" + "".join(f", then {lam:g}" for lam in refine.get("reweighted", []))


def main() -> None:
    args, device, model, theta, sha = c.prior_task_grid(__doc__, lambda ap: ap.add_argument(
        "--against", default="plain-l1", choices=list(AGAINST), help="the refinement setting compared"))
    default, other = AdaptConfig(), dataclasses.replace(AdaptConfig(), **AGAINST[args.against])
    rows, gains = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            runs = {name: c.run_adapt(vol, model, theta, cfg) for name, cfg in (("default", default),
                                                                                ("other", other))}
            psnr = {name: c.score(vol.ref, r.image)[0] for name, r in runs.items()}
            gains.setdefault(seed, []).append(psnr["default"] - psnr["other"])
            rows.append([fam, seed, c.task_label(task), psnr["other"], refine_cell(runs["other"].info["refine"]),
                         psnr["default"], refine_cell(runs["default"].info["refine"]), gains[seed][-1]])
            print("  " + " | ".join(str(v) for v in rows[-1]), file=sys.stderr, flush=True)
    every = [g for v in gains.values() for g in v]
    for seed, g in gains.items():
        rows.append([f"mean, seed {seed}", "", "", "", "", "", "", float(np.mean(g))])
    rows.append(["mean, all", "", f"{sum(g > 0.005 for g in every)} better, {sum(g < -0.005 for g in every)} "
                 f"worse, {sum(abs(g) <= 0.005 for g in every)} level", "", "", "", "", float(np.mean(every))])
    cols = ["family", "seed", "task", f"{args.against} PSNR", f"{args.against} λ / μ", "default PSNR",
            "default λ / μ", f"default − {args.against} dB"]
    print(c.header(f"mp adapt's refinement: defaults vs {args.against} ({AGAINST[args.against]}), PSNR dB", device,
                   args.prior, sha, f"{args.slices} slices per task; defaults ε {default.refine_eps}, whitened "
                   f"choice {default.refine_whiten}; level: within 0.005 dB (where the prior is kept, nothing is "
                   "refined)"))
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
