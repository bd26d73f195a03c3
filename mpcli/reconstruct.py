"""Reconstruct one scan and write its outputs: the library behind ``mp reconstruct``.

Methods:
- ``zero-filled``: RSS of the coil images of the zero-filled k-space.
- ``sense``: CG-SENSE with ESPIRiT maps (optional Tikhonov μ).
- ``cs``: L1-wavelet compressed sensing (sigpy) with ESPIRiT maps.
- ``meta``: the shipped meta-prior network, no adaptation.
- ``adapted``: a network file written by ``mp adapt`` (``--model``), refined by
  CS around its image when ``mp adapt`` chose so (:mod:`mpcli.recon.refine`).

Outputs (each written atomically): ``<stem>.h5`` (fastMRI-style
``reconstruction`` ``[S, h, w]`` float32), ``<stem>.nii.gz`` (NIfTI-1, qform =
sform, code 1), ``<stem>_dicom/`` (one MR image series).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpcli import __version__
from mpcli.errors import InputError, OutputError
from mpcli.output_plan import OUTPUT_NAMES
from mpcli.scan import Scan, center_crop

CLASSICAL = ("zero-filled", "sense", "cs")
NETWORK = ("meta", "adapted")
METHODS = CLASSICAL + NETWORK
FORMATS = tuple(OUTPUT_NAMES)


def parse_formats(values: list[str], option: str = "--format") -> tuple[str, ...]:
    """Output formats from repeated and/or comma-separated values, in order, each once.

    ``["dicom,nifti", "h5"]`` → ``("dicom", "nifti", "h5")``; an unknown or
    empty name is a :class:`UsageError`.
    """
    from mpcli.errors import UsageError

    names = [name.strip() for value in values for name in value.split(",")]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise UsageError(None, f"{option} must be among {', '.join(FORMATS)} (repeat it or give a comma "
                               f"list), got {bad[0] if bad else ''!r}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class ReconOptions:
    """What to reconstruct and write; recorded in each output's manifest."""

    method: str = "cs"
    formats: tuple[str, ...] = ("h5", "nifti")
    cs_lam: float = 1e-3  # classical.DEFAULT_LAM: best on the MPRAGE 4x data and bench/classical.py
    cs_iters: int = 100
    sense_tikhonov: float = 0.01
    sense_iters: int = 30
    batch: int = 4
    anonymize: bool = False
    refine: dict | None = None  # network methods: CS around the network's image (mpcli.recon.refine), as
    # chosen by mp adapt and stored in its weights file; None: the network alone
    virtual_coils: int = 0  # coils compressed to this many virtual ones first (physics.coils.compress_coils); 0: off
    extra: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        """The options that change the output bytes (not the device)."""
        return asdict(self)


@dataclass
class Recon:
    """A reconstructed volume and where it came from."""

    image: np.ndarray  # [S, h, w] float32 magnitude
    scan: Scan
    method: str
    model_sha256: str | None


def reconstruct_scan(scan: Scan, options: ReconOptions, device: torch.device,
                     model: torch.nn.Module | None = None, model_sha256: str | None = None,
                     maps: torch.Tensor | None = None) -> Recon:
    """Reconstruct ``scan`` with ``options.method`` on ``device``.

    ``maps`` (``[S, C, H, W]``) are estimated with ESPIRiT when not given (given, they belong to the scan
    after ``options.virtual_coils``' compression).
    """
    from mpcli.physics.coils import estimate_maps, with_virtual_coils

    scan = with_virtual_coils(scan, options.virtual_coils)

    if options.method == "zero-filled":
        from mpcli.recon.classical import reconstruct_classical

        image = reconstruct_classical(scan, "zero-filled", device=device)
        return Recon(image, scan, options.method, None)
    if maps is None:
        maps = estimate_maps(scan.kspace, scan.mask, device=device)  # [S, C, H, W]
    if options.method in CLASSICAL:
        from mpcli.recon.classical import reconstruct_classical

        opts = ({"lam": options.cs_lam, "iters": options.cs_iters} if options.method == "cs"
                else {"tikhonov": options.sense_tikhonov, "iters": options.sense_iters})
        image = reconstruct_classical(scan, options.method, maps=maps, device=device, **opts)
        return Recon(image * coil_support(maps, scan.recon_size), scan, options.method, None)
    if model is None:
        raise InputError(scan.source, f"method {options.method!r} needs a model")
    from mpcli.recon.apply import reconstruct_network

    image = reconstruct_network(model, scan, maps, device, batch=options.batch,  # zero outside the support
                                refine=options.refine)
    return Recon(image, scan, options.method, model_sha256)


def coil_support(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Where the coil maps see anything: Σ_c |S_c|² > 0, ``[S, h, w]`` float32.

    Outside it A is blind (A x = 0 for x supported there), so nothing measured
    constrains a reconstruction: ESPIRiT's eigenvalue crop marks it as outside
    the object, and map-based reconstructions are set to zero there.
    """
    return center_crop(maps.abs().pow(2).sum(1) > 0, size).cpu().numpy().astype(np.float32)


def provenance(recon: Recon) -> dict:
    """Non-identifying facts recorded in every output (no patient data)."""
    return {
        "software": "mp",
        "version": __version__,
        "method": recon.method,
        "model_sha256": recon.model_sha256,
        "input_sha256": recon.scan.sha256,
        "input_format": recon.scan.format,
        "frame": recon.scan.frame,
        "acceleration": round(recon.scan.acceleration, 3),
        "geometry_assumed": recon.scan.geometry.assumed,
    }


def output_paths(out_dir: Path, stem: str, formats: tuple[str, ...]) -> dict[str, Path]:
    """Where each format of volume ``stem`` goes."""
    return {fmt: out_dir / OUTPUT_NAMES[fmt].format(stem) for fmt in formats}


def write_outputs(recon: Recon, out_dir: Path, stem: str, options: ReconOptions) -> list[Path]:
    """Write ``recon`` in every requested format; each write is atomic."""
    from mpcli.io.dicom import write_dicom_series
    from mpcli.io.fastmri import write_reconstruction
    from mpcli.io.ismrmrd import one_line
    from mpcli.io.nifti import write_nifti

    scan = recon.scan
    check_finite_image(recon)
    prov = provenance(recon)
    full = tuple(scan.kspace.shape[-2:])
    geometry = scan.geometry.cropped(full, recon.image.shape[-2:])
    written = []
    for fmt, path in output_paths(out_dir, stem, options.formats).items():
        try:
            if fmt == "h5":
                write_reconstruction(path, recon.image, prov)
            elif fmt == "nifti":
                write_nifti(path, recon.image, geometry, description=f"mp {__version__} {recon.method}")
            else:
                write_dicom_series(path, recon.image, geometry, identity=scan.identity,
                                   protocol=scan.protocol, provenance=prov, anonymize=options.anonymize)
        except OSError as err:  # disk full, file too large, I/O error: the output's fault, not the input's
            raise OutputError(path, f"cannot write ({err.strerror or one_line(err)})") from None
        written.append(path)
    return written


def check_finite_image(recon: Recon) -> None:
    """``InputError`` when the image holds NaN or Inf: nothing is written then.

    Happens when k-space values are so large that their squares overflow
    float32 (beyond ~1e19), which no scanner produces.
    """
    if not np.isfinite(recon.image).all():
        peak = float(recon.scan.kspace.abs().max())
        raise InputError(recon.scan.source, f"the {recon.method} reconstruction is not finite (NaN/Inf); "
                         f"k-space magnitude reaches {peak:.3g}, out of range for float32 arithmetic")
