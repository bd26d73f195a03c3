"""Cartesian sampling masks (fastMRI-compatible) and SSDU mask splitting.

Conventions: k-space is ``[S, C, H, W]`` complex (H readout, W phase encode,
centred FFT so DC sits at index ``W // 2``). A 1-D mask selects phase-encode
lines and is returned as float32 ``[1, 1, 1, W]``; a 2-D mask (Poisson-disc)
selects individual samples and is ``[1, 1, H, W]``. Both broadcast against
``kspace``.

The fastMRI mask functions (``RandomMaskFunc``, ``EquispacedMaskFunc``,
``EquispacedMaskFractionFunc``) follow ``fastmri/data/subsample.py``: the same
parameters, the same order of draws from a ``numpy.random.RandomState``, hence
the same masks for the same seed. A call returns ``(mask, num_low_frequencies)``
where ``num_low_frequencies = round(W · center_fraction)`` is the width of the
fully sampled centre block ``[pad, pad + n)``, ``pad = (W − n + 1) // 2``.

Seeding per file: fastMRI seeds with ``tuple(map(ord, fname))``
(:func:`fastmri_seed`); :func:`seed_from_name` turns that into one stable int.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

MASK_KINDS: tuple[str, ...] = ("random", "equispaced", "equispaced_fraction", "gaussian", "poisson")

Seed = int | tuple[int, ...] | None


def fastmri_seed(name: str) -> tuple[int, ...]:
    """fastMRI's per-file seed: the code points of the file name (``(0,)`` if empty)."""
    return tuple(map(ord, name)) or (0,)


def seed_from_name(name: str) -> int:
    """A stable int seed for a file name, in ``[0, 2**31 − 1)``.

    ``RandomState(tuple(map(ord, name)))`` (fastMRI's per-file seeding) draws
    one int: the same name always gives the same seed, on every platform and
    process (unlike ``hash``), and different names give different seeds.
    """
    return int(np.random.RandomState(fastmri_seed(name)).randint(0, 2**31 - 1))


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed: Seed):
    """Reseed ``rng`` for the block, then restore its state (fastMRI ``temp_seed``)."""
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


def _line_mask(mask: np.ndarray) -> torch.Tensor:
    """1-D numpy mask ``[W]`` → float32 tensor ``[1, 1, 1, W]``."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32).reshape(1, 1, 1, -1).copy())


def center_block(num_cols: int, num_low: int) -> np.ndarray:
    """fastMRI centre mask ``[W]``: ones on ``[pad, pad + n)``, ``pad = (W − n + 1) // 2``."""
    mask = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - num_low + 1) // 2
    mask[pad : pad + num_low] = 1
    return mask


class MaskFunc:
    """Base class: fully sampled centre ∪ an acceleration mask outside it.

    Args:
        center_fractions: fraction of low-frequency columns kept; one is chosen
            uniformly per call (paired with ``accelerations`` by index unless
            ``allow_any_combination``).
        accelerations: nominal undersampling factors R.
        allow_any_combination: draw the centre fraction and acceleration
            independently.
        seed: seed of the object's own ``RandomState`` (used when a call gives none).
    """

    def __init__(
        self,
        center_fractions: Sequence[float],
        accelerations: Sequence[float],
        allow_any_combination: bool = False,
        seed: int | None = None,
    ):
        if len(center_fractions) != len(accelerations) and not allow_any_combination:
            raise ValueError(
                "number of center fractions should match number of accelerations "
                "if allow_any_combination is False"
            )
        if not center_fractions or not accelerations:
            raise ValueError("need at least one center fraction and one acceleration")
        self.center_fractions = list(center_fractions)
        self.accelerations = list(accelerations)
        self.allow_any_combination = allow_any_combination
        self.rng = np.random.RandomState(seed)

    def __call__(
        self, shape: Sequence[int], offset: int | None = None, seed: Seed = None
    ) -> tuple[torch.Tensor, int]:
        """Sample a mask for k-space of ``shape`` (``[..., H, W]``, lines along W).

        Returns ``(mask [1, 1, 1, W] float32, num_low_frequencies)``; the mask is
        ``max(centre, acceleration mask)``. ``seed`` (int or tuple) makes the
        call reproducible and leaves the object's own generator untouched.
        """
        if len(shape) < 2:
            raise ValueError("shape should have at least 2 dimensions [..., H, W]")
        with _temp_seed(self.rng, seed):
            center, accel, num_low = self.sample_mask(shape, offset)
        return torch.maximum(center, accel), num_low

    def sample_mask(
        self, shape: Sequence[int], offset: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(centre mask, acceleration mask, num_low_frequencies), masks ``[1, 1, 1, W]``."""
        num_cols = int(shape[-1])
        center_fraction, acceleration = self.choose_acceleration()
        num_low = round(num_cols * center_fraction)
        center = _line_mask(center_block(num_cols, num_low))
        accel = _line_mask(self.calculate_acceleration_mask(num_cols, acceleration, offset, num_low))
        return center, accel, num_low

    def calculate_acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low_frequencies: int
    ) -> np.ndarray:
        """Mask ``[W]`` of the lines outside the centre (subclasses)."""
        raise NotImplementedError

    def choose_acceleration(self) -> tuple[float, float]:
        """(center_fraction, acceleration) drawn as fastMRI does."""
        if self.allow_any_combination:
            return self.rng.choice(self.center_fractions), self.rng.choice(self.accelerations)
        choice = self.rng.randint(len(self.center_fractions))
        return self.center_fractions[choice], self.accelerations[choice]


class RandomMaskFunc(MaskFunc):
    """Centre block of n = round(W·cf) lines, others i.i.d. Bernoulli(p).

    p = (W/R − n) / (W − n), so the expected number of sampled lines is W/R
    (a little more, since random lines may fall inside the centre block).
    """

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        prob = (num_cols / acceleration - num_low_frequencies) / (num_cols - num_low_frequencies)
        return self.rng.uniform(size=num_cols) < prob


class EquispacedMaskFunc(MaskFunc):
    """Centre block plus every R-th line from ``offset`` (random in [0, R) if None).

    Lines are exactly equispaced (GRAPPA-style); with the centre block the true
    acceleration is below R. R must be an integer.
    """

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        step = round(acceleration)
        if abs(step - acceleration) > 1e-9:
            raise ValueError(f"equispaced masks need an integer acceleration, got {acceleration}")
        if offset is None:
            offset = self.rng.randint(0, high=step)
        mask = np.zeros(num_cols, dtype=np.float32)
        mask[offset::step] = 1
        return mask


class EquispacedMaskFractionFunc(MaskFunc):
    """Centre block plus lines at spacing a = R(W − n)/(W − nR), rounded.

    The adjusted spacing makes the total ≈ W/R lines (fastMRI brain data); the
    outer lines are at ``round(offset + k·a)`` for ``offset + k·a < W − 1``, so
    they are only approximately equispaced (fastMRI issue #54).
    """

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        adjusted = (acceleration * (num_low_frequencies - num_cols)) / (
            num_low_frequencies * acceleration - num_cols
        )
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted))
        mask = np.zeros(num_cols, dtype=np.float32)
        samples = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.int64)
        mask[samples] = 1
        return mask


class GaussianMaskFunc(MaskFunc):
    """Variable-density 1-D mask: centre block plus lines drawn by a Gaussian in k.

    Outside the centre block, exactly ``round(W/R) − n`` lines are drawn without
    replacement with probability ∝ exp(−k²/(2σ²)), k = j − W//2, σ = std_fraction·W.
    The total is exactly round(W/R) lines (or n when the centre alone exceeds it).
    ``offset`` is ignored.
    """

    def __init__(self, center_fractions, accelerations, allow_any_combination=False, seed=None,
                 std_fraction: float = 0.25):
        super().__init__(center_fractions, accelerations, allow_any_combination, seed)
        self.std_fraction = std_fraction

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low_frequencies):
        center = center_block(num_cols, num_low_frequencies)
        target = min(num_cols, round(num_cols / acceleration))
        n_draw = max(0, target - num_low_frequencies)
        mask = np.zeros(num_cols, dtype=np.float32)
        candidates = np.flatnonzero(center == 0)
        if n_draw == 0 or candidates.size == 0:
            return mask
        k = candidates - num_cols // 2
        sigma = self.std_fraction * num_cols
        p = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2))
        chosen = self.rng.choice(candidates, size=min(n_draw, candidates.size), replace=False, p=p / p.sum())
        mask[chosen] = 1
        return mask


class PoissonMaskFunc(MaskFunc):
    """2-D variable-density Poisson-disc mask (``sigpy.mri.poisson``).

    A call returns ``(mask [1, 1, H, W] float32, c)`` with a fully sampled
    c × c calibration square, c = round(W·cf); sigpy searches the density so the
    acceleration H·W/|mask| is within 0.1 of R (corners are not sampled).
    sigpy's search fails for a few seeds (256×208, R = 5, c = 20 at one seed in
    the committed training run, which it stopped); the draw is then repeated
    with the next of ``ATTEMPTS`` seeds derived from the first, so the mask is
    still a function of the seed.
    """

    ATTEMPTS = 8

    def sample_mask(self, shape, offset):
        import sigpy.mri

        h, w = int(shape[-2]), int(shape[-1])
        center_fraction, acceleration = self.choose_acceleration()
        calib = round(w * center_fraction)
        sub_seed = int(self.rng.randint(0, 2**31 - 1))
        for attempt in range(self.ATTEMPTS):
            try:
                m = sigpy.mri.poisson((h, w), float(acceleration), calib=(calib, calib),
                                      dtype=np.float32, seed=(sub_seed + 7919 * attempt) % 2**31)
                break
            except ValueError as err:
                if attempt == self.ATTEMPTS - 1:
                    raise ValueError(f"Poisson-disc mask {h}×{w} at R={acceleration}: {err}") from None
        mask = torch.from_numpy(np.ascontiguousarray(m.real, dtype=np.float32)).reshape(1, 1, h, w)
        return mask, torch.zeros_like(mask), calib


_FUNCS: dict[str, type[MaskFunc]] = {
    "random": RandomMaskFunc,
    "equispaced": EquispacedMaskFunc,
    "equispaced_fraction": EquispacedMaskFractionFunc,
    "gaussian": GaussianMaskFunc,
    "poisson": PoissonMaskFunc,
}


def mask_func(kind: str, center_fraction: float, acceleration: float, seed: int | None = None) -> MaskFunc:
    """The mask function of ``kind`` (one of :data:`MASK_KINDS`) for one (cf, R)."""
    if kind not in _FUNCS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_KINDS)}")
    return _FUNCS[kind]([center_fraction], [acceleration], seed=seed)


def make_mask(kind: str, shape: tuple[int, int], acceleration: float, center_fraction: float,
              seed: int) -> torch.Tensor:
    """A reproducible mask for an ``(H, W)`` k-space grid.

    Returns float32 ``[1, 1, 1, W]`` for the 1-D kinds, ``[1, 1, H, W]`` for
    ``"poisson"``; the same arguments always give the same mask.
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be ≥ 1, got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}")
    mask, _ = mask_func(kind, center_fraction, acceleration)(tuple(shape), seed=seed)
    return mask


def _run_through(v: np.ndarray, c: int) -> int:
    """Length of the run of ones in the 1-D boolean ``v`` containing index ``c``."""
    if not v[c]:
        return 0
    zeros = np.flatnonzero(~v)
    left = zeros[zeros < c]
    right = zeros[zeros > c]
    lo = left[-1] + 1 if left.size else 0
    hi = right[0] if right.size else v.size
    return int(hi - lo)


def _square_through(m: np.ndarray, s: int) -> bool:
    """Whether some fully sampled s × s square of ``m [H, W]`` contains the centre."""
    h, w = m.shape
    ch, cw = h // 2, w // 2
    ii = np.zeros((h + 1, w + 1), dtype=np.int64)
    ii[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
    r0 = np.arange(max(0, ch - s + 1), min(ch, h - s) + 1)  # top rows of squares containing ch
    c0 = np.arange(max(0, cw - s + 1), min(cw, w - s) + 1)
    if r0.size == 0 or c0.size == 0:
        return False
    r, c = np.meshgrid(r0, c0, indexing="ij")
    sums = ii[r + s, c + s] - ii[r, c + s] - ii[r + s, c] + ii[r, c]
    return bool((sums == s * s).any())


def acs_width(mask: torch.Tensor | np.ndarray) -> int:
    """Width of the fully sampled k-space centre (autocalibration region).

    ``mask`` is ``[..., H, W]`` (only the first leading index is read). For a
    line mask (H = 1, or all rows equal) this is the length of the run of
    sampled lines containing column W//2; for a 2-D mask the side of the
    largest fully sampled square containing (H//2, W//2). 0 when the centre is
    not sampled. Random lines next to the centre block count: the result is
    ≥ ``num_low_frequencies`` of the mask function.
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.ndim < 2:
        m = m.reshape(1, -1)
    m = m.reshape(-1, *m.shape[-2:])[0] > 0  # [H, W]
    if m.shape[0] == 1 or (m == m[:1]).all():
        return _run_through(m[0], m.shape[1] // 2)
    lo, hi = 0, min(m.shape)  # largest s with _square_through true (monotone in s)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _square_through(m, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def split_mask(
    mask: torch.Tensor,
    rho: float,
    generator: torch.Generator,
    kind: str = "gaussian",
    keep_center: int = 4,
    std_scale: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSDU split of the acquired set Ω into Θ (data consistency) and Λ (loss).

    Θ ∩ Λ = ∅, Θ ∪ Λ = Ω, |Λ| = round(ρ|Ω|) (fewer only when Ω has too few
    samples outside the kept centre). Λ is drawn without replacement from
    Ω minus a ``keep_center`` × ``keep_center`` centre block (always in Θ),
    either uniformly or with probability ∝ exp(−(i−H/2)²/(2σ_H²) −
    (j−W/2)²/(2σ_W²)), σ = size/``std_scale`` (Yaman et al. 2020, SSDU).

    The split happens on the grid the mask is given on: a line mask
    ``[..., 1, W]`` splits whole lines; expand it to ``[..., H, W]`` first to
    split individual samples as SSDU does. Each leading index is split
    independently. Pure: ``mask`` is not modified; ``generator`` seeds the draw.

    Args:
        mask: ``[..., H, W]`` in {0, 1}.
        rho: fraction of Ω put in Λ, in (0, 1).
    Returns:
        ``(theta_mask, lambda_mask)``, both shaped and typed like ``mask``.
    """
    if not 0 < rho < 1:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    if kind not in ("gaussian", "uniform"):
        raise ValueError(f"kind must be 'gaussian' or 'uniform', got {kind!r}")
    h, w = mask.shape[-2:]
    flat = mask.reshape(-1, h * w) > 0  # [N, H·W]
    rows = torch.arange(h, dtype=torch.float64).reshape(h, 1)
    cols = torch.arange(w, dtype=torch.float64).reshape(1, w)
    keep = torch.zeros(h, w, dtype=torch.bool)
    if keep_center > 0:
        kh = min(keep_center, h)
        kw = min(keep_center, w)
        keep[h // 2 - kh // 2 : h // 2 - kh // 2 + kh, w // 2 - kw // 2 : w // 2 - kw // 2 + kw] = True
    if kind == "gaussian":
        sh, sw = max(h / std_scale, 1e-6), max(w / std_scale, 1e-6)
        density = torch.exp(-((rows - h // 2) ** 2) / (2 * sh**2) - ((cols - w // 2) ** 2) / (2 * sw**2))
    else:
        density = torch.ones(h, w, dtype=torch.float64)
    density = density.reshape(-1)  # [H·W]
    lam = torch.zeros_like(flat)  # [N, H·W]
    for n in range(flat.shape[0]):
        omega = flat[n]
        cand = torch.nonzero(omega & ~keep.reshape(-1)).reshape(-1)
        count = min(round(rho * int(omega.sum())), cand.numel())
        if count == 0:
            continue
        if kind == "uniform":
            pick = torch.randperm(cand.numel(), generator=generator)[:count]
        else:
            pick = torch.multinomial(density[cand], count, replacement=False, generator=generator)
        lam[n, cand[pick]] = True
    lam = lam.reshape(mask.shape)
    theta = (mask > 0) & ~lam
    return theta.to(mask.dtype), lam.to(mask.dtype)


def split_like_acquisition(mask: torch.Tensor, rho: float, generator: torch.Generator,
                           keep_center: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`split_mask` (uniform) on the grid the acquisition sampled: whole lines of a line mask.

    ``mask`` ``[..., H, W]``: when every row is the same (phase-encode lines along W) the split
    draws whole columns, when every column is the same (lines along H) whole rows, otherwise (a
    2-D pattern) single samples. Held-out lines test what undersampling by lines removes (the
    missing lines); held-out samples of acquired lines test only interpolation along them.
    """
    if bool((mask == mask[..., :1, :]).all()) and mask.shape[-2] > 1:  # [..., 1, W] lines
        grid = mask[..., :1, :]
    elif bool((mask == mask[..., :, :1]).all()) and mask.shape[-1] > 1:  # [..., H, 1] lines
        grid = mask[..., :, :1]
    else:
        grid = mask
    keep, held = split_mask(grid, rho, generator, kind="uniform", keep_center=keep_center)
    return keep.expand_as(mask).to(mask.dtype), held.expand_as(mask).to(mask.dtype)
