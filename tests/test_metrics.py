"""Metrics equal fastMRI's definitions (scikit-image / numpy references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mpcli.metrics import center_crop_to, nmse, psnr, ssim, ssim_torch

SHAPES = [(1, 7, 7), (3, 32, 32), (2, 33, 41), (2, 64, 19)]


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape) * 3.0
    pred = gt + 0.2 * rng.standard_normal(shape)
    return gt, pred


@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_equals_skimage(shape):
    gt, pred = _pair(shape)
    r = gt.max()
    ref = np.mean([structural_similarity(gt[s], pred[s], data_range=r) for s in range(shape[0])])
    assert abs(ssim(gt, pred) - ref) < 1e-6
    assert abs(ssim(gt, pred, maxval=2 * r) - np.mean(
        [structural_similarity(gt[s], pred[s], data_range=2 * r) for s in range(shape[0])])) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_psnr_equals_skimage(shape):
    gt, pred = _pair(shape, 1)
    assert abs(psnr(gt, pred) - peak_signal_noise_ratio(gt, pred, data_range=gt.max())) < 1e-6
    assert abs(psnr(gt, pred, maxval=10.0) - peak_signal_noise_ratio(gt, pred, data_range=10.0)) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_nmse_equals_numpy_definition(shape):
    gt, pred = _pair(shape, 2)
    assert nmse(gt, pred) == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2), rel=1e-12)
    assert nmse(gt, gt) == 0.0


def test_ssim_torch_batched_per_image_and_differentiable():
    gt, pred = _pair((3, 20, 24), 3)
    x = torch.from_numpy(pred).requires_grad_(True)
    ranges = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = ssim_torch(x, torch.from_numpy(gt), ranges)
    assert out.shape == (3,)
    for b in range(3):
        ref = structural_similarity(pred[b], gt[b], data_range=float(ranges[b]))
        assert abs(out[b].item() - ref) < 1e-6
    (1 - out.mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # identical images: SSIM 1, gradient check in double precision
    assert ssim_torch(torch.from_numpy(gt[0]), torch.from_numpy(gt[0]), 3.0).item() == pytest.approx(1.0)
    small = torch.rand(1, 8, 9, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 8, 9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ssim_torch(a, target, 1.0), (small,), fast_mode=True)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError):
        ssim_torch(torch.rand(1, 6, 10), torch.rand(1, 6, 10), 1.0)
    with pytest.raises(ValueError):
        ssim(np.ones((2, 8, 8)), np.ones((2, 8, 9)))
    with pytest.raises(ValueError):
        ssim(np.ones((8, 8)), np.ones((8, 8)))


def test_center_crop_to_reference_size():
    ref = np.zeros((2, 5, 6))
    pred = np.arange(2 * 9 * 10).reshape(2, 9, 10)
    out = center_crop_to(pred, ref)
    assert out.shape == (2, 5, 6)
    np.testing.assert_array_equal(out, pred[:, 2:7, 2:8])
    t = center_crop_to(torch.from_numpy(pred), torch.from_numpy(ref))
    assert torch.equal(t, torch.from_numpy(pred[:, 2:7, 2:8]))
