"""Tasks (acquisition regimes) and task families for meta-learning.

A :class:`Task` fixes one acquisition regime: sampling pattern and acceleration
R, centre fraction, number of coils, noise level, image source (contrast),
plane and matrix size, plus a seed. Its sampling mask is fixed by the task
(``make_mask(kind, size, R, cf, seed)``, ``[1, 1, H, W]``); each example j
draws its own anatomy, coil array, phase and noise from
``np.random.default_rng([seed, j])``, so example j of a task is the same
whenever and wherever it is simulated::

    x_j = m_j ⊙ exp(iφ_j)                m_j: source image (max 1), φ_j smooth phase
    y_j = M ⊙ (F(S_j ⊙ x_j) + n_j)       σ = noise_rel · RMS(F(S_j ⊙ x_j))

(:mod:`mpcli.data.simulate`). For a ``fastmri:DIR`` source the k-space is the
file's own (resized, :class:`~mpcli.data.sources.FastMRISource`): x_j = RSS
image, S_j = coil images / RSS (so Σ|S|² = 1 and A x_j equals the file's
k-space exactly), plus optional extra noise.

A :class:`TaskFamily` is a distribution over tasks (lists of choices and
uniform ranges); ``DEFAULT_TRAIN_FAMILY`` is what the shipped meta-prior is
trained on and ``HELD_OUT`` are families it never sees, each changing one
factor (plane, contrast, mask, acceleration, coils, matrix) or all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from mpcli.data.simulate import coil_maps, simulate_kspace, smooth_phase
from mpcli.data.sources import get_source
from mpcli.physics.fft import ifft2c
from mpcli.physics.masks import MASK_KINDS, make_mask
from mpcli.physics.sense import Sense

COIL_MODELS: tuple[str, ...] = ("classic", "biot_savart")
"""How a task simulates its coils: ``classic`` = ring or Gaussian profiles drawn per example
(:func:`~mpcli.data.simulate.coil_maps`, what the shipped prior saw), ``biot_savart`` = loops
placed in 3-D around the slice (:func:`~mpcli.data.simulate.biot_savart_maps`)."""


class Batch(NamedTuple):
    """Simulated examples of one task.

    Attributes:
        x: ground truth ``[B, H, W]`` complex64 (image × smooth phase).
        y: masked noisy k-space ``[B, C, H, W]`` complex64.
        A: SENSE operator with the true maps ``[B, C, H, W]`` and the task's
           mask ``[1, 1, H, W]``.
    """

    x: torch.Tensor
    y: torch.Tensor
    A: Sense


@dataclass(frozen=True)
class Task:
    """One acquisition regime (see the module docstring)."""

    mask_kind: str = "random"
    acceleration: float = 4.0
    center_fraction: float = 0.08
    n_coils: int = 8
    noise_rel: float = 0.0
    source: str = "mni_t1"
    plane: str = "axial"
    size: tuple[int, int] = (128, 128)
    seed: int = 0
    coil_model: str = "classic"

    def __post_init__(self):
        if self.mask_kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {self.mask_kind!r}; expected one of {MASK_KINDS}")
        if self.coil_model not in COIL_MODELS:
            raise ValueError(f"unknown coil model {self.coil_model!r}; expected one of {COIL_MODELS}")
        if self.n_coils < 1 or self.acceleration < 1 or self.noise_rel < 0 or self.seed < 0:
            raise ValueError(f"invalid task {self}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def mask(self) -> torch.Tensor:
        """The task's sampling mask, float32 ``[1, 1, H, W]`` (fixed by the seed)."""
        m = make_mask(self.mask_kind, self.size, self.acceleration, self.center_fraction,
                      self.seed)
        return m.to(torch.float32).expand(1, 1, *self.size).contiguous()  # [1, 1, H, W]

    def sample(self, n: int, generator: torch.Generator | int = 0) -> Batch:
        """Simulate ``n`` examples: indices j = start … start + n − 1.

        ``generator``: an int is the start index itself; a ``torch.Generator``
        draws the start index. Example j depends only on (task, j).
        """
        if isinstance(generator, torch.Generator):
            start = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        else:
            start = int(generator)
        mask = self.mask()  # [1, 1, H, W]
        src = get_source(self.source)
        xs, ks, ss = [], [], []
        for j in range(start, start + n):
            rng = np.random.default_rng([self.seed, j])
            if hasattr(src, "kspace_slices"):
                x, k, maps = self._own_kspace(src, rng)
            else:
                img = next(src.images(self.plane, self.size, rng))  # [H, W]
                x = img * np.exp(1j * smooth_phase(self.size, rng, rng.uniform(0.2, 1.5)))
                kind = str(rng.choice(["ring", "gaussian"])) if self.coil_model == "classic" else self.coil_model
                maps = coil_maps(self.n_coils, self.size, rng, kind=kind)
                k = simulate_kspace(x, maps, self.noise_rel, rng)  # [C, H, W]
            xs.append(torch.as_tensor(np.asarray(x, dtype=np.complex64)))
            ks.append(torch.as_tensor(k))
            ss.append(torch.as_tensor(maps))
        x = torch.stack(xs)  # [B, H, W]
        maps = torch.stack(ss)  # [B, C, H, W]
        y = torch.stack(ks) * mask  # [B, C, H, W]
        return Batch(x, y, Sense(maps, mask))

    def _own_kspace(self, src, rng: np.random.Generator):
        """x = RSS, S = coil images / RSS, k = file k-space (+ extra noise)."""
        k = next(src.kspace_slices(self.size, rng, file_index=self.seed))  # [C, H, W]
        coil = ifft2c(torch.from_numpy(k)).numpy()  # [C, H, W]
        rss = np.sqrt((np.abs(coil) ** 2).sum(0))  # [H, W]
        maps = np.where(rss > 1e-6 * rss.max(), coil / np.maximum(rss, 1e-30), 0)
        if self.noise_rel > 0:
            sigma = self.noise_rel * float(np.sqrt(np.mean(np.abs(k) ** 2)))
            noise = rng.normal(size=(2, *k.shape)) * (sigma / np.sqrt(2))
            k = k + noise[0] + 1j * noise[1]
        return rss.astype(np.complex64), k.astype(np.complex64), maps.astype(np.complex64)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(**{**d, "size": tuple(d.get("size", (128, 128)))})


def _uniform(rng: np.random.Generator, lo_hi, digits: int = 3, log: bool = False) -> float:
    """Uniform on [lo, hi] (``log``: log-uniform, lo > 0), rounded; one draw of ``rng`` either way."""
    lo, hi = lo_hi
    if not hi > lo:
        return float(lo)
    if log:
        return round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), digits)
    return round(float(rng.uniform(lo, hi)), digits)


@dataclass(frozen=True)
class TaskFamily:
    """A distribution over tasks: choices (tuples) and uniform ranges (lo, hi).

    ``accelerations``, ``center_fractions``, ``noise_rel`` are uniform on
    [lo, hi] (R rounded to an integer: equispaced masks need one; ``noise_rel``
    log-uniform when ``noise_log``); ``n_coils`` uniform integer in [lo, hi];
    ``mask_kinds``, ``sources``, ``planes``, ``sizes`` uniform choices.
    """

    mask_kinds: tuple[str, ...] = ("random", "equispaced", "gaussian")
    accelerations: tuple[float, float] = (2.0, 6.0)
    center_fractions: tuple[float, float] = (0.06, 0.1)
    n_coils: tuple[int, int] = (4, 12)
    noise_rel: tuple[float, float] = (0.0, 0.02)
    sources: tuple[str, ...] = ("mni_t1",)
    planes: tuple[str, ...] = ("axial", "coronal")
    sizes: tuple[tuple[int, int], ...] = ((128, 128),)
    coil_models: tuple[str, ...] = ("classic",)
    noise_log: bool = False

    def __post_init__(self):
        if self.noise_log and not 0 < self.noise_rel[0] <= self.noise_rel[1]:
            raise ValueError(f"a log-uniform noise_rel needs 0 < lo <= hi, got {self.noise_rel}")

    def sample_task(self, rng: np.random.Generator) -> Task:
        """Draw one task (its seed too) from the family."""
        r = float(round(_uniform(rng, self.accelerations)))
        return Task(
            mask_kind=str(rng.choice(list(self.mask_kinds))),
            acceleration=max(1.0, r),
            center_fraction=_uniform(rng, self.center_fractions),
            n_coils=int(rng.integers(self.n_coils[0], self.n_coils[1] + 1)),
            noise_rel=_uniform(rng, self.noise_rel, 4, log=self.noise_log),
            source=str(rng.choice(list(self.sources))),
            plane=str(rng.choice(list(self.planes))),
            size=tuple(self.sizes[int(rng.integers(len(self.sizes)))]),
            seed=int(rng.integers(0, 2**31 - 1)),
            # drawn last and only when there is a choice: older families keep their exact draws
            coil_model=str(rng.choice(list(self.coil_models))) if len(self.coil_models) > 1 else self.coil_models[0],
        )

    def contains(self, task: Task) -> bool:
        """True when ``task`` lies in the support of this family (seed ignored)."""
        def within(v, lo_hi):
            return lo_hi[0] - 1e-9 <= v <= lo_hi[1] + 1e-9

        return (task.mask_kind in self.mask_kinds
                and within(task.acceleration, (round(self.accelerations[0]), round(self.accelerations[1])))
                and within(task.center_fraction, self.center_fractions)
                and within(task.n_coils, self.n_coils)
                and within(task.noise_rel, self.noise_rel)
                and task.source in self.sources and task.plane in self.planes
                and task.coil_model in self.coil_models
                and tuple(task.size) in {tuple(s) for s in self.sizes})

    def to_config(self) -> dict:
        """Plain JSON/TOML-friendly dict (lists instead of tuples)."""
        d = asdict(self)
        return {k: v if k == "noise_log" else [list(s) for s in v] if k == "sizes" else list(v)
                for k, v in d.items()}

    @classmethod
    def from_config(cls, config: dict) -> TaskFamily:
        """Inverse of :meth:`to_config`; missing keys take the defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown task-family keys: {', '.join(sorted(unknown))}")
        if not isinstance(config.get("noise_log", False), bool):
            raise ValueError(f"noise_log must be true or false, got {config['noise_log']!r}")
        kw = {k: v if k == "noise_log" else tuple(tuple(s) for s in v) if k == "sizes" else tuple(v)
              for k, v in config.items()}
        return cls(**kw)


DEFAULT_TRAIN_FAMILY = TaskFamily()
"""MNI T1 axial + coronal, random/equispaced/Gaussian masks, R 2–6, 4–12 coils,
128×128, noise 0–2 %: what the shipped meta-prior is meta-trained on."""

SCAN_SOURCES_WEIGHTED: tuple[str, ...] = (
    "colin27", "colin27", "colin27", "colin27_hires", "colin27_hires", "macaque_t1", "nibabel_epi",
    "itk_slices", "itk_slices", "mpl_s1045", "pydicom_mr",
    "label_map", "label_map", "label_map", "dead_leaves", "dead_leaves", "natural", "natural",
)
"""Training sources of the scan-like family, repeated to weight the draw (uniform over the tuple):
real MR 11/18, atlas label maps 3/18, dead leaves 2/18, natural images 2/18. No MNI template
(the held-out benchmark's anatomy) and no validation-only source (:data:`mpcli.data.scans.VALIDATION_ONLY`)."""

SCAN_TRAIN_FAMILY = TaskFamily(
    mask_kinds=("random", "equispaced", "gaussian", "poisson"),
    accelerations=(2.0, 12.0),
    center_fractions=(0.03, 0.1),
    n_coils=(4, 32),
    noise_rel=(0.01, 0.25),
    noise_log=True,
    sources=SCAN_SOURCES_WEIGHTED,
    planes=("axial", "coronal", "sagittal"),
    sizes=((128, 128), (160, 128), (128, 160), (192, 192), (192, 160), (224, 192), (256, 256), (256, 208),
           (320, 256), (320, 320), (384, 384), (384, 320)),
    coil_models=("classic", "biot_savart", "biot_savart"),
)
"""Scan-like training (issue 11): real MR and synthetic images, oblique planes, 4–32 coils
(ring/Gaussian or Biot–Savart loops), matrices 128–384 and non-square, 1-D and 2-D masks,
R 2–12, 3–10 % centre, noise 1–25 % log-uniform (median 5 %; 28 % of draws above 10 %). Real scans
are noisier than the first range (0–3 % uniform, until kfull step 1663 of the committed run) assumed:
in the simulation's units the real 4-coil MPRAGE has noise_rel ≈ 0.16 and the real 8-coil Poisson
brain ≈ 0.14 (``bench/noise_level.py``). The second range, 0.3–20 % (median 2.4 %, 16 % of draws above
10 %), left the prior 1 dB under tuned CS on the real MPRAGE. The curriculum
(:mod:`mpcli.meta.curriculum`) narrows the family in early stages."""

HELD_OUT: dict[str, TaskFamily] = {
    # one factor outside the training family at a time …
    "sagittal": TaskFamily(planes=("sagittal",)),
    "contrast": TaskFamily(sources=("mni_t2like", "mni_flairlike"), planes=("axial",)),
    "poisson": TaskFamily(mask_kinds=("poisson",), accelerations=(4.0, 8.0)),
    "acceleration_8": TaskFamily(mask_kinds=("random", "equispaced"), accelerations=(8.0, 8.0),
                                 center_fractions=(0.04, 0.04)),
    "coils_16_20": TaskFamily(n_coils=(16, 20)),
    "matrix": TaskFamily(sizes=((96, 96), (160, 128), (192, 192))),
    "phantom": TaskFamily(sources=("shepp_logan",)),
    # the noise of real scans (bench/noise_level.py: the real MPRAGE ≈ 0.16, the real Poisson brain ≈ 0.14)
    "noise": TaskFamily(noise_rel=(0.1, 0.16)),
    # … and all of them at once
    "all": TaskFamily(mask_kinds=("poisson",), accelerations=(8.0, 8.0),
                      center_fractions=(0.04, 0.04), n_coils=(16, 20),
                      sources=("mni_t2like", "mni_flairlike"), planes=("sagittal",),
                      sizes=((160, 160),)),
}
"""Held-out benchmark families: the meta-prior never sees these regimes."""
