"""Property: whatever a k-space file holds, ``mp reconstruct`` fails cleanly or succeeds cleanly.

Hypothesis mutates a valid fastMRI or ISMRMRD file (header fields, dtypes,
shapes, masks, attributes, acquisition headers, sample values) and runs
``mp reconstruct`` on it through the CLI. For every mutant:

- the exit code is one of the README's table (0 or 3 for a single input: a bug
  is exit 1 and fails the test);
- stderr holds at most one line, never a traceback;
- nothing is written outside ``--out`` and the input is unchanged;
- a file already in ``--out`` that ``mp`` did not write is unchanged;
- nothing is written unless the run succeeded, and then every output is finite.

``MP_FUZZ_EXAMPLES`` sets the number of mutants (60 by default); the run is
derandomised (the same mutants every time, so CI is repeatable) unless
``MP_FUZZ_RANDOM=1``, which explores new ones (600 random mutants, several times,
ran clean before this was committed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.errors import EXIT_CODES
from tests.synthetic import write_synthetic_fastmri, write_synthetic_ismrmrd

runner = CliRunner()

HEADER_FIELDS = ("encodedSpace/matrixSize/x", "encodedSpace/matrixSize/y", "encodedSpace/matrixSize/z",
                 "reconSpace/matrixSize/x", "reconSpace/matrixSize/y",
                 "encodedSpace/fieldOfView_mm/x", "reconSpace/fieldOfView_mm/y", "reconSpace/fieldOfView_mm/z",
                 "encodingLimits/kspace_encoding_step_1/maximum", "encodingLimits/kspace_encoding_step_1/center")
ODD_NUMBERS = ("0", "-1", "NaN", "inf", "-inf", "1e9", "2000000000", "1", "3", "7.5", "1e-9", "abc", "")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    d = tmp_path_factory.mktemp("originals")
    return {"fastmri": write_synthetic_fastmri(d / "f.h5", slices=2, coils=3, h=16, w=12, acceleration=2),
            "ismrmrd": write_synthetic_ismrmrd(d / "i.h5", slices=2, coils=3, h=16, w=12, acceleration=2,
                                               noise=True)}


def _set_header_field(xml: str, field: str, value: str) -> str:
    """Replace the text of the element at ``field`` (a path of tag names) in the first encoding."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.ismrm.org/ISMRMRD}"
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:  # an earlier mutation broke it already
        return xml
    node = root.find(f"{ns}encoding")
    for tag in field.split("/"):
        node = None if node is None else node.find(f"{ns}{tag}")
    if node is not None:
        node.text = value
    return ET.tostring(root, encoding="unicode")


def _mutate_fastmri(f: h5py.File, kind: str, data) -> None:
    k = f["kspace"][...]
    if kind == "header":
        field, value = data.draw(st.sampled_from(HEADER_FIELDS)), data.draw(st.sampled_from(ODD_NUMBERS))
        xml = f["ismrmrd_header"][()].decode("utf-8", "replace")
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = np.bytes_(_set_header_field(xml, field, value).encode())
    elif kind == "header_garbage":
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = np.bytes_(data.draw(st.sampled_from([b"", b"<ismrmrdHeader>", b"\xff\xfe",
                                                                   b"<a>" * 50])))
    elif kind == "dtype":
        dtype = data.draw(st.sampled_from([np.complex128, np.float32, np.int16, np.float64, np.uint8]))
        del f["kspace"]
        f["kspace"] = (k if np.issubdtype(dtype, np.complexfloating) else k.real).astype(dtype)
    elif kind == "shape":
        new = data.draw(st.sampled_from(["drop", "add", "zero", "transpose", "tiny"]))
        del f["kspace"]
        if new == "drop":
            f["kspace"] = k[0]
        elif new == "add":
            f["kspace"] = k[None]
        elif new == "zero":
            f["kspace"] = k[..., :0]
        elif new == "transpose" and k.ndim >= 2:
            f["kspace"] = np.ascontiguousarray(np.swapaxes(k, -1, -2))
        else:
            f["kspace"] = k[..., :1, :1] if k.ndim >= 2 else k[:1]
    elif kind == "mask":
        w, h = (k.shape[-1], k.shape[-2]) if k.ndim >= 2 else (4, 4)
        choice = data.draw(st.sampled_from(["long", "2d", "wrong2d", "nan", "two", "negative", "zero", "random"]))
        mask = {"long": lambda: np.ones(w + 1), "2d": lambda: np.ones((h, w)), "wrong2d": lambda: np.ones((2, w)),
                "nan": lambda: np.full(w, np.nan), "two": lambda: np.full(w, 2.0),
                "negative": lambda: -np.ones(w), "zero": lambda: np.zeros(w),
                "random": lambda: np.random.default_rng(0).random((h, w))}[choice]()
        if "mask" in f:
            del f["mask"]
        f["mask"] = mask.astype(np.float32)
    elif kind == "attrs":
        value = data.draw(st.sampled_from(['{"voxel_size": [1, 1]}', "not json", '{"voxel_size": [NaN, 1, 1], '
                                           '"read_dir": [1,0,0], "phase_dir": [0,1,0], "slice_dir": [0,0,1], '
                                           '"slice_centres": [[0,0,0],[0,0,1]]}', "[]", "{}"]))
        f.attrs["mp_geometry"] = value
    elif kind == "values":
        how = data.draw(st.sampled_from(["huge", "nan", "zero", "tiny", "one_inf"]))
        v = {"huge": lambda: k * 1e30, "nan": lambda: k * np.nan, "zero": lambda: k * 0,
             "tiny": lambda: k * 1e-38, "one_inf": lambda: np.where(np.arange(k.size).reshape(k.shape) == 3,
                                                                   np.inf, k)}[how]()
        f["kspace"][...] = v.astype(f["kspace"].dtype)


def _mutate_ismrmrd(f: h5py.File, kind: str, data) -> None:
    if kind in ("header", "header_garbage"):
        xml = f["dataset/xml"][0]
        xml = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else str(xml)
        if kind == "header":
            field, value = data.draw(st.sampled_from(HEADER_FIELDS)), data.draw(st.sampled_from(ODD_NUMBERS))
            new = _set_header_field(xml, field, value)
        else:
            new = data.draw(st.sampled_from(["", "<ismrmrdHeader>", "<a>" * 50]))
        f["dataset/xml"][0] = new.encode()
        return
    acqs = f["dataset/data"][...]
    head = acqs["head"]
    fields = {"acq_header": ["number_of_samples", "active_channels", "center_sample", "flags", "discard_pre"],
              "idx": ["slice", "kspace_encode_step_1", "repetition", "contrast"],
              "geometry": ["read_dir", "phase_dir", "position"]}
    group = data.draw(st.sampled_from(sorted(fields)))
    name = data.draw(st.sampled_from(fields[group]))
    row = data.draw(st.integers(0, len(acqs) - 1))
    if group == "idx":
        head["idx"][name][row] = data.draw(st.sampled_from([0, 1, 7, 255, 65535]))
    elif group == "geometry":
        head[name][row] = data.draw(st.sampled_from([(0, 0, 0), (np.nan, 0, 0), (1e9, 0, 0), (3, 4, 0)]))
    else:
        info = np.iinfo(head[name].dtype)
        head[name][row] = data.draw(st.sampled_from([0, 1, 3, info.max]))
    acqs["head"] = head
    f["dataset/data"][...] = acqs


@settings(max_examples=int(os.environ.get("MP_FUZZ_EXAMPLES", "60")), deadline=None,
          derandomize=not os.environ.get("MP_FUZZ_RANDOM"), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutated_file_fails_cleanly_or_succeeds_cleanly(originals, data):
    fmt = data.draw(st.sampled_from(["fastmri", "ismrmrd"]))
    kinds = (["header", "header_garbage", "dtype", "shape", "mask", "attrs", "values"] if fmt == "fastmri"
             else ["header", "header_garbage", "acquisitions"])
    sandbox = Path(tempfile.mkdtemp(prefix="mp-fuzz-"))
    try:
        src, out = sandbox / "in" / "scan.h5", sandbox / "out"
        src.parent.mkdir()
        out.mkdir()
        shutil.copy(originals[fmt], src)
        (out / "README.txt").write_text("the user's notes\n")
        with h5py.File(src, "r+") as f:
            for kind in data.draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3)):
                (_mutate_fastmri if fmt == "fastmri" else _mutate_ismrmrd)(f, kind, data)
        before = {p: p.read_bytes() for p in sandbox.rglob("*") if p.is_file()}
        res = runner.invoke(app, ["reconstruct", str(src), "--out", str(out), "--method", "zero-filled",
                                  "--format", "h5", "--format", "nifti", "--format", "dicom"])
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code in EXIT_CODES and res.exit_code in (0, 3), (res.exit_code, res.stderr)
        assert len(lines) <= 1 and "Traceback" not in res.output, res.stderr
        after = {p for p in sandbox.rglob("*") if p.is_file()}
        assert all(p.read_bytes() == content for p, content in before.items())  # input and notes untouched
        new = sorted(p.relative_to(out).as_posix() for p in after - set(before))
        assert all((sandbox / "out") in p.parents for p in after - set(before))
        if res.exit_code != 0:
            assert new == [], new
        else:
            assert "scan.mp.json" in new  # and per frame (scan.h5, or scan_rep1.h5 …) each format
            volumes = [n for n in new if n.endswith(".h5")]
            assert volumes and len([n for n in new if n.endswith(".nii.gz")]) == len(volumes)
            for name in volumes:
                with h5py.File(out / name) as f:
                    assert np.isfinite(f["reconstruction"][...]).all()
                nifti = nib.load(out / name.replace(".h5", ".nii.gz"))
                assert np.isfinite(np.asarray(nifti.dataobj)).all()
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
