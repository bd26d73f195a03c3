"""Low-rank adaptation: ``mp adapt`` moves θ* along rank-r deltas instead of every weight.

For each weight of θ* with two or more axes, W ∈ ℝ^{o × i × k × k} seen as a
matrix ℝ^{o × n} (n = i·k·k), the adapted weight is (LoRA, Hu et al. 2022)::

    W(ψ) = W* + (U V).reshape(W.shape),    U ∈ ℝ^{o × r},  V ∈ ℝ^{r × n}

and every other parameter (biases, MoDL's μ) moves by a free delta d, p(ψ) = p* + d.
ψ₀ = (U = 0, V ~ N(0, 1/n), d = 0), so φ(ψ₀) = θ* exactly. A rank-r delta of a
conv layer has r·(o + n) entries instead of o·n: for the shipped U-Net at r = 4, ψ has
32 k entries against θ's 487 k. The inner problem is then solved over ψ, with the proximity term
λ/2‖ψ − ψ₀‖²; what is returned is φ(ψ), a full set of the network's parameters.
Weights whose matrix has min(o, n) ≤ r gain nothing from a low-rank delta and move
by a free delta as well.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from mpcli.meta.functional import Params


def _key(name: str) -> str:
    """A parameter name without dots (``nn.Module`` attribute names cannot have them)."""
    return name.replace(".", "__")


class LowRankDelta(nn.Module):
    """The network ``base`` at φ(ψ) = θ* + Δ(ψ); its own parameters are ψ.

    ``self(y, A)`` is ``base(y, A)`` evaluated at φ(ψ), so it can stand in for the
    network wherever parameters are passed by name (:func:`mpcli.meta.functional.bind`).
    """

    def __init__(self, base: nn.Module, theta: Params, rank: int, seed: int = 0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        object.__setattr__(self, "_base", base)  # not a submodule: its parameters are not ψ
        self.theta = {k: v.detach() for k, v in theta.items()}
        self.rank = rank
        self.low_rank: list[str] = []
        gen = torch.Generator().manual_seed(seed)
        for name, w in self.theta.items():
            o, n = (w.shape[0], w[0].numel()) if w.ndim >= 2 else (1, 1)
            if w.ndim >= 2 and min(o, n) > rank:
                self.low_rank.append(name)
                v = torch.randn(rank, n, generator=gen, dtype=w.dtype) / n**0.5
                self.register_parameter(_key(name) + "__u", nn.Parameter(w.new_zeros(o, rank)))
                self.register_parameter(_key(name) + "__v", nn.Parameter(v.to(w.device)))
            else:
                self.register_parameter(_key(name), nn.Parameter(torch.zeros_like(w)))

    def merged(self, psi: Params | None = None) -> Params:
        """φ(ψ) in the base network's parameter names (ψ: this module's own by default)."""
        get = (lambda k: getattr(self, k)) if psi is None else psi.__getitem__  # getattr: what functional_call set
        out = {}
        for name, w in self.theta.items():
            k = _key(name)
            if name in self.low_rank:
                out[name] = w + (get(k + "__u") @ get(k + "__v")).reshape(w.shape)
            else:
                out[name] = w + get(k)
        return out

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        return functional_call(self._base, self.merged(), (y, A))

    def size(self) -> int:
        """Number of entries of ψ."""
        return sum(p.numel() for p in self.parameters())
