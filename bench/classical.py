"""Benchmark of the classical reconstructions: seconds per slice and image quality.

A brain-like volume is simulated: axial slices of the MNI ICBM152 T1 template
(shipped with nilearn; Shepp–Logan when nilearn is absent) with a smooth phase,
8 birdcage coils, complex Gaussian noise, undersampled with a seeded 1-D random
mask (default 4×, 8 % centre). For ESPIRiT maps, CG-SENSE and L1-wavelet CS the
script reports the median over repeats of the seconds per slice, and PSNR/SSIM of
zero-filled, SENSE and CS against the RSS of the fully sampled k-space.

    python bench/classical.py --slices 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mpcli.device import resolve_device
from mpcli.physics.coils import estimate_maps
from mpcli.physics.fft import fft2c
from mpcli.physics.sense import Sense
from mpcli.recon.classical import DEFAULT_LAM, cg_sense, l1_wavelet, zero_filled


def brain_volume(slices: int) -> np.ndarray:
    """``[S, H, W]`` float magnitude images in [0, 1]: MNI T1 axial slices (even sizes)."""
    try:
        import nibabel as nib
        import nilearn

        path = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        vol = np.asarray(nib.load(path).get_fdata(), dtype=np.float32)  # (197, 233, 189) x, y, z
        zs = np.linspace(70, 110, slices).round().astype(int)
        imgs = vol[:, :, zs].transpose(2, 1, 0)[:, ::-1, :]  # [S, y (A→P), x]
        imgs = imgs[:, : imgs.shape[1] // 2 * 2, : imgs.shape[2] // 2 * 2]
        return np.ascontiguousarray(imgs / imgs.max())
    except (ImportError, FileNotFoundError):
        import sigpy as sp

        img = np.abs(sp.shepp_logan((256, 256))).astype(np.float32)
        return np.stack([img * (1 - 0.05 * s) for s in range(slices)])


def simulate(images: np.ndarray, coils: int, noise: float, seed: int):
    """Multi-coil k-space ``[S, C, H, W]`` of ``images`` with a smooth phase and noise."""
    import sigpy.mri as mr

    _, h, w = images.shape
    maps = torch.from_numpy(mr.birdcage_maps((coils, h, w)).astype(np.complex64))  # [C, H, W]
    maps = maps / maps.abs().pow(2).sum(0, keepdim=True).sqrt()
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    phase = torch.from_numpy(np.exp(1j * np.pi * 0.5 * (xx + 0.5 * yy**2)).astype(np.complex64))
    x = torch.from_numpy(images).to(torch.complex64) * phase  # [S, H, W]
    g = torch.Generator().manual_seed(seed)
    k = fft2c(maps * x[:, None])  # [S, C, H, W]
    k = k + noise * torch.randn(k.shape, dtype=torch.complex64, generator=g)
    return k


def line_mask(shape, accel: float, centre: float, seed: int) -> torch.Tensor:
    """``[1, 1, 1, W]`` random-line mask (``mpcli.physics.masks`` when present)."""
    h, w = shape
    try:
        from mpcli.physics.masks import make_mask

        return make_mask("random", (h, w), accel, centre, seed=seed).reshape(1, 1, 1, w)
    except ImportError:
        rng = np.random.default_rng(seed)
        c = round(centre * w)
        m = (rng.random(w) < (w / accel - c) / (w - c)).astype(np.float32)
        m[w // 2 - c // 2 : w // 2 - c // 2 + c] = 1
        return torch.from_numpy(m).reshape(1, 1, 1, w)


def quality(ref: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of volumes ``[S, H, W]`` (fastMRI definitions)."""
    try:
        from mpcli.metrics import psnr, ssim

        return psnr(ref, x), ssim(ref, x)
    except ImportError:
        from skimage.metrics import structural_similarity

        p = float(10 * np.log10(ref.max() ** 2 / np.mean((ref - x) ** 2)))
        return p, float(np.mean([structural_similarity(r, y, data_range=ref.max()) for r, y in zip(ref, x)]))


def timed(fn, repeats: int, slices: int):
    """(result of the last run, median seconds per slice over ``repeats`` runs)."""
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times) / slices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--accel", type=float, default=4.0)
    ap.add_argument("--centre", type=float, default=0.08)
    ap.add_argument("--noise", type=float, default=0.002, help="k-space noise std (image max = 1)")
    ap.add_argument("--lam", type=float, default=DEFAULT_LAM, help="CS λ (relative to the image scale)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    images = brain_volume(args.slices)  # [S, H, W]
    full = simulate(images, args.coils, args.noise, args.seed).to(dev)  # [S, C, H, W]
    s, c, h, w = full.shape
    mask = line_mask((h, w), args.accel, args.centre, args.seed).to(dev).expand(s, 1, h, w)
    y = full * mask  # [S, C, H, W]
    ref = zero_filled(full).cpu().numpy()  # [S, H, W] fully sampled RSS

    maps, t_maps = timed(lambda: estimate_maps(y, mask), args.repeats, s)
    x_sense, t_sense = timed(lambda: cg_sense(y, Sense(maps, mask), tikhonov=0.01, iters=30), args.repeats, s)
    x_cs, t_cs = timed(lambda: l1_wavelet(y, maps, mask, lam=args.lam, iters=100), args.repeats, s)
    x_zf, t_zf = timed(lambda: zero_filled(y), args.repeats, s)

    rows = [
        ("zero-filled", t_zf, *quality(ref, x_zf.cpu().numpy())),
        ("ESPIRiT maps", t_maps, float("nan"), float("nan")),
        ("CG-SENSE (30 it)", t_sense, *quality(ref, x_sense.abs().cpu().numpy())),
        ("L1-wavelet CS (100 it)", t_cs, *quality(ref, x_cs.abs().cpu().numpy())),
    ]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}, device {dev}"
        + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
    )
    accel = mask[0].numel() / float(mask[0].sum())
    title = (
        f"Classical recon: {s} slices {h}×{w}, {c} coils, random lines R={accel:.2f} "
        f"(nominal {args.accel:g}, centre {args.centre:.0%}), median of {args.repeats}"
    )
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, caption=machine)
        for col in ("step", "s / slice", "PSNR dB", "SSIM"):
            table.add_column(col, justify="left" if col == "step" else "right")
        for name, t, p, q in rows:
            table.add_row(name, f"{t:.4f}", "" if np.isnan(p) else f"{p:.2f}", "" if np.isnan(q) else f"{q:.4f}")
        Console().print(table)
    except ImportError:
        print(title)
        print(f"{'step':24s} {'s/slice':>9s} {'PSNR':>7s} {'SSIM':>7s}")
        for name, t, p, q in rows:
            print(f"{name:24s} {t:9.4f} {p:7.2f} {q:7.4f}")
        print(machine)


if __name__ == "__main__":
    main()
