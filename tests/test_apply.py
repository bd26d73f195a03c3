"""Slice-batched network application: equal to one big batch, and backs off on GPU out-of-memory."""

import pytest
import torch
from torch import nn

from mpcli.errors import DeviceError
from mpcli.recon.apply import network_slices
from mpcli.scan import Geometry, Scan


class _AdjointNet(nn.Module):
    """x̂ = Aᴴy, failing with CUDA out-of-memory when a batch has more than ``limit`` slices."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.calls = limit, []

    def forward(self, y, A):
        self.calls.append(y.shape[0])
        if y.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return A.H(y)


def _scan(slices=5, coils=3, h=8, w=6):
    g = torch.Generator().manual_seed(0)
    k = torch.randn(slices, coils, h, w, dtype=torch.complex64, generator=g)
    mask = torch.ones(slices, 1, h, w)
    scan = Scan(k, mask, Geometry.default(slices), source="x.h5", sha256="0", format="fastmri",
                recon_size=(h, w))
    maps = torch.randn(slices, coils, h, w, dtype=torch.complex64, generator=g)
    return scan, maps


def test_slice_batches_equal_one_batch():
    scan, maps = _scan()
    one = network_slices(_AdjointNet(99), scan, maps, torch.device("cpu"), batch=5)
    two = network_slices(_AdjointNet(99), scan, maps, torch.device("cpu"), batch=2)
    torch.testing.assert_close(one, two)


def test_out_of_memory_halves_the_batch_and_finishes():
    scan, maps = _scan()
    net = _AdjointNet(limit=1)
    out = network_slices(net, scan, maps, torch.device("cpu"), batch=4)
    assert out.shape == (5, 8, 6)
    assert net.calls[:3] == [4, 2, 1] and max(net.calls[3:]) == 1


def test_out_of_memory_at_one_slice_is_a_device_error():
    scan, maps = _scan()
    with pytest.raises(DeviceError, match="one slice per batch"):
        network_slices(_AdjointNet(limit=0), scan, maps, torch.device("cpu"), batch=2)
