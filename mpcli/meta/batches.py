"""Batches of slices ``(x, y, A)``: take slices, move to a device, replace fields.

A batch is any dataclass or NamedTuple with ``x`` (ground truth ``[B, H, W]`` or
None), ``y`` (k-space ``[B, C, H, W]``) and ``A`` (a
:class:`~mpcli.physics.sense.Sense` with maps ``[B, C, H, W]`` and a mask that is
per slice ``[B, 1, H, W]`` or shared). Nothing is modified: every helper returns
a new batch that shares the untouched tensors.
"""

from __future__ import annotations

import dataclasses

import torch


def replace_fields(batch, **kw):
    """The batch with fields ``kw`` replaced (dataclass or NamedTuple)."""
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **kw)
    return batch._replace(**kw)


def sense_like(A, maps: torch.Tensor, mask: torch.Tensor):
    """An operator of the same type as ``A`` with other maps and mask."""
    return type(A)(maps, mask)


def take(batch, idx) -> object:
    """Slices ``idx`` (a slice or index list) of a batch ``(x, y, A)``."""
    B = batch.y.shape[0]
    A = batch.A
    mask = A.mask[idx] if A.mask.dim() == 4 and A.mask.shape[0] == B else A.mask
    x = None if batch.x is None else batch.x[idx]
    return replace_fields(batch, x=x, y=batch.y[idx], A=sense_like(A, A.maps[idx], mask))


def to_device(batch, device: torch.device):
    """The batch with every tensor on ``device``."""
    A = batch.A
    x = None if batch.x is None else batch.x.to(device)
    return replace_fields(batch, x=x, y=batch.y.to(device), A=sense_like(A, A.maps.to(device), A.mask.to(device)))
