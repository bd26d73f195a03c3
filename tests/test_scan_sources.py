"""Scan-like training images (mpcli/data/scans.py, synthetic.py) and the Biot–Savart coil model."""

from __future__ import annotations

import numpy as np
import pytest

from mpcli.data import scans, synthetic
from mpcli.data.simulate import coil_maps
from mpcli.data.sources import all_source_names, get_source
from mpcli.data.tasks import SCAN_TRAIN_FAMILY, Task, TaskFamily

NEEDS_APT = {"colin27", "colin27_hires", "macaque_t1", "itk_t1_head", "itk_slices", "label_map"}
NEW = sorted([*scans.SCAN_SOURCES, *synthetic.SYNTHETIC_SOURCES])


def _installed(name: str) -> bool:
    if name in NEEDS_APT:
        return scans.MRICRON.is_dir() and scans.ITK_DATA.is_dir()
    return True


def _skip_unless_installed(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{name}: Debian packages not installed ({scans.APT_HINT})")


@pytest.mark.parametrize("name", NEW)
def test_source_images_shape_range_and_seed_determinism(name):
    _skip_unless_installed(name)
    src = get_source(name)
    for plane, size in (("axial", (32, 32)), ("sagittal", (40, 24))):
        a = next(src.images(plane, size, np.random.default_rng(5)))
        b = next(src.images(plane, size, np.random.default_rng(5)))
        c = next(src.images(plane, size, np.random.default_rng(6)))
        assert a.shape == size and a.dtype == np.float32
        assert np.isfinite(a).all() and a.min() >= 0 and abs(float(a.max()) - 1) < 1e-6
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
        assert (a > 0.1).mean() > 0.02  # not an empty frame


def test_new_sources_are_registered():
    assert set(NEW) <= set(all_source_names())
    with pytest.raises(ValueError, match="unknown image source"):
        get_source("nope")


@pytest.mark.parametrize("fname", ["MR2_J2KI.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "S0_10slices.nii",
                                   "S0_10slices.nii.gz", "FatMRISlice.png"])
def test_held_out_files_are_refused(fname, tmp_path):
    (tmp_path / fname).write_bytes(b"x")
    with pytest.raises(ValueError, match="independent evaluation"):
        scans.check_trainable(tmp_path / fname)
    assert scans.check_trainable(tmp_path / "ch2.nii.gz") == tmp_path / "ch2.nii.gz"


def test_every_source_file_passes_the_held_out_check(monkeypatch):
    """Sources open files only through check_trainable: a reserved name slipped into the table is refused."""
    monkeypatch.setitem(scans._VOLUMES, "sneaky", ("nibabel", "MR2_J2KI.nii.gz"))
    with pytest.raises(ValueError, match="independent evaluation"):
        scans.volume_path("sneaky")


def test_training_family_excludes_validation_and_benchmark_anatomy():
    srcs = set(SCAN_TRAIN_FAMILY.sources)
    assert not srcs & set(scans.VALIDATION_ONLY)
    assert not any(s.startswith("mni_") for s in srcs)  # the held-out benchmark's anatomy
    lo, hi = SCAN_TRAIN_FAMILY.n_coils
    assert (lo, hi) == (4, 32)
    sizes = {tuple(s) for s in SCAN_TRAIN_FAMILY.sizes}
    assert min(min(s) for s in sizes) == 128 and max(max(s) for s in sizes) == 384
    assert any(h != w for h, w in sizes)


def test_scan_family_tasks_simulate():
    rng = np.random.default_rng(0)
    fam = TaskFamily.from_config({**SCAN_TRAIN_FAMILY.to_config(), "sizes": [[32, 24]], "n_coils": [2, 3],
                                  "sources": ["dead_leaves", "natural"]})
    for _ in range(3):
        t = fam.sample_task(rng)
        assert fam.contains(t)
        b = t.sample(2, 0)
        assert b.y.shape == (2, t.n_coils, 32, 24) and b.x.shape == (2, 32, 24)
        assert Task.from_dict(t.to_dict()) == t


def test_default_family_draws_are_unchanged_by_the_coil_model_field():
    """Families with one coil model draw nothing for it: older families keep their exact tasks."""
    t = TaskFamily().sample_task(np.random.default_rng(3))
    rng = np.random.default_rng(3)
    t2 = TaskFamily(coil_models=("classic", "classic")).sample_task(rng)
    assert t.coil_model == "classic" and t2.coil_model == "classic"
    assert {k: v for k, v in t.to_dict().items()} == {k: v for k, v in t2.to_dict().items()}
    with pytest.raises(ValueError, match="coil model"):
        Task(coil_model="birdcage")


def test_log_uniform_noise_spans_decades_and_draws_the_rest_unchanged():
    """``noise_log`` draws noise_rel log-uniformly in [lo, hi] with one draw of the generator,
    so every other field of the task is the one the uniform family draws."""
    fam = TaskFamily(noise_rel=(0.003, 0.2), noise_log=True)
    draws = np.array([fam.sample_task(np.random.default_rng(i)).noise_rel for i in range(400)])
    assert draws.min() >= 0.003 and draws.max() <= 0.2
    # log-uniform: the median sits at the geometric mean √(0.003·0.2) ≈ 0.0245, a third of the draws above 0.05
    assert np.median(draws) == pytest.approx(np.sqrt(0.003 * 0.2), rel=0.25)
    assert 0.25 < (draws > 0.05).mean() < 0.42
    t_log = fam.sample_task(np.random.default_rng(5)).to_dict()
    t_uni = TaskFamily(noise_rel=(0.003, 0.2)).sample_task(np.random.default_rng(5)).to_dict()
    assert {k: v for k, v in t_log.items() if k != "noise_rel"} == {k: v for k, v in t_uni.items() if k != "noise_rel"}
    assert TaskFamily.from_config(fam.to_config()) == fam
    with pytest.raises(ValueError, match="log-uniform"):
        TaskFamily(noise_rel=(0.0, 0.1), noise_log=True)
    with pytest.raises(ValueError, match="noise_log"):
        TaskFamily.from_config({"noise_log": "yes"})


@pytest.mark.parametrize("shape", [(48, 48), (40, 64)])
def test_biot_savart_maps_normalised_and_deterministic(shape):
    m = coil_maps(6, shape, np.random.default_rng(1), kind="biot_savart")
    assert m.shape == (6, *shape) and m.dtype == np.complex64
    rss = np.sqrt((np.abs(m) ** 2).sum(0))
    assert rss.max() <= 1 + 1e-5  # ‖A‖ ≤ 1 for the SENSE operator
    h, w = shape
    v, u = np.meshgrid((np.arange(h) - h / 2) / (h / 2), (np.arange(w) - w / 2) / (w / 2), indexing="ij")
    assert abs(rss[u**2 + v**2 <= 0.81].max() - 1) < 1e-5
    assert rss.min() > 0.01  # every pixel seen by some coil
    assert np.array_equal(m, coil_maps(6, shape, np.random.default_rng(1), kind="biot_savart"))


def test_biot_savart_single_loop_falls_off_with_distance():
    """One loop: the sensitivity is largest on the side of the field of view nearest the loop."""
    m = np.abs(coil_maps(1, (64, 64), np.random.default_rng(2), kind="biot_savart")[0])
    peak = np.unravel_index(np.argmax(m), m.shape)
    far = (63 - peak[0], 63 - peak[1])
    assert m[far] < 0.5 * m[peak]


def test_missing_package_file_is_an_input_error(monkeypatch, tmp_path):
    from mpcli.errors import InputError

    monkeypatch.setattr(scans, "MRICRON", tmp_path)
    scans.load_volume.cache_clear()
    with pytest.raises(InputError, match="apt-get install"):
        scans.volume_path("colin27")
    scans.load_volume.cache_clear()


def test_label_map_never_yields_an_empty_image(monkeypatch):
    """When no slice of the drawn atlas holds enough labels (30 tries), another atlas is drawn
    instead of returning the last (all-background) slice: a blank training image once made a
    zero target, a 0/0 gradient and NaN weights."""
    _skip_unless_installed("label_map")
    real, calls = synthetic.oblique_slice, {"n": 0}

    def blank_at_first(vol, *args, **kw):
        calls["n"] += 1
        return np.zeros_like(real(vol, *args, **kw)) if calls["n"] <= 30 else real(vol, *args, **kw)

    monkeypatch.setattr(synthetic, "oblique_slice", blank_at_first)
    img = next(get_source("label_map").images("axial", (32, 32), np.random.default_rng(0)))
    assert calls["n"] > 30 and (img > 0.1).mean() > 0.02
