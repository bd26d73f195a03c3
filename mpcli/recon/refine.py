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

A second pass solves the same problem around the first pass's image x̂₁ instead of z (it starts the
iterations, its wavelets give the weights, μ pulls towards it), at λ₂ ≤ λ: iteratively reweighted ℓ1
(Candès, Wakin & Boyd 2008), whose first weights come from the network. The idea: what the first pass
shrank (network texture the data do not support) loses its protection in the second pass's weights, what
it kept keeps it, so a smaller λ₂ can keep more detail.

(λ, μ) are chosen without ground truth, as ``mp adapt`` chooses MoDL's μ
(:func:`mpcli.meta.adapt.search_mu`): on a split Ω = T ⊔ Γ of the acquired
samples, z and x̂ are computed from T alone and scored by the held-out loss
‖A_Γ x̂ − y_Γ‖² / ‖y_Γ‖², in ``mp adapt`` each sample weighted by 1 / (k-space
power at its radius) (``AdaptConfig.refine_whiten``) (:func:`choose_refinement`): λ over a log grid at
μ = 0, then the geometric midpoints between the best λ and its neighbours, then μ over its grid at
the best λ, then λ₂ of a second pass at factors :data:`REWEIGHT` of λ (one pass stays a candidate).
The network's image alone is a candidate too; refinement is kept only when it lowers the held-out loss by
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
The second pass (eighteenth session, ``bench/refine_weights.py --against one-pass``, the same 32):
+0.29 dB mean over one pass (18 better, 10 worse, 4 where the prior is kept; +0.43 / +0.15 / +0.25 /
+0.32 by seed, −0.63 … +1.62 per task), chosen on every task that was refined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

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
REWEIGHT = (1 / 9, 1 / (3 * math.sqrt(3)), 1 / 3, 1 / math.sqrt(3), 1.0)
"""Factors of the chosen λ tried for a second, reweighted pass: at or below the first (√3 was tried on
seeds 0–1 and lost 0.86 dB on a noise task; ``bench/README.md``, "A second, reweighted pass")."""


@dataclass(frozen=True)
class Refinement:
    """CS around a network's image: λ, μ, the FISTA iterations from the image, the weighted L1's ε
    (None: plain L1) and ``reweighted``, the λ of each further pass.

    Pass k + 1 is the same problem around pass k's image x̂_k instead of z (it starts the iterations,
    weights the L1 and anchors μ): iteratively reweighted ℓ1 (Candès, Wakin & Boyd 2008), started from the
    network's weights. Needs ``eps``.
    """

    lam: float
    mu: float
    iters: int = 45
    eps: float | None = None
    reweighted: tuple[float, ...] = ()

    def __post_init__(self):
        if self.reweighted and self.eps is None:
            raise ValueError("reweighted passes need a weighted L1 (eps)")

    def apply(self, y: torch.Tensor, A: Sense, z: torch.Tensor,
              device: torch.device | str | None = None) -> torch.Tensor:
        """x̂ ``[S, H, W]`` complex from k-space ``y`` ``[S, C, H, W]``, ``A`` (maps ``[S, C, H, W]``,
        mask ``[S, 1, H, W]`` or broadcastable) and the network's image ``z`` ``[S, H, W]``;
        computed on ``device`` (default: that of ``y``), returned on that of ``y``."""
        for single in self.passes():
            z = single.apply_once(y, A, z, device)
        return z

    def passes(self) -> list[Refinement]:
        """The passes as one-pass refinements, in order."""
        return [replace(self, lam=lam, reweighted=()) for lam in (self.lam, *self.reweighted)]

    def apply_once(self, y: torch.Tensor, A: Sense, z: torch.Tensor,
                   device: torch.device | str | None = None) -> torch.Tensor:
        """The first pass alone (shapes as :meth:`apply`)."""
        from mpcli.recon.classical import l1_wavelet

        return l1_wavelet(y, A.maps, A.mask, self.lam, self.iters, device=device, start=z, mu=self.mu,
                          eps=self.eps)

    def as_dict(self) -> dict:
        """The fields as JSON-ready values; "reweighted" only when there is a second pass (so a one-pass
        refinement is stored as before it existed)."""
        d = asdict(self)
        if self.reweighted:
            d["reweighted"] = list(self.reweighted)
        else:
            del d["reweighted"]
        return d

    @classmethod
    def from_dict(cls, d) -> Refinement:
        """The refinement a weights file stores; ValueError unless ``d`` is {"lam": λ ≥ 0, "mu": μ ≥ 0,
        "iters": integer ≥ 1} with, optionally, "eps": None or ε > 0 and "reweighted": a list of λ ≥ 0
        (needs ε) (files written before the weighted L1 have no "eps": plain L1, as they were made; files
        written before the reweighted passes have no "reweighted": one pass)."""
        if not isinstance(d, dict) or set(d) - {"eps", "reweighted"} != {"lam", "mu", "iters"}:
            raise ValueError(f"expected the keys lam, mu, iters (and eps, reweighted), got {d!r}")
        lam, mu, iters, eps = d["lam"], d["mu"], d["iters"], d.get("eps")
        more = d.get("reweighted", [])
        if not isinstance(more, list | tuple):
            raise ValueError(f"expected reweighted to be a list of lam, got {d!r}")
        values = (lam, mu, iters, *more) if eps is None else (lam, mu, iters, eps, *more)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        finite = numbers and all(0 <= v < float("inf") for v in (lam, mu, *more))
        if not (finite and isinstance(iters, int) and iters >= 1 and (eps is None or 0 < eps < float("inf"))
                and (eps is not None or not more)):
            raise ValueError(f"expected finite lam, mu >= 0, an integer iters >= 1, eps None or > 0 and "
                             f"reweighted lam >= 0 (with eps only), got {d!r}")
        return cls(float(lam), float(mu), iters, None if eps is None else float(eps), tuple(map(float, more)))


def choose_refinement(heldout: Callable[[Refinement | None], float], iters: int = 45,
                      lams=None, mus=MUS, min_gain: float = 0.0, eps: float | None = EPS,
                      midpoints: bool = True, reweight: tuple[float, ...] = REWEIGHT,
                      ) -> tuple[Refinement | None, list[dict]]:
    """The refinement whose held-out loss ``heldout(r)`` is lowest, or None for the network alone.

    ``heldout(None)`` scores the network's image itself. λ ∈ ``lams`` (default :data:`LAMS_WEIGHTED`
    for the weighted L1 of scale ``eps``, :data:`LAMS` for plain L1, ``eps`` None) is tried at μ = 0;
    with ``midpoints``, then the geometric midpoints √(λ_best λ_n) between the best λ and its grid
    neighbours λ_n (a grid of ratio 3 becomes one of ratio √3 around the best); then μ ∈ ``mus`` at the
    best λ; then, with a weighted L1 (``eps``), a second pass reweighted by the first's image (see
    :class:`Refinement`) at λ·f for f ∈ ``reweight`` (empty: one pass), kept if it scores better than
    the one pass. The best is kept only if its loss is below the network's by the fraction ``min_gain``.
    Returns (the choice, [{"lam", "mu", "reweighted", "val"}] of every candidate in order, the network
    alone as lam = mu = None, reweighted = []).
    """
    lams = (LAMS if eps is None else LAMS_WEIGHTED) if lams is None else lams
    tried = [{"lam": None, "mu": None, "reweighted": [], "val": heldout(None)}]
    network = tried[0]["val"]

    def score(lam: float, mu: float, reweighted: tuple[float, ...] = ()) -> dict:
        r = Refinement(lam, mu, iters, eps, reweighted)
        tried.append({"lam": lam, "mu": mu, "reweighted": list(reweighted), "val": heldout(r)})
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
    if eps is not None:
        best = min([best, *(score(best["lam"], best["mu"], (best["lam"] * f,)) for f in reweight)],
                   key=lambda t: t["val"])
    if not best["val"] < network * (1 - min_gain):
        return None, tried
    return Refinement(best["lam"], best["mu"], iters, eps, tuple(best["reweighted"])), tried
