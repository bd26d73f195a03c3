"""How noisy are real scans, in the simulation's units? (what the training noise range rests on)

The simulation adds complex Gaussian noise of σ = noise_rel · RMS(k) to the
k-space k of all coils (``mpcli.data.simulate``). Two estimators read that
number back from a scan:

    corner = RMS(k over the corners |k|/k_max ≥ 1.2) / RMS(k)            (fully sampled k-space)
    ring   = RMS(y over acquired 0.9 ≤ |k|/k_max ≤ 1) / RMS(y over acquired)   (undersampled, 2-D masks)

and a third, ``calib`` (:func:`mpcli.physics.coils.noise_level`), reads σ off the lower
singular values of the ESPIRiT calibration matrix, divided by RMS(k) of the full
k-space (simulations) or RMS(y) of the acquired samples (the real scans). It is
checked on line-mask scans of four kinds of image (brain, atlas, photograph, dead
leaves): unlike the periphery, it should not move with the image's fine texture.

Outer k-space still holds some signal, so each periphery estimator is calibrated on
simulated scans of known noise_rel (the validation-only ITK T1 head, 8 coils,
Biot–Savart maps): fully sampled for ``corner``, 2-D Poisson R = 8 (the real
brain's sampling) for ``ring``. The real scans' values then read off as a
noise_rel by interpolation in that table.

    python bench/noise_level.py          # ~20 s
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
MPRAGE = REAL / "loraks_mprage_4ch_full.mat"
POISSON_BRAIN = Path(__file__).resolve().parents[1] / "sample_data" / "brain_real_poisson.h5"
LEVELS = (0.0, 0.01, 0.03, 0.1, 0.2)


def _radius(h: int, w: int) -> np.ndarray:
    ky = (np.arange(h) - h // 2) / (h // 2)
    kx = (np.arange(w) - w // 2) / (w // 2)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)  # [H, W]


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.abs(a) ** 2)))


def corner(k: np.ndarray) -> float:
    """``k`` ``[C, H, W]`` fully sampled: RMS of the corners over the RMS of all of k."""
    return _rms(k[:, _radius(*k.shape[-2:]) >= 1.2]) / _rms(k)


def ring(y: np.ndarray, mask: np.ndarray) -> float:
    """``y`` ``[C, H, W]`` undersampled, ``mask`` ``[H, W]``: outer-ring RMS over acquired RMS."""
    acq = mask > 0
    sel = acq & (_radius(*y.shape[-2:]) >= 0.9) & (_radius(*y.shape[-2:]) <= 1.0)
    return _rms(y[:, sel]) / _rms(y[:, acq])


def calibration(kind: str, size: tuple[int, int], seed: int = 0) -> list[float]:
    """The estimator on simulated scans at each of :data:`LEVELS` (mean of 2 slices)."""
    from mpcli.data.tasks import Task

    out = []
    for level in LEVELS:
        accel = 1.0 if kind == "corner" else 8.0
        task = Task("poisson" if kind == "ring" else "random", accel, 0.08, 8, level, "itk_t1_head",
                    "axial", size, 11 + seed, "biot_savart")
        vol = c.simulate_volume(task, 2, seed=seed)
        y, m = vol.y.numpy(), vol.mask.numpy()
        vals = [corner(y[s]) if kind == "corner" else ring(y[s], m[s, 0]) for s in range(y.shape[0])]
        out.append(float(np.mean(vals)))
    return out


def as_noise_rel(value: float, table: list[float]) -> str:
    """Interpolate ``value`` in the calibration ``table`` (monotone in noise_rel); '>' or '<' outside it."""
    if value > table[-1]:
        return f"> {LEVELS[-1]}"
    if value < table[0]:
        return f"< {LEVELS[1]}"
    return f"{float(np.interp(value, table, LEVELS)):.3f}"


def calib_table() -> list[list]:
    """``calib`` estimate / true noise_rel on 4-coil random and 16-coil equispaced line masks."""
    from mpcli.data.tasks import Task
    from mpcli.physics.coils import noise_level

    rows = []
    for source in ("itk_t1_head", "colin27", "natural", "dead_leaves"):
        for level in (0.01, 0.03, 0.15):
            vals = []
            for coils, kind, accel in ((4, "random", 4.0), (16, "equispaced", 5.0)):
                task = Task(kind, accel, 0.08, coils, level, source, "axial", (256, 256), 5, "biot_savart")
                b = task.sample(1, 3)
                full = b.A.with_mask(torch.ones_like(b.A.mask))(b.x)[0]  # [C, H, W] noise-free, fully sampled
                sigma = noise_level(b.y[0], b.A.mask.expand(1, 1, 256, 256)[0, 0] > 0)
                vals.append(sigma / _rms(full.numpy()))
            rows.append([source, level, f"{vals[0]:.4f}", f"{vals[1]:.4f}"])
    return rows


def main() -> None:
    import scipy.io

    from mpcli.io.readers import read_scans
    from mpcli.physics.coils import noise_level
    from mpcli.physics.masks import make_mask

    rows = []
    cal_corner = calibration("corner", (256, 256))
    cal_ring = calibration("ring", (230, 180))
    for level, a, b in zip(LEVELS, cal_corner, cal_ring):
        rows.append([f"simulated, noise_rel {level}", f"{a:.4f}", f"{b:.4f}", ""])
    if MPRAGE.exists():
        k = scipy.io.loadmat(MPRAGE)["kData"].transpose(2, 0, 1)  # [4, 256, 256]
        v = corner(k)
        rows.append(["real MPRAGE, 4 coils (corner)", f"{v:.4f}", "", as_noise_rel(v, cal_corner)])
        kt = torch.from_numpy(np.ascontiguousarray(k)).to(torch.complex64)
        line = make_mask("random", (256, 256), 4.0, 0.08, seed=0).reshape(1, 256).expand(256, 256) > 0
        sigma = noise_level(kt * line, line)
        rows.append(["real MPRAGE, 4 coils, R 4 line mask (calib: σ̂ / RMS of the full k-space)", "", "",
                     f"{sigma / _rms(k):.3f}"])
    else:
        rows.append(["real MPRAGE: absent", "", "", ""])
    scan = read_scans(POISSON_BRAIN)[0]
    y, m = scan.kspace[0].numpy(), scan.mask.expand(scan.kspace.shape[0], 1, *scan.kspace.shape[-2:])[0, 0].numpy()
    v = ring(y, m)
    rows.append(["real Poisson brain, 8 coils (ring)", "", f"{v:.4f}", as_noise_rel(v, cal_ring)])
    sigma = noise_level(scan.kspace[0], torch.from_numpy(m > 0))
    rows.append(["real Poisson brain (calib)", "", "",
                 "too few windows" if sigma is None else f"{sigma / _rms(y[:, m > 0]):.3f} (of acquired RMS)"])
    print(f"# Noise level of real scans in the simulation's units ({c.machine(torch.device('cpu'))})\n")
    print(c.markdown_table(rows, ["scan", "corner", "ring", "≈ noise_rel"]))
    print("\n`calib` estimate of noise_rel on simulated line-mask scans (256², ESPIRiT kernel):\n")
    print(c.markdown_table(calib_table(), ["image", "true noise_rel", "4 coils, random R4", "16 coils, equispaced R5"]))


if __name__ == "__main__":
    main()
