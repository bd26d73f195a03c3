"""When the held-out k-space cannot judge a scan: ``mp adapt``'s prior guard (``AdaptConfig.max_prior_error``).

``mp adapt`` chooses μ, the adaptation step and the refinement by how well each candidate predicts
held-out acquired k-space Γ. This bench asks where that signal is absent: for every task it
computes the prior's relative held-out error e = ‖A_Γ f_θ*(y_T) − y_Γ‖² / ‖y_Γ‖² (μ as the prior gives
it: the ``val_loss_prior`` of ``mp adapt``'s summary; e ≥ 1 means no better than predicting zeros)
and, where e ≥ ``--report-above``, the PSNR of the unadapted prior, of ``mp adapt`` without the
guards (``max_prior_error = inf``, ``min_calibration = 0``) and with the defaults (the prior kept when
e ≥ 1, or when the coil maps come from fewer than 7 calibration lines: ``bench/few_calibration.py``).
PSNR inside the ESPIRiT support as in ``bench/quality.py``.

    python bench/heldout_guard.py --threads 2 --seeds 0,1,2,3,4,5,6,7            # 64 tasks, ~12 min
    python bench/heldout_guard.py --threads 2 --families acceleration_8 --seeds 8,9,10,11,12,13,14,15
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig, adapt


def main() -> None:
    args, device, model, theta, sha = c.prior_task_grid(__doc__, lambda ap: ap.add_argument(
        "--report-above", type=float, default=0.3, help="score the tasks whose prior error is this or more"))
    guarded = AdaptConfig()
    unguarded = dataclasses.replace(guarded, max_prior_error=math.inf, min_calibration=0)  # neither guard
    rows, errors = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            probe = adapt(model, theta, [c.site_batch(vol)], dataclasses.replace(guarded, steps=0, refine=False))
            err = probe.val_prior
            errors.append(err)
            print(f"[{fam} seed {seed}] {c.task_label(task)}: prior error {err:.4f}", file=sys.stderr, flush=True)
            if err < args.report_above:
                continue
            row = {"family": fam, "seed": seed, "task": c.task_label(task), "prior error": f"{err:.3f}",
                   "prior": c.score(vol.ref, c.run_network(vol, model, theta).image)[0],
                   "mp adapt, no guard": c.score(vol.ref, c.run_adapt(vol, model, theta, unguarded).image)[0]}
            row["mp adapt"] = (c.score(vol.ref, c.run_adapt(vol, model, theta, guarded).image)[0]
                               if probe.kept_prior else row["mp adapt, no guard"])  # else the same run
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
    errors = np.array(errors)
    print(c.header("Prior's held-out k-space error, and mp adapt with and without the prior guard (PSNR dB)", device,
                   args.prior, sha, f"{args.slices} slices per task; families {args.families}; seeds {args.seeds}"))
    print(f"{len(errors)} tasks: prior error median {np.median(errors):.3f}, ≥ 0.3 on {int((errors >= 0.3).sum())}, "
          f"≥ 1 (guard) on {int((errors >= 1).sum())}\n")
    print(c.markdown_table(rows, ["family", "seed", "task", "prior error", "prior", "mp adapt, no guard", "mp adapt"]))


if __name__ == "__main__":
    main()
