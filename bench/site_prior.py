"""Does a site prior (unsupervised site meta-training) adapt better than the shipped prior?

A simulated "site" scans an anatomy/contrast the shipped prior never saw
(default: synthetic T2-like MNI contrast, sagittal — both outside
``DEFAULT_TRAIN_FAMILY``, cf. ``HELD_OUT["contrast"]`` and ``HELD_OUT["sagittal"]``)
with one fixed protocol (random mask R 4, 8 % centre, 8 coils, 1 % noise,
128×128). Each scan is ``--slices`` slices of one :class:`~mpcli.data.tasks.Task`
(its fixed mask; anatomy, coils, phase and noise per slice).

1. ``--train`` undersampled site scans are written as fastMRI files **without**
   any reference image; ``--test`` held-out scans are written the same way and
   their ground truth is kept aside (in memory only).
2. Site meta-training, started at the shipped prior, on the training files
   alone (ESPIRiT maps, :func:`mpcli.meta.train.meta_train_site`: the bilevel
   loop whose outer loss predicts held-out acquired k-space; the inner problem
   is the shipped config's, first-order hypergradient, ``--steps`` outer steps).
3. On every test scan, each prior (a) shipped, (b) site is scored without
   adaptation and after ``mp adapt``'s adaptation (:func:`mpcli.meta.adapt.adapt`
   with the command's defaults, i.e. the same budget for both; one adaptation
   per test scan, as ``mp adapt --kspace test_i.h5`` does).

Reference: the coil-combined truth |x|·√(Σ_c |S_c|²) (what ideal SENSE with
ESPIRiT-normalised maps returns), magnitude; PSNR/SSIM of ``mpcli.metrics``
per volume with data range = reference max. The check is
"site prior + adapt > shipped prior + adapt" on the mean PSNR over test scans.

    python bench/site_prior.py --quick                 # smoke run, ~1-2 min on 2 cores
    python bench/site_prior.py                          # the full benchmark (see --help for sizes)
    python bench/site_prior.py --prior some.safetensors --steps 200 --json site.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import machine, resolve_prior  # bench/speed.py


def site_task(source: str, plane: str, size: int, coils: int, seed: int):
    """The site's one acquisition protocol, as a Task."""
    from mpcli.data.tasks import Task

    return Task(mask_kind="random", acceleration=4.0, center_fraction=0.08, n_coils=coils, noise_rel=0.01,
                source=source, plane=plane, size=(size, size), seed=seed)


def write_scans(task, folder: Path, prefix: str, n: int, slices: int, offset: int) -> list[tuple[Path, np.ndarray]]:
    """Write ``n`` undersampled scans (no reference stored); return (path, truth ``[S, H, W]``)."""
    from mpcli.io.fastmri import write_fastmri
    from mpcli.scan import Geometry

    folder.mkdir(parents=True, exist_ok=True)
    mask = task.mask()[0, 0]  # [1, W] (1-D kinds) or [H, W]
    mask = mask.reshape(-1) if mask.shape[0] == 1 else mask
    out = []
    for i in range(n):
        b = task.sample(slices, offset + i * slices)  # x [S, H, W], y [S, C, H, W] (masked), maps [S, C, H, W]
        truth = (b.x.abs() * b.A.maps.abs().pow(2).sum(1).sqrt()).numpy().astype(np.float32)  # [S, H, W]
        path = write_fastmri(folder / f"{prefix}_{i:02d}.h5", b.y, mask=mask,
                             geometry=Geometry.default(slices, (1.8, 1.8, 3.0)), attrs={"acquisition": "SITE_SIM"})
        out.append((path, truth))
    return out


def cfg_site_lr() -> float:
    """The shipped config's site-mode outer learning rate."""
    from mpcli.meta.train import MetaTrainConfig

    return MetaTrainConfig.from_toml(REPO / "mpcli" / "configs" / "meta_prior.toml").site_outer_lr


def site_meta_train(prior: Path, files: list[Path], out: Path, steps: int, device: torch.device, seed: int,
                    outer_lr: float | None = None, holdout: float | None = None):
    """meta_train_site from ``prior`` on ``files`` (measurements only), shipped config's inner problem."""
    from mpcli.deploy import load_site
    from mpcli.io.weights import load_weights
    from mpcli.meta.adapt import scan_batch
    from mpcli.meta.train import MetaTrainConfig, meta_train_site

    state, meta = load_weights(prior)
    cfg = MetaTrainConfig.from_toml(REPO / "mpcli" / "configs" / "meta_prior.toml")
    cfg = dataclasses.replace(cfg, steps=steps, first_order=True, device=str(device), network=meta["config"],
                              checkpoint_every=0, val_every=max(steps // 2, 1), val_tasks=2, seed=seed)
    if outer_lr is not None:
        cfg = dataclasses.replace(cfg, site_outer_lr=outer_lr)
    if holdout is not None:
        cfg = dataclasses.replace(cfg, site_holdout=holdout)
    site = load_site(files, device)
    scans = [scan_batch(s.scan, s.maps, device) for s in site]
    t0 = time.perf_counter()

    def progress(step, total, record):
        if step == 1 or step % max(total // 10, 1) == 0 or step == total:
            val = f", val {record['val_outer_loss']:.4g}" if "val_outer_loss" in record else ""
            print(f"  site meta-train {step}/{total}: outer {record['outer_loss']:.4g}{val} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    result = meta_train_site(cfg, scans, state, out, log=out.with_suffix(".jsonl"), progress=progress)
    return result, time.perf_counter() - t0


def evaluate(priors: dict[str, Path], tests: list[tuple[Path, np.ndarray]], device: torch.device,
             adapt_steps: int | None, seed: int) -> tuple[list[dict], dict]:
    """PSNR/SSIM per test scan for each prior, without and with adaptation (+ zero-filled)."""
    from mpcli.deploy import load_site
    from mpcli.io.weights import load_model
    from mpcli.meta.adapt import AdaptConfig, adapt, prior_params, scan_batch
    from mpcli.metrics import psnr, ssim
    from mpcli.recon.apply import reconstruct_network
    from mpcli.recon.classical import reconstruct_classical

    config = AdaptConfig(seed=seed) if adapt_steps is None else AdaptConfig(seed=seed, steps=adapt_steps)
    rows, seconds = [], {}
    for path, truth in tests:
        site = load_site([path], device)[0]  # ESPIRiT once per scan, shared by every method
        scan, maps = site.scan, site.maps
        def score(img, truth=truth):
            return psnr(truth, img, float(truth.max())), ssim(truth, img, float(truth.max()))

        row = {"scan": path.name, "zero-filled": score(reconstruct_classical(scan, "zero-filled", device=device))}
        for name, weights in priors.items():
            model, _ = load_model(weights, device=device)
            row[f"{name}"] = score(reconstruct_network(model, scan, maps, device))
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            res = adapt(model, prior_params(model), [scan_batch(scan, maps, device)], config)
            seconds.setdefault(name, []).append(time.perf_counter() - t0)
            model.load_state_dict({k: v.detach() for k, v in res.params.items()}, strict=True)
            row[f"{name} + adapt"] = score(reconstruct_network(model, scan, maps, device))
            row[f"{name} steps"] = len(res.curve) - 1
        rows.append(row)
        print(f"  scored {path.name}", file=sys.stderr, flush=True)
    return rows, {k: statistics.median(v) for k, v in seconds.items()}


def render(info: dict, setting: dict, rows: list[dict], train_s: float, adapt_s: dict) -> tuple[str, bool]:
    methods = ["zero-filled", "shipped", "site", "shipped + adapt", "site + adapt"]
    mean = {m: (float(np.mean([r[m][0] for r in rows])), float(np.mean([r[m][1] for r in rows]))) for m in methods}
    gain = mean["site + adapt"][0] - mean["shipped + adapt"][0]
    wins = sum(r["site + adapt"][0] > r["shipped + adapt"][0] for r in rows)
    ok = gain > 0
    lines = [
        "## Site prior vs shipped prior", "",
        f"Machine: {info['cpu']}, {info['cores']} cores (load {info['load_1min']}); torch {info['torch']}; CUDA device: {info['cuda_device'] or 'none'}",
        (f"Site: source {setting['source']}, plane {setting['plane']}, {setting['size']}×{setting['size']}, "
        f"{setting['coils']} coils, random mask R 4 (8 % centre), 1 % noise; {setting['train']} training scans and "
        f"{setting['test']} test scans of {setting['slices']} slices; prior: {setting['prior']}"),
        f"Site meta-training: {setting['steps']} outer steps, first order, outer lr {setting['outer_lr'] or cfg_site_lr()}, "
        f"holdout {setting['holdout'] or 'config'}, {train_s:.0f} s on {setting['device']}; "
        f"adaptation budget: {setting['adapt_steps'] or 'mp adapt default (40 steps, early stopping)'}; median adapt "
        + ", ".join(f"{k} {v:.1f} s" for k, v in adapt_s.items()),
        "",
        "| test scan | " + " | ".join(methods) + " | adapt steps (shipped/site) |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for r in rows:
        lines.append(f"| {r['scan']} | " + " | ".join(f"{r[m][0]:.2f} dB / {r[m][1]:.3f}" for m in methods)
                     + f" | {r['shipped steps']}/{r['site steps']} |")
    lines.append("| **mean** | " + " | ".join(f"**{mean[m][0]:.2f} dB / {mean[m][1]:.3f}**" for m in methods) + " | |")
    lines += ["", "(PSNR / SSIM against |x|·√Σ|S|², data range = reference max)", "",
              (f"Check site prior + adapt > shipped prior + adapt: {'PASS' if ok else 'FAIL'} "
              f"(mean PSNR {mean['site + adapt'][0]:.2f} vs {mean['shipped + adapt'][0]:.2f} dB, "
              f"{gain:+.2f} dB; better on {wins}/{len(rows)} scans; SSIM {mean['site + adapt'][1]:.3f} vs "
              f"{mean['shipped + adapt'][1]:.3f})")]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="mni_t2like", help="image source of the site (mni_t2like, mni_flairlike …)")
    p.add_argument("--plane", default="sagittal")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--slices", type=int, default=8, help="slices per scan")
    p.add_argument("--train", type=int, default=8, help="training scans (no ground truth)")
    p.add_argument("--test", type=int, default=3, help="held-out test scans")
    p.add_argument("--steps", type=int, default=60, help="site meta-training outer steps (~8 s each at 128×128 on "
                   "2 idle cores: 60 ≈ 8-10 min)")
    p.add_argument("--outer-lr", type=float, default=None, help="site meta-training outer Adam lr (default: the config's site_outer_lr)")
    p.add_argument("--holdout", type=float, default=None, help="fraction of acquired k-space held out (default: config's)")
    p.add_argument("--adapt-steps", type=int, default=None, help="adaptation budget (default: mp adapt's)")
    p.add_argument("--prior", default=None, help="starting prior (default: shipped, else a random stand-in)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (64×64, 2+1 scans of 4 slices, 3 steps)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (site weights too)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.slices, args.train, args.test, args.steps = 64, 4, 2, 1, 3
        args.adapt_steps = args.adapt_steps or 3
    from mpcli.device import resolve_device

    device = resolve_device(args.device)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="mp_site_") if args.keep is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        prior, label = resolve_prior(args.prior, work)
        task = site_task(args.source, args.plane, args.size, args.coils, seed=1000 + args.seed)
        t0 = time.perf_counter()
        train = write_scans(task, work / "archive", "train", args.train, args.slices, offset=0)
        tests = write_scans(task, work / "test", "test", args.test, args.slices, offset=10_000)
        print(f"wrote {len(train)} + {len(tests)} site scans in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        site_w = work / "site_prior.safetensors"
        _, train_s = site_meta_train(prior, [p for p, _ in train], site_w, args.steps, device, args.seed,
                                     args.outer_lr, args.holdout)
        rows, adapt_s = evaluate({"shipped": prior, "site": site_w}, tests, device, args.adapt_steps, args.seed)
        setting = {k: getattr(args, k) for k in ("source", "plane", "size", "coils", "slices", "train", "test",
                                                  "steps", "adapt_steps", "outer_lr", "holdout")}
        setting.update(prior=label, device=str(device))
        text, ok = render(machine(), setting, rows, train_s, adapt_s)
        print(text)
        if args.json:
            args.json.write_text(json.dumps({"setting": setting, "rows": rows, "train_s": train_s,
                                             "adapt_s": adapt_s, "pass": ok}, indent=2))
        return 0 if ok else 2
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
