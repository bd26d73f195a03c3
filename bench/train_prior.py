"""Train the scan-like prior with the curriculum of :mod:`mpcli.meta.curriculum`, resumably.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/train_prior.py --threads 1 \\
        --checkpoint train/prior_ckpt.safetensors --log train/prior_log.jsonl > train/prior.out 2>&1 &

Re-running the same command resumes from the checkpoint (one file, overwritten
atomically every ``--checkpoint-every`` seconds, at each stage end and on
SIGTERM/SIGINT) with the configuration stored in it. ``--amend`` first moves a
running recipe to the code's default network options, loss and μ step size
(what the committed run did at kfull step 619: adaptive μ, PSNR loss; and at
step ~1100: ESPIRiT maps). ``--workers N`` makes the coming steps' examples in N
other processes meanwhile (the same run; ``bench/train_throughput.py`` times it).
``--export FILE`` writes the checkpoint's θ as an ``mp``
weight file and exits. ``--tiny`` is a seconds-long configuration for checks.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="train/prior_ckpt.safetensors")
    ap.add_argument("--log", default="train/prior_log.jsonl")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (1 on a shared machine)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (CUDA when there is one)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast for the training passes (GPU)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes that make the coming steps' examples meanwhile (one core each; same run)")
    ap.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    ap.add_argument("--val-every", type=float, default=900.0, help="seconds between validations")
    ap.add_argument("--max-steps", type=int, default=None, help="stop (checkpointed) after this many steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a seconds-long configuration (checks, tests)")
    ap.add_argument("--recipe-from-code", action="store_true",
                    help="resume with the code's default curriculum instead of the stored one (allowed when it "
                         "differs only in stages not started yet and in stage lengths)")
    ap.add_argument("--stage-steps", action="append", default=[], metavar="NAME=N",
                    help="change a stage's length (e.g. k1=1500); allowed when resuming too")
    ap.add_argument("--export", default=None, help="write the checkpoint's weights as an mp weight file and exit "
                                                   "(the averaged θ when the run keeps one)")
    ap.add_argument("--raw", action="store_true", help="with --export: the last θ, not the average")
    ap.add_argument("--amend", action="store_true",
                    help="change the running recipe at the checkpoint's step to the code's default network "
                         "options, task family, loss and μ step size (logged as an 'amend' record), then continue")
    a = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    from mpcli.device import resolve_device
    from mpcli.meta import curriculum as cur

    if a.export:
        print(a.export, cur.export_weights(a.checkpoint, a.export, averaged=not a.raw))
        return 0
    if a.amend:
        fresh = cur.default_curriculum(a.seed)
        _, stored = cur.load_checkpoint(a.checkpoint)
        extra = {k: v for k, v in fresh.network.items() if stored.network.get(k) != v}
        family = {k: v for k, v in fresh.tasks.items() if stored.tasks.get(k) != v}
        print("amended:", cur.amend(a.checkpoint, a.log, network=extra or None, loss=fresh.loss,
                                    mu_lr_scale=fresh.mu_lr_scale, maps=fresh.maps, tasks=family or None,
                                    ema=fresh.ema),
              flush=True)
    if os.path.exists(a.checkpoint) and not a.recipe_from_code:  # resume the recipe the run started with
        _, config = cur.load_checkpoint(a.checkpoint)
        print(f"resuming {a.checkpoint} with its stored configuration", flush=True)
    else:
        config = cur.tiny_curriculum(a.seed) if a.tiny else cur.default_curriculum(a.seed)
    if a.stage_steps:
        try:
            steps = {k: int(v) for k, v in (item.split("=", 1) for item in a.stage_steps)}
        except ValueError:
            ap.error(f"--stage-steps takes NAME=N, got {a.stage_steps}")
        config = cur.with_stage_steps(config, steps)

    def show(rec: dict) -> None:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}, flush=True)

    state = cur.train(config, a.checkpoint, a.log, checkpoint_every_s=a.checkpoint_every,
                      val_every_s=a.val_every, max_steps=a.max_steps, handle_signals=True, progress=show,
                      workers=a.workers, device=resolve_device(a.device), amp=a.amp)
    print(f"stopped at stage {state.stage} step {state.step}, {state.wall_s / 3600:.3f} h trained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
