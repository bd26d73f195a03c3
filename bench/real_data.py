"""``mp adapt`` against classical reconstruction on real measured k-space (not simulated).

The real 4-coil MPRAGE brain (``../shared/data/real/loraks_mprage_4ch_full.mat``,
fully sampled, research licence: never shipped) is undersampled retrospectively
with fastMRI ``random`` line masks (8 % centre, seeded) at each ``--accelerations``;
the reference is the RSS of the fully sampled coil images. Every method sees only
the undersampled k-space and maps estimated from it: zero-filled, CG-SENSE,
sigpy L1-wavelet CS and BART PICS (λ tuned on the reference: optimistic), BART
at λ = 0.01, the shipped meta-prior, and ``mp adapt`` with its defaults.

Then the real 8-coil brain shipped in ``sample_data/`` (2-D Poisson, R ≈ 8, no
fully sampled reference): a reference-free score. A uniform 10 % Γ of the
acquired samples outside the centre 24² (which stays with the calibration
data) is held out; every method reconstructs from the rest T, with ESPIRiT
maps estimated from y_T, and is scored by how well it predicts what it did
not see::

    e = ‖A_Γ x̂ − y_Γ‖² / ‖y_Γ‖²        (reported in dB: 10 log10 e; lower is better)

CS here has λ chosen by that same held-out error (a deployable rule, unlike
``cs*``); ``mp adapt`` adapts on y_T only (its own self-validation split is
drawn inside T).

One mask is one draw: on a single slice the choice `mp adapt` makes from held-out lines moves
with the mask, so the MPRAGE is scored on every ``--accelerations`` × ``--mask-seeds`` mask, and
the table gives each R's mean over its masks and the mean over all of them (the best classical
method of a mean row is the one with the best mean).

    python bench/real_data.py                      # R 4/6/8 × masks 0–2, then the Poisson brain, ~25 min on 2 idle cores
    python bench/real_data.py --accelerations 4,6 --mask-seeds 0    # one mask per R, ~6 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bart_pics
import common as c
from quality import run_bart

from mpcli.meta.adapt import AdaptConfig, adapt
from mpcli.physics.masks import make_mask

MPRAGE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "loraks_mprage_4ch_full.mat"
METHODS = ("zero-filled", "sense", "cs*", "bart*", "bart", "prior", "adapt")
CLASSICAL = ("sense", "cs*", "bart*", "bart")


def mprage_volume(acceleration: float, seed: int, centre_fraction: float = 0.08) -> c.Volume:
    """The MPRAGE slice undersampled at ``acceleration`` (random lines, ``centre_fraction`` fully sampled
    at the centre); ref = RSS of the full coil images."""
    import scipy.io

    from mpcli.recon.classical import zero_filled

    data = scipy.io.loadmat(MPRAGE)["kData"]  # (256, 256, 4) complex128, coils last
    full = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).to(torch.complex64)[None]  # [1, 4, H, W]
    h, w = full.shape[-2:]
    mask = make_mask("random", (h, w), acceleration, centre_fraction, seed=seed).reshape(1, 1, 1, w).expand(1, 1, h, w)
    mask = mask.contiguous().to(torch.float32)
    y = full * mask  # [1, 4, H, W]
    ref = zero_filled(full).numpy().astype(np.float32)  # [1, H, W]
    vol = c.Volume(None, y, y, mask, torch.zeros(1, h, w, dtype=torch.complex64), ref)
    return c.with_maps(vol)


def _runners(vol: c.Volume, model, theta, config: AdaptConfig) -> dict:
    """Each method as a thunk returning a ``common.Recon`` of ``vol``."""
    return {
        "zero-filled": lambda: c.run_zero_filled(vol),
        "sense": lambda: c.run_sense(vol),
        "cs*": lambda: c.run_cs_tuned(vol, c.CS_LAMS, 100, 0),
        "bart*": lambda: run_bart(vol, bart_pics.LAMS, 0),
        "bart": lambda: run_bart(vol, (bart_pics.DEFAULT_LAM,), 0),
        "prior": lambda: c.run_network(vol, model, theta),
        "adapt": lambda: c.run_adapt(vol, model, theta, config),
    }


POISSON_BRAIN = Path(__file__).resolve().parents[1] / "sample_data" / "brain_real_poisson.h5"
HOLDOUT_METHODS = ("zero-filled", "sense", "cs", "prior", "adapt")


def heldout_errors(path: Path, model, theta, config: AdaptConfig, seed: int = 0) -> dict:
    """Held-out k-space prediction error (dB) of each method on a scan without reference."""
    from mpcli.io.readers import read_scans
    from mpcli.physics.masks import split_mask
    from mpcli.physics.sense import Sense
    from mpcli.recon.classical import cg_sense, l1_wavelet

    scan = read_scans(path)[0]
    y, (S, _, H, W) = scan.kspace, scan.kspace.shape
    omega = scan.mask.expand(S, 1, H, W).contiguous().to(torch.float32)
    t, g = split_mask(omega, 0.1, torch.Generator().manual_seed(seed), kind="uniform", keep_center=24)
    vol = c.with_maps(c.Volume(None, y * t, y * t, t, torch.zeros(S, H, W, dtype=torch.complex64),
                               np.zeros((S, H, W), np.float32)))
    A_g = Sense(vol.maps, g)

    def err_db(x: torch.Tensor) -> float:
        r = A_g(x) - y * g
        return float(10 * torch.log10(r.abs().pow(2).sum() / (y * g).abs().pow(2).sum()))

    b = c.site_batch(vol)
    zf = b.A.adjoint(b.y)  # Σ conj(Ŝ) Fᴴ y_T: the zero-filled image in the maps' frame
    out = {"zero-filled": err_db(zf), "sense": err_db(cg_sense(b.y, b.A, tikhonov=c.SENSE_TIKHONOV, iters=30))}
    cs = {lam: err_db(l1_wavelet(b.y, vol.maps, t, lam=lam, iters=100)) for lam in c.CS_LAMS}
    out["cs"] = min(cs.values())
    out["cs_lambda"] = min(cs, key=cs.get)
    out["prior"] = err_db(c.apply_network(model, theta, b.y, b.A))
    res = adapt(model, theta, [b], config)
    out["adapt"] = err_db(c.adapted_image(model, res, b.y, b.A))
    return out


def _row(label: str, measured: str, scores: dict) -> list:
    """A table row: PSNR / SSIM of every method, and adapt's margin over the best classical method."""
    best = max(CLASSICAL, key=lambda m: np.nan_to_num(scores[m][0], nan=-np.inf))
    return ([label, measured] + [f"{scores[m][0]:.2f} / {scores[m][1]:.4f}" for m in METHODS]
            + [f"{scores['adapt'][0] - scores[best][0]:+.2f} ({best})"])


def _mean(results: list[dict]) -> dict:
    """Each method's (PSNR, SSIM) averaged over ``results``."""
    return {m: tuple(float(np.mean([r["scores"][m][k] for r in results])) for k in (0, 1)) for m in METHODS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    c.add_common_args(ap)
    ap.add_argument("--accelerations", default="4,6,8")
    ap.add_argument("--mask-seeds", default="0,1,2", help="seeds of the MPRAGE's line masks, each scored")
    args = ap.parse_args()
    if not MPRAGE.exists():
        sys.exit(f"real data not found: {MPRAGE} (see shared/data/real/README.md)")
    device = c.setup(args)
    model, theta, sha, _ = c.load_prior(args.prior, device)
    config = AdaptConfig(steps=2, slices_per_step=1, val_slices=1) if args.quick else AdaptConfig()
    mask_seeds = [int(s) for s in args.mask_seeds.split(",")]
    rows, results = [], []
    for r in (float(v) for v in args.accelerations.split(",")):
        per_r = []
        for mask_seed in mask_seeds:
            vol = mprage_volume(r, mask_seed)
            runners = _runners(vol, model, theta, config)
            scores, seconds = {}, {}
            for name in METHODS:
                t0 = time.perf_counter()
                rec = runners[name]()
                seconds[name] = time.perf_counter() - t0
                scores[name] = c.score(vol.ref, rec.image) if np.isfinite(rec.image).all() else (np.nan, np.nan)
                print(f"  R={r:g} mask {mask_seed} {name:12s} PSNR {scores[name][0]:6.2f}  ({seconds[name]:.1f} s)",
                      file=sys.stderr)
            rows.append(_row(f"{r:g}×, mask {mask_seed}", f"{vol.mask.numel() / float(vol.mask.sum()):.2f}", scores))
            per_r.append({"acceleration": r, "mask_seed": mask_seed, "scores": scores, "seconds": seconds})
        if len(per_r) > 1:
            rows.append(_row(f"**{r:g}×, mean**", "", _mean(per_r)))
        results += per_r
    if len(results) > len(mask_seeds) > 1:
        rows.append(_row("**all masks, mean**", "", _mean(results)))
    print(c.header("Real 4-coil MPRAGE, retrospective random line masks: PSNR dB / SSIM vs RSS of the full data",
                   device, args.prior, sha, f"adapt seed {args.seed}, mask seeds {args.mask_seeds}, adapt {config}"))
    print(c.markdown_table(rows, ["R, mask", "measured R", *METHODS, "adapt − best classical"]))
    held = heldout_errors(POISSON_BRAIN, model, theta, config, args.seed)
    print(f"\n## Real 8-coil Poisson brain ({POISSON_BRAIN.name}, no reference): held-out k-space prediction error, "
          f"dB (10 log10 ‖A_Γ x̂ − y_Γ‖²/‖y_Γ‖², 10 % of the samples outside the centre 24²; lower is better)\n")
    print(c.markdown_table([[*(held[m] for m in HOLDOUT_METHODS), f"{held['cs_lambda']:g}"]],
                           [*HOLDOUT_METHODS, "CS λ (by held-out error)"]))
    c.save_json(args.json, {"machine": c.machine(device), "sha256": sha, "results": results, "heldout": held})


if __name__ == "__main__":
    main()
