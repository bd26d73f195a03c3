"""A folder where a file is expected (and the reverse) says what was found and what was expected."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, InputError, ModelError
from mpcli.evaluate import load_volume
from mpcli.io.fastmri import write_reconstruction
from mpcli.io.paths import expect_file
from mpcli.io.weights import load_weights
from tests.synthetic import write_synthetic_fastmri


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    for name in ("a.h5", "b.h5", "c.h5", "d.h5"):
        write_synthetic_fastmri(d / name, slices=1, coils=2, h=16, w=12, acceleration=2)
    return d


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "recon.h5"
    return write_reconstruction(path, np.ones((1, 16, 12), np.float32))


def mp(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stderr.strip()


def test_expect_file_names_what_is_there(scans, tmp_path):
    with pytest.raises(InputError, match=r"is a folder, expected a scan; the folder holds a.h5, b.h5, c.h5 and 1 more"):
        expect_file(scans, "a scan", suffixes=(".h5",))
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match=re.escape("is a folder, expected a scan; the folder holds 1 entries, none of them .h5")):
        expect_file(tmp_path, "a scan", suffixes=(".h5",))
    with pytest.raises(InputError, match="no such file; expected a scan"):
        expect_file(tmp_path / "missing.h5", "a scan")
    assert expect_file(scans / "a.h5", "a scan") == scans / "a.h5"


def test_library_loaders_say_folder(scans):
    with pytest.raises(InputError, match=re.escape("is a folder, expected an .h5, .nii or .nii.gz image file")):
        load_volume(scans)
    with pytest.raises(ModelError, match=re.escape("is a folder, expected a .safetensors weights file")):
        load_weights(scans)


def test_eval_with_a_folder_says_folder_not_missing(scans, image):
    code, msg = mp("eval", scans, "--ref", image)
    assert code == EXIT_INPUT and "is a folder" in msg and "no such file" not in msg
    code, msg = mp("eval", image, "--ref", scans)
    assert code == EXIT_INPUT and msg.startswith(f"mp: error: {scans}: is a folder")


def test_weights_options_with_a_folder_say_folder(scans, tmp_path):
    code, msg = mp("reconstruct", scans / "a.h5", "--out", tmp_path / "o", "--method", "adapted", "--model", scans)
    assert code == EXIT_MODEL and "is a folder" in msg and "not found" not in msg
    assert not (tmp_path / "o").exists()
    code, msg = mp("adapt", "--kspace", scans / "a.h5", "--prior", scans, "--out", tmp_path / "w.safetensors")
    assert code == EXIT_MODEL and "is a folder" in msg


def test_outputs_of_the_wrong_kind_say_so(scans, image, tmp_path):
    code, msg = mp("adapt", "--kspace", scans / "a.h5", "--out", tmp_path)
    assert code == EXIT_OUTPUT and "is a folder" in msg and str(tmp_path / "adapted.safetensors") in msg
    afile = tmp_path / "file.txt"
    afile.write_text("keep")
    code, msg = mp("reconstruct", scans / "a.h5", "--out", afile, "--method", "zero-filled")
    assert code == EXIT_OUTPUT and "is not a folder; --out must be a folder" in msg
    assert afile.read_text() == "keep"
    code, msg = mp("eval", image, "--ref", image, "--figure", tmp_path)
    assert code == EXIT_OUTPUT and "is a folder, expected a PNG file" in msg
