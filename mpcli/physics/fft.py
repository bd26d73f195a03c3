"""Centred, orthonormal 2-D FFTs over the last two axes (fastMRI convention).

    fft2c(x)  = fftshift(fft2(ifftshift(x)))  / sqrt(H W)
    ifft2c(k) = fftshift(ifft2(ifftshift(k))) * sqrt(H W)

Both are unitary: ``ifft2c(fft2c(x)) == x`` and ``<fft2c x, y> = <x, ifft2c y>``.
Inputs are complex tensors ``[..., H, W]``.
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal FFT of ``x`` ``[..., H, W]`` (image → k-space)."""
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse FFT of ``k`` ``[..., H, W]`` (k-space → image)."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)


def fft1c(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred orthonormal 1-D FFT along ``dim``."""
    x = torch.fft.ifftshift(x, dim=dim)
    return torch.fft.fftshift(torch.fft.fft(x, dim=dim, norm="ortho"), dim=dim)


def ifft1c(k: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred orthonormal 1-D inverse FFT along ``dim``."""
    k = torch.fft.ifftshift(k, dim=dim)
    return torch.fft.fftshift(torch.fft.ifft(k, dim=dim, norm="ortho"), dim=dim)
