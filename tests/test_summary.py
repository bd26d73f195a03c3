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
    assert "[red]b.h5" in text  # the input's name, literally (not read as rich markup)
    written = [p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not p.name.endswith(".mp.json")]
    assert len(written) == 6  # h5, NIfTI and a DICOM folder per input
    for name in written:
        assert name in text, (name, text)
    assert f"written to {out}/" in " ".join(text.split())
