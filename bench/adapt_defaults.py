"""Choose ``mp adapt``'s defaults: loss × λ × lr with early stopping, on held-out tasks.

For each of a few tasks drawn from ``HELD_OUT`` families, a test volume is
simulated (ESPIRiT maps from the data) and ``mp adapt`` (``mpcli.meta.adapt``,
self-validation split and early stopping as shipped) is run from θ* for every
combination of

    loss ∈ {ssdu, wssdu, ei, mc},  λ ∈ {0, 1e-2, 1e-1},  lr ∈ {1e-3, 3e-3}

(the other settings are AdaptConfig's, except the step cap and slices per step,
reduced so the grid fits its time budget — see --max-steps,
--slices-per-step). By default the grid is staged (--grid staged): every
loss × lr at λ = 1e-2, then λ ∈ {0, 1e-1} for the two best (loss, lr) —
12 settings instead of 24; --grid full runs all 24. Reported per setting: final PSNR/SSIM (magnitude vs
|x|·RSS(S), fastMRI) averaged over the tasks, the gain over the unadapted
prior, the steps used (best step / steps run) and seconds. The best setting
(highest mean PSNR) is printed last. Plain measurement consistency (mc) cannot
see the unsampled k-space and is expected to drift towards zero-filling: its
rows measure by how much.

    python bench/adapt_defaults.py                  # staged grid, 2 tasks × 3 slices (≤ 10 min, 2 cores)
    python bench/adapt_defaults.py --grid full      # all 24 settings (GPU)
    python bench/adapt_defaults.py --quick --prior /tmp/prior.safetensors
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

LOSSES = ("ssdu", "wssdu", "ei", "mc")
LAMS = (0.0, 1e-2, 1e-1)
LRS = (1e-3, 3e-3)
STAGE1_LAM = 1e-2


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(ap)
    ap.add_argument("--families", default="contrast,poisson", help="HELD_OUT families, one task each")
    ap.add_argument("--slices", type=int, default=3, help="slices per test volume")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--lams", default=",".join(f"{v:g}" for v in LAMS))
    ap.add_argument("--lrs", default=",".join(f"{v:g}" for v in LRS))
    ap.add_argument("--grid", choices=("staged", "full"), default="staged",
                    help="full: every loss × λ × lr; staged (half the cost): every loss × lr at λ = 1e-2, "
                         "then the other λs for the two best (loss, lr)")
    ap.add_argument("--max-steps", type=int, default=16, help="step cap of each adaptation (AdaptConfig: 40)")
    ap.add_argument("--slices-per-step", type=int, default=2, help="slices per step (AdaptConfig: 4)")
    args = ap.parse_args()
    if args.quick:
        args.families, args.slices, args.lams, args.lrs, args.max_steps = "contrast", 2, "0.01,0.1", "1e-3", 2
    losses = [v.strip() for v in args.losses.split(",") if v.strip()]
    base = dataclasses.replace(AdaptConfig(), steps=args.max_steps, slices_per_step=args.slices_per_step)
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    t0 = time.perf_counter()
    vols, baseline, zero_filled, prior_images = [], [], [], []
    for fam in families:
        task = c.draw_task(fam, args.seed)
        print(f"[{fam}] {c.task_label(task)}", file=sys.stderr)
        vol = c.with_maps(c.simulate_volume(task, args.slices, args.seed, device=device))
        vols.append((fam, vol))
        zf = c.run_zero_filled(vol).image
        zero_filled.append(zf)
        prior_images.append(c.run_network(vol, model, theta).image)
        baseline.append({"prior": c.score(vol.ref, prior_images[-1]),
                         "zero-filled": c.score(vol.ref, zf)})
    inside = [c.support(v.maps).cpu().numpy() for _, v in vols]

    def evaluate(loss: str, lam: float, lr: float, stage: str) -> dict:
        config = dataclasses.replace(base, loss=loss, lam=lam, lr=lr)
        per_task = []
        for (fam, vol), b, zf, sup in zip(vols, baseline, zero_filled, inside):
            rec = c.run_adapt(vol, model, theta, config)
            p, s = c.score(vol.ref, rec.image)
            # drift towards zero-filling: PSNR of the result against the zero-filled image (same support)
            to_zf = c.score(zf * sup, rec.image)[0]
            per_task.append({"family": fam, "psnr": p, "ssim": s, "gain": p - b["prior"][0], "to_zf": to_zf,
                             **rec.info})
        run = {"loss": loss, "lam": lam, "lr": lr, "stage": stage, "tasks": per_task,
               **{k: float(np.mean([t[k] for t in per_task])) for k in ("psnr", "ssim", "gain", "to_zf", "seconds")}}
        print(f"  [{stage}] {loss:5s} λ={lam:<5g} lr={lr:<5g} PSNR {run['psnr']:.2f} (gain {run['gain']:+.2f}) "
              f"{run['seconds']:.1f} s/task", file=sys.stderr)
        return run

    lams, lrs = floats(args.lams), floats(args.lrs)
    if args.grid == "full":
        runs = [evaluate(loss, lam, lr, "full") for loss in losses for lam in lams for lr in lrs]
    else:  # staged: every loss × lr at one λ, then the other λs for the two best (loss, lr)
        lam0 = STAGE1_LAM if STAGE1_LAM in lams else lams[0]
        runs = [evaluate(loss, lam0, lr, "1") for loss in losses for lr in lrs]
        top = sorted(runs, key=lambda r: -r["psnr"])[:2]
        runs += [evaluate(r["loss"], lam, r["lr"], "2") for r in top for lam in lams if lam != lam0]
    total = time.perf_counter() - t0

    print(c.header("mp adapt defaults: loss × λ × lr with early stopping (mean over held-out tasks)",
                   device, args.prior, sha,
                   f"tasks: {'; '.join(f'[{f}] {c.task_label(v.task)}' for f, v in vols)}; {args.slices} slices each, "
                   f"seed {args.seed}; fixed: {base.optimizer}, ≤{base.steps} steps, patience {base.patience}, "
                   f"{base.slices_per_step} slices/step, val fraction {base.val_fraction}"))
    ref_rows = [[f, f"{b['prior'][0]:.2f}", f"{b['zero-filled'][0]:.2f}", f"{c.score(zf * sup, prior_img)[0]:.2f}"]
                for (f, _), b, zf, prior_img, sup in zip(vols, baseline, zero_filled, prior_images, inside)]
    print(c.markdown_table(ref_rows, ["task", "prior PSNR (no adaptation)", "zero-filled PSNR",
                                      "prior PSNR vs zero-filled"]), "\n")
    print("('PSNR vs zero-filled' scores a result against the zero-filled image: higher = closer to "
          "zero-filling, the drift expected of mc.)\n")
    cols = ["stage", "loss", "λ", "lr", "PSNR", "SSIM", "gain vs prior dB"] + \
           [f"{f} PSNR" for f, _ in vols] + ["PSNR vs zero-filled", "steps (best/run)", "s / task"]
    rows = []
    for r in sorted(runs, key=lambda r: -r["psnr"]):
        steps = ", ".join(f"{t['best_step']}/{t['steps_run']}" for t in r["tasks"])
        rows.append([r["stage"], r["loss"], f"{r['lam']:g}", f"{r['lr']:g}", r["psnr"], r["ssim"], r["gain"]]
                    + [t["psnr"] for t in r["tasks"]] + [r["to_zf"], steps, r["seconds"]])
    print(c.markdown_table(rows, cols))
    best = max(runs, key=lambda r: r["psnr"])
    mc = [r for r in runs if r["loss"] == "mc"]
    zf = float(np.mean([b["zero-filled"][0] for b in baseline]))
    print(f"\nbest: loss={best['loss']} lam={best['lam']:g} lr={best['lr']:g}: mean PSNR {best['psnr']:.2f} dB "
          f"(gain {best['gain']:+.2f} dB over the prior), steps {[t['best_step'] for t in best['tasks']]}")
    if mc:
        m = max(mc, key=lambda r: r["psnr"])
        print(f"mc (best of its settings): {m['psnr']:.2f} dB, gain {m['gain']:+.2f} dB over the prior; "
              f"zero-filled {zf:.2f} dB")
    print(f"total {total:.0f} s")
    c.save_json(args.json, {"machine": c.machine(device), "prior": args.prior, "sha256": sha, "seed": args.seed,
                            "base_config": dataclasses.asdict(base),
                            "tasks": [{"family": f, "task": v.task.to_dict()} for f, v in vols],
                            "baseline": baseline, "runs": runs, "best": best, "total_s": total})


if __name__ == "__main__":
    main()
