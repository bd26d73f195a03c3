"""Adapt a prior to a scanner's files and write the adapted model: ``mp adapt``.

Reads each k-space file (every frame), estimates ESPIRiT coil maps (on the GPU
when one is used), adapts the prior with measurement-only steps
(:func:`mpcli.meta.adapt.adapt`) and writes the adapted weights as safetensors
with their provenance: the parent prior's hash, a data summary (no patient
data), the adaptation settings and the loss curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mpcli import __version__
from mpcli.errors import InputError, OutputError
from mpcli.scan import Scan


@dataclass
class SiteScan:
    """A scan with its coil maps and measurements on the device."""

    scan: Scan
    maps: torch.Tensor  # [S, C, H, W] complex64 (CPU)


def load_site(files: list[Path], device: torch.device,
              on_file: Callable[[Path], None] | None = None, virtual_coils: int = 0) -> list[SiteScan]:
    """Read every frame of every file (its coils compressed to ``virtual_coils`` virtual ones, 0: as they
    are) and estimate its coil maps."""
    from mpcli.io.readers import read_scans
    from mpcli.physics.coils import estimate_maps, with_virtual_coils

    site = []
    for f in files:
        for scan in read_scans(f):
            scan = with_virtual_coils(scan, virtual_coils)
            site.append(SiteScan(scan, estimate_maps(scan.kspace, scan.mask, device=device).cpu()))
        if on_file:
            on_file(f)
    if not site:
        raise InputError(None, "no k-space to adapt on")
    return site


def data_summary(site: list[SiteScan]) -> dict:
    """What the model was adapted on: shapes, accelerations, input hashes."""
    return {"scans": len(site),
            "slices": int(sum(s.scan.shape[0] for s in site)),
            "shapes": sorted({"x".join(map(str, s.scan.shape[1:])) for s in site}),
            "accelerations": sorted({round(s.scan.acceleration, 2) for s in site}),
            "input_sha256": sorted({s.scan.sha256 for s in site})}


@dataclass
class Adapted:
    """Result of :func:`adapt_files`."""

    model: torch.nn.Module  # carries the adapted parameters
    sha256: str  # content hash of the written weights
    parent_sha256: str
    result: object  # mpcli.meta.adapt.AdaptResult
    site: list[SiteScan]
    weights: Path


def adapt_files(files: list[Path], out: Path, prior: Path | None, config, device: torch.device,
                progress: Callable[[int, int, dict], None] | None = None,
                on_file: Callable[[Path], None] | None = None, overwrite: bool = False,
                virtual_coils: int = 0) -> Adapted:
    """Adapt ``prior`` (default: the shipped meta-prior) to ``files``, their coils compressed to
    ``virtual_coils`` virtual ones (0: as they are; recorded in the weights file); write ``out``."""
    from mpcli.io.atomic import check_output_path
    from mpcli.io.weights import SHIPPED_PRIOR, load_model, save_weights
    from mpcli.meta.adapt import adapt, prior_params, scan_batch

    if out.exists() and not overwrite:
        raise OutputError(out, "exists; use --overwrite to replace it")
    check_output_path(out, files)
    model, meta = load_model(prior or SHIPPED_PRIOR, device=device)
    site = load_site(files, device, on_file, virtual_coils)
    batches = [scan_batch(s.scan, s.maps, device) for s in site]
    result = adapt(model, prior_params(model), batches, config, progress)
    state = {k: v.detach().cpu() for k, v in result.params.items()}
    metadata = {
        "arch": meta["arch"],
        "config": meta["config"],
        "kind": "adapted",
        "parent_sha256": meta["sha256"],
        "data": data_summary(site),
        "adapt": result.config,
        "curve": result.curve,
        "best_step": result.best_step,
        "mu_scale": result.mu_scale,
        "mu_search": result.mu_search,
        "refine": result.refine,
        "refine_search": result.refine_search,
        "kept_prior": result.kept_prior,
        "virtual_coils": virtual_coils,
        "mp_version": __version__,
    }
    sha = save_weights(out, state, metadata)
    model.load_state_dict(state, strict=True)  # the networks have parameters only
    return Adapted(model, sha, meta["sha256"], result, site, out)
