"""Few calibration lines: does ``mp adapt`` beat the prior when the coil maps come from 5-11 lines?

``mp adapt`` judges every choice (μ, the steps, CS around the network's image) by how well it
predicts held-out acquired k-space through the ESPIRiT maps. When those maps come from a few
calibration lines they are poorly determined, and a candidate that fits the data harder through
them can predict the held-out lines better while its image gets worse. ``AdaptConfig.min_calibration``
(``--min-calibration``, default 7) keeps the prior for scans calibrated on fewer lines. This bench
measures the rule on one task family at several centre fractions: the same tasks (mask seed, coils,
noise, anatomy) with 5-6, 7-8 and 10-11 fully sampled centre lines; ``--acceleration`` changes R,
``--size`` the matrix (with the centre fractions scaled to give the same lines), ``--mprage`` runs the
real 4-coil MPRAGE slice instead (``bench/real_data.py``, R = 4 and 6, random lines).

For each task: the calibration lines, the PSNR of the unadapted prior, of ``mp adapt`` with neither
guard (``min_calibration = 0``, ``max_prior_error = inf``), and of ``mp adapt`` with its defaults.
PSNR inside the ESPIRiT support as in ``bench/quality.py``.

    python bench/few_calibration.py --threads 2 --seeds 0,1,2,3,4,5,6,7     # 24 tasks, ~15 min
    python bench/few_calibration.py --threads 2 --seeds 0,1,2,3,4,5,6,7 --centre-fractions 0.055   # 7 lines
    python bench/few_calibration.py --threads 2 --seeds 0,1,2,3,4,5,6,7 --acceleration 4 --centre-fractions own,0.08
    python bench/few_calibration.py --threads 2 --seeds 0,1,2,3 --size 256 --centre-fractions 0.02,0.028,0.04
    python bench/few_calibration.py --threads 2 --seeds 0,1 --mprage --centre-fractions 0.02,0.028,0.04
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig
from mpcli.physics.coils import centred_acs_width


def volumes(args: argparse.Namespace, device):
    """(seed, volume with ESPIRiT maps, label) of every scan the bench runs."""
    for seed in (int(s) for s in args.seeds.split(",")):
        for cf in args.centre_fractions.split(","):
            if args.mprage:
                from real_data import mprage_volume

                for r in (4.0, 6.0):
                    frac = 0.08 if cf == "own" else float(cf)
                    vol = mprage_volume(r, seed, frac)
                    yield seed, vol, f"real MPRAGE 256x256, random R{r:g} cf{frac:.3f}, 4c"
                continue
            task = c.draw_task(args.family, seed)
            if args.acceleration:
                task = dataclasses.replace(task, acceleration=args.acceleration)
            if args.size:
                task = dataclasses.replace(task, size=(args.size, args.size))
            if cf != "own":
                task = dataclasses.replace(task, center_fraction=float(cf))
            yield seed, c.with_maps(c.simulate_volume(task, args.slices, seed, device=device)), c.task_label(task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(c.DEFAULT_PRIOR))
    ap.add_argument("--family", default="acceleration_8")
    ap.add_argument("--acceleration", type=float, default=None, help="replace the family's acceleration")
    ap.add_argument("--size", type=int, default=None, help="replace the family's matrix (square, this side)")
    ap.add_argument("--mprage", action="store_true",
                    help="the real 4-coil MPRAGE slice of bench/real_data.py at R = 4 and 6 instead of the family "
                    "(seeds: mask seeds; 'own' = its 8 %% centre)")
    ap.add_argument("--centre-fractions", default="own,0.06,0.08",
                    help="comma list; 'own' keeps the family's (0.04 at R = 8: 5-6 lines at 128)")
    c.add_task_grid_args(ap)
    args = ap.parse_args()
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    default = AdaptConfig()
    unguarded = dataclasses.replace(default, min_calibration=0, max_prior_error=math.inf)
    rows, gains = [], {}
    for seed, vol, label in volumes(args, device):
        lines = centred_acs_width(vol.mask)
        prior = c.score(vol.ref, c.run_network(vol, model, theta).image)[0]
        free = c.score(vol.ref, c.run_adapt(vol, model, theta, unguarded).image)[0]
        run = c.run_adapt(vol, model, theta, default)
        row = {"seed": seed, "task": label, "lines": lines, "prior": prior,
               "mp adapt, no guard": free, "mp adapt": c.score(vol.ref, run.image)[0]}
        rows.append(row)
        group = "5-6" if lines <= 6 else "7-8" if lines <= 8 else "9+"  # the default keeps the prior below 7
        gains.setdefault(group, []).append((free - prior, row["mp adapt"] - prior))
        print(f"  {row}", file=sys.stderr, flush=True)
    what = ("the real MPRAGE slice" if args.mprage else f"{args.slices} slices per task; family {args.family}"
            f"{f', R = {args.acceleration:g}' if args.acceleration else ''}{f', {args.size}²' if args.size else ''}")
    print(c.header("mp adapt with few calibration lines: PSNR dB of the prior, without and with the guards",
                   device, args.prior, sha, f"{what}; seeds {args.seeds}; centre fractions {args.centre_fractions}"))
    print(c.markdown_table(rows, ["seed", "task", "lines", "prior", "mp adapt, no guard", "mp adapt"]))
    summary = [[g, len(v), f"{np.mean([a for a, _ in v]):+.2f}", sum(a < 0 for a, _ in v),
                f"{np.mean([b for _, b in v]):+.2f}", sum(b < 0 for _, b in v)]
               for g, v in sorted(gains.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))]
    print()
    print(c.markdown_table(summary, ["calibration lines", "tasks", "no guard − prior (mean dB)", "below the prior",
                                     "mp adapt − prior (mean dB)", "below the prior"]))


if __name__ == "__main__":
    main()
