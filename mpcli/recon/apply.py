"""Run a reconstruction network over a whole scan, slice-batched.

Memory stays bounded: only ``batch`` slices of k-space, coil maps and
activations live on the device at once; results stream back to the CPU as
cropped magnitude images. On CUDA out-of-memory the batch is halved and the
batch retried; at one slice per batch a :class:`DeviceError` says what to do.
"""

from __future__ import annotations

import numpy as np
import torch

from mpcli.device import is_oom
from mpcli.errors import DeviceError
from mpcli.physics.sense import sense
from mpcli.scan import Scan, center_crop


def network_slices(model: torch.nn.Module, scan: Scan, maps: torch.Tensor, device: torch.device,
                   batch: int = 4) -> torch.Tensor:
    """Complex network output for every slice, ``[S, H, W]`` complex64 on the CPU.

    x̂_s = f_θ(y_s, A_s) with A_s = M_s F S_s built per slice batch.
    """
    model = model.to(device).eval()
    n = scan.kspace.shape[0]
    out, start = [], 0
    with torch.no_grad():
        while start < n:
            stop = min(start + batch, n)
            try:
                y = scan.kspace[start:stop].to(device)  # [b, C, H, W]
                A = sense(maps[start:stop].to(device), scan.mask[start:stop].to(device))
                out.append(model(y, A).cpu())  # [b, H, W]
            except Exception as exc:
                if not is_oom(exc):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if batch == 1:
                    raise DeviceError(scan.source, "out of GPU memory with one slice per batch; "
                                      "use --device cpu or a GPU with more memory") from None
                batch = max(1, batch // 2)
                continue
            start = stop
    return torch.cat(out)


def reconstruct_network(model: torch.nn.Module, scan: Scan, maps: torch.Tensor,
                        device: torch.device, batch: int = 4, refine: dict | None = None) -> np.ndarray:
    """Magnitude images ``[S, h, w]`` float32 cropped to ``scan.recon_size``.

    ``refine``: a :class:`~mpcli.recon.refine.Refinement` as a dict (CS around the
    network's image, slice by slice on ``device``), or None for the network alone.
    Zero outside the coil support (Σ_c |S_c|² = 0): A is blind there, so nothing
    measured constrains what the network puts in those pixels.
    """
    x = network_slices(model, scan, maps, device, batch)  # [S, H, W]
    if refine is not None:
        from mpcli.recon.refine import Refinement

        x = Refinement.from_dict(refine).apply(scan.kspace, sense(maps, scan.mask), x, device=device)  # [S, H, W]
    x = x * (maps.abs().pow(2).sum(1) > 0).to(x.device)  # [S, H, W]
    return center_crop(x.abs(), scan.recon_size).numpy().astype(np.float32)
