"""Unrolled reconstruction networks f_θ(y, A) for multi-coil MRI.

Both networks take the measured k-space ``y`` ``[B, C, H, W]`` complex64 and the
forward operator ``A`` (a :class:`~mpcli.physics.sense.Sense`, passed in, never
stored) and return the image ``x̂`` ``[B, H, W]`` complex64, for any matrix size
and coil count. They are plain ``nn.Module`` s whose forward mutates nothing, so
they work under ``torch.func.functional_call`` (the meta-learning core).

Scale normalisation (both networks)::

    s_b = max(q_0.99(|Aᴴ y_b|), ε)        (detached, per sample b)
    f(y, A) = s · g(y / s, A)

so ``f(c·y) = c·f(y)`` for every c > 0 (the network is scale equivariant).

PDNet — the paper's unrolled Chambolle–Pock / Condat–Vũ network (Terris & Moreau
2023, after Adler & Öktem's learned primal-dual). K layers, k = 1..K::

    x₀ = Aᴴy,  u₀ = 0
    x_{k}  = x_{k-1} − τ_k (Aᴴ(A x_{k-1} − y) + W_kᵀ u_{k-1})
    u_{k}  = clip(u_{k-1} + γ_k W_k(2x_{k} − x_{k-1}), −λ_k, λ_k)
    x̂ = x_K

W_k is a learned 3×3 convolution from the 2 real channels [Re x, Im x] to F
filters (no bias), W_kᵀ its adjoint (``conv_transpose2d`` with the same weight),
λ_k ``[F]`` learned positive thresholds (the clip is the projection onto the
ℓ∞ ball, i.e. the dual of a learned ℓ1-analysis prior λ‖W x‖₁), τ_k, γ_k
positive steps. Positive quantities are ``softplus`` of free parameters.

Stability at initialisation: with ‖A‖ ≤ 1 (coil maps with Σ|S|² ≤ 1, binary
mask) the Condat–Vũ condition 1/τ − γ‖W‖² > ‖A‖²/2 holds for τ₀ = 1, γ₀ = 0.4
and ‖W_k‖ ≤ 1, which we guarantee by scaling each initial kernel to Frobenius
norm 1/3 (for a 3×3 convolution ‖W‖ ≤ Σ_taps ‖w_tap‖₂ ≤ 3‖w‖_F). Training
may leave that region; the learned steps are what the meta-prior encodes.

ResUnroll — an unrolled proximal-gradient network in the style of MoDL/VarNet::

    x₀ = Aᴴy
    x_k = x_{k-1} − η_k Aᴴ(A x_{k-1} − y) + D_k(x_{k-1}),   x̂ = x_K

with D a small residual CNN on [Re x, Im x]: conv3×3 (2 → F), (depth − 2) ×
[ReLU, conv3×3 (F → F)], ReLU, conv3×3 (F → 2). D is shared across iterations
by default (``shared=True``: fewer parameters, faster meta-learning); η_k > 0
per iteration (η₀ = 1; ‖A‖ ≤ 1 makes the gradient step non-expansive).

Denoisers D (``denoiser`` option of MoDL and ResUnroll):

- ``"cnn"`` (default, the shipped prior): the plain residual CNN above,
  receptive field (2·depth + 1)² pixels.
- ``"unet"``: a U-Net (Ronneberger 2015) with ``levels`` resolutions and
  ``features``·2^l channels at level l; each level two [conv3×3, LeakyReLU]
  blocks, 2×2 average pooling down, bilinear ×2 up and concatenation of the
  skip. Its receptive field covers the whole image at 128² with 4 levels,
  at a CPU cost close to the 5-layer CNN (the coarse levels are cheap).
  Any H, W: the input is zero-padded to a multiple of 2^(levels−1) and the
  output cropped back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCH_VERSION = 1
"""Bumped whenever a change makes old weight files incompatible."""

_EPS = 1e-8  # floor of the scale s (an all-zero input gives s = ε, output 0)


def _softplus_inv(v: float) -> float:
    """The free parameter ρ with softplus(ρ) = v (v > 0)."""
    return math.log(math.expm1(v))


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` complex → ``[B, 2, H, W]`` real ([Re, Im])."""
    return torch.stack((x.real, x.imag), dim=1)  # [B, 2, H, W]


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` real → ``[B, H, W]`` complex (half precision, from autocast, → complex64)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.complex(x[:, 0], x[:, 1])  # [B, H, W]


def robust_scale(xa: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """Per-sample scale s_b = max(q-quantile of |xa_b|, ε), detached.

    Args:
        xa: images ``[B, H, W]`` complex (typically Aᴴy).
    Returns:
        ``[B, 1, 1]`` real, broadcastable against ``[B, H, W]``.
    """
    mag = xa.detach().abs().flatten(1)  # [B, H*W]
    k = max(1, min(mag.shape[1], math.ceil(q * mag.shape[1])))
    s = mag.kthvalue(k, dim=1).values  # [B]
    return s.clamp_min(_EPS)[:, None, None]  # [B, 1, 1]


def _data_grad(x: torch.Tensor, y: torch.Tensor, A) -> torch.Tensor:
    """Aᴴ(Ax − y), the gradient of ½‖Ax − y‖² (``[B, H, W]``)."""
    return A.adjoint(A.forward(x) - y)  # [B, H, W]


class PDNet(nn.Module):
    """Unrolled primal–dual network (see the module docstring).

    Args:
        layers: number of unrolled iterations K (paper: 20).
        filters: channels F of each learned W_k (paper: 40).
        tau: initial primal step τ_k; gamma: initial dual step γ_k;
        threshold: initial λ_k (in units of the robust scale s).
    """

    def __init__(self, layers: int = 20, filters: int = 40, tau: float = 1.0,
                 gamma: float = 0.4, threshold: float = 0.05):
        super().__init__()
        self.layers, self.filters = int(layers), int(filters)
        w = torch.randn(self.layers, self.filters, 2, 3, 3)  # [K, F, 2, 3, 3]
        w = w / w.flatten(1).norm(dim=1)[:, None, None, None, None] / 3.0  # ‖w_k‖_F = 1/3
        self.weight = nn.Parameter(w)
        self.rho_tau = nn.Parameter(torch.full((self.layers,), _softplus_inv(tau)))
        self.rho_gamma = nn.Parameter(torch.full((self.layers,), _softplus_inv(gamma)))
        self.rho_lambda = nn.Parameter(
            torch.full((self.layers, self.filters), _softplus_inv(threshold)))

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        """x̂ = f_θ(y, A): ``y`` ``[B, C, H, W]`` complex → ``[B, H, W]`` complex."""
        s = robust_scale(A.adjoint(y))  # [B, 1, 1]
        y = y / s[:, None]  # [B, C, H, W]
        x = A.adjoint(y)  # [B, H, W]
        b, h, w = x.shape
        u = x.new_zeros((b, self.filters, h, w), dtype=x.real.dtype)  # [B, F, H, W]
        tau = F.softplus(self.rho_tau)  # [K]
        gamma = F.softplus(self.rho_gamma)  # [K]
        lam = F.softplus(self.rho_lambda)[:, None, :, None, None]  # [K, 1, F, 1, 1]
        for k in range(self.layers):
            wk = self.weight[k]  # [F, 2, 3, 3]
            wtu = channels_to_complex(F.conv_transpose2d(u, wk, padding=1))  # [B, H, W]
            x_new = x - tau[k] * (_data_grad(x, y, A) + wtu)  # [B, H, W]
            z = complex_to_channels(2 * x_new - x)  # [B, 2, H, W]
            u = u + gamma[k] * F.conv2d(z, wk, padding=1)  # [B, F, H, W]
            u = torch.clamp(u, -lam[k], lam[k])  # [B, F, H, W]
            x = x_new
        return x * s  # [B, H, W]


class _Denoiser(nn.Module):
    """Residual CNN D: [Re, Im] → correction, ``[B, 2, H, W]`` → ``[B, 2, H, W]``."""

    def __init__(self, features: int, depth: int, out_scale: float = 0.1):
        super().__init__()
        depth = max(2, int(depth))
        chans = [2] + [features] * (depth - 1) + [2]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(depth))
        with torch.no_grad():  # small last layer: start close to plain gradient descent
            self.convs[-1].weight.mul_(out_scale)
            self.convs[-1].bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # channels-last (NHWC) memory: oneDNN's fast convolution layout on CPU (0.107 → 0.066 s
        # per 256² slice, 1 thread); the values are the same, only the strides differ.
        z = z.contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            z = conv(z if i == 0 else F.relu(z))  # [B, F, H, W] … [B, 2, H, W]
        return z.contiguous()


class _UNet(nn.Module):
    """U-Net D: [Re, Im] → correction, ``[B, 2, H, W]`` → ``[B, 2, H, W]``.

    Level l (0 … L−1) has c_l = features·2^l channels; encoder l: two conv3×3 +
    LeakyReLU(0.1) at 1/2^l resolution; decoder l (L−2 … 0): bilinear ×2 up of
    level l+1, concatenate encoder l, two conv3×3 + LeakyReLU; a final 1×1 conv
    (c_0 → 2) initialised small (×``out_scale``) so the unrolled network starts
    close to its plain data-consistency solver.
    """

    def __init__(self, features: int, levels: int, out_scale: float = 0.1):
        super().__init__()
        self.levels = int(levels)
        ch = [int(features) * 2**lv for lv in range(self.levels)]

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1))

        self.down = nn.ModuleList(block(2 if lv == 0 else ch[lv - 1], ch[lv]) for lv in range(self.levels))
        self.up = nn.ModuleList(block(ch[lv] + ch[lv + 1], ch[lv]) for lv in range(self.levels - 1))
        self.out = nn.Conv2d(ch[0], 2, 1)
        with torch.no_grad():
            self.out.weight.mul_(out_scale)
            self.out.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        z = F.pad(z, (0, pw, 0, ph)).contiguous(memory_format=torch.channels_last)  # [B, 2, H', W']
        skips = []
        for lv, enc in enumerate(self.down):
            z = enc(z if lv == 0 else F.avg_pool2d(z, 2))  # [B, c_l, H'/2^l, W'/2^l]
            skips.append(z)
        for lv in range(self.levels - 2, -1, -1):
            z = F.interpolate(z, size=skips[lv].shape[-2:], mode="bilinear", align_corners=False)
            z = self.up[lv](torch.cat((z, skips[lv]), dim=1))  # [B, c_l, …]
        return self.out(z)[..., :h, :w].contiguous()  # [B, 2, H, W]


DENOISERS: tuple[str, ...] = ("cnn", "unet")


def _make_denoiser(kind: str, features: int, depth: int, levels: int) -> nn.Module:
    if kind == "cnn":
        return _Denoiser(features, depth)
    if kind == "unet":
        return _UNet(features, levels)
    raise ValueError(f"unknown denoiser {kind!r}; expected 'cnn' or 'unet'")


class ResUnroll(nn.Module):
    """Unrolled gradient step + residual CNN (see the module docstring).

    Args:
        iters: unrolled iterations K.
        features: CNN width F.
        depth: convolutions per CNN (≥ 2).
        shared: one CNN for all iterations (True) or one per iteration.
        eta: initial data-consistency step η_k.
        denoiser: "cnn" or "unet" (``levels`` resolutions).
    """

    def __init__(self, iters: int = 8, features: int = 32, depth: int = 5,
                 shared: bool = True, eta: float = 1.0, denoiser: str = "cnn", levels: int = 4):
        super().__init__()
        self.iters, self.shared = int(iters), bool(shared)
        n = 1 if self.shared else self.iters
        self.denoisers = nn.ModuleList(_make_denoiser(denoiser, features, depth, levels) for _ in range(n))
        self.rho_eta = nn.Parameter(torch.full((self.iters,), _softplus_inv(eta)))

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        """x̂ = f_θ(y, A): ``y`` ``[B, C, H, W]`` complex → ``[B, H, W]`` complex."""
        s = robust_scale(A.adjoint(y))  # [B, 1, 1]
        y = y / s[:, None]  # [B, C, H, W]
        x = A.adjoint(y)  # [B, H, W]
        eta = F.softplus(self.rho_eta)  # [K]
        for k in range(self.iters):
            d = self.denoisers[0 if self.shared else k]
            dx = channels_to_complex(d(complex_to_channels(x)))  # [B, H, W]
            x = x - eta[k] * _data_grad(x, y, A) + dx  # [B, H, W]
        return x * s  # [B, H, W]


MU_PARAMS = ("rho_mu", "mu_weights")
"""Names of MoDL's data-consistency weight parameters (their own step size in training and adaptation)."""

MU_FEATURES: tuple[str, ...] = ("fraction", "coils", "ring", "noise")
"""The acquisition features μ may depend on (:func:`acquisition_features`)."""
DEFAULT_MU_FEATURES: tuple[str, ...] = MU_FEATURES[:3]
"""Those of a MoDL built without ``mu_features`` (the first adaptive-μ networks)."""
FEATURE_REF = {"fraction": math.log(0.25), "coils": math.log(8.0), "ring": math.log(0.01),
               "noise": math.log(0.01)}
"""φ_ref of :func:`acquisition_features`: R = 4, 8 coils, σ̂ = 0.01 (either estimate)."""
FEATURE_CLIP = 3.0
"""Each centred feature is clipped to [−3, 3] (R from ≈ 0.2 to 80, 0.4 to 160 coils): a scan
far outside what the network was trained on gets the μ of the nearest trained regime."""
RAYLEIGH_MEDIAN = math.sqrt(math.log(2.0))
"""Median of |n| for complex Gaussian n with E|n|² = 1."""


def _ring_level(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Median |y| over the acquired samples of the outer ring 0.7 ≤ |k|/k_max ≤ 1 (inside
    the elliptical shutter of 2-D masks): ``y`` ``[B, C, H, W]``, ``m`` ``[B, 1, H, W]`` → ``[B]``."""
    B, H, W = y.shape[0], y.shape[-2], y.shape[-1]
    ky = (torch.arange(H, device=y.device) - H // 2) / max(H // 2, 1)
    kx = (torch.arange(W, device=y.device) - W // 2) / max(W // 2, 1)
    r = (ky[:, None] ** 2 + kx[None, :] ** 2).sqrt()  # [H, W]
    sel = (m[:, 0] > 0) & (r >= 0.7) & (r <= 1.0)  # [B, H, W]
    mag = y.detach().abs()  # [B, C, H, W]
    out = []
    for b in range(B):
        vals = mag[b][:, sel[b]]  # [C, n]
        out.append(vals.median() if vals.numel() else mag.new_tensor(1e-2))
    return torch.stack(out).clamp_min(1e-8)


def _calibration_level(y: torch.Tensor, m: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """σ̂ per sample from the calibration matrix (:func:`mpcli.physics.coils.noise_level`),
    or, where it has too few calibration windows (small 2-D calibration squares), the ring
    level as the σ of pure noise would give it (``ring`` / :data:`RAYLEIGH_MEDIAN`) → ``[B]``."""
    from mpcli.physics.coils import noise_level

    out = []
    for b in range(y.shape[0]):
        sigma = noise_level(y[b].detach(), m[b, 0] > 0)
        out.append(float(ring[b]) / RAYLEIGH_MEDIAN if sigma is None else sigma)
    return torch.tensor(out, device=y.device).clamp_min(1e-8)


def acquisition_features(y: torch.Tensor, A, names: tuple[str, ...] = DEFAULT_MU_FEATURES) -> torch.Tensor:
    """φ_b = (log f_b for f in ``names``) − :data:`FEATURE_REF`, clipped: ``[B, len(names)]`` (detached).

    For the *normalised* k-space ``y`` ``[B, C, H, W]`` (so a level is relative to the
    image scale):

    - ``fraction``: p, the acquired fraction of the k-space grid (mean of the mask);
    - ``coils``: C;
    - ``ring``: median |y| over the acquired outer ring of k-space (0.7 ≤ |k|/k_max ≤ 1),
      where noise dominates the signal — but fine texture raises it too;
    - ``noise``: σ̂ from the calibration matrix's lower singular values
      (:func:`mpcli.physics.coils.noise_level`), which texture hardly moves; where the
      calibration region is too small it falls back to the ring level read as noise.
      One SVD per slice and call (0.25 s for 16 coils at 256² on one CPU thread), and
      ``bench/mu_calibration.py`` found it no better than ``ring`` for choosing μ.
    """
    unknown = set(names) - set(MU_FEATURES)
    if unknown:
        raise ValueError(f"unknown μ feature(s) {', '.join(sorted(unknown))}; expected {', '.join(MU_FEATURES)}")
    B, C, H, W = y.shape
    mask = A.mask.detach()
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))[:, :1]  # [B or 1, 1, H or 1, W]
    m = (mask.expand(B, 1, H, W) > 0).to(torch.float32)  # [B, 1, H, W]
    ring = _ring_level(y, m) if {"ring", "noise"} & set(names) else None
    cols = []
    for name in names:
        if name == "fraction":
            cols.append(m.mean(dim=(1, 2, 3)).clamp_min(1e-6))
        elif name == "coils":
            cols.append(torch.full((B,), float(C), device=y.device))
        elif name == "ring":
            cols.append(ring)
        else:
            cols.append(_calibration_level(y, m, ring))
    phi = torch.stack(cols, dim=1).to(torch.float32).log()  # [B, F]
    ref = torch.tensor([FEATURE_REF[n] for n in names], device=y.device, dtype=phi.dtype)
    return (phi - ref).clamp(-FEATURE_CLIP, FEATURE_CLIP).detach()


def remap_mu_weights(w: torch.Tensor, old: tuple[str, ...], new: tuple[str, ...]) -> torch.Tensor:
    """MoDL's ``mu_weights`` ``[len(old)]`` for the features ``new`` ⊇ ``old``: each weight
    moves with its feature's name, an added feature's is 0 (so μ, and the network, stay
    the same function). ``ValueError`` if ``new`` drops one of ``old``."""
    dropped = [n for n in old if n not in new]
    if dropped:
        raise ValueError(f"the μ features may only grow; {', '.join(dropped)} would be dropped")
    out = w.new_zeros(len(new))
    for i, name in enumerate(old):
        out[new.index(name)] = w[i]
    return out


class MoDL(nn.Module):
    """Model-based deep learning (Aggarwal et al. 2019): exact data consistency by CG.

    ::

        x₀ = (AᴴA + μI)⁻¹ Aᴴy                       (CG-SENSE with Tikhonov μ)
        z_k = x_{k-1} + D(x_{k-1})                   (shared residual CNN)
        x_k = (AᴴA + μI)⁻¹ (Aᴴy + μ z_k)             (``cg_iters`` CG steps from x_{k-1})

    μ > 0 is learned (softplus). With ``adaptive_mu`` it is learned *per scan*
    from features of the acquisition (:func:`acquisition_features`)::

        μ_b = softplus(ρ + w · φ_b),   φ_b = (log p_b, log C_b, log σ̂_b, …) − φ_ref

    (p the acquired fraction 1/R, C the coil count, σ̂ noise levels of the
    normalised k-space; ``mu_features`` names them), w ``[F]`` initialised to 0
    (then μ_b = softplus(ρ), the plain MoDL). One μ for every scan was measured to be the network's ceiling
    on well-posed scans: on a 20-coil R5 equispaced validation task μ/10 gained
    8 dB, on an 8-coil R4 task μ/10 lost 1.7 dB (README, "Training a scan-like
    prior"). Autograd differentiates through the unrolled CG iterations.
    Starting from CG-SENSE, an untrained MoDL (D ≈ 0) is already a regularised
    SENSE reconstruction; training only has to learn the prior.

    Args:
        iters: unrolled denoise/data-consistency iterations K.
        features, depth: the CNN D (as in ResUnroll).
        cg_iters: CG iterations per data-consistency step.
        mu: initial μ.
        denoiser: "cnn" (``depth`` convolutions) or "unet" (``levels`` resolutions).
        adaptive_mu: μ per scan from its acquisition features (see above).
        mu_features: which (:data:`MU_FEATURES`); default the first three.
    """

    def __init__(self, iters: int = 5, features: int = 32, depth: int = 5, cg_iters: int = 6,
                 mu: float = 0.05, denoiser: str = "cnn", levels: int = 4, adaptive_mu: bool = False,
                 mu_features: tuple[str, ...] = DEFAULT_MU_FEATURES):
        super().__init__()
        self.iters, self.cg_iters = int(iters), int(cg_iters)
        self.denoiser = _make_denoiser(denoiser, features, depth, levels)
        self.rho_mu = nn.Parameter(torch.tensor(_softplus_inv(mu)))
        self.mu_features = tuple(mu_features)
        if adaptive_mu:
            self.mu_weights = nn.Parameter(torch.zeros(len(self.mu_features)))

    def mu(self, y: torch.Tensor, A) -> torch.Tensor:
        """μ per sample ``[B, 1, 1]`` for the normalised k-space ``y`` ``[B, C, H, W]``."""
        rho = self.rho_mu.expand(y.shape[0])  # [B]
        if hasattr(self, "mu_weights"):
            rho = rho + acquisition_features(y, A, self.mu_features) @ self.mu_weights
        return F.softplus(rho)[:, None, None]

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        """x̂ = f_θ(y, A): ``y`` ``[B, C, H, W]`` complex → ``[B, H, W]`` complex."""
        from mpcli.recon.cg import conjugate_gradient

        s = robust_scale(A.adjoint(y))  # [B, 1, 1]
        y = y / s[:, None]  # [B, C, H, W]
        mu = self.mu(y, A)  # [B, 1, 1]
        aty = A.adjoint(y)  # [B, H, W]

        def normal(v):
            return A.normal(v) + mu * v  # [B, H, W]

        x, _ = conjugate_gradient(normal, aty, iters=2 * self.cg_iters, tol=0.0)
        for _ in range(self.iters):
            z = x + channels_to_complex(self.denoiser(complex_to_channels(x)))  # [B, H, W]
            x, _ = conjugate_gradient(normal, aty + mu * z, iters=self.cg_iters, tol=0.0, x0=x)
        return x * s  # [B, H, W]


_ARCHS: dict[str, type[nn.Module]] = {"pdnet": PDNet, "resunroll": ResUnroll, "modl": MoDL}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "pdnet": {"arch": "pdnet", "layers": 20, "filters": 40},
    "resunroll": {"arch": "resunroll", "iters": 8, "features": 16, "depth": 4,
                  "shared": True},
    "modl": {"arch": "modl", "iters": 5, "features": 32, "depth": 5, "cg_iters": 6, "mu": 0.05},
}

MODL_UNET: dict[str, Any] = {"arch": "modl", "iters": 5, "features": 16, "levels": 4, "denoiser": "unet",
                             "cg_iters": 6, "mu": 0.05}
"""MoDL with a shared 4-level U-Net (16 base channels, 482k parameters): the network of
the scan-like training curriculum (:mod:`mpcli.meta.curriculum`)."""


def default_config(arch: str) -> dict:
    """Default network configuration for ``arch`` ("pdnet" or "resunroll")."""
    if arch not in _DEFAULTS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(_ARCHS)}")
    return dict(_DEFAULTS[arch])


CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "layers": (1, 100), "iters": (1, 100), "cg_iters": (1, 100),
    "filters": (1, 512), "features": (1, 512), "depth": (2, 32), "levels": (1, 6),
}
"""Allowed range of each integer hyper-parameter (a weight file's metadata is untrusted)."""
REAL_BOUND = 1e4
"""Real hyper-parameters (steps, thresholds, μ) must be finite with 0 < value ≤ this."""
MAX_PARAMETERS = 50_000_000
"""At most 200 MB of float32 weights."""


def check_config(config: dict) -> None:
    """``ValueError`` unless every hyper-parameter is of its type and within bounds.

    A weight file's ``config`` decides loop counts and tensor sizes: an
    unchecked ``iters = 1e9`` would run for days and ``features = -1`` would
    crash, so every field is checked before anything is built.
    """
    for key, value in config.items():
        if key == "arch":
            continue
        if key in ("shared", "adaptive_mu"):
            if not isinstance(value, bool):
                raise ValueError(f"'{key}' must be true or false, got {value!r}")
        elif key == "mu_features":
            if not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value) \
                    or not set(value) <= set(MU_FEATURES):
                raise ValueError(f"'mu_features' must be distinct names among {', '.join(MU_FEATURES)}, "
                                 f"got {value!r}")
        elif key == "denoiser":
            if value not in DENOISERS:
                raise ValueError(f"'denoiser' must be one of {', '.join(DENOISERS)}, got {value!r}")
        elif key in CONFIG_BOUNDS:
            lo, hi = CONFIG_BOUNDS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0 < value <= REAL_BOUND:
            raise ValueError(f"'{key}' must be a finite number in (0, {REAL_BOUND:g}], got {value!r}")


def build_network(config: dict) -> nn.Module:
    """Build the network described by ``config`` = {"arch": ..., hyper-parameters}.

    Missing hyper-parameters take the architecture defaults; unknown keys raise
    ``ValueError`` (a weight file from another code version must not load
    silently into a different network), as do values out of bounds
    (:func:`check_config`) and networks of more than :data:`MAX_PARAMETERS`.
    """
    if not isinstance(config, dict):
        raise ValueError(f"network configuration must be a table, got {type(config).__name__}")
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if not isinstance(arch, str) or arch not in _ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(_ARCHS)}")
    kwargs = {k: v for k, v in default_config(arch).items() if k != "arch"}
    kwargs.update(cfg)
    check_config(kwargs)
    try:
        with torch.device("meta"):  # count the parameters before allocating them
            n = sum(p.numel() for p in _ARCHS[arch](**kwargs).parameters())
        if n > MAX_PARAMETERS:
            raise ValueError(f"{arch} with {n} parameters exceeds the limit of {MAX_PARAMETERS}")
        return _ARCHS[arch](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad configuration for {arch}: {err}") from None
