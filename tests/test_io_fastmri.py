"""fastMRI reader/writer: round trips, mask detection, oversampling removal, outputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mpcli.errors import InputError
from mpcli.io.fastmri import (
    read_fastmri,
    read_reconstruction,
    write_fastmri,
    write_reconstruction,
)
from mpcli.io.ismrmrd import make_header, oversample_readout
from mpcli.io.readers import is_kspace_file, read_scans
from mpcli.physics.fft import ifft1c, ifft2c
from mpcli.scan import Geometry, center_crop, file_sha256
from tests.synthetic import (
    OBLIQUE,
    line_mask,
    synthetic_kspace,
    write_synthetic_fastmri,
)


def test_fastmri_round_trip_kspace_mask_geometry(tmp_path):
    k = synthetic_kspace(2, 4, 32, 24)
    mask = line_mask(24, 3, 4)
    ref = np.random.default_rng(0).random((2, 32, 24)).astype(np.float32)
    p = write_fastmri(tmp_path / "a.h5", k * mask, mask=mask, geometry=OBLIQUE, reference=ref,
                      attrs={"acquisition": "CORPD_FBK", "patient_id": "abc123"})
    (scan,) = read_scans(p)
    assert scan.format == "fastmri" and scan.frame == ""
    np.testing.assert_array_equal(scan.kspace.numpy(), k * mask)
    np.testing.assert_array_equal(scan.mask[0, 0, 0].numpy(), mask)
    assert scan.mask.shape == (2, 1, 32, 24)
    assert scan.geometry == OBLIQUE
    np.testing.assert_array_equal(scan.reference, ref)
    assert scan.identity == {"PatientID": "abc123"}
    assert scan.protocol["acquisition"] == "CORPD_FBK"
    assert scan.sha256 == file_sha256(p)
    assert scan.recon_size == (32, 24)
    with h5py.File(p, "r") as f:  # the real layout
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (2, 4, 32, 24)
        assert f.attrs["max"] == pytest.approx(float(ref.max()))
        assert f.attrs["norm"] == pytest.approx(float(np.linalg.norm(ref)), rel=1e-6)
        assert isinstance(f["ismrmrd_header"][()], bytes)


def test_fastmri_without_mp_geometry_gets_assumed_geometry_from_header(tmp_path):
    k = synthetic_kspace(3, 2, 16, 12)
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("ismrmrd_header", data=np.bytes_(make_header((16, 12), (16, 12), (0.5, 0.75, 3.0), 3).encode()))
    (scan,) = read_fastmri(p)
    assert scan.geometry.assumed
    assert scan.geometry.voxel_size == pytest.approx((0.5, 0.75, 3.0))
    assert len(scan.geometry.slice_centres) == 3
    assert scan.identity == {}


def test_mask_detected_from_zero_lines(tmp_path):
    p = write_synthetic_fastmri(tmp_path / "a.h5", acceleration=4, store_mask=False)
    (scan,) = read_scans(p)
    expected = line_mask(24, 4, 3)
    np.testing.assert_array_equal(scan.mask[1, 0, 5].numpy(), expected)
    assert scan.acceleration == pytest.approx(24 / expected.sum())


def test_phase_encode_padding_is_masked_out(tmp_path):
    # header: 20 of 24 columns encodable (centre 10 at column 12 → columns 2..21)
    import ismrmrd.xsd

    k = synthetic_kspace(1, 2, 16, 24)
    hdr = ismrmrd.xsd.CreateFromDocument(make_header((16, 24), (16, 24), (1.0, 1.0, 3.0), 1))
    lim = hdr.encoding[0].encodingLimits.kspace_encoding_step_1
    lim.maximum, lim.center = 19, 10
    p = write_fastmri(tmp_path / "pad.h5", k, mask=np.ones(24), header_xml=ismrmrd.xsd.ToXML(hdr))
    (scan,) = read_scans(p)
    cols = scan.mask[0, 0, 0].numpy()
    assert cols[:2].sum() == 0 and cols[22:].sum() == 0 and cols[2:22].all()
    assert (scan.kspace[..., :2] == 0).all()


def test_readout_oversampling_removal_equals_image_crop(tmp_path):
    k = synthetic_kspace(2, 3, 32, 24, seed=1)
    k2 = oversample_readout(k, 2)  # [S, C, 64, W]
    header = make_header((64, 24), (32, 24), (1.0, 1.0, 3.0), 2)
    rng = np.random.default_rng(3)  # make the oversampled FOV non-empty outside the crop
    k2 = k2 + 0.01 * (rng.standard_normal(k2.shape) + 1j * rng.standard_normal(k2.shape)).astype(np.complex64)
    p = write_fastmri(tmp_path / "os.h5", k2, header_xml=header)
    (scan,) = read_scans(p)
    assert scan.shape == (2, 3, 32, 24)
    full = ifft2c(torch.from_numpy(k2))  # [S, C, 64, W]
    expected = center_crop(full, (32, 24))
    torch.testing.assert_close(ifft2c(scan.kspace), expected, atol=1e-5, rtol=1e-4)
    # and the object itself comes back (the padding was zero in image space)
    img = ifft1c(torch.from_numpy(k), dim=-2)
    assert float((ifft1c(scan.kspace, dim=-2) - img).abs().max()) < 0.05 * float(img.abs().max())


def test_reconstruction_round_trip_and_fastmri_reference(tmp_path):
    img = np.random.default_rng(0).random((2, 8, 6)).astype(np.float32)
    attrs = {"model": "meta-prior", "steps": 5, "scale": 1.5, "config": {"lr": 1e-3, "masks": [1, 2]}}
    p = write_reconstruction(tmp_path / "out.h5", img, attrs)
    back, got = read_reconstruction(p)
    np.testing.assert_array_equal(back, img)
    assert got == attrs
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary
    ref = write_synthetic_fastmri(tmp_path / "ref.h5")
    with h5py.File(ref, "a") as f:
        f.create_dataset("reconstruction_rss", data=img)
    back, _ = read_reconstruction(ref)
    np.testing.assert_array_equal(back, img)
    with pytest.raises(InputError):
        read_reconstruction(tmp_path / "missing.h5")


def test_reader_never_modifies_input(tmp_path):
    p = write_synthetic_fastmri(tmp_path / "a.h5", acceleration=2)
    before, mtime = file_sha256(p), p.stat().st_mtime_ns
    read_scans(p)
    assert file_sha256(p) == before and p.stat().st_mtime_ns == mtime


def test_is_kspace_file(tmp_path):
    p = write_synthetic_fastmri(tmp_path / "a.h5")
    assert is_kspace_file(p)
    (tmp_path / "b.txt").write_text("x")
    assert not is_kspace_file(tmp_path / "b.txt")
    assert not is_kspace_file(tmp_path / "nothing.h5")


def test_written_default_geometry_round_trips(tmp_path):
    geo = Geometry.default(2, (0.5, 0.5, 3.0))
    p = write_synthetic_fastmri(tmp_path / "a.h5", geometry=geo)
    (scan,) = read_scans(p)
    assert scan.geometry == geo


REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.mark.skipif(not (REAL / "sigpy_brain_8ch_poisson_ksp.npy").exists(), reason="real data not in ../shared/data/real")
def test_real_poisson_kspace_mask_detected(tmp_path):
    k = np.load(REAL / "sigpy_brain_8ch_poisson_ksp.npy")[None]  # [1, 8, 230, 180] complex64
    p = write_fastmri(tmp_path / "real.h5", k, geometry=Geometry.default(1))
    (scan,) = read_scans(p)
    np.testing.assert_array_equal(scan.kspace.numpy(), k)
    acquired = (np.abs(k).max(axis=1) > 0).mean()
    assert 0.10 < acquired < 0.15  # README: 12.4 % of k-space, 2-D Poisson-disc
    assert scan.acceleration == pytest.approx(1 / acquired)
    m = scan.mask[0, 0]
    assert (m != m.amax(dim=0, keepdim=True)).any()  # 2-D pattern: columns partly acquired


# The header of a real fastMRI brain file (Siemens Aera AXFLAIR), trimmed to one coil label.
FASTMRI_BRAIN_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">
 <studyInformation><studyTime>16:35:20</studyTime></studyInformation>
 <measurementInformation><measurementID>41964_51683669_51683678_4583</measurementID>
  <patientPosition>HFS</patientPosition><protocolName>AX FLAIR_FBB</protocolName>
  <frameOfReferenceUID>1.3.12.2.1107.5.2.18.41964.1.20190707162548138.0.0.5022</frameOfReferenceUID>
 </measurementInformation>
 <acquisitionSystemInformation><systemVendor>SIEMENS</systemVendor><systemModel>Aera</systemModel>
  <systemFieldStrength_T>1.494</systemFieldStrength_T><relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth>
  <receiverChannels>16</receiverChannels>
  <coilLabel><coilNumber>29</coilNumber><coilName>HeadNeck_20:1:H13</coilName></coilLabel>
  <institutionName>TH RADIOLOGY</institutionName></acquisitionSystemInformation>
 <experimentalConditions><H1resonanceFrequency_Hz>63690796</H1resonanceFrequency_Hz></experimentalConditions>
 <encoding>
  <encodedSpace><matrixSize><x>640</x><y>264</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>440</x><y>181.4312</y><z>7.5</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>320</x><y>260</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>220</x><y>178.75</y><z>5</z></fieldOfView_mm></reconSpace>
  <trajectory>cartesian</trajectory>
  <encodingLimits>
   <kspace_encoding_step_1><minimum>0</minimum><maximum>197</maximum><center>99</center></kspace_encoding_step_1>
   <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
   <slice><minimum>0</minimum><maximum>33</maximum><center>0</center></slice>
  </encodingLimits>
  <parallelImaging><accelerationFactor><kspace_encoding_step_1>1</kspace_encoding_step_1>
   <kspace_encoding_step_2>1</kspace_encoding_step_2></accelerationFactor>
   <calibrationMode>other</calibrationMode></parallelImaging>
 </encoding>
 <sequenceParameters><TR>9000</TR><TE>86</TE><TI>2500</TI><flipAngle_deg>150</flipAngle_deg>
  <sequence_type>TurboSpinEcho</sequence_type><echo_spacing>9.6</echo_spacing></sequenceParameters>
 <userParameters><userParameterDouble><name>MaxwellCoefficient_0</name><value>0</value></userParameterDouble></userParameters>
</ismrmrdHeader>"""


def test_real_fastmri_brain_header(tmp_path):
    k = oversample_readout(synthetic_kspace(1, 2, 320, 264), 2)  # [1, 2, 640, 264]
    p = write_fastmri(tmp_path / "brain.h5", k, header_xml=FASTMRI_BRAIN_HEADER, mask=np.ones(264))
    (scan,) = read_scans(p)
    assert scan.shape == (1, 2, 320, 264)  # readout oversampling removed
    assert scan.recon_size == (320, 260)
    cols = scan.mask[0, 0, 0].numpy()  # acquired: 264//2 − 99 = 33 … 33 + 198
    assert not cols[:33].any() and cols[33:231].all() and not cols[231:].any()
    assert scan.geometry.voxel_size == pytest.approx((220 / 320, 178.75 / 260, 5.0))
    assert scan.identity["FrameOfReferenceUID"].startswith("1.3.12.2")
    assert scan.identity["InstitutionName"] == "TH RADIOLOGY"
    assert scan.identity["SeriesDescription"] == "AX FLAIR_FBB"
    assert scan.protocol["systemVendor"] == "SIEMENS" and scan.protocol["TI"] == 2500.0
