"""Batched conjugate gradients (pure torch, differentiable, any device).

Used by CG-SENSE (:mod:`mpcli.recon.classical`) and inside the MoDL network
(:mod:`mpcli.recon.network`), where autograd differentiates through a fixed
number of iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-batch inner product Σ conj(a) b over all but the first axis → ``[B]``."""
    return (a.conj() * b).reshape(a.shape[0], -1).sum(dim=1)


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 30,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Batched conjugate gradients for N x = b, N Hermitian positive (semi)definite.

    Each batch item (first axis) is its own system with its own step sizes;
    items that have converged stop moving. Stops when every item has
    ‖r‖ ≤ tol·‖b‖ or after ``iters`` iterations.

    Returns:
        x (same shape as b) and the history of max_b ‖r_b‖/‖b_b‖, one entry for
        the start and one per iteration.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - normal(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = _bdot(r, r).real  # [B]
    bnorm = _bdot(b, b).real.sqrt().clamp_min(torch.finfo(rs.dtype).tiny)  # [B]
    shape = (-1,) + (1,) * (b.dim() - 1)
    history = [float((rs.sqrt() / bnorm).max().detach())]
    for _ in range(iters):
        if history[-1] <= tol:
            break
        active = rs.sqrt() > tol * bnorm  # [B]
        q = normal(p)
        pq = _bdot(p, q).real  # [B]
        alpha = torch.where(active & (pq > 0), rs / pq.clamp_min(torch.finfo(rs.dtype).tiny), 0.0)
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * q
        rs_new = _bdot(r, r).real
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), 0.0)
        p = r + beta.reshape(shape) * p
        rs = rs_new
        history.append(float((rs.sqrt() / bnorm).max().detach()))
    return x, history
