"""Reconstruction losses, all with one signature.

Every loss is a callable ::

    loss(x_hat, y, A, model, x=None) -> 0-dim Tensor

with ``x_hat`` ``[B, H, W]`` complex (the network output on ``(y, A)``),
``y`` ``[B, C, H, W]`` complex k-space, ``A`` the :class:`~mpcli.physics.sense.Sense`
operator that produced ``y``, ``model`` a callable ``(y, A) -> x̂`` already bound
to the current parameters (losses that re-run the network use it), and ``x``
``[B, H, W]`` the ground truth (supervised losses only). Per-sample values are
averaged over the batch. Losses that only re-run the network (ssdu, wssdu) set
``needs_x_hat = False``: callers may then pass ``x_hat=None`` and skip a
forward pass (``bench/step_cost.py``: a 4-slice 256² SSDU step back-propagated
together peaks at 1.9 GB instead of 4.1 GB).

Supervised (need ``x``):
    l2    ‖x̂ − x‖² / (H W)                       (mean squared error)
    l1    ‖x̂ − x‖₁ / (H W)
    ssim  1 − SSIM(|x̂|, |x|), data range = max|x| per sample (fastMRI, 7×7 window)
    psnr  −PSNR(x̂, x) in dB, data range = max|x| per sample (weights each example by its own error)

Measurement-only (never look at ``x``):
    mc     ‖A x̂ − y‖² / ‖y‖²                    (measurement consistency)
    ssdu   ‖A_Λ f(y_Θ, A_Θ) − y_Λ‖² / ‖y_Λ‖²     (Yaman et al. 2020; Ω = Θ ⊔ Λ)
    wssdu  Σ_{j∈Λ} |A f(y_Θ, A_Θ) − y|_j² / (1 − K_j) / ‖y‖²   (Millard & Chiew 2023)
    ei     mc + ‖T x̂ − f(A T x̂, A)‖² / ‖x̂‖²    (equivariant imaging, Chen et al. 2021)

Randomised losses (ssdu, wssdu, ei) draw their splits/transforms from a
``torch.Generator`` seeded by ``(seed, call number)``: the sequence of draws is
a pure function of the seed, and :meth:`reseed` restarts it (the trainer reseeds
per task so that runs, resumed runs and multi-process runs draw alike). The
operator is never modified: splitting builds new operators with
``A.with_mask``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Model = Callable[[torch.Tensor, object], torch.Tensor]


def _per_sample_sq(v: torch.Tensor) -> torch.Tensor:
    """Σ |v|² over all but the first axis → ``[B]``."""
    return (v.real**2 + v.imag**2 if v.is_complex() else v * v).reshape(v.shape[0], -1).sum(dim=1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def acquired_mask(y: torch.Tensor, A) -> torch.Tensor:
    """The acquired set Ω of ``A`` as a float mask ``[B, 1, H, W]`` (1 = sampled)."""
    B, _, H, W = y.shape
    m = torch.broadcast_to(A.mask, (B, A.mask.shape[-3] if A.mask.dim() >= 3 else 1, H, W))
    return (m[:, :1] > 0).to(y.real.dtype)  # [B, 1, H, W]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (numpy SeedSequence; any key order matters)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class _Seeded:
    """Mixin: a generator per call, from (seed, call number)."""

    seed: int = 0

    def reseed(self, seed: int) -> None:
        """Restart the draw sequence at ``seed``."""
        self.seed = int(seed)
        self._calls = 0

    def _generator(self) -> torch.Generator:
        calls = getattr(self, "_calls", 0)
        self._calls = calls + 1
        return torch.Generator().manual_seed(derive_seed(self.seed, calls))


# --------------------------------------------------------------------------- supervised


def _need_x(x: torch.Tensor | None, name: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"the {name} loss is supervised and needs the ground truth x")
    return x


class SupervisedL2:
    """Mean squared error (1/HW)‖x̂ − x‖², averaged over the batch."""

    def __call__(self, x_hat, y, A, model, x=None):
        x = _need_x(x, "l2")
        return (_per_sample_sq(x_hat - x) / x[0].numel()).mean()


class SupervisedL1:
    """Mean absolute error (1/HW)Σ|x̂ − x|, averaged over the batch."""

    def __call__(self, x_hat, y, A, model, x=None):
        x = _need_x(x, "l1")
        return (x_hat - x).abs().reshape(x.shape[0], -1).mean(dim=1).mean()


class SupervisedPSNR:
    """−PSNR per sample (dB), averaged: (1/B) Σ_b 10 log10(‖x̂_b − x_b‖²/(HW) / max|x_b|²).

    The mean PSNR over scans is what evaluation reports; an L1 or L2 loss is
    dominated by the hardest examples (largest errors), so a network trained
    with it may stay ~0.5 % off on well-posed scans where CS reaches 50 dB. The
    log weights every example by its own error: ∂/∂x̂ ∝ (x̂ − x)/MSE_b.
    """

    def __call__(self, x_hat, y, A, model, x=None):
        x = _need_x(x, "psnr")
        # |d|² as Re² + Im²: the gradient of |d| is undefined where d = 0 (an all-zero target and output)
        mse = torch.view_as_real(x_hat - x).pow(2).reshape(x.shape[0], -1).mean(dim=1) * 2  # [B]
        peak = x.abs().reshape(x.shape[0], -1).amax(dim=1).detach().pow(2)  # [B]
        return (10 * torch.log10(mse.clamp_min(1e-20) / peak.clamp_min(1e-20))).mean()


class SupervisedSSIM:
    """1 − SSIM(|x̂|, |x|) with data range max|x| per sample (fastMRI)."""

    def __call__(self, x_hat, y, A, model, x=None):
        x = _need_x(x, "ssim")
        xa, ha = x.abs(), x_hat.abs()  # [B, H, W]
        from mpcli.metrics import ssim_torch

        data_range = xa.reshape(xa.shape[0], -1).amax(dim=1).detach()  # [B]
        return (1.0 - ssim_torch(ha, xa, data_range)).mean()


# ---------------------------------------------------------------------- measurement-only


class MeasurementConsistency:
    """‖A x̂ − y‖² / ‖y‖² per sample, averaged. Blind to Ker(A) (see DESIGN.md)."""

    def __call__(self, x_hat, y, A, model, x=None):
        return _ratio(_per_sample_sq(A(x_hat) - y), _per_sample_sq(y)).mean()


class SSDU(_Seeded):
    """Self-supervision via data undersampling (Yaman et al. 2020), multi-mask.

    For each of ``n_splits`` splits Ω = Θ ⊔ Λ (|Λ| ≈ ρ|Ω|, drawn by
    :func:`mpcli.physics.masks.split_mask`, a small centre block kept in Θ)::

        x̂_Θ = f(M_Θ y, A_Θ),     ℓ = ‖M_Λ (A x̂_Θ − y)‖² / ‖M_Λ y‖²

    and the loss is the mean of ℓ over splits and samples. The ``x_hat`` passed
    in is ignored: the network is re-run on the Θ data.
    """

    needs_x_hat = False

    def __init__(self, rho: float = 0.4, n_splits: int = 1, kind: str = "gaussian", seed: int = 0):
        if not 0 < rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        if n_splits < 1:
            raise ValueError(f"n_splits must be >= 1, got {n_splits}")
        self.rho, self.n_splits, self.kind = float(rho), int(n_splits), kind
        self.reseed(seed)

    def split(self, y: torch.Tensor, A) -> tuple[torch.Tensor, torch.Tensor]:
        """One split (Θ, Λ) of Ω, each ``[B, 1, H, W]``, from the next generator."""
        from mpcli.physics.masks import split_mask

        omega = acquired_mask(y, A)  # [B, 1, H, W]
        theta, lam = split_mask(omega.cpu(), self.rho, self._generator(), kind=self.kind)
        return theta.to(omega.device), lam.to(omega.device)

    def __call__(self, x_hat, y, A, model, x=None):
        total = 0.0
        for _ in range(self.n_splits):
            theta, lam = self.split(y, A)
            x_theta = model(y * theta, A.with_mask(theta))  # [B, H, W]
            y_lam = y * lam  # [B, C, H, W]
            total = total + _ratio(_per_sample_sq(A.with_mask(lam)(x_theta) - y_lam), _per_sample_sq(y_lam)).mean()
        return total / self.n_splits


def lambda_probability(omega: torch.Tensor, rho: float, kind: str, p_min: float = 0.05, p_max: float = 0.95,
                       std_scale: float = 4.0) -> torch.Tensor:
    """Per-point probability 1 − K_j that an acquired point j goes to Λ ``[B, 1, H, W]``.

    uniform:  1 − K = ρ.
    gaussian: 1 − K_j = clip(ρ g_j / mean_{i∈Ω} g_i, p_min, p_max), g the centred
              Gaussian density with σ = size/``std_scale`` (more loss points near
              the centre, as SSDU). Zero outside Ω.
    """
    B, _, H, W = omega.shape
    if kind == "uniform":
        p = torch.full_like(omega, rho)
    elif kind == "gaussian":
        r = torch.arange(H, dtype=omega.dtype, device=omega.device).reshape(H, 1) - H // 2
        c = torch.arange(W, dtype=omega.dtype, device=omega.device).reshape(1, W) - W // 2
        g = torch.exp(-(r**2) / (2 * (H / std_scale) ** 2) - c**2 / (2 * (W / std_scale) ** 2))  # [H, W]
        g = g.expand_as(omega) * omega
        mean_g = g.reshape(B, -1).sum(1) / omega.reshape(B, -1).sum(1).clamp_min(1)  # [B]
        p = (rho * g / mean_g.reshape(B, 1, 1, 1).clamp_min(1e-30)).clamp(p_min, p_max)
    else:
        raise ValueError(f"kind must be 'gaussian' or 'uniform', got {kind!r}")
    return p * omega


class WeightedSSDU(_Seeded):
    """SSDU with independent (Bernoulli) splitting and inverse-probability weights.

    Each acquired point j ∈ Ω is put in Θ (network input) with probability K_j
    and otherwise in Λ (loss), independently (``lambda_probability`` gives
    1 − K_j). The loss weights every Λ point by 1/(1 − K_j) and normalises by
    the full ‖y‖²::

        ℓ = Σ_{j∈Λ} |A f(M_Θ y, A_Θ) − y|_j² / (1 − K_j)  /  ‖y‖²

    so for a prediction that does not depend on the split, E_Λ[ℓ] equals the
    full measurement-consistency loss ‖A x̂ − y‖²/‖y‖² exactly
    (E[1_{j∈Λ}] = 1 − K_j). After the (1 − K)⁻¹ loss weighting of Millard &
    Chiew ("A theoretical framework for self-supervised MR image reconstruction
    using sub-sampling via variable density Noisier2Noise", 2023), written here
    in the conditional form K_j = P(j ∈ Θ | Ω), Ω fixed by the scan (their K
    also folds in the density of Ω itself, which a single scan does not vary). p_max < 1
    keeps every point reachable by Λ (a point always in Θ would have infinite
    weight and break the identity above). ``x_hat`` is ignored.
    """

    needs_x_hat = False

    def __init__(self, rho: float = 0.4, n_splits: int = 1, kind: str = "gaussian", seed: int = 0,
                 p_min: float = 0.05, p_max: float = 0.95):
        if not 0 < p_min <= rho <= p_max < 1:
            raise ValueError(f"need 0 < p_min <= rho <= p_max < 1, got {p_min}, {rho}, {p_max}")
        self.rho, self.n_splits, self.kind = float(rho), int(n_splits), kind
        self.p_min, self.p_max = p_min, p_max
        self.reseed(seed)

    def split(self, y: torch.Tensor, A) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Θ, Λ, 1 − K), each ``[B, 1, H, W]``; Θ ⊔ Λ = Ω."""
        omega = acquired_mask(y, A)  # [B, 1, H, W]
        p = lambda_probability(omega, self.rho, self.kind, self.p_min, self.p_max)
        u = torch.rand(omega.shape, generator=self._generator(), dtype=torch.float64).to(omega.device)
        lam = ((u < p.double()) & (omega > 0)).to(omega.dtype)
        return omega - lam, lam, p

    def __call__(self, x_hat, y, A, model, x=None):
        total = 0.0
        norm = _per_sample_sq(y)  # [B]
        for _ in range(self.n_splits):
            theta, lam, p = self.split(y, A)
            x_theta = model(y * theta, A.with_mask(theta))  # [B, H, W]
            weight = torch.where(lam > 0, 1.0 / p.clamp_min(1e-12), torch.zeros_like(p))  # [B, 1, H, W]
            r = A.with_mask(lam)(x_theta) - y * lam  # [B, C, H, W]
            total = total + _ratio(_per_sample_sq(r * weight.sqrt()), norm).mean()
        return total / self.n_splits


_TRANSFORMS = ("rot90", "flip", "shift")


def _transform(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """A random group action T on images ``[B, H, W]`` (one T for the batch)."""
    H, W = x.shape[-2:]
    if kind == "rot90":
        k = int(torch.randint(1, 4, (), generator=g)) if H == W else 2
        return torch.rot90(x, k, dims=(-2, -1))
    if kind == "flip":
        return torch.flip(x, dims=(-2 if int(torch.randint(0, 2, (), generator=g)) else -1,))
    if kind == "shift":
        sh = int(torch.randint(1, max(H, 2), (), generator=g))
        sw = int(torch.randint(1, max(W, 2), (), generator=g))
        return torch.roll(x, shifts=(sh, sw), dims=(-2, -1))
    raise ValueError(f"unknown transform {kind!r}; expected one of {_TRANSFORMS}")


class EquivariantImaging(_Seeded):
    """Equivariant imaging (Chen, Tachella & Davies 2021)::

        ℓ = base(x̂, y, A) + w ‖T x̂ − f(A T x̂, A)‖² / ‖x̂‖²

    with T drawn per call from ``transforms`` ("rot90|flip|shift", '|'-separated;
    rot90 becomes a 180° rotation on non-square images) and ``base`` a
    measurement-only loss (default: measurement consistency). The invariance
    lets the network learn what A does not measure.
    """

    def __init__(self, transforms: str = "rot90|flip|shift", base: str | Callable = "mc", weight: float = 1.0,
                 seed: int = 0):
        self.transforms = tuple(t.strip() for t in transforms.split("|") if t.strip())
        for t in self.transforms:
            if t not in _TRANSFORMS:
                raise ValueError(f"unknown transform {t!r}; expected one of {_TRANSFORMS}")
        self.base = make_loss(base) if isinstance(base, str) else base
        self.weight = float(weight)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        if hasattr(self.base, "reseed"):
            self.base.reseed(derive_seed(seed, 1))

    def __call__(self, x_hat, y, A, model, x=None):
        g = self._generator()
        kind = self.transforms[int(torch.randint(0, len(self.transforms), (), generator=g))]
        x2 = _transform(x_hat, kind, g)  # [B, H, W]
        x3 = model(A(x2), A)  # [B, H, W]
        ei = _ratio(_per_sample_sq(x3 - x2), _per_sample_sq(x_hat).detach()).mean()
        return self.base(x_hat, y, A, model, x) + self.weight * ei


LOSSES: dict[str, Callable[..., Callable]] = {
    "l2": SupervisedL2,
    "l1": SupervisedL1,
    "ssim": SupervisedSSIM,
    "psnr": SupervisedPSNR,
    "mc": MeasurementConsistency,
    "ssdu": SSDU,
    "wssdu": WeightedSSDU,
    "ei": EquivariantImaging,
}

_MEASUREMENT_ONLY = frozenset({"mc", "ssdu", "wssdu", "ei"})


def make_loss(name: str, **kw) -> Callable:
    """The loss registered as ``name`` (see :data:`LOSSES`), built with ``kw``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name](**kw)


def is_measurement_only(name: str) -> bool:
    """True when loss ``name`` never uses the ground truth (usable at deployment)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return name in _MEASUREMENT_ONLY


def reseed(loss: Callable, seed: int) -> None:
    """Restart a randomised loss's draws at ``seed`` (no-op for the others)."""
    if hasattr(loss, "reseed"):
        loss.reseed(seed)

