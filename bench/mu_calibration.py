"""How far is MoDL's learned per-scan μ from each task's best, and would a rule in its features close it?

MoDL with ``adaptive_mu`` sets μ_b = softplus(ρ + w·φ_b) from acquisition features
φ (:func:`mpcli.recon.network.acquisition_features`: log acquired fraction, log
coils, log outer-ring k-space level and, if the network has it, log calibration-matrix
noise level). On ``--tasks`` tasks of a curriculum checkpoint's current training
family (ESPIRiT frame, as deployed)::

    z_t   = ρ + w·φ_t                          (the checkpoint's pre-activation)
    k*_t  = argmax_k PSNR(f_θ with μ = k·softplus(z_t))   over k = 2⁻⁵ … 2⁶,
            refined by a parabola through the best grid point and its neighbours
    z*_t  = softplus⁻¹(k*_t · softplus(z_t))
    (ρ, w) = argmin Σ_t (ρ + w·ψ_t − z*_t)² + 0.01‖w‖²    on two thirds of the tasks

for two feature sets ψ: the network's own and all of
:data:`~mpcli.recon.network.MU_FEATURES`. On the other third it reports the mean PSNR
with the checkpoint's μ, with each fitted rule's, and with each task's own best μ (the
ceiling of any μ rule); with ``--held-out NAME`` also on tasks of that held-out family
(:data:`mpcli.data.tasks.HELD_OUT`), which no rule was fitted on.

    python bench/mu_calibration.py train/prior_ckpt.safetensors --tasks 48 --held-out noise  # 14 min beside a training run
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

from mpcli.data.tasks import HELD_OUT
from mpcli.meta.functional import Params, bind

SCALES = tuple(2.0 ** e for e in range(-5, 7))  # μ × 1/32 … 64
"""The grid of μ factors searched per task."""


def _softplus_inv(mu: torch.Tensor) -> torch.Tensor:
    return mu + torch.log(-torch.expm1(-mu))


def task_curve(model, theta: Params, batch, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(φ ``[len(MU_FEATURES)]`` mean over the batch, z ``[B]``, PSNR ``[len(SCALES)]``) of f_θ on ``batch``
    (``y`` ``[B, C, H, W]``, target ``x`` in the frame of the curriculum ``config``, scored as its
    validation scores) with μ scaled by each of :data:`SCALES`."""
    from mpcli.meta.batches import take
    from mpcli.meta.curriculum import _scored
    from mpcli.recon.network import MU_FEATURES, acquisition_features, robust_scale

    with torch.no_grad():
        s = robust_scale(batch.A.adjoint(batch.y))
        phi = acquisition_features(batch.y / s[:, None], batch.A, MU_FEATURES)  # [B, F]
        own = [MU_FEATURES.index(n) for n in model.mu_features]
        z = theta["rho_mu"] + phi[:, own] @ theta["mu_weights"]  # [B]
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


@dataclass
class Curves:
    """Per task: features φ ``[T, len(MU_FEATURES)]``, the checkpoint's mean pre-activation z
    ``[T]``, and mean PSNR with μ scaled by each of :data:`SCALES` ``[T, len(SCALES)]``."""

    phi: np.ndarray
    z: np.ndarray
    psnr: np.ndarray

    @classmethod
    def measure(cls, model, theta: Params, batches: list, config) -> Curves:
        rows = [task_curve(model, theta, b, config) for b in batches]
        return cls(np.array([r[0] for r in rows]), np.array([float(r[1].mean()) for r in rows]),
                   np.array([r[2] for r in rows]))

    def target(self) -> np.ndarray:
        """z*_t, the pre-activation of each task's best μ ``[T]``."""
        k = 2.0 ** np.array([best_log_scale(c) for c in self.psnr])
        return _softplus_inv(torch.tensor(k) * F.softplus(torch.tensor(self.z, dtype=torch.float64))).numpy()

    def design(self, names: tuple[str, ...]) -> np.ndarray:
        """[1, ψ_t] ``[T, 1 + len(names)]``."""
        from mpcli.recon.network import MU_FEATURES

        return np.concatenate([np.ones((len(self.z), 1)), self.phi[:, [MU_FEATURES.index(n) for n in names]]], 1)

    def score(self, z_new: np.ndarray) -> float:
        """Mean PSNR at the factor k = softplus(z_new)/softplus(z), read off each task's curve (log₂ grid)."""
        k = (F.softplus(torch.tensor(z_new)) / F.softplus(torch.tensor(self.z))).numpy()
        e = np.clip(np.log2(np.maximum(k, 1e-12)), math.log2(SCALES[0]), math.log2(SCALES[-1]))
        return float(np.mean([np.interp(ei, np.log2(SCALES), c) for ei, c in zip(e, self.psnr)]))

    def current(self) -> float:
        return float(self.psnr[:, SCALES.index(1.0)].mean())

    def best(self) -> float:
        return float(self.psnr.max(axis=1).mean())

    def subset(self, rows: np.ndarray) -> Curves:
        return Curves(self.phi[rows], self.z[rows], self.psnr[rows])


def fit_rule(curves: Curves, names: tuple[str, ...], ridge: float = 1e-2) -> np.ndarray:
    """(ρ, w) ``[1 + len(names)]`` = argmin Σ_t (ρ + w·ψ_t − z*_t)² + ridge·‖w‖²."""
    X, t = curves.design(names), curves.target()
    reg = ridge * np.diag([0.0] + [1.0] * len(names))
    return np.linalg.solve(X.T @ X + reg, X.T @ t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--held-out", choices=sorted(HELD_OUT), default=None,
                    help="also score the fitted rules on tasks/3 tasks of this held-out family")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from mpcli.meta import curriculum as cur
    from mpcli.meta.losses import derive_seed
    from mpcli.recon.network import MU_FEATURES, build_network

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
        batches.append(cur.in_training_frame(batch, config))
    model = build_network(config.network)
    curves = Curves.measure(model, theta, batches, config)
    held = np.arange(a.tasks) % 3 == 2
    fit, test = curves.subset(~held), curves.subset(held)
    feature_sets = list(dict.fromkeys((tuple(model.mu_features), MU_FEATURES)))
    rules = {names: fit_rule(fit, names) for names in feature_sets}
    tables = [(f"{held.sum()} held-out training-family tasks", test)]
    if a.held_out:
        other = [cur.in_training_frame(HELD_OUT[a.held_out].sample_task(np.random.default_rng(derive_seed(a.seed, 7_779, t)))
                        .sample(2, int(derive_seed(a.seed, 7_780, t) % 2**31)), config)
                 for t in range(a.tasks // 3)]
        tables.append((f"{a.tasks // 3} tasks of held-out family '{a.held_out}'",
                       Curves.measure(model, theta, other, config)))
    which = "θ̄" if theta is state.ema else "θ"
    print(f"# Per-scan μ of {Path(a.checkpoint).name} ({which}, stage {stage.name} step {state.step}), "
          f"{a.tasks} training-family tasks, 2 slices each\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    print(common.machine(torch.device("cpu")) + "\n")
    print(f"learned on {', '.join(model.mu_features)}: ρ = {float(theta['rho_mu']):.3f}, "
          f"w = {[round(float(v), 3) for v in theta['mu_weights']]}")
    for names, coef in rules.items():
        print(f"fitted on {(~held).sum()} tasks, {', '.join(names)}: ρ = {coef[0]:.3f}, "
              f"w = {[round(float(v), 3) for v in coef[1:]]}")
    heads = [f"rule on {', '.join(names)}" for names in rules]
    print(f"\n| mean PSNR (dB) on | learned μ | {' | '.join(heads)} | each task's best μ |")
    print("|---" * (3 + len(heads)) + "|")
    for title, c in tables:
        fitted = " | ".join(f"{c.score(c.design(names) @ coef):.2f}" for names, coef in rules.items())
        print(f"| {title} | {c.current():.2f} | {fitted} | {c.best():.2f} |")


if __name__ == "__main__":
    main()
