"""How far is MoDL's learned per-scan μ from each task's best, and would a rule in its features close it?

MoDL with ``adaptive_mu`` sets μ_b = softplus(ρ + w·φ_b) from three acquisition
features φ (:func:`mpcli.recon.network.acquisition_features`: log acquired
fraction, log coils, log outer-ring k-space level). On ``--tasks`` tasks of a
curriculum checkpoint's current training family (ESPIRiT frame, as deployed)::

    z_t   = ρ + w·φ_t                          (the checkpoint's pre-activation)
    k*_t  = argmax_k PSNR(f_θ with μ = k·softplus(z_t))   over k = 2⁻⁵ … 2³,
            refined by a parabola through the best grid point and its neighbours
    z*_t  = softplus⁻¹(k*_t · softplus(z_t))
    (ρ, w) = argmin Σ_t (ρ + w·φ_t − z*_t)² + 0.01‖w‖²    on two thirds of the tasks

and on the other third it reports the mean PSNR with the checkpoint's μ, with the
fitted rule's, and with each task's own best μ (the ceiling of any μ rule).

    python bench/mu_calibration.py train/prior_ckpt.safetensors --tasks 48    # ~4 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcli.meta.functional import Params, bind

SCALES = tuple(2.0 ** e for e in range(-5, 4))  # μ × 1/32 … 8
"""The grid of μ factors searched per task."""


@dataclass
class Calibration:
    """A fitted (ρ, w) and how it scored on the held-out tasks (mean PSNR, dB)."""

    rho: float
    w: list[float]
    held_out_current: float
    held_out_fitted: float
    held_out_best: float
    tasks: int


def _softplus_inv(mu: torch.Tensor) -> torch.Tensor:
    return mu + torch.log(-torch.expm1(-mu))


def task_curve(model, theta: Params, batch, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(φ ``[3]`` mean over the batch, z ``[B]``, PSNR ``[len(SCALES)]``) of f_θ on ``batch``
    (``y`` ``[B, C, H, W]``, target ``x`` in the frame of the curriculum ``config``, scored as its
    validation scores) with μ scaled by each of :data:`SCALES`."""
    from mpcli.meta.batches import take
    from mpcli.meta.curriculum import _scored
    from mpcli.recon.network import acquisition_features, robust_scale

    with torch.no_grad():
        s = robust_scale(batch.A.adjoint(batch.y))
        phi = acquisition_features(batch.y / s[:, None], batch.A)  # [B, 3]
        z = theta["rho_mu"] + phi @ theta["mu_weights"]  # [B]
        curve = []
        for k in SCALES:
            scaled = _softplus_inv(k * F.softplus(z))  # [B]: the pre-activation of k·μ_b
            th = dict(theta)
            vals = []  # slice by slice, μ fixed through ρ' = scaled_b, w' = 0
            for b in range(batch.y.shape[0]):
                th["rho_mu"], th["mu_weights"] = scaled[b], torch.zeros_like(theta["mu_weights"])
                one = take(batch, slice(b, b + 1))
                vals.append(_scored(bind(model, th)(one.y, one.A), one, config))
            curve.append(float(np.mean(vals)))
    return phi.mean(0).numpy(), z.numpy(), np.array(curve)


def best_log_scale(curve: np.ndarray) -> float:
    """log₂ of the best μ factor: the grid argmax refined by a parabola through its neighbours."""
    i = int(np.argmax(curve))
    e = math.log2(SCALES[i])
    if 0 < i < len(curve) - 1:
        a, b, c = curve[i - 1], curve[i], curve[i + 1]
        den = a - 2 * b + c
        if den < 0:
            e += 0.5 * (a - c) / den
    return e


def calibrate(model, theta: Params, batches: list, config, ridge: float = 1e-2) -> Calibration:
    """Fit (ρ, w) on two thirds of ``batches`` (one per task), score on the rest (see module docstring)."""
    phis, zs, curves, targets = [], [], [], []
    for batch in batches:
        phi, z, curve = task_curve(model, theta, batch, config)
        k = 2.0 ** best_log_scale(curve)
        mu_star = k * F.softplus(torch.tensor(z, dtype=torch.float64)).mean()
        phis.append(phi)
        zs.append(float(z.mean()))
        curves.append(curve)
        targets.append(float(_softplus_inv(mu_star)))
    phis, targets = np.array(phis), np.array(targets)
    held = np.arange(len(batches)) % 3 == 2
    fit = ~held if held.any() and (~held).sum() >= 4 else np.ones(len(batches), bool)

    X = np.concatenate([np.ones((len(batches), 1)), phis], axis=1)  # [T, 4]
    reg = ridge * np.diag([0.0, 1.0, 1.0, 1.0])
    coef = np.linalg.solve(X[fit].T @ X[fit] + reg, X[fit].T @ targets[fit])  # [4]

    def score(rows: np.ndarray, z_new: np.ndarray) -> float:
        # PSNR at the factor k = softplus(z_new)/softplus(z_current), read off each task's curve (log₂ grid)
        out = []
        for r, zn in zip(rows, z_new):
            k = float(F.softplus(torch.tensor(zn)) / F.softplus(torch.tensor(zs[r])))
            e = np.clip(math.log2(max(k, 1e-12)), math.log2(SCALES[0]), math.log2(SCALES[-1]))
            out.append(float(np.interp(e, np.log2(SCALES), curves[r])))
        return float(np.mean(out))

    rows = np.flatnonzero(held if held.any() else fit)
    current = float(np.mean([curves[r][SCALES.index(1.0)] for r in rows]))
    return Calibration(float(coef[0]), [float(v) for v in coef[1:]], current,
                       score(rows, X[rows] @ coef), float(np.mean([max(curves[r]) for r in rows])), len(batches))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from mpcli.meta import curriculum as cur
    from mpcli.meta.losses import derive_seed
    from mpcli.recon.network import build_network

    state, config = cur.load_checkpoint(a.checkpoint)
    if "mu_weights" not in state.theta:
        sys.exit(f"{a.checkpoint}: the network has no adaptive μ")
    stage = config.stages[min(state.stage, len(config.stages) - 1)]
    family = cur._family(config, stage)
    theta = state.ema if set(state.ema) == set(state.theta) else state.theta
    batches = []
    for t in range(a.tasks):
        task = family.sample_task(np.random.default_rng(derive_seed(a.seed, 7_777, t)))
        batch = task.sample(2, int(derive_seed(a.seed, 7_778, t) % 2**31))
        batches.append(cur.in_espirit_frame(batch) if config.maps == "espirit" else batch)
    cal = calibrate(build_network(config.network), theta, batches, config)
    which = "θ̄" if theta is state.ema else "θ"
    print(f"# Per-scan μ of {Path(a.checkpoint).name} ({which}, stage {stage.name} step {state.step}), "
          f"{a.tasks} training-family tasks, 2 slices each\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    print(common.machine(torch.device("cpu")) + "\n")
    print(f"learned: ρ = {float(theta['rho_mu']):.3f}, w = {[round(float(v), 3) for v in theta['mu_weights']]}")
    print(f"fitted on {a.tasks - a.tasks // 3} tasks: ρ = {cal.rho:.3f}, w = {[round(v, 3) for v in cal.w]}\n")
    print("| held-out tasks | learned μ | fitted rule | each task's best μ |")
    print("|---|---|---|---|")
    print(f"| {a.tasks // 3} (mean PSNR, dB) | {cal.held_out_current:.2f} | {cal.held_out_fitted:.2f} | "
          f"{cal.held_out_best:.2f} |")


if __name__ == "__main__":
    main()
