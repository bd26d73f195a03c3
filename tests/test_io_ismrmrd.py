"""ISMRMRD reader/writer: round trips, frames, flags, prewhitening, the C++ reference tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mpcli.io.ismrmrd import (
    ACQ_IS_DUMMYSCAN_DATA,
    ACQ_IS_NAVIGATION_DATA,
    ACQ_IS_NOISE_MEASUREMENT,
    ACQ_IS_PARALLEL_CALIBRATION,
    ACQ_IS_PHASECORR_DATA,
    noise_whitener,
    write_ismrmrd,
)
from mpcli.io.readers import read_scans
from mpcli.physics.fft import ifft2c
from mpcli.scan import Geometry
from tests.synthetic import (
    IDENTITY,
    OBLIQUE,
    PROTOCOL,
    correlated_noise,
    line_mask,
    noise_mixing,
    synthetic_kspace,
    write_synthetic_ismrmrd,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
TOOLS = shutil.which("ismrmrd_generate_cartesian_shepp_logan") and shutil.which("ismrmrd_recon_cartesian_2d")
needs_tools = pytest.mark.skipif(not TOOLS, reason="ismrmrd-tools (Debian) not installed")


def _rss(k: torch.Tensor) -> np.ndarray:
    """Root-sum-of-squares image [S, H, W] of k-space [S, C, H, W]."""
    return ifft2c(k).abs().pow(2).sum(1).sqrt().numpy()


def _append(path: Path, data: np.ndarray, line: int, flag: int, slice_: int = 0) -> None:
    import ismrmrd

    with ismrmrd.Dataset(str(path), "dataset", mode="a") as d:
        acq = ismrmrd.Acquisition.from_array(data.astype(np.complex64))
        acq.set_flag(flag)
        acq.center_sample = data.shape[1] // 2
        acq.idx.kspace_encode_step_1 = line
        acq.idx.slice = slice_
        d.append_acquisition(acq)


def test_ismrmrd_round_trip_kspace_geometry_identity(tmp_path):
    p = write_synthetic_ismrmrd(tmp_path / "a.h5", acceleration=3)
    (scan,) = read_scans(p)
    k = synthetic_kspace(2, 4, 32, 24)
    m = line_mask(24, 3, 3)
    np.testing.assert_allclose(scan.kspace.numpy(), k * m, atol=1e-6)
    np.testing.assert_array_equal(scan.mask[0, 0, 0].numpy(), m)
    assert scan.format == "ismrmrd" and scan.frame == ""
    g = scan.geometry
    assert not g.assumed
    assert g.voxel_size == pytest.approx(OBLIQUE.voxel_size)
    for got, want in [(g.read_dir, OBLIQUE.read_dir), (g.phase_dir, OBLIQUE.phase_dir),
                      (g.slice_dir, OBLIQUE.slice_dir)]:
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(g.slice_centres, OBLIQUE.slice_centres, atol=1e-4)
    assert scan.identity == IDENTITY
    for key in ("systemVendor", "systemModel", "TR", "TE", "flipAngle_deg", "patientPosition"):
        assert scan.protocol[key] == PROTOCOL[key]
    assert "InstitutionName" not in scan.protocol


def test_readout_oversampling_round_trip(tmp_path):
    p = write_synthetic_ismrmrd(tmp_path / "os.h5", oversampling=2)
    with h5py.File(p, "r") as f:
        assert int(f["dataset/data"][0]["head"]["number_of_samples"]) == 64
    (scan,) = read_scans(p)
    assert scan.shape == (2, 4, 32, 24)
    np.testing.assert_allclose(scan.kspace.numpy(), synthetic_kspace(2, 4, 32, 24), atol=1e-5)


def test_repetitions_become_scans(tmp_path):
    p = write_synthetic_ismrmrd(tmp_path / "r.h5", repetitions=3, slices=1)
    scans = read_scans(p)
    assert [s.frame for s in scans] == ["rep0", "rep1", "rep2"]
    for r, s in enumerate(scans):
        np.testing.assert_allclose(s.kspace.numpy(), synthetic_kspace(1, 4, 32, 24, seed=r), atol=1e-6)
    assert scans[1].name == "r_rep1"


def test_noise_whitener_makes_covariance_identity():
    n = correlated_noise(6, 50_000, seed=1)  # [C, M]
    w = noise_whitener(n)
    white = w @ n
    cov = white @ white.conj().T / n.shape[1]
    np.testing.assert_allclose(cov, np.eye(6), atol=1e-6)


def test_prewhitening_whitens_the_kspace_noise(tmp_path):
    # imaging "k-space" that is pure coil-correlated noise, plus a noise scan
    coils = 4
    k = correlated_noise(coils, 2 * 32 * 24, seed=2).reshape(coils, 2, 32, 24).transpose(1, 0, 2, 3)
    noise = correlated_noise(coils, 4000, seed=3)
    p = write_ismrmrd(tmp_path / "n.h5", np.ascontiguousarray(k), noise=noise)
    (scan,) = read_scans(p)
    y = scan.kspace.numpy().transpose(1, 0, 2, 3).reshape(coils, -1)  # [C, N]
    cov = y @ y.conj().T / y.shape[1]
    np.testing.assert_allclose(cov, np.eye(coils), atol=0.15)
    raw = k.transpose(1, 0, 2, 3).reshape(coils, -1)
    raw_cov = raw @ raw.conj().T / raw.shape[1]
    assert np.abs(raw_cov - np.eye(coils)).max() > 0.5  # it was not white before
    assert noise_mixing(coils).shape == (coils, coils)


def test_noise_lines_are_not_kspace(tmp_path):
    # a noise acquisition indexed at line 3 of a file without line 3: line 3 stays empty
    k = synthetic_kspace(1, 2, 32, 24)
    mask = np.ones(24)
    mask[3] = 0
    p = write_ismrmrd(tmp_path / "nl.h5", k, mask=mask)
    _append(p, correlated_noise(2, 32, seed=6), 3, ACQ_IS_NOISE_MEASUREMENT)
    (scan,) = read_scans(p)
    assert not scan.mask[0, 0, :, 3].any() and (scan.kspace[..., 3] == 0).all()


def test_noise_scale_follows_dwell_time(tmp_path):
    # noise sampled with half the dwell time has twice the bandwidth, so twice the variance
    coils = 3
    k = correlated_noise(coils, 32 * 24, seed=4).reshape(coils, 1, 32, 24).transpose(1, 0, 2, 3)
    noise = correlated_noise(coils, 4000, seed=5) * np.sqrt(2)
    p = write_ismrmrd(tmp_path / "d.h5", np.ascontiguousarray(k), noise=noise, sample_time_us=5.0,
                      noise_sample_time_us=2.5)
    (scan,) = read_scans(p)
    y = scan.kspace.numpy()[0].reshape(coils, -1)
    var = np.mean(np.abs(y) ** 2)
    assert var == pytest.approx(1.0, abs=0.15)


def test_calibration_lines_are_kept(tmp_path):
    p = write_synthetic_ismrmrd(tmp_path / "c.h5", acceleration=4, slices=1)
    k = synthetic_kspace(1, 4, 32, 24)
    extra = [j for j in range(8, 16) if not line_mask(24, 4, 3)[j]]
    for j in extra:
        _append(p, k[0, :, :, j], j, ACQ_IS_PARALLEL_CALIBRATION)
    (scan,) = read_scans(p)
    cols = scan.mask[0, 0, 0].numpy()
    assert cols[extra].all()
    np.testing.assert_allclose(scan.kspace.numpy()[0, :, :, extra], k[0, :, :, extra], atol=1e-6)


def test_navigator_phasecorr_dummy_lines_are_skipped(tmp_path):
    p = write_synthetic_ismrmrd(tmp_path / "s.h5", slices=1)
    (before,) = read_scans(p)
    junk = np.full((4, 32), 1e3, np.complex64)
    for line, flag in ((0, ACQ_IS_NAVIGATION_DATA), (5, ACQ_IS_PHASECORR_DATA), (7, ACQ_IS_DUMMYSCAN_DATA)):
        _append(p, junk, line, flag)
    (after,) = read_scans(p)
    torch.testing.assert_close(after.kspace, before.kspace)
    torch.testing.assert_close(after.mask, before.mask)


def test_discard_and_centre_sample_place_partial_echo(tmp_path):
    # a line with 20 samples, centre sample 8, 2 samples discarded at each end
    import ismrmrd

    k = synthetic_kspace(1, 2, 32, 24)
    p = write_ismrmrd(tmp_path / "pe.h5", k, mask=np.eye(24)[0])  # only column 0 written
    line = np.zeros((2, 20), np.complex64)
    line[:, 2:18] = k[0, :, 16 - 8 + 2 : 16 - 8 + 18, 12]
    with ismrmrd.Dataset(str(p), "dataset", mode="a") as d:
        acq = ismrmrd.Acquisition.from_array(line)
        acq.center_sample, acq.discard_pre, acq.discard_post = 8, 2, 2
        acq.idx.kspace_encode_step_1 = 12
        d.append_acquisition(acq)
    (scan,) = read_scans(p)
    np.testing.assert_allclose(scan.kspace.numpy()[0, :, 10:26, 12], k[0, :, 10:26, 12], atol=1e-6)
    assert scan.mask[0, 0, 10:26, 12].all() and not scan.mask[0, 0, :10, 12].any()


@needs_tools
def test_shepp_logan_matches_ismrmrd_recon_cartesian_2d(tmp_path):
    """Our reader + RSS equals the reference C++ reconstruction.

    ``ismrmrd_recon_cartesian_2d FILE`` fills an [x_enc, y_enc, C] buffer from
    every acquisition (flags ignored), applies an *unnormalised* FFTW backward
    2-D FFT with fftshifts, crops the readout centrally to recon x, takes
    sqrt(Σ_c |·|²) and appends it to the same file as image series
    ``dataset/cpp`` (data ``[1, 1, 1, y, x]``: stored transposed to our [H=x, W=y]).
    Our ifft2c is orthonormal, so reference = sqrt(x_enc · y_enc) · ours.
    """
    src = tmp_path / "sl.h5"
    subprocess.run(["ismrmrd_generate_cartesian_shepp_logan", "-m", "128", "-c", "4", "-o", str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    ref_file = tmp_path / "sl_ref.h5"
    shutil.copy(src, ref_file)
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(ref_file)], check=True, capture_output=True, cwd=tmp_path)
    with h5py.File(ref_file, "r") as f:
        ref = f["dataset/cpp/data"][0, 0, 0].T  # [x, y] = [H, W]
    (scan,) = read_scans(src)
    assert scan.shape == (1, 4, 128, 128)  # oversampled 256 readout removed
    ours = _rss(scan.kspace)[0] * np.sqrt(256 * 128)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01


@needs_tools
def test_shepp_logan_accelerated_with_calibration(tmp_path):
    src = tmp_path / "acc.h5"
    subprocess.run(["ismrmrd_generate_cartesian_shepp_logan", "-m", "64", "-c", "4", "-a", "2", "-w", "16",
                    "-o", str(src)], check=True, capture_output=True, cwd=tmp_path)
    scans = read_scans(src)
    assert [s.frame for s in scans] == ["rep0", "rep1"]  # the tool interleaves R repetitions
    for r, s in enumerate(scans):
        cols = s.mask[0, 0, 0].numpy()
        centre = cols[24:40]
        outside = np.concatenate([cols[:24], cols[40:]])
        assert centre.all()  # 16 calibration lines, all kept
        assert outside.sum() == 24 and outside[(r % 2)::2].all()  # every 2nd line elsewhere
        assert s.acceleration == pytest.approx(64 / 40)


@needs_tools
def test_cpp_tool_reads_our_writer(tmp_path):
    k = synthetic_kspace(1, 4, 32, 24)
    p = write_ismrmrd(tmp_path / "ours.h5", k, oversampling=2, geometry=Geometry.default(1))
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(p)], check=True, capture_output=True, cwd=tmp_path)
    with h5py.File(p, "r") as f:
        ref = f["dataset/cpp/data"][0, 0, 0].T
    ours = _rss(torch.from_numpy(k))[0] * np.sqrt(64 * 24)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-4


@pytest.mark.skipif(not (REAL / "loraks_mprage_4ch_full.mat").exists(), reason="real data not in ../shared/data/real")
def test_real_kspace_survives_ismrmrd_round_trip(tmp_path):
    from scipy.io import loadmat

    k = loadmat(REAL / "loraks_mprage_4ch_full.mat")["kData"]  # [H, W, C] complex128
    k = np.ascontiguousarray(k.transpose(2, 0, 1)[None]).astype(np.complex64)  # [1, C, H, W]
    mask = line_mask(k.shape[-1], 4, 24)
    p = write_ismrmrd(tmp_path / "real.h5", k, mask=mask, oversampling=2, geometry=Geometry.default(1))
    (scan,) = read_scans(p)
    want = k * mask
    err = np.linalg.norm(scan.kspace.numpy() - want) / np.linalg.norm(want)
    assert err < 1e-5
    assert scan.acceleration == pytest.approx(k.shape[-1] / mask.sum())


def test_partial_echo_with_oversampling_reads_as_whole_lines(tmp_path):
    import ismrmrd

    from mpcli.io.ismrmrd import oversample_readout

    k = synthetic_kspace(1, 2, 32, 24)
    k2 = oversample_readout(k, 2)  # [1, 2, 64, 24]
    p = write_ismrmrd(tmp_path / "pe2.h5", k, mask=np.eye(24)[0], oversampling=2)
    with ismrmrd.Dataset(str(p), "dataset", mode="a") as d:  # asymmetric echo: first 24 of 64 samples missing
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k2[0, :, 24:, 12]))
        acq.center_sample = 32 - 24
        acq.idx.kspace_encode_step_1 = 12
        d.append_acquisition(acq)
    (scan,) = read_scans(p)
    assert scan.shape == (1, 2, 32, 24)
    assert scan.mask[0, 0, :, 12].all() and scan.mask[0, 0, :, 0].all() and scan.mask.sum() == 2 * 32
    # the measured echo holds nearly all the energy: close to the full line
    line = torch.from_numpy(k[0, :, :, 12])
    err = (scan.kspace[0, :, :, 12] - line).norm() / line.norm()
    assert err < 0.05
