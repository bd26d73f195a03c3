"""What ``mp adapt`` should change, and how fast: parameter sets × step-size schedules.

For one task from each of a few ``HELD_OUT`` families a test volume is
simulated (ESPIRiT maps from the data) and ``mp adapt`` (``mpcli.meta.adapt``,
SSDU, λ = 1e-2, self-validation split and early stopping as shipped) runs from
θ* with each setting below; every result is scored inside the maps' support
against the coil-combined truth (fastMRI PSNR, magnitude):

- ``params``: ``all`` weights, ``biases`` (biases and μ), ``head`` (the denoiser's
  two output-side layers and μ), ``mu`` (MoDL's data-consistency weights only:
  ``rho_mu`` and, with adaptive μ, ``mu_weights``) or ``lowrank`` (rank-r deltas of
  every weight matrix, LoRA-style, with free deltas of biases and μ);
- base step size ``lr``, ``schedule`` constant or cosine with ``warmup`` steps,
  and ``mu_lr_scale`` (μ's step size relative to the base).

The first row is the unadapted prior. Reported: mean PSNR, the gain over the
prior, PSNR per task, steps (best/run) and seconds per task. The default
settings of :class:`~mpcli.meta.adapt.AdaptConfig` are marked.

    python bench/adapt_what.py --prior /tmp/curriculum.safetensors     # ~15 min, 1 thread
    python bench/adapt_what.py --prior P --only all,lowrank     # the settings of these parameter sets
    python bench/adapt_what.py --quick
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

from mpcli.meta.adapt import AdaptConfig

SETTINGS: list[dict] = [
    {"params": "all", "lr": 1e-3},
    {"params": "all", "lr": 3e-4, "schedule": "cosine", "warmup": 2},
    {"params": "all", "lr": 1e-4, "schedule": "cosine", "warmup": 2},
    {"params": "all", "lr": 1e-4, "schedule": "cosine", "warmup": 2, "mu_lr_scale": 30.0},
    {"params": "biases", "lr": 1e-3, "schedule": "cosine", "warmup": 2, "mu_lr_scale": 30.0},
    {"params": "head", "lr": 1e-3, "mu_lr_scale": 30.0},
    {"params": "mu", "lr": 1e-3, "mu_lr_scale": 30.0},
    {"params": "lowrank", "lr": 1e-3, "rank": 4},
    {"params": "lowrank", "lr": 1e-2, "rank": 4},
]


def label(setting: dict) -> str:
    s = dataclasses.replace(AdaptConfig(), **setting)
    sched = s.schedule + (f"+warm{s.warmup}" if s.warmup else "")
    rank = f" r{s.rank}" if s.params == "lowrank" else ""
    return f"{s.params}{rank} lr {s.lr:g} {sched} μ×{s.mu_lr_scale:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    c.add_common_args(ap)
    ap.add_argument("--families", default="contrast,poisson,acceleration_8", help="HELD_OUT families, one task each")
    ap.add_argument("--slices", type=int, default=4, help="slices per test volume")
    ap.add_argument("--only", default=None, help="run only the settings of these parameter sets (e.g. all,lowrank)")
    args = ap.parse_args(argv)
    settings = SETTINGS if not args.only else [s for s in SETTINGS if s["params"] in args.only.split(",")]
    if args.quick:
        args.families, args.slices = "contrast", 2
        settings = [dict(s, steps=2) for s in SETTINGS[:2] + SETTINGS[-1:]]
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    t0 = time.perf_counter()
    vols = []
    for fam in [f.strip() for f in args.families.split(",") if f.strip()]:
        task = c.draw_task(fam, args.seed)
        print(f"[{fam}] {c.task_label(task)}", file=sys.stderr)
        vols.append((fam, c.with_maps(c.simulate_volume(task, args.slices, args.seed, device=device))))
    prior = [c.score(v.ref, c.run_network(v, model, theta).image)[0] for _, v in vols]
    default = dataclasses.asdict(AdaptConfig())
    rows = [["prior (no adaptation)", float(np.mean(prior)), 0.0, *prior, "–", 0.0]]
    for setting in settings:
        config = dataclasses.replace(AdaptConfig(), **setting)
        psnr, steps, secs = [], [], []
        for _, vol in vols:
            rec = c.run_adapt(vol, model, theta, config)
            psnr.append(c.score(vol.ref, rec.image)[0])
            steps.append(f"{rec.info['best_step']}/{rec.info['steps_run']}")
            secs.append(rec.info["seconds"])
        mark = " (default)" if all(default[k] == v for k, v in setting.items()) else ""
        rows.append([label(setting) + mark, float(np.mean(psnr)), float(np.mean(psnr) - np.mean(prior)), *psnr,
                     ", ".join(steps), float(np.mean(secs))])
        print(f"  {rows[-1][0]}: {rows[-1][1]:.2f} dB ({rows[-1][2]:+.2f})", file=sys.stderr)
    print(c.header("mp adapt: what to adapt × step-size schedule (SSDU, λ 1e-2, early stopping)", device,
                   args.prior, sha, f"{args.slices} slices per task, seed {args.seed}; tasks: "
                   + "; ".join(f"[{f}] {c.task_label(v.task)}" for f, v in vols)))
    print(c.markdown_table(rows, ["setting", "PSNR", "gain vs prior dB", *[f"{f} PSNR" for f, _ in vols],
                                  "steps (best/run)", "s / task"]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
