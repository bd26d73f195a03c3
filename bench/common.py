"""Shared pieces of the reconstruction-quality benchmarks (not tests).

Volumes are simulated from a :class:`~mpcli.data.tasks.Task` (``Task.sample``);
every method sees only what a scanner gives: the undersampled k-space ``y`` and
its mask. Coil maps for SENSE, CS and the networks are ESPIRiT maps estimated
from ``y`` (:func:`estimated_maps`), never the simulation's true maps.

Reference image (the same for every method)
-------------------------------------------
The simulation draws y_c = M F(S_c x) + n with true maps S (normalised so that
max_r RSS_S(r) = 1, RSS_S = sqrt(Σ_c |S_c|²), which is < 1 away from the coils'
sweet spot). ESPIRiT returns maps Ŝ with Σ_c |Ŝ_c|² = 1 inside the object, i.e.
Ŝ_c ≈ e^{-iψ} S_c / RSS_S (ψ a per-pixel phase common to all coils). Writing
S_c x = Ŝ_c (e^{iψ} RSS_S x), the image that a SENSE-type method with maps Ŝ
recovers from fully sampled noise-free data is e^{iψ}·RSS_S·x, whose magnitude is

    ref = |x| · sqrt(Σ_c |S_c|²)          (the coil-combined truth)

— also exactly the RSS of the fully sampled coil images, sqrt(Σ_c |S_c x|²),
which is what zero-filled RSS converges to. So every method is scored on its
magnitude against ``ref``; comparing against |x| would charge every method for
the coil-profile shading, which no method can see. The phase e^{iψ} is an
arbitrary per-pixel phase of the maps, hence magnitudes.

Metrics: fastMRI's (``mpcli.metrics``): PSNR and SSIM per volume, data range =
max of the reference volume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mpcli.data.tasks import Batch, Task
from mpcli.io.weights import load_model
from mpcli.meta.adapt import AdaptConfig, SiteBatch, adapt
from mpcli.meta.functional import Params, bind, params_of, tree_detach
from mpcli.meta.inner import init_opt_state, inner_step
from mpcli.meta.losses import make_loss
from mpcli.metrics import psnr, ssim
from mpcli.physics.coils import estimate_maps, sense_combine
from mpcli.physics.sense import Sense, sense
from mpcli.recon.classical import cg_sense, l1_wavelet, zero_filled
from mpcli.recon.network import build_network
from mpcli.recon.refine import Refinement

DEFAULT_PRIOR = Path(__file__).resolve().parents[1] / "mpcli/weights/meta_prior.safetensors"
CS_LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # λ grid of the ground-truth-tuned CS
SENSE_TIKHONOV = 1e-2
TEST_START = 0  # example index j of the first test slice (plus 10 000 × seed)
TRAIN_START = 5_000_000  # first index of slices used for training (disjoint from the test slices)


# --------------------------------------------------------------------------- command line, machine, prior


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """--prior, --quick, --seed, --device, --threads, --json."""
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR), help="meta-prior weights (safetensors)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds to a couple of minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: auto = 1 when the load average is at least half the CPUs, "
                         "else torch's default; on a busy 2-core machine 2 threads ran 20x slower than 1)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")


HELD_OUT_FAMILIES = ("contrast", "poisson", "acceleration_8", "noise")
"""``bench/quality.py``'s default held-out task families, one task each per seed."""
EIGHT_FAMILIES = (*HELD_OUT_FAMILIES, "sagittal", "coils_16_20", "matrix", "phantom")
"""Every held-out family of ``mpcli/data/tasks.py`` that the families × seeds benches run."""


def add_task_grid_args(ap: argparse.ArgumentParser, slices: int = 4, families: tuple[str, ...] | None = None
                       ) -> None:
    """--seeds, --slices, --threads, --device of the benches that draw one task per held-out family and
    seed (and --seed, hidden: :func:`setup` seeds torch with it); --families too, given its default."""
    if families is not None:
        ap.add_argument("--families", default=",".join(families), help="comma-separated task families")
    ap.add_argument("--seeds", default="0,1", help="comma-separated task seeds")
    ap.add_argument("--slices", type=int, default=slices, help="test slices per task")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --seed; the resolved --device."""
    from mpcli.device import resolve_device

    threads = args.threads
    if threads <= 0 and hasattr(os, "getloadavg") and os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1):
        threads = 1  # oversubscribed OpenMP threads spin: far slower than one thread
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    return resolve_device(args.device)



def prior_task_grid(doc: str, extra=None):
    """Parse the arguments of a bench that runs the shipped (or ``--prior``) network on the eight held-out
    families × ``--seeds``; ``extra(ap)`` adds its own. Returns (args, device, model, θ*, SHA-256)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    if extra is not None:
        extra(ap)
    add_task_grid_args(ap, families=EIGHT_FAMILIES)
    args = ap.parse_args()
    device = setup(args)
    model, theta, sha, _ = load_prior(args.prior, device)
    return args, device, model, theta, sha


def machine(device: torch.device) -> str:
    """One line naming the machine: platform, CPUs, torch, threads, load, device."""
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
            f"{load}, device {device}{gpu}")


def load_prior(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, Params, str, dict]:
    """(model, θ*, content SHA-256, network config) of a weight file (hash verified by ``load_model``)."""
    model, meta = load_model(path, device)
    return model, tree_detach(params_of(model)), str(meta["sha256"]), dict(meta["config"])


def random_init(config: dict, seed: int, device: torch.device | str = "cpu") -> Params:
    """Parameters of a freshly initialised network ``build_network(config)`` (torch seed ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_network(config)
    return {k: v.detach().to(device) for k, v in fresh.named_parameters()}


# --------------------------------------------------------------------------- volumes


class Volume(NamedTuple):
    """One simulated test scan of a task (what a scanner gives, plus the truth).

    y: ``[S, C, H, W]`` masked noisy k-space; mask: ``[S, 1, H, W]``;
    maps_true: ``[S, C, H, W]`` the simulation's maps (for the reference only);
    x: ``[S, H, W]`` complex ground truth; ref: ``[S, H, W]`` float numpy,
    |x|·RSS(S_true) (see the module docstring); maps: ESPIRiT maps estimated
    from y (``None`` until :func:`with_maps`).
    """

    task: Task
    y: torch.Tensor
    maps_true: torch.Tensor
    mask: torch.Tensor
    x: torch.Tensor
    ref: np.ndarray
    maps: torch.Tensor | None = None


def coil_combined_truth(x: torch.Tensor, maps_true: torch.Tensor) -> torch.Tensor:
    """|x|·sqrt(Σ_c |S_c|²): ``[S, H, W]`` real (see the module docstring)."""
    return x.abs() * maps_true.abs().pow(2).sum(dim=-3).sqrt()  # [S, H, W]


def simulate_volume(task: Task, n_slices: int, seed: int = 0, start: int | None = None,
                    device: torch.device | str = "cpu") -> Volume:
    """``n_slices`` test slices of ``task``: examples j = start … start + n − 1.

    ``start`` defaults to TEST_START + 10 000·seed; training slices come from
    TRAIN_START on, so test and training examples never coincide.
    """
    start = TEST_START + 10_000 * seed if start is None else start
    b: Batch = task.sample(n_slices, start)
    S = b.y.shape[0]
    mask = b.A.mask.expand(S, 1, *b.y.shape[-2:]).contiguous()  # [S, 1, H, W]
    ref = coil_combined_truth(b.x, b.A.maps).numpy().astype(np.float32)  # [S, H, W]
    dev = torch.device(device)
    return Volume(task, b.y.to(dev), b.A.maps.to(dev), mask.to(dev), b.x.to(dev), ref)


def estimated_maps(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ESPIRiT maps from the undersampled data only: ``[S, C, H, W]``."""
    return estimate_maps(y, mask)


def with_maps(vol: Volume) -> Volume:
    """The volume with its ESPIRiT maps estimated from ``y``."""
    return vol._replace(maps=estimated_maps(vol.y, vol.mask))


def site_batch(vol: Volume) -> SiteBatch:
    """(y, A = M F Ŝ) of the scan, as ``mp adapt`` sees it (no ground truth)."""
    return SiteBatch(None, vol.y, sense(vol.maps, vol.mask))


def training_batch(task: Task, n: int, seed: int, device: torch.device | str = "cpu") -> Batch:
    """``n`` fresh supervised training slices of ``task`` (never the test slices).

    The inputs are what deployment gives (y and ESPIRiT maps Ŝ from y); the
    target is the fully sampled noise-free image in Ŝ's frame,
    x_t = Σ_c conj(Ŝ_c) S_c x (so |x_t| ≈ |x|·RSS(S), the reference).
    """
    vol = with_maps(simulate_volume(task, n, start=TRAIN_START + 10_000 * seed, device=device))
    target = sense_combine(vol.maps_true * vol.x[:, None], vol.maps)  # [n, H, W]
    return Batch(target, vol.y, sense(vol.maps, vol.mask))


# --------------------------------------------------------------------------- metrics, tables


def score(ref: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of magnitude volumes ``[S, H, W]`` (fastMRI, range = ref.max())."""
    image = np.asarray(image, dtype=np.float32)
    return psnr(ref, image), ssim(ref, image)


def markdown_table(rows: list, columns: list[str], digits: int = 2) -> str:
    """A markdown table; floats printed with ``digits`` decimals (SSIM columns: 4)."""
    def fmt(v, col):
        if isinstance(v, float):
            if math.isnan(v):
                return "–"
            return f"{v:.4f}" if "SSIM" in col else f"{v:.{digits}f}"
        return str(v)

    rows = [[fmt(r.get(c, "") if isinstance(r, dict) else r[i], c) for i, c in enumerate(columns)] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(s.ljust(w) for s, w in zip(cells, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def header(title: str, device: torch.device, prior: str | Path, sha: str, extra: str = "") -> str:
    """Title, machine and prior lines printed above every table."""
    lines = [f"# {title}", "", f"- machine: {machine(device)}", f"- prior: {prior} (sha256 {sha})"]
    if extra:
        lines.append(f"- {extra}")
    return "\n".join(lines) + "\n"


def save_json(path: str | Path | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def draw_task(family: str, seed: int) -> Task:
    """One task of ``HELD_OUT[family]``, a function of (family name, seed) only."""
    import zlib

    from mpcli.data.tasks import HELD_OUT

    return HELD_OUT[family].sample_task(np.random.default_rng([seed, zlib.crc32(family.encode())]))


def task_label(task: Task) -> str:
    """Short description of a task for table rows."""
    return (f"{task.source} {task.plane} {task.size[0]}x{task.size[1]}, {task.mask_kind} R{task.acceleration:g} "
            f"cf{task.center_fraction:.2f}, {task.n_coils}c, noise {task.noise_rel:.3f}")


# --------------------------------------------------------------------------- methods


class Recon(NamedTuple):
    """A method's magnitude volume ``[S, H, W]`` (numpy float32) and notes about the run.

    ``raw``: for the networks, the output before the support mask (see
    :func:`run_network`), else None.
    """

    image: np.ndarray
    info: dict
    raw: np.ndarray | None = None


def support(maps: torch.Tensor) -> torch.Tensor:
    """Where the coil maps are non-zero: ``[S, C, H, W]`` → ``[S, H, W]`` float (1 inside)."""
    return (maps.abs().pow(2).sum(dim=-3) > 0).to(torch.float32)  # [S, H, W]


def maps_ceiling(vol: Volume) -> tuple[float, float]:
    """(PSNR, SSIM) of ref·support(Ŝ) against ref: the best any method that is zero
    where the ESPIRiT maps are zero (SENSE, masked CS, the networks' data term)
    can score. ESPIRiT's eigenvalue crop can cut real tissue when the
    calibration block is small; this number shows how much it costs."""
    return score(vol.ref, vol.ref * support(vol.maps).cpu().numpy())


def _mag(x: torch.Tensor) -> np.ndarray:
    return x.detach().abs().cpu().numpy().astype(np.float32)


def run_zero_filled(vol: Volume) -> Recon:
    """RSS of the zero-filled coil images."""
    return Recon(_mag(zero_filled(vol.y)), {})


def run_sense(vol: Volume, tikhonov: float = SENSE_TIKHONOV, iters: int = 30) -> Recon:
    """CG-SENSE with ESPIRiT maps, small Tikhonov μ."""
    x = cg_sense(vol.y, Sense(vol.maps, vol.mask), tikhonov=tikhonov, iters=iters)
    return Recon(_mag(x), {"tikhonov": tikhonov, "iters": iters})


def run_cs_tuned(vol: Volume, lams=CS_LAMS, iters: int = 100, tune_slices: int | None = 2) -> Recon:
    """L1-wavelet CS with λ chosen per volume by PSNR *against the ground truth*.

    This favours CS (no deployable method can tune on the truth); it is an
    optimistic classical baseline. The sweep runs on ``tune_slices`` evenly
    spaced test slices (all slices when None) and the best λ then
    reconstructs the whole volume. ``info['lam']`` is the chosen λ and
    ``info['psnr_by_lam']`` the sweep (PSNR on the tuning slices).

    The image is multiplied by the support of the ESPIRiT maps (Σ|Ŝ|² > 0),
    which SENSE and the networks' data terms respect by construction: where
    Ŝ = 0 nothing in the data term constrains x, and ``l1_wavelet`` leaves
    wavelet-shrinkage artefacts there (≈ 0.04 of the image max at λ = 1e-2,
    costing CS 5–15 dB PSNR). The mask uses only the estimated maps, so it
    is deployable.
    """
    S = vol.y.shape[0]
    inside = support(vol.maps).cpu().numpy()  # [S, H, W]

    def solve(idx, lam) -> np.ndarray:
        return _mag(l1_wavelet(vol.y[idx], vol.maps[idx], vol.mask[idx], lam=lam, iters=iters)) * inside[idx]

    idx = np.arange(S) if not tune_slices or tune_slices >= S else np.linspace(0, S - 1, tune_slices).round().astype(int)
    sweep, images = {}, {}
    for lam in lams:
        images[lam] = solve(idx, lam)  # [len(idx), H, W]
        sweep[lam] = score(vol.ref[idx], images[lam])[0]
    best = max(sweep, key=sweep.get)
    image = images[best] if len(idx) == S else solve(np.arange(S), best)
    return Recon(image, {"lam": best, "psnr_by_lam": sweep, "tune_slices": [int(i) for i in idx]})


def apply_network(model: torch.nn.Module, params: Params, y: torch.Tensor, A: Sense,
                  batch: int = 4) -> torch.Tensor:
    """f_params(y, A) slice-batched under ``no_grad``: ``[S, H, W]`` complex."""
    f = bind(model, params)
    out = []
    with torch.no_grad():
        for i in range(0, y.shape[0], batch):
            sl = slice(i, i + batch)
            out.append(f(y[sl], Sense(A.maps[sl], A.mask[sl])))  # [b, H, W]
    return torch.cat(out)  # [S, H, W]


def run_network(vol: Volume, model: torch.nn.Module, params: Params) -> Recon:
    """The network at ``params`` on the whole scan, masked to the ESPIRiT support.

    Where Ŝ = 0 the operator A is blind (that region lies in Ker(A)), so no
    measurement-only loss sees what the network's CNN puts there, and
    adaptation can fill it freely (measured: 0.05 of the image max after two
    SSDU steps, −12 dB PSNR, while PSNR inside the support improved). Every
    map-based method is therefore scored on the support (SENSE is zero
    outside by construction, CS is masked too); ``raw`` keeps the unmasked
    output, which is what a network reconstruction writes unless it masks.
    """
    b = site_batch(vol)
    raw = _mag(apply_network(model, params, b.y, b.A))  # [S, H, W]
    return Recon(raw * support(vol.maps).cpu().numpy(), {}, raw)


def adapted_image(model: torch.nn.Module, res, y: torch.Tensor, A: Sense) -> torch.Tensor:
    """What ``mp adapt`` reconstructs from an :class:`~mpcli.meta.adapt.AdaptResult`: the adapted
    network, refined by CS around its image where adaptation chose so. ``[S, H, W]`` complex."""
    z = apply_network(model, res.params, y, A)  # [S, H, W]
    return z if res.refine is None else Refinement.from_dict(res.refine).apply(y, A, z)


def run_adapt(vol: Volume, model: torch.nn.Module, start: Params, config: AdaptConfig | None = None) -> Recon:
    """``mp adapt`` from ``start`` on this scan (measurements only), then reconstruct as it does."""
    config = config or AdaptConfig()
    b = site_batch(vol)
    res = adapt(model, start, [b], config)
    raw = _mag(adapted_image(model, res, b.y, b.A))  # [S, H, W]
    return Recon(raw * support(vol.maps).cpu().numpy(), {
        "best_step": res.best_step, "steps_run": len(res.curve) - 1, "stopped_early": res.stopped_early,
        "seconds": res.seconds, "distance": res.distance, "refine": res.refine}, raw)


def train_supervised(model: torch.nn.Module, start: Params, task: Task, steps: int = 150,
                     batch: int = 4, pool: int = 32, lr: float = 1e-3, seed: int = 0,
                     device: torch.device | str = "cpu", loss: str = "l2",
                     on_step: Callable[[int, Params], None] | None = None) -> tuple[Params, dict]:
    """Supervised fine-tuning of ``start`` on fresh slices of ``task`` (an oracle).

    ``pool`` training slices (indices from TRAIN_START, never the test slices)
    are simulated once with ESPIRiT maps (see :func:`training_batch`); each of
    ``steps`` Adam steps (lr, no proximal term) takes ``batch`` of them at
    random and minimises the supervised ``loss`` (``"l2"``: ‖f(y, A) − x_t‖²;
    ``"psnr"``: −PSNR, the curriculum's). ``on_step(k, φ_k)`` is called after
    step k (and with k = 0 before the first); its time is not counted.
    """
    t0 = time.perf_counter()
    data = training_batch(task, pool, seed, device)
    fn = make_loss(loss)
    gen = torch.Generator().manual_seed(seed)
    phi, state = dict(start), init_opt_state("adam", start)
    paused = 0.0
    for k in range(steps + 1):
        if on_step is not None:
            t = time.perf_counter()
            on_step(k, phi)
            paused += time.perf_counter() - t
        if k == steps:
            break
        idx = torch.randperm(pool, generator=gen)[:batch].to(data.y.device)
        b = Batch(data.x[idx], data.y[idx], Sense(data.A.maps[idx], data.A.mask[idx]))
        phi, state, _ = inner_step(model, phi, start, b, fn, lr, 0.0, state)
        phi = tree_detach(phi)
    return phi, {"steps": steps, "batch": batch, "pool": pool, "lr": lr, "loss": loss,
                 "seconds": time.perf_counter() - t0 - paused}


def run_oracle(vol: Volume, model: torch.nn.Module, theta: Params, steps: int = 150, batch: int = 4,
               pool: int = 32, seed: int = 0) -> Recon:
    """Upper reference: the same network trained *supervised* on this task.

    Started from θ* for speed (not from scratch); trained on ``pool`` other
    slices of the same task; applied to the test scan without adaptation.
    """
    phi, info = train_supervised(model, theta, vol.task, steps, batch, pool, seed=seed, device=vol.y.device)
    rec = run_network(vol, model, phi)
    return Recon(rec.image, {**info, "init": "theta*"}, rec.raw)
