"""Bilevel meta-training of the reconstruction network (the meta-prior).

    θ* = argmin_θ (1/T) Σ_i L_outer(f_{φ_i}; T_i, query_i),
    φ_i = inner(θ; T_i, support_i)   (N optimiser steps on L_inner + λ/2‖φ − θ‖², from θ)

Each outer step draws T tasks from the task family, one batch of
``batch_size`` slices per task, split into support slices (the inner problem)
and held-out query slices of the same task (the outer loss). The hypergradient
∂L_outer/∂θ is second order by default (``create_graph=True`` through the inner
loop), first order with ``first_order = true``; θ is updated by Adam.

Site mode (:func:`meta_train_site`): tasks are a site's own undersampled scans,
without ground truth. For each, the acquired set Ω is split into Θ (seen by the
inner loop) and a held-out Λ; the outer loss predicts the held-out k-space,
‖A_Λ f_φ(y_Θ, A_Θ) − y_Λ‖² / ‖y_Λ‖².

Determinism: every random draw of outer step k comes from generators seeded by
(seed, k, task index, purpose) — never from a global RNG state — so a resumed
run, or a multi-process run (:mod:`mpcli.meta.distributed`), computes the same
steps as an uninterrupted single-process one.

Files: ``out`` is the final weight file (``save_weights``); the checkpoint
``<out stem>.ckpt.safetensors`` next to it holds θ, the outer Adam state, the
torch RNG state (tensors) and the step and config (JSON metadata) — no pickle.
The log is JSONL, one line per outer step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    import tomllib
except ImportError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib

from mpcli.errors import InputError, ModelError, OutputError
from mpcli.meta import distributed as ddp
from mpcli.meta.batches import replace_fields, sense_like, take, to_device
from mpcli.meta.functional import Params, bind, params_of
from mpcli.meta.inner import inner_loop
from mpcli.meta.losses import (
    MeasurementConsistency,
    acquired_mask,
    derive_seed,
    is_measurement_only,
    make_loss,
    reseed,
)

# Purposes of the derived seeds (the last key of derive_seed).
_TASKS, _SAMPLE, _INNER, _OUTER, _SPLIT, _VAL = range(6)
_VAL_STEP = 2**31 - 1  # the "step" key of the fixed validation draws


@dataclass
class MetaTrainConfig:
    """Hyper-parameters of meta-training (loadable from TOML)."""

    steps: int = 1000
    tasks_per_step: int = 4
    inner_steps: int = 3
    inner_lr: float = 1e-2
    inner_optimizer: str = "sgd"
    lam: float = 0.0
    inner_loss: str = "ssdu"
    inner_loss_kw: dict = field(default_factory=dict)
    outer_loss: str = "l2"
    outer_loss_kw: dict = field(default_factory=dict)
    outer_lr: float = 1e-4
    first_order: bool = False
    batch_size: int = 4  # slices per task: ceil(b/2) support, floor(b/2) query
    checkpoint_every: int = 100
    val_every: int = 50
    val_tasks: int = 4
    site_holdout: float = 0.2  # site mode: fraction of Ω held out for the outer loss
    # site mode continues a trained prior: bench/site_prior.py (60 steps) lost 0.50 dB against the
    # shipped prior after adaptation with the from-scratch outer lr 1e-3 and gained 0.41 dB with 1e-4
    site_outer_lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    network: dict = field(default_factory=lambda: {"arch": "pdnet"})
    tasks: dict = field(default_factory=dict)

    # Fields that may change between a checkpoint and its resumption.
    RESUMABLE_CHANGES = ("steps", "checkpoint_every", "val_every", "device")

    def __post_init__(self):
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {self.inner_optimizer!r}")
        for name in ("steps", "tasks_per_step", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        make_loss(self.inner_loss, **self.inner_loss_kw)  # unknown names raise ValueError
        make_loss(self.outer_loss, **self.outer_loss_kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MetaTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown meta-training option(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_toml(cls, path: str | Path) -> MetaTrainConfig:
        """Read a TOML file: top-level options, ``[network]``, ``[tasks]``, ``[*_loss_kw]``
        tables (an optional ``[meta]`` table may hold the top-level options)."""
        path = Path(path)
        from mpcli.scan import read_small_file

        try:
            d = tomllib.loads(read_small_file(path).decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(path, "not valid TOML: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as err:
            raise InputError(path, f"not valid TOML: {err}") from None
        d = {**d.pop("meta", {}), **d}
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise InputError(path, str(err)) from None


@dataclass
class TrainResult:
    """What :func:`meta_train` returns."""

    params: Params  # θ* (detached, CPU)
    steps: int  # outer steps completed in total
    weights: Path | None  # final weight file (rank 0), None on other ranks
    sha256: str | None
    log: Path | None
    history: list[dict]  # the log records of this call


# ----------------------------------------------------------------------------- batches


# ------------------------------------------------------------------------ hypergradient


def hypergradient(model: nn.Module, theta: Params, support, query, inner_loss: Callable, outer_loss: Callable, *,
                  steps: int, lr: float, lam: float = 0.0, optimizer: str = "sgd", first_order: bool = False,
                  target: tuple | None = None) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """∂/∂θ L_outer(f_{φ(θ)}) for one task, with φ = inner_loop(θ; support).

    ``query`` (``y``, ``A``) is what the adapted network reconstructs; the
    outer loss compares it with ``target = (y, A, x)`` (default: the query's
    own ``(y, A, x)``). ``theta`` values must require grad. Returns
    ``(grads, L_outer, L_inner at the last inner step)``, values detached.
    """
    inner_values: list[torch.Tensor] = []
    phi = inner_loop(model, theta, support, inner_loss, steps, lr, lam, optimizer, create_graph=not first_order,
                     callback=lambda k, p, v: inner_values.append(v))
    f = bind(model, phi)
    x_hat = f(query.y, query.A)  # [B, H, W]
    ty, tA, tx = target if target is not None else (query.y, query.A, query.x)
    value = outer_loss(x_hat, ty, tA, f, tx)
    names = list(theta)
    grads = torch.autograd.grad(value, [theta[k] for k in names], allow_unused=True)
    g = {k: torch.zeros_like(theta[k]) if gk is None else gk for k, gk in zip(names, grads)}
    inner_value = inner_values[-1] if inner_values else torch.full((), float("nan"))
    return g, value.detach(), inner_value


# -------------------------------------------------------------------------- checkpoints


def checkpoint_path(out: Path) -> Path:
    """Where the checkpoint of a run writing ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name.split(".")[0] + ".ckpt.safetensors")


def _atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write checkpoint: {err.strerror}") from None


def save_checkpoint(path: Path, theta: Params, opt: torch.optim.Optimizer, step: int, config: dict) -> None:
    """θ, the Adam state and the RNG state as tensors; step and config as JSON."""
    names = list(theta)
    state = opt.state_dict()
    tensors = {f"theta/{k}": v for k, v in theta.items()}
    for idx, s in state["state"].items():
        for key, val in s.items():
            tensors[f"adam/{key}/{names[idx]}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["rng/torch"] = torch.get_rng_state()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    meta = {"format": "mpcli-meta-checkpoint", "version": "1", "step": str(step),
            "config": json.dumps(config, sort_keys=True), "param_groups": json.dumps(groups),
            "names": json.dumps(names)}
    _atomic_save(tensors, path, meta)


def read_checkpoint(path: Path, fmt: str, what: str) -> tuple[dict, dict[str, torch.Tensor], dict,
                                                               dict[str, torch.Tensor]]:
    """(metadata, θ, Adam state dict, every tensor) of a checkpoint in the layout of
    :func:`save_checkpoint` (``theta/<name>``, ``adam/<field>/<name>``, JSON ``names``
    and ``param_groups`` in the metadata), whose ``format`` metadata must be ``fmt``.

    Raises ``ModelError`` naming ``what`` for an unreadable file or another format.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:
        raise ModelError(path, f"unreadable checkpoint: {err}") from None
    if meta.get("format") != fmt:
        raise ModelError(path, f"not an mp {what} checkpoint")
    names = json.loads(meta["names"])
    theta = {k: tensors[f"theta/{k}"] for k in names}
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("adam/"):
            _, field_, name = key.split("/", 2)
            state.setdefault(names.index(name), {})[field_] = val
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return meta, theta, {"state": state, "param_groups": groups}, tensors


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, int, dict]:
    """(θ, Adam state dict, RNG tensors, step, config) from :func:`save_checkpoint`'s file."""
    meta, theta, opt_state, tensors = read_checkpoint(path, "mpcli-meta-checkpoint", "meta-training")
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    return theta, opt_state, rng, int(meta["step"]), json.loads(meta["config"])


# ------------------------------------------------------------------------------ logging


class _Log:
    """JSONL writer (rank 0); on resume it keeps only the records up to the checkpoint."""

    def __init__(self, path: Path | None, active: bool, resume_from: int | None):
        self.path = Path(path) if path is not None and active else None
        if self.path is None:
            return
        kept: list[str] = []
        if resume_from is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_from:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(line + "\n" for line in kept))
        except OSError as err:
            raise OutputError(self.path, f"cannot write log: {err.strerror}") from None

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ the loop


Episode = tuple[object, object, tuple | None]  # (support, query, target)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per sample on magnitudes, data range max|x| ``[B]``."""
    a, b = x_hat.abs().reshape(x.shape[0], -1), x.abs().reshape(x.shape[0], -1)
    mse = ((a - b) ** 2).mean(dim=1).clamp_min(1e-30)
    return 10 * torch.log10(b.amax(dim=1) ** 2 / mse)


def _run(config: MetaTrainConfig, out: Path, log: Path | None, resume: bool, progress, init_params,
         model: nn.Module | None, episodes: Callable[[int, int], Episode], outer_loss_factory: Callable,
         data_summary: dict, info: ddp.DistInfo | None) -> TrainResult:
    from mpcli.device import resolve_device

    device = resolve_device(config.device)
    info = ddp.init_from_env(device.type) if info is None else info
    device = ddp.device_for(info, device)
    out = Path(out)
    cfg = config.to_dict()
    if model is None:
        from mpcli.recon.network import build_network

        torch.manual_seed(config.seed)
        model = build_network(config.network)
    model = model.to(device)
    theta = params_of(model)
    if init_params is not None:
        if set(init_params) != set(theta):
            raise ModelError(None, "initial weights do not match the network's parameters")
        theta = {k: init_params[k].detach().to(theta[k].dtype).clone() for k in theta}
    theta = {k: v.to(device).requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(theta.values()), lr=config.outer_lr)

    start = 0
    ckpt = checkpoint_path(out)
    if resume and ckpt.exists():
        saved, opt_state, rng, start, saved_cfg = load_checkpoint(ckpt)
        diff = sorted(k for k in cfg if k not in MetaTrainConfig.RESUMABLE_CHANGES and cfg[k] != saved_cfg.get(k))
        if diff:
            raise ModelError(ckpt, f"checkpoint was made with other settings ({', '.join(diff)})")
        if set(saved) != set(theta):
            raise ModelError(ckpt, "checkpoint parameters do not match the network")
        with torch.no_grad():
            for k in theta:
                theta[k].copy_(saved[k])
        opt.load_state_dict(opt_state)
        torch.set_rng_state(rng["rng/torch"])
    logger = _Log(log, info.is_main, start if resume else None)

    inner_loss = make_loss(config.inner_loss, **config.inner_loss_kw)
    outer_loss = outer_loss_factory()
    T = config.tasks_per_step
    inner_kw = {"steps": config.inner_steps, "lr": config.inner_lr, "lam": config.lam,
                "optimizer": config.inner_optimizer}
    history: list[dict] = []
    mine = ddp.shard(T, info)

    for step in range(start, config.steps):
        t0 = time.perf_counter()
        gsum = {k: torch.zeros_like(v) for k, v in theta.items()}
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # [outer, inner]
        for i in mine:
            support, query, target = episodes(step, i)
            support, query = to_device(support, device), to_device(query, device)
            if target is not None:
                ty, tA, tx = target
                target = (ty.to(device), sense_like(tA, tA.maps.to(device), tA.mask.to(device)),
                          None if tx is None else tx.to(device))
            reseed(inner_loss, derive_seed(config.seed, step, i, _INNER))
            reseed(outer_loss, derive_seed(config.seed, step, i, _OUTER))
            g, lo, li = hypergradient(model, theta, support, query, inner_loss, outer_loss,
                                      first_order=config.first_order, target=target, **inner_kw)
            for k in gsum:
                gsum[k] += g[k]
            sums += torch.stack([lo.double(), li.double()])
        flat = torch.cat([v.reshape(-1) for v in gsum.values()] + [sums.to(gsum[next(iter(gsum))].dtype)])
        flat = ddp.all_reduce_sum(flat, info) / T
        i0 = 0
        for p in theta.values():
            n = p.numel()
            p.grad = flat[i0 : i0 + n].reshape(p.shape).clone()
            i0 += n
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        record = {"step": done, "outer_loss": float(flat[i0]), "inner_loss": float(flat[i0 + 1]),
                  "time_s": round(time.perf_counter() - t0, 4)}
        if info.is_main and config.val_every > 0 and (done % config.val_every == 0 or done == config.steps):
            record.update(_validate(model, theta, config, episodes, inner_loss, outer_loss, device, inner_kw))
        history.append(record)
        logger.write(record)
        if progress is not None and info.is_main:
            progress(done, config.steps, record)
        if config.checkpoint_every > 0 and (done % config.checkpoint_every == 0 or done == config.steps):
            if info.is_main:
                save_checkpoint(ckpt, theta, opt, done, cfg)
            ddp.barrier(info)

    params = {k: v.detach().cpu().clone() for k, v in theta.items()}
    weights, digest = None, None
    if info.is_main:
        from mpcli import __version__
        from mpcli.io.weights import save_weights

        net_cfg = dict(config.network)
        metadata = {"arch": net_cfg.get("arch", type(model).__name__), "config": net_cfg,
                    "meta_train": cfg, "data": data_summary, "mp_version": __version__,
                    "kind": "meta-prior", "steps": config.steps}
        weights, digest = out, save_weights(out, params, metadata)
    ddp.barrier(info)
    return TrainResult(params=params, steps=config.steps, weights=weights, sha256=digest,
                       log=logger.path, history=history)


def _validate(model, theta, config, episodes, inner_loss, outer_loss, device, inner_kw) -> dict:
    """Adapted-model quality on the fixed validation episodes: PSNR (when ground
    truth exists) and the outer loss."""
    th = {k: v.detach() for k, v in theta.items()}
    psnrs, losses = [], []
    for j in range(config.val_tasks):
        support, query, target = episodes(_VAL_STEP, j)
        support, query = to_device(support, device), to_device(query, device)
        reseed(inner_loss, derive_seed(config.seed, _VAL_STEP, j, _INNER))
        reseed(outer_loss, derive_seed(config.seed, _VAL_STEP, j, _OUTER))
        phi = inner_loop(model, th, support, inner_loss, inner_kw["steps"], inner_kw["lr"], inner_kw["lam"],
                         inner_kw["optimizer"], create_graph=False)
        phi = {k: v.detach() for k, v in phi.items()}
        with torch.no_grad():
            f = bind(model, phi)
            x_hat = f(query.y, query.A)
            if target is not None:
                ty, tA, tx = target
                target = (ty.to(device), sense_like(tA, tA.maps.to(device), tA.mask.to(device)), tx)
            ty, tA, tx = target if target is not None else (query.y, query.A, query.x)
        with torch.enable_grad():  # losses that re-run the network need no grad, but allow it
            losses.append(float(outer_loss(x_hat, ty, tA, f, tx)))
        if query.x is not None:
            psnrs.append(float(_psnr(x_hat, query.x).mean()))
    rec = {"val_outer_loss": float(np.mean(losses)) if losses else math.nan}
    if psnrs:
        rec["val_psnr"] = float(np.mean(psnrs))
    return rec


def meta_train(config: MetaTrainConfig, out: Path, log: Path | None = None, resume: bool = False,
               progress: Callable[[int, int, dict], None] | None = None, init_params: Params | None = None, *,
               model: nn.Module | None = None, family=None, dist: ddp.DistInfo | None = None) -> TrainResult:
    """Meta-train θ on tasks from the task family (supervised outer loss).

    Args:
        config: hyper-parameters; ``config.network`` builds the network
            (``build_network``) and ``config.tasks`` the family
            (``TaskFamily.from_config``) unless ``model``/``family`` are given.
        out: final weight file (rank 0 writes it); the checkpoint goes next to it.
        log: JSONL log path (one line per outer step), or None.
        resume: continue from the checkpoint when it exists (same settings
            except ``steps``/``checkpoint_every``/``val_every``/``device``); the
            result is bit-for-bit that of an uninterrupted run.
        progress: ``progress(step, total, record)`` after every outer step.
        init_params: starting θ (default: the network's seeded initialisation).
        dist: process-group info (default: from torchrun's environment).
    Raises:
        ModelError: checkpoint or initial weights that do not fit.
        OutputError: a file that cannot be written.
    """
    if config.batch_size < 2:
        raise ValueError("batch_size must be >= 2 (support and query slices)")
    if family is None:
        from mpcli.data.tasks import TaskFamily

        family = TaskFamily.from_config(config.tasks)
    n_support = config.batch_size - config.batch_size // 2
    cache: dict[int, list] = {}

    def tasks_of(step: int) -> list:
        if step not in cache:
            cache.clear()
            rng = np.random.default_rng(derive_seed(config.seed, step, _TASKS))
            n = config.val_tasks if step == _VAL_STEP else config.tasks_per_step
            cache[step] = [family.sample_task(rng) for _ in range(n)]
        return cache[step]

    val_cache: dict[int, Episode] = {}

    def episodes(step: int, i: int) -> Episode:
        if step == _VAL_STEP and i in val_cache:
            return val_cache[i]
        gen = torch.Generator().manual_seed(derive_seed(config.seed, step, i, _SAMPLE))
        batch = tasks_of(step)[i].sample(config.batch_size, gen)
        ep = (take(batch, slice(0, n_support)), take(batch, slice(n_support, config.batch_size)), None)
        if step == _VAL_STEP:
            val_cache[i] = ep
        return ep

    to_config = getattr(family, "to_config", None)
    summary = {"mode": "tasks", "family": to_config() if callable(to_config) else config.tasks,
               "tasks_per_step": config.tasks_per_step, "slices_per_task": config.batch_size}
    outer = lambda: make_loss(config.outer_loss, **config.outer_loss_kw)
    return _run(config, out, log, resume, progress, init_params, model, episodes, outer, summary, dist)


def meta_train_site(config: MetaTrainConfig, scans: Sequence, init_params: Params | None, out: Path,
                    log: Path | None = None, resume: bool = False,
                    progress: Callable[[int, int, dict], None] | None = None, *, model: nn.Module | None = None,
                    dist: ddp.DistInfo | None = None) -> TrainResult:
    """Meta-train on a site's own undersampled scans, with no ground truth.

    ``scans``: one ``Batch(x=None, y [S, C, H, W], A)`` per scan (a task). Each
    task takes ``batch_size`` slices of a scan, splits Ω = Θ ⊔ Λ uniformly
    (|Λ| ≈ ``site_holdout``·|Ω|, a 4×4 centre kept in Θ), adapts on
    ``(y_Θ, A_Θ)`` with the measurement-only ``inner_loss`` and scores
    ‖A_Λ f_φ(y_Θ, A_Θ) − y_Λ‖²/‖y_Λ‖² (``outer_loss`` of the config is not used).
    Validation reports the same held-out loss on fixed splits of the first scans.
    The outer Adam step is ``site_outer_lr`` (``outer_lr`` is for training from scratch).
    """
    from mpcli.physics.masks import split_mask

    if not scans:
        raise ValueError("site meta-training needs at least one scan")
    if not is_measurement_only(config.inner_loss):
        raise ValueError(f"site mode needs a measurement-only inner loss, got {config.inner_loss!r}")

    def episodes(step: int, i: int) -> Episode:
        rng = np.random.default_rng(derive_seed(config.seed, step, i, _TASKS))
        scan = scans[i % len(scans)] if step == _VAL_STEP else scans[int(rng.integers(len(scans)))]
        S = scan.y.shape[0]
        pick = sorted(int(s) for s in rng.choice(S, size=min(config.batch_size, S), replace=False))
        b = take(scan, pick)
        gen = torch.Generator().manual_seed(derive_seed(config.seed, step, i, _SPLIT))
        omega = acquired_mask(b.y, b.A)  # [B, 1, H, W]
        th, lam = split_mask(omega.cpu(), config.site_holdout, gen, kind="uniform")
        th, lam = th.to(omega.device), lam.to(omega.device)
        inner = replace_fields(b, x=None, y=b.y * th, A=b.A.with_mask(th))
        return inner, inner, (b.y * lam, b.A.with_mask(lam), None)

    summary = {"mode": "site", "scans": len(scans), "slices": int(sum(s.y.shape[0] for s in scans)),
               "tasks_per_step": config.tasks_per_step, "slices_per_task": config.batch_size,
               "holdout": config.site_holdout}
    cfg = dataclasses.replace(config, val_tasks=min(config.val_tasks, len(scans)), outer_lr=config.site_outer_lr)
    return _run(cfg, out, log, resume, progress, init_params, model, episodes, MeasurementConsistency, summary,
                dist)
