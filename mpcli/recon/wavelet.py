"""L1-wavelet CS with cycle spinning: FISTA on one slice, NumPy (or CuPy) FFTs and PyWavelets' db4.

Solves ::

    argmin_x ½‖W^½(F S x − y)‖² + μ/2‖x − x₀‖² + λ‖w ⊙ Ψ x‖₁

(W the sampling mask used as weights, S the coil maps, F the centred orthonormal 2-D FFT, Ψ the
Daubechies-4 wavelet transform of PyWavelets' ``wavedecn`` with zero padding, as sigpy's ``Wavelet``
linop; μ = 0 and w = 1 by default) by FISTA (Beck & Teboulle 2009), step 1/(L + μ)::

    x_k = prox_{αλ‖w ⊙ Ψ·‖₁}(z_{k−1} − α ∇f(z_{k−1})),   ∇f(z) = AᴴA z − Aᴴy + μ(z − x₀)
    t_k = (1 + √(1 + 4 t_{k−1}²)) / 2,   z_k = x_k + (t_{k−1} − 1)/t_k · (x_k − x_{k−1})

with x₀ the start (default 0), z₀ = x₀, t₀ = 1 — sigpy's ``LinearLeastSquares`` with
``GradientMethod`` and a proximal g, as its ``L1WaveletRecon`` uses, with one change: **cycle
spinning** (Coifman & Donoho 1995; Figueiredo & Nowak 2003). Each iteration's shrinkage is applied to
the image rolled by a random shift δ, 0 ≤ δ_d < 2^L per axis (L the wavelet depth), and the result is
rolled back::

    prox(x) = R₋δ Ψᴴ soft(Ψ R_δ x, αλ w) ,   δ redrawn every iteration.

A fixed orthogonal wavelet is not shift-invariant: its thresholding leaves blocky artefacts aligned
with the dyadic grid. Averaged over shifts the regulariser becomes shift-invariant at the cost of
nothing per iteration. BART's ``pics -R W`` does the same. Measured on eight of ``bench/quality.py``'s
held-out tasks: +0.36 to +2.00 dB (+0.98 mean) over the unshifted solver at the best λ of each, in the
same time (``bench/cs_shifts.py``).

The L1 term may be weighted by a reference image's own wavelet coefficients, w_i = ε / (|(Ψ R_δ x₀)_i|
+ ε) at the iteration's shift δ (:class:`WaveletL1`; ``bench/refine_weights.py``). The shifts come
from a generator seeded by the caller, so a reconstruction is reproducible. L is the bound of
:func:`lipschitz_bound` on ‖AᴴA‖ instead of sigpy's 30 power iterations, which cost a quarter of a
60-iteration solve (for unit-RSS coil maps and a sampled centre the two agree to about 1 %; the
minimiser is the same).

Until the seventeenth session this ran on sigpy's operators and solver; ``tests/test_classical.py``
keeps them as the reference (the iterates agree to float rounding, 1e-6). Written out, AᴴA costs
half as much: for even sizes the FFT's centring cancels in Fᴴ W F (checkerboards, see
:meth:`mpcli.physics.sense.Sense.normal`) and for a line mask so do the transforms along the
phase-encode-free axis, and the prox works on PyWavelets' coefficient lists directly. The FFTs run
on CuPy when the arrays are CuPy arrays, the wavelets always on the host.
"""

from __future__ import annotations

import math

import numpy as np
import pywt

DAUBECHIES_4 = "db4"
_FILTER_LENGTH = 8  # taps of db4


def wavelet_depth(n: int, filter_length: int = _FILTER_LENGTH) -> int:
    """Decomposition levels of a length-``n`` axis (PyWavelets' ``dwt_max_level``, ≥ 1)."""
    return max(1, math.floor(math.log2(n / (filter_length - 1))))


def _module(a):
    """NumPy, or CuPy for a CuPy array."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def _host(a) -> np.ndarray:
    """A NumPy array as it is, a CuPy array copied to the host."""
    return a if isinstance(a, np.ndarray) else a.get()


def soft_threshold(t, c: np.ndarray) -> np.ndarray:
    """(|c| − t)₊ · c/|c| elementwise (0 where c = 0), for complex or real ``c`` and thresholds ``t`` ≥ 0
    (a number or an array of c's shape)."""
    mag = np.abs(c)
    return c * (np.maximum(mag - t, 0) / np.maximum(mag, np.finfo(mag.dtype).tiny))


class WaveletL1:
    """The prox of λ‖w ⊙ Ψ x‖₁ for images of ``shape`` (H, W), on the image rolled by a shift δ.

    Ψ is PyWavelets' ``wavedecn(·, "db4", mode="zero")`` at its maximum depth of an image zero-padded
    to even sizes (sigpy's ``Wavelet``); it keeps the coefficients as PyWavelets' list, where sigpy
    packs them into one array — the same prox, elementwise. w = 1 (plain L1-wavelet), or, given a
    ``reference`` image z ``[H, W]`` and a scale ε, w_i = ε / (|(Ψ R_δ z)_i| + ε): coefficients the
    reference has (an edge, a vessel) are shrunk less, those it lacks by the full λ, as in weighted-ℓ1
    CS with prior information (Candès, Wakin & Boyd 2008 reweight by the iterate; here the weights
    come from a network's image). ε is in the units of the image (≈ 1 for the bright tissue after
    :func:`mpcli.recon.classical.l1_wavelet`'s scaling); ε → ∞ is plain L1.
    """

    def __init__(self, shape: tuple[int, int], lam: float, reference=None, eps: float | None = None):
        if reference is not None and not (eps is not None and eps > 0):
            raise ValueError(f"a weighted L1 needs a scale eps > 0, got {eps!r}")
        self.shape, self.lam, self.eps = tuple(shape), float(lam), eps
        self.reference = None if reference is None else _host(reference)
        self.padded = tuple(((n + 1) // 2) * 2 for n in self.shape)
        # sigpy's util.resize: the image sits at offset ⌊P/2⌋ − ⌊n/2⌋ of the padded grid
        self._inside = tuple(slice(p // 2 - n // 2, p // 2 - n // 2 + n) for n, p in zip(self.shape, self.padded))

    def transform(self, x: np.ndarray) -> list:
        """Ψ x as PyWavelets' list [approximation, {"ad", "da", "dd"} per level, coarse to fine]."""
        if self.padded != self.shape:
            z = np.zeros(self.padded, x.dtype)
            z[self._inside] = x
            x = z
        return pywt.wavedecn(x, DAUBECHIES_4, mode="zero")

    def inverse(self, coeffs: list) -> np.ndarray:
        """Ψᴴ (Ψ⁻¹ on Ψ's range) of a coefficient list, cropped to ``shape``."""
        return pywt.waverecn(coeffs, DAUBECHIES_4, mode="zero")[self._inside]

    def prox(self, alpha: float, x, shift: tuple[int, int] = (0, 0)):
        """Ψᴴ soft(Ψ x, αλ w) for an image ``x`` ``[H, W]`` already rolled by ``shift`` (δ picks the
        reference's weights); on x's device."""
        cx = self.transform(_host(x))
        t = alpha * self.lam
        if self.reference is None:
            out = [soft_threshold(t, cx[0])] + [{k: soft_threshold(t, d[k]) for k in d} for d in cx[1:]]
        else:
            cz = self.transform(np.roll(self.reference, shift, axis=(-2, -1)))
            e = self.eps

            def shrink(c, z):
                return soft_threshold(t * e / (np.abs(z) + e), c)

            out = [shrink(cx[0], cz[0])] + [{k: shrink(d[k], dz[k]) for k in d} for d, dz in zip(cx[1:], cz[1:])]
        image = self.inverse(out).astype(x.dtype, copy=False)
        return image if isinstance(x, np.ndarray) else _module(x).asarray(image)


class SliceNormal:
    """x ↦ AᴴA x for one slice, A = W^½ F S: ``maps`` ``[C, H, W]``, ``weights`` ``[H, W]``
    (NumPy or CuPy). For even H and W, AᴴA = (cS)ᴴ Fᴴ W F (cS) with the plain DFT (c the
    checkerboard (−1)^(i+j), which commutes with W); when W is constant along H, Fᴴ W F = F_Wᴴ W F_W."""

    def __init__(self, maps, weights):
        xp = _module(maps)
        self.xp, self.maps, self.weights = xp, maps, weights
        h, w = maps.shape[-2:]
        self.even = h % 2 == 0 and w % 2 == 0
        if self.even:
            i, j = xp.arange(h)[:, None], xp.arange(w)[None, :]
            self.cmaps = maps * (1 - 2 * ((i + j) % 2)).astype(maps.real.dtype)  # [C, H, W]
            self.cmaps_conj = xp.conj(self.cmaps)
            first = weights[:1]
            self.line = first if bool((weights == first).all()) else None  # [1, W] or None

    def adjoint(self, y):
        """Aᴴ y = Σ_c conj(S_c) Fᴴ(W^½ y_c) for k-space ``y`` ``[C, H, W]``."""
        xp = self.xp
        k = xp.fft.ifftshift(self.weights**0.5 * y, axes=(-2, -1))
        return (xp.conj(self.maps) * xp.fft.fftshift(xp.fft.ifft2(k, norm="ortho"), axes=(-2, -1))).sum(axis=0)

    def __call__(self, x):
        xp = self.xp
        if not self.even:
            v = xp.fft.fftshift(xp.fft.fft2(xp.fft.ifftshift(self.maps * x, axes=(-2, -1)), norm="ortho"),
                                axes=(-2, -1))
            return self.adjoint(self.weights**0.5 * v)
        v = self.cmaps * x  # [C, H, W]
        if self.line is not None:
            v = xp.fft.ifft(self.line * xp.fft.fft(v, axis=-1, norm="ortho"), axis=-1, norm="ortho")
        else:
            v = xp.fft.ifft2(self.weights * xp.fft.fft2(v, norm="ortho"), norm="ortho")
        return (self.cmaps_conj * v).sum(axis=0)  # [H, W]


def solve(y, maps, weights, lam: float, iters: int, seed: int, cycle_spin: bool = True,
          device_id: int = -1, x0=None, mu: float = 0.0, eps: float | None = None):
    """One slice: ``y`` ``[C, H, W]``, ``maps`` ``[C, H, W]``, ``weights`` ``[H, W]`` (NumPy, or
    CuPy on GPU ``device_id``; −1 is the CPU) → the ``[H, W]`` complex image, on the same device.

    ``seed`` seeds the shifts; ``cycle_spin=False`` solves sigpy's ``L1WaveletRecon`` problem
    (with the step of :func:`lipschitz_bound`).
    ``x0`` ``[H, W]`` starts the iterations (default 0); with ``mu`` > 0 the objective gains
    μ/2‖x − x0‖² (x0 a prior image, e.g. a network's reconstruction); with ``eps`` the L1 term
    is weighted by x0's own wavelet coefficients (:class:`WaveletL1`).
    """
    if (mu > 0 or eps is not None) and x0 is None:
        raise ValueError("mu > 0 or eps needs a prior (start) image")
    if device_id >= 0:
        import cupy

        with cupy.cuda.Device(device_id):
            return _fista(y, maps, weights, lam, iters, seed, cycle_spin, x0, mu, eps)
    return _fista(y, maps, weights, lam, iters, seed, cycle_spin, x0, mu, eps)


def _fista(y, maps, weights, lam, iters, seed, cycle_spin, x0, mu, eps):
    xp = _module(y)
    rng = np.random.default_rng(seed)
    shape = tuple(maps.shape[1:])  # (H, W)
    normal = SliceNormal(maps, weights)
    aty = normal.adjoint(weights**0.5 * y)  # the data term is ½‖W^½(A x − y)‖², as in L1WaveletRecon
    step = lipschitz_bound(maps, weights) + mu
    alpha = 1.0 / step if step > 0 else 1.0
    regulariser = WaveletL1(shape, lam, None if eps is None else x0, eps)
    max_shift = tuple(2 ** wavelet_depth(n) for n in shape) if cycle_spin else (1, 1)
    x = xp.zeros(shape, y.dtype) if x0 is None else x0.copy()
    z, t = x, 1.0
    for _ in range(iters):
        grad = normal(z) - aty
        if mu:
            grad = grad + mu * (z - x0)
        shift = tuple(int(rng.integers(0, m)) for m in max_shift)
        v = xp.roll(z - alpha * grad, shift, axis=(-2, -1))
        x_new = xp.roll(regulariser.prox(alpha, v, shift), tuple(-s for s in shift), axis=(-2, -1))
        t_new = (1 + (1 + 4 * t**2) ** 0.5) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
    return x


def lipschitz_bound(maps, weights) -> float:
    """L = max_r Σ_c |S_c(r)|² · max_k w(k) ≥ ‖AᴴA‖ for A = W^½ F S (NumPy or CuPy arrays).

    ‖W^½ F S x‖² ≤ max w · Σ_c ‖F S_c x‖² = max w · Σ_r |x(r)|² Σ_c |S_c(r)|² ≤ L ‖x‖².
    """
    xp = _module(maps)
    return float((xp.abs(maps) ** 2).sum(axis=0).max() * xp.abs(weights).max())
