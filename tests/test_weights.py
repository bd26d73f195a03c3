"""Weight files: safetensors only, SHA-256 checked, version checked (mpcli/io/weights.py)."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import struct

import pytest
import torch

from mpcli.errors import ModelError
from mpcli.io.weights import SHIPPED_PRIOR, load_model, load_weights, save_weights
from mpcli.recon.network import ARCH_VERSION, build_network

CFG = {"arch": "pdnet", "layers": 2, "filters": 3}


def _saved(tmp_path, **extra):
    torch.manual_seed(0)
    net = build_network(CFG)
    path = tmp_path / "w.safetensors"
    digest = save_weights(path, net.state_dict(), {"config": CFG, **extra})
    return net, path, digest


def _header(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, n, json.loads(raw[8 : 8 + n])


def _write_header(path, raw, n, header):
    """Rewrite the JSON header, padded with spaces to its old length."""
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n :])


def test_weights_round_trip(tmp_path):
    net, path, digest = _saved(tmp_path, notes={"outer_loss": 0.25})
    state, meta = load_weights(path)
    assert meta["sha256"] == digest and len(digest) == 64
    assert meta["arch"] == "pdnet" and meta["arch_version"] == ARCH_VERSION
    assert meta["config"] == CFG and meta["notes"] == {"outer_loss": 0.25}
    assert "mp_version" in meta
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v)
    model, _ = load_model(path)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_weights_flipped_tensor_byte_is_detected(tmp_path):
    _, path, _ = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", bytes(raw[:8]))[0]
    raw[8 + n + 17] ^= 0x01  # one bit of the tensor data region
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        load_weights(path)


def test_weights_changed_metadata_is_detected(tmp_path):
    _, path, _ = _saved(tmp_path)
    raw, n, header = _header(path)
    header["__metadata__"]["config"] = json.dumps({**CFG, "layers": 3}, sort_keys=True)
    _write_header(path, raw, n, header)
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        load_model(path)


def test_weights_wrong_arch_version_is_refused(tmp_path):
    net = build_network(CFG)
    path = tmp_path / "old.safetensors"
    save_weights(path, net.state_dict(), {"config": CFG, "arch_version": ARCH_VERSION + 1})
    load_weights(path)  # the file itself is intact
    with pytest.raises(ModelError, match=f"{ARCH_VERSION + 1}.*{ARCH_VERSION}"):
        load_model(path)


def test_weights_pickle_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": [1.0, 2.0]}, f)
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_weights(path)


def test_weights_truncated_file_is_refused(tmp_path):
    _, path, _ = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError):
        load_weights(path)


def test_weights_mismatched_tensors_are_refused(tmp_path):
    net = build_network(CFG)
    path = tmp_path / "w.safetensors"
    save_weights(path, net.state_dict(), {"config": {**CFG, "layers": 3}})
    with pytest.raises(ModelError, match="do not match"):
        load_model(path)


def test_missing_weights_are_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=re.escape("no such file; expected a .safetensors weights file")):
        load_weights(tmp_path / "absent.safetensors")
    if not SHIPPED_PRIOR.exists():
        with pytest.raises(ModelError, match="shipped meta-prior not found"):
            load_model()


def test_no_pickle_loading_in_package():
    """No ``torch.load``/``pickle.load`` anywhere in mpcli (weights never run code)."""
    from pathlib import Path

    import mpcli

    root = Path(mpcli.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert "torch.load(" not in text and "pickle.load" not in text, f


def test_weights_metadata_is_normalised_to_json(tmp_path):
    """Tuples, Paths and numpy scalars are stored as JSON; the hash still verifies."""
    import numpy as np

    net = build_network(CFG)
    path = tmp_path / "w.safetensors"
    meta_in = {"config": CFG, "sizes": ((128, 128),), "data": tmp_path, "lr": np.float32(0.5)}
    digest = save_weights(path, net.state_dict(), meta_in)
    _, meta = load_weights(path)
    assert meta["sha256"] == digest
    assert meta["sizes"] == [[128, 128]] and meta["data"] == str(tmp_path) and meta["lr"] == 0.5


def test_weights_get_the_same_permissions_as_other_outputs(tmp_path):
    """mkstemp creates 0600; the weights must be readable like every other output (0644 under umask 022)."""
    old = os.umask(0o022)
    try:
        _, path, _ = _saved(tmp_path)
        other = tmp_path / "other.txt"
        other.write_text("x")
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(other.stat().st_mode) == 0o644
    finally:
        os.umask(old)
