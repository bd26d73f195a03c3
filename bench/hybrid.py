"""CS around the unadapted prior's image, tuned by held-out k-space on a full (λ, μ) grid.

The shipped prior's reconstruction z = f_θ(y) starts, and with μ > 0 anchors, an
L1-wavelet CS solve (cycle-spun, ``--iters`` FISTA iterations):

    x̂ = argmin_x ½‖W^½(A x − y)‖² + μ/2‖x − z‖² + λ‖Ψ x‖₁,   started from x = z.

(λ, μ) are chosen as ``mp adapt`` chooses μ, without ground truth, on its own split
(``mpcli.meta.adapt.holdout``: 10 % of the acquired lines, or samples of a 2-D mask,
held out), every (λ, μ) of the grid reconstructs from the rest (z from the rest too), and the pair that best predicts
the held-out samples reconstructs from all of them. Beside it, CS from zero with
λ chosen the same way (100 iterations), and the prior alone. One task per family
of ``bench/quality.py`` and ``--seeds`` draw, 4 test slices, PSNR inside the
ESPIRiT support as there; compare with its ``cs*``/``bart*`` (λ tuned on the truth)
and ``adapt`` columns. ``mp adapt`` refines its adapted network the same way, with a
coordinate search (λ at μ = 0, then μ; :mod:`mpcli.recon.refine`): its result is
``bench/quality.py``'s ``adapt`` column.

    python bench/hybrid.py --threads 1            # 8 tasks, ~15 min, 1 thread
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.meta.adapt import AdaptConfig, holdout
from mpcli.physics.sense import Sense
from mpcli.recon.classical import l1_wavelet

LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
MUS = (0.0, 0.01, 0.03, 0.1, 0.3)


def run_task(vol: c.Volume, model, theta, iters: int) -> dict:
    """PSNR of the prior θ, held-out-tuned CS and held-out-tuned CS around the prior's image; their
    choices."""
    config = AdaptConfig()
    whole = c.site_batch(vol)
    train, val = holdout(whole, config.val_fraction, config.seed)  # mp adapt's split T ⊔ Γ
    y_t, t = train.y, train.A.mask  # [S, C, H, W], what the choice reconstructs from

    def heldout(x: torch.Tensor) -> float:
        return float((val.A(x) - val.y).abs().pow(2).sum())

    def network(y: torch.Tensor, A: Sense) -> torch.Tensor:
        with torch.no_grad():
            return c.apply_network(model, theta, y, A)  # [S, H, W]

    z_t, z = network(train.y, train.A), network(whole.y, whole.A)
    around = {(lam, mu): heldout(l1_wavelet(y_t, vol.maps, t, lam, iters, start=z_t, mu=mu))
              for lam in LAMS for mu in MUS}
    lam_h, mu_h = min(around, key=around.get)
    net_val = heldout(z_t)
    alone = {lam: heldout(l1_wavelet(y_t, vol.maps, t, lam)) for lam in LAMS}
    lam_c = min(alone, key=alone.get)

    inside = c.support(vol.maps).cpu().numpy()  # [S, H, W]

    def psnr(x: torch.Tensor) -> float:
        return c.score(vol.ref, np.abs(x.detach().cpu().numpy()) * inside)[0]

    return {"prior": psnr(z), "cs": psnr(l1_wavelet(vol.y, vol.maps, vol.mask, lam_c)), "cs_lam": lam_c,
            "hybrid": psnr(l1_wavelet(vol.y, vol.maps, vol.mask, lam_h, iters, start=z, mu=mu_h)),
            "hybrid_lam": lam_h, "hybrid_mu": mu_h, "val_ratio": around[(lam_h, mu_h)] / net_val}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(c.DEFAULT_PRIOR))
    ap.add_argument("--iters", type=int, default=60, help="FISTA iterations from the network's image")
    c.add_task_grid_args(ap)
    args = ap.parse_args()
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for fam in c.HELD_OUT_FAMILIES:
            task = c.draw_task(fam, seed)
            print(f"[{fam} seed {seed}] {c.task_label(task)}", file=sys.stderr)
            vol = c.with_maps(c.simulate_volume(task, args.slices, seed, device=device))
            r = run_task(vol, model, theta, args.iters)
            rows.append([fam, seed, c.task_label(task), r["prior"], r["cs"], f"{r['cs_lam']:g}", r["hybrid"],
                         f"{r['hybrid_lam']:g}", f"{r['hybrid_mu']:g}", f"{r['val_ratio']:.3f}"])
    cols = ["family", "seed", "task", "prior", "CS (held-out λ)", "λ", "CS around the prior (held-out λ, μ)",
            "λ", "μ", "held-out loss / network's"]
    rows.append(["mean", "", "", *(float(np.mean([r[i] for r in rows])) if i in (3, 4, 6) else ""
                                   for i in range(3, len(cols)))])
    print(c.header("CS around the network's image, (λ, μ) chosen by held-out k-space: PSNR dB", device,
                   args.prior, sha, f"{args.slices} slices per task, λ grid {LAMS}, μ grid {MUS}, "
                   f"{args.iters} iterations from the prior's image; CS from zero 100"))
    print(c.markdown_table(rows, cols))


if __name__ == "__main__":
    main()
