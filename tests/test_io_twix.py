"""Siemens twix input on the real file and on variants of it written with twixtools' writer."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from mpcli.batch import collect_inputs
from mpcli.cli import app
from mpcli.errors import EXIT_INPUT, InputError
from mpcli.io.ismrmrd import noise_whitener
from mpcli.io.readers import detect_format, read_scans
from mpcli.io.twix import prs_directions
from mpcli.scan import file_sha256
from tests.test_adapt import TINY, prior_file  # noqa: F401 - fixture
from tests.twix_variants import REAL_TWIX, clone, image_lines, load, raw_kspace, set_protocol, write, write_vb

pytestmark = pytest.mark.skipif(not REAL_TWIX.exists(), reason=f"real twix file absent ({REAL_TWIX})")
runner = CliRunner()
SLICES = 3
NORMAL = np.array([6.58423005e-09, 0.0383878015, 0.9992629886])  # sSliceArray.asSlice[0].sNormal
POSITION = np.array([-2.58969998377, 53.9224264395, -53.9994745263])  # .sPosition (dSag, dCor, dTra)


def mp(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, path: Path) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == EXIT_INPUT, (res.exit_code, res.stdout, res.stderr)
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in res.stderr + res.stdout, res.stderr
    return lines[0]


def _quaternion_directions(q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phase, read, slice) from an MDH quaternion (w, x, y, z): the columns of its rotation
    matrix, which Siemens orders phase, read, slice (as siemens_to_ismrmrd reads them)."""
    w, x, y, z = (float(v) for v in q)
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return rot[:, 0], rot[:, 1], rot[:, 2]


# ----------------------------------------------------------------------------- real file


def _centred(f, x: np.ndarray, axes) -> np.ndarray:
    """Centred, orthonormal numpy transform ``f`` (np.fft.fft, ifft, fft2…) over ``axes``."""
    kw = {"axis": axes} if isinstance(axes, int) else {"axes": axes}
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=axes), norm="ortho", **kw), axes=axes)


def test_zero_filled_rss_equals_fft_of_twixtools_lines(tmp_path):
    """`mp reconstruct --method zero-filled` on the .dat = RSS of a plain 2-D FFT of the lines
    twixtools reads (the forward FFT Siemens reconstructs with), readout oversampling
    removed: image rows cropped to the central half."""
    res = mp("reconstruct", REAL_TWIX, "--out", tmp_path, "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == 0, res.stderr
    import h5py

    with h5py.File(tmp_path / "siemens_gre_2ch.h5", "r") as f:
        got = f["reconstruction"][...]  # [S, H, W]
    k = raw_kspace()  # [C, 320, 160]: samples × lines, straight from twixtools
    img = _centred(np.fft.fft2, k, (-2, -1))  # [C, 320, 160]
    h = k.shape[1] // 2
    want = np.sqrt((np.abs(img[:, h // 2 : h // 2 + h]) ** 2).sum(0))  # [160, 160]
    assert got.shape == (1, *want.shape)
    assert np.linalg.norm(got[0] - want) / np.linalg.norm(want) < 1e-5


def test_coil_images_are_the_scanners_fft_images():
    """Each coil image mp sees (inverse FFT of its k-space) is the complex conjugate of the
    scanner's forward-FFT image of the raw lines, pixel for pixel (same FFT-centre pixel),
    so the protocol's read/phase directions hold as they are."""
    (scan,) = read_scans(REAL_TWIX)
    ours = _centred(np.fft.ifft2, scan.kspace[0].numpy(), (-2, -1))  # [C, 160, 160]
    scanner = _centred(np.fft.fft2, raw_kspace(), (-2, -1))[:, 80:240]  # [C, 160, 160]
    assert np.linalg.norm(ours - np.conj(scanner)) / np.linalg.norm(scanner) < 1e-5
    assert scan.mask.min() == 1 and scan.acceleration == 1.0 and scan.format == "twix"


def test_geometry_from_protocol_matches_the_mdh_rotation():
    """Directions from sSliceArray (fGSLCalcPRS) equal those of the scanner's MDH quaternion;
    the slice centre is sPosition; voxel = FOV / matrix, thickness from the protocol."""
    import twixtools

    (scan,) = read_scans(REAL_TWIX)
    g = scan.geometry
    assert not g.assumed and g.voxel_size == pytest.approx((200 / 160, 200 / 160, 4.0))
    with contextlib.redirect_stdout(io.StringIO()):
        first = next(m for m in twixtools.read_twix(str(REAL_TWIX), verbose=False)[-1]["mdb"] if m.is_image_scan())
    phase, read, normal = _quaternion_directions(first.mdh.SliceData.Quaternion)
    np.testing.assert_allclose(g.phase_dir, phase, atol=1e-5)
    np.testing.assert_allclose(g.read_dir, read, atol=1e-5)
    np.testing.assert_allclose(g.slice_dir, normal, atol=1e-5)
    np.testing.assert_allclose(g.slice_dir, NORMAL / np.linalg.norm(NORMAL), atol=1e-9)
    np.testing.assert_allclose(g.slice_centres[0], POSITION, atol=1e-9)
    assert scan.identity["FrameOfReferenceUID"].startswith("1.3.12.2.1107.5.2.19")
    assert scan.protocol["systemVendor"] == "SIEMENS" and scan.protocol["TR"] == pytest.approx(10.0)


def test_nifti_and_dicom_land_on_the_protocol_slice(tmp_path):
    """The centre pixel of the NIfTI and DICOM outputs sits at sPosition, and their slice
    axis is the protocol's normal (NIfTI in RAS, DICOM in LPS)."""
    res = mp("reconstruct", REAL_TWIX, "--out", tmp_path, "--method", "zero-filled",
             "--format", "nifti", "--format", "dicom")
    assert res.exit_code == 0, res.stderr
    nii = nib.load(tmp_path / "siemens_gre_2ch.nii.gz")
    h, w = nii.shape[:2]
    aff = nii.affine
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(aff @ [h // 2, w // 2, 0, 1], [*(POSITION * lps_to_ras), 1], atol=1e-3)
    slice_axis = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
    np.testing.assert_allclose(slice_axis, NORMAL * lps_to_ras, atol=1e-6)
    assert int(nii.header["qform_code"]) == 1 == int(nii.header["sform_code"])

    (dcm,) = sorted((tmp_path / "siemens_gre_2ch_dicom").glob("*.dcm"))
    ds = pydicom.dcmread(dcm)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    x, y = iop[:3], iop[3:]
    np.testing.assert_allclose(np.cross(x, y), NORMAL, atol=1e-6)  # X × Y = phase × read = normal
    dr, dc = (float(v) for v in ds.PixelSpacing)
    centre = np.asarray(ds.ImagePositionPatient, float) + (ds.Columns // 2) * dc * x + (ds.Rows // 2) * dr * y
    np.testing.assert_allclose(centre, POSITION, atol=1e-3)


def test_mp_info_describes_the_twix_file():
    res = mp("info", REAL_TWIX, "--json")
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["format"] == "twix" and row["shape"] == [1, 2, 160, 160] and row["geometry"] == "from header"
    assert "xxxxxxx" not in res.stdout  # no patient data


def test_vb_file_reads_like_the_ve_original(tmp_path):
    """A VB (B17) file with the same protocol and lines gives the same scan."""
    vb = write_vb(load(), tmp_path / "vb.dat")
    assert detect_format(vb) == "twix"
    (a,), (b,) = read_scans(vb), read_scans(REAL_TWIX)
    assert torch.equal(a.kspace, b.kspace) and a.geometry == b.geometry
    cut = tmp_path / "vb_cut.dat"
    cut.write_bytes(vb.read_bytes()[:-3000])  # the last readout loses its end
    assert "truncated or corrupt twix file" in _one_line_error(mp("info", cut), cut)


# ----------------------------------------------------------------------------- variants


def _slice_protocol(offsets: list[float]) -> dict[str, object]:
    """sSliceArray entries for parallel slices at ``offsets`` mm along the normal."""
    values: dict[str, object] = {"sSliceArray.lSize": len(offsets)}
    for i, off in enumerate(offsets):
        p = POSITION + off * NORMAL
        for ax, v in zip(("dSag", "dCor", "dTra"), p):
            values[f"sSliceArray.asSlice[{i}].sPosition.{ax}"] = repr(float(v))
        for ax, v in zip(("dSag", "dCor", "dTra"), NORMAL):
            values[f"sSliceArray.asSlice[{i}].sNormal.{ax}"] = repr(float(v))
        for key, v in (("dThickness", 4.0), ("dPhaseFOV", 200.0), ("dReadoutFOV", 200.0)):
            values[f"sSliceArray.asSlice[{i}].{key}"] = v
    return values


@pytest.fixture(scope="module")
def base():
    return load()


@pytest.fixture(scope="module")
def reference():
    (scan,) = read_scans(REAL_TWIX)
    return scan.kspace[0].numpy()  # [C, H, W]


def test_slices_repetitions_and_averages(base, reference, tmp_path):
    """Sli counters acquired in interleaved order come out in anatomical order with the
    protocol's positions; each repetition is its own frame; averages are averaged."""
    offsets = {0: 4.8, 1: -4.8, 2: 0.0}  # Sli counter → position along the normal (mm)
    meas = set_protocol(base, _slice_protocol(sorted(offsets.values())))
    blocks = []
    for rep in range(2):
        for sli, off in offsets.items():
            for b in image_lines(base):
                scale = 1 + sli + 10 * rep
                for ave, a in ((0, 0.5), (1, 1.5)):  # two averages whose mean is `scale`
                    line = clone(b, data=np.asarray(b.data) * scale * a, Sli=sli, Rep=rep, Ave=ave)
                    pos = line.mdh.SliceData.SlicePos
                    pos.Sag, pos.Cor, pos.Tra = (float(v) for v in POSITION + off * NORMAL)
                    blocks.append(line)
    meas["mdb"] = blocks
    scans = read_scans(write([meas], tmp_path / "multi.dat"))
    assert [s.frame for s in scans] == ["rep0", "rep1"]
    order = sorted(offsets, key=offsets.get)  # counters in anatomical order: 1, 2, 0
    for rep, scan in enumerate(scans):
        assert scan.shape == (SLICES, 2, 160, 160)
        for j, sli in enumerate(order):
            np.testing.assert_allclose(scan.kspace[j].numpy(), reference * (1 + sli + 10 * rep), rtol=1e-4, atol=1e-9)
        centres = np.asarray(scan.geometry.slice_centres)
        np.testing.assert_allclose(centres, [POSITION + offsets[s] * NORMAL for s in order], atol=1e-6)
        assert scan.geometry.slice_spacing == pytest.approx(4.8)


@pytest.mark.parametrize("separate", [True, False])
def test_noise_lines_prewhiten_with_dwell_ratio(base, reference, tmp_path, separate):
    """Noise-adjust lines whiten the coils: in a separate measurement of a multi-measurement
    file (VD/VE) sampled at twice the dwell time, W is scaled by √(1/2); inside the imaging
    measurement (as in VB files) the dwell is the same."""
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0], [0.6 + 0.3j, 0.5]])
    template = image_lines(base)[0]
    noise_lines = []
    for i in range(64):
        n = mix @ (rng.standard_normal((2, 320)) + 1j * rng.standard_normal((2, 320)))
        noise_lines.append(clone(template, data=n, flags={"NOISEADJSCAN": True}, Lin=i))
    if separate:
        dwell = int(base["hdr"]["MeasYaps"]["sRXSPEC"]["alDwellTime"][0])
        noise = set_protocol(base, {"sRXSPEC.alDwellTime[0]": 2 * dwell})
        noise["mdb"] = noise_lines
        path = write([noise, base], tmp_path / "noise.dat")
    else:
        path = write([dict(base, mdb=noise_lines + base["mdb"])], tmp_path / "noise.dat")
    (scan,) = read_scans(path)
    samples = np.concatenate([np.asarray(b.data) for b in noise_lines], axis=1).astype(np.complex64)
    w = noise_whitener(samples) * (np.sqrt(0.5) if separate else 1.0)
    # whitened, then conjugated like every line: conj(W y) = conj(W) conj(y)
    np.testing.assert_allclose(scan.kspace[0].numpy(), np.einsum("dc,chw->dhw", np.conj(w), reference), rtol=1e-4,
                               atol=1e-6 * np.abs(reference).max())


def _undersampled(base, path: Path) -> Path:
    """R = 3 image lines plus 24 separate PAT reference lines at the centre (GRAPPA-style)."""
    meas = set_protocol(base, {"sPat.lAccelFactPE": 3, "sPat.ucPATMode": 2})
    blocks = []
    for b in image_lines(base):
        lin = int(b.mdh.Counter.Lin)
        if lin % 3 == 0:
            blocks.append(b)
        if 68 <= lin < 92:
            blocks.append(clone(b, flags={"PATREFSCAN": True}))
    meas["mdb"] = blocks
    return write([meas], path)


def test_undersampled_file_keeps_refscan_lines_as_calibration(base, reference, tmp_path):
    (scan,) = read_scans(_undersampled(base, tmp_path / "r3.dat"))
    cols = scan.mask[0, 0].amax(0).numpy() > 0
    want = np.zeros(160, bool)
    want[::3] = True
    want[68:92] = True
    np.testing.assert_array_equal(cols, want)
    np.testing.assert_allclose(scan.kspace[0].numpy()[..., cols], reference[..., cols], rtol=1e-5, atol=1e-9)
    assert not scan.kspace[0].numpy()[..., ~cols].any()
    assert scan.protocol["calibration_lines"] == 24 and scan.protocol["parallel_acceleration"] == 3


def test_partial_fourier_is_zero_filled_and_recorded(base, reference, tmp_path):
    meas = set_protocol(base, {"sKSpace.ucPhasePartialFourier": 2})  # 5/8
    meas["mdb"] = [b for b in image_lines(base) if int(b.mdh.Counter.Lin) >= 60]
    (scan,) = read_scans(write([meas], tmp_path / "pf.dat"))
    assert scan.protocol["partial_fourier_phase"] == pytest.approx(5 / 8)
    assert scan.mask[0, 0, 0, :60].sum() == 0 and scan.mask[0, 0, 0, 60:].min() == 1
    np.testing.assert_allclose(scan.kspace[0, ..., 60:].numpy(), reference[..., 60:], rtol=1e-5, atol=1e-9)


def test_echoes_are_frames(base, reference, tmp_path):
    meas = dict(base)
    meas["mdb"] = [clone(b, data=np.asarray(b.data) * (1 + eco), Eco=eco) for eco in (0, 1) for b in image_lines(base)]
    scans = read_scans(write([meas], tmp_path / "echoes.dat"))
    assert [s.frame for s in scans] == ["c0", "c1"]
    np.testing.assert_allclose(scans[1].kspace.numpy(), 2 * scans[0].kspace.numpy(), rtol=1e-5, atol=1e-9)


def test_partial_echo_is_placed_by_centre_column(tmp_path, base):
    """Lines missing their first 40 samples (CenterCol 120 of 280) land with the echo centre
    at the k-space centre; the missing samples are zero before oversampling removal."""
    meas = set_protocol(base, {"sKSpace.ucReadoutPartialFourier": 8})  # 7/8
    blocks = []
    for b in image_lines(base):
        line = clone(b, data=np.asarray(b.data)[:, 40:])
        line.mdh.CenterCol = 120
        blocks.append(line)
    meas["mdb"] = blocks
    (scan,) = read_scans(write([meas], tmp_path / "echo.dat"))
    raw = np.conj(raw_kspace())  # [C, 320, 160], conjugated as the reader does
    raw[:, :40] = 0
    img = _centred(np.fft.ifft, raw, 1)[:, 80:240]
    want = _centred(np.fft.fft, img, 1)  # [C, 160, 160]: readout oversampling removed
    np.testing.assert_allclose(scan.kspace[0].numpy(), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert scan.protocol["partial_fourier_readout"] == pytest.approx(7 / 8) and scan.mask.min() == 1


def test_files_too_large_for_memory_are_refused(monkeypatch):
    monkeypatch.setenv("MP_MEMORY_LIMIT", str(1 << 20))  # the file's k-space needs 0.8 MB (×4 while reading)
    with pytest.raises(InputError, match=r"needs .* of memory"):
        read_scans(REAL_TWIX)


def test_inplane_rotation_from_the_protocol(base, tmp_path):
    """dInPlaneRot (radians) turns phase and read about the slice normal."""
    meas = set_protocol(base, {"sSliceArray.asSlice[0].dInPlaneRot": 0.5})
    (scan,) = read_scans(write([meas], tmp_path / "rot.dat"))
    (plain,) = read_scans(REAL_TWIX)
    p0, r0 = np.asarray(plain.geometry.phase_dir), np.asarray(plain.geometry.read_dir)
    np.testing.assert_allclose(scan.geometry.phase_dir, np.cos(0.5) * p0 - np.sin(0.5) * r0, atol=1e-9)
    np.testing.assert_allclose(scan.geometry.slice_dir, plain.geometry.slice_dir, atol=1e-12)


def test_adapt_and_site_meta_train_run_on_undersampled_twix(base, prior_file, tmp_path):  # noqa: F811
    """A retrospectively undersampled copy goes through `mp adapt` (with a small prior) and
    `mp meta-train --kspace DIR` finds the .dat in a folder; the input is never modified."""
    folder = tmp_path / "archive"
    folder.mkdir()
    under = _undersampled(base, folder / "meas_r3.dat")
    (folder / "physio_log.dat").write_text("12 13 14\n")  # another instrument's .dat: not collected
    before = file_sha256(under)
    assert collect_inputs([folder]) == [under]
    res = mp("adapt", "--kspace", under, "--prior", prior_file, "--out", tmp_path / "site.safetensors",
             "--steps", "2", "--recon", tmp_path / "recon", "--format", "h5", "--format", "dicom", "--json")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "recon" / "meas_r3.h5").exists() and (tmp_path / "recon" / "meas_r3_dicom").is_dir()
    res = mp("meta-train", "--kspace", folder, "--init", prior_file, "--out", tmp_path / "meta.safetensors",
             "--steps", "1", "--first-order", "--json")
    assert res.exit_code == 0, res.stderr
    assert file_sha256(under) == before


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name, edit, reason", [
    ("radial", {"sKSpace.ucTrajectory": 2}, "non-Cartesian trajectory (radial)"),
    ("epi", {"sFastImaging.lEPIFactor": 5}, "EPI"),
    ("3d", {"sKSpace.ucDimension": 4}, "3-D acquisitions"),
])
def test_unsupported_acquisitions_are_one_line_input_errors(base, tmp_path, name, edit, reason):
    meas = set_protocol(base, edit)
    path = write([meas], tmp_path / f"{name}.dat")
    assert reason in _one_line_error(mp("info", path), path)


def test_partition_counters_are_refused_as_3d(base, tmp_path):
    meas = dict(base)
    meas["mdb"] = [clone(b, Par=1) if i % 2 else b for i, b in enumerate(image_lines(base))]
    path = write([meas], tmp_path / "par.dat")
    assert "3-D" in _one_line_error(mp("reconstruct", path, "--out", tmp_path / "o"), path)
    assert not (tmp_path / "o" / "par.h5").exists()


def _damaged(tmp_path: Path) -> dict[str, Path]:
    raw = REAL_TWIX.read_bytes()
    rng = np.random.default_rng(1)
    files = {
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[:12000],
        "garbage_after_header": raw[:796352] + rng.integers(0, 256, len(raw) - 796352, dtype=np.uint8).tobytes(),
        "random": rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes(),
        "zero_channels_vb": raw[10240:10240 + 786112] + bytes(4096),  # VB layout, all-zero block headers
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.dat"
        out[name].write_bytes(data)
    return out


DAMAGE_REASONS = {"truncated": "truncated twix file", "header_only": "truncated twix file",
                  "garbage_after_header": "corrupt twix file", "random": "nor Siemens twix",
                  "zero_channels_vb": "corrupt twix data block"}


def test_damaged_twix_files_fail_fast_with_one_line(tmp_path):
    for name, path in _damaged(tmp_path).items():
        t0 = time.perf_counter()
        line = _one_line_error(mp("info", path), path)
        assert time.perf_counter() - t0 < 20, name
        assert DAMAGE_REASONS[name] in line, (name, line)
        with pytest.raises(InputError):
            read_scans(path)


def test_prs_directions_follow_siemens_conventions():
    """Pure orientations give Siemens' default phase directions (transverse A→P,
    coronal R→L, sagittal A→P); (phase, read, normal) is right-handed and the in-plane
    rotation turns phase towards −read."""
    for normal, phase in (((0, 0, 1), (0, 1, 0)), ((0, 1, 0), (1, 0, 0)), ((1, 0, 0), (0, 1, 0))):
        p, r = prs_directions(normal)
        np.testing.assert_allclose(p, phase, atol=1e-12)
        np.testing.assert_allclose(np.cross(p, r), normal, atol=1e-12)
    n = np.array([0.2, -0.3, 0.9]) / np.linalg.norm([0.2, -0.3, 0.9])
    p0, r0 = prs_directions(n)
    p, r = prs_directions(n, 0.4)
    np.testing.assert_allclose(p, np.cos(0.4) * p0 - np.sin(0.4) * r0, atol=1e-12)
    np.testing.assert_allclose([p @ r, p @ n, r @ n, np.linalg.norm(p), np.linalg.norm(r)], [0, 0, 0, 1, 1],
                               atol=1e-12)



@pytest.mark.parametrize("command", ["info", "reconstruct", "adapt", "meta-train"])
def test_help_mentions_twix(command):
    res = mp(command, "--help")
    assert res.exit_code == 0 and "twix" in res.stdout
