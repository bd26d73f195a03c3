"""The shipped meta-prior: loads, reconstructs the sample scan, and `mp adapt` improves it."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.evaluate import evaluate
from mpcli.io.weights import SHIPPED_PRIOR, load_model
from mpcli.recon.network import ARCH_VERSION

SAMPLE = Path(__file__).parents[1] / "sample_data" / "brain_fastmri.h5"

pytestmark = pytest.mark.skipif(not SHIPPED_PRIOR.exists(), reason="shipped prior not built yet")


def test_shipped_prior_loads_with_checked_hash_and_version():
    model, meta = load_model()
    assert meta["arch_version"] == ARCH_VERSION
    assert len(meta["sha256"]) == 64
    assert "meta_train" in meta and "data" in meta
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Reconstructions of the sample scan: the prior alone, and after `mp adapt` (default budget)."""
    d = tmp_path_factory.mktemp("shipped")
    runner = CliRunner()
    res = runner.invoke(app, ["reconstruct", str(SAMPLE), "--out", str(d / "meta"), "--method", "meta",
                              "--format", "h5"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["adapt", "--kspace", str(SAMPLE), "--recon", str(d / "adapted"), "--format", "h5"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["reconstruct", str(SAMPLE), "--out", str(d / "zf"), "--method", "zero-filled",
                              "--format", "h5"])
    assert res.exit_code == 0, res.stderr
    return d


def test_mp_adapt_on_the_sample_scan_improves_psnr_over_the_prior(runs):
    zf, meta, adapted = evaluate([runs / "zf" / SAMPLE.name, runs / "meta" / SAMPLE.name,
                                  runs / "adapted" / SAMPLE.name], SAMPLE)
    print(f"\nsample scan PSNR: zero-filled {zf.psnr:.2f} dB, meta-prior {meta.psnr:.2f} dB, "
          f"adapted {adapted.psnr:.2f} dB")
    assert meta.psnr > zf.psnr + 3.0
    assert adapted.psnr > meta.psnr, (meta.psnr, adapted.psnr)
