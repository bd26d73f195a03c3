"""`mp meta-train` through the CLI: site mode on undersampled files, no ground truth."""

import json

from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.io.weights import load_model, load_weights
from tests.test_adapt import prior_file, scan_file  # noqa: F401 - fixtures


def test_site_meta_train_from_a_prior_writes_a_loadable_site_prior(scan_file, prior_file, tmp_path):  # noqa: F811
    out = tmp_path / "site.safetensors"
    res = CliRunner().invoke(app, ["meta-train", "--kspace", str(scan_file), "--init", str(prior_file),
                                   "--out", str(out), "--steps", "1", "--first-order", "--json"])
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 1 and (tmp_path / "site.jsonl").exists()
    _, meta = load_weights(out)
    assert meta["data"]["mode"] == "site" and meta["config"] == load_weights(prior_file)[1]["config"]
    load_model(out)


def test_meta_train_bad_config_is_one_line_input_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 'many'\nnonsense = 1\n")
    res = CliRunner().invoke(app, ["meta-train", "--config", str(bad), "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 3
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1 and str(bad) in res.stderr
