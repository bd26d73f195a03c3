"""A folder of NIfTI/DICOM images as a training source (mpcli/data/folders.py, mp meta-train --data)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.data.folders import ImageFolderSource, find_images
from mpcli.data.sources import get_source
from mpcli.errors import InputError


def _mr_small():
    import pydicom.data

    return pydicom.data.get_testdata_file("MR_small.dcm")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "archive"
    (d / "sub").mkdir(parents=True)
    vol = np.zeros((24, 28, 20), np.float32)
    vol[4:20, 5:23, 3:17] = np.random.default_rng(0).uniform(0.5, 1.0, (16, 18, 14))
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), d / "head.nii.gz")
    shutil.copy(_mr_small(), d / "sub" / "slice.dcm")
    shutil.copy(_mr_small(), d / "sub" / "IM0001")  # DICOM without an extension (DICM preamble)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_finds_nifti_and_dicom(folder):
    names = [p.name for p in find_images(folder)]
    assert names == ["head.nii.gz", "IM0001", "slice.dcm"]


def test_folder_images_shape_range_and_seed(folder):
    src = get_source(f"images:{folder}")
    assert isinstance(src, ImageFolderSource)
    for plane, size in (("axial", (32, 32)), ("coronal", (24, 40))):
        imgs = [next(src.images(plane, size, np.random.default_rng(s))) for s in (1, 1, 2)]
        for img in imgs:
            assert img.shape == size and img.dtype == np.float32
            assert img.min() >= 0 and abs(float(img.max()) - 1) < 1e-6
        assert np.array_equal(imgs[0], imgs[1])


def test_folder_refuses_held_out_files(folder):
    shutil.copy(_mr_small(), folder / "MR2_J2KI.dcm")
    with pytest.raises(ValueError, match="independent evaluation"):
        ImageFolderSource(folder)


def test_empty_folder_and_bad_file_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no NIfTI"):
        ImageFolderSource(tmp_path)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    src = ImageFolderSource(tmp_path)
    with pytest.raises(InputError, match=r"broken\.nii\.gz"):
        next(src.images("axial", (16, 16), np.random.default_rng(0)))


TINY = """
steps = 1
tasks_per_step = 1
batch_size = 2
inner_steps = 1
val_every = 0
checkpoint_every = 0
[network]
arch = "modl"
iters = 1
features = 2
levels = 2
denoiser = "unet"
cg_iters = 2
[tasks]
sources = ["shepp_logan"]
sizes = [[24, 24]]
n_coils = [2, 3]
planes = ["axial"]
"""


def test_meta_train_data_takes_an_image_folder(folder, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "p.safetensors"
    res = CliRunner().invoke(app, ["meta-train", "--config", str(cfg), "--data", str(folder), "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.stderr
    from mpcli.io.weights import load_weights

    _, meta = load_weights(out)
    assert f"images:{folder}" in meta["data"]["family"]["sources"]
    assert json.loads(res.stdout)["steps"] == 1


def test_meta_train_data_with_nothing_usable_fails_before_training(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["meta-train", "--data", str(tmp_path / "empty"), "--out",
                                   str(tmp_path / "p.safetensors")])
    assert res.exit_code == 3 and "no NIfTI" in res.stderr
    assert not (tmp_path / "p.safetensors").exists()
