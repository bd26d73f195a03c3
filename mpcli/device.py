"""Compute devices: resolve ``--device``, and hand tensors to CuPy (for sigpy).

Torch is the array library everywhere; sigpy (ESPIRiT, L1-wavelet) runs on
NumPy or, on a GPU, CuPy. CuPy is optional and imported lazily: a CUDA torch
tensor is shared with CuPy without a copy through DLPack (``to_cupy`` /
``from_cupy``), so coil maps and CS run on the GPU that holds the data.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import torch

from mpcli.errors import DeviceError

_USAGE = "use auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device) -> torch.device:
    """The torch device for a ``--device`` value.

    ``"auto"`` → ``cuda`` when ``torch.cuda.is_available()`` else ``cpu``;
    ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` → that GPU.

    Raises:
        DeviceError: CUDA requested without a GPU, a GPU index out of range, or
            an unknown device name.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = spec.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(None, "CUDA requested but no GPU is available; use --device cpu")
        if name == "cuda":
            return torch.device("cuda")
        index = name.split(":", 1)[1]
        if not index.isdigit():
            raise DeviceError(None, f"unknown device {spec!r}; {_USAGE}")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise DeviceError(None, f"GPU {index} requested but only {count} GPU(s) are present")
        return torch.device(f"cuda:{int(index)}")
    raise DeviceError(None, f"unknown device {spec!r}; {_USAGE}")


@functools.lru_cache(maxsize=1)
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (checked once)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_cupy(t: torch.Tensor):
    """A CuPy array sharing memory with the CUDA tensor ``t`` (DLPack, no copy)."""
    import cupy

    return cupy.from_dlpack(t.contiguous())


def from_cupy(a) -> torch.Tensor:
    """A torch tensor sharing memory with the CuPy array ``a`` (DLPack, no copy)."""
    return torch.from_dlpack(a)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is a GPU out-of-memory error from torch or CuPy."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    cupy = sys.modules.get("cupy")  # only if something already imported it
    if cupy is not None:
        oom = getattr(getattr(cupy.cuda, "memory", None), "OutOfMemoryError", None)
        if oom is not None and isinstance(exc, oom):
            return True
    return False


def sigpy_device_id(device: torch.device) -> int:
    """sigpy's device id for ``device``: the GPU index when it is CUDA and CuPy
    is available, else -1 (CPU, NumPy)."""
    if device.type == "cuda" and cupy_available():
        return device.index if device.index is not None else torch.cuda.current_device()
    return -1


def to_xp(t: torch.Tensor, device_id: int):
    """``t`` as a NumPy array (``device_id`` −1) or a CuPy array on that GPU (no copy
    when ``t`` is already there)."""
    if device_id < 0:
        return t.detach().cpu().numpy()
    return to_cupy(t.detach().to(f"cuda:{device_id}"))


def from_xp(a, device: torch.device) -> torch.Tensor:
    """A NumPy or CuPy array as a torch tensor on ``device``."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return from_cupy(a).to(device)
