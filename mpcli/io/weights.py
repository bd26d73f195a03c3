"""Network weights as safetensors files, SHA-256 checked, architecture versioned.

Only safetensors is read or written: no pickle, no ``torch.load``, so a weight
file can never execute code. The safetensors header carries the metadata, each
value JSON-encoded (safetensors metadata is ``dict[str, str]``)::

    arch          "pdnet" | "resunroll"
    arch_version  int, must equal network.ARCH_VERSION to load
    config        the network configuration (``build_network(config)``)
    mp_version    mpcli version that wrote the file
    ...           anything else the writer passed (training summary, …)
    sha256        the content hash below (a plain hex string)

Content hash (what ``sha256`` stores, and what :func:`load_weights` recomputes)::

    H = SHA-256( canon(metadata without sha256)
                 ‖ for each tensor name in sorted order:
                       canon([name, dtype, shape]) ‖ raw little-endian bytes )

with ``canon`` = ``json.dumps(·, sort_keys=True, separators=(",", ":"))``
UTF-8 encoded. Any change to a tensor byte, a shape, a name or a metadata
value changes H, so tampering or corruption is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpcli import __version__
from mpcli.errors import ModelError, OutputError

SHIPPED_PRIOR = Path(__file__).resolve().parents[1] / "weights" / "meta_prior.safetensors"
"""The meta-prior shipped with the package (``mpcli/weights/meta_prior.safetensors``)."""

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "meta_prior.toml"
"""The meta-training config of the shipped prior (also site mode's default)."""

_HASH_KEY = "sha256"


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor in C order (any dtype, CPU)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    return str(obj)  # Path and the like


def content_hash(state_dict: dict[str, torch.Tensor], metadata: dict) -> str:
    """SHA-256 (hex) over canonical metadata (minus ``sha256``) and all tensors."""
    h = hashlib.sha256()
    h.update(_canon({k: v for k, v in metadata.items() if k != _HASH_KEY}))
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(_canon([name, str(t.dtype), list(t.shape)]))
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _full_metadata(metadata: dict) -> dict:
    """Fill in ``arch``/``arch_version``/``mp_version`` defaults; check ``config``."""
    from mpcli.recon.network import ARCH_VERSION

    meta = {k: v for k, v in metadata.items() if k != _HASH_KEY}
    # normalise to plain JSON (tuples → lists, Paths → str, numpy → Python) so the
    # hash written here is the hash recomputed from the decoded header on load
    meta = json.loads(json.dumps(meta, default=_json_default))
    config = meta.get("config")
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError("metadata needs 'config': a network configuration with 'arch'")
    meta.setdefault("arch", config["arch"])
    meta.setdefault("arch_version", ARCH_VERSION)
    meta.setdefault("mp_version", __version__)
    return meta


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict) -> str:
    """Write ``state_dict`` and ``metadata`` to a safetensors file, atomically.

    The file is written to a temporary file in the same directory and moved into
    place with ``os.replace``, so readers never see a partial file.

    Args:
        path: destination ``.safetensors`` file.
        state_dict: name → tensor (copied to contiguous CPU tensors).
        metadata: must hold ``config`` (network configuration); ``arch``,
            ``arch_version`` and ``mp_version`` are filled in when absent; any
            other JSON-serialisable keys are kept.
    Returns:
        The SHA-256 content hash stored in the header.
    Raises:
        OutputError: the file cannot be written. ValueError: bad metadata.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = _full_metadata(metadata)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    digest = content_hash(tensors, meta)
    header = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    header[_HASH_KEY] = digest
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual 0644
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise OutputError(path, f"cannot write weights: {err.strerror or err}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return digest


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weight file and verify its SHA-256 content hash.

    Returns:
        ``(state_dict, metadata)``; metadata values JSON-decoded, ``sha256``
        included.
    Raises:
        ModelError: missing file, not a safetensors file (pickle ``.pt``,
            truncated, garbage), missing or mismatching hash.
    """
    from safetensors import safe_open

    from mpcli.io.paths import expect_file

    path = Path(path)
    if not path.exists() and path.resolve() == SHIPPED_PRIOR:
        raise ModelError(path, "shipped meta-prior not found (the package was installed "
                         "without its weights; reinstall mpcli, or pass --prior/--model FILE)")
    expect_file(path, "a .safetensors weights file written by mp adapt or mp meta-train",
                suffixes=(".safetensors",), error=ModelError)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ModelError(path, f"not a valid safetensors weights file ({type(err).__name__})") from None
    if _HASH_KEY not in header:
        raise ModelError(path, "no SHA-256 in the weights metadata (not an mp weights file)")
    try:
        meta = {k: json.loads(v) for k, v in header.items() if k != _HASH_KEY}
    except (ValueError, TypeError):
        raise ModelError(path, "SHA-256 mismatch: weights were modified or corrupted") from None
    if content_hash(tensors, meta) != header[_HASH_KEY]:
        raise ModelError(path, "SHA-256 mismatch: weights were modified or corrupted")
    meta[_HASH_KEY] = header[_HASH_KEY]
    return tensors, meta


def load_model(path: str | Path = SHIPPED_PRIOR, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict]:
    """Build the network a weight file describes and load its weights (strict).

    Raises:
        ModelError: see :func:`load_weights`; also a different ``arch_version``
            from this code's ``ARCH_VERSION``, an unknown/bad configuration, or
            tensors that do not match the network exactly.
    """
    from mpcli.recon.network import ARCH_VERSION, build_network

    state, meta = load_weights(path)
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(path, f"weights hold NaN or infinite values ({name})")
    version = meta.get("arch_version")
    if version != ARCH_VERSION:
        raise ModelError(path, f"architecture version {version} in the file, this mp needs "
                         f"{ARCH_VERSION}: use weights made by a matching mp version")
    try:
        model = build_network(meta["config"])
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, MemoryError) as err:
        raise ModelError(path, f"cannot build the network from its metadata: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ModelError(path, f"weights do not match the network: {first}") from None
    return model.to(device).eval(), meta
