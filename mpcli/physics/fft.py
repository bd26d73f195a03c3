"""Centred, orthonormal 2-D FFTs over the last two axes (fastMRI convention).

    fft2c(x)  = fftshift(fft2(ifftshift(x)))  / sqrt(H W)
    ifft2c(k) = fftshift(ifft2(ifftshift(k))) * sqrt(H W)

Both are unitary: ``ifft2c(fft2c(x)) == x`` and ``<fft2c x, y> = <x, ifft2c y>``.
Inputs are complex tensors ``[..., H, W]``.

For an even length N the shifts are modulations, which avoids two copies per
axis (``torch.roll``)::

    fftshift(F(ifftshift(x)))[k] = (−1)^(N/2) (−1)^k F((−1)^n x)[k]

so the centred transform is one FFT between two multiplications by the
checkerboard c[n] = (−1)^n, with the sign (−1)^(N/2) applied once (per axis).
Odd lengths use the shifts.
"""

from __future__ import annotations

import functools

import torch

_DIMS = (-2, -1)


@functools.lru_cache(maxsize=32)
def checkerboard(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """c[i, j] = (−1)^(i + j) as a ``[H, W]`` tensor."""
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return (1 - 2 * ((i + j) % 2)).to(dtype)


def _centred(x: torch.Tensor, transform) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        c = checkerboard(h, w, x.real.dtype, x.device)
        sign = -1.0 if (h // 2 + w // 2) % 2 else 1.0  # (−1)^(H/2 + W/2)
        return transform(x * c, dim=_DIMS, norm="ortho") * (c * sign)
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(transform(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal FFT of ``x`` ``[..., H, W]`` (image → k-space)."""
    return _centred(x, torch.fft.fft2)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse FFT of ``k`` ``[..., H, W]`` (k-space → image)."""
    return _centred(k, torch.fft.ifft2)


def fft1c(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred orthonormal 1-D FFT along ``dim``."""
    x = torch.fft.ifftshift(x, dim=dim)
    return torch.fft.fftshift(torch.fft.fft(x, dim=dim, norm="ortho"), dim=dim)


def ifft1c(k: torch.Tensor, dim: int) -> torch.Tensor:
    """Centred orthonormal inverse 1-D FFT along ``dim``."""
    k = torch.fft.ifftshift(k, dim=dim)
    return torch.fft.fftshift(torch.fft.ifft(k, dim=dim, norm="ortho"), dim=dim)
