"""CS around a network's image, its weights chosen by held-out k-space: the last step of ``mp adapt``.

Given the network's reconstruction z = f_φ(y, A) of a slice, refinement solves ::

    x̂ = argmin_x ½‖W^½(F S x − y)‖² + μ/2‖x − z‖² + λ‖w ⊙ Ψ x‖₁,   w_i = ε / (|(Ψ z)_i| + ε)

by ``iters`` FISTA iterations of cycle-spun L1-wavelet CS started at x = z
(:func:`mpcli.recon.classical.l1_wavelet`; λ, μ and ε relative to the slice's
scale as there). The network supplies what CS cannot (structure where k-space
is empty, at high R), CS what a small network cannot (data consistency and
sparsity at full resolution). The weights w let the network say *where* the
image has structure: wavelet coefficients that z has (edges, vessels) are
shrunk less, those it lacks by the full λ (weighted-ℓ1 CS with prior
information; ε = :data:`EPS`; ``eps`` None gives plain L1, w = 1). With μ = 0
it is CS early-stopped from the network's image.

(λ, μ) are chosen without ground truth, as ``mp adapt`` chooses MoDL's μ
(:func:`mpcli.meta.adapt.search_mu`): on a split Ω = T ⊔ Γ of the acquired
samples, z and x̂ are computed from T alone and scored by the held-out loss
‖A_Γ x̂ − y_Γ‖² / ‖y_Γ‖², in ``mp adapt`` each sample weighted by 1 / (k-space
power at its radius) (``AdaptConfig.refine_whiten``) (:func:`choose_refinement`): λ over a log grid at
μ = 0, then the geometric midpoints between the best λ and its neighbours, then μ over its grid at
the best λ. The network's image alone is a
candidate too; refinement is kept only when it lowers the held-out loss by
the fraction ``min_gain``.

Measured on ``bench/quality.py``'s 8 held-out tasks (128², 4 slices each): around
``mp adapt``'s network (plain L1, 45 iterations, chosen on 2 self-validation slices)
36.79 / 38.06 dB mean on seeds 0 / 1 against 34.96 / 36.70 for the adapted
network alone (``bench/refine_budget.py``); around the unadapted prior on a full
(λ, μ) grid 37.25 over the eight, against 36.49 for CS with λ chosen the same
way (``bench/hybrid.py``). The weights (fourteenth session, ``bench/refine_weights.py``: the
eight held-out families × seeds 0–3, 4 slices each, through ``mp adapt``): +0.40 dB
mean over plain L1 on 32 tasks (23 better, 5 worse, 4 where the prior is kept),
+0.42 on seeds 2–3 alone, which played no part in choosing ε and the grid; the
losses are where held-out lines pick λ one step too large on clean equispaced
masks (−2.8 dB at worst), as they do for plain L1 (``bench/heldout_choice.py``). The midpoints
(sixteenth session, ``bench/refine_weights.py --against grid``, the same 32 tasks): +0.10 dB mean
over the grid alone (8 better, 4 worse), +1.72 on the Shepp–Logan task that lost most to that bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from mpcli.physics.sense import Sense

LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
"""λ tried (at μ = 0) for plain L1: the grid every tuned-CS bench uses, where held-out k-space chose all but 3e-2."""
EPS = 0.05
"""ε of the weighted L1 (:class:`mpcli.recon.wavelet.WaveletL1`), in units of the tissue's intensity."""
LAMS_WEIGHTED = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
"""λ tried (at μ = 0) for the weighted L1: thresholds are λ·w ≤ λ, so its grid sits one step higher."""
MUS = (0.01, 0.03, 0.1)
"""μ tried at the chosen λ (μ = 0 is already scored)."""


@dataclass(frozen=True)
class Refinement:
    """CS around a network's image: λ, μ, the FISTA iterations from the image and the weighted L1's ε
    (None: plain L1)."""

    lam: float
    mu: float
    iters: int = 45
    eps: float | None = None

    def apply(self, y: torch.Tensor, A: Sense, z: torch.Tensor,
              device: torch.device | str | None = None) -> torch.Tensor:
        """x̂ ``[S, H, W]`` complex from k-space ``y`` ``[S, C, H, W]``, ``A`` (maps ``[S, C, H, W]``,
        mask ``[S, 1, H, W]`` or broadcastable) and the network's image ``z`` ``[S, H, W]``;
        computed on ``device`` (default: that of ``y``), returned on that of ``y``."""
        from mpcli.recon.classical import l1_wavelet

        return l1_wavelet(y, A.maps, A.mask, self.lam, self.iters, device=device, start=z, mu=self.mu,
                          eps=self.eps)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> Refinement:
        """The refinement a weights file stores; ValueError unless ``d`` is {"lam": λ ≥ 0, "mu": μ ≥ 0,
        "iters": integer ≥ 1} with, optionally, "eps": None or ε > 0 (files written before the weighted
        L1 have no "eps": plain L1, as they were made)."""
        if not isinstance(d, dict) or set(d) - {"eps"} != {"lam", "mu", "iters"}:
            raise ValueError(f"expected the keys lam, mu, iters (and eps), got {d!r}")
        lam, mu, iters, eps = d["lam"], d["mu"], d["iters"], d.get("eps")
        values = (lam, mu, iters) if eps is None else (lam, mu, iters, eps)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if not (numbers and isinstance(iters, int) and 0 <= lam < float("inf") and 0 <= mu < float("inf")
                and iters >= 1 and (eps is None or 0 < eps < float("inf"))):
            raise ValueError(f"expected finite lam, mu >= 0, an integer iters >= 1 and eps None or > 0, got {d!r}")
        return cls(float(lam), float(mu), iters, None if eps is None else float(eps))


def choose_refinement(heldout: Callable[[Refinement | None], float], iters: int = 45,
                      lams=None, mus=MUS, min_gain: float = 0.0, eps: float | None = EPS,
                      midpoints: bool = True) -> tuple[Refinement | None, list[dict]]:
    """The refinement whose held-out loss ``heldout(r)`` is lowest, or None for the network alone.

    ``heldout(None)`` scores the network's image itself. λ ∈ ``lams`` (default :data:`LAMS_WEIGHTED`
    for the weighted L1 of scale ``eps``, :data:`LAMS` for plain L1, ``eps`` None) is tried at μ = 0;
    with ``midpoints``, then the geometric midpoints √(λ_best λ_n) between the best λ and its grid
    neighbours λ_n (a grid of ratio 3 becomes one of ratio √3 around the best); then μ ∈ ``mus`` at the
    best λ. The best is kept only if its loss is below the network's by the fraction ``min_gain``.
    Returns (the choice, [{"lam", "mu", "val"}] of every candidate in order, the network alone as
    lam = mu = None).
    """
    lams = (LAMS if eps is None else LAMS_WEIGHTED) if lams is None else lams
    tried = [{"lam": None, "mu": None, "val": heldout(None)}]
    network = tried[0]["val"]

    def score(lam: float, mu: float) -> dict:
        tried.append({"lam": lam, "mu": mu, "val": heldout(Refinement(lam, mu, iters, eps))})
        return tried[-1]

    best = min((score(lam, 0.0) for lam in lams), key=lambda t: t["val"], default=None)
    if best is None:
        return None, tried
    if midpoints:
        grid = sorted(lams)
        i = grid.index(best["lam"])
        between = [math.sqrt(grid[i] * grid[j]) for j in (i - 1, i + 1) if 0 <= j < len(grid)]
        best = min([best, *(score(lam, 0.0) for lam in between)], key=lambda t: t["val"])
    best = min([best, *(score(best["lam"], mu) for mu in mus)], key=lambda t: t["val"])
    if not best["val"] < network * (1 - min_gain):
        return None, tried
    return Refinement(best["lam"], best["mu"], iters, eps), tried
