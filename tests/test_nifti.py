"""NIfTI output (header codes, affine, round trip, privacy) and the atomic-write helpers."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from mpcli.errors import OutputError
from mpcli.io.atomic import atomic_dir, atomic_file, check_output_path
from mpcli.io.nifti import read_nifti, write_nifti
from mpcli.scan import Geometry

S, H, W = 3, 12, 10


def oblique_geometry(descending: bool = False) -> Geometry:
    """Oblique, anisotropic, off-centre stack of S slices (either slice order)."""
    q, _ = np.linalg.qr(np.array([[0.9, 0.3, 0.2], [-0.2, 0.8, 0.4], [0.1, -0.5, 0.9]]))
    read, phase, normal = q[:, 0], q[:, 1], np.cross(q[:, 0], q[:, 1])
    centres = [tuple(float(v) for v in np.array([5.0, -12.0, 40.0]) + k * 2.5 * normal) for k in range(S)]
    if descending:
        centres.reverse()
    return Geometry(voxel_size=(0.6, 0.8, 2.0), read_dir=tuple(map(float, read)),
                    phase_dir=tuple(map(float, phase)), slice_dir=tuple(map(float, normal)),
                    slice_centres=tuple(centres))


def volume() -> np.ndarray:
    return np.random.default_rng(1).random((S, H, W), dtype=np.float32) * 100  # [S, H, W]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_header_codes_and_affine(descending, suffix, tmp_path):
    g = oblique_geometry(descending)
    path = write_nifti(tmp_path / f"x{suffix}", volume(), g, description="mp 0.1.0 adapt")
    img = nib.load(str(path))
    hdr = img.header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), g.voxel_to_ras((H, W)), atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    np.testing.assert_allclose(hdr.get_zooms()[:3], [0.6, 0.8, 2.5], atol=1e-5)
    assert hdr.get_xyzt_units()[0] == "mm"
    assert hdr["descrip"].item() == b"mp 0.1.0 adapt"
    assert img.shape == (H, W, S) and img.get_data_dtype() == np.float32


def test_nifti_round_trip(tmp_path):
    g = oblique_geometry()
    image = volume()
    write_nifti(tmp_path / "x.nii.gz", image, g)
    back, affine = read_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(affine, g.voxel_to_ras((H, W)), atol=1e-5)


def test_nifti_voxel_index_matches_geometry(tmp_path):
    """Voxel (i, j, k) of the stored array is image[k, i, j] and sits where Geometry says."""
    g = oblique_geometry(descending=True)
    image = np.zeros((S, H, W), np.float32)
    image[2, 7, 3] = 1.0
    write_nifti(tmp_path / "x.nii", image, g)
    img = nib.load(str(tmp_path / "x.nii"))
    idx = np.unravel_index(int(np.argmax(img.get_fdata())), img.shape)
    assert idx == (7, 3, 2)
    lps = (g.voxel_to_lps((H, W)) @ [7, 3, 2, 1])[:3]
    np.testing.assert_allclose((img.affine @ [*idx, 1])[:3], lps * [-1, -1, 1], atol=1e-5)


def test_nifti_rerun_is_byte_identical(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(tmp_path / name, volume(), oblique_geometry())
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_nifti_header_holds_no_identity(tmp_path):
    long = "mp 0.1.0 adapt " + "x" * 200
    write_nifti(tmp_path / "x.nii", volume(), oblique_geometry(), description=long)
    header = (tmp_path / "x.nii").read_bytes()[:352]
    assert nib.load(str(tmp_path / "x.nii")).header["descrip"].item() == long.encode()[:79]
    for secret in (b"Doe", b"PID", b"1970"):
        assert secret not in header


def test_nifti_rejects_bad_suffix_and_existing_without_overwrite(tmp_path):
    with pytest.raises(OutputError):
        write_nifti(tmp_path / "x.img", volume(), oblique_geometry())
    write_nifti(tmp_path / "x.nii", volume(), oblique_geometry())
    with pytest.raises(OutputError):
        write_nifti(tmp_path / "x.nii", volume(), oblique_geometry(), overwrite=False)


# ----------------------------------------------------------------- atomic writes


def test_atomic_file_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.tmp-")
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_file(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "series"
    with pytest.raises(KeyboardInterrupt), atomic_dir(final) as tmp:
        (tmp / "IM0001.dcm").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_with_overwrite(tmp_path):
    final = tmp_path / "series"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(OutputError), atomic_dir(final) as tmp:
        pass
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


def test_output_never_overwrites_or_enters_an_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    scan = data / "scan.h5"
    scan.write_bytes(b"k")
    link = tmp_path / "link.h5"
    link.symlink_to(scan)
    hard = tmp_path / "hard.h5"
    os.link(scan, hard)
    for out, inputs in [(scan, [scan]), (link, [scan]), (scan, [link]), (hard, [scan]),
                        (data / "recon.nii.gz", [data]), (data / "sub" / "x.nii", [data]),
                        (data, [scan]), (tmp_path, [data])]:
        with pytest.raises(OutputError):
            check_output_path(out, inputs)
    check_output_path(tmp_path / "out" / "scan.nii.gz", [scan, data])
    check_output_path(data / "recon.nii.gz", [scan])  # beside an input file is fine
    check_output_path(data, [scan], container=True)  # writing into the folder holding the input
