"""Meta-prior vs scratch: PSNR after k fine-tuning steps on a task never seen in meta-training.

The paper's first experiment (Terris & Moreau 2023, Fig. 2), on multi-coil MRI.
For one task drawn from a ``HELD_OUT`` family, four fine-tuning runs start
either at θ* (the meta-prior) or at a random initialisation φ₀ of the same
architecture, each with the inner problem of ``mp adapt`` (``inner_step``,
AdaptConfig's optimiser, lr and λ; the proximal term pulls towards the start)::

    φ ← step(φ; ∇[L(f_φ) + λ/2 ‖φ − φ₀‖²])

- sup:   L = supervised ℓ2 on training slices of the task (other examples of
         the same task with their ground truth, never the test slices);
- unsup: L = AdaptConfig's measurement-only loss (SSDU) on the test scan's own
         k-space minus the self-validation set Γ, as ``mp adapt`` trains
         (no early stopping here: the curve is the point).

Each step takes ``slices_per_step`` random slices. After 0, 1, 5, 20, 50 steps
the network reconstructs the test scan from all its acquired k-space (ESPIRiT
maps estimated from the data) and is scored against |x|·RSS(S) (PSNR/SSIM,
fastMRI). Rows: step counts; columns: (θ*, sup), (random, sup), (θ*, unsup),
(random, unsup).

    python bench/meta_vs_scratch.py                 # full: one task, 6 test slices (~7 min, 2 cores)
    python bench/meta_vs_scratch.py --quick --prior /tmp/prior.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.data.tasks import Batch
from mpcli.meta.adapt import AdaptConfig, holdout
from mpcli.meta.functional import tree_detach
from mpcli.meta.inner import init_opt_state, inner_step
from mpcli.meta.losses import derive_seed, make_loss, reseed
from mpcli.physics.sense import Sense

RUNS = (("theta*", "sup"), ("random", "sup"), ("theta*", "unsup"), ("random", "unsup"))


def curve(model, start, data, loss, config: AdaptConfig, checkpoints: list[int], vol, seed: int) -> dict:
    """Fine-tune from ``start`` on ``data`` (a Batch; x = None for unsupervised);
    {k: (PSNR, SSIM)} on the test volume at every k in ``checkpoints``."""
    gen = torch.Generator().manual_seed(seed)
    phi, state = dict(start), init_opt_state(config.optimizer, start)
    scores, n = {}, data.y.shape[0]
    t0 = time.perf_counter()
    for k in range(max(checkpoints) + 1):
        if k in checkpoints:
            scores[k] = c.score(vol.ref, c.run_network(vol, model, phi).image)
        if k == max(checkpoints):
            break
        idx = torch.randperm(n, generator=gen)[: config.slices_per_step].sort().values.to(data.y.device)
        batch = Batch(None if data.x is None else data.x[idx], data.y[idx],
                      Sense(data.A.maps[idx], data.A.mask[idx]))
        reseed(loss, derive_seed(seed, k + 1))
        phi, state, _ = inner_step(model, phi, start, batch, loss, config.lr, config.lam, state)
        phi = tree_detach(phi)
    return {"scores": scores, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(ap)
    ap.add_argument("--family", default="contrast", help="HELD_OUT family the task is drawn from")
    ap.add_argument("--steps", default="0,1,5,20,50", help="checkpoints (fine-tuning steps)")
    ap.add_argument("--slices", type=int, default=6, help="test slices (the scan)")
    ap.add_argument("--train-slices", type=int, default=12, help="supervised training slices of the task")
    args = ap.parse_args()
    config = AdaptConfig()
    if args.quick:
        args.steps, args.slices, args.train_slices = "0,1,2", 2, 2
        config = AdaptConfig(slices_per_step=2)
    checkpoints = sorted({int(s) for s in args.steps.split(",")})
    device = c.setup(args)
    model, theta, sha, net_config = c.load_prior(args.prior, device)
    task = c.draw_task(args.family, args.seed)
    print(f"[{args.family}] {c.task_label(task)}", file=sys.stderr)

    t0 = time.perf_counter()
    vol = c.with_maps(c.simulate_volume(task, args.slices, args.seed, device=device))
    sup_data = c.training_batch(task, args.train_slices, args.seed, device)
    site_train, _ = holdout(c.site_batch(vol), config.val_fraction, derive_seed(config.seed, 0, 17))
    unsup_data = Batch(None, site_train.y, site_train.A)
    starts = {"theta*": theta, "random": c.random_init(net_config, args.seed + 1, device)}
    results = {}
    for init, kind in RUNS:
        loss = make_loss("l2") if kind == "sup" else make_loss(config.loss, **config.loss_kw)
        data = sup_data if kind == "sup" else unsup_data
        results[(init, kind)] = curve(model, starts[init], data, loss, config, checkpoints, vol, args.seed)
        print(f"  ({init}, {kind}) {results[(init, kind)]['seconds']:.1f} s", file=sys.stderr)
    total = time.perf_counter() - t0

    print(c.header("Meta-prior vs scratch: PSNR dB / SSIM after k fine-tuning steps (held-out task)",
                   device, args.prior, sha,
                   f"task [{args.family}] {c.task_label(task)}; {args.slices} test slices, "
                   f"{args.train_slices} supervised training slices, seed {args.seed}; inner step: "
                   f"{config.optimizer} lr {config.lr:g}, λ {config.lam:g}, {config.slices_per_step} slices/step, "
                   f"unsup loss {config.loss}"))
    cols = ["steps"] + [f"({i}, {k}) PSNR" for i, k in RUNS] + [f"({i}, {k}) SSIM" for i, k in RUNS]
    rows = [[k] + [results[r]["scores"][k][0] for r in RUNS] + [results[r]["scores"][k][1] for r in RUNS]
            for k in checkpoints]
    print(c.markdown_table(rows, cols))
    print("\nseconds per run: " + ", ".join(f"({i}, {k}) {results[(i, k)]['seconds']:.0f}" for i, k in RUNS))
    print(f"total {total:.0f} s")
    c.save_json(args.json, {"machine": c.machine(device), "prior": args.prior, "sha256": sha, "seed": args.seed,
                            "task": task.to_dict(), "family": args.family, "adapt_config": config.__dict__,
                            "results": [{"init": i, "loss": k, **results[(i, k)]} for i, k in RUNS],
                            "total_s": total})


if __name__ == "__main__":
    main()
