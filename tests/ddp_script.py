"""Tiny stand-ins for meta-training tests, and the torchrun entry point.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_script.py OUT``
meta-trains the tiny network on the tiny task family for two outer steps and
writes the final weights to ``OUT`` (rank 0). ``tests/test_train.py`` compares
them with the same run in one process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpcli.physics.sense import Sense


@dataclass(frozen=True)
class ToyBatch:
    x: torch.Tensor | None  # [B, H, W] complex
    y: torch.Tensor  # [B, C, H, W] complex
    A: Sense


def coil_maps(coils: int, h: int, w: int, dtype=torch.complex64) -> torch.Tensor:
    """Smooth coil maps ``[1, C, H, W]`` with Σ_c |S_c|² = 1."""
    r = torch.linspace(-1, 1, h).reshape(h, 1)
    c = torch.linspace(-1, 1, w).reshape(1, w)
    maps = []
    for k in range(coils):
        a = 2 * np.pi * k / coils
        mag = torch.exp(-((r - 0.7 * np.cos(a)) ** 2 + (c - 0.7 * np.sin(a)) ** 2))
        maps.append(mag * torch.exp(1j * (k * 0.5 + r + c)))
    m = torch.stack(maps)  # [C, H, W]
    m = m / (m.abs() ** 2).sum(0, keepdim=True).sqrt()
    return m.unsqueeze(0).to(dtype)


@dataclass(frozen=True)
class ToyTask:
    """Random smooth complex images, a column mask with ``accel`` and a 2-line centre."""

    size: int = 8
    coils: int = 2
    accel: int = 2
    noise: float = 0.0
    dtype: torch.dtype = torch.complex64

    def sample(self, n: int, generator: torch.Generator) -> ToyBatch:
        h = w = self.size
        rdt = torch.float64 if self.dtype == torch.complex128 else torch.float32
        z = torch.randn(n, 2, h // 2, w // 2, generator=generator, dtype=rdt)
        z = nn.functional.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        x = torch.complex(z[:, 0], z[:, 1]).to(self.dtype)  # [B, H, W]
        cols = torch.rand(n, 1, 1, w, generator=generator, dtype=rdt) < 1.0 / self.accel
        cols[..., w // 2 - 1 : w // 2 + 1] = True
        mask = cols.expand(n, 1, h, w).to(rdt)  # [B, 1, H, W]
        A = Sense(coil_maps(self.coils, h, w, self.dtype).expand(n, -1, -1, -1), mask)
        y = A(x)  # [B, C, H, W]
        if self.noise:
            y = y + self.noise * mask * torch.randn(y.shape, generator=generator, dtype=self.dtype)
        return ToyBatch(x=x, y=y, A=A)


@dataclass(frozen=True)
class ToyFamily:
    size: int = 8
    coils: int = 2
    dtype: torch.dtype = torch.complex64

    def sample_task(self, rng: np.random.Generator) -> ToyTask:
        return ToyTask(self.size, self.coils, int(rng.integers(2, 4)), dtype=self.dtype)

    def to_config(self) -> dict:
        return {"toy": True, "size": self.size, "coils": self.coils}


class ToyNet(nn.Module):
    """One gradient step of data consistency, then a residual 2-layer CNN."""

    def __init__(self, features: int = 4):
        super().__init__()
        self.step = nn.Parameter(torch.tensor(0.5))
        self.conv1 = nn.Conv2d(2, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, 2, 3, padding=1)

    def forward(self, y: torch.Tensor, A) -> torch.Tensor:
        x = A.adjoint(y)  # [B, H, W]
        x = x - self.step * A.adjoint(A(x) - y)
        z = torch.view_as_real(x).permute(0, 3, 1, 2)  # [B, 2, H, W]
        z = z + self.conv2(torch.tanh(self.conv1(z)))
        return torch.view_as_complex(z.permute(0, 2, 3, 1).contiguous())  # [B, H, W]


def toy_config(**kw):
    from mpcli.meta.train import MetaTrainConfig

    base = {"steps": 2, "tasks_per_step": 3, "inner_steps": 2, "inner_lr": 0.05, "inner_loss": "mc",
            "outer_loss": "l2", "outer_lr": 1e-2, "batch_size": 2, "checkpoint_every": 1, "val_every": 0,
            "seed": 3, "device": "cpu", "network": {"arch": "toy"}, "tasks": {"toy": True}}
    base.update(kw)
    return MetaTrainConfig(**base)


def toy_model(seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet()


def main(out: str) -> None:
    from mpcli.meta import distributed as ddp
    from mpcli.meta.train import meta_train

    torch.set_num_threads(1)
    info = ddp.init_from_env("cpu")
    try:
        meta_train(toy_config(inner_loss="ssdu"), Path(out), model=toy_model(), family=ToyFamily(), dist=info)
    finally:
        ddp.shutdown(info)


if __name__ == "__main__":
    main(sys.argv[1])
