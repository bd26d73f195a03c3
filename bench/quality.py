"""Reconstruction quality of ``mp adapt`` on held-out tasks, against every baseline.

One task is drawn (seeded) from each of several ``HELD_OUT`` families — regimes
the meta-prior never saw — and a test volume of ``--slices`` slices simulated
from it. Every method reconstructs from the undersampled k-space and ESPIRiT
maps estimated from it (never the true maps), and is scored on magnitudes
against the coil-combined truth |x|·RSS(S) (see ``bench/common.py``), with
fastMRI's PSNR/SSIM per volume:

- zero-filled RSS; CG-SENSE (Tikhonov 1e-2); L1-wavelet CS with λ tuned per
  task *on the ground truth* of 2 test slices (optimistic for CS), masked to
  the ESPIRiT support (see ``common.run_cs_tuned``);
- BART (``bart ecalib`` + ``bart pics -l1``, its own maps; ``bench/bart_pics.py``)
  with λ tuned on the ground truth the same way (``bart*``) and with the common
  default λ = 0.01 (``bart``); NaN where BART is not installed or fails;
- meta-prior θ* without adaptation; ``mp adapt`` from θ* (default
  ``AdaptConfig``); the same adaptation from a random initialisation;
- oracle: the same network trained supervised on other slices of the task
  (from θ*, Adam, ``--oracle-steps`` × ``--oracle-batch`` slices).

Every map-based method is scored inside the ESPIRiT support (Σ|Ŝ|² > 0):
outside it A is blind and no measurement-only loss constrains the network
(see ``common.run_network``); the last table also gives the networks'
unmasked PSNR. It gives too, per task, the PSNR ceiling of anything that is
zero where the ESPIRiT maps are zero (ref·support(Ŝ) vs ref): ESPIRiT's
eigenvalue crop can cut real tissue when the calibration block is small.

Then the targets are checked and printed as PASS/FAIL with the numbers:
adapt ≥ best classical + 1.5 dB (mean over tasks of adapt − the task's best
classical PSNR), adapt > no adaptation, adapt > random-init adaptation, and
adapt within 1 dB of the oracle (mean PSNRs).

    python bench/quality.py                       # default: 4 tasks × 4 slices (~10 min, 1 thread)
    python bench/quality.py --families every --slices 8  # all seven families (GPU)
    python bench/quality.py --quick --prior /tmp/prior.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bart_pics
import common as c

from mpcli.meta.adapt import AdaptConfig

FAMILIES = ("contrast", "sagittal", "poisson", "acceleration_8", "coils_16_20", "noise", "all")
# The default run fits ~20 min on 2 idle CPU cores with the shipped network (each task adapts
# twice with AdaptConfig's full budget and trains an oracle); all seven families: --families every.
# "noise" is the noise level measured on real scans (bench/noise_level.py).
DEFAULT_FAMILIES = c.HELD_OUT_FAMILIES
METHODS = ("zero-filled", "sense", "cs*", "bart*", "bart", "prior", "adapt", "adapt-random", "oracle")
CLASSICAL = ("zero-filled", "sense", "cs*", "bart*", "bart")


def run_task(task, args, model, theta, net_config: dict, config: AdaptConfig, device) -> dict:
    """Every method on one simulated volume of ``task``: scores, notes, seconds."""
    t0 = time.perf_counter()
    vol = c.with_maps(c.simulate_volume(task, args.slices, args.seed, device=device))
    setup_s = time.perf_counter() - t0
    runners = {
        "zero-filled": lambda: c.run_zero_filled(vol),
        "sense": lambda: c.run_sense(vol),
        "cs*": lambda: c.run_cs_tuned(vol, args.cs_lams, args.cs_iters, args.cs_tune_slices),
        "bart*": lambda: run_bart(vol, bart_pics.LAMS, args.cs_tune_slices),
        "bart": lambda: run_bart(vol, (bart_pics.DEFAULT_LAM,), 0),
        "prior": lambda: c.run_network(vol, model, theta),
        "adapt": lambda: c.run_adapt(vol, model, theta, config),
        "adapt-random": lambda: c.run_adapt(vol, model, c.random_init(net_config, args.seed + 1, device),
                                            dataclasses.replace(config, max_prior_error=math.inf,
                                                                min_calibration=0)),  # no prior to keep
        "oracle": lambda: c.run_oracle(vol, model, theta, args.oracle_steps, args.oracle_batch,
                                       args.oracle_pool, seed=args.seed),
    }
    out = {"task": task.to_dict(), "label": c.task_label(task), "setup_s": setup_s, "methods": {},
           "maps_ceiling": c.maps_ceiling(vol)}
    for name in METHODS:
        t = time.perf_counter()
        rec = runners[name]()
        p, s = c.score(vol.ref, rec.image) if np.isfinite(rec.image).all() else (float("nan"), float("nan"))
        out["methods"][name] = {"psnr": p, "ssim": s, "seconds": time.perf_counter() - t, "info": rec.info}
        if rec.raw is not None:  # the network's output before the support mask
            out["methods"][name]["psnr_unmasked"], out["methods"][name]["ssim_unmasked"] = c.score(vol.ref, rec.raw)
        print(f"  {name:13s} PSNR {p:6.2f}  SSIM {s:.4f}  ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return out


def run_bart(vol, lams, tune_slices: int) -> c.Recon:
    """BART PICS, λ chosen on the truth of ``tune_slices`` slices among ``lams`` (one λ: none chosen)."""
    if not bart_pics.available():
        return c.Recon(np.full_like(vol.ref, np.nan), {"error": "bart not installed"})
    k = vol.y.detach().cpu().numpy()  # [S, C, H, W]
    S = k.shape[0]
    idx = np.arange(S) if len(lams) == 1 or not tune_slices or tune_slices >= S else \
        np.linspace(0, S - 1, tune_slices).round().astype(int)
    try:
        images, per_slice = bart_pics.pics(k[idx], lams)
        sweep = {lam: c.score(vol.ref[idx], im)[0] for lam, im in images.items()}
        best = max(sweep, key=sweep.get)
        image = images[best] if len(idx) == S else bart_pics.pics(k, (best,))[0][best]
    except RuntimeError as err:
        return c.Recon(np.full_like(vol.ref, np.nan), {"error": str(err)})
    return c.Recon(image, {"lam": best, "psnr_by_lam": sweep, "s_per_slice_per_lam": per_slice})


def checks(results: list[dict]) -> list[tuple[str, bool, str]]:
    """The targets, from the measured numbers: (name, passed, detail)."""
    def mean(m):
        return float(np.mean([r["methods"][m]["psnr"] for r in results]))

    best_classical = [np.nanmax([r["methods"][m]["psnr"] for m in CLASSICAL]) for r in results]
    gain = float(np.mean([r["methods"]["adapt"]["psnr"] - b for r, b in zip(results, best_classical)]))
    a, p, rnd, o = mean("adapt"), mean("prior"), mean("adapt-random"), mean("oracle")
    return [
        ("adapt >= best classical + 1.5 dB", gain >= 1.5,
         f"mean(adapt − best classical per task) = {gain:+.3f} dB"),
        ("adapt > no adaptation", a > p, f"adapt {a:.2f} dB vs prior {p:.2f} dB ({a - p:+.3f})"),
        ("adapt > random-init adaptation", a > rnd, f"adapt {a:.2f} dB vs random init {rnd:.2f} dB ({a - rnd:+.3f})"),
        ("adapt within 1 dB of the oracle", o - a <= 1.0, f"oracle {o:.2f} dB − adapt {a:.2f} dB = {o - a:+.3f}"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(ap)
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES),
                    help=f"HELD_OUT families, comma-separated, or 'every' = {','.join(FAMILIES)}")
    ap.add_argument("--slices", type=int, default=4, help="test slices per task")
    ap.add_argument("--cs-lams", default=",".join(f"{v:g}" for v in c.CS_LAMS), help="CS λ grid")
    ap.add_argument("--cs-iters", type=int, default=100)
    ap.add_argument("--cs-tune-slices", type=int, default=2, help="test slices the CS λ sweep runs on (0: all)")
    ap.add_argument("--oracle-steps", type=int, default=60)
    ap.add_argument("--oracle-batch", type=int, default=2)
    ap.add_argument("--oracle-pool", type=int, default=12, help="training slices simulated for the oracle")
    ap.add_argument("--adapt-steps", type=int, default=None,
                    help="override AdaptConfig.steps (the budget of both adaptations; default: AdaptConfig's)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target check fails")
    args = ap.parse_args()
    config = AdaptConfig()
    if args.quick:
        args.families, args.slices, args.cs_lams, args.cs_iters = "contrast", 2, "1e-3,1e-2", 30
        args.oracle_steps, args.oracle_batch, args.oracle_pool = 2, 2, 2
        config = AdaptConfig(steps=2, slices_per_step=2, val_slices=2)
    if args.adapt_steps is not None:
        config = AdaptConfig(**{**config.__dict__, "steps": args.adapt_steps})
    args.cs_lams = tuple(float(v) for v in args.cs_lams.split(","))
    device = c.setup(args)
    model, theta, sha, net_config = c.load_prior(args.prior, device)

    families = list(FAMILIES) if args.families == "every" else [f.strip() for f in args.families.split(",") if f.strip()]
    tasks = [(f, c.draw_task(f, args.seed)) for f in families]
    t0 = time.perf_counter()
    results = []
    for fam, task in tasks:
        print(f"[{fam}] {c.task_label(task)}", file=sys.stderr)
        results.append({"family": fam, **run_task(task, args, model, theta, net_config, config, device)})
    total = time.perf_counter() - t0

    print(c.header("mp adapt on held-out tasks: PSNR dB / SSIM (magnitude vs |x|·RSS(S), fastMRI, per volume)",
                   device, args.prior, sha,
                   f"{len(tasks)} tasks × {args.slices} slices, seed {args.seed}, adapt {config}, "
                   f"oracle {args.oracle_steps} Adam steps × {args.oracle_batch} slices from θ* "
                   f"(pool {args.oracle_pool}), CS λ grid {args.cs_lams} tuned on the truth of {args.cs_tune_slices or 'all'} slices (favours CS), masked to the maps' support"))
    for metric in ("psnr", "ssim"):
        cols = ["family", "task"] + [f"{m} {metric.upper()}" for m in METHODS]
        rows = [[r["family"], r["label"]] + [r["methods"][m][metric] for m in METHODS] for r in results]
        rows.append(["mean", ""] + [float(np.mean([r["methods"][m][metric] for r in results])) for m in METHODS])
        print(c.markdown_table(rows, cols), "\n")
    cols = ["family", "ESPIRiT-support ceiling PSNR", "unmasked PSNR prior / adapt / oracle", "CS λ*", "BART λ*",
            "adapt steps (best/run)", "random steps (best/run)"] + [f"{m} s" for m in METHODS]
    rows = []
    for r in results:
        m = r["methods"]
        unmasked = " / ".join(f"{m[k]['psnr_unmasked']:.2f}" for k in ("prior", "adapt", "oracle"))
        rows.append([r["family"], f"{r['maps_ceiling'][0]:.2f}", unmasked, f"{m['cs*']['info']['lam']:g}", f"{m['bart*']['info'].get('lam', float('nan')):g}",
                     f"{m['adapt']['info']['best_step']}/{m['adapt']['info']['steps_run']}",
                     f"{m['adapt-random']['info']['best_step']}/{m['adapt-random']['info']['steps_run']}"]
                    + [m[k]["seconds"] for k in METHODS])
    print(c.markdown_table(rows, cols, digits=1), "\n")
    outcome = checks(results)
    for name, ok, detail in outcome:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"\ntotal {total:.0f} s")
    c.save_json(args.json, {"machine": c.machine(device), "prior": args.prior, "sha256": sha, "seed": args.seed,
                            "adapt_config": config.__dict__, "results": results, "total_s": total,
                            "checks": [{"name": n, "pass": ok, "detail": d} for n, ok, d in outcome]})
    if args.strict and not all(ok for _, ok, _ in outcome):
        sys.exit(1)


if __name__ == "__main__":
    main()
