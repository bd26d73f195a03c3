"""Curriculum checkpoints on the validation tasks, in the frame ``mp adapt`` works in.

The curriculum's own log validates with the simulation's true coil maps. Here each
validation task of the checkpoint's recipe (2 slices, as in training) is reconstructed
with ESPIRiT maps Ŝ estimated from its undersampled k-space and scored, inside Ŝ's
support, against the truth in Ŝ's frame, Σ_c conj(Ŝ_c) S_c x — what a scan gives the
network at deployment. Tuned L1-wavelet CS (λ best of ``CS_LAMBDAS`` on the truth, same
maps and support) is the reference. ``--mu-scales`` also scores each checkpoint with its
MoDL μ multiplied by each factor (how far the learned μ is from the best one per task).
A checkpoint that keeps an averaged θ̄ (``CurriculumConfig.ema``) is scored with it too.
``--noise`` replaces every task's noise level (0.15: what ``bench/noise_level.py`` measures
on the real scans; the validation tasks have 0.01).

    python bench/prior_checkpoints.py train/prior_ckpt.safetensors
    python bench/prior_checkpoints.py old.safetensors new.safetensors --mu-scales 0.1,0.3,1,3
    python bench/prior_checkpoints.py train/prior_ckpt.safetensors --noise 0.15
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcli.data.tasks import Task
from mpcli.meta import curriculum as cur
from mpcli.recon.network import build_network


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--mu-scales", default="1", help="comma-separated factors applied to MoDL's μ")
    ap.add_argument("--noise", type=float, default=None, help="noise_rel of every task (default: the task's)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    scales = [float(v) for v in a.mu_scales.split(",")]
    _, config = cur.load_checkpoint(a.checkpoints[0])
    val_tasks = [{**t, "noise_rel": a.noise} if a.noise is not None else t for t in config.val_tasks]
    frame = dataclasses.replace(config, val_tasks=val_tasks, maps="espirit")  # the deployment frame
    batches = cur._val_batches(frame)
    cs = cur.baseline(frame, batches)["cs_psnr"]
    tasks = [Task.from_dict(d) for d in val_tasks]
    names = [f"{t.mask_kind} R{t.acceleration:g} {t.n_coils}c {t.size[0]}x{t.size[1]}" for t in tasks]
    noise = f", noise_rel {a.noise:g}" if a.noise is not None else ""
    print(f"# Curriculum checkpoints, validation tasks with ESPIRiT maps (PSNR dB, {config.val_slices} slices each"
          f"{noise})\n")
    print("| checkpoint | step | μ × | " + " | ".join(names) + " | mean | mean − CS |")
    print("|---" * (len(names) + 5) + "|")
    print("| tuned CS | | | " + " | ".join(f"{v:.2f}" for v in cs) + f" | {sum(cs) / len(cs):.2f} | |")
    for path in a.checkpoints:
        state, cfg = cur.load_checkpoint(path)
        model = build_network(cfg.network)
        weights = [("", state.theta)] + ([(" θ̄", state.ema)] if set(state.ema) == set(state.theta) else [])
        for (label, params), k in ((w, k) for w in weights for k in scales):
            theta = dict(params)
            if k != 1.0:  # ρ' with softplus(ρ') = k·softplus(ρ): μ scaled for every scan
                mu = torch.nn.functional.softplus(theta["rho_mu"]) * k
                theta["rho_mu"] = mu + torch.log(-torch.expm1(-mu))
            vals = cur.validate(model, theta, frame, batches)
            mean = sum(vals) / len(vals)
            print(f"| {Path(path).name}{label} | {state.step} | {k:g} | " + " | ".join(f"{v:.2f}" for v in vals)
                  + f" | {mean:.2f} | {mean - sum(cs) / len(cs):+.2f} |", flush=True)
    return 0 if all(math.isfinite(v) for v in cs) else 1


if __name__ == "__main__":
    sys.exit(main())
