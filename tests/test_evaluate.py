"""``mp eval`` library (load, crop, score, tabulate) and the report figures."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from mpcli import metrics
from mpcli.errors import InputError, OutputError
from mpcli.evaluate import (
    Result,
    evaluate,
    evaluate_one,
    figure_from_files,
    labels,
    load_volume,
    results_json,
    results_table,
)
from mpcli.io.fastmri import write_reconstruction
from mpcli.io.nifti import write_nifti
from mpcli.report import figure, loss_curve, loss_curve_figure
from mpcli.scan import Geometry

S, H, W = 3, 24, 20


def _ref_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    blob = np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / 40.0)
    return (blob[None] * (1 + 0.1 * rng.random((S, H, W)))).astype(np.float32)  # [S, H, W]


def _fastmri_ref(path, vol, key="reconstruction_rss"):
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=vol)
        f.attrs["max"] = float(vol.max())
        f.attrs["acquisition"] = "CORPD_FBK"
    return path


def test_evaluate_h5_and_nifti_predictions_equal_direct_metrics(tmp_path):
    ref = _ref_volume()
    ref_path = _fastmri_ref(tmp_path / "file_ref.h5", ref)
    rng = np.random.default_rng(1)
    pred = ref + 0.05 * rng.standard_normal(ref.shape).astype(np.float32)  # [S, H, W]
    # predictions larger than the reference are centre-cropped to it (fastMRI)
    big = np.zeros((S, H + 6, W + 4), np.float32)
    big[:, 3 : 3 + H, 2 : 2 + W] = pred
    h5_path = write_reconstruction(tmp_path / "pred.h5", big)
    nii_path = write_nifti(tmp_path / "pred.nii.gz", pred, Geometry.default(S))
    results = evaluate([h5_path, nii_path], ref_path)
    assert [r.name for r in results] == [f"{tmp_path.name}/pred.h5", f"{tmp_path.name}/pred.nii.gz"]
    for r in results:
        assert r.shape == (S, H, W)
        assert r.psnr == pytest.approx(metrics.psnr(ref, pred), abs=1e-4)
        assert r.ssim == pytest.approx(metrics.ssim(ref, pred), abs=1e-6)
        assert r.nmse == pytest.approx(metrics.nmse(ref, pred), rel=1e-5)
    worse = write_reconstruction(tmp_path / "worse.h5", ref + 4 * (pred - ref))
    assert evaluate_one(worse, ref).psnr < results[0].psnr  # metrics order methods


def test_load_volume_formats(tmp_path):
    ref = _ref_volume()
    vol, meta = load_volume(_fastmri_ref(tmp_path / "a.h5", ref, "reconstruction_esc"))
    assert meta["dataset"] == "reconstruction_esc" and meta["attrs"]["acquisition"] == "CORPD_FBK"
    np.testing.assert_array_equal(vol, ref)
    with h5py.File(tmp_path / "both.h5", "w") as f:  # rss preferred over esc
        f["reconstruction_esc"] = ref * 0
        f["reconstruction_rss"] = ref
    np.testing.assert_array_equal(load_volume(tmp_path / "both.h5")[0], ref)
    with h5py.File(tmp_path / "c.h5", "w") as f:  # complex → magnitude
        f["reconstruction"] = (ref * np.exp(1j * 0.7)).astype(np.complex64)
    np.testing.assert_allclose(load_volume(tmp_path / "c.h5")[0], ref, rtol=1e-6)
    # a plain NIfTI in [H, W, S] order
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ref.transpose(1, 2, 0)), np.eye(4)), tmp_path / "p.nii")
    vol, meta = load_volume(tmp_path / "p.nii")
    assert vol.shape == (S, H, W) and vol.dtype == np.float32 and meta["format"] == "nifti"
    np.testing.assert_array_equal(vol, ref)


def _bad_files(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    (tmp_path / "text.nii.gz").write_bytes(b"\x1f\x8b garbage")
    (tmp_path / "x.png").write_bytes(b"")
    with h5py.File(tmp_path / "kspace_only.h5", "w") as f:
        f["kspace"] = np.zeros((1, 2, 8, 8), np.complex64)
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["reconstruction"] = np.full((1, 8, 8), np.nan, np.float32)
    with h5py.File(tmp_path / "1d.h5", "w") as f:
        f["reconstruction"] = np.ones(8, np.float32)
    return ["text.h5", "text.nii.gz", "x.png", "kspace_only.h5", "nan.h5", "1d.h5", "missing.h5"]


def test_unreadable_inputs_raise_input_error_naming_the_file(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(InputError) as err:
            load_volume(tmp_path / name)
        assert err.value.path == tmp_path / name and str(err.value).startswith(str(tmp_path / name))


def test_slice_count_or_size_mismatch_is_input_error(tmp_path):
    ref = _ref_volume()
    ref_path = _fastmri_ref(tmp_path / "ref.h5", ref)
    fewer = write_reconstruction(tmp_path / "fewer.h5", ref[:2])
    smaller = write_reconstruction(tmp_path / "smaller.h5", ref[:, 2:-2, :])
    for bad in (fewer, smaller):
        with pytest.raises(InputError) as err:
            evaluate([bad], ref_path)
        assert err.value.path == bad
    with pytest.raises(InputError):
        evaluate([fewer], tmp_path / "no_ref.h5")


def test_labels_are_unique_and_short():
    assert labels([Path("a/x.h5"), Path("b/y.nii.gz")]) == ["x", "y"]
    assert labels([Path("recon/scan.h5"), Path("other/scan.h5")]) == ["recon/scan", "other/scan"]
    assert labels([Path("r/scan.h5"), Path("r/scan.nii"), Path("q/z.h5")]) == ["r/scan.h5", "r/scan.nii", "z"]


def test_figure_from_files_uses_results_names(tmp_path):
    ref = _ref_volume()
    ref_path = _fastmri_ref(tmp_path / "ref.h5", ref)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    preds = [write_reconstruction(tmp_path / d / "scan.h5", ref * s) for d, s in (("a", 0.9), ("b", 1.1))]
    results = evaluate(preds, ref_path)
    assert [r.name for r in results] == ["a/scan", "b/scan"]
    out = figure_from_files(preds, ref_path, tmp_path / "fig.png", results)
    assert imread(out).shape[2] in (3, 4)


def test_figure_column_titles_drop_the_shared_stem_only_when_folders_still_differ():
    from mpcli.evaluate import column_titles

    assert column_titles(["cs/brain", "meta/brain", "adapted/brain"]) == ["cs", "meta", "adapted"]
    assert column_titles(["cs/brain", "cs/knee"]) == ["cs/brain", "cs/knee"]
    assert column_titles(["a", "b/x"]) == ["a", "b/x"]
    assert column_titles(["cs/brain"]) == ["cs/brain"]


def test_results_table_and_json():
    results = [Result("a", 0.01, 31.5, 0.9123, (3, 24, 20)), Result("b", 0.02, 28.25, 0.85, (3, 24, 20))]
    data = json.loads(results_json(results))
    assert data[1] == {"name": "b", "nmse": 0.02, "psnr": 28.25, "ssim": 0.85, "shape": [3, 24, 20]}
    console = Console(record=True, width=100)
    console.print(results_table(results))
    text = console.export_text()
    assert "31.50" in text and "0.9123" in text and "PSNR" in text


def test_figure_writes_readable_png_atomically(tmp_path):
    ref = _ref_volume()  # volumes: middle slice shown
    rng = np.random.default_rng(2)
    images = {"zero-filled": ref + 0.2 * rng.random(ref.shape), "mp adapt": ref + 0.05 * rng.random(ref.shape)}
    met = {k: {"psnr": metrics.psnr(ref, v), "ssim": metrics.ssim(ref, v)} for k, v in images.items()}
    out = figure(ref, images, tmp_path / "report.png", met)
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > img.shape[0]  # 2 rows × 3 columns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]  # no temporary left behind
    with pytest.raises(OutputError):
        figure(ref, images, tmp_path / "no_dir" / "report.png", met)


def test_loss_curve_png(tmp_path):
    steps = np.arange(50)
    val = np.where(steps % 5 == 0, 1.0 / (1 + steps) + 0.2, np.nan)
    out = loss_curve(steps, 1.0 / (1 + steps), val, tmp_path / "loss.png", best_step=30)
    assert imread(out).shape[:2] == (560, 640)
    with pytest.raises(ValueError):
        loss_curve(steps, steps[:-1], None, tmp_path / "bad.png")


def test_loss_curve_shows_the_early_stopping_decision():
    """A 0.5 % self-validation change fills its panel (it looked flat on a shared log axis with a
    training loss 10× larger); the kept step is marked; no legend lies over a curve; there is a title."""
    steps = np.arange(9)
    train = np.linspace(10.0, 6.0, 9)
    train[0] = np.nan  # no training loss at step 0 (the prior)
    val = 1.0 - 0.005 * np.array([0, 0.6, 1.0, 0.9, 0.8, 0.85, 0.7, 0.75, 0.8])
    fig = loss_curve_figure(steps, train, val, best_step=2, stop_note="stopped: no improvement for 4 steps")
    ax_val, ax_train = fig.axes
    lo, hi = ax_val.get_ylim()
    assert ax_val.get_yscale() == "linear" and (val.max() - val.min()) / (hi - lo) > 0.7
    assert "self-validation" in ax_val.get_ylabel() and "training" in ax_train.get_ylabel()
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert "kept step 2 of 8" in fig._suptitle.get_text() and "no improvement" in fig._suptitle.get_text()
    kept = [t.get_text() for t in ax_val.texts]
    assert any("kept: step 2" in t and "-0.50 %" in t for t in kept), kept
    assert any(list(line.get_xdata()) == [2, 2] for line in ax_val.lines)  # the vertical marker
