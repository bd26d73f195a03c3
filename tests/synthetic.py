"""Small synthetic k-space files in the real fastMRI and ISMRMRD layouts, for tests.

Import from any test as ``from tests.synthetic import ...``.

The object is a smooth complex image (Gaussian blobs, slowly varying phase)
times smooth coil maps (Gaussians centred around a circle, with a phase ramp):

    x_c(i, j) = ρ(i, j) · s_c(i, j),   k_c = fft2c(x_c)   # [S, C, H, W]

``bad_input_corpus(dir)`` writes one broken file per failure the readers must
report as ``InputError``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from mpcli.io.fastmri import write_fastmri
from mpcli.io.ismrmrd import make_header, oversample_readout, write_ismrmrd
from mpcli.physics.fft import fft2c
from mpcli.scan import Geometry

OBLIQUE = Geometry(
    voxel_size=(1.5, 2.0, 4.0),
    read_dir=(0.0, np.cos(0.3), np.sin(0.3)),
    phase_dir=(1.0, 0.0, 0.0),
    slice_dir=(0.0, -np.sin(0.3), np.cos(0.3)),
    slice_centres=((10.0, -20.0, 30.0), (10.0, -20.0 - 4.8 * np.sin(0.3), 30.0 + 4.8 * np.cos(0.3))),
)

IDENTITY = {
    "PatientName": "Test^Phantom",
    "PatientID": "MP-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
    "StudyID": "42",
    "AccessionNumber": "12345",
    "StudyDate": "20240131",
    "StudyTime": "101500",
    "ReferringPhysicianName": "Doe^Jane",
    "SeriesDescription": "t1_synthetic",
    "InstitutionName": "Synthetic Hospital",
}

PROTOCOL = {"systemVendor": "Synthetic", "systemModel": "Unit", "systemFieldStrength_T": 3.0,
            "TR": 500.0, "TE": 10.0, "flipAngle_deg": 90.0, "patientPosition": "HFS"}


def smooth_image(slices: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth complex object ``[S, H, W]``: Gaussian blobs with a slow phase."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = np.zeros((slices, h, w), np.complex64)
    for s in range(slices):
        mag = np.zeros((h, w))
        for _ in range(4):
            ci, cj = rng.uniform(-0.5, 0.5, 2)
            r = rng.uniform(0.15, 0.4)
            mag += rng.uniform(0.5, 1.0) * np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * r * r))
        phase = 0.5 * ii + 0.3 * jj * (s + 1)
        out[s] = mag * np.exp(1j * phase)
    return out


def coil_maps(coils: int, h: int, w: int) -> np.ndarray:
    """Smooth complex coil sensitivities ``[C, H, W]`` around a circle."""
    ii, jj = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = np.zeros((coils, h, w), np.complex64)
    for c in range(coils):
        a = 2 * np.pi * c / coils
        ci, cj = 0.8 * np.cos(a), 0.8 * np.sin(a)
        maps[c] = np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / 1.2) * np.exp(1j * (a + 0.4 * ii))
    return maps


def synthetic_kspace(slices: int = 2, coils: int = 4, h: int = 32, w: int = 24, seed: int = 0) -> np.ndarray:
    """Fully sampled multi-coil k-space ``[S, C, H, W]`` complex64."""
    img = smooth_image(slices, h, w, seed)[:, None] * coil_maps(coils, h, w)[None]  # [S, C, H, W]
    return fft2c(torch.from_numpy(img)).numpy().astype(np.complex64)


def line_mask(w: int, acceleration: int, centre: int) -> np.ndarray:
    """Equispaced phase-encode mask ``[W]``: every ``acceleration``-th line plus ``centre`` lines."""
    m = np.zeros(w, np.float32)
    m[::acceleration] = 1
    m[w // 2 - centre // 2 : w // 2 - centre // 2 + centre] = 1
    return m


def write_synthetic_fastmri(
    path: str | Path,
    slices: int = 2,
    coils: int = 4,
    h: int = 32,
    w: int = 24,
    seed: int = 0,
    acceleration: int | None = None,
    store_mask: bool = True,
    geometry: Geometry | None = None,
    oversampling: int = 1,
) -> Path:
    """A fastMRI file; with ``acceleration`` the k-space is undersampled (zeros)
    and the mask stored (``store_mask``) or left for the reader to detect.
    ``oversampling=2`` stores a readout-oversampled k-space (``2h`` rows; the
    header says encoded x = 2h, recon x = h)."""
    k = synthetic_kspace(slices, coils, h, w, seed)
    mask = None
    if acceleration:
        mask = line_mask(w, acceleration, max(2, w // 8))
        k = k * mask
    if oversampling > 1:
        k = oversample_readout(k, oversampling)
    geometry = geometry or Geometry.default(slices, (1.0, 1.0, 3.0))
    header = make_header((oversampling * h, w), (h, w), geometry.voxel_size, slices)
    return write_fastmri(path, k, mask=mask if store_mask else None, geometry=geometry, header_xml=header,
                         attrs={"acquisition": "CORPD_FBK"})


def write_synthetic_ismrmrd(
    path: str | Path,
    slices: int = 2,
    coils: int = 4,
    h: int = 32,
    w: int = 24,
    seed: int = 0,
    acceleration: int | None = None,
    noise: bool = False,
    oversampling: int = 1,
    repetitions: int = 1,
    geometry: Geometry | None = OBLIQUE,
) -> Path:
    """An ISMRMRD file (oblique geometry, identity and protocol in the header);
    repetition r holds the object of seed ``seed + r``. With ``noise`` a noise
    scan ``[C, 2000]`` with correlated coils is written first."""
    k = synthetic_kspace(slices, coils, h, w, seed)
    reps = [synthetic_kspace(slices, coils, h, w, seed + r) for r in range(1, repetitions)]
    mask = line_mask(w, acceleration, max(2, w // 8)) if acceleration else None
    n = correlated_noise(coils, 2000, seed) if noise else None
    if geometry is not None and len(geometry.slice_centres) != slices:
        geometry = Geometry.default(slices, geometry.voxel_size)
    return write_ismrmrd(path, k, mask=mask, geometry=geometry, identity=IDENTITY, protocol=PROTOCOL,
                         noise=n, oversampling=oversampling, repetitions=reps)


def noise_mixing(coils: int, seed: int = 0) -> np.ndarray:
    """A fixed coil-mixing matrix ``[C, C]``: noise = mixing @ white noise."""
    rng = np.random.default_rng(seed + 100)
    a = rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))
    return (np.eye(coils) + 0.4 * a).astype(np.complex64)


def correlated_noise(coils: int, samples: int, seed: int = 0, sigma: float = 0.01, mix_seed: int = 0) -> np.ndarray:
    """Complex noise ``[C, M]`` with coil covariance σ² · mix mixᴴ (mix from ``mix_seed``)."""
    rng = np.random.default_rng(seed + 200)
    white = (rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))) / np.sqrt(2)
    return (sigma * noise_mixing(coils, mix_seed) @ white).astype(np.complex64)


# ----------------------------------------------------------------------------- bad inputs


def _fastmri_raw(path: Path, kspace: np.ndarray, header: str | None = None) -> Path:
    """fastMRI layout written with plain h5py (no checks), for broken files."""
    s = kspace.shape[0] if kspace.ndim >= 3 else 1
    h, w = kspace.shape[-2:]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("ismrmrd_header", data=np.bytes_((header or make_header((h, w), (h, w), (1.0, 1.0, 3.0), s)).encode()))
    return path


def _ismrmrd_radial(path: Path) -> Path:
    """A small radial ISMRMRD file: header trajectory radial, 2-D k-space coordinates."""
    import ismrmrd
    import ismrmrd.xsd

    hdr = ismrmrd.xsd.CreateFromDocument(make_header((32, 32), (32, 32), (1.0, 1.0, 3.0)))
    hdr.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.RADIAL
    rng = np.random.default_rng(0)
    with ismrmrd.Dataset(str(path), "dataset", mode="w") as d:
        d.write_xml_header(ismrmrd.xsd.ToXML(hdr).encode())
        for spoke in range(8):
            a = np.pi * spoke / 8
            t = np.linspace(-0.5, 0.5, 32)
            traj = np.stack([t * np.cos(a), t * np.sin(a)], axis=1).astype(np.float32)  # [32, 2]
            data = (rng.standard_normal((4, 32)) + 1j * rng.standard_normal((4, 32))).astype(np.complex64)
            acq = ismrmrd.Acquisition.from_array(data, traj)
            acq.idx.kspace_encode_step_1 = spoke
            d.append_acquisition(acq)
    return path


def bad_input_corpus(directory: str | Path) -> dict[str, Path]:
    """Write one broken input per failure mode; returns name → path.

    Every file here must make ``read_scans`` raise ``InputError`` with a
    one-line message starting with the path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    good = synthetic_kspace(1, 2, 16, 12)

    out["truncated"] = write_synthetic_fastmri(d / "truncated.h5", slices=1, coils=2, h=16, w=12)
    size = out["truncated"].stat().st_size
    with open(out["truncated"], "r+b") as f:
        f.truncate(size // 2)

    out["empty"] = d / "empty.h5"
    out["empty"].write_bytes(b"")

    out["not_hdf5"] = d / "not_hdf5.h5"
    out["not_hdf5"].write_text("this is a text file, not k-space\n")

    out["wrong_keys"] = d / "wrong_keys.h5"
    with h5py.File(out["wrong_keys"], "w") as f:
        f.create_dataset("image", data=np.zeros((4, 4), np.float32))

    out["wrong_rank"] = _fastmri_raw(d / "wrong_rank.h5", good[0, 0])  # [H, W]
    out["single_coil"] = _fastmri_raw(d / "single_coil.h5", good[:, 0])  # [S, H, W]

    nan = good.copy()
    nan[0, 1, 3, 4] = np.nan
    out["nan"] = _fastmri_raw(d / "nan.h5", nan)
    inf = good.copy()
    inf[0, 0, 5, 5] = np.inf
    out["inf"] = _fastmri_raw(d / "inf.h5", inf)

    out["all_zero"] = _fastmri_raw(d / "all_zero.h5", np.zeros_like(good))
    out["header_mismatch"] = _fastmri_raw(
        d / "header_mismatch.h5", good, header=make_header((64, 12), (32, 12), (1.0, 1.0, 3.0), 1)
    )

    out["non_cartesian"] = _ismrmrd_radial(d / "non_cartesian.h5")

    zero_ismrmrd = write_ismrmrd(d / "ismrmrd_all_zero.h5", np.zeros_like(good))
    out["ismrmrd_all_zero"] = zero_ismrmrd
    out["ismrmrd_nan"] = write_ismrmrd(d / "ismrmrd_nan.h5", nan)
    # header says 8 phase-encode lines, data has 12
    mism = write_ismrmrd(d / "ismrmrd_mismatch.h5", good)
    import ismrmrd.xsd

    with h5py.File(mism, "r+") as f:
        hdr = ismrmrd.xsd.CreateFromDocument(f["dataset/xml"][0])
        hdr.encoding[0].encodedSpace.matrixSize.y = 8
        hdr.encoding[0].encodingLimits.kspace_encoding_step_1.maximum = 7
        hdr.encoding[0].encodingLimits.kspace_encoding_step_1.center = 4
        f["dataset/xml"][0] = ismrmrd.xsd.ToXML(hdr).encode()
    out["ismrmrd_mismatch"] = mism

    # 3-D: encoded z = 4 and acquisitions stepping kspace_encode_step_2
    three = write_ismrmrd(d / "three_d.h5", good)
    with h5py.File(three, "r+") as f:
        hdr = ismrmrd.xsd.CreateFromDocument(f["dataset/xml"][0])
        hdr.encoding[0].encodedSpace.matrixSize.z = 4
        f["dataset/xml"][0] = ismrmrd.xsd.ToXML(hdr).encode()
        acqs = f["dataset/data"][...]
        acqs["head"]["idx"]["kspace_encode_step_2"] = np.arange(len(acqs)) % 4
        f["dataset/data"][...] = acqs
    out["three_d"] = three
    return out


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix (degrees about x, then y, then z)."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {  # (read_dir, phase_dir) in LPS, for geometry tests
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "coronal": ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "oblique": tuple(tuple(float(v) for v in rotation(20, -15, 10)[:, c]) for c in (0, 1)),
}
