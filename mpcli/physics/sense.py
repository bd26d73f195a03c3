"""Linear operators as immutable values, and the multi-coil SENSE operator.

An operator ``A`` maps ``x`` to ``A(x)``; ``A.H`` is its adjoint, ``A.N`` its
normal operator AᴴA, ``A @ B`` the composition x ↦ A(B(x)). Operators hold
tensors but never change them, so they can be built per sample and passed
through ``torch.func`` transforms.

SENSE (Pruessmann et al. 1999), for one batch of slices::

    A x   = M ⊙ F(S ⊙ x)            x: [B, H, W]  →  y: [B, C, H, W]
    Aᴴ y  = Σ_c conj(S_c) ⊙ Fᴴ(M ⊙ y)

with S the coil maps ``[B, C, H, W]``, F the centred orthonormal 2-D FFT and M
the binary sampling mask, any shape that broadcasts to ``[B, C, H, W]``
(``[B, 1, H, W]``, ``[1, 1, 1, W]`` …). M is a projection (M² = M), so the
masked forward/adjoint pair is exact.
"""

from __future__ import annotations

import torch

from mpcli.physics.fft import checkerboard, fft2c, ifft2c


class LinearOperator:
    """Base class: subclasses define :meth:`forward` and :meth:`adjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """AᴴA x (subclasses may have a cheaper way than adjoint(forward(x)))."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator Aᴴ."""
        return Adjoint(self)

    @property
    def N(self) -> LinearOperator:
        """The normal operator AᴴA."""
        return Adjoint(self) @ self

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        return Composition(self, other)


class Adjoint(LinearOperator):
    """Aᴴ of an operator A; ``Adjoint(A).H`` is A again."""

    def __init__(self, op: LinearOperator):
        self.op = op

    def forward(self, x):
        return self.op.adjoint(x)

    def adjoint(self, y):
        return self.op.forward(y)

    @property
    def H(self):
        return self.op


class Composition(LinearOperator):
    """x ↦ outer(inner(x)); its adjoint is innerᴴ(outerᴴ(y))."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        self.outer, self.inner = outer, inner

    def forward(self, x):
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y):
        return self.inner.adjoint(self.outer.adjoint(y))


class FFT2C(LinearOperator):
    """Centred orthonormal 2-D FFT on the last two axes (unitary: Fᴴ = F⁻¹)."""

    def forward(self, x):
        return fft2c(x)

    def adjoint(self, y):
        return ifft2c(y)


class Mask(LinearOperator):
    """Multiplication by a binary mask (self-adjoint projection)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def forward(self, x):
        return x * self.mask

    def adjoint(self, y):
        return y * self.mask


class CoilExpand(LinearOperator):
    """x ``[B, H, W]`` ↦ S ⊙ x ``[B, C, H, W]``; adjoint Σ_c conj(S_c) ⊙ y_c."""

    def __init__(self, maps: torch.Tensor):
        self.maps = maps

    def forward(self, x):
        return self.maps * x.unsqueeze(-3)

    def adjoint(self, y):
        return (self.maps.conj() * y).sum(dim=-3)


class Sense(LinearOperator):
    """Multi-coil SENSE operator M F S (see the module docstring).

    Attributes:
        maps: coil sensitivities ``[B, C, H, W]`` complex.
        mask: sampling mask broadcastable to ``[B, C, H, W]``, real {0, 1}.
    """

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor):
        if maps.dim() != 4:
            raise ValueError(f"coil maps must be [B, C, H, W], got {tuple(maps.shape)}")
        self.maps = maps
        self.mask = mask.to(maps.real.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * fft2c(self.maps * x.unsqueeze(-3))  # [B, C, H, W]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (self.maps.conj() * ifft2c(self.mask * y)).sum(dim=-3)  # [B, H, W]

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """AᴴA x = Σ_c conj(S_c) Fᴴ M F (S_c x), the cost of CG and of every unrolled network.

        For even H and W the centring of F is a checkerboard c (see
        :mod:`mpcli.physics.fft`): F_centred = ±c·F·c, and c·M·c = M, so
        AᴴA = (cS)ᴴ Fᴴ M F (cS) with the plain orthonormal DFT F — no shifts.
        When M is constant along H (a line mask: every row the same, checked
        once per operator) the H-transforms cancel too: Fᴴ M F = F_Wᴴ M F_W
        (1-D FFTs only). Odd sizes take the generic adjoint(forward(x)).
        """
        H, W = x.shape[-2:]
        if H % 2 or W % 2:
            return super().normal(x)
        cmaps, line = self._normal_parts()
        v = cmaps * x.unsqueeze(-3)  # [B, C, H, W]
        if line is not None:
            v = torch.fft.ifft(line * torch.fft.fft(v, dim=-1, norm="ortho"), dim=-1, norm="ortho")
        else:
            v = torch.fft.ifft2(self.mask * torch.fft.fft2(v, norm="ortho"), norm="ortho")
        return (cmaps.conj() * v).sum(dim=-3)  # [B, H, W]

    def _normal_parts(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(c ⊙ S with c[i, j] = (−1)^(i + j), the mask as ``[..., 1, W]`` when it is
        constant along H else None), computed once per operator."""
        if getattr(self, "_parts", None) is None:
            cmaps = self.maps * checkerboard(*self.maps.shape[-2:], self.maps.real.dtype, self.maps.device)
            first = self.mask[..., :1, :]
            line = first if bool((self.mask == first).all()) else None
            self._parts = (cmaps, line)
        return self._parts

    def with_mask(self, mask: torch.Tensor) -> Sense:
        """The same coils with another sampling mask (used by splitting losses)."""
        return Sense(self.maps, mask)

    def as_composition(self) -> LinearOperator:
        """M ∘ F ∘ S built from the algebra (equal to ``self``; used in tests)."""
        return Mask(self.mask) @ FFT2C() @ CoilExpand(self.maps)


def sense(maps: torch.Tensor, mask: torch.Tensor) -> Sense:
    """Build the SENSE operator for coil ``maps`` ``[B, C, H, W]`` and ``mask``."""
    return Sense(maps, mask)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complex inner product <a, b> = Σ conj(a) b over all elements."""
    return (a.conj() * b).sum()


def adjointness_error(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative mismatch |<Ax, y> − <x, Aᴴy>| / (‖Ax‖‖y‖) for test vectors x, y.

    Zero (to rounding) exactly when ``op.adjoint`` is the adjoint of ``op.forward``.
    """
    ax = op.forward(x)
    lhs = inner(ax, y)
    rhs = inner(x, op.adjoint(y))
    scale = ax.abs().pow(2).sum().sqrt() * y.abs().pow(2).sum().sqrt()
    return float((lhs - rhs).abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny))


def max_eigenvalue(op: LinearOperator, x0: torch.Tensor, iters: int = 30) -> float:
    """Largest eigenvalue of AᴴA (= ‖A‖²) by power iteration from ``x0``."""
    x = x0 / x0.abs().pow(2).sum().sqrt()
    lam = torch.zeros((), dtype=x.real.dtype)
    for _ in range(iters):
        z = op.adjoint(op.forward(x))
        lam = z.abs().pow(2).sum().sqrt()
        x = z / lam.clamp_min(1e-30)
    return float(lam)
