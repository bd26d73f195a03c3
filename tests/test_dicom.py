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
    assert slope == float(ds.RescaleSlope) and float(ds.RescaleIntercept) == 0.0
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
