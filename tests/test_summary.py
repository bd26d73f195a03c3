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


def test_adapt_summary_shows_whole_hash_and_paths_at_80_columns(tmp_path):
    import torch

    from mpcli.io.weights import load_weights, save_weights
    from mpcli.recon.network import ARCH_VERSION, build_network

    tiny = {"arch": "resunroll", "iters": 2, "features": 8, "depth": 2, "shared": True}
    torch.manual_seed(0)
    prior = tmp_path / "prior.safetensors"
    save_weights(prior, build_network(tiny).state_dict(), {"arch": "resunroll", "arch_version": ARCH_VERSION,
                                                            "config": tiny})
    scan = write_synthetic_fastmri(tmp_path / "scan.h5", slices=2, coils=2, h=16, w=16, acceleration=2)
    out = tmp_path / "a_rather_long_folder_name_for_the_weights" / "adapted.safetensors"
    res = CliRunner().invoke(app, ["adapt", "--kspace", str(scan), "--prior", str(prior), "--out", str(out),
                                   "--steps", "1", "--plot", str(tmp_path / "curve.png")],
                             terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.stderr
    assert "…" not in res.stdout
    cells = "".join(line.split("│")[2].strip() for line in res.stdout.splitlines() if line.count("│") == 3)
    assert load_weights(out)[1]["sha256"] in cells and str(out) in cells and str(tmp_path / "curve.png") in cells


def test_eval_table_never_cuts_or_styles_a_name():
    import io

    from rich.console import Console

    from mpcli.evaluate import Result, results_table

    names = ["adapted_with_a_long_descriptive_name/subject_0001_series_0007", "[bold]cs/b"]
    results = [Result(n, 0.01, 27.5, 0.8, (6, 128, 128)) for n in names]
    console = Console(width=60, record=True, file=io.StringIO())
    console.print(results_table(results))
    text = console.export_text()
    assert "…" not in text and "[bold]cs/b" in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert names[0] in cells
