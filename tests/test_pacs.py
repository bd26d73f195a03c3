"""Sending to a PACS: destination parsing, a real Orthanc round trip, refusals, resume.

The round trip checks what a radiologist would see: every series arrives whole
(instance count, SeriesInstanceUID, ImagePositionPatient of each slice), read
back through Orthanc's REST API.
"""

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mpcli.errors import EXIT_OUTPUT, EXIT_PARTIAL, EXIT_USAGE, UsageError
from mpcli.io.pacs import PacsDestination, parse_destination
from tests.cli_helpers import mp, nonblank_lines
from tests.conftest import free_port
from tests.synthetic import write_synthetic_fastmri, write_synthetic_ismrmrd


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    write_synthetic_ismrmrd(d / "oblique.h5", slices=2, coils=4, h=32, w=24, acceleration=2, seed=11)
    write_synthetic_fastmri(d / "axial.h5", slices=3, coils=4, h=32, w=24, acceleration=2, seed=12)
    return d


def local_series(series_dir: Path) -> tuple[str, list[tuple[int, str, list[float]]]]:
    """(SeriesInstanceUID, [(InstanceNumber, SOPInstanceUID, ImagePositionPatient)]) of a written series."""
    rows, uids = [], set()
    for f in sorted(series_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        uids.add(str(ds.SeriesInstanceUID))
        rows.append((int(ds.InstanceNumber), str(ds.SOPInstanceUID), [float(v) for v in ds.ImagePositionPatient]))
    assert len(uids) == 1
    return uids.pop(), sorted(rows)


def assert_arrived_whole(orthanc, series_dir: Path) -> None:
    uid, rows = local_series(series_dir)
    remote = orthanc.series(uid)
    assert len(remote) == len(rows), f"{series_dir.name}: {len(remote)} of {len(rows)} instances in Orthanc"
    for (number, sop, ipp), tags in zip(rows, remote, strict=True):
        assert int(tags["InstanceNumber"]) == number
        assert tags["SOPInstanceUID"] == sop
        assert tags["SeriesInstanceUID"] == uid
        remote_ipp = [float(v) for v in tags["ImagePositionPatient"].split("\\")]
        np.testing.assert_allclose(remote_ipp, ipp, atol=1e-6)
        stored = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{tags['OrthancID']}/file")))
        local = pydicom.dcmread(series_dir / f"IM{number:04d}.dcm")
        assert stored.PixelData == local.PixelData
        slope = lambda d: float(d.RealWorldValueMappingSequence[0].RealWorldValueSlope)  # the image's units
        assert slope(stored) == slope(local)


# ----------------------------------------------------------------- parsing


@pytest.mark.parametrize("spec, dest", [
    ("ORTHANC@pacs.example.org:4242", PacsDestination("ORTHANC", "pacs.example.org", 4242)),
    ("PACS@127.0.0.1:104", PacsDestination("PACS", "127.0.0.1", 104)),
    ("MY PACS@localhost:11112", PacsDestination("MY PACS", "localhost", 11112)),
    ("A@B@host:1", PacsDestination("A@B", "host", 1)),
    ("PACS@[fd00::5]:104", PacsDestination("PACS", "fd00::5", 104)),
    ("P@host.example.:65535", PacsDestination("P", "host.example.", 65535)),
])
def test_destination_parses_and_prints_back(spec, dest):
    assert parse_destination(spec) == dest
    assert str(parse_destination(spec)) == spec


@pytest.mark.parametrize("spec", [
    "", "pacs.example.org:4242", "@host:104", "PACS@host", "PACS@host:", "PACS@:104", "PACS@host:0",
    "PACS@host:65536", "PACS@host:1e3", "PACS@host:-1", "PACS@host:１０４", "SEVENTEEN_CHARS_X@host:104",
    " PACS@host:104", "PACS @host:104", "PA\\CS@host:104", "PA\tCS@host:104", "PACS@ho st:104",
    "PACS@-host:104", "PACS@host_name:104", "PACS@999.1.1.1:104", "PACS@fd00::5:104", "PACS@[fd00::5]104",
    "PACS@[not-v6]:104", "PACS@host:104/x",
])
def test_malformed_destination_is_usage_error(spec):
    with pytest.raises(UsageError):
        parse_destination(spec)


def test_bad_send_options_are_usage_errors_before_anything_is_written(scans, tmp_path):
    out = tmp_path / "out"
    for extra in (["--format", "dicom", "--send", "PACS@host"], ["--send", "PACS@host:104", "--format", "nifti"],
                  ["--format", "dicom", "--send", "PACS@host:104", "--calling-aet", "A" * 17],
                  ["--format", "nifti,png"], ["--format", ","]):
        res = mp("reconstruct", scans / "axial.h5", "--out", out, "--method", "zero-filled", *extra)
        assert res.exit_code == EXIT_USAGE, (extra, res.stderr)
        assert len(nonblank_lines(res.stderr)) == 1 and "Traceback" not in res.stderr
        assert not out.exists()
    res = mp("adapt", "--kspace", scans / "axial.h5", "--send", "PACS@host:104", "--format", "dicom")
    assert res.exit_code == EXIT_USAGE and "--recon" in res.stderr


def test_format_comma_list_equals_repeated_format(scans, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert mp("reconstruct", scans / "axial.h5", "--out", a, "--method", "zero-filled",
              "--format", "dicom,nifti").exit_code == 0
    assert mp("reconstruct", scans / "axial.h5", "--out", b, "--method", "zero-filled",
              "--format", "dicom", "-f", "nifti", "--format", "dicom").exit_code == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert json.loads((a / "axial.mp.json").read_text()) == json.loads((b / "axial.mp.json").read_text())


# ----------------------------------------------------------------- a real PACS


def test_series_arrive_whole_in_orthanc(orthanc, scans, tmp_path):
    out = tmp_path / "out"
    res = mp("reconstruct", scans, "--out", out, "--method", "zero-filled", "--format", "nifti,dicom",
             "--send", orthanc.destination, "--calling-aet", "MPTEST", "--json")
    assert res.exit_code == 0, res.stderr
    for stem, slices in (("oblique", 2), ("axial", 3)):
        assert_arrived_whole(orthanc, out / f"{stem}_dicom")
        sent = json.loads((out / f"{stem}.mp.json").read_text())["sent"][orthanc.destination]
        assert len(sent) == slices
        assert sent == {f"{stem}_dicom/{f.name}": pydicom.dcmread(f).SOPInstanceUID
                        for f in (out / f"{stem}_dicom").glob("*.dcm")}


def test_refusing_pacs_keeps_outputs_and_resume_sends_them(orthanc, tmp_path):
    scan = write_synthetic_ismrmrd(tmp_path / "oblique.h5", slices=2, coils=4, h=32, w=24, acceleration=2, seed=21)
    out = tmp_path / "out"
    wrong = f"NOTTHEPACS@127.0.0.1:{orthanc.dicom_port}"  # Orthanc checks the called AE title
    res = mp("reconstruct", scan, "--out", out, "--method", "zero-filled",
             "--format", "nifti", "--format", "dicom", "--send", wrong)
    assert res.exit_code == EXIT_OUTPUT
    line, = nonblank_lines(res.stderr)
    assert "oblique.h5" in line and wrong in line and "association rejected" in line and "--resume" in line
    manifest = json.loads((out / "oblique.mp.json").read_text())
    assert manifest["status"] == "complete" and (out / "oblique.nii.gz").is_file()
    assert manifest.get("sent", {}).get(wrong, {}) == {}
    uid, _ = local_series(out / "oblique_dicom")
    assert orthanc.series(uid) == []

    res = mp("reconstruct", scan, "--out", out, "--method", "zero-filled",
             "--format", "nifti,dicom", "--resume", "--send", orthanc.destination, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)[0]["status"] == "skipped"  # not reconstructed again, only sent
    assert_arrived_whole(orthanc, out / "oblique_dicom")


def test_unreachable_pacs_fails_each_input_and_the_batch_is_partial(scans, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.h5").write_bytes((scans / "axial.h5").read_bytes())
    (folder / "good2.h5").write_bytes((scans / "oblique.h5").read_bytes())
    (folder / "broken.h5").write_bytes(b"not k-space")
    out = tmp_path / "out"
    dest = f"PACS@127.0.0.1:{free_port()}"
    res = mp("reconstruct", folder, "--out", out, "--method", "zero-filled", "--format", "dicom", "--send", dest)
    assert res.exit_code == EXIT_PARTIAL
    errors = nonblank_lines(res.stderr)
    assert len(errors) == 3
    assert any("good.h5" in e and "cannot connect" in e and "3 of 3 instances" in e for e in errors)
    # the next input does not wait for another connection attempt
    assert any("good2.h5" in e and "not tried: cannot connect" in e and "2 of 2 instances" in e for e in errors)
    assert len(list((out / "good_dicom").glob("*.dcm"))) == 3  # kept for a later --resume


# ----------------------------------------------------------------- partial acknowledgement


class FlakyPacs:
    """A pynetdicom Storage SCP that refuses the instances ``refuse`` names (status 0xA700, out of
    resources) and records every SOP Instance UID it is sent."""

    def __init__(self, refuse):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import MRImageStorage

        self.refuse, self.received, self.port = refuse, [], free_port()
        ae = AE(ae_title="FLAKY")
        ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        ds = event.dataset
        self.received.append(str(ds.SOPInstanceUID))
        return 0xA700 if self.refuse(ds) else 0x0000

    @property
    def destination(self) -> str:
        return f"FLAKY@127.0.0.1:{self.port}"


def test_resume_resends_only_unacknowledged_instances(scans, tmp_path):
    refusing = {"on": True}
    pacs = FlakyPacs(lambda ds: refusing["on"] and int(ds.InstanceNumber) == 2)
    try:
        out = tmp_path / "out"
        args = ["reconstruct", scans / "axial.h5", "--out", out, "--method", "zero-filled", "--format", "dicom",
                "--send", pacs.destination]
        res = mp(*args)
        assert res.exit_code == EXIT_OUTPUT
        assert "1 of 3 instances not acknowledged: refused with status 0xA700" in res.stderr
        rows = local_series(out / "axial_dicom")[1]
        assert pacs.received == [sop for _, sop, _ in rows]
        sent = json.loads((out / "axial.mp.json").read_text())["sent"][pacs.destination]
        assert sorted(sent.values()) == sorted(sop for n, sop, _ in rows if n != 2)

        refusing["on"] = False
        pacs.received.clear()
        res = mp(*args, "--resume")
        assert res.exit_code == 0, res.stderr
        assert pacs.received == [sop for n, sop, _ in rows if n == 2]  # only the refused one again

        pacs.received.clear()
        assert mp(*args, "--resume").exit_code == 0
        assert pacs.received == []  # everything acknowledged: nothing sent
        assert len(json.loads((out / "axial.mp.json").read_text())["sent"][pacs.destination]) == 3
    finally:
        pacs.server.shutdown()


def test_adapt_recon_sends_and_reconstruct_resume_sends_what_adapt_could_not(orthanc, tmp_path):
    """``mp adapt --recon --send``; when the PACS is down, the command its help gives
    (``mp reconstruct --method adapted --model … --resume --send …``) sends without reconstructing."""
    import torch

    from mpcli.io.weights import save_weights
    from mpcli.recon.network import ARCH_VERSION, build_network
    from tests.test_adapt import TINY

    torch.manual_seed(0)
    prior = tmp_path / "prior.safetensors"
    save_weights(prior, build_network(TINY).state_dict(), {"arch": "resunroll", "arch_version": ARCH_VERSION,
                                                           "config": TINY})
    scan = write_synthetic_fastmri(tmp_path / "knee.h5", slices=2, coils=4, h=32, w=32, acceleration=3, seed=23)
    recon, weights = tmp_path / "recon", tmp_path / "site.safetensors"
    res = mp("adapt", "--kspace", scan, "--prior", prior, "--out", weights, "--steps", "2", "--recon", recon,
             "--format", "nifti,dicom", "--send", f"PACS@127.0.0.1:{free_port()}")
    assert res.exit_code == EXIT_OUTPUT and "cannot connect" in res.stderr
    assert weights.is_file() and (recon / "knee.nii.gz").is_file()
    res = mp("reconstruct", scan, "--out", recon, "--method", "adapted", "--model", weights,
             "--format", "nifti,dicom", "--resume", "--send", orthanc.destination, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)[0]["status"] == "skipped"
    assert_arrived_whole(orthanc, recon / "knee_dicom")

    direct = tmp_path / "direct"
    scan2 = write_synthetic_fastmri(tmp_path / "knee2.h5", slices=2, coils=4, h=32, w=32, acceleration=3, seed=24)
    res = mp("adapt", "--kspace", scan2, "--prior", prior, "--out", tmp_path / "w2.safetensors", "--steps", "2",
             "--recon", direct, "--format", "dicom", "--send", orthanc.destination)
    assert res.exit_code == 0, res.stderr
    assert_arrived_whole(orthanc, direct / "knee2_dicom")
