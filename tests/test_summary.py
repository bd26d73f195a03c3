"""Summary tables say where the outputs are, by name, not only how many."""

import shutil

from typer.testing import CliRunner

from mpcli.cli import app
from tests.synthetic import write_synthetic_fastmri


def test_reconstruct_summary_lists_each_output_and_the_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_synthetic_fastmri(src / "a.h5", slices=1, coils=2, h=16, w=12, acceleration=2)
    shutil.copy(src / "a.h5", src / "[red]b.h5")  # a name rich would read as markup
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["reconstruct", str(src), "--out", str(out), "--method", "zero-filled",
                                   "-f", "h5", "-f", "nifti", "-f", "dicom"], terminal_width=200,
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.stderr
    text = res.stdout
    for name in ("a.h5", "a.nii.gz", "a_dicom/", "[red]b.h5", "[red]b.nii.gz", "[red]b_dicom/"):
        assert name in text, (name, text)
        assert (out / name.rstrip("/")).exists()
    assert f"written to {out}/" in " ".join(text.split())
