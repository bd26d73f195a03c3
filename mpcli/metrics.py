"""Image-quality metrics with fastMRI's definitions (``fastmri/evaluate.py``).

Volumes are real magnitude images ``[S, H, W]`` (numpy). Per volume:

- NMSE = ‖gt − pred‖² / ‖gt‖²
- PSNR = 10 log10(R² / mean((gt − pred)²)), data range R = gt.max() (the
  whole volume) unless ``maxval`` is given
- SSIM = mean over slices of SSIM(gt[s], pred[s]) with the same volume R, using
  scikit-image's algorithm: 7 × 7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariance (N/(N − 1), N = 49), averaged over the pixels whose window lies
  inside the image.

:func:`ssim_torch` is the differentiable, batched SSIM used by :func:`ssim`
and as a training loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mpcli.scan import center_crop

WIN = 7
K1, K2 = 0.01, 0.03


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float | torch.Tensor) -> torch.Tensor:
    """SSIM of real images ``[B, H, W]`` (or ``[H, W]``), differentiable.

    With local means μ, variances σ², covariance σ_xy over 7 × 7 windows
    (sample normalisation 49/48), C1 = (K1·R)², C2 = (K2·R)²::

        S = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))

    averaged over the valid (un-padded) window positions — exactly what
    ``skimage.metrics.structural_similarity(x, y, data_range=R)`` returns,
    since skimage crops the 3-pixel border that its reflected padding touches.

    Args:
        x, y: ``[B, H, W]`` real tensors, H, W ≥ 7.
        data_range: R, a number or a tensor broadcastable to ``[B]``.
    Returns:
        ``[B]`` SSIM per image (a 0-d tensor for ``[H, W]`` inputs), in x's dtype.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    single = x.dim() == 2
    if single:
        x, y = x[None], y[None]
    if x.dim() != 3 or min(x.shape[-2:]) < WIN:
        raise ValueError(f"ssim: expected [B, H, W] with H, W ≥ {WIN}, got {tuple(x.shape)}")
    x4, y4 = x[:, None], y[:, None]  # [B, 1, H, W]
    cov_norm = WIN * WIN / (WIN * WIN - 1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, WIN, stride=1)  # [B, 1, H−6, W−6]

    ux, uy = mean(x4), mean(y4)
    vx = cov_norm * (mean(x4 * x4) - ux * ux)
    vy = cov_norm * (mean(y4 * y4) - uy * uy)
    vxy = cov_norm * (mean(x4 * y4) - ux * uy)
    r = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    c1, c2 = (K1 * r) ** 2, (K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    out = s.mean(dim=(1, 2, 3))  # [B]
    return out[0] if single else out


def _pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"shapes differ: gt {gt.shape} vs pred {pred.shape}")
    return gt, pred


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error."""
    gt, pred = _pair(gt, pred)
    return float(np.mean((gt - pred) ** 2))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ‖gt − pred‖² / ‖gt‖²."""
    gt, pred = _pair(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """PSNR in dB with data range ``maxval`` (default gt.max()); +inf for identical images."""
    gt, pred = _pair(gt, pred)
    maxval = float(gt.max()) if maxval is None else float(maxval)
    with np.errstate(divide="ignore"):  # identical images: +inf, not a RuntimeWarning on a user's terminal
        return float(10 * np.log10(maxval**2 / np.mean((gt - pred) ** 2)))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """Mean over slices of the SSIM of volumes ``[S, H, W]``, data range gt.max()."""
    gt, pred = _pair(gt, pred)
    if gt.ndim != 3:
        raise ValueError(f"ssim expects volumes [S, H, W], got shape {gt.shape}")
    maxval = float(gt.max()) if maxval is None else float(maxval)
    with torch.no_grad():
        per_slice = ssim_torch(torch.from_numpy(gt), torch.from_numpy(pred), maxval)  # [S]
    return float(per_slice.mean())


def center_crop_to(pred, ref):
    """Centre crop ``pred``'s last two axes to ``ref``'s (H, W) (fastMRI convention)."""
    return center_crop(pred, tuple(ref.shape[-2:]))
