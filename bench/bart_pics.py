"""BART as the field's reference classical reconstruction: ``bart ecalib`` + ``bart pics -l1``.

BART (Uecker et al., Debian package ``bart``) is run as a command, per slice,
on the same undersampled k-space the other methods see: ESPIRiT maps from its
own calibration (``ecalib -m1``), then L1-wavelet PICS with the image
re-scaled to the data's units (``-S``). Arrays travel as BART's ``.cfl/.hdr``
pairs (complex64, column-major, 16 dimensions: readout, phase, slice-in-plane,
coils, …).

Used by ``bench/quality.py`` as a classical anchor beside sigpy's CS, with λ
tuned on the ground truth (optimistic, like the sigpy baseline) and with
BART's own common default λ = 0.01.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from mpcli.physics.coils import calibration_width, kernel_size

DEFAULT_LAM = 0.01
LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def available() -> bool:
    """True when the ``bart`` command is on PATH."""
    return shutil.which("bart") is not None


def write_cfl(base: Path, array: np.ndarray) -> None:
    """``base.hdr`` + ``base.cfl``: complex64, column-major, dims padded to 16."""
    dims = list(array.shape) + [1] * (16 - array.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    np.asarray(array, np.complex64).ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> np.ndarray:
    """Inverse of :func:`write_cfl` (trailing singleton dimensions dropped)."""
    dims = [int(v) for v in base.with_suffix(".hdr").read_text().splitlines()[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return np.fromfile(base.with_suffix(".cfl"), np.complex64).reshape(dims, order="F")


def _bart(*args: str) -> None:
    proc = subprocess.run(["bart", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bart {args[0]} failed: {(proc.stderr or proc.stdout).strip()[:200]}")


def calibration_args(kspace: np.ndarray) -> list[str]:
    """``ecalib``'s calibration region and kernel, chosen by mp's own rule.

    BART's defaults (a region found by scanning out from the centre, a 6 × 6
    kernel) fail where the fully sampled centre is small: a 2-D Poisson mask
    with an 8 × 8 centre leaves ~3 % of the maps non-zero (13 dB). Given the same
    region and kernel as mp's ESPIRiT (:func:`mpcli.physics.coils.calibration_width`,
    :func:`~mpcli.physics.coils.kernel_size`: half the region, within [3, 8]) it
    reconstructs (a phantom: 12.5 → 30.7 dB), so the anchor is not handicapped
    by a setting mp chooses better. The acquired set is where any coil is non-zero.

    Args: ``kspace`` ``[S, C, H, W]``. Returns ``["-r", region, "-k", kernel]``.
    """
    acquired = torch.from_numpy(np.abs(kspace).sum(axis=1) > 0)  # [S, H, W]
    region = calibration_width(acquired[:, None])
    return ["-r", str(region), "-k", str(kernel_size(acquired)[1])]


def pics(kspace: np.ndarray, lams, iters: int = 100) -> tuple[dict[float, np.ndarray], float]:
    """ESPIRiT + L1-wavelet PICS for every λ in ``lams``; one ``ecalib`` per slice,
    on the calibration region and kernel of :func:`calibration_args`.

    Args:
        kspace: ``[S, C, H, W]`` complex, zeros where not acquired (centred FFT).
    Returns:
        ({λ: magnitude images ``[S, H, W]`` float32}, seconds per slice per λ
        including the calibration). Raises ``RuntimeError`` when BART fails
        (e.g. ``ecalib`` with too few calibration lines).
    """
    import time

    out = {lam: [] for lam in lams}
    seconds = 0.0
    calib = calibration_args(kspace)
    with tempfile.TemporaryDirectory(prefix="mp-bart-") as tmp:
        d = Path(tmp)
        for s in range(kspace.shape[0]):
            write_cfl(d / "k", np.transpose(kspace[s], (1, 2, 0))[:, :, None, :])  # [H, W, 1, C]
            t0 = time.perf_counter()
            _bart("ecalib", "-m1", *calib, str(d / "k"), str(d / "maps"))
            t_cal = time.perf_counter() - t0
            for lam in lams:
                t0 = time.perf_counter()
                _bart("pics", "-S", "-l1", "-r", f"{lam:g}", "-i", str(iters), str(d / "k"), str(d / "maps"),
                      str(d / "x"))
                seconds += t_cal + time.perf_counter() - t0
                out[lam].append(np.abs(read_cfl(d / "x")).reshape(kspace.shape[-2:]).astype(np.float32))
    return {lam: np.stack(v) for lam, v in out.items()}, seconds / (kspace.shape[0] * len(lams))
