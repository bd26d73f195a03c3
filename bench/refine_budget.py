"""What ``mp adapt``'s CS refinement needs: FISTA iterations and self-validation slices.

For each of ``bench/quality.py``'s held-out task families and ``--seeds`` draw (4 test slices,
PSNR inside the ESPIRiT support as there), ``mp adapt`` runs with the refinement off and
then with each (iterations, slices) budget: ``refine_iters`` FISTA iterations of CS around the
adapted network's image, (λ, μ) chosen on ``refine_slices`` of the self-validation slices
(:mod:`mpcli.recon.refine`). The table gives PSNR and the choice per task, the mean, and the
seconds the choice and the reconstruction took.

    python bench/refine_budget.py --threads 1 --seeds 0     # 4 tasks, ~10 min, 1 thread
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig, adapt

BUDGETS = ((60, 4), (60, 2), (45, 4), (45, 2), (30, 4))  # (refine_iters, refine_slices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(c.DEFAULT_PRIOR))
    c.add_task_grid_args(ap)
    args = ap.parse_args()
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    rows, seconds = [], {b: [] for b in BUDGETS}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in c.HELD_OUT_FAMILIES:
            task = c.draw_task(fam, seed)
            print(f"[{fam} seed {seed}] {c.task_label(task)}", file=sys.stderr)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            inside = c.support(vol.maps).cpu().numpy()
            b = c.site_batch(vol)
            row = [fam, seed, c.task_label(task)]
            base = adapt(model, theta, [b], AdaptConfig(refine=False))
            row.append(c.score(vol.ref, np.abs(c.adapted_image(model, base, b.y, b.A).cpu().numpy())
                               * inside)[0])
            for iters, n in BUDGETS:
                config = dataclasses.replace(AdaptConfig(), refine_iters=iters, refine_slices=n)
                res = adapt(model, theta, [b], config)
                t = time.perf_counter()
                image = c.adapted_image(model, res, b.y, b.A)
                seconds[(iters, n)].append((res.seconds - base.seconds, time.perf_counter() - t))
                r = res.refine
                row += [c.score(vol.ref, np.abs(image.cpu().numpy()) * inside)[0],
                        "none" if r is None else f"{r['lam']:g}/{r['mu']:g}"]
            rows.append(row)
            print("  " + "  ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row[3:]), file=sys.stderr)
    cols = ["family", "seed", "task", "network alone"]
    for iters, n in BUDGETS:
        cols += [f"{iters} it, {n} slices", "λ/μ"]
    rows.append(["mean", "", "", *(float(np.mean([r[i] for r in rows])) if isinstance(rows[0][i], float) else ""
                                   for i in range(3, len(cols)))])
    rows.append(["choice s / recon s (median)", "", "", "", *(x for b in BUDGETS for x in (
        f"{np.median([s[0] for s in seconds[b]]):.1f} / {np.median([s[1] for s in seconds[b]]):.1f}", ""))])
    print(c.header("mp adapt's CS refinement by budget: PSNR dB", device, args.prior, sha,
                   f"{args.slices} slices per task; adapted network as mp adapt (refinement off) in 'network alone'"))
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
