"""``mp`` through real files: exit codes, one-line errors, batches, resume, shards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpcli.errors import EXIT_INPUT, EXIT_OUTPUT, EXIT_PARTIAL
from mpcli.scan import file_sha256
from tests.cli_helpers import mp, nonblank_lines
from tests.synthetic import bad_input_corpus, write_synthetic_fastmri, write_synthetic_ismrmrd


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    write_synthetic_fastmri(d / "a.h5", slices=2, coils=4, h=32, w=24, acceleration=2)
    write_synthetic_ismrmrd(d / "b.h5", slices=2, coils=4, h=32, w=24, acceleration=2)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return bad_input_corpus(tmp_path_factory.mktemp("bad"))


def test_help_lists_exit_codes():
    res = mp("--help")
    assert res.exit_code == 0
    for code in ("3", "4", "5", "7"):
        assert f"{code}  " in res.stdout


def test_every_bad_input_gives_one_line_and_exit_code(corpus, tmp_path):
    for name, path in corpus.items():
        out = tmp_path / f"out_{name}"
        res = mp("reconstruct", path, "--out", out, "--method", "zero-filled")
        assert res.exit_code == EXIT_INPUT, (name, res.stdout, res.stderr)
        lines = nonblank_lines(res.stderr)
        assert len(lines) == 1 and str(path) in lines[0], (name, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout
        produced = [p for p in out.rglob("*")] if out.exists() else []
        assert produced == [], (name, produced)


def test_batch_with_bad_files_finishes_good_ones(good, corpus, tmp_path):
    inputs = tmp_path / "mixed"
    inputs.mkdir()
    for p in [good / "a.h5", good / "b.h5", corpus["truncated"], corpus["nan"], corpus["non_cartesian"]]:
        (inputs / p.name).write_bytes(p.read_bytes())
    res = mp("reconstruct", inputs, "--out", tmp_path / "out", "--method", "zero-filled", "--json")
    assert res.exit_code == EXIT_PARTIAL, res.stderr
    rows = {Path(r["input"]).name: r for r in json.loads(res.stdout)}
    assert rows["a.h5"]["status"] == rows["b.h5"]["status"] == "done"
    assert {rows[n]["status"] for n in ("truncated.h5", "nan.h5", "non_cartesian.h5")} == {"failed"}
    for stem in ("a", "b"):
        with h5py.File(tmp_path / "out" / f"{stem}.h5", "r") as f:
            assert f["reconstruction"].shape == (2, 32, 24)
    assert not (tmp_path / "out" / "truncated.h5").exists()


def test_output_inside_input_is_refused(good, tmp_path):
    res = mp("reconstruct", good, "--out", good / "recon", "--method", "zero-filled")
    assert res.exit_code == EXIT_OUTPUT
    assert len(nonblank_lines(res.stderr)) == 1
    assert not (good / "recon").exists()


def test_reconstruct_never_modifies_input(good, tmp_path):
    before = {p.name: file_sha256(p) for p in good.glob("*.h5")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in good.glob("*.h5")}
    res = mp("reconstruct", good / "a.h5", good / "b.h5", "--out", tmp_path / "o", "--method", "sense",
             "--format", "h5")
    assert res.exit_code == 0, res.stderr
    assert before == {p.name: file_sha256(p) for p in good.glob("*.h5")}
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in good.glob("*.h5")}


def test_existing_outputs_need_resume_or_overwrite(good, tmp_path):
    args = ("reconstruct", good / "a.h5", "--out", tmp_path / "o", "--method", "zero-filled")
    assert mp(*args).exit_code == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir() if p.is_file()}
    again = mp(*args)
    assert again.exit_code == EXIT_OUTPUT and "--resume" in again.stderr
    res = mp(*args, "--resume", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "skipped"
    res = mp(*args, "--overwrite", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["status"] == "done"
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir() if p.is_file()}


def test_shards_union_equals_unsharded_run(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(5):
        write_synthetic_fastmri(src / f"s{k}.h5", slices=1, coils=2, h=16, w=12, seed=k, acceleration=2)
    assert mp("reconstruct", src, "--out", tmp_path / "all", "--method", "zero-filled").exit_code == 0
    for i in range(3):
        res = mp("reconstruct", src, "--out", tmp_path / "sharded", "--method", "zero-filled",
                 "--shard", f"{i}/3")
        assert res.exit_code == 0, res.stderr

    def tree(d):
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}

    assert tree(tmp_path / "all") == tree(tmp_path / "sharded")


def _complete_or_absent(out: Path, stem: str, slices: int):
    """Each final output of ``stem`` is absent, or complete and valid."""
    import nibabel as nib

    h5 = out / f"{stem}.h5"
    if h5.exists():
        with h5py.File(h5, "r") as f:
            assert f["reconstruction"].shape[0] == slices
    nii = out / f"{stem}.nii.gz"
    if nii.exists():
        assert np.asarray(nib.load(nii).dataobj).shape[2] == slices
    dcm = out / f"{stem}_dicom"
    if dcm.exists():
        assert len(list(dcm.glob("*.dcm"))) == slices
    manifest = out / f"{stem}.mp.json"
    if manifest.exists():  # pending (names claimed, outputs may be missing) or complete (all present)
        body = json.loads(manifest.read_text())
        assert body["status"] in ("pending", "complete")
        for rel in body.get("outputs", {}):
            assert (out / rel).exists()


@pytest.mark.slow
def test_sigkill_leaves_outputs_absent_or_complete_and_resume_finishes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    n = 6
    for k in range(n):
        write_synthetic_fastmri(src / f"k{k}.h5", slices=3, coils=4, h=48, w=40, seed=k, acceleration=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mpcli", "reconstruct", str(src), "--out", str(out), "--method", "sense",
           "--format", "h5", "--format", "nifti", "--format", "dicom"]
    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(3.0, 7.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for k in range(n):
            _complete_or_absent(out, f"k{k}", 3)
    complete = [m for m in out.glob("*.mp.json") if json.loads(m.read_text())["status"] == "complete"]
    done = {m.name: m.read_bytes() for m in complete}
    finished = {p: p.read_bytes() for m in complete
                for p in [out / rel for rel in json.loads(m.read_text())["outputs"]] if p.is_file()}
    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=os.environ)
    assert res.returncode == 0, res.stderr
    for k in range(n):
        _complete_or_absent(out, f"k{k}", 3)
        assert (out / f"k{k}.mp.json").exists()
    assert all((out / name).read_bytes() == body for name, body in done.items())
    assert all(p.read_bytes() == body for p, body in finished.items())


def test_patient_identifiers_never_leak_outside_dicom(tmp_path):
    """Identifiers in an ISMRMRD header reach the DICOM series only — never logs, names,
    NIfTI headers, HDF5 outputs or manifests; with --anonymize not even DICOM."""
    from tests.synthetic import IDENTITY

    src = tmp_path / "in"
    src.mkdir()
    write_synthetic_ismrmrd(src / "scan.h5", slices=2, coils=4, h=32, w=24, acceleration=2)
    secrets = [v.encode() for k, v in IDENTITY.items() if k in ("PatientName", "PatientID") and len(v) > 3]
    assert secrets
    for anonymize in (False, True):
        out = tmp_path / f"out_{anonymize}"
        args = ["reconstruct", src, "--out", out, "--method", "zero-filled", "--format", "h5",
                "--format", "nifti", "--format", "dicom", "--json"] + (["--anonymize"] if anonymize else [])
        res = mp(*args)
        assert res.exit_code == 0, res.stderr
        logs = (res.stdout + res.stderr).encode()
        for path in out.rglob("*"):
            assert not any(s in str(path).encode() for s in secrets), path
            if path.is_file() and (path.suffix != ".dcm" or anonymize):
                data = path.read_bytes()
                if path.name.endswith(".gz"):
                    import gzip

                    data = gzip.decompress(data)
                assert not any(s in data for s in secrets), path
        assert not any(s in logs for s in secrets)
        dicoms = list(out.rglob("*.dcm"))
        assert dicoms and (anonymize or any(secrets[0] in p.read_bytes() for p in dicoms))
