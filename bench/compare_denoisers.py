"""Quality per CPU-second of unrolled networks: which denoiser to train the scan-like prior with.

Each network is trained supervised (L1, Adam 1e-3, gradient norm clipped at 1) from the
same seed on the same stream of tasks — the curriculum's scan-like family narrowed to
128², 8 coils (``--size``, ``--coils``) — for a fixed budget of *CPU seconds* of this
process (``time.process_time``, so other jobs on a shared machine do not count),
then scored on the curriculum's first two validation tasks (anatomy never trained on,
:func:`mpcli.meta.curriculum.default_validation_tasks`, resized) beside tuned L1-wavelet CS:

    modl_cnn        MoDL, 5-layer 32-channel CNN, CG data consistency (the shipped prior's network)
    modl_unet       MoDL, shared 4-level U-Net, 16 base channels (482k parameters)
    varnet_unet     ResUnroll with the same U-Net: gradient data consistency, no CG (E2E-VarNet-style)
    pdnet           the paper's unrolled primal–dual network (20 layers, 40 filters)

    OMP_NUM_THREADS=1 python bench/compare_denoisers.py --budget 600   # 4 × 10 CPU-minutes
    python bench/compare_denoisers.py --budget 20 --nets modl_cnn,modl_unet  # smoke run

Prints a table (parameters, CPU ms per step, steps done, validation PSNR, gap to CS).
"""

from __future__ import annotations

import argparse
import os
import time

NETS = {
    "modl_cnn": {"arch": "modl", "iters": 5, "features": 32, "depth": 5, "cg_iters": 6, "mu": 0.05},
    "modl_unet": {"arch": "modl", "iters": 5, "features": 16, "levels": 4, "denoiser": "unet", "cg_iters": 6,
                  "mu": 0.05},
    "varnet_unet": {"arch": "resunroll", "iters": 8, "features": 16, "levels": 4, "denoiser": "unet"},
    "pdnet": {"arch": "pdnet", "layers": 20, "filters": 40},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=600.0, help="CPU seconds of training per network")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from mpcli.data.tasks import SCAN_TRAIN_FAMILY, Task, TaskFamily
    from mpcli.meta.curriculum import CS_LAMBDAS, default_validation_tasks, psnr
    from mpcli.meta.functional import bind, params_of
    from mpcli.meta.losses import derive_seed
    from mpcli.recon.classical import l1_wavelet
    from mpcli.recon.network import build_network

    fam = TaskFamily.from_config({**SCAN_TRAIN_FAMILY.to_config(), "sizes": [[a.size, a.size]],
                                  "n_coils": [a.coils, a.coils]})
    val = []
    for d in default_validation_tasks()[:2]:
        val.append(Task.from_dict({**d, "size": [a.size, a.size], "n_coils": a.coils}).sample(2, 0))
    cs = []
    for b in val:
        cs.append(max(float(psnr(l1_wavelet(b.y, b.A.maps, b.A.mask, lam), b.x).mean()) for lam in CS_LAMBDAS))
    print(f"{'network':<12} {'params':>8} {'CPU ms/step':>11} {'steps':>6} {'val PSNR':>9} {'vs CS':>7}")
    print(f"{'CS (tuned)':<12} {'':>8} {'':>11} {'':>6} {np.mean(cs):9.2f} {0:7.2f}")
    for name in a.nets.split(","):
        torch.manual_seed(0)
        net = build_network(NETS[name])
        theta = {k: v.requires_grad_(True) for k, v in params_of(net).items()}
        opt = torch.optim.Adam(list(theta.values()), lr=1e-3)
        f = bind(net, theta)
        t0, steps = time.process_time(), 0
        while time.process_time() - t0 < a.budget:
            task = fam.sample_task(np.random.default_rng(derive_seed(0, steps)))
            b = task.sample(2, steps)
            loss = (f(b.y, b.A) - b.x).abs().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(theta.values()), 1.0)
            opt.step()
            steps += 1
        cpu = time.process_time() - t0
        with torch.no_grad():
            score = float(np.mean([float(psnr(f(b.y, b.A), b.x).mean()) for b in val]))
        n = sum(v.numel() for v in theta.values())
        print(f"{name:<12} {n:>8} {1000 * cpu / max(steps, 1):11.0f} {steps:>6} {score:9.2f} "
              f"{score - np.mean(cs):7.2f}", flush=True)


if __name__ == "__main__":
    main()
