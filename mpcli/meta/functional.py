"""Parameters as values: the functional view of a network used by meta-learning.

A network's parameters are a ``dict[str, Tensor]`` (names as in
``model.named_parameters()``); the network is evaluated at any such dict with
``torch.func.functional_call``, so the inner loop can build φ₁, φ₂, … as new
dicts without touching the module or θ.

Tree helpers treat a dict as one long vector::

    tree_sub(a, b)    = a − b                    (key-wise)
    tree_sqnorm(a)    = ‖a‖² = Σ_k Σ |a_k|²
    tree_dot(a, b)    = ⟨a, b⟩ = Σ_k Σ Re(conj(a_k) b_k)
    proximity(φ, θ)   = ½‖φ − θ‖²
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


def params_of(model: nn.Module, requires_grad: bool = False) -> Params:
    """A detached copy of ``model``'s parameters, one leaf tensor per name."""
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in model.named_parameters()}


def call(model: nn.Module, params: Params, y: torch.Tensor, A) -> torch.Tensor:
    """``model(y, A)`` evaluated at ``params`` (buffers are the module's own).

    Args:
        y: k-space ``[B, C, H, W]`` complex.
        A: the forward operator (a :class:`~mpcli.physics.sense.Sense`).
    Returns:
        x̂ ``[B, H, W]`` complex.
    """
    return functional_call(model, params, (y, A))


def bind(model: nn.Module, params: Params) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """The callable ``(y, A) -> x̂`` of ``model`` at ``params`` (what losses receive)."""

    def f(y: torch.Tensor, A) -> torch.Tensor:
        return call(model, params, y, A)

    return f


def tree_map(fn: Callable[..., torch.Tensor], *trees: Params) -> Params:
    """``{k: fn(a[k], b[k], …)}`` over the keys of the first tree."""
    return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


def tree_sub(a: Params, b: Params) -> Params:
    """Key-wise difference a − b."""
    return {k: a[k] - b[k] for k in a}


def tree_add(a: Params, b: Params, alpha: float = 1.0) -> Params:
    """Key-wise a + α b."""
    return {k: a[k] + alpha * b[k] for k in a}


def _sq(v: torch.Tensor) -> torch.Tensor:
    return v.real**2 + v.imag**2 if v.is_complex() else v * v


def tree_sqnorm(a: Params) -> torch.Tensor:
    """‖a‖² = Σ over all entries of |a|² (a 0-dim tensor, differentiable)."""
    terms = [_sq(v).sum() for v in a.values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    """⟨a, b⟩ = Σ Re(conj(a) b) over all entries (a 0-dim tensor)."""
    terms = [((a[k].conj() * b[k]).real if a[k].is_complex() else a[k] * b[k]).sum() for k in a]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def proximity(phi: Params, theta: Params) -> torch.Tensor:
    """½‖φ − θ‖², the proximal term of the inner problem."""
    return 0.5 * tree_sqnorm(tree_sub(phi, theta))


def tree_detach(a: Params) -> Params:
    """Key-wise ``detach()`` (values shared, graph cut)."""
    return {k: v.detach() for k, v in a.items()}


def flatten(a: Params) -> torch.Tensor:
    """All entries of ``a`` as one real 1-D tensor, in key order."""
    return torch.cat([v.reshape(-1) for v in a.values()]) if a else torch.zeros(0)


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`: split ``vec`` into tensors shaped like ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i : i + n].reshape(v.shape)
        i += n
    return out
