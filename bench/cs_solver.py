"""Cost of one L1-wavelet CS slice: ``mpcli.recon.wavelet.solve`` against sigpy's ``L1WaveletRecon``
(the solver ``mp`` ran on until the seventeenth session), in the same process.

256² (``--size``) 8-coil slices of a Shepp–Logan image with birdcage maps, a random line mask (30 %,
16 centre lines) and a 2-D random mask (30 %); ``--iters`` FISTA iterations at λ = 3e-3, one thread,
median of ``--repeats``. Rows: sigpy's ``L1WaveletRecon`` (no cycle spinning; given the same step,
so no power iterations are timed), ``solve`` on the same problem (and its largest difference from
sigpy's image), with cycle spinning, and as ``mp adapt``'s refinement runs it (started from an
image, L1 weighted by its wavelets, ε = 0.05). Last, ``l1_wavelet`` on ``--slices`` slices with
the line mask as ``mp reconstruct --method cs`` runs it (slices in parallel, torch's threads).

    python bench/cs_solver.py                # ~1 min on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sigpy as sp
import sigpy.mri as mr
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # bench/common.py

from mpcli.recon.classical import l1_wavelet
from mpcli.recon.wavelet import lipschitz_bound, solve

LAM = 3e-3


def problem(size: int, line: bool, coils: int = 8, seed: int = 0):
    """(y ``[C, H, W]``, maps ``[C, H, W]``, mask ``[H, W]``, image), NumPy complex64, k-space scaled so
    that the zero-filled RSS's 99th percentile is 1 (as ``l1_wavelet`` scales it)."""
    gen = np.random.default_rng(seed)
    maps = mr.birdcage_maps((coils, size, size)).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0))
    if line:
        mask = np.broadcast_to((gen.random(size) < 0.3).astype(np.float32), (size, size)).copy()
        mask[:, size // 2 - 8: size // 2 + 8] = 1
    else:
        mask = (gen.random((size, size)) < 0.3).astype(np.float32)
    img = sp.shepp_logan((size, size)).astype(np.complex64)
    y = (mask * sp.fft(maps * img, axes=(-2, -1))).astype(np.complex64)
    rss = np.sqrt((np.abs(sp.ifft(y, axes=(-2, -1))) ** 2).sum(0))
    return y / np.float32(np.quantile(rss, 0.99)), maps, mask, img


def median_s(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def compare(line: bool, args) -> None:
    """Table rows of one mask: sigpy's solver, then ``solve`` three ways."""
    y, maps, mask, img = problem(args.size, line)
    alpha = 1.0 / lipschitz_bound(maps, mask)
    start = (0.9 * img / np.abs(img).max()).astype(np.complex64)
    base, ref = median_s(lambda: mr.app.L1WaveletRecon(y, maps, LAM, weights=mask, max_iter=args.iters, alpha=alpha,
                                                       show_pbar=False).run(), args.repeats)
    name = "line" if line else "2-D"
    print(f"| {name} | sigpy `L1WaveletRecon` (no cycle spinning) | {base * 1e3:.0f} | 1.00 | |")
    rows = [("`solve`, no cycle spinning", {"cycle_spin": False}),
            ("`solve`, cycle spinning (`mp reconstruct --method cs`)", {}),
            ("`solve`, weighted L1 from a start image (`mp adapt`'s refinement)", {"x0": start, "eps": 0.05})]
    for label, kw in rows:
        t, out = median_s(lambda kw=kw: solve(y, maps, mask, LAM, args.iters, seed=0, **kw), args.repeats)
        diff = f"{np.abs(out - ref).max() / np.abs(ref).max():.1e}" if kw == {"cycle_spin": False} else ""
        print(f"| {name} | {label} | {t * 1e3:.0f} | {base / t:.2f} | {diff} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=45)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the l1_wavelet row")
    args = ap.parse_args()

    torch.set_num_threads(1)
    print("# One L1-wavelet CS slice: mpcli's FISTA against sigpy's L1WaveletRecon\n")
    print(f"- machine: {c.machine(torch.device('cpu'))}")
    print(f"- {args.size}² slice, 8 coils, λ {LAM:g}, {args.iters} iterations, median of {args.repeats}\n")
    print("| mask | solver | ms / slice | × sigpy | largest difference from sigpy (relative to its peak) |")
    print("|---|---|---|---|---|")
    for line in (True, False):
        compare(line, args)

    torch.set_num_threads(args.threads)
    y, maps, mask, _ = problem(args.size, True)
    k = torch.from_numpy(y)[None].expand(args.slices, -1, -1, -1).contiguous()
    m = torch.from_numpy(maps)[None].expand(args.slices, -1, -1, -1).contiguous()
    w = torch.from_numpy(mask)[None, None].expand(args.slices, 1, -1, -1).contiguous()
    t, _ = median_s(lambda: l1_wavelet(k, m, w, LAM, args.iters), max(1, args.repeats // 2))
    print(f"\n`l1_wavelet` on {args.slices} line-mask slices, {args.threads} threads: {t:.2f} s "
          f"({t / args.slices * 1e3:.0f} ms / slice)")


if __name__ == "__main__":
    main()
