"""The inner problem of meta-learning: a few differentiable optimiser steps.

Starting at φ₀ = θ, N steps of an optimiser on ::

    J(φ) = L_inner(f_φ; batch) + λ/2 ‖φ − θ‖²

give φ_N(θ). With ``create_graph=True`` every step is recorded by autograd, so
∂L_outer(φ_N)/∂θ is the exact (second-order) hypergradient, through
∇J, the proximal term and the optimiser state. With ``create_graph=False`` the
inner gradients are detached (first order, FOMAML): φ_N = θ + stopgrad(φ_N − θ),
so ∂φ_N/∂θ = I and the hypergradient is ∇L_outer evaluated at φ_N.

Optimisers (functional; state is a dict of dicts, nothing is modified in place):

    sgd:   φ ← φ − η g
    adam:  m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  t ← t+1,
           φ ← φ − η m̂ / sqrt(v̂ + ε²),   m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)

(ε inside the square root keeps the step smooth at g = 0, which the
second-order hypergradient needs; it differs from torch's Adam by O(ε)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mpcli.meta.batches import take
from mpcli.meta.functional import Params, bind, proximity

OptState = dict | None


def init_opt_state(optimizer: str, phi: Params, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> OptState:
    """Fresh optimiser state: ``None`` for SGD, zero moments for Adam."""
    if optimizer == "sgd":
        return None
    if optimizer == "adam":
        return {"t": 0, "betas": tuple(betas), "eps": float(eps),
                "m": {k: torch.zeros_like(v) for k, v in phi.items()},
                "v": {k: torch.zeros_like(v) for k, v in phi.items()}}
    raise ValueError(f"unknown inner optimizer {optimizer!r}; expected 'sgd' or 'adam'")


def inner_objective(model: nn.Module, phi: Params, theta: Params, batch, loss: Callable,
                    lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(J(φ), L_inner(φ)) on ``batch`` (attributes ``y``, ``A`` and optional ``x``)."""
    f = bind(model, phi)
    x_hat = f(batch.y, batch.A) if getattr(loss, "needs_x_hat", True) else None  # [B, H, W]
    data = loss(x_hat, batch.y, batch.A, f, getattr(batch, "x", None))
    total = data + lam * proximity(phi, theta) if lam else data
    return total, data


def inner_step(model: nn.Module, phi: Params, theta: Params, batch, loss: Callable, lr: float | dict, lam: float,
               opt_state: OptState = None, create_graph: bool = False,
               chunk: int | None = None) -> tuple[Params, OptState, torch.Tensor]:
    """One optimiser step on J; returns ``(φ_new, state_new, L_inner(φ))``.

    SGD when ``opt_state`` is None, Adam when it comes from
    ``init_opt_state("adam", …)``. Neither ``phi``, ``theta`` nor ``opt_state``
    is modified. The returned loss value is detached.

    ``lr`` is one step size, or one per parameter name (a dict; names it lacks
    get 0). A parameter whose step size is 0 is frozen: it keeps its value and
    its moments, and (first order) no gradient is computed for it.

    ``chunk`` (first order only): accumulate the gradient over groups of at most
    ``chunk`` slices, ∇J = Σ_g (B_g/B) ∇L_inner(batch_g) + λ(φ − θ), so that one
    group's graph is alive at a time (peak memory ∝ chunk, not B). Equal to the
    whole-batch gradient for losses that average per-slice terms; randomised
    losses draw their splits per group.
    """
    rates = {k: float(lr.get(k, 0.0)) if isinstance(lr, dict) else float(lr) for k in phi}
    every = list(phi)
    names = [k for k in every if rates[k] != 0.0 or create_graph]
    # Leaves to differentiate against: tensors already in a graph stay as they are; frozen ones stay detached.
    phi = {k: v if v.requires_grad or k not in names else v.detach().requires_grad_(True) for k, v in phi.items()}
    B = batch.y.shape[0]
    if not names:  # everything frozen
        with torch.no_grad():
            _, data = inner_objective(model, phi, theta, batch, loss, lam)
        return dict(phi), opt_state, data.detach()
    if create_graph or chunk is None or chunk >= B:
        with torch.enable_grad():
            total, data = inner_objective(model, phi, theta, batch, loss, lam)
            grads = torch.autograd.grad(total, [phi[k] for k in names], create_graph=create_graph,
                                        allow_unused=True)
        g = {k: torch.zeros_like(phi[k]) if gk is None else gk for k, gk in zip(names, grads)}
    else:
        g, data = _chunked_gradient(model, phi, theta, batch, loss, lam, chunk, names)
    if not create_graph:
        g = {k: v.detach() for k, v in g.items()}

    if opt_state is None:
        step = {k: rates[k] * g[k] for k in names}
        new_state = None
    else:
        b1, b2 = opt_state["betas"]
        eps, t = opt_state["eps"], opt_state["t"] + 1
        m = {**opt_state["m"], **{k: b1 * opt_state["m"][k] + (1 - b1) * g[k] for k in names}}
        v = {**opt_state["v"], **{k: b2 * opt_state["v"][k] + (1 - b2) * g[k] * g[k] for k in names}}
        c1, c2 = 1 - b1**t, 1 - b2**t
        step = {k: rates[k] * (m[k] / c1) / (v[k] / c2 + eps * eps).sqrt() for k in names}
        new_state = {"t": t, "betas": (b1, b2), "eps": eps, "m": m, "v": v}

    if create_graph:
        new_phi = {k: phi[k] - step[k] if k in step else phi[k] for k in every}
    else:
        # First order: φ_new = stopgrad(φ − step) + (θ − stopgrad θ): the value is
        # exactly φ − step, the derivative with respect to θ is the identity.
        new_phi = {k: phi[k] for k in every if k not in names}
        for k in names:
            value = phi[k].detach() - step[k]
            new_phi[k] = value + (theta[k] - theta[k].detach()) if theta[k].requires_grad else value
    return {k: new_phi[k] for k in every}, new_state, data.detach()


def _chunked_gradient(model: nn.Module, phi: Params, theta: Params, batch, loss: Callable, lam: float,
                      chunk: int, names: list[str] | None = None) -> tuple[Params, torch.Tensor]:
    """(∇J(φ), L_inner(φ)) with respect to ``names`` (default: all of φ), accumulated over
    groups of ≤ ``chunk`` slices (detached)."""
    B = batch.y.shape[0]
    names = list(phi) if names is None else names
    g = {k: torch.zeros_like(phi[k]) for k in names}
    data = torch.zeros((), dtype=batch.y.real.dtype, device=batch.y.device)
    for start in range(0, B, chunk):
        part = take(batch, slice(start, min(start + chunk, B)))
        weight = part.y.shape[0] / B
        with torch.enable_grad():
            _, value = inner_objective(model, phi, theta, part, loss, 0.0)
            grads = torch.autograd.grad(value * weight, [phi[k] for k in names], allow_unused=True)
        for k, gk in zip(names, grads):
            if gk is not None:
                g[k] += gk
        data = data + weight * value.detach()
    if lam:
        for k in g:
            g[k] += lam * (phi[k].detach() - theta[k].detach())
    return g, data


def inner_loop(model: nn.Module, theta: Params, batch, loss: Callable, steps: int, lr: float, lam: float = 0.0,
               optimizer: str = "sgd", create_graph: bool = True,
               callback: Callable[[int, Params, torch.Tensor], None] | None = None) -> Params:
    """φ_N after ``steps`` optimiser steps on J started at φ₀ = θ (new dict).

    ``callback(k, φ_k, L_inner(φ_{k-1}))`` is called after step k = 1..N.
    """
    phi = dict(theta)
    state = init_opt_state(optimizer, phi)
    for k in range(steps):
        phi, state, value = inner_step(model, phi, theta, batch, loss, lr, lam, state, create_graph)
        if callback is not None:
            callback(k + 1, phi, value)
    return phi
