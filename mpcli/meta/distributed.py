"""Multi-process meta-training on PyTorch's own engine (``torch.distributed``).

Launch with ``torchrun --nproc_per_node=P …``: every process builds the same θ
(same seed), draws the same tasks for an outer step, computes the hypergradient
of its share of them — task i goes to rank i mod P — and the per-rank sums are
all-reduced and divided by the number of tasks::

    g = (1/T) Σ_{r} Σ_{i ≡ r (mod P)} ∇_θ L_outer(φ_i(θ); T_i)

which is the single-process gradient up to the order of the floating-point sum.
Every rank then takes the same Adam step, so θ stays identical everywhere;
rank 0 alone writes logs, checkpoints and weights.

Backend: NCCL on CUDA, Gloo on CPU. Without torchrun's environment
(``RANK``/``WORLD_SIZE`` absent or ``WORLD_SIZE`` = 1) everything runs in one
process and the collectives are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


def init_from_env(device_type: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``PORT``
    through the ``env://`` init method). ``device_type`` "cuda" selects NCCL and
    binds this process to GPU ``LOCAL_RANK``; anything else selects Gloo; None
    means "cuda" when a GPU is available. Idempotent: an already initialised
    group is reused. Returns :data:`SINGLE` when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` under NCCL, else ``device``."""
    if info.backend == "nccl":
        return torch.device(f"cuda:{info.local_rank}")
    return device


def shard(n: int, info: DistInfo) -> list[int]:
    """The task indices of ``range(n)`` this rank handles: i with i mod P = rank."""
    return [i for i in range(n) if i % info.world_size == info.rank]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Σ over ranks of ``t`` (returns ``t`` itself in a single process)."""
    if info.is_distributed:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.is_distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op in a single process)."""
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
