"""``mp info``: whole file names at 80 columns, every file reported, measured R said as such."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from mpcli.errors import EXIT_INPUT, EXIT_PARTIAL
from mpcli.info import centre_lines, describe_files, info_table, sampling
from tests.synthetic import line_mask, write_synthetic_fastmri

LONG = "sample_data_accelerated_R4_[bold]subject_0001_series_0007.h5"  # rich markup must not bite


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    write_synthetic_fastmri(d / "accelerated_a.h5", slices=1, coils=2, h=16, w=24, acceleration=4)
    write_synthetic_fastmri(d / "accelerated_b.h5", slices=1, coils=2, h=16, w=24, acceleration=2)
    write_synthetic_fastmri(d / LONG, slices=1, coils=2, h=16, w=24, acceleration=4)
    (d / "empty.h5").write_bytes(b"")
    return d


def _render(table, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_line_mask_sampling_is_measured_with_centre_lines():
    mask = torch.from_numpy(line_mask(24, 4, 3)).reshape(1, 24).expand(16, 24)  # [H, W]
    s = sampling(mask)
    acquired = int(mask[0].sum())
    assert s["mask"] == "lines" and s["lines_total"] == 24 and s["lines_acquired"] == acquired
    assert s["acceleration"] == pytest.approx(24 / acquired)
    assert s["centre_lines"] == centre_lines(mask[0] > 0) >= 3


def test_two_d_mask_counts_samples():
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    mask[0, 0] = 1
    s = sampling(mask)
    assert s["mask"] == "2-D" and s["samples_acquired"] == 17 and s["acceleration"] == pytest.approx(64 / 17)


@pytest.mark.parametrize("width", (80, 100, 160))
def test_table_never_cuts_a_file_name(folder, width):
    infos = describe_files(sorted(folder.iterdir()))
    text = _render(info_table(infos, width), width)
    assert all(len(line) <= width for line in text.splitlines())
    for name in ("accelerated_a.h5", "accelerated_b.h5", "empty.h5", LONG):
        assert any(name in line for line in text.splitlines()), (width, name, text)
    assert "…" not in text
    assert "empty file" in text  # the bad file is a row with its reason, not the end of the listing


def test_name_wider_than_the_terminal_wraps_whole(folder):
    text = _render(info_table(describe_files([folder / LONG]), 30), 30)
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert LONG in cells, text


def test_wide_table_shows_measured_r_and_lines(folder):
    infos = describe_files([folder / "accelerated_a.h5"])
    text = _render(info_table(infos, 160), 160)
    row = infos[0].frames[0]
    assert f"{row['lines_acquired']}/24" in text and f"{row['acceleration']:.2f}" in text
    assert "R measured" in text and "centre (calibration) lines included" in text


def test_cli_at_80_columns_lists_every_file_and_exits_partial(folder):
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-m", "mpcli", "info", str(folder)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == EXIT_PARTIAL, res.stderr
    for name in ("accelerated_a.h5", "accelerated_b.h5", LONG):
        assert name in res.stdout, res.stdout
    assert res.stderr.strip().splitlines() == [f"mp: error: {folder / 'empty.h5'}: empty file"]
    res = subprocess.run([sys.executable, "-m", "mpcli", "info", str(folder), "--json"], capture_output=True,
                         text=True, env=env, timeout=120)
    rows = {Path(r["file"]).name: r for r in json.loads(res.stdout)}
    assert rows["empty.h5"]["status"] == "failed" and rows["accelerated_a.h5"]["status"] == "ok"
    assert rows["accelerated_a.h5"]["acceleration_kind"].startswith("measured")


def test_cli_all_files_bad_keeps_their_exit_code_and_no_files_is_an_error(folder, tmp_path):
    from typer.testing import CliRunner

    from mpcli.cli import app

    res = CliRunner().invoke(app, ["info", str(folder / "empty.h5")])
    assert res.exit_code == EXIT_INPUT
    res = CliRunner().invoke(app, ["info", str(tmp_path)])  # an empty folder: not an empty table
    assert res.exit_code == EXIT_INPUT and "no k-space files" in res.stderr and res.stdout == ""
