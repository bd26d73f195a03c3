"""The supervised ceiling: what the shipped network reaches on a held-out task when it
is trained on that task's own ground truth, against the CPU time spent.

For one task of each ``HELD_OUT`` family (``bench/quality.py``'s tasks, same seed)
a test volume is simulated with ESPIRiT maps from its data, and the prior θ* is
fine-tuned *supervised* on ``--pool`` other slices of the same task (Adam, ``--lr``,
``--batch`` slices a step, the curriculum's −PSNR loss; ``common.train_supervised``).
The test volume is scored (fastMRI PSNR inside the maps' support, as in
``bench/quality.py``) at the steps of ``--evals``, beside tuned L1-wavelet CS
(λ chosen on the truth) and CG-SENSE.

This is an upper bound that no deployment has — a scan never comes with
its own anatomy's training set — so it answers one question: is the gap to classical
reconstruction a matter of *adaptation* (the ceiling is far above CS) or of the
*network and its training* (the ceiling is not)? Its seconds are those of this
machine's training step, for a measured compute figure instead of a guess.

    python bench/ceiling.py --threads 1                       # 4 tasks, 300 steps: ~20 min, 1 thread
    python bench/ceiling.py --prior P --steps 1000 --evals 0,100,300,1000
    python bench/ceiling.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

DEFAULT_FAMILIES = ("contrast", "poisson", "acceleration_8", "noise")  # bench/quality.py's


def supervised_curve(vol: c.Volume, model, theta, args: argparse.Namespace,
                     evals: list[int]) -> tuple[dict[int, float], float]:
    """PSNR of the test volume at each step of ``evals`` of supervised fine-tuning on
    other slices of its task; and the training's seconds (scoring excluded)."""
    curve: dict[int, float] = {}

    def score_at(k: int, phi) -> None:
        if k in evals:
            curve[k] = c.score(vol.ref, c.run_network(vol, model, phi).image)[0]
            print(f"  step {k}: {curve[k]:.2f} dB", file=sys.stderr)

    _, info = c.train_supervised(model, theta, vol.task, args.steps, args.batch, args.pool, args.lr,
                                 seed=args.seed, device=vol.y.device, loss="psnr", on_step=score_at)
    return curve, info["seconds"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    c.add_common_args(ap)
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="HELD_OUT families, one task each")
    ap.add_argument("--slices", type=int, default=4, help="test slices per task")
    ap.add_argument("--steps", type=int, default=300, help="supervised Adam steps per task")
    ap.add_argument("--evals", default="0,25,100,300", help="steps at which the test volume is scored")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pool", type=int, default=24, help="training slices simulated per task")
    args = ap.parse_args(argv)
    if args.quick:
        args.families, args.slices, args.steps, args.evals, args.pool = "contrast", 2, 2, "0,2", 4
    evals = sorted({int(v) for v in args.evals.split(",") if int(v) <= args.steps})
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    t0 = time.perf_counter()
    rows = []
    for fam in [f.strip() for f in args.families.split(",") if f.strip()]:
        task = c.draw_task(fam, args.seed)
        print(f"[{fam}] {c.task_label(task)}", file=sys.stderr)
        vol = c.with_maps(c.simulate_volume(task, args.slices, args.seed, device=device))
        cs = c.score(vol.ref, c.run_cs_tuned(vol).image)[0]
        sense = c.score(vol.ref, c.run_sense(vol).image)[0]
        curve, seconds = supervised_curve(vol, model, theta, args, evals)
        rows.append([fam, c.task_label(task), sense, cs, *[curve[k] for k in evals], max(curve.values()) - cs,
                     seconds / max(args.steps, 1)])
    gaps = np.array([[r[4 + i] - r[3] for i in range(len(evals))] for r in rows])  # [tasks, evals]: network − cs*
    rows.append(["mean", "", float(np.mean([r[2] for r in rows])), float(np.mean([r[3] for r in rows])),
                 *[float(np.mean([r[4 + i] for r in rows])) for i in range(len(evals))],
                 float(np.mean([r[4 + len(evals)] for r in rows])), float(np.mean([r[-1] for r in rows]))])
    print(c.header("Supervised ceiling: the prior fine-tuned on each held-out task's own ground truth",
                   device, args.prior, sha,
                   f"{args.slices} test slices, seed {args.seed}; Adam lr {args.lr:g}, {args.batch} of "
                   f"{args.pool} training slices a step, −PSNR loss; CS λ tuned on the truth"))
    print(c.markdown_table(rows, ["family", "task", "sense", "cs*", *[f"step {k}" for k in evals],
                                  "best − cs* dB", "s / step"]))
    print("\nmean (network − cs*) dB by step: "
          + ", ".join(f"{k}: {g:+.2f}" for k, g in zip(evals, gaps.mean(axis=0))))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
