"""Coil compression before everything else: does it cost quality, and what time does it save?

A hospital head array has 20–64 coils; every FFT of ``mp adapt`` (CG in the network, its backward,
CS) scales with the count. Coil compression (Buehrer et al. 2007; BART's ``cc -S``) replaces the C
coils by V < C virtual ones, per slice: with U the left singular vectors of the acquired samples
Y ``[C, N]`` (columns: the acquired k-space locations), ::

    y_v = Σ_c conj(U[c, v]) y_c,   v < V,   energy kept = Σ_{v<V} σ_v² / Σ σ²

(a unitary map on the coil axis, truncated: the sampling pattern is unchanged). ESPIRiT then
estimates V maps from the compressed data. This bench compresses held-out tasks with many coils
(``bench/quality.py``'s ``coils_16_20`` family, and the same family at 28–32 coils, ``--many``) to
each of ``--virtual`` coils and runs, on the same volume, ESPIRiT, tuned CS (λ chosen on the
truth, as ``bench/quality.py``'s ``cs*``) and ``mp adapt`` with its defaults; PSNR inside the
ESPIRiT support (of the compressed data's maps: what a user of it would get) against the same
reference. In ``mp`` as ``--virtual-coils N`` (off by default; :func:`mpcli.physics.coils.compress_coils`):
the μ of the shipped network depends on the coil count (``acquisition_features``), so ``mp adapt``
records N in the weights file and ``mp reconstruct --method adapted`` repeats it.

    python bench/coil_compression.py --threads 2 --seeds 0,1,2,3            # ~15 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig
from mpcli.physics.coils import compress_coils


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(c.DEFAULT_PRIOR))
    ap.add_argument("--virtual", default="12,8", help="virtual coil counts to compare with all coils")
    ap.add_argument("--many", type=int, default=2, help="tasks of the coils_16_20 family at 28-32 coils (seeds 0…)")
    c.add_task_grid_args(ap)
    args = ap.parse_args()
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    config = AdaptConfig()
    virtual = [int(v) for v in args.virtual.split(",")]
    tasks = [(seed, c.draw_task("coils_16_20", seed)) for seed in (int(s) for s in args.seeds.split(","))]
    tasks += [(seed, dataclasses.replace(c.draw_task("coils_16_20", seed), n_coils=28 + seed % 5))
              for seed in range(args.many)]
    rows, deltas = [], {v: [] for v in virtual}
    for seed, task in tasks:
        vol0 = c.simulate_volume(task, args.slices, seed, device=device)
        coils = vol0.y.shape[1]
        base = None
        for v in [coils, *virtual]:
            y, kept = compress_coils(vol0.y, v)
            t0 = time.perf_counter()
            vol = c.with_maps(vol0._replace(y=y))
            maps_s = time.perf_counter() - t0
            cs = c.score(vol.ref, c.run_cs_tuned(vol, c.CS_LAMS, 100, 2).image)[0]
            t0 = time.perf_counter()
            adapted = c.score(vol.ref, c.run_adapt(vol, model, theta, config).image)[0]
            adapt_s = time.perf_counter() - t0
            row = {"seed": seed, "task": c.task_label(task), "coils": coils, "virtual": v,
                   "energy kept": f"{min(kept):.5f}", "cs*": cs, "mp adapt": adapted,
                   "ESPIRiT s": maps_s, "mp adapt s": adapt_s}
            if base is None:
                base = row
            else:
                deltas[v].append((cs - base["cs*"], adapted - base["mp adapt"], adapt_s / base["mp adapt s"]))
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
    print(c.header("Coil compression before ESPIRiT, tuned CS and mp adapt: PSNR dB and seconds", device,
                   args.prior, sha, f"{args.slices} slices per task; seeds {args.seeds}; "
                   f"{args.many} tasks at 28-32 coils; virtual coils {args.virtual}"))
    print(c.markdown_table(rows, ["seed", "task", "coils", "virtual", "energy kept", "cs*", "mp adapt",
                                  "ESPIRiT s", "mp adapt s"]))
    summary = [[v, len(d), f"{np.mean([a for a, _, _ in d]):+.2f}", f"{min(a for a, _, _ in d):+.2f}",
                f"{np.mean([b for _, b, _ in d]):+.2f}", f"{min(b for _, b, _ in d):+.2f}",
                f"{np.median([r for _, _, r in d]):.2f}"] for v, d in deltas.items() if d]
    print()
    print(c.markdown_table(summary, ["virtual coils", "tasks", "cs* − all coils (mean dB)", "worst",
                                     "mp adapt − all coils (mean dB)", "worst", "mp adapt time ratio (median)"]))


if __name__ == "__main__":
    main()
