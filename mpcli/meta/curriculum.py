"""Training a prior as real training: a resumable curriculum of stages, one checkpoint file.

Stages run in order; each fixes the unrolled depth K, the step count, Adam's step
size and which tasks it draws (overrides of the scan-like task family
:data:`~mpcli.data.tasks.SCAN_TRAIN_FAMILY`)::

    supervised:  θ ← Adam( ∇_θ (1/T) Σ_i L(f_θ^K(y_i, A_i), x_i) )       (L = "l1" by default)
    meta:        θ ← Adam( ∇_θ (1/T) Σ_i L(f_{φ_i}^K(y_i^q, A_i^q), x_i^q) ),
                 φ_i = inner(θ; support_i)   — the inner problem `mp adapt` solves
                 (measurement-only loss + λ/2‖φ − θ‖², :func:`mpcli.meta.train.hypergradient`)

The default curriculum (``default_curriculum``): K = 1 on small matrices and few
coils (the denoiser learns from CG-SENSE images: MoDL with K = 1 is D between two
data-consistency solves), then the full K up to 256² and 24 coils, then the full K
on the whole family (to 384², 32 coils), then the bilevel meta stage. The parameters θ carry over between stages (MoDL's parameters do not
depend on K); Adam's state restarts at each stage.

Determinism and resumption: the tasks and examples of step s of stage j come
from seeds derived from (seed, j, s, task index) only, so a run resumed from its
checkpoint is bit-for-bit the uninterrupted run (same threads, same machine).
The checkpoint is ONE safetensors file, overwritten atomically: θ, Adam's moments
(tensors), and as JSON metadata the stage, the step within it, the wall-clock
seconds trained so far and the whole configuration (no pickle).

Validation: fixed tasks on anatomy the curriculum never trains on (the
validation-only ITK head and MNI contrasts), in the frame the network is trained
in (``frame`` = ``maps``: the simulation's true maps, or ESPIRiT maps estimated from
the undersampled data with the target in their frame and PSNR inside their
support, as deployed). The log (JSONL) starts with a ``baseline`` record — PSNR of
zero-filling and of L1-wavelet CS with the same maps and λ tuned on the reference
(best of ``CS_LAMBDAS``) per validation task — then ``train`` records (mean loss
over ``log_every`` steps) and ``val`` records (the network's PSNR per task, its
mean and the mean gap to CS in dB), each with ``wall_h``, the training wall-clock
hours so far. A run resumed in another frame (an amended ``maps``) gets a new
baseline record first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpcli.errors import InputError, ModelError, OutputError
from mpcli.meta.functional import Params, bind, params_of
from mpcli.meta.losses import derive_seed, make_loss, reseed
from mpcli.meta.prefetch import Prefetcher
from mpcli.recon.network import MU_PARAMS

FORMAT = "mpcli-curriculum-checkpoint"
MAPS = ("true", "espirit")  # CurriculumConfig.maps
CS_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
_TASKS, _SAMPLE, _INNER, _OUTER, _VAL_INNER = range(5)


@dataclass
class Stage:
    """One stage of the curriculum (see the module docstring)."""

    name: str
    steps: int
    iters: int  # unrolled depth K
    lr: float
    mode: str = "supervised"  # or "meta"
    tasks: dict = field(default_factory=dict)  # overrides of the curriculum's task family
    tasks_per_step: int = 2
    slices: int = 2  # examples per task (meta: half support, half query)
    # meta only: the outer loss becomes L(f_φ) + α·L(f_θ) on the query slices, α = ``anchor``, so that the
    # unadapted network (where `mp adapt` starts, and what it returns when no step helps) is trained too;
    # 0 is the paper's outer loss
    anchor: float = 0.0

    def __post_init__(self):
        if self.mode not in ("supervised", "meta"):
            raise ValueError(f"stage {self.name}: mode must be 'supervised' or 'meta', got {self.mode!r}")
        if self.anchor < 0 or (self.anchor and self.mode != "meta"):
            raise ValueError(f"stage {self.name}: anchor must be >= 0, and only meta stages have one")
        if self.steps < 0 or self.iters < 0 or self.tasks_per_step < 1 or self.slices < 1:
            raise ValueError(f"invalid stage {self}")
        if self.mode == "meta" and self.slices < 2:
            raise ValueError(f"stage {self.name}: meta stages need >= 2 slices per task")


@dataclass
class CurriculumConfig:
    """The whole training recipe (JSON-serialisable; stored in the checkpoint)."""

    network: dict
    tasks: dict  # TaskFamily.to_config()
    stages: list
    val_tasks: list  # Task.to_dict() of each validation task
    val_slices: int = 2
    loss: str = "l1"
    # first order by default: on the CPU the second-order hypergradient cost the shipped prior's
    # MoDL-CNN 40–55 s per outer step against 6–7 s (README, "The shipped meta-prior")
    inner: dict = field(default_factory=lambda: {"loss": "ssdu", "steps": 2, "lr": 1e-3, "lam": 1e-2,
                                                 "optimizer": "adam", "first_order": True})
    seed: int = 0
    grad_clip: float = 1.0
    # Adam's step size of the scalar data-consistency weights (MoDL's μ: ``rho_mu``, ``mu_weights``)
    # relative to the stage's: at the stages' 1e-4–3e-4 a ten-fold change of μ takes ~10⁴ steps
    mu_lr_scale: float = 1.0
    # the coil maps the network sees: "true" (the simulation's) or "espirit" (estimated from the
    # undersampled k-space, as `mp adapt` does; the target is then x in their frame, Σ_c conj(Ŝ_c) S_c x).
    # Measured at kfull step 933: 60 steps with "espirit" gave 41.41 dB mean on the validation tasks
    # (ESPIRiT maps), the "true" run 41.50 dB at step 933 and 40.70 at 1038, at +30 % per step on the
    # CPU; but where the maps are poor (bench/quality.py's R8 task, 5 ACS lines) the "true"-maps network
    # fell below zero-filling (14.2 vs 18.5 dB), so the committed run was amended to "espirit" at step ~1100.
    maps: str = "true"
    # Polyak averaging: after each step θ̄ ← d·θ̄ + (1 − d)·θ (0 = off). At a constant step size the
    # iterates wander around a minimum (the 20-coil validation task swung by up to 5.5 dB between
    # checkpoints); their average is smoother, and it is what export_weights writes
    ema: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.maps not in MAPS:
            raise ValueError(f"maps must be one of {', '.join(MAPS)}, got {self.maps!r}")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        make_loss(self.loss)
        from mpcli.data.scans import VALIDATION_ONLY
        from mpcli.data.tasks import TaskFamily

        for st in self.stages:  # no stage may train on a validation-only source
            fam = TaskFamily.from_config({**self.tasks, **st.tasks})
            bad = sorted(set(fam.sources) & set(VALIDATION_ONLY))
            if bad:
                raise ValueError(f"stage {st.name} trains on validation-only source(s): {', '.join(bad)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CurriculumConfig:
        return cls(**d)


def default_validation_tasks() -> list[dict]:
    """Four fixed tasks on anatomy no training stage sees (ITK T1 head, MNI FLAIR-/T2-like)."""
    from mpcli.data.tasks import Task

    tasks = [
        Task("random", 4.0, 0.08, 8, 0.01, "itk_t1_head", "axial", (128, 128), 101, "classic"),
        Task("poisson", 6.0, 0.06, 12, 0.01, "itk_t1_head", "sagittal", (160, 128), 102, "biot_savart"),
        Task("gaussian", 8.0, 0.04, 16, 0.01, "mni_flairlike", "coronal", (192, 160), 103, "biot_savart"),
        Task("equispaced", 5.0, 0.06, 20, 0.01, "mni_t2like", "axial", (256, 256), 104, "biot_savart"),
    ]
    return [t.to_dict() for t in tasks]


def default_curriculum(seed: int = 0) -> CurriculumConfig:
    """MoDL-U-Net with adaptive μ, PSNR loss; K = 1 (small, few coils) → K = 5 (≤ 256², ≤ 24 coils)
    → K = 5 on the whole family (to 384², 32 coils) → first-order bilevel meta stages."""
    from mpcli.data.tasks import SCAN_TRAIN_FAMILY
    from mpcli.recon.network import MODL_UNET

    small = {"sizes": [[128, 128], [160, 128], [128, 160], [192, 192], [192, 160]], "n_coils": [4, 16]}
    # up to 256² and 24 coils: a 384² 32-coil example costs ~20× a 192² 12-coil one on the CPU
    # (50 vs 2.6 CPU s forward + backward for 2 slices), so the largest matrices get their own short stage
    medium = {"sizes": [[128, 128], [160, 128], [128, 160], [192, 192], [192, 160], [224, 192], [256, 256],
                        [256, 208]], "n_coils": [4, 24]}
    k = MODL_UNET["iters"]
    stages = [
        Stage("k1", steps=1500, iters=1, lr=1e-3, tasks=small, tasks_per_step=2, slices=2),
        Stage("kfull", steps=4500, iters=k, lr=3e-4, tasks=medium, tasks_per_step=2, slices=2),
        Stage("kfull_large", steps=450, iters=k, lr=1e-4, tasks_per_step=2, slices=2),
        Stage("meta", steps=600, iters=k, lr=1e-4, mode="meta", tasks=medium, tasks_per_step=2, slices=4),
        Stage("meta2", steps=300, iters=k, lr=1e-4, mode="meta", tasks=medium, tasks_per_step=2, slices=4),
        Stage("meta3", steps=600, iters=k, lr=1e-4, mode="meta", tasks=medium, tasks_per_step=2, slices=4,
              anchor=1.0),
    ]
    # adaptive μ, the PSNR loss and μ's own step size were added at kfull step 619 of the committed run
    # (``amend``): on the four validation tasks (ESPIRiT maps, bench/prior_checkpoints.py) 60 steps took the
    # mean from 39.58 to 41.09 dB, the plain recipe's same 60 steps to 39.87 dB (that control checkpoint was
    # scored by an earlier copy of the script and not kept; README, "Training a scan-like prior"). μ's step size
    # was 100× the stage's until step 1273, then 10×: μ had settled (0.021 → 0.004–0.005) but kept
    # wandering, and the 20-coil validation task swung by up to 4 dB between checkpoints. At kfull step 1663
    # the task family's noise moved from 0–3 % uniform to 0.3–20 % log-uniform: real scans measure 14–16 %
    # (bench/noise_level.py), far outside what the network had seen. Averaging θ (ema, horizon ~200 steps)
    # started at step ~1800. At step 3336 the noise moved to 1–25 % log-uniform: the prior was still
    # 1 dB under tuned CS on the real MPRAGE (noise 16 %), and 0.3–20 % spent most draws under 3 %.
    # At step ~3620 kfull was cut from 10 000 to 4 500 steps and kfull_large from 2 000 to 1 000: the
    # ESPIRiT-frame validation had been flat (39.0–39.3 dB) since step 2824 at the constant 3e-4, and on
    # 2 CPU cores the bilevel stage, the paper's method, would otherwise not start for another ~20 h.
    # At kfull_large step ~150 (8.5 h) it was cut again, to 450 steps, and the meta stage from 3 000 steps on
    # the whole family to 600 on the medium matrices: a meta step (2 inner SSDU steps on 2 slices, then the
    # query's loss on 2 more, for 2 tasks) costs ~3 supervised steps, ~20 s on one thread at ≤ 256², so
    # 3 000 steps at up to 384² would have taken ~30 h of this machine.
    # meta2 (appended when meta ended, 12.2 h) is more of the same: after meta's 600 steps mp adapt keeps
    # gradient steps (+1.5 dB over the unadapted θ̄ on bench/quality.py's tasks, against +0.4 before) but
    # from a start 0.7–1.6 dB lower, 0.4 dB under the shipped prior over 8 held-out tasks; whether more
    # bilevel steps close that is what meta2 measures. It was cut from 600 to 300 steps at step ~270 (13.2 h):
    # θ̄ after the inner steps had stayed flat on the validation tasks (40.50 dB at step 133, 40.46 at 257;
    # the shipped prior 40.36) while θ̄ unadapted kept falling (38.92 → 38.76). meta3 is meta2 with one
    # change, the anchored outer loss L(f_φ) + L(f_θ) on the query slices: the unadapted network is where
    # `mp adapt` starts and what it returns when no step helps, so it is trained too. At step 246 (14.7 h) its θ̄
    # was 0.04 dB under the shipped prior after mp adapt on bench/quality.py's 8 tasks, with +0.8–1.1 dB from
    # adaptation: the anchor raised the unadapted validation (38.76 → 39.70) and lowered the adapted (40.46 → 40.09)
    return CurriculumConfig(network={**MODL_UNET, "adaptive_mu": True}, tasks=SCAN_TRAIN_FAMILY.to_config(),
                            stages=stages, val_tasks=default_validation_tasks(), seed=seed, loss="psnr",
                            mu_lr_scale=10.0, maps="espirit", ema=0.995)


def tiny_curriculum(seed: int = 0) -> CurriculumConfig:
    """Two tiny stages (supervised K=1, meta K=2) on 32² images, one validation task; wheel-only
    sources, so it runs without the Debian image packages (tests, ``bench/train_prior.py --tiny``)."""
    from mpcli.data.tasks import Task

    fam = {"sources": ["dead_leaves", "nibabel_epi"], "sizes": [[32, 32], [32, 24]], "n_coils": [2, 4],
           "mask_kinds": ["random", "poisson"], "accelerations": [2.0, 4.0], "center_fractions": [0.1, 0.1],
           "noise_rel": [0.0, 0.01], "planes": ["axial"], "coil_models": ["classic", "biot_savart"]}
    net = {"arch": "modl", "iters": 2, "features": 4, "levels": 2, "denoiser": "unet", "cg_iters": 2, "mu": 0.05}
    stages = [Stage("k1", steps=3, iters=1, lr=1e-3, tasks_per_step=2, slices=1),
              Stage("meta", steps=2, iters=2, lr=1e-4, mode="meta", tasks_per_step=1, slices=2)]
    val = [Task("random", 2.0, 0.1, 2, 0.0, "shepp_logan", "axial", (32, 32), 7, "classic").to_dict()]
    return CurriculumConfig(network=net, tasks=fam, stages=stages, val_tasks=val, val_slices=1, seed=seed,
                            inner={"loss": "ssdu", "steps": 1, "lr": 1e-3, "lam": 1e-2, "optimizer": "adam",
                                   "first_order": False})


# ----------------------------------------------------------------------------- checkpoint

@dataclass
class State:
    """Where training stands: θ, Adam's state for the current stage, position and time."""

    theta: Params
    adam: dict  # torch.optim.Adam state_dict() of the current stage
    stage: int = 0
    step: int = 0  # steps done in the current stage
    wall_s: float = 0.0  # training wall-clock seconds so far (all sittings)
    ema: Params = field(default_factory=dict)  # the averaged θ̄ (CurriculumConfig.ema), empty until it starts


def save_checkpoint(path: Path, state: State, config: CurriculumConfig) -> None:
    """Atomically overwrite ``path`` (safetensors: θ and Adam tensors; JSON metadata)."""
    from safetensors.torch import save_file

    names = list(state.theta)
    tensors = {f"theta/{k}": v.detach().cpu().contiguous() for k, v in state.theta.items()}
    tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in state.ema.items()})
    for idx, s in state.adam.get("state", {}).items():
        for key, val in s.items():
            tensors[f"adam/{key}/{names[int(idx)]}"] = (val if torch.is_tensor(val) else torch.tensor(val)).cpu()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state.adam.get("param_groups", [])]
    meta = {"format": FORMAT, "version": "1", "stage": str(state.stage), "step": str(state.step),
            "wall_s": repr(float(state.wall_s)), "names": json.dumps(names), "param_groups": json.dumps(groups),
            "config": json.dumps(config.to_dict(), sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write checkpoint: {err.strerror}") from None


def load_checkpoint(path: Path) -> tuple[State, CurriculumConfig]:
    """Inverse of :func:`save_checkpoint`."""
    from mpcli.meta.train import read_checkpoint

    meta, theta, opt_state, tensors = read_checkpoint(path, FORMAT, "curriculum")
    ema = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("ema/")}
    state = State(theta, opt_state if opt_state["param_groups"] else {},
                  int(meta["stage"]), int(meta["step"]), float(meta["wall_s"]), ema)
    return state, CurriculumConfig.from_dict(json.loads(meta["config"]))


# -------------------------------------------------------------------------------- helpers

def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per sample of magnitudes, data range max|x| (fastMRI), ``[B]``."""
    a, b = x_hat.abs().reshape(x.shape[0], -1), x.abs().reshape(x.shape[0], -1)
    mse = ((a - b) ** 2).mean(dim=1).clamp_min(1e-30)
    return 10 * torch.log10(b.amax(dim=1) ** 2 / mse)


def _family(config: CurriculumConfig, stage: Stage):
    from mpcli.data.tasks import TaskFamily

    return TaskFamily.from_config({**config.tasks, **stage.tasks})


def _val_batches(config: CurriculumConfig) -> list:
    """The validation tasks' batches in the frame the network trains in (``config.maps``): with
    "espirit", maps estimated from the undersampled data and the target in their frame, as deployed."""
    from mpcli.data.tasks import Task

    batches = [Task.from_dict(d).sample(config.val_slices, 0) for d in config.val_tasks]
    return [in_training_frame(b, config) for b in batches]


def _scored(x_hat: torch.Tensor, batch, config: CurriculumConfig) -> float:
    """Mean PSNR of ``x_hat`` against the batch's target; in the ESPIRiT frame inside the maps'
    support, where the target lives (outside it A is blind)."""
    if config.maps == "espirit":
        x_hat = x_hat * (batch.A.maps.abs().pow(2).sum(1) > 0).to(x_hat.real.dtype)
    return float(psnr(x_hat, batch.x).mean())


def baseline(config: CurriculumConfig, batches: list | None = None) -> dict:
    """Zero-filled and tuned L1-wavelet CS PSNR on the validation tasks, in the validation frame
    (``frame``: the maps the network is given, ``config.maps``)."""
    from mpcli.recon.classical import l1_wavelet

    zf, cs, lam_best = [], [], []
    for b in batches if batches is not None else _val_batches(config):
        zf.append(_scored(b.A.adjoint(b.y), b, config))
        best = (-math.inf, None)
        for lam in CS_LAMBDAS:
            x = l1_wavelet(b.y, b.A.maps, b.A.mask, lam)
            best = max(best, (_scored(x, b, config), lam))
        cs.append(best[0])
        lam_best.append(best[1])
    return {"kind": "baseline", "frame": config.maps, "zf_psnr": zf, "cs_psnr": cs, "cs_lambda": lam_best,
            "cs_mean": float(np.mean(cs)), "zf_mean": float(np.mean(zf))}


def validate(model, theta: Params, config: CurriculumConfig, batches: list) -> list[float]:
    """The network's mean PSNR per validation task (unadapted θ), in the validation frame."""
    f = bind(model, {k: v.detach() for k, v in theta.items()})
    with torch.no_grad():
        return [_scored(f(b.y, b.A), b, config) for b in batches]


def validate_adapted(model, theta: Params, config: CurriculumConfig, batches: list) -> list[float]:
    """The network's mean PSNR per validation task after the meta stages' inner problem, run on
    the task's own measurements: φ = ``config.inner["steps"]`` steps of the measurement-only
    ``config.inner["loss"]`` + λ/2‖φ − θ‖² from θ (first order, its own seeded splits), then
    f_φ scored as :func:`validate` scores f_θ. What a meta stage trains θ for; the unadapted
    figure alone falls while it works (θ̄ 39.56 → 38.85 dB over the first meta stage)."""
    from mpcli.meta.inner import inner_loop

    loss = make_loss(config.inner["loss"])
    out = []
    for i, b in enumerate(batches):
        reseed(loss, derive_seed(config.seed, i, _VAL_INNER))
        phi = inner_loop(model, {k: v.detach() for k, v in theta.items()}, b, loss, config.inner["steps"],
                         config.inner["lr"], config.inner["lam"], config.inner["optimizer"], create_graph=False)
        with torch.no_grad():
            out.append(_scored(bind(model, phi)(b.y, b.A), b, config))
    return out


def _draw(config: CurriculumConfig, j: int, stage: Stage, step: int, i: int):
    """The batch of task i at step ``step`` of stage j (deterministic)."""
    rng = np.random.default_rng(derive_seed(config.seed, j, step, i, _TASKS))
    task = _family(config, stage).sample_task(rng)
    batch = task.sample(stage.slices, int(derive_seed(config.seed, j, step, i, _SAMPLE) % 2**31))
    return in_training_frame(batch, config)


def _draw_at(config: CurriculumConfig, j: int, step: int, i: int):
    """:func:`_draw` keyed by (stage index, step, task index) alone (what the prefetcher submits)."""
    return _draw(config, j, config.stages[j], step, i)


def _next_keys(stage: Stage, j: int, step: int, i: int, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` batch keys that follow (j, step, i) within the stage, in training order."""
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        i += 1
        if i == stage.tasks_per_step:
            step, i = step + 1, 0
        if step >= stage.steps:
            break
        out.append((j, step, i))
    return out


def in_training_frame(batch, config: CurriculumConfig):
    """``batch`` as the curriculum trains on it: in the ESPIRiT frame where ``config.maps`` says so."""
    return in_espirit_frame(batch) if config.maps == "espirit" else batch


def in_espirit_frame(batch):
    """``batch`` as deployment sees it: ESPIRiT maps Ŝ estimated from its undersampled k-space, and
    the target in their frame, x_Ŝ = Σ_c conj(Ŝ_c) S_c x (zero outside Ŝ's support)."""
    from mpcli.data.tasks import Batch
    from mpcli.physics.coils import estimate_maps, sense_combine
    from mpcli.physics.sense import Sense

    S, (H, W) = batch.y.shape[0], batch.y.shape[-2:]
    mask = batch.A.mask.expand(S, 1, H, W).contiguous()
    est = estimate_maps(batch.y, mask)  # [S, C, H, W]
    target = sense_combine(batch.A.maps * batch.x[:, None], est)  # [S, H, W]
    return Batch(target, batch.y, Sense(est, batch.A.mask))


def _gradient(config: CurriculumConfig, j: int, stage: Stage, step: int, i: int, model, theta: Params, batch,
              loss_fn, inner_loss) -> tuple[dict, torch.Tensor]:
    """(∂L/∂θ per parameter (None where unused), L) of one task's batch at ``step`` of stage j:
    the supervised loss of f_θ, or the meta stage's first-order hypergradient (support = the
    first half of the slices, query = the rest), plus α·∂L(f_θ)/∂θ on the query when the stage
    has an ``anchor`` α."""
    if stage.mode == "supervised":
        x_hat = bind(model, theta)(batch.y, batch.A)
        value = loss_fn(x_hat, batch.y, batch.A, None, batch.x)
        return dict(zip(theta, torch.autograd.grad(value, list(theta.values()), allow_unused=True))), value
    from mpcli.meta.batches import take
    from mpcli.meta.train import hypergradient

    n = stage.slices - stage.slices // 2
    query = take(batch, slice(n, stage.slices))
    reseed(inner_loss, derive_seed(config.seed, j, step, i, _INNER))
    g, value, _ = hypergradient(
        model, theta, take(batch, slice(0, n)), query, inner_loss,
        loss_fn, steps=config.inner["steps"], lr=config.inner["lr"], lam=config.inner["lam"],
        optimizer=config.inner["optimizer"], first_order=config.inner["first_order"])
    if stage.anchor:
        start = loss_fn(bind(model, theta)(query.y, query.A), query.y, query.A, None, query.x)
        grads = torch.autograd.grad(start, list(theta.values()), allow_unused=True)
        g = {k: g[k] if gk is None else g[k] + stage.anchor * gk for k, gk in zip(theta, grads)}
        value = value + stage.anchor * start.detach()
    return g, value


def _average(ema: Params, theta: Params, decay: float) -> None:
    """θ̄ ← d·θ̄ + (1 − d)·θ in place; a parameter θ̄ lacks starts at θ."""
    with torch.no_grad():
        for k, v in theta.items():
            if k in ema:
                ema[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:
                ema[k] = v.detach().clone()


def _stage_model(config: CurriculumConfig, stage: Stage):
    from mpcli.recon.network import build_network

    return build_network({**config.network, "iters": stage.iters})


def _param_groups(theta: Params, lr: float, mu_lr_scale: float) -> list[dict]:
    """Adam's parameter groups: one group, or the μ parameters (last in θ) with lr·``mu_lr_scale``."""
    mu = [v for k, v in theta.items() if k in MU_PARAMS]
    if mu_lr_scale == 1.0 or not mu:
        return [{"params": list(theta.values())}]
    return [{"params": [v for k, v in theta.items() if k not in MU_PARAMS]},
            {"params": mu, "lr": lr * mu_lr_scale}]


def amend(checkpoint: Path, log: Path | None, network: dict | None = None, loss: str | None = None,
          mu_lr_scale: float | None = None, maps: str | None = None, tasks: dict | None = None,
          ema: float | None = None) -> dict:
    """Change a running curriculum's recipe at its current step, and say so in the log.

    ``network`` entries are added to the network configuration, ``tasks`` entries
    to the task family's (stages' own overrides still apply); parameters the
    amended network has and θ lacks take the network's initial values (MoDL's
    ``mu_weights``: 0, i.e. the same function as before), as do the weights of added
    μ features (``mu_features``; in θ and θ̄); ``ema`` starts (or changes) the
    averaging of θ from the next step. Adam's state restarts when θ's parameters, their
    step sizes or the loss change (its groups and gradient scale may), and is kept otherwise.
    The log gets an ``amend`` record with the changes that differ from the stored recipe,
    so a learning curve shows where it changed. Returns them.
    """
    from mpcli.recon.network import build_network, remap_mu_weights

    state, config = load_checkpoint(checkpoint)
    changes: dict = {}
    if network:
        old_features = getattr(build_network(config.network), "mu_features", ())
        config.network = {**config.network, **network}
        changes["network"] = network
        model = build_network(config.network)
        fresh = params_of(model)
        missing = {k: v.detach() for k, v in fresh.items() if k not in state.theta}
        unknown = sorted(set(state.theta) - set(fresh))
        if unknown:
            raise ValueError(f"the amended network has no parameter(s) {', '.join(unknown)}")
        for params in (state.theta, state.ema):  # μ weights that were there follow their features
            if "mu_weights" in params:
                params["mu_weights"] = remap_mu_weights(params["mu_weights"], old_features, model.mu_features)
        state.theta = {**state.theta, **missing}
    if tasks:
        from mpcli.data.tasks import TaskFamily

        merged = {**config.tasks, **tasks}
        TaskFamily.from_config(merged)  # ValueError on a bad family
        config.tasks, changes["tasks"] = merged, tasks
    if loss is not None and loss != config.loss:
        make_loss(loss)
        config.loss, changes["loss"] = loss, loss
    if mu_lr_scale is not None and float(mu_lr_scale) != config.mu_lr_scale:
        config.mu_lr_scale, changes["mu_lr_scale"] = float(mu_lr_scale), float(mu_lr_scale)
    if maps is not None and maps != config.maps:
        if maps not in MAPS:
            raise ValueError(f"maps must be one of {', '.join(MAPS)}, got {maps!r}")
        config.maps, changes["maps"] = maps, maps
    if ema is not None and float(ema) != config.ema:
        config.ema, changes["ema"] = float(ema), float(ema)
        CurriculumConfig.from_dict(config.to_dict())  # ValueError on a bad decay
    if changes.keys() & {"network", "mu_lr_scale", "loss"}:
        state.adam = {}
    save_checkpoint(checkpoint, state, config)
    if log is not None:
        stage = config.stages[min(state.stage, len(config.stages) - 1)].name
        rec = {"kind": "amend", "changes": changes, "stage": stage, "step": state.step,
               "wall_h": round(state.wall_s / 3600, 4)}
        with open(log, "a") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    return changes


def initial_state(config: CurriculumConfig) -> State:
    from mpcli.recon.network import build_network

    torch.manual_seed(config.seed)
    return State(params_of(build_network(config.network)), {})


# ------------------------------------------------------------------------------ training

def _plain(d: dict) -> dict:
    """``d`` as JSON sees it (tuples → lists), to compare configurations."""
    return json.loads(json.dumps(d, sort_keys=True))


def _recipe(config: CurriculumConfig, stage: int) -> dict:
    """What a run resumed at stage index ``stage`` must keep: everything that shaped the
    stages trained so far (0 … ``stage``), without their step counts. Later stages, and
    the inner problem while no meta stage has started, may change."""
    d = _plain(config.to_dict())
    d["stages"] = d["stages"][: stage + 1]
    for st in d["stages"]:
        st.pop("steps")
    if not any(st["mode"] == "meta" for st in d["stages"]):
        d.pop("inner")
    return d


def with_stage_steps(config: CurriculumConfig, steps: dict[str, int]) -> CurriculumConfig:
    """``config`` with the step counts of the named stages replaced (``{"k1": 1500}``)."""
    names = {s.name for s in config.stages}
    unknown = sorted(set(steps) - names)
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(sorted(names))}")
    stages = [dataclasses.replace(s, steps=int(steps.get(s.name, s.steps))) for s in config.stages]
    return dataclasses.replace(config, stages=stages)


class _Stop:
    """SIGTERM/SIGINT → finish the current step, checkpoint, return."""

    def __init__(self):
        self.flag = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, *_):
        self.flag = True


def _resume_log(log: Path, wall_s: float | None, frame: str) -> dict | None:
    """Open the log of a run: with ``wall_s`` (resuming a checkpoint of that training time) drop
    the records written after it (the resumed run writes them again); return the latest
    ``baseline`` record in the validation ``frame`` (a log from before frames says "true"), if any."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()] if log.exists() else []
        records = [json.loads(ln) for ln in lines]
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(log, f"cannot read log: {err}") from None
    if wall_s is not None:
        keep = [r.get("kind") == "baseline" or r.get("wall_h", 0.0) <= wall_s / 3600 + 1e-4 for r in records]
        if not all(keep):
            log.write_text("".join(ln + "\n" for ln, k in zip(lines, keep) if k))
    return next((r for r in reversed(records) if r.get("kind") == "baseline" and r.get("frame", "true") == frame),
                None)


def train(config: CurriculumConfig, checkpoint: Path, log: Path | None = None, *,
          checkpoint_every_s: float = 300.0, val_every_s: float = 900.0, log_every: int = 10,
          max_steps: int | None = None, handle_signals: bool = False,
          progress: Callable[[dict], None] | None = None, workers: int = 0,
          device: str | torch.device = "cpu", amp: bool = False) -> State:
    """Run (or resume) the curriculum until it ends, ``max_steps`` more steps, or a signal.

    Resumes from ``checkpoint`` when it exists: ``config`` must equal the stored one in
    everything that shaped the stages trained so far, up to their step counts (a
    different recipe is a different run); stages not started yet may differ. Writes the checkpoint
    every ``checkpoint_every_s`` wall seconds, at each stage end and on exit; the
    log gets a ``baseline`` record when it has none, then ``train``/``val`` records.
    ``workers`` > 0 processes make the coming steps' examples meanwhile (:mod:`mpcli.meta.prefetch`;
    the same run, faster where cores are free). θ, Adam and the examples live on ``device``
    (examples are made on the CPU); ``amp`` runs the training forward and backward passes
    under bfloat16 autocast (the convolutions; FFTs and CG stay in single precision).
    Validation runs in full precision. Resumption is bit-for-bit on the same device and threads.
    """
    from mpcli.meta.batches import to_device

    device = torch.device(device)
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state, saved = load_checkpoint(checkpoint)
        done = min(state.stage, len(saved.stages) - 1)  # a finished run may take stages appended to it
        mine, theirs = _recipe(config, done), _recipe(saved, done)
        if mine != theirs:
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ModelError(checkpoint, f"checkpoint was made with another configuration ({', '.join(diff)})")
    else:
        state = initial_state(config)
    logf = Path(log) if log is not None else None
    base = _resume_log(logf, state.wall_s if checkpoint.exists() else None, config.maps) if logf else None

    def write(rec: dict) -> None:
        if progress is not None:
            progress(rec)
        if logf is not None:
            with open(logf, "a") as fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")

    stop = _Stop()
    if handle_signals:
        stop.install()
    val_cpu = _val_batches(config) if config.val_tasks else []
    val_batches = [to_device(b, device) for b in val_cpu]
    if logf is not None and base is None and val_batches:
        base = baseline(config, val_cpu)
        write({**base, "wall_h": round(state.wall_s / 3600, 4)})

    theta = {k: v.detach().to(device).clone().requires_grad_(True) for k, v in state.theta.items()}
    state.ema = {k: v.to(device) for k, v in state.ema.items()}
    theta = {**{k: v for k, v in theta.items() if k not in MU_PARAMS},  # μ last: Adam's groups keep θ's order
             **{k: v for k, v in theta.items() if k in MU_PARAMS}}
    done_here = 0
    t_last_ckpt = t_last_val = time.perf_counter()

    def snapshot() -> None:
        state.theta = {k: v.detach() for k, v in theta.items()}
        save_checkpoint(checkpoint, state, config)

    validated: list[tuple[str, int]] = []  # where the last validation ran: a stage's end need not repeat it

    def run_val(model, stage: Stage) -> None:
        if not val_batches or validated[-1:] == [(stage.name, state.step)]:
            return
        validated.append((stage.name, state.step))
        vals = validate(model, theta, config, val_batches)
        rec = {"kind": "val", "stage": stage.name, "step": state.step, "wall_h": round(state.wall_s / 3600, 4),
               "frame": config.maps, "psnr": vals, "psnr_mean": float(np.mean(vals))}
        if base is not None:
            rec["gap_to_cs_db"] = float(np.mean(vals) - base["cs_mean"])
        if state.ema:
            ema = validate(model, state.ema, config, val_batches)
            rec["psnr_ema"], rec["psnr_ema_mean"] = ema, float(np.mean(ema))
        if stage.mode == "meta":  # what the stage trains for: the exported weights after the inner steps
            adapted = validate_adapted(model, state.ema or theta, config, val_batches)
            rec["psnr_adapted"], rec["psnr_adapted_mean"] = adapted, float(np.mean(adapted))
        write(rec)

    with Prefetcher(functools.partial(_draw_at, config), workers) as prefetch:
        while state.stage < len(config.stages):
            j = state.stage
            stage = config.stages[j]
            model = _stage_model(config, stage).to(device)
            opt = torch.optim.Adam(_param_groups(theta, stage.lr, config.mu_lr_scale), lr=stage.lr)
            if state.adam:
                opt.load_state_dict(state.adam)
            loss_fn = make_loss(config.loss)
            inner_loss = make_loss(config.inner["loss"]) if stage.mode == "meta" else None
            losses: list[float] = []
            t_step = 0.0
            while state.step < stage.steps:
                if stop.flag or (max_steps is not None and done_here >= max_steps):
                    state.adam = opt.state_dict()
                    snapshot()
                    return state
                t0 = time.perf_counter()
                grads = {k: torch.zeros_like(v) for k, v in theta.items()}
                total, made = 0.0, 0
                for i in range(stage.tasks_per_step):
                    try:
                        batch = prefetch.get((j, state.step, i), _next_keys(stage, j, state.step, i, 2 * workers))
                    except ValueError as err:  # an example the simulation cannot make: one lost, not the run
                        write({"kind": "skipped", "stage": stage.name, "step": state.step, "task": i,
                               "reason": str(err), "wall_h": round(state.wall_s / 3600, 4)})
                        continue
                    made += 1
                    batch = to_device(batch, device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        g, value = _gradient(config, j, stage, state.step, i, model, theta, batch, loss_fn, inner_loss)
                    for k in grads:
                        if g[k] is not None:
                            grads[k] += g[k] / stage.tasks_per_step
                    total += float(value.detach()) / stage.tasks_per_step
                if 0 < made < stage.tasks_per_step:  # the mean over the examples made
                    grads = {k: v * (stage.tasks_per_step / made) for k, v in grads.items()}
                    total *= stage.tasks_per_step / made
                norm = torch.sqrt(sum((v * v).sum() for v in grads.values()))
                if not made:
                    total = math.nan
                elif math.isfinite(float(norm)) and math.isfinite(total):
                    scale = min(1.0, config.grad_clip / float(norm)) if config.grad_clip > 0 and float(norm) > 0 else 1.0
                    for k, p in theta.items():
                        p.grad = grads[k] * scale
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if config.ema:
                        _average(state.ema, theta, config.ema)
                else:  # never let one bad example (NaN/inf loss or gradient) into θ or Adam's moments
                    write({"kind": "skipped", "stage": stage.name, "step": state.step,
                           "loss": total if math.isfinite(total) else None, "wall_h": round(state.wall_s / 3600, 4)})
                state.step += 1
                done_here += 1
                dt = time.perf_counter() - t0
                state.wall_s += dt
                t_step += dt
                losses.append(total if math.isfinite(total) else float("nan"))
                if len(losses) == log_every:
                    write({"kind": "train", "stage": stage.name, "step": state.step, "loss": float(np.nanmean(losses)),
                           "s_per_step": round(t_step / log_every, 3), "wall_h": round(state.wall_s / 3600, 4)})
                    losses, t_step = [], 0.0
                now = time.perf_counter()
                if now - t_last_val >= val_every_s:
                    run_val(model, stage)
                    t_last_val = time.perf_counter()
                if now - t_last_ckpt >= checkpoint_every_s:
                    state.adam = opt.state_dict()
                    snapshot()
                    t_last_ckpt = time.perf_counter()
            run_val(model, stage)
            state.stage, state.step, state.adam = j + 1, 0, {}
            snapshot()
        return state


def export_weights(checkpoint: Path, out: Path, averaged: bool = True) -> str:
    """Write a curriculum checkpoint's weights as an ``mp`` weight file (full K); returns its SHA-256.

    The averaged θ̄ when the run keeps one (``CurriculumConfig.ema``) and ``averaged``, else θ.
    """
    from mpcli import __version__
    from mpcli.io.weights import save_weights

    state, config = load_checkpoint(checkpoint)
    use_ema = averaged and bool(state.ema) and set(state.ema) == set(state.theta)
    done = config.stages[: state.stage + 1]
    meta = {"arch": config.network["arch"], "config": config.network, "kind": "curriculum-prior",
            "mp_version": __version__,
            "curriculum": {"stage": done[-1].name if done else None, "step": state.step,
                           "wall_h": round(state.wall_s / 3600, 4), "loss": config.loss,
                           "stages": [dataclasses.asdict(st) for st in done], "seed": config.seed,
                           "averaged": config.ema if use_ema else None},
            "data": {"family": config.tasks, "maps": config.maps, "val_tasks": config.val_tasks}}
    return save_weights(out, {k: state.ema[k] for k in state.theta} if use_ema else state.theta, meta)
