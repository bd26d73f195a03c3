"""How well held-out k-space picks a reconstruction: the regret of each self-validation split.

``mp adapt`` chooses its refinement (:mod:`mpcli.recon.refine`) by how well each candidate,
computed from T, predicts held-out acquired k-space Γ (Ω = T ⊔ Γ). This bench asks how far that
choice falls from the best candidate by the truth, for two ways to draw Γ:

- ``lines``: whole acquired lines of a line mask, samples of a 2-D mask
  (:func:`mpcli.physics.masks.split_like_acquisition`, what ``mp adapt`` uses);
- ``samples``: single acquired samples (:func:`mpcli.physics.masks.split_mask`, uniform).

Candidates, all from the unadapted prior's image z (so adaptation does not blur the question):
z itself, CS around z (μ = 0, 45 FISTA iterations, λ on the plain-L1 grid ``LAMS``: what ``mp
adapt``'s search tried first until the fourteenth session), the same with the L1 weighted by z's
wavelets (ε = ``EPS``, λ on ``LAMS_WEIGHTED``: what it tries first now) and plain CS from zero (100
iterations, λ on ``LAMS``: ``--method cs``). The choice is made among z and the plain candidates
around it (``around z``), among z and the weighted ones (``weighted``), and among z, the plain ones
and plain CS (``+ plain CS``), by the held-out error unweighted (``plain``: ``mp adapt``'s μ search
and steps, and its refinement's choice until the fourteenth session) and weighted by 1 / (k-space
power at each sample's radius) (``whitened``, :func:`mpcli.physics.coils.spectral_weight`: ``mp
adapt``'s refinement choice since the fifteenth session). PSNR on the task's test slices inside the ESPIRiT
support as in ``bench/quality.py``; Γ is 10 % of the acquisition on 2 of them. Regret = best
PSNR − chosen PSNR.

    python bench/heldout_choice.py --threads 1 --seeds 0     # 8 tasks, ~10 min, 1 thread
    python bench/heldout_choice.py --threads 2 --seeds 0,1,2,3 --splits lines   # 32 tasks, mp adapt's split
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import heldout_loss, holdout, take
from mpcli.meta.losses import acquired_mask
from mpcli.physics.coils import spectral_weight
from mpcli.physics.masks import split_like_acquisition, split_mask
from mpcli.recon.refine import EPS, LAMS, LAMS_WEIGHTED, Refinement

LOSSES = ("plain", "whitened")  # held-out error unweighted, or weighted by 1 / k-space power (spectral_weight)
SPLITS = {"lines": split_like_acquisition,
          "samples": lambda omega, rho, gen: split_mask(omega, rho, gen, kind="uniform")}


def candidates() -> list[tuple[str, Callable]]:
    """(name, image from (y, A, z)) of every candidate."""
    from mpcli.recon.classical import l1_wavelet

    out = [("z", lambda y, A, z: z)]
    out += [(f"around z λ {lam:g}", lambda y, A, z, r=Refinement(lam, 0.0, 45): r.apply(y, A, z)) for lam in LAMS]
    out += [(f"weighted λ {lam:g}", lambda y, A, z, r=Refinement(lam, 0.0, 45, EPS): r.apply(y, A, z))
            for lam in LAMS_WEIGHTED]
    out += [(f"plain CS λ {lam:g}", lambda y, A, z, lam=lam: l1_wavelet(y, A.maps, A.mask, lam, 100))
            for lam in LAMS]
    return out


def main() -> None:
    args, device, model, theta, sha = c.prior_task_grid(__doc__, lambda ap: ap.add_argument(
        "--splits", default=",".join(SPLITS), help="held-out splits to compare: lines, samples"))
    splits = {name: SPLITS[name] for name in args.splits.split(",")}
    cands = candidates()
    kind = [name.split()[0] for name, _ in cands]  # z, around, weighted, plain
    pools = {"around z": [i for i, k in enumerate(kind) if k in ("z", "around")],
             "weighted": [i for i, k in enumerate(kind) if k in ("z", "weighted")],
             "+ plain CS": [i for i, k in enumerate(kind) if k in ("z", "around", "plain")]}
    keys = [(s, lname, pool) for s in splits for lname in LOSSES for pool in pools]
    rows, regrets = [], {k: {} for k in keys}
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in args.families.split(","):
            task = c.draw_task(fam, seed)
            print(f"[{fam} seed {seed}] {c.task_label(task)}", file=sys.stderr)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            inside = c.support(vol.maps).cpu().numpy()
            b = c.site_batch(vol)
            z = c.apply_network(model, theta, b.y, b.A)
            psnr = np.array([c.score(vol.ref, np.abs(f(b.y, b.A, z).cpu().numpy()) * inside)[0] for _, f in cands])
            sub = take(b, torch.arange(min(2, b.y.shape[0])))
            row = [fam, seed, c.task_label(task), f"{cands[int(psnr.argmax())][0]}: {psnr.max():.2f}"]
            w = spectral_weight(sub.y, acquired_mask(sub.y, sub.A))  # [H, W]
            for name, split in splits.items():
                train, val = holdout(sub, 0.1, seed, split)
                zt = c.apply_network(model, theta, train.y, train.A)
                images = [f(train.y, train.A, zt) for _, f in cands]
                for lname in LOSSES:
                    loss = np.array([heldout_loss(x, val, w if lname == "whitened" else None) for x in images])
                    for pool, idx in pools.items():
                        best = max(idx, key=lambda i: psnr[i])
                        pick = min(idx, key=lambda i: loss[i])
                        regrets[(name, lname, pool)].setdefault(seed, []).append(psnr[best] - psnr[pick])
                        row.append(f"{cands[pick][0]}: {psnr[pick]:.2f}")
            rows.append(row)
            print("  " + " | ".join(str(v) for v in row[3:]), file=sys.stderr)
    cols = ["family", "seed", "task", "best by the truth"]
    cols += [f"{s} split, {lname}, {pool}" for s, lname, pool in keys]
    for seed in regrets[keys[0]]:
        rows.append([f"mean regret (dB), seed {seed}", "", "", "", *(f"{np.mean(regrets[k][seed]):.2f}" for k in keys)])
    rows.append(["mean regret (dB)", "", "", "",
                 *(f"{np.mean([r for v in regrets[k].values() for r in v]):.2f}" for k in keys)])
    print(c.header("Held-out k-space as a chooser: the candidate each split picks, PSNR dB", device, args.prior,
                   sha, f"{args.slices} slices per task; unadapted prior; Γ 10 % of the acquisition on 2 slices"))
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
