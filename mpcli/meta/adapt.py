"""Measurement-only adaptation of a (meta-)prior to new scans: ``mp adapt``.

Starting at θ* (the shipped meta-prior, or a site prior), run the inner problem
of meta-training on the new scans only::

    φ ← step(φ; ∇ [ L_inner(f_φ; y_T, A_T) + λ/2 ‖φ − θ*‖² ])

where L_inner is a measurement-only loss (default SSDU, see AdaptConfig) and (y_T, A_T) the
acquired k-space *minus* a fixed self-validation set Γ ⊂ Ω (zero-shot SSDU,
Yaman et al. 2022): Ω = T ⊔ Γ, |Γ| ≈ ``val_fraction``·|Ω|, drawn once,
uniformly outside the centre and like the acquisition: whole phase-encode
lines of a line mask, single samples of a 2-D one (:func:`holdout`). After each step the validation loss ::

    L_val(φ) = ‖A_Γ f_φ(y_T, A_T) − y_Γ‖² / ‖y_Γ‖²

is measured; adaptation stops when it has not improved for ``patience`` steps
and returns the best φ. Reconstruction afterwards uses all of Ω.

Before the first step, MoDL's data-consistency weight μ is chosen on the same
validation loss (:func:`search_mu`: μ·k for k on a log grid, the prior's other
weights fixed), and the steps start from, and are drawn towards, that θ*_k.

Last, CS around the adapted network's image (:mod:`mpcli.recon.refine`) is
scored on the same split (on a scan of one slice, on a second draw of Γ too), its (λ, μ)
chosen by L_val with every held-out sample weighted by 1 / (k-space power at its
radius) (``refine_whiten``), so that the outer k-space, where the candidates
differ, counts as much as the centre; the
choice, or none when the network alone predicts Γ as well, is part of the
result and of the adapted weights file, and ``mp reconstruct --method adapted``
applies it.

Where L_val cannot judge a scan, θ* comes back unchanged, with the reason: when a scan's coil maps
come from fewer than ``min_calibration`` calibration lines, or when the prior predicts Γ no better
than zeros (``max_prior_error``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from mpcli.meta.batches import take
from mpcli.meta.functional import (
    Params,
    bind,
    params_of,
    tree_detach,
    tree_sqnorm,
    tree_sub,
)
from mpcli.meta.inner import init_opt_state, inner_step
from mpcli.meta.losses import acquired_mask, derive_seed, make_loss, reseed
from mpcli.meta.lowrank import LowRankDelta
from mpcli.physics.coils import centred_acs_width, spectral_weight
from mpcli.physics.masks import split_like_acquisition
from mpcli.physics.sense import Sense, sense
from mpcli.recon.network import MU_PARAMS
from mpcli.recon.refine import EPS, REWEIGHT, Refinement, choose_refinement
from mpcli.scan import Scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptation settings.

    Defaults: SSDU, λ = 0.01, Adam 1e-3 — the inner problem of the meta-training
    stages (the first prior's, the curriculum's ``meta``), after a search of μ
    (``mu_factors``, :func:`search_mu`). ``bench/adapt_defaults.py`` (bench/results/
    adapt_defaults.md) ranked plain MC first on its two held-out tasks (+1.0 dB
    mean gain over the prior vs +0.3–0.4 dB for SSDU, mostly from one task), but
    on the sample scan MC lost 0.36 dB against the prior while SSDU gained
    0.30 dB (27.27 vs 26.97 dB), and MC is the loss the paper shows drifting
    towards zero-filling; so SSDU stays the default and MC is one flag away.

    Budget (``bench/adapt_budget.py``, 16-slice 256² T2-like sagittal volume):
    patience 4 with 4 self-validation slices gives the same PSNR as the
    previous 8/8 (+1.56 dB over the prior, best step 1 in both) in 30 s instead
    of 90 s. The best step is often the first: one Adam step moves every weight
    by ≈ lr·sign(g), so the result depends on the SSDU split drawn (±0.3 dB
    between draws: back-propagating the 4 slices together, i.e. other draws,
    gave +1.91 dB). 2 slices per step: −0.02 dB here but −1.0 dB in an earlier
    run, so 4 stay. Slices are back-propagated one at a time (``chunk``,
    gradients summed; ``bench/step_cost.py``): a 4-slice step peaks at 1.0 GB
    instead of 1.9 GB, and is faster on CPU.
    """

    loss: str = "ssdu"
    steps: int = 40
    lr: float = 1e-3
    lam: float = 1e-2
    optimizer: str = "adam"
    val_fraction: float = 0.1
    patience: int = 4
    # a step counts as better only if it lowers the self-validation loss by this fraction of the best so
    # far (the first: of the prior's). With the curriculum prior of kfull step 3616, 0.02 instead of 0.001
    # kept the prior on the sample scan (where a step 1 % better lowered PSNR 33.55 → 33.16 dB) but lost
    # +0.13 dB on the real MPRAGE 4× and +0.12 on the Poisson held-out task, and at 6× chose a step 2 %
    # better that lowered PSNR more (28.69 → 28.48 vs 28.61): the loss's noise is not the whole story
    min_gain: float = 1e-3
    slices_per_step: int = 4
    chunk: int = 1  # slices per backward pass (gradient accumulated): peak memory ∝ chunk
    val_slices: int = 4
    seed: int = 0
    loss_kw: dict = field(default_factory=dict)
    # What adapts and how fast (bench/adapt_what.py, bench/results/adapt_what.md: the curriculum's U-Net prior
    # at kfull step ~700, 3 held-out tasks): all weights at a constant 1e-3 gained +1.06 dB over the prior;
    # cosine schedules with warm-up at 3e-4 / 1e-4 +0.65 / +0.63, biases + μ +0.53, μ alone +0.51.
    params: str = "all"  # what adapts: "all", "mu" (MoDL's μ parameters), "biases" (biases and μ),
    # "head" (the denoiser's two output-side layers and μ) or "lowrank" (rank-``rank`` deltas of every
    # weight, free deltas of biases and μ: mpcli.meta.lowrank)
    rank: int = 4  # with params = "lowrank"
    # MoDL's data-consistency weight chosen by self-validation before any gradient step (search_mu): factors
    # of μ tried (empty: no search), at most 8× either way from the μ the prior gives the scan. Measured in
    # search_mu's docstring; 1/64 … 16 let the R = 8 task whose maps fail fall to 1/64 (−1.9 dB)
    mu_factors: tuple[float, ...] = tuple(2.0**e for e in range(-3, 4))
    mu_lr_scale: float = 1.0  # step size of MoDL's μ parameters relative to ``lr``
    schedule: str = "constant"  # or "cosine": lr·½(1 + cos(π(k−1)/steps)) at step k
    warmup: int = 0  # steps of linear warm-up (lr·k/warmup) before the schedule
    # Last, CS around the adapted network's image (mpcli.recon.refine), (λ, μ) chosen by the same held-out
    # samples, kept only if it predicts them better than the network alone by ``refine_min_gain``. Budget
    # (bench/refine_budget.py, 8 held-out tasks): 45 iterations scored on 2 slices 36.79 / 38.06 dB mean on
    # seeds 0 / 1, 60 on 4 slices 36.55 / 38.01, 30 on 4 36.34 / 37.97; 45 on 2 halves the search's time
    refine: bool = True
    refine_iters: int = 45
    # Of the ``val_slices`` self-validation slices, how many score the candidates. A scan with fewer slices is
    # scored on more draws of Γ, as many as make up the count: one slice, two draws. Measured on the real
    # single-slice MPRAGE at R 4/6/8 × 3 masks (scratch): +0.14 dB over one draw, bench/real_data.py's 6×
    # 29.01 → 30.16 (its one draw held out three calibration lines and the edge line); on 32 simulated
    # tasks two draws of 2 slices for every scan were level with one (−0.00 dB) and cost 13 s more on
    # bench/speed.py's volume (bench/README.md, "The refinement chosen by whitened held-out error"), so
    # scans with enough slices keep one draw
    refine_slices: int = 2
    refine_min_gain: float = 0.0
    # The refinement's L1 weighted by the network's own wavelet coefficients (mpcli.recon.wavelet.WaveletL1,
    # scale ε); None: plain L1-wavelet. +0.40 dB mean over plain L1 on 32 held-out tasks (bench/refine_weights.py)
    refine_eps: float | None = EPS
    # The refinement's candidates scored by the held-out error weighted by 1 / (k-space power at each
    # sample's radius) (mpcli.physics.coils.spectral_weight, from the scored slices' acquired k-space), as the
    # coil-map support is chosen; False: unweighted, as the μ search and the steps are. Regret of the choice
    # among the weighted-L1 candidates 0.42 dB against 0.57 unweighted on 32 held-out tasks
    # (bench/heldout_choice.py); through mp adapt +0.13 dB mean on the same 32, 6 better, 5 worse
    # (bench/refine_weights.py --against unwhitened)
    refine_whiten: bool = True
    # After the λ grid (ratio 3), the geometric midpoints between the best λ and its neighbours are tried
    # too. Through mp adapt on 32 held-out tasks +0.10 dB mean, 8 better, 4 worse (bench/refine_weights.py
    # --against grid); offline the best candidate by the truth gains only +0.05 against +0.15 for the
    # choice, so what it mends is the choice between two grid steps (bench/README.md, "λ between the grid
    # steps")
    refine_midpoints: bool = True
    # Last, a second pass around the first pass's image (its wavelets weight the L1: iteratively reweighted
    # ℓ1), λ at these factors of the first's, kept where it scores better (empty: one pass). Through mp adapt
    # on 32 held-out tasks +0.29 dB mean over one pass, 18 better, 10 worse, positive on each of the four
    # seeds (bench/refine_weights.py --against one-pass; bench/README.md, "A second, reweighted pass")
    refine_reweight: tuple[float, ...] = REWEIGHT
    # When the prior (μ as it gives it) predicts the held-out k-space no better than zeros would (relative
    # error ≥ this), θ* is returned unchanged: no μ, no step, no refinement (inf: never). Measured
    # (bench/heldout_guard.py, bench/README.md "A prior the held-out lines cannot judge"): 3 of 80
    # simulated tasks reach it, all R = 8 with 5 ACS lines (errors 1.12–1.49), and on all three every
    # choice the held-out lines made lowered PSNR (prior 22.86 / 24.85 / 23.97 dB, mp adapt 18.02 /
    # 21.74 / 21.32); the others stay ≤ 0.73, the real scans ≤ 0.03. A random or garbage network also
    # reaches it: this trusts the prior
    max_prior_error: float = 1.0
    # When a scan's coil maps come from fewer fully sampled centre lines than this, θ* is also returned
    # unchanged (0: never). The maps are then poorly determined, and a candidate that fits the data harder
    # through them (a larger μ, a step, CS) can predict the held-out lines better while its image gets worse.
    # Measured (bench/few_calibration.py, bench/README.md "Few calibration lines"; the R = 8 family of
    # bench/quality.py, 128², the same tasks at three centre fractions): with 5-6 lines adapting lost to the
    # prior on most tasks, by up to 5 dB; with 7 or 10-11 lines it gained on most. Lines, not a fraction of
    # the matrix: coil maps are smooth on the scale of the field of view
    min_calibration: int = 7

    def __post_init__(self):
        if self.params not in PARAM_SETS:
            raise ValueError(f"params must be one of {', '.join(PARAM_SETS)}, got {self.params!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.warmup < 0 or not self.mu_lr_scale > 0:
            raise ValueError("warmup must be >= 0 and mu_lr_scale > 0")
        if any(not f > 0 for f in self.mu_factors):
            raise ValueError(f"mu_factors must be positive, got {self.mu_factors!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank!r}")
        if not (0 <= self.min_gain < 1 and 0 <= self.refine_min_gain < 1):
            raise ValueError(f"min_gain and refine_min_gain must be in [0, 1), got {self.min_gain!r}, "
                             f"{self.refine_min_gain!r}")
        if self.min_calibration < 0:
            raise ValueError(f"min_calibration must be >= 0 (0: never keep the prior), got {self.min_calibration!r}")
        if not self.max_prior_error > 0:
            raise ValueError(f"max_prior_error must be positive (inf: never keep the prior), got "
                             f"{self.max_prior_error!r}")
        if self.refine_iters < 1 or self.refine_slices < 1:
            raise ValueError(f"refine_iters and refine_slices must be >= 1, got {self.refine_iters!r}, "
                             f"{self.refine_slices!r}")

    def step_size(self, step: int) -> float:
        """The base step size at step ``step`` = 1 … ``steps`` (warm-up, then the schedule)."""
        lr = self.lr * (min(1.0, step / self.warmup) if self.warmup else 1.0)
        if self.schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * (step - 1) / max(self.steps, 1)))
        return lr

    def rates(self, names, step: int) -> dict[str, float]:
        """Step size per parameter name at ``step``: 0 for parameters that do not adapt."""
        base = self.step_size(step)
        names = list(names)
        chosen = PARAM_SETS[self.params](names)
        return {k: base * (self.mu_lr_scale if k in MU_PARAMS else 1.0) if k in chosen else 0.0 for k in names}


def _output_layers(names: list[str]) -> set[str]:
    """The denoiser's two output-side layers: a U-Net's finest decoder block and 1×1 output
    convolution (``denoiser.up.0``, ``denoiser.out``), a CNN's last two convolutions."""
    unet = {n for n in names if n.startswith(("denoiser.up.0.", "denoiser.out."))}
    if unet:
        return unet
    convs = sorted({int(n.split(".")[2]) for n in names if n.startswith("denoiser.convs.")})
    return {n for n in names if n.startswith(tuple(f"denoiser.convs.{i}." for i in convs[-2:]))}


PARAM_SETS: dict[str, Callable[[list[str]], set[str]]] = {
    "all": lambda names: set(names),
    "mu": lambda names: set(names) & set(MU_PARAMS),
    "biases": lambda names: {n for n in names if n in MU_PARAMS or n.endswith(".bias")},
    "head": lambda names: _output_layers(names) | (set(names) & set(MU_PARAMS)),
    "lowrank": lambda names: set(names),  # names of ψ, the low-rank factors and deltas (adapt() reparametrises)
}
"""Which parameters ``mp adapt`` changes (``AdaptConfig.params``), from all of the network's names."""


class SiteBatch(NamedTuple):
    """Measurements of one scan: no ground truth."""

    x: torch.Tensor | None
    y: torch.Tensor  # [S, C, H, W]
    A: Sense


def scan_batch(scan: Scan, maps: torch.Tensor, device: torch.device) -> SiteBatch:
    """(y, A) of a whole scan on ``device``: A = M F S with the scan's mask."""
    return SiteBatch(None, scan.kspace.to(device), sense(maps.to(device), scan.mask.to(device)))


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` (relative)
    for ``patience`` consecutive updates; remembers the best step."""

    def __init__(self, patience: int, min_delta: float = 1e-3):
        self.patience, self.min_delta = patience, min_delta
        self.best = float("inf")
        self.best_step = 0
        self.bad = 0

    def update(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step``; True when it is time to stop."""
        if value < self.best * (1 - self.min_delta):
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


def holdout(batch: SiteBatch, fraction: float, seed: int,
            split: Callable = split_like_acquisition) -> tuple[SiteBatch, SiteBatch]:
    """Split Ω = T ⊔ Γ once: (training batch on T, validation batch on Γ).

    Γ is drawn like the acquisition (:func:`~mpcli.physics.masks.split_like_acquisition`): whole
    phase-encode lines of a line mask, single samples of a 2-D mask. ``split(omega, fraction,
    generator) → (T, Γ)`` draws it another way (``bench/heldout_choice.py`` compares them).
    """
    omega = acquired_mask(batch.y, batch.A)  # [S, 1, H, W]
    gen = torch.Generator().manual_seed(seed)
    t, g = split(omega.cpu(), fraction, gen)
    t, g = t.to(omega.device), g.to(omega.device)
    return (SiteBatch(None, batch.y * t, batch.A.with_mask(t)),
            SiteBatch(None, batch.y * g, batch.A.with_mask(g)))


def heldout_loss(x: torch.Tensor, val: SiteBatch, weight: torch.Tensor | None = None) -> float:
    """‖A_Γ x − y_Γ‖² / ‖y_Γ‖² of images ``x`` ``[S, H, W]``, summed over the slices; with
    ``weight`` w ``[H, W]`` (e.g. :func:`~mpcli.physics.coils.spectral_weight`) ‖w^½ ·‖² instead."""
    w = 1.0 if weight is None else weight
    r = val.A(x) - val.y
    return float((w * r.abs().pow(2)).sum() / (w * val.y.abs().pow(2)).sum().clamp_min(1e-30))


def validation_loss(model: nn.Module, phi: Params, train: SiteBatch, val: SiteBatch) -> float:
    """‖A_Γ f_φ(y_T, A_T) − y_Γ‖² / ‖y_Γ‖² summed over the given slices."""
    return heldout_loss(_network_image(model, phi, train), val)


def search_mu(theta: Params, val_of: Callable[[Params], float], factors, min_gain: float
              ) -> tuple[Params, float, list[dict]]:
    """θ with MoDL's data-consistency weight scaled by the factor whose self-validation loss is lowest.

    ρ ← ρ + log k multiplies μ = softplus(ρ + w·φ) by ≈ k while μ ≪ 1 (e^x(1 − e^x/2) ≈ softplus(x)):
    the trade-off between the prior and the measurements, chosen as classical regularisation weights are,
    by predicting held-out measurements (L_val). The grid ``factors`` is tried, then the two geometric
    midpoints beside its best; k = 1 stays unless the best lowers L_val by the fraction ``min_gain``.

    Measured (ad hoc, shipped prior, bench/quality.py's four held-out tasks, factors 1/64 … 16, no
    gradient steps): L_val picked the factor with the best PSNR within 1/8 … 8 on three tasks (contrast
    46.18 → 48.07 dB at 1/8, Poisson 46.70 → 47.03 at 1/4, 4-coil noise 27.46 → 29.71 at 8). On the
    R = 8 task with 5 calibration lines, where the ESPIRiT maps cut the anatomy, L_val fell steadily
    towards small μ while PSNR rose towards large μ (1/8: 18.35, 1: 18.89, 16: 19.79; 1/64: 16.84), so
    the grid stops at 8× either way.

    Returns (θ with the chosen ρ, the factor, [{"factor", "val"}] of every factor tried, in order).
    """
    if "rho_mu" not in theta or not factors:
        return theta, 1.0, []

    def shifted(k: float) -> Params:
        return {**theta, "rho_mu": theta["rho_mu"] + math.log(k)} if k != 1.0 else theta

    tried = {k: val_of(shifted(k)) for k in sorted({1.0, *factors})}
    best = min(tried, key=tried.get)
    ladder = sorted(tried)
    i = ladder.index(best)
    for j in (i - 1, i + 1):  # refine between the best and its neighbours
        if 0 <= j < len(ladder):
            k = math.sqrt(best * ladder[j])
            tried[k] = val_of(shifted(k))
    best = min(tried, key=tried.get)
    if not tried[best] < tried[1.0] * (1 - min_gain):
        best = 1.0
    return shifted(best), best, [{"factor": k, "val": v} for k, v in sorted(tried.items())]


@dataclass
class AdaptResult:
    """The adapted parameters and how adaptation went."""

    params: Params
    curve: list[dict]  # {"step", "train", "val", "dist" = ‖φ_k − θ*‖} per step (0: the prior, μ as searched)
    best_step: int
    stopped_early: bool
    seconds: float
    distance: float  # ‖φ_best − θ*‖
    config: dict
    mu_scale: float = 1.0  # the factor of μ chosen by search_mu
    mu_search: list[dict] = field(default_factory=list)  # {"factor", "val"} of every factor tried
    refine: dict | None = None  # the chosen Refinement as a dict, None: the network alone
    # {"lam", "mu", "val", "val_unweighted"} of every candidate: "val" chose it (whitened with
    # ``refine_whiten``), "val_unweighted" is comparable with the curve's
    refine_search: list[dict] = field(default_factory=list)
    kept_prior: str | None = None  # why θ* was returned without looking further (min_calibration,
    # max_prior_error), else None
    val_prior: float = math.nan  # the prior's own self-validation loss (μ as it gives it)


def adapt(model: nn.Module, theta: Params, batches: list[SiteBatch], config: AdaptConfig,
          progress: Callable[[int, int, dict], None] | None = None) -> AdaptResult:
    """Adapt θ* to the scans in ``batches`` (one :class:`SiteBatch` per scan).

    Each step takes ``slices_per_step`` random slices of one scan (scans in
    turn), all randomness from ``config.seed``; before them, μ is chosen by
    :func:`search_mu` (``config.mu_factors``). With ``params = "lowrank"`` the steps
    are taken in ψ (:class:`~mpcli.meta.lowrank.LowRankDelta`, proximity λ/2‖ψ − ψ₀‖²);
    the result, the curve's distances and ``distance`` are in θ's space, φ(ψ). When the prior's
    own self-validation loss is ``config.max_prior_error`` or more, or a scan's coil maps were calibrated on
    fewer than ``config.min_calibration`` centre lines, θ* comes back unchanged and ``kept_prior`` says why.
    """
    t0 = time.perf_counter()
    network, prior = model, tree_detach(theta)  # ``model`` becomes the low-rank wrapper with "lowrank"
    loss = make_loss(config.loss, **config.loss_kw)
    splits = [holdout(b, config.val_fraction, derive_seed(config.seed, i, 17)) for i, b in enumerate(batches)]
    gen = torch.Generator().manual_seed(derive_seed(config.seed, 1))
    val_idx = [torch.randperm(b.y.shape[0], generator=gen)[: config.val_slices].sort().values for b in batches]

    def val_of(phi, net=model) -> float:
        return sum(validation_loss(net, phi, take(t, i), take(g, i))
                   for (t, g), i in zip(splits, val_idx)) / len(splits)

    def keep_prior(why: str, prior_val: float, mu_tried: list[dict]) -> AdaptResult:
        log.warning("mp adapt: %s", why)
        curve = [{"step": 0, "train": None, "val": prior_val, "dist": 0.0}]
        return AdaptResult(prior, curve, 0, False, time.perf_counter() - t0, 0.0, asdict(config), 1.0, mu_tried,
                           kept_prior=why, val_prior=prior_val)

    lines = min(centred_acs_width(b.A.mask) for b in batches)
    if lines < config.min_calibration:
        which = "the coil maps" if len(batches) == 1 else "the coil maps of a scan"
        return keep_prior(f"{which} come from {lines} fully sampled centre lines, fewer than "
                          f"{config.min_calibration}: the held-out measurements cannot judge images made through "
                          f"such maps, the prior is kept as it is", val_of(prior), [])
    # the gradient steps start from, and stay near, the prior with its μ chosen by self-validation
    theta, mu_scale, mu_tried = search_mu(prior, val_of, config.mu_factors, config.min_gain)
    searched = {t["factor"]: t["val"] for t in mu_tried}  # losses the search measured, by factor of μ
    prior_val = searched[1.0] if 1.0 in searched else val_of(prior)
    if prior_val >= config.max_prior_error:
        return keep_prior(f"the prior's relative error predicting the held-out k-space is {prior_val:.3g} >= "
                          f"{config.max_prior_error:g} (1: no better than zeros): the held-out measurements cannot "
                          f"judge this scan, the prior is kept as it is", prior_val, mu_tried)
    as_phi = dict
    if config.params == "lowrank":
        delta = LowRankDelta(model, theta, config.rank, derive_seed(config.seed, 23))
        model, theta, as_phi = delta, prior_params(delta), delta.merged
        val_of = partial(val_of, net=delta)

    phi, state = dict(theta), init_opt_state(config.optimizer, theta)
    best_phi, stopper = phi, EarlyStopping(config.patience, config.min_gain)
    stopper.update(0, searched.get(mu_scale, prior_val))  # φ₀'s loss: without a search φ₀ is the prior
    curve = [{"step": 0, "train": None, "val": stopper.best,
              "dist": float(tree_sqnorm(tree_sub(as_phi(phi), prior)).sqrt())}]
    stopped = False
    for step in range(1, config.steps + 1):
        k = (step - 1) % len(batches)
        train = splits[k][0]
        n = train.y.shape[0]
        pick = torch.randperm(n, generator=gen)[: config.slices_per_step].sort().values
        reseed(loss, derive_seed(config.seed, step))
        phi, state, value = inner_step(model, phi, theta, take(train, pick), loss, config.rates(phi, step),
                                       config.lam, state, create_graph=False, chunk=config.chunk)
        phi = tree_detach(phi)
        val = val_of(phi)
        stop = stopper.update(step, val)
        if stopper.best_step == step:
            best_phi = phi
        record = {"step": step, "train": float(value), "val": val,
                  "dist": float(tree_sqnorm(tree_sub(as_phi(phi), prior)).sqrt())}
        curve.append(record)
        if progress:
            progress(step, config.steps, record)
        if stop:
            stopped = True
            break
    best_phi = tree_detach(as_phi(best_phi))
    distance = float(tree_sqnorm(tree_sub(best_phi, prior)).sqrt())
    refine, refine_tried = None, []
    if config.refine:
        held = [(take(t, i[: config.refine_slices]), take(g, i[: config.refine_slices]))
                for (t, g), i in zip(splits, val_idx)]
        scored = [take(b, i[: config.refine_slices]) for b, i in zip(batches, val_idx)]
        # a scan with fewer slices than refine_slices is scored on as many more draws of Γ as make up the count
        draws = [math.ceil(config.refine_slices / b.y.shape[0]) for b in scored]
        weights = [spectral_weight(b.y, acquired_mask(b.y, b.A)) if config.refine_whiten else None for b in scored]
        held += [holdout(b, config.val_fraction, derive_seed(config.seed, j, 31, k))
                 for j, (b, n) in enumerate(zip(scored, draws)) for k in range(1, n)]
        weights += [w for w, n in zip(weights, draws) for _ in range(1, n)]  # a scan's weight serves its draws
        heldout = _RefinedHeldout([_network_image(network, best_phi, t) for t, _ in held], held, weights)
        refine, refine_tried = choose_refinement(heldout, config.refine_iters, min_gain=config.refine_min_gain,
                                                 eps=config.refine_eps, midpoints=config.refine_midpoints,
                                                 reweight=config.refine_reweight)
        for t in refine_tried:
            t["val_unweighted"] = heldout.unweighted[(t["lam"], t["mu"], tuple(t["reweighted"]))]
    return AdaptResult(best_phi, curve, stopper.best_step, stopped, time.perf_counter() - t0, distance,
                       asdict(config), mu_scale, mu_tried, refine and refine.as_dict(), refine_tried,
                       val_prior=prior_val)


def _network_image(model: nn.Module, phi: Params, batch: SiteBatch) -> torch.Tensor:
    """f_φ(y, A) ``[S, H, W]``, no gradient."""
    with torch.no_grad():
        return bind(model, phi)(batch.y, batch.A)


class _RefinedHeldout:
    """The refinement's held-out loss: the mean over ``held``'s (T, Γ) pairs (scans, and extra draws of a
    short scan) of the held-out error of the network's images from T, refined (or not), each pair's error
    weighted by its ``weights`` entry (None: unweighted);
    ``unweighted[(λ, μ, reweighted)]`` keeps every candidate's unweighted error too ((None, None, ()): the
    network's). Each refinement's images are kept, so that a reweighted pass starts from its first pass's
    without solving it again."""

    def __init__(self, images: list[torch.Tensor], held: list[tuple[SiteBatch, SiteBatch]],
                 weights: list[torch.Tensor | None]):
        self.images, self.held, self.weights = images, held, weights
        self.unweighted: dict[tuple, float] = {}
        self._refined: dict[Refinement, list[torch.Tensor]] = {}

    def refined(self, refine: Refinement) -> list[torch.Tensor]:
        """The images of ``refine`` from T, one per pair (kept)."""
        if refine not in self._refined:
            before = replace(refine, reweighted=refine.reweighted[:-1])
            start = self.refined(before) if refine.reweighted else self.images
            last = refine.passes()[-1]
            self._refined[refine] = [last.apply(t.y, t.A, z) for z, (t, _) in zip(start, self.held)]
        return self._refined[refine]

    def __call__(self, refine: Refinement | None) -> float:
        xs = self.images if refine is None else self.refined(refine)
        n = len(self.held)
        key = (None, None, ()) if refine is None else (refine.lam, refine.mu, refine.reweighted)
        self.unweighted[key] = sum(heldout_loss(x, g) for x, (_, g) in zip(xs, self.held)) / n
        return sum(heldout_loss(x, g, w) for x, (_, g), w in zip(xs, self.held, self.weights)) / n


def prior_params(model: nn.Module) -> Params:
    """θ* as a detached parameter dict."""
    return tree_detach(params_of(model))
