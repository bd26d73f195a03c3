"""GPU paths: ESPIRiT on CUDA, zero-copy DLPack to CuPy, CS on CuPy, network on CUDA, ``mp adapt --device cuda``.

Tests marked ``gpu`` need CUDA and are skipped without it (``pytest -m gpu``
selects them on a GPU machine; ``bench/gpu_check.sh`` runs them). The last test
runs where there is *no* GPU: ``--device cuda`` must then exit with code 6 and
one line on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcli.errors import EXIT_DEVICE
from tests.synthetic import line_mask, synthetic_kspace, write_synthetic_fastmri

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()


def _cupy_or_skip():
    from mpcli.device import cupy_available

    if not cupy_available():
        pytest.skip("CuPy is not installed (pip install mpcli[gpu])")


def _network_config() -> dict:
    with open(REPO / "mpcli" / "configs" / "meta_prior.toml", "rb") as fh:
        return tomllib.load(fh)["network"]


@pytest.fixture
def prior(tmp_path) -> Path:
    """A randomly initialised network of the shipped configuration, as a weights file."""
    from mpcli.io.weights import save_weights
    from mpcli.recon.network import build_network

    config = _network_config()
    torch.manual_seed(0)
    net = build_network(config)
    path = tmp_path / "prior.safetensors"
    save_weights(path, {k: v.detach() for k, v in net.state_dict().items()}, {"config": config})
    return path


@pytest.fixture
def scan_file(tmp_path) -> Path:
    return write_synthetic_fastmri(tmp_path / "scan.h5", slices=2, coils=4, h=48, w=48, acceleration=3)


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls (Hopper defaults cuDNN convolutions to TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_dlpack_transfer_is_zero_copy():
    """torch → CuPy → torch keeps the same device pointer, and writes are shared."""
    _cupy_or_skip()
    from mpcli.device import from_cupy, to_cupy, to_xp

    t = torch.randn(3, 4, 8, 8, dtype=torch.complex64, device="cuda")  # [S, C, H, W]
    a = to_cupy(t)
    assert a.data.ptr == t.data_ptr()
    assert to_xp(t, t.device.index or 0).data.ptr == t.data_ptr()
    back = from_cupy(a)
    assert back.data_ptr() == t.data_ptr()
    a[0, 0, 0, 0] = 7 + 1j  # a write through CuPy is visible in torch: one buffer
    torch.cuda.synchronize()
    assert complex(t[0, 0, 0, 0].item()) == 7 + 1j


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_espirit_cuda_equals_cpu_up_to_phase():
    """CUDA ESPIRiT maps (torch, no CuPy) = CPU maps × a per-pixel unit phase (on ≥ 99 % of pixels)."""
    from mpcli.physics.coils import estimate_maps

    k = torch.from_numpy(synthetic_kspace(slices=2, coils=6, h=48, w=48, seed=3))  # [S, C, H, W]
    cpu = estimate_maps(k, device="cpu").numpy()  # [S, C, H, W]
    gpu_maps = estimate_maps(k.cuda(), device="cuda")
    assert gpu_maps.is_cuda
    g = gpu_maps.cpu().numpy()
    inner = (g * cpu.conj()).sum(1, keepdims=True)  # [S, 1, H, W]
    phase = np.where(np.abs(inner) > 0, inner / np.maximum(np.abs(inner), 1e-30), 1)
    aligned = g * phase.conj()  # [S, C, H, W]
    err = np.sqrt((np.abs(aligned - cpu) ** 2).sum(1))  # [S, H, W]
    assert np.mean(err < 1e-3) >= 0.99, f"median error {np.median(err):.2e}, max {err.max():.2e}"
    assert np.abs(cpu).max() > 0.5  # not trivially equal (all-zero maps)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cycle_spun_cs_on_cupy_equals_cpu():
    """L1-wavelet CS with CuPy FFTs (wavelets on the host) draws the same seeded shifts and step as on the CPU:
    the same image up to float32 rounding (1e-3 relative), returned on the GPU; so does the weighted L1
    around a start image."""
    _cupy_or_skip()
    from mpcli.physics.coils import estimate_maps
    from mpcli.recon.classical import l1_wavelet

    mask = torch.from_numpy(line_mask(48, 3, 8))[None, None, None]  # [1, 1, 1, W]
    k = torch.from_numpy(synthetic_kspace(slices=2, coils=4, h=48, w=48, seed=5)) * mask  # [S, C, H, W]
    maps = estimate_maps(k, mask, device="cpu")  # [S, C, H, W]
    cpu = l1_wavelet(k, maps, mask, lam=3e-3, iters=30)
    gpu = l1_wavelet(k.cuda(), maps.cuda(), mask.cuda(), lam=3e-3, iters=30)
    assert gpu.is_cuda
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-3
    # around a start image, its L1 weighted by the start's wavelets (mp adapt's refinement)
    cpu_w = l1_wavelet(k, maps, mask, lam=1e-2, iters=30, start=cpu, eps=0.05)
    gpu_w = l1_wavelet(k.cuda(), maps.cuda(), mask.cuda(), lam=1e-2, iters=30, start=cpu.cuda(), eps=0.05)
    assert gpu_w.is_cuda
    assert float((gpu_w.cpu() - cpu_w).norm() / cpu_w.norm()) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_network_forward_cuda_equals_cpu(no_tf32):
    """f_θ(y, A) on CUDA equals the CPU result to 1e-4 (relative to max |x̂|), full fp32."""
    from mpcli.physics.sense import sense
    from mpcli.recon.network import build_network

    torch.manual_seed(0)
    net = build_network(_network_config()).eval()
    k = torch.from_numpy(synthetic_kspace(slices=2, coils=4, h=32, w=32, seed=1))  # [S, C, H, W]
    maps = torch.randn(2, 4, 32, 32, dtype=torch.complex64)  # [S, C, H, W]
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    mask = (torch.rand(1, 1, 1, 32) < 0.4).float()  # [1, 1, 1, W]
    y = k * mask
    with torch.no_grad():
        x_cpu = net(y, sense(maps, mask))  # [S, H, W]
        net_gpu = net.to("cuda")
        x_gpu = net_gpu(y.cuda(), sense(maps.cuda(), mask.cuda())).cpu()
    rel = float((x_gpu - x_cpu).abs().max() / x_cpu.abs().max())
    assert rel < 1e-4, rel


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_adapt_cli_runs_on_cuda(scan_file, prior, tmp_path):
    """``mp adapt --device cuda`` adapts (the random prior on 5 calibration lines, both guards off), writes
    loadable weights and reconstructs."""
    from typer.testing import CliRunner

    from mpcli.cli import app
    from mpcli.io.weights import load_weights

    out = tmp_path / "adapted.safetensors"
    res = CliRunner().invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior), "--out", str(out),
                                   "--recon", str(tmp_path / "recon"), "--format", "h5", "--steps", "3",
                                   "--device", "cuda", "--keep-prior-above", "inf", "--min-calibration", "0"])
    assert res.exit_code == 0, res.output
    _, meta = load_weights(out)
    assert meta["kind"] == "adapted"
    assert (tmp_path / "recon" / "scan.h5").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_device_auto_picks_cuda(scan_file, prior, tmp_path):
    """``--device auto`` resolves to CUDA, and a network reconstruction then allocates GPU memory."""
    from typer.testing import CliRunner

    from mpcli.cli import app
    from mpcli.device import resolve_device

    assert resolve_device("auto").type == "cuda"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    res = CliRunner().invoke(app, ["reconstruct", str(scan_file), "--out", str(tmp_path / "r"), "--method", "meta",
                                   "--model", str(prior), "--format", "h5", "--device", "auto"])
    assert res.exit_code == 0, res.output
    assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: --device cuda is valid here")
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_curriculum_trains_on_cuda_with_workers_and_amp_and_resumes_on_cpu(tmp_path):
    """The training script's GPU path (bench/train_prior.py --device cuda --amp --workers 2): θ,
    Adam and θ̄ on the GPU, examples from worker processes; the checkpoint then resumes on the CPU."""
    import dataclasses

    from mpcli.meta import curriculum as cur

    config = dataclasses.replace(cur.tiny_curriculum(), maps="espirit", ema=0.9)
    ck = tmp_path / "ckpt.safetensors"
    state = cur.train(config, ck, tmp_path / "log.jsonl", max_steps=3, workers=2, device="cuda", amp=True)
    assert all(v.is_cuda and torch.isfinite(v).all() for v in state.theta.values())
    assert all(v.is_cuda for v in state.ema.values())
    done = cur.train(config, ck, tmp_path / "log.jsonl", device="cpu")
    assert done.stage == len(config.stages) and not any(v.is_cuda for v in done.theta.values())


def test_device_cuda_without_gpu_exits_6_with_one_line(scan_file, tmp_path):
    """Without a GPU, ``mp reconstruct --device cuda`` exits 6 with one line on stderr, nothing written."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mpcli", "reconstruct", str(scan_file), "--out", str(out),
                           "--method", "zero-filled", "--device", "cuda"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == EXIT_DEVICE, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0].lower(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(out.glob("*.h5"))
