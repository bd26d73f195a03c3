"""Cost of the network and of one adaptation step on 256² 8-coil slices, each against
a baseline run in the same process (median of ``--repeats``):

- AᴴA: ``Sense.normal`` (centring folded into the maps; 1-D FFTs for line masks)
  vs ``A.adjoint(A.forward(x))``, for a line mask and a 2-D mask;
- the MoDL CNN: channels-last (as shipped) vs plain NCHW memory;
- the shipped prior: forward and forward + backward per slice;
- one SSDU adaptation step on 4 slices: as shipped vs with the unused forward
  pass on the full data that the inner step used to run (``needs_x_hat`` forced);
- peak RSS and time of one SSDU adaptation step on 4 slices, each in a fresh
  process (peak = VmHWM, which starts afresh at exec; median of ``--repeats``): back-propagation group size ``chunk`` 4, 2, 1, and chunk 4 with
  the old full-data forward pass.

    python bench/step_cost.py                 # ~2 min on 2 idle CPU cores
    python bench/step_cost.py --size 128 --repeats 2
    python bench/step_cost.py --size 384 --coils 32 --repeats 1   # a head array: ~8 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # bench/common.py
from peak_rss import peak_rss_mb  # bench/peak_rss.py

from mpcli.meta.inner import init_opt_state, inner_step
from mpcli.physics.sense import sense
from mpcli.recon.network import complex_to_channels


def problem(B: int, size: int, coils: int = 8, line: bool = True, seed: int = 0):
    """(y ``[B, C, H, W]``, A) with random unit-norm maps and a random 30 % mask."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(B, coils, size, size, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    shape = (B, 1, 1, size) if line else (B, 1, size, size)
    A = sense(maps, (torch.rand(shape, generator=g) < 0.3).float().expand(B, 1, size, size))
    return A(torch.randn(B, size, size, dtype=torch.complex64, generator=g)), A


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def nchw_denoiser(denoiser, z):
    """The MoDL CNN without the channels-last conversion (the baseline)."""
    for i, conv in enumerate(denoiser.convs):
        z = conv(z if i == 0 else F.relu(z))
    return z


def adapt_step(model, theta, y, A, chunk: int | None, full_forward: bool = False):
    """One SSDU adaptation step (Adam, λ 0.01), as ``mp adapt`` takes it."""
    from mpcli.meta.adapt import SiteBatch
    from mpcli.meta.losses import make_loss

    loss = make_loss("ssdu")
    if full_forward:
        loss.needs_x_hat = True  # the old behaviour: x̂ on the full data computed, then ignored
    inner_step(model, theta, theta, SiteBatch(None, y, A), loss, 1e-3, 1e-2, init_opt_state("adam", theta),
               chunk=chunk)


def child(args) -> None:
    """Run one adaptation step in this fresh process; print its peak RSS."""
    model, theta, _, _ = c.load_prior(args.prior, torch.device("cpu"))
    y, A = problem(4, args.size, args.coils, line=True)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    adapt_step(model, theta, y, A, abs(args.child), full_forward=args.child < 0)
    print(json.dumps({"seconds": time.perf_counter() - t0, "base_mb": base,
                      "peak_mb": peak_rss_mb()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    c.add_common_args(ap)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.repeats = 64, 1
    if args.child is not None:
        child(args)
        return 0
    device = c.setup(args)
    mem = {}
    for chunk in (-4, 4, 2, 1):  # negative: with the old full-data forward pass
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", str(chunk), "--size", str(args.size),
                                  "--coils", str(args.coils),
                                  "--prior", args.prior, "--threads", str(torch.get_num_threads())],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        mem[chunk] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    model, theta, sha, _ = c.load_prior(args.prior, device)
    rows = []

    def row(what, new, old, per):
        rows.append({"what": what, "shipped s": new / per, "baseline s": old / per, "baseline / shipped": old / new})

    for line in (True, False):
        yl, Al = problem(2, args.size, args.coils, line=line)
        x = Al.adjoint(yl)
        n = 10 * args.repeats
        row(f"AᴴA per slice ({'line' if line else '2-D'} mask): normal vs adjoint∘forward",
            median_s(lambda A=Al, x=x: A.normal(x), n), median_s(lambda A=Al, x=x: A.adjoint(A.forward(x)), n), 2)
    y, A = problem(2, args.size, args.coils)
    z = complex_to_channels(A.adjoint(y))
    with torch.no_grad():
        if hasattr(model.denoiser, "convs"):  # the CNN denoiser; the shipped U-Net has no NCHW baseline here
            row("CNN per slice: channels-last vs NCHW", median_s(lambda: model.denoiser(z), args.repeats),
                median_s(lambda: nchw_denoiser(model.denoiser, z), args.repeats), 2)
        fwd = median_s(lambda: model(y, A), args.repeats) / 2
    fb = median_s(lambda: model(y, A).abs().sum().backward(), args.repeats) / 2
    y4, A4 = problem(4, args.size, args.coils)
    row("SSDU adaptation step, 4 slices: no full-data forward vs with it",
        median_s(lambda: adapt_step(model, theta, y4, A4, 1), args.repeats),
        median_s(lambda: adapt_step(model, theta, y4, A4, 1, full_forward=True), args.repeats), 1)
    print(c.header(f"Network and adaptation-step cost, {args.size}² × {args.coils} coils", device, args.prior, sha,
                   f"medians of {args.repeats} (AᴴA: {10 * args.repeats}); baseline in the same process"))
    print(c.markdown_table(rows, ["what", "shipped s", "baseline s", "baseline / shipped"], digits=4))
    print(f"\nshipped prior per slice: forward {fwd:.3f} s, forward + backward {fb:.3f} s\n")
    label = {-4: "4, with the old full-data forward", 4: "4", 2: "2", 1: "1 (shipped)"}
    print(c.markdown_table([{"chunk (slices per backward)": label[k], "peak RSS MB": v["peak_mb"],
                             "RSS before the step MB": v["base_mb"], "first step s (incl. warm-up)": v["seconds"]}
                            for k, v in mem.items()],
                           ["chunk (slices per backward)", "peak RSS MB", "RSS before the step MB",
                            "first step s (incl. warm-up)"], 1))
    c.save_json(args.json, {"rows": rows, "forward_s": fwd, "forward_backward_s": fb, "memory": mem})
    return 0


if __name__ == "__main__":
    sys.exit(main())
