"""The real scan shipped in ``sample_data/``: readable in the fastMRI layout with its
2-D Poisson mask, faithful to the source k-space, small, and licensed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mpcli.data.sample import REAL_NAME, make_real_sample
from mpcli.io.readers import read_scans

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sample_data" / REAL_NAME
SOURCE = REPO.parent / "shared" / "data" / "real" / "sigpy_brain_8ch_poisson_ksp.npy"


def test_shipped_real_scan_reads_with_its_2d_mask_and_notice():
    scan = read_scans(SHIPPED)[0]
    assert scan.kspace.shape == (1, 8, 230, 180) and scan.mask.shape == (1, 1, 230, 180)
    assert 0.10 < float(scan.mask.mean()) < 0.15  # 12.4 % Poisson-disc
    assert bool(scan.mask[0, 0, 115 - 12 : 115 + 12, 90 - 12 : 90 + 12].all())  # 24 × 24 centre
    assert bool((scan.kspace[:, :, scan.mask[0, 0] == 0] == 0).all())
    assert not scan.geometry.assumed and scan.reference is None
    assert SHIPPED.stat().st_size < 2e6
    notice = (SHIPPED.parent / "NOTICE").read_text()
    assert "mikgroup/sigpy-mri-tutorial" in notice and "BSD 3-Clause" in notice


def test_real_scan_is_the_source_kspace(tmp_path):
    if not SOURCE.exists():
        pytest.skip(f"real data not found: {SOURCE}")
    written = make_real_sample(SOURCE, tmp_path)
    assert {p.name for p in written} == {REAL_NAME, "NOTICE"}
    scan = read_scans(tmp_path / REAL_NAME)[0]
    np.testing.assert_array_equal(scan.kspace[0].numpy(), np.load(SOURCE))
    shipped = read_scans(SHIPPED)[0]
    assert torch.equal(shipped.kspace, scan.kspace) and torch.equal(shipped.mask, scan.mask)
