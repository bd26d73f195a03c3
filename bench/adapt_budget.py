"""Adaptation budget: PSNR and seconds of ``mp adapt`` for a few budget settings.

One held-out volume (default: 16 slices, 8 coils, 256², T2-like sagittal — a
contrast and plane the prior never saw — random lines R 4, 8 % centre, 1 % noise),
ESPIRiT maps from the data; every setting adapts the prior from θ* with
:func:`mpcli.meta.adapt.adapt` and the same seed, and the adapted network is
scored on the maps' support against the coil-combined truth (see
``bench/common.py``). Settings (``AdaptConfig`` fields; the rest default):

- ``default``:            the shipped defaults
- ``patience 8 / val 8``: the previous budget (8 steps of patience, 8 self-validation slices)
- ``2 slices/step``:      half the slices per step
- ``4 slices at once``:   back-propagate the 4 slices together (chunk 4) instead of one at a time

    python bench/adapt_budget.py            # ~5 min on 2 idle CPU cores
    python bench/adapt_budget.py --quick    # 64², 4 slices, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # bench/common.py

from mpcli.data.tasks import Task
from mpcli.meta.adapt import AdaptConfig

SETTINGS = {
    "default": {},
    "patience 8 / val 8": {"patience": 8, "val_slices": 8},
    "2 slices/step": {"slices_per_step": 2},
    "4 slices at once": {"chunk": 4},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_common_args(ap)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.slices = 64, 4
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    task = Task(mask_kind="random", acceleration=4.0, center_fraction=0.08, n_coils=8, noise_rel=0.01,
                source="mni_t2like", plane="sagittal", size=(args.size, args.size), seed=7)
    t0 = time.perf_counter()
    vol = c.with_maps(c.simulate_volume(task, args.slices, seed=args.seed, device=device))
    maps_s = time.perf_counter() - t0
    prior_psnr, prior_ssim = c.score(vol.ref, c.run_network(vol, model, theta).image)
    rows = [{"setting": "prior (no adaptation)", "PSNR": prior_psnr, "SSIM": prior_ssim, "gain dB": 0.0,
             "steps (best/run)": "–", "seconds": float("nan")}]
    for name in args.settings.split(","):
        config = AdaptConfig(seed=args.seed, **SETTINGS[name])
        rec = c.run_adapt(vol, model, theta, config)
        p, s = c.score(vol.ref, rec.image)
        rows.append({"setting": name, "PSNR": p, "SSIM": s, "gain dB": p - prior_psnr,
                     "steps (best/run)": f"{rec.info['best_step']}/{rec.info['steps_run']}",
                     "seconds": rec.info["seconds"]})
        print(f"  {name}: {p:.2f} dB, {rec.info['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(c.header("mp adapt budget settings (one held-out volume)", device, args.prior, sha,
                   f"{c.task_label(task)}, {args.slices} slices; ESPIRiT {maps_s:.1f} s; seconds: the adaptation "
                   "alone, one run per setting, all in this process"))
    print(c.markdown_table(rows, ["setting", "PSNR", "SSIM", "gain dB", "steps (best/run)", "seconds"]))
    c.save_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
