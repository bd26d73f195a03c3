"""Seconds per curriculum step with the examples made in place vs by worker processes.

Each run resumes a fresh copy of ``--checkpoint`` (the committed run by default) for
``--steps`` steps of its current stage, with ``--workers`` 0 first (the baseline, same
process), then each other count; one torch thread in the training process. The runs
train identical steps (``tests/test_curriculum.py``), so only the time differs. A
run's time includes starting its workers. Give it idle cores: each worker takes one.

    python bench/train_throughput.py                        # workers 0 and 1, 8 steps each, ~3 min
    python bench/train_throughput.py --workers 0,1,4 --steps 20   # on a many-core machine
    python bench/train_throughput.py --device cuda --amp --workers 0,8  # a GPU (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

from mpcli.device import resolve_device
from mpcli.meta import curriculum as cur


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[1] / "train" / "prior_ckpt.safetensors"))
    ap.add_argument("--workers", default="0,1", help="comma-separated worker counts (0 = in place, the baseline)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (as bench/train_prior.py --amp)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(a.device)
    counts = sorted({int(v) for v in a.workers.split(",")} | {0})
    state, config = cur.load_checkpoint(a.checkpoint)
    stage = config.stages[state.stage]
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            ck = Path(tmp) / f"w{n}.safetensors"
            shutil.copy(a.checkpoint, ck)
            t0 = time.perf_counter()
            cur.train(config, ck, None, max_steps=a.steps, workers=n, checkpoint_every_s=1e9, val_every_s=1e9,
                      device=device, amp=a.amp)
            per_step = (time.perf_counter() - t0) / a.steps
            base = base or per_step
            rows.append([n, per_step, base / per_step])
    print(f"# Curriculum step time, stage {stage.name} from step {state.step} ({a.steps} steps, "
          f"{stage.tasks_per_step} tasks × {stage.slices} slices, maps {config.maps}"
          f"{', bfloat16 autocast' if a.amp else ''})\n")
    print(c.machine(device) + "\n")
    print(c.markdown_table(rows, ["workers", "s / step", "speed-up vs in place"]))


if __name__ == "__main__":
    main()
