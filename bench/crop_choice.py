"""How well the coil-map support is chosen: the eigenvalue crop each rule picks, scored by tuned CS.

ESPIRiT's support keeps the pixels whose eigenvalue exceeds a crop (0.95 by default). With few
calibration lines the eigenvalue drops below it inside the object's edge and the support cuts
tissue; :func:`mpcli.physics.coils.select_crop` lowers the crop to 0.9 when held-out k-space says
so. This bench scores the choice on simulated tasks (``bench/common.draw_task``: the held-out
families, several seeds): for each task the unit-norm maps and eigenvalues are computed once, and
for crops 0.95, 0.9 and 0.8 the maps' support ceiling and the PSNR of L1-wavelet CS with λ tuned
against the truth (60 iterations, ``bench/common.run_cs_tuned``; a measure of the maps, not of
``mp adapt``). Two rules pick among 0.95 and 0.9:

- ``plain``: the relative held-out error ‖A_Γ x − y_Γ‖² / ‖y_Γ‖² (the rule before the twelfth
  session);
- ``whitened``: the same with every sample weighted by 1 / (k-space power at its radius)
  (:func:`mpcli.physics.coils.spectral_weight`, the default).

``oracle`` takes the best of the three crops by the truth.

    python bench/crop_choice.py --threads 2 --seeds 0,1,2,3     # 32 tasks, ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.physics.coils import _support, centred_acs_width, espirit_volume, select_crop

CROPS = (0.95, 0.9, 0.8)
RULES = {"plain": False, "whitened": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_task_grid_args(ap, families=c.EIGHT_FAMILIES)
    args = ap.parse_args()
    device = c.setup(args)
    rows, chosen = [], {name: [] for name in (*RULES, "oracle", *(f"crop {cr}" for cr in CROPS))}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            vol = c.simulate_volume(task, args.slices, seed, device=device)
            acquired = vol.mask[:, 0] > 0  # [S, H, W]
            ksp = vol.y.to(torch.complex64)
            maps, eigs = espirit_volume(ksp, acquired)  # [S, C, H, W], [S, H, W]
            psnr = {}
            for cr in CROPS:
                cropped = vol._replace(maps=maps * _support(eigs, cr, None)[:, None])
                inside = c.support(cropped.maps).cpu().numpy()
                psnr[cr] = c.score(vol.ref, c.run_cs_tuned(cropped, iters=60).image * inside)[0]
                chosen[f"crop {cr}"].append(psnr[cr])
            row = {"family": fam, "seed": seed, "task": c.task_label(task),
                   "ACS": centred_acs_width(vol.mask[0, 0]), **{f"CS dB at {cr}": psnr[cr] for cr in CROPS}}
            for name, whiten in RULES.items():
                pick = select_crop(ksp, acquired, maps, eigs, whiten=whiten)
                row[name] = f"{pick:g}"
                chosen[name].append(psnr[pick])
            chosen["oracle"].append(max(psnr.values()))
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    cols = ["family", "seed", "task", "ACS", *(f"CS dB at {cr}" for cr in CROPS), *RULES]
    print(c.header("Coil-map support: the crop each rule picks, and tuned CS PSNR at each crop", device, "-", "-",
                   f"{args.slices} slices per task; ESPIRiT as estimate_maps; CS λ tuned on the truth, 60 it"))
    print(c.markdown_table(rows, cols))
    print()
    print(c.markdown_table([{"choice": k, "mean CS dB": float(np.mean(v)), "tasks": len(v)} for k, v in chosen.items()],
                           ["choice", "mean CS dB", "tasks"]))


if __name__ == "__main__":
    main()
