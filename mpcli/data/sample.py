"""Make ``sample_data/``: a simulated multi-coil brain scan with its reference, and
a real one.

    python -m mpcli.data.sample sample_data/ [../shared/data/real/sigpy_brain_8ch_poisson_ksp.npy]

Image: six contiguous axial slices (5 mm apart) of the MNI152 T1 template that
nilearn ships (1 mm, padded square and resampled to 128×128 → 1.82 mm in-plane).
Physics: a smooth random phase per slice, 8 simulated surface coils
(:func:`mpcli.data.simulate.coil_maps`), complex Gaussian noise at 1.5 % of the
k-space RMS (:func:`~mpcli.data.simulate.simulate_kspace`), then a fastMRI
``random`` mask, R = 4 with 8 % centre lines, seeded by the file name.

Writes the same acquisition twice:
- ``brain_fastmri.h5``: fastMRI layout (``kspace`` masked, ``mask``,
  ``reconstruction_rss`` = RSS of the fully sampled k-space, ``ismrmrd_header``,
  our ``mp_geometry``), gzip-compressed;
- ``brain_ismrmrd.h5``: ISMRMRD (acquired lines only, slice positions and
  directions in every acquisition, a synthetic — clearly fake — patient name).

The real scan (:func:`make_real_sample`): the 8-coil axial brain of the SigPy MRI
tutorial (mikgroup/sigpy-mri-tutorial ``data/cartesian_ksp.npy``, BSD-3, notice
in ``sample_data/NOTICE``), measured k-space ``[8, 230, 180]`` undersampled with
a 2-D Poisson-disc mask (12.4 %, centre 24 × 24 fully sampled), written as
``brain_real_poisson.h5`` in the fastMRI layout with its 2-D ``mask`` and an
assumed geometry (1 mm in-plane, axial, rows anterior → posterior). It has no
fully sampled original, hence no ``reconstruction_rss``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mpcli.scan import Geometry

SLICES = 6
SIZE = 128
COILS = 8
NOISE = 0.015
ACCELERATION = 4
CENTER_FRACTION = 0.08
SLICE_GAP_MM = 5.0
SEED = 2311_18710

IDENTITY = {"PatientName": "SAMPLE^SYNTHETIC", "PatientID": "MP-SAMPLE-0001",
            "StudyDescription": "mp sample (simulated from MNI152)"}
PROTOCOL = {"systemVendor": "simulated", "systemFieldStrength_T": 3.0, "TR": 2300.0, "TE": 2.98,
            "sequence": "simulated T1 (MNI152 template)"}


def sample_images() -> tuple[np.ndarray, float]:
    """``[S, 128, 128]`` float32 axial T1 slices (max 1) and the in-plane voxel size (mm)."""
    from mpcli.data.sources import mni_volume, resize, take_slice

    vol = mni_volume("t1")  # [x, y, z] RAS, 1 mm
    z0 = vol.shape[2] // 2 - (SLICES // 2) * int(SLICE_GAP_MM)
    out = []
    for k in range(SLICES):
        img = take_slice(vol, "axial", z0 + k * int(SLICE_GAP_MM))  # [y (A→P), x (R→L... RAS +x)]
        side = max(img.shape)
        pad = [((side - n) // 2, side - n - (side - n) // 2) for n in img.shape]
        out.append(resize(np.pad(img, pad), (SIZE, SIZE)))
    images = np.stack(out).astype(np.float32)
    return images / images.max(), side / SIZE


def sample_geometry(voxel_mm: float) -> Geometry:
    """Axial: rows (i) run anterior → posterior, columns (j) along RAS +x (LPS −x)."""
    centres = tuple((0.0, 0.0, (k - (SLICES - 1) / 2) * SLICE_GAP_MM) for k in range(SLICES))
    return Geometry(voxel_size=(voxel_mm, voxel_mm, SLICE_GAP_MM), read_dir=(0.0, 1.0, 0.0),
                    phase_dir=(-1.0, 0.0, 0.0), slice_dir=(0.0, 0.0, 1.0), slice_centres=centres)


def simulate_scan(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """(fully sampled k-space ``[S, C, H, W]``, mask ``[W]``, RSS reference ``[S, H, W]``, geometry)."""
    import torch

    from mpcli.data.simulate import coil_maps, simulate_kspace, smooth_phase
    from mpcli.physics.fft import ifft2c
    from mpcli.physics.masks import make_mask, seed_from_name

    rng = np.random.default_rng(seed)
    images, voxel = sample_images()
    maps = coil_maps(COILS, (SIZE, SIZE), rng)  # one coil array for the whole scan
    kspace = np.stack([simulate_kspace(img * np.exp(1j * smooth_phase(img.shape, rng, 1.0)), maps, NOISE, rng)
                       for img in images])  # [S, C, H, W]
    mask = make_mask("random", (SIZE, SIZE), ACCELERATION, CENTER_FRACTION, seed_from_name("brain"))
    rss = ifft2c(torch.from_numpy(kspace)).abs().pow(2).sum(1).sqrt().numpy()  # [S, H, W]
    return kspace, mask.reshape(-1).numpy(), rss.astype(np.float32), sample_geometry(voxel)


def make_sample_data(out_dir: str | Path) -> list[Path]:
    """Write ``brain_fastmri.h5`` and ``brain_ismrmrd.h5`` into ``out_dir``."""
    from mpcli.io.fastmri import write_fastmri
    from mpcli.io.ismrmrd import write_ismrmrd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kspace, mask, rss, geometry = simulate_scan()
    under = kspace * mask  # [S, C, H, W], zeros where not acquired
    paths = [
        write_fastmri(out_dir / "brain_fastmri.h5", under, mask=mask, geometry=geometry, reference=rss,
                      attrs={"acquisition": "AXT1_SIMULATED"}, compression="gzip"),
        write_ismrmrd(out_dir / "brain_ismrmrd.h5", under, mask=mask, geometry=geometry, identity=IDENTITY,
                      protocol=PROTOCOL),
    ]
    return paths


REAL_NAME = "brain_real_poisson.h5"
REAL_VOXEL_MM = (1.0, 1.0, 5.0)  # assumed: the tutorial gives no geometry
NOTICE = """\
sample_data/brain_real_poisson.h5 holds the measured k-space of the SigPy MRI
tutorial (https://github.com/mikgroup/sigpy-mri-tutorial, data/cartesian_ksp.npy),
converted to the fastMRI layout by mpcli.data.sample.make_real_sample (geometry
assumed). The other files in sample_data/ are simulated by mpcli.data.sample
from the MNI152 template. The tutorial's licence:

BSD 3-Clause License

Copyright (c) 2019, mikgroup
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def make_real_sample(source: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``brain_real_poisson.h5`` (fastMRI layout) and ``NOTICE`` into ``out_dir``
    from the tutorial's ``[C, H, W]`` complex k-space ``.npy`` (zeros where not
    acquired). Mask = samples non-zero in any coil, stored ``[H, W]``."""
    from mpcli.io.fastmri import write_fastmri

    k = np.load(source).astype(np.complex64)  # [C, H, W]
    if k.ndim != 3:
        raise ValueError(f"{source}: expected [coils, H, W] k-space, got {k.shape}")
    mask = (np.abs(k).sum(0) > 0).astype(np.float32)  # [H, W]
    geometry = Geometry(voxel_size=REAL_VOXEL_MM, read_dir=(0.0, 1.0, 0.0), phase_dir=(-1.0, 0.0, 0.0),
                        slice_dir=(0.0, 0.0, 1.0), slice_centres=((0.0, 0.0, 0.0),))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5 = write_fastmri(out_dir / REAL_NAME, k[None] * mask, mask=mask, geometry=geometry,
                       attrs={"acquisition": "AXT1_SIGPY_TUTORIAL_POISSON"}, compression="gzip")
    notice = out_dir / "NOTICE"
    notice.write_text(NOTICE)
    return [h5, notice]


if __name__ == "__main__":
    paths = make_sample_data(sys.argv[1] if len(sys.argv) > 1 else "sample_data")
    if len(sys.argv) > 2:
        paths += make_real_sample(sys.argv[2], sys.argv[1])
    for p in paths:
        print(p, f"{p.stat().st_size / 1e6:.2f} MB")
