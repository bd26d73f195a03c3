"""DICOM MR series: standard-clean (dciodvfy/dcentvfy), right geometry (dcm2niix), reproducible, private."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from mpcli.errors import OutputError
from mpcli.io.dicom import quantize, read_dicom_series, write_dicom_series
from mpcli.io.nifti import write_nifti
from mpcli.scan import Geometry
from tests.synthetic import DIRECTIONS

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def _tool(name: str) -> str | None:
    return shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)


DCIODVFY, DCENTVFY, DCM2NIIX = _tool("dciodvfy"), _tool("dcentvfy"), _tool("dcm2niix")
needs_dicom3tools = pytest.mark.skipif(DCIODVFY is None or DCENTVFY is None,
                                       reason="dicom3tools (dciodvfy, dcentvfy) not installed")
needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix not installed")

S, H, W = 4, 24, 20
MARKER = (5, 13, 1)  # (i, j, k): off-centre in every axis, so any flip moves it
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "PID-778899", "PatientBirthDate": "1970-03-04",
            "PatientSex": "F", "StudyDate": "2019-01-02", "StudyTime": "10:11:12",
            "StudyInstanceUID": "1.2.3.4.5.6.7.8.9", "AccessionNumber": "ACC12345",
            "StudyID": "ST42", "ReferringPhysicianName": "House^Gregory",
            "FrameOfReferenceUID": "1.2.3.4.5.6.7.8.10"}
PROTOCOL = {"TR": 2500.0, "TE": 27.0, "flipAngle_deg": 150.0, "systemFieldStrength_T": 2.89,
            "sequence_type": "TurboSpinEcho", "patientPosition": "HFS", "H1resonanceFrequency_Hz": 123_250_000}
PROVENANCE = {"method": "adapt", "model_sha256": "a" * 64, "input_sha256": "b" * 64, "version": "0.1.0"}


CASES = [(kind, desc) for kind in DIRECTIONS for desc in (False, True)]


def make_geometry(kind: str, descending: bool) -> Geometry:
    """4 slices, 0.7 × 0.9 mm in plane, 3 mm thick with a 0.5 mm gap, off-centre."""
    read, phase = DIRECTIONS[kind]
    normal = np.cross(read, phase)
    centres = [tuple(float(v) for v in np.array([10.0, -20.0, 30.0]) + (k - 1.5) * 3.5 * normal) for k in range(S)]
    if descending:
        centres.reverse()
    return Geometry(voxel_size=(0.7, 0.9, 3.0), read_dir=read, phase_dir=phase,
                    slice_dir=tuple(float(v) for v in normal), slice_centres=tuple(centres))


def marker_image() -> np.ndarray:
    """Smooth positive volume ``[S, H, W]`` with one bright voxel at ``MARKER``."""
    k, i, j = np.meshgrid(np.arange(S), np.arange(H), np.arange(W), indexing="ij")
    img = 1.0 + 0.3 * np.sin(i / 5.0) * np.cos(j / 4.0) + 0.1 * k  # [S, H, W]
    img[MARKER[2], MARKER[0], MARKER[1]] = 10.0
    return img.astype(np.float32)


def write(out: Path, geometry: Geometry, **kw) -> list[Path]:
    args = {"identity": IDENTITY, "protocol": PROTOCOL, "provenance": PROVENANCE, **kw}
    return write_dicom_series(out, marker_image(), geometry, **args)


def dciodvfy_errors(path: Path) -> list[str]:
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if "Error" in ln]


def brightest_world(nifti: Path) -> np.ndarray:
    """RAS mm position of the brightest voxel of a NIfTI file (via its own affine)."""
    img = nib.load(str(nifti))
    data = np.asarray(img.dataobj).squeeze()
    idx = np.unravel_index(int(np.argmax(data)), data.shape)
    return (img.affine @ [*idx, 1])[:3]


@needs_dicom3tools
@pytest.mark.parametrize("kind,descending", CASES)
def test_dicom_series_passes_dciodvfy_and_dcentvfy(kind, descending, tmp_path):
    files = write(tmp_path / "s", make_geometry(kind, descending))
    assert [f.name for f in files] == [f"IM{k:04d}.dcm" for k in range(1, S + 1)]
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
    res = subprocess.run([DCENTVFY, *map(str, files)], capture_output=True, text=True, timeout=60, check=False)
    bad = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert bad == []


@needs_dicom3tools
@pytest.mark.parametrize("identity,protocol", [({}, {}), (IDENTITY, {"TI": 150.0, "sequence_type": "FLAIR"})])
def test_dicom_clean_with_unknown_or_other_headers(identity, protocol, tmp_path):
    files = write(tmp_path / "s", make_geometry("axial", False), identity=identity, protocol=protocol)
    assert dciodvfy_errors(files[0]) == []


@needs_dcm2niix
@pytest.mark.parametrize("kind,descending", CASES)
def test_dcm2niix_puts_marker_where_our_nifti_does(kind, descending, tmp_path):
    geometry = make_geometry(kind, descending)
    write(tmp_path / "dcm", geometry)
    ours = write_nifti(tmp_path / "ours.nii", marker_image(), geometry)
    conv = tmp_path / "conv"
    conv.mkdir()
    res = subprocess.run([DCM2NIIX, "-z", "n", "-o", str(conv), "-f", "out", str(tmp_path / "dcm")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    (theirs,) = sorted(conv.glob("out*.nii"))
    assert nib.load(str(theirs)).shape[:3] in {(W, H, S), (H, W, S)}
    assert np.linalg.norm(brightest_world(theirs) - brightest_world(ours)) < 0.01


@pytest.mark.parametrize("kind,descending", [("oblique", True), ("sagittal", False)])
def test_dicom_geometry_attributes(kind, descending, tmp_path):
    geometry = make_geometry(kind, descending)
    files = write(tmp_path / "s", geometry)
    aff = geometry.voxel_to_lps((H, W))
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert (ds.Rows, ds.Columns, ds.InstanceNumber) == (H, W, k + 1)
        np.testing.assert_allclose(ds.ImagePositionPatient, (aff @ [0, 0, k, 1])[:3], atol=1e-6)
        np.testing.assert_allclose(ds.ImageOrientationPatient, [*geometry.phase_dir, *geometry.read_dir], atol=1e-9)
        np.testing.assert_allclose(ds.PixelSpacing, [0.7, 0.9])
        assert float(ds.SliceThickness) == 3.0 and float(ds.SpacingBetweenSlices) == pytest.approx(3.5)
    locations = [float(pydicom.dcmread(f).SliceLocation) for f in files]
    assert np.allclose(np.abs(np.diff(locations)), 3.5)


def test_dicom_pixels_round_trip_within_half_a_step(tmp_path):
    geometry = make_geometry("axial", False)
    write(tmp_path / "s", geometry)
    image, _ = read_dicom_series(tmp_path / "s")
    ds = pydicom.dcmread(tmp_path / "s" / "IM0001.dcm")
    slope = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
    assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds  # a magnitude: displayed = stored
    assert np.abs(image - marker_image()).max() <= slope / 2 + 1e-6
    assert ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"


@pytest.mark.parametrize("values", [np.zeros((2, 3, 3)), np.linspace(-3, 7, 18).reshape(2, 3, 3)])
def test_quantize_uses_range_and_keeps_values(values):
    stored, slope, intercept = quantize(values.astype(np.float32))
    assert stored.dtype == np.uint16
    assert np.abs(stored * slope + intercept - values).max() <= slope / 2 + 1e-9
    if np.ptp(values) > 0:
        assert stored.max() >= 65530


def test_dicom_mr_and_provenance_attributes(tmp_path):
    ds = pydicom.dcmread(write(tmp_path / "s", make_geometry("axial", False))[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert ds.ScanningSequence == "SE" and ds.MRAcquisitionType == "2D"
    assert float(ds.RepetitionTime) == 2500.0 and float(ds.EchoTime) == 27.0
    assert float(ds.ImagingFrequency) == pytest.approx(123.25)
    assert "adapt" in ds.DerivationDescription and "a" * 64 in ds.DerivationDescription
    assert "a" * 64 in list(ds.SoftwareVersions) and "mp 0.1.0" in list(ds.SoftwareVersions)
    assert ds.StudyDate == "20190102" and ds.ContentDate == "20190102" and ds.ContentTime == "101112"
    assert ds.StudyInstanceUID == IDENTITY["StudyInstanceUID"]
    assert ds.FrameOfReferenceUID == IDENTITY["FrameOfReferenceUID"]


def test_unknown_identity_is_present_but_empty(tmp_path):
    ds = pydicom.dcmread(write(tmp_path / "s", make_geometry("axial", False), identity={}, protocol={})[0])
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyID", "ReferringPhysicianName", "RepetitionTime", "EchoTime"):
        assert key in ds and ds[key].value in ("", None), key
    assert ds.ScanningSequence == "RM" and ds.StudyInstanceUID  # generated, deterministic


def test_dicom_rerun_is_byte_identical(tmp_path):
    a = write(tmp_path / "a", make_geometry("oblique", True))
    b = write(tmp_path / "b", make_geometry("oblique", True))
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]


def test_different_pixels_get_different_series_uids(tmp_path):
    g = make_geometry("axial", False)
    write(tmp_path / "a", g)
    write_dicom_series(tmp_path / "b", marker_image() * 2 + 1, g, identity=IDENTITY, protocol=PROTOCOL,
                       provenance=PROVENANCE)
    da, db = (pydicom.dcmread(tmp_path / d / "IM0001.dcm") for d in ("a", "b"))
    assert da.SeriesInstanceUID != db.SeriesInstanceUID and da.SOPInstanceUID != db.SOPInstanceUID
    assert da.StudyInstanceUID == db.StudyInstanceUID


@needs_dicom3tools
def test_anonymize_blanks_identifiers(tmp_path):
    files = write(tmp_path / "s", make_geometry("coronal", False), anonymize=True)
    ds = pydicom.dcmread(files[0])
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "ReferringPhysicianName", "StudyDate"):
        assert ds[key].value in ("", None), key
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.StudyInstanceUID != IDENTITY["StudyInstanceUID"]
    assert ds.FrameOfReferenceUID != IDENTITY["FrameOfReferenceUID"]
    blob = b"".join(f.read_bytes() for f in files)
    for value in ("Doe", "PID-778899", "19700304", "ACC12345", "House", "1.2.3.4.5.6.7.8.9"):
        assert value.encode() not in blob, value
    assert dciodvfy_errors(files[0]) == []
    again = write(tmp_path / "t", make_geometry("coronal", False), anonymize=True)
    assert pydicom.dcmread(again[0]).StudyInstanceUID == ds.StudyInstanceUID


def test_series_written_all_or_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    save = Dataset.save_as

    def failing(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return save(self, *args, **kw)

    monkeypatch.setattr(Dataset, "save_as", failing)
    with pytest.raises(OSError):
        write(tmp_path / "s", make_geometry("axial", False))
    assert list(tmp_path.iterdir()) == []


def test_existing_series_replaced_only_with_overwrite(tmp_path):
    g = make_geometry("axial", False)
    out = tmp_path / "s"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputError):
        write(out, g, overwrite=False)
    assert (out / "old.txt").exists()
    write(out, g, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [f"IM{k:04d}.dcm" for k in range(1, S + 1)]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary or old folder left


@needs_dicom3tools
def test_assumed_geometry_is_flagged_and_single_slice_is_clean(tmp_path):
    image = marker_image()[:1]  # [1, H, W]
    files = write_dicom_series(tmp_path / "s", image, Geometry.default(1, (0.5, 0.5, 4.0)), identity={},
                               protocol={}, provenance=PROVENANCE)
    ds = pydicom.dcmread(files[0])
    assert "assumed" in ds.ImageComments and "SpacingBetweenSlices" not in ds
    assert dciodvfy_errors(files[0]) == []


def _viewer_render(path: Path) -> np.ndarray:
    """8-bit grey levels as a viewer draws a slice: stored → Modality LUT → VOI (window) → display.

    pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` implement PS3.3's
    pipeline (C.11.1 and C.11.2) independently of our writer.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # [H, W] in 0 .. 2^BitsStored - 1
    return np.rint(np.asarray(shown, np.float64) / (2 ** ds.BitsStored - 1) * 255)


def test_dicom_window_opens_the_sample_brain_in_grey_levels(tmp_path):
    """The sample's brain, in the small arbitrary units of a reconstruction (max ≈ 0.55), opens with
    black background, tissue spread over the grey levels and almost nothing saturated."""
    import h5py

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "brain_fastmri.h5"
    with h5py.File(sample, "r") as f:
        ref = f["reconstruction_rss"][()].astype(np.float32)  # [S, H, W]
    ref = ref / ref.max() * 0.55
    s = ref.shape[0]
    geometry = Geometry.default(s, (1.8, 1.8, 5.0))
    files = write_dicom_series(tmp_path / "s", ref, geometry, identity={}, protocol={}, provenance=PROVENANCE)
    dss = [pydicom.dcmread(f) for f in files]
    centres = {float(d.WindowCenter) for d in dss}
    widths = {float(d.WindowWidth) for d in dss}
    assert len(centres) == len(widths) == 1  # one window for the series
    width = widths.pop()
    assert width >= 1 and dss[0].VOILUTFunction == "LINEAR"
    shown = np.stack([_viewer_render(f) for f in files])  # [S, H, W] 0..255
    tissue = ref > 0.15 * ref.max()
    background = ref < 0.01 * ref.max()
    assert np.median(shown[background]) <= 3
    assert 60 <= np.median(shown[tissue]) <= 220
    assert np.ptp(np.percentile(shown[tissue], [5, 95])) >= 80  # contrast inside the brain
    assert (shown == 255).mean() <= 0.006  # only the brightest ~0.5 % are white
    # monotone in the image values: the rendering is a windowed linear map, not a re-ordering
    order = np.argsort(ref.ravel())
    assert np.all(np.diff(shown.ravel()[order]) >= -1)


def _read_pgm(path: Path) -> np.ndarray:
    """An 8-bit binary PGM (P5) as ``[H, W]``."""
    magic, w, h, maxval, data = path.read_bytes().split(maxsplit=4)
    assert magic == b"P5" and int(maxval) == 255
    return np.frombuffer(data[-int(w) * int(h):], np.uint8).reshape(int(h), int(w)).astype(np.float64)


@pytest.mark.skipif(_tool("dcm2pnm") is None, reason="DCMTK's dcm2pnm not installed (Debian package dcmtk)")
def test_dcmtk_renders_the_window_as_pydicom_does(tmp_path):
    """DCMTK's renderer (what DCMTK-based viewers draw), told to use the file's first window
    (+Wi 1), gives the same grey levels as the standard's LUT pipeline, within one level."""
    image = marker_image()
    image[:, :4, :] = 0.0  # background: the first 4 rows
    files = write_dicom_series(tmp_path / "s", image, make_geometry("axial", False), identity={}, protocol={},
                               provenance=PROVENANCE)
    for f in files[:2]:
        pgm = tmp_path / f"{f.stem}.pgm"
        subprocess.run([_tool("dcm2pnm"), "+Wi", "1", str(f), str(pgm)], check=True, capture_output=True)
        dcmtk = _read_pgm(pgm)
        assert np.abs(dcmtk - _viewer_render(f)).max() <= 1
        assert dcmtk[:4].max() == 0 and np.ptp(dcmtk[4:]) > 80  # black background, tissue in greys


def test_window_tags_are_sensible_and_clean(tmp_path):
    files = write(tmp_path / "s", make_geometry("axial", False))
    ds = pydicom.dcmread(files[0])
    image, _ = read_dicom_series(tmp_path / "s")  # reconstruction units
    slope = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
    lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
    hi = lo + float(ds.WindowWidth) - 1
    assert lo * slope == pytest.approx(image.min(), abs=slope)
    assert hi * slope == pytest.approx(np.percentile(image, 99.5), rel=1e-3)  # the marker (10.0) is above
    assert hi * slope < image.max()
    if _tool("dciodvfy"):
        assert dciodvfy_errors(files[0]) == []


def test_signed_volume_gets_an_integer_rescale_and_window(tmp_path):
    values = np.linspace(-3, 7, S * H * W, dtype=np.float32).reshape(S, H, W)
    geometry = make_geometry("axial", False)
    files = write_dicom_series(tmp_path / "s", values, geometry, identity={}, protocol={}, provenance=PROVENANCE)
    ds = pydicom.dcmread(files[0])
    slope = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == round(-3 / slope)
    lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
    assert lo * slope == pytest.approx(-3, abs=2 * slope)
    image, _ = read_dicom_series(tmp_path / "s")
    assert np.abs(image - values).max() <= slope / 2 + 1e-6
