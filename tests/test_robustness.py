"""Nothing lost, nothing written outside ``--out``, every bad input a clean one-line error.

One regression test per failure the fuzz pass of issue 10 found, each through
the CLI on real files: output names, other people's files, frame collisions,
bad files in batches, FIFOs and devices, non-finite data and weights,
impossible geometry, HDF5 links, declared sizes, bounded weights metadata,
exit codes, names as data, stale temporaries, strict JSON, 2-D masks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mpcli.errors import EXIT_CODES, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_PARTIAL, EXIT_USAGE
from mpcli.io.fastmri import write_fastmri
from mpcli.io.ismrmrd import make_header
from mpcli.io.readers import read_scans
from mpcli.io.weights import SHIPPED_PRIOR, load_weights, save_weights
from mpcli.scan import Geometry, file_sha256
from tests.cli_helpers import mp, nonblank_lines
from tests.synthetic import synthetic_kspace, write_synthetic_fastmri, write_synthetic_ismrmrd

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def _errors(res) -> list[str]:
    return [line for line in nonblank_lines(res.stderr) if line.startswith("mp: ")]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` → content (files) or None (folders, links)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def _fastmri_with_header(path: Path, header: str, k=None) -> Path:
    """A fastMRI file without ``mp_geometry`` (the header alone decides the geometry)."""
    k = synthetic_kspace(2, 4, 32, 24) if k is None else k
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k.astype(np.complex64))
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
    return path


# ----------------------------------------------------------------------------- 1. names stay inside --out


def test_deep_tree_outputs_stay_inside_out_and_are_unique(tmp_path):
    deep = tmp_path / "in"
    for k in range(40):
        deep = deep / f"d{k}"
    deep.mkdir(parents=True)
    for name in ("x.h5", "x.hdf5", "a.h5"):
        write_synthetic_fastmri(deep / name, slices=1, coils=2, h=16, w=12)
    out = tmp_path / "out"
    res = mp("reconstruct", tmp_path / "in", "--out", out, "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == 0, res.output
    h5 = sorted(p.name for p in out.glob("*.h5"))
    assert len(h5) == 3 and len(set(h5)) == 3 and len(list(out.glob("*.mp.json"))) == 3
    assert all(p.parent == out for p in out.rglob("*"))
    assert not list(Path("/").glob("__*")), "outputs escaped to the filesystem root"


# ----------------------------------------------------------------------------- 2. other people's files


@pytest.fixture()
def scan_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    return write_synthetic_fastmri(d / "scan.h5", slices=2, coils=4, h=32, w=24, acceleration=2)


@pytest.mark.parametrize("as_link", [False, True])
def test_files_mp_did_not_write_are_never_replaced(scan_file, tmp_path, as_link):
    out = tmp_path / "out"
    (out / "scan_dicom").mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("scan.h5", "scan.nii.gz"):
        (mine / name).write_bytes(b"the user's own " + name.encode())
        if as_link:
            (out / name).symlink_to(mine / name)
        else:
            (out / name).write_bytes((mine / name).read_bytes())
    (out / "scan_dicom" / "IM0001").write_bytes(b"a user's DICOM")
    before, before_mine = _tree(out), _tree(mine)
    res = mp("reconstruct", scan_file, "--out", out, "--method", "zero-filled",
             "--format", "h5", "--format", "nifti", "--format", "dicom")
    assert res.exit_code == EXIT_OUTPUT, res.output
    assert "was not written by mp" in res.stderr and str(out / "scan.h5") in res.stderr
    assert _tree(out) == before and _tree(mine) == before_mine
    # --overwrite is consent: outputs replace the names (links replaced, their targets untouched)
    res = mp("reconstruct", scan_file, "--out", out, "--method", "zero-filled",
             "--format", "h5", "--format", "nifti", "--format", "dicom", "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "scan.h5").is_symlink() and h5py.is_hdf5(out / "scan.h5")
    assert _tree(mine) == before_mine


def test_mp_replaces_its_own_outputs_on_resume_after_options_change(scan_file, tmp_path):
    out = tmp_path / "out"
    assert mp("reconstruct", scan_file, "--out", out, "--method", "zero-filled", "--format", "h5").exit_code == 0
    first = (out / "scan.h5").read_bytes()
    res = mp("reconstruct", scan_file, "--out", out, "--method", "sense", "--format", "h5", "--resume")
    assert res.exit_code == 0, res.output
    assert (out / "scan.h5").read_bytes() != first


# ----------------------------------------------------------------------------- 3. frame collisions


def test_frame_outputs_never_replace_another_inputs_outputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_synthetic_ismrmrd(d / "scan.h5", slices=1, coils=2, h=16, w=12, repetitions=2)  # frames rep0, rep1
    other = write_synthetic_fastmri(d / "scan_rep1.h5", slices=1, coils=2, h=16, w=12, seed=5)
    out = tmp_path / "out"
    for extra in ([], ["--resume"], ["--overwrite"]):
        res = mp("reconstruct", d, "--out", out, "--method", "zero-filled", "--format", "h5", *extra)
        assert res.exit_code == EXIT_PARTIAL, res.output
        assert "scan_rep1.h5" in res.stderr and len(_errors(res)) == 1
        with h5py.File(out / "scan_rep1.h5") as f:
            assert f.attrs["input_sha256"] == file_sha256(other)
        assert not (out / "scan_rep0.h5").exists() and not (out / "scan.mp.json").exists()
        manifest = json.loads((out / "scan_rep1.mp.json").read_text())
        assert manifest["input_sha256"] == file_sha256(other)


# ----------------------------------------------------------------------------- 4. a bad file never stops a batch


def test_nan_field_of_view_fails_alone(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_synthetic_fastmri(d / "a.h5", slices=1, coils=2, h=16, w=12)
    header = make_header((16, 12), (16, 12), (1.0, 1.0, 3.0), 1)
    header = header.replace("<x>16.0</x>", "<x>NaN</x>")
    assert "NaN" in header
    _fastmri_with_header(d / "b.h5", header, synthetic_kspace(1, 2, 16, 12))
    write_synthetic_fastmri(d / "c.h5", slices=1, coils=2, h=16, w=12)
    out = tmp_path / "out"
    res = mp("reconstruct", d, "--out", out, "--method", "zero-filled", "--format", "h5", "--format", "nifti")
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert _errors(res) == [line for line in _errors(res) if "b.h5" in line] and len(_errors(res)) == 1
    assert "Warning" not in res.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("b")) == sorted(
        ["a.h5", "a.nii.gz", "a.mp.json", "c.h5", "c.nii.gz", "c.mp.json"])
    assert not any(p.name.startswith("b") for p in out.iterdir())


def test_memory_error_in_one_file_is_reported_and_the_batch_goes_on(tmp_path, monkeypatch):
    import mpcli.reconstruct as reconstruct

    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.h5", "b.h5"):
        write_synthetic_fastmri(d / name, slices=1, coils=2, h=16, w=12)
    real = reconstruct.reconstruct_scan

    def fails_on_b(scan, *args, **kwargs):
        if scan.source.name == "b.h5":
            raise MemoryError
        return real(scan, *args, **kwargs)

    monkeypatch.setattr(reconstruct, "reconstruct_scan", fails_on_b)
    res = mp("reconstruct", d, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert "not enough memory" in res.stderr and len(_errors(res)) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.h5", "a.mp.json"]


# ----------------------------------------------------------------------------- 5. FIFOs and devices


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_inputs_are_refused_at_once(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "scan.h5"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    cmd = [sys.executable, "-m", "mpcli", "reconstruct", str(path), "--out", str(tmp_path / "out"),
           "--method", "zero-filled"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert "not a regular file" in proc.stderr and len(nonblank_lines(proc.stderr)) == 1
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


# ----------------------------------------------------------------------------- 6. non-finite data and weights


def test_huge_kspace_gives_no_infinite_output(tmp_path):
    path = write_synthetic_fastmri(tmp_path / "big.h5", slices=1, coils=2, h=16, w=12)
    with h5py.File(path, "r+") as f:
        f["kspace"][...] = f["kspace"][...] * np.float32(1e30)
    out = tmp_path / "out"
    res = mp("reconstruct", path, "--out", out, "--method", "zero-filled", "--format", "h5",
             "--format", "nifti", "--format", "dicom")
    assert res.exit_code == EXIT_INPUT, res.output
    assert "not finite" in res.stderr and len(_errors(res)) == 1
    assert list(out.iterdir()) == []


def test_weights_with_nan_values_are_refused(tmp_path, scan_file):
    state, meta = load_weights(SHIPPED_PRIOR)
    name = next(iter(state))
    state[name] = torch.full_like(state[name], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_weights(bad, state, {k: v for k, v in meta.items() if k != "sha256"})  # a consistent hash
    res = mp("reconstruct", scan_file, "--out", tmp_path / "out", "--method", "adapted", "--model", bad)
    assert res.exit_code == EXIT_MODEL, res.output
    assert "NaN" in res.stderr and len(nonblank_lines(res.stderr)) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------- 7. impossible geometry


@pytest.mark.parametrize("field, value", [("y", "2000000000.0"), ("z", "0.0000001")])
def test_impossible_field_of_view_is_refused(tmp_path, field, value):
    header = make_header((32, 24), (32, 24), (1.0, 1.0, 3.0), 2)
    old = {"y": "<y>24.0</y>", "z": "<z>3.0</z>"}[field]
    assert old in header
    path = _fastmri_with_header(tmp_path / "geo.h5", header.replace(old, f"<{field}>{value}</{field}>"))
    res = mp("reconstruct", path, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "nifti")
    assert res.exit_code == EXIT_INPUT, res.output
    assert "implausible voxel size" in res.stderr and len(nonblank_lines(res.stderr)) == 1


def test_bad_stored_geometry_is_refused(tmp_path):
    g = Geometry(voxel_size=(1.0, 1.0, 3.0), read_dir=(1.0, 0.0, 0.0), phase_dir=(1.0, 0.0, 0.0),
                 slice_centres=((0.0, 0.0, 0.0), (0.0, 0.0, 3.0)))
    path = write_synthetic_fastmri(tmp_path / "g.h5", geometry=g)
    res = mp("info", path)
    assert res.exit_code == EXIT_INPUT and "perpendicular" in res.stderr


# ----------------------------------------------------------------------------- 8. HDF5 links escape the hash


def _link_variants(tmp_path: Path) -> dict[str, Path]:
    k = synthetic_kspace(1, 2, 16, 12).astype(np.complex64)
    header = make_header((16, 12), (16, 12), (1.0, 1.0, 3.0), 1)
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("kspace", data=k)
    raw = tmp_path / "kspace.raw"
    raw.write_bytes(k.tobytes())
    out = {}
    for kind in ("external_link", "virtual", "external_raw"):
        p = tmp_path / f"{kind}.h5"
        with h5py.File(p, "w") as f:
            if kind == "external_link":
                f["kspace"] = h5py.ExternalLink(str(target), "kspace")
            elif kind == "virtual":
                layout = h5py.VirtualLayout(shape=k.shape, dtype=k.dtype)
                layout[...] = h5py.VirtualSource(str(target), "kspace", shape=k.shape)
                f.create_virtual_dataset("kspace", layout)
            else:
                f.create_dataset("kspace", shape=k.shape, dtype=k.dtype, external=[(str(raw), 0, k.nbytes)])
            f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        out[kind] = p
    return out


def test_data_outside_the_file_is_refused(tmp_path):
    for kind, path in _link_variants(tmp_path).items():
        res = mp("reconstruct", path, "--out", tmp_path / f"out_{kind}", "--method", "zero-filled")
        assert res.exit_code == EXIT_INPUT, (kind, res.output)
        assert "stored in the file itself" in res.stderr and len(nonblank_lines(res.stderr)) == 1


# ----------------------------------------------------------------------------- 9. declared sizes


def test_declared_huge_kspace_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", shape=(2**20, 8, 128, 128), dtype=np.complex64, chunks=(1, 1, 128, 128))
        f.create_dataset("ismrmrd_header", data=np.bytes_(make_header((128, 128), (128, 128), (1, 1, 3), 1).encode()))
    res = mp("info", path)
    assert res.exit_code == EXIT_INPUT, res.output
    assert "needs" in res.stderr and "TB" in res.stderr and len(nonblank_lines(res.stderr)) == 1


def test_declared_huge_ismrmrd_matrix_is_refused(tmp_path):
    import ismrmrd.xsd

    path = write_synthetic_ismrmrd(tmp_path / "m.h5", slices=1, coils=2, h=16, w=12)
    with h5py.File(path, "r+") as f:
        hdr = ismrmrd.xsd.CreateFromDocument(f["dataset/xml"][0])
        hdr.encoding[0].encodedSpace.matrixSize.x = 65536
        hdr.encoding[0].encodedSpace.matrixSize.y = 65536
        hdr.encoding[0].encodingLimits.kspace_encoding_step_1.center = 6
        f["dataset/xml"][0] = ismrmrd.xsd.ToXML(hdr).encode()
    res = mp("reconstruct", path, "--out", tmp_path / "out", "--method", "zero-filled")
    assert res.exit_code == EXIT_INPUT, res.output
    assert "needs" in res.stderr and len(nonblank_lines(res.stderr)) == 1


def test_sparse_slice_indices_do_not_allocate_empty_slices(tmp_path):
    path = write_synthetic_ismrmrd(tmp_path / "s.h5", slices=1, coils=2, h=16, w=12)
    with h5py.File(path, "r+") as f:
        acqs = f["dataset/data"][...]
        acqs["head"]["idx"]["slice"] = 65535
        f["dataset/data"][...] = acqs
    (scan,) = read_scans(path)
    assert scan.shape[0] == 1


# ----------------------------------------------------------------------------- 10. weights metadata


@pytest.mark.parametrize("field, value", [("iters", 10**9), ("features", -1), ("features", 10**12),
                                          ("mu", float("inf")), ("depth", "5"), ("cg_iters", 0)])
def test_out_of_bounds_architecture_fields_are_refused(tmp_path, scan_file, field, value):
    state, meta = load_weights(SHIPPED_PRIOR)
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    meta["config"] = dict(meta["config"], **{field: value})
    bad = tmp_path / "bad.safetensors"
    try:
        save_weights(bad, state, meta)
    except ValueError:  # inf cannot even be written as JSON
        pytest.skip("not representable in a weights file")
    res = mp("reconstruct", scan_file, "--out", tmp_path / "out", "--method", "adapted", "--model", bad)
    assert res.exit_code == EXIT_MODEL, res.output
    assert field in res.stderr and len(nonblank_lines(res.stderr)) == 1


# ----------------------------------------------------------------------------- 11. exit codes


def test_out_that_is_a_file_is_an_output_error(scan_file, tmp_path):
    (tmp_path / "f").write_text("x")
    res = mp("reconstruct", scan_file, "--out", tmp_path / "f", "--method", "zero-filled")
    assert res.exit_code == EXIT_OUTPUT and "not a folder" in res.stderr


def test_out_that_cannot_be_created_is_an_output_error(scan_file, tmp_path):
    res = mp("reconstruct", scan_file, "--out", "/proc/mp-cannot-write-here/out", "--method", "zero-filled")
    assert res.exit_code == EXIT_OUTPUT, res.output
    assert len(nonblank_lines(res.stderr)) == 1


def test_disk_full_while_writing_is_an_output_error(tmp_path):
    import resource

    path = write_synthetic_fastmri(tmp_path / "scan.h5", slices=2, coils=2, h=160, w=128)
    out = tmp_path / "out"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    for fmt in ("h5", "dicom"):
        proc = subprocess.run([sys.executable, "-m", "mpcli", "reconstruct", str(path), "--out", str(out),
                               "--method", "zero-filled", "--format", fmt], capture_output=True, text=True,
                              preexec_fn=limit_file_size, timeout=300)
        assert proc.returncode == EXIT_OUTPUT, proc.stderr
        assert len(nonblank_lines(proc.stderr)) == 1 and str(out) in proc.stderr and "cannot write" in proc.stderr
        assert not any(out.iterdir())


def test_unreadable_file_in_a_folder_is_reported_alone(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    write_synthetic_fastmri(d / "a.h5", slices=1, coils=2, h=16, w=12)
    locked = write_synthetic_fastmri(d / "b.h5", slices=1, coils=2, h=16, w=12)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a user
        real_open = os.open

        def deny(path, *args, **kwargs):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    res = mp("reconstruct", d, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert len(_errors(res)) == 1 and "b.h5" in res.stderr and "Permission denied" in res.stderr
    assert (tmp_path / "out" / "a.h5").exists()


def test_symlink_loops_are_input_errors(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_synthetic_fastmri(d / "a.h5", slices=1, coils=2, h=16, w=12)
    (d / "loop.h5").symlink_to(d / "loop.h5")
    (d / "sub").symlink_to(d)  # a folder loop: walked once
    res = mp("reconstruct", d, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert _errors(res) == [line for line in _errors(res) if "loop.h5" in line and "link loop" in line]
    res = mp("reconstruct", d / "loop.h5", "--out", tmp_path / "out2", "--method", "zero-filled")
    assert res.exit_code == EXIT_INPUT and len(nonblank_lines(res.stderr)) == 1


@pytest.mark.parametrize("args", [["--method", "bogus"], ["--format", "png"], ["--shard", "2/2"],
                                  ["--batch", "0", "--method", "meta"]])
def test_usage_errors_exit_2(scan_file, tmp_path, args):
    res = mp("reconstruct", scan_file, "--out", tmp_path / "out", *args)
    assert res.exit_code == EXIT_USAGE, res.output
    assert not (tmp_path / "out").exists()


def test_readme_exit_code_table_is_the_code_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme


# ----------------------------------------------------------------------------- 12. names are data


def test_control_characters_in_names_cannot_forge_lines(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "evil\nmp: error: forged.h5").write_text("not k-space")
    (d / "esc\x1b[31mred.h5").write_text("not k-space")
    write_synthetic_fastmri(d / "good.h5", slices=1, coils=2, h=16, w=12)
    res = mp("reconstruct", d, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == EXIT_PARTIAL
    assert len(_errors(res)) == 2 and "\x1b" not in res.stderr + res.stdout
    assert "forged" not in "".join(line for line in nonblank_lines(res.stderr) if not line.startswith("mp: error: "))
    assert "\\n" in res.stderr and "\\x1b" in res.stderr


def test_markup_in_names_is_shown_as_is(tmp_path):
    d = tmp_path / "x["
    d.mkdir()
    write_synthetic_fastmri(d / "]y.h5", slices=1, coils=2, h=16, w=12)
    (d / "[bold]bad[.h5").write_text("not k-space")
    res = mp("reconstruct", d, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert "[bold]bad[.h5" in res.stderr and "]y.h5" in res.stdout
    res = mp("info", d / "]y.h5")
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- 13. stale temporaries


def test_stale_temporaries_of_a_killed_run_are_cleaned(scan_file, tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".scan_dicom.tmp-{dead.pid}-0123abcd"
    (stale / "sub").mkdir(parents=True)
    (stale / "IM0001").write_bytes(b"half")
    stale_file = out / f".scan.h5.tmp-{dead.pid}-89abcdef"
    stale_file.write_bytes(b"half")
    live = out / ".scan.nii.gz.tmp-1-00000000"  # pid 1 runs: another process's write in progress
    live.write_bytes(b"busy")
    other = out / ".notes.tmp-12-00000000"  # not one of this batch's names
    other.write_bytes(b"mine")
    res = mp("reconstruct", scan_file, "--out", out, "--method", "zero-filled", "--format", "h5",
             "--format", "dicom", "--resume")
    assert res.exit_code == 0, res.output
    assert not stale.exists() and not stale_file.exists() and live.exists() and other.exists()


# ----------------------------------------------------------------------------- 14. strict JSON


def test_eval_refuses_an_all_zero_reference(tmp_path):
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as f:
        f["reconstruction"] = np.zeros((1, 8, 8), np.float32)
    pred = tmp_path / "pred.h5"
    with h5py.File(pred, "w") as f:
        f["reconstruction"] = np.ones((1, 8, 8), np.float32)
    res = mp("eval", pred, "--ref", ref, "--json")
    assert res.exit_code == EXIT_INPUT and "no positive value" in res.stderr


def test_eval_json_is_strict_for_a_perfect_match(tmp_path):
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as f:
        f["reconstruction"] = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    res = mp("eval", ref, "--ref", ref, "--json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))[0]
    assert row["psnr"] is None and "identical" in row["notes"]


# ----------------------------------------------------------------------------- 15. 2-D masks


@pytest.mark.parametrize("slices", [1, 3])
@pytest.mark.parametrize("mask_ndim", [1, 2])
def test_every_writer_round_trips_through_every_reader(tmp_path, slices, mask_ndim):
    from mpcli.io.ismrmrd import write_ismrmrd

    rng = np.random.default_rng(slices)
    k = synthetic_kspace(slices, 3, 20, 16)
    mask = (rng.random(16) < 0.5) if mask_ndim == 1 else (rng.random((20, 16)) < 0.4)
    mask[..., 7:9] = True
    mask = mask.astype(np.float32)
    k_masked = k * mask
    for writer in ("fastmri", "ismrmrd"):
        path = tmp_path / f"{writer}_{slices}_{mask_ndim}.h5"
        if writer == "fastmri":
            write_fastmri(path, k_masked, mask=mask, geometry=Geometry.default(slices, (1.0, 1.0, 3.0)))
        else:
            write_ismrmrd(path, k_masked, mask=mask)
        (scan,) = read_scans(path)
        expected = np.broadcast_to(mask, (slices, 1, 20, 16))
        np.testing.assert_array_equal(scan.mask.numpy(), expected)
        np.testing.assert_allclose(scan.kspace.numpy(), k_masked, rtol=0, atol=1e-6)
        res = mp("info", path)
        assert res.exit_code == 0, res.output


def test_real_poisson_brain_with_its_2d_mask_reads_and_reconstructs(tmp_path):
    src = REAL / "sigpy_brain_8ch_poisson_ksp.npy"
    if not src.exists():
        pytest.skip(f"real data not found at {src}")
    k = np.load(src)[None]  # [1, 8, 230, 180]
    mask = (np.abs(k[0]).max(axis=0) > 0).astype(np.float32)  # [230, 180]
    path = write_fastmri(tmp_path / "brain.h5", k, mask=mask, geometry=Geometry.default(1, (1.0, 1.0, 5.0)))
    assert mp("info", path).exit_code == 0
    res = mp("reconstruct", path, "--out", tmp_path / "out", "--method", "zero-filled", "--format", "h5")
    assert res.exit_code == 0, res.output


def test_adapt_refuses_output_clashes_before_adapting(scan_file, tmp_path):
    recon = tmp_path / "recon"
    recon.mkdir()
    (recon / "scan.h5").write_bytes(b"the user's own file")
    res = mp("adapt", "--kspace", scan_file, "--recon", recon, "--format", "h5", "--steps", "1")
    assert res.exit_code == EXIT_OUTPUT, res.output
    assert "was not written by mp" in res.stderr and len(nonblank_lines(res.stderr)) == 1
    assert sorted(p.name for p in recon.iterdir()) == ["scan.h5"]  # no adapted weights either
    assert (recon / "scan.h5").read_bytes() == b"the user's own file"


@pytest.mark.parametrize("option", ["--config"])
def test_device_as_config_is_refused_at_once(tmp_path, option):
    os.mkfifo(tmp_path / "fifo.toml")
    for path in ("/dev/zero", tmp_path / "fifo.toml"):
        proc = subprocess.run([sys.executable, "-m", "mpcli", "meta-train", option, str(path), "--out",
                               str(tmp_path / "p.safetensors"), "--steps", "1"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == EXIT_INPUT and "not a regular file" in proc.stderr, proc.stderr
