"""Tasks and task families (mpcli/data/tasks.py) and their image sources (mpcli/data/sources.py)."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest
import torch

from mpcli.data import sources
from mpcli.data.sources import (
    PLANES,
    SOURCES,
    get_source,
    mni_volume,
    resize,
    valid_slices,
)
from mpcli.data.tasks import DEFAULT_TRAIN_FAMILY, HELD_OUT, Batch, Task, TaskFamily
from mpcli.errors import InputError

pytest.importorskip("nilearn", reason="MNI sources need nilearn (pip install mpcli[train])")

SMALL = {"size": (48, 40), "n_coils": 4, "source": "mni_t1", "plane": "axial"}


def test_task_sample_shapes_and_types():
    b = Task(**SMALL, seed=3).sample(2, 0)
    assert isinstance(b, Batch)
    assert b.x.shape == (2, 48, 40) and b.x.dtype == torch.complex64
    assert b.y.shape == (2, 4, 48, 40) and b.y.dtype == torch.complex64
    assert b.A.maps.shape == (2, 4, 48, 40) and b.A.mask.shape == (1, 1, 48, 40)
    assert b.x.abs().amax(dim=(1, 2)).allclose(torch.ones(2), atol=1e-5)  # images max 1


def test_task_sample_is_deterministic_per_index():
    task = Task(**SMALL, noise_rel=0.01, seed=7)
    a, b = task.sample(3, 0), task.sample(3, 0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.A.maps, b.A.maps)
    tail = task.sample(2, 1)  # examples 1 and 2 again
    assert torch.equal(tail.x, a.x[1:]) and torch.equal(tail.y, a.y[1:])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(task.sample(2, g1).y, task.sample(2, g2).y)
    other = Task(**SMALL, noise_rel=0.01, seed=8).sample(3, 0)
    assert not torch.equal(other.y, a.y)
    assert not torch.equal(a.x[0], a.x[1])  # examples differ


def test_noiseless_task_is_consistent_with_its_operator():
    b = Task(**SMALL, noise_rel=0.0, seed=1).sample(2, 0)
    assert torch.allclose(b.y, b.A(b.x), atol=1e-5)


def test_task_noise_matches_noise_rel():
    task = Task(**{**SMALL, "n_coils": 8}, mask_kind="random", acceleration=2, noise_rel=0.05, seed=2)
    b = task.sample(1, 0)
    clean = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(b.A.maps * b.x[:, None],
                                                                  dim=(-2, -1)), norm="ortho"),
                               dim=(-2, -1))
    sigma = 0.05 * clean.abs().pow(2).mean().sqrt()
    on = b.A.mask.expand_as(b.y).bool()
    resid = (b.y - b.A(b.x))[on]
    assert float(resid.abs().pow(2).mean().sqrt()) == pytest.approx(float(sigma), rel=0.1)


@pytest.mark.parametrize("kind", ["random", "equispaced_fraction", "gaussian", "poisson"])
@pytest.mark.parametrize("accel", [4, 6])
def test_task_mask_acceleration_matches(kind, accel):
    task = Task(mask_kind=kind, acceleration=accel, center_fraction=0.08, size=(96, 96), seed=11)
    m = task.mask()
    assert m.shape == (1, 1, 96, 96) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert 1 / float(m.mean()) == pytest.approx(accel, rel=0.2)
    assert torch.equal(m, task.mask())


def test_family_sampling_is_seeded_and_in_support():
    fam = DEFAULT_TRAIN_FAMILY
    a = [fam.sample_task(np.random.default_rng(0)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(1)
    tasks = [fam.sample_task(rng) for _ in range(50)]
    assert all(fam.contains(t) for t in tasks)
    assert len({t.seed for t in tasks}) == 50
    assert {t.mask_kind for t in tasks} == set(fam.mask_kinds)
    assert {t.plane for t in tasks} == set(fam.planes)


def test_held_out_families_are_never_seen_in_training():
    rng = np.random.default_rng(2)
    for name, fam in HELD_OUT.items():
        for _ in range(20):
            task = fam.sample_task(rng)
            assert fam.contains(task)
            assert not DEFAULT_TRAIN_FAMILY.contains(task), (name, task)


def test_family_config_round_trip():
    for fam in [DEFAULT_TRAIN_FAMILY, *HELD_OUT.values()]:
        cfg = fam.to_config()
        assert isinstance(cfg["sizes"][0], list)
        assert TaskFamily.from_config(cfg) == fam
    with pytest.raises(ValueError):
        TaskFamily.from_config({"coils": [1, 2]})
    t = Task(**SMALL, seed=4)
    assert Task.from_dict(t.to_dict()) == t


def test_fastmri_task_uses_the_files_own_kspace(tmp_path):
    """Own k-space: S = coil/RSS gives Σ|S|² = 1 and A x equals the file's k-space;
    one file (one coil array) per task, even when files have different coil counts."""
    rng = np.random.default_rng(0)
    for name, coils in (("a.h5", 4), ("b.h5", 6)):
        k = rng.normal(size=(3, coils, 64, 32)) + 1j * rng.normal(size=(3, coils, 64, 32))
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("kspace", data=k.astype(np.complex64))
    seen = set()
    for seed in (0, 1):
        task = Task(mask_kind="random", acceleration=2, source=f"fastmri:{tmp_path}",
                    size=(24, 24), seed=seed)
        b = task.sample(3, 0)
        seen.add(b.y.shape[1])
        assert b.x.shape == (3, 24, 24) and b.y.shape[2:] == (24, 24)
        assert torch.allclose(b.y, b.A(b.x), atol=1e-4)
        power = b.A.maps.abs().pow(2).sum(1)
        assert torch.allclose(power, torch.ones_like(power), atol=1e-4)
    assert seen == {4, 6}


# ------------------------------------------------------------------ sources

@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize("size", [(48, 40), (33, 64)])
def test_sources_give_normalised_images_of_the_requested_size(name, size):
    src = get_source(name)
    planes = PLANES if name in ("mni_t1", "shepp_logan") else ("axial",)
    for plane in planes:
        it = src.images(plane, size, np.random.default_rng(0))
        for _ in range(2):
            img = next(it)
            assert img.shape == size and img.dtype == np.float32
            assert img.min() >= 0 and img.max() == pytest.approx(1.0)
            assert (img > 0.1).mean() > 0.1  # not an empty slice
    a = next(src.images("axial", size, np.random.default_rng(9)))
    b = next(src.images("axial", size, np.random.default_rng(9)))
    assert np.array_equal(a, b)


def test_synthetic_contrasts_order_tissues():
    """T1: WM > GM > CSF; t2like: CSF > GM > WM; flairlike: GM > WM > CSF (dark)."""
    gm, wm, csf, _ = sources._mni_tissues()
    masks = {"gm": gm > 0.9, "wm": wm > 0.9, "csf": csf > 0.9}

    def means(contrast):
        vol = mni_volume(contrast)
        return {k: float(vol[m].mean()) for k, m in masks.items()}

    t1, t2, fl = means("t1"), means("t2like"), means("flairlike")
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert fl["gm"] > fl["wm"] > fl["csf"]


@pytest.mark.parametrize("plane", PLANES)
def test_valid_slices_hold_enough_anatomy(plane):
    vol = mni_volume("t1")
    idx = valid_slices("t1", plane)
    assert 60 < len(idx) < vol.shape[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]
    for i in idx[[0, -1]]:
        sl = sources.take_slice(vol, plane, int(i))
        assert (sl > 0.1 * vol.max()).mean() >= 0.15


def test_resize_keeps_aspect_and_mass():
    img = np.zeros((40, 20), np.float32)
    img[10:30, 5:15] = 1.0
    out = resize(img, (80, 80))  # padded to 40×40, then ×2
    assert out.shape == (80, 80)
    cols = np.flatnonzero(out.max(0) > 0.5)
    assert 28 <= cols.min() <= 32 and 48 <= cols.max() <= 52  # centred, not stretched


def test_missing_nilearn_is_a_clear_input_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install mpcli\[train\]"):
        sources.nilearn_data_dir()


def test_unknown_source_and_plane():
    with pytest.raises(ValueError, match="unknown image source"):
        get_source("mni_t3")
    with pytest.raises(ValueError, match="unknown plane"):
        next(get_source("mni_t1").images("oblique", (32, 32), np.random.default_rng(0)))
