"""Properties of the reconstruction losses (mpcli.meta.losses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mpcli.meta.losses import (
    LOSSES,
    SSDU,
    EquivariantImaging,
    WeightedSSDU,
    acquired_mask,
    is_measurement_only,
    make_loss,
)
from mpcli.physics.sense import Sense

sys.path.insert(0, str(Path(__file__).parent))
from ddp_script import ToyNet, ToyTask, coil_maps


def _batch(n=2, size=8, accel=2, seed=0):
    return ToyTask(size=size, coils=2, accel=accel).sample(n, torch.Generator().manual_seed(seed))


def _adjoint_model(y, A):
    return A.adjoint(y)


def test_registry_names_and_measurement_only_flags():
    assert set(LOSSES) == {"l2", "l1", "ssim", "psnr", "mc", "ssdu", "wssdu", "ei"}
    assert [n for n in LOSSES if is_measurement_only(n)] == ["mc", "ssdu", "wssdu", "ei"]
    with pytest.raises(ValueError):
        make_loss("nope")


@pytest.mark.parametrize("name", ["l2", "l1", "ssim"])
def test_supervised_losses_vanish_only_at_the_truth(name):  # psnr: −∞ at the truth (clamped), below
    b = _batch()
    loss = make_loss(name)
    assert float(loss(b.x, b.y, b.A, _adjoint_model, b.x)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(b.x * 0.5, b.y, b.A, _adjoint_model, b.x)) > 1e-3
    with pytest.raises(ValueError):
        loss(b.x, b.y, b.A, _adjoint_model, None)


def test_psnr_loss_is_minus_the_reference_psnr_per_sample():
    """−mean PSNR (peak max|x| per sample, complex error), checked against skimage's PSNR."""
    from skimage.metrics import peak_signal_noise_ratio

    b = _batch(n=3)
    g = torch.Generator().manual_seed(1)
    x_hat = b.x + 0.05 * torch.randn(b.x.shape, dtype=b.x.dtype, generator=g) * torch.arange(1, 4)[:, None, None]
    value = float(make_loss("psnr")(x_hat, b.y, b.A, _adjoint_model, b.x))
    ref = []
    for xi, hi in zip(b.x, x_hat):
        stack = lambda z: torch.stack((z.real, z.imag)).numpy().astype("float64")
        # complex MSE = 2 × MSE over the (real, imaginary) channels
        ref.append(peak_signal_noise_ratio(stack(xi), stack(hi), data_range=float(xi.abs().max()))
                   - 10 * torch.log10(torch.tensor(2.0)).item())
    assert value == pytest.approx(-sum(ref) / len(ref), abs=1e-3)
    with pytest.raises(ValueError):
        make_loss("psnr")(b.x, b.y, b.A, _adjoint_model, None)


def test_ssim_loss_is_differentiable():
    b = _batch()
    x_hat = (b.x * 0.7).clone().requires_grad_(True)
    make_loss("ssim")(x_hat, b.y, b.A, _adjoint_model, b.x).backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


def test_mc_loss_is_zero_at_truth_on_noiseless_data():
    b = _batch()
    mc = make_loss("mc")
    assert float(mc(b.x, b.y, b.A, _adjoint_model)) < 1e-12
    assert float(mc(b.x + 0.1, b.y, b.A, _adjoint_model)) > 1e-4


def test_ssdu_splits_are_disjoint_cover_omega_and_reproducible():
    b = _batch(accel=2)
    omega = acquired_mask(b.y, b.A)
    maps_before, mask_before = b.A.maps.clone(), b.A.mask.clone()
    th1, la1 = SSDU(rho=0.4, seed=7).split(b.y, b.A)
    th2, la2 = SSDU(rho=0.4, seed=7).split(b.y, b.A)
    th3, _ = SSDU(rho=0.4, seed=8).split(b.y, b.A)
    assert float((th1 * la1).sum()) == 0  # disjoint
    assert torch.equal(th1 + la1, omega)  # Θ ∪ Λ = Ω
    assert float(la1.sum()) > 0
    assert torch.equal(th1, th2) and torch.equal(la1, la2)  # same seed, same split
    assert not torch.equal(th1, th3)  # another seed, another split
    assert torch.equal(b.A.mask, mask_before) and torch.equal(b.A.maps, maps_before)  # operator untouched
    s = SSDU(rho=0.4, seed=7)
    first = s.split(b.y, b.A)[0]
    second = s.split(b.y, b.A)[0]
    s.reseed(7)
    assert torch.equal(s.split(b.y, b.A)[0], first) and not torch.equal(first, second)


def test_ssdu_loss_scores_heldout_kspace():
    b = _batch()

    def oracle(y, A):  # knows the truth: predicts every held-out sample
        return b.x

    assert float(SSDU(n_splits=3)(None, b.y, b.A, oracle)) < 1e-12
    assert float(SSDU(n_splits=3)(None, b.y, b.A, _adjoint_model)) > 1e-2  # zero-filling misses Λ


def test_weighted_ssdu_expectation_equals_full_mc_loss():
    """For a prediction that does not depend on the split, E_split[wssdu] = mc exactly."""
    b = _batch(n=1, size=8, accel=2, seed=1)
    x_fixed = b.x + 0.3 * torch.randn(b.x.shape, generator=torch.Generator().manual_seed(5), dtype=b.x.dtype)

    def fixed(y, A):
        return x_fixed

    full = float(make_loss("mc")(x_fixed, b.y, b.A, fixed))
    # n independent splits at once: the same slice repeated n times, split per sample.
    n = 4000
    y = b.y.expand(n, -1, -1, -1)
    A = Sense(b.A.maps.expand(n, -1, -1, -1), b.A.mask.expand(n, -1, -1, -1))
    w = WeightedSSDU(rho=0.4, kind="gaussian", seed=11)
    theta, lam, p = w.split(y, A)
    assert float((theta * lam).sum()) == 0 and torch.equal(theta + lam, acquired_mask(y, A))
    assert float(p.max() - p[p > 0].min()) > 0.1  # non-uniform probabilities, so the test has teeth

    def per_split(weight):
        r = A.with_mask(lam)(x_fixed.expand(n, -1, -1)) - y * lam  # [n, C, H, W]
        return ((r.abs() ** 2) * weight).reshape(n, -1).sum(1).double() / float((b.y.abs() ** 2).sum())

    vals = per_split(torch.where(lam > 0, 1 / p, torch.zeros_like(p)))
    mean, sem = float(vals.mean()), float(vals.std() / n**0.5)
    assert abs(mean - full) < 4 * sem + 1e-6, (mean, full, sem)
    w.reseed(11)
    assert float(w(None, y, A, lambda y_, A_: x_fixed.expand(n, -1, -1))) == pytest.approx(mean, rel=1e-5)
    unweighted = float(per_split(torch.ones_like(p)).mean())  # biased: the weights are what make it match
    assert abs(unweighted - full) > 0.2 * full


def test_ei_loss_is_zero_for_equivariant_identity_on_full_data():
    size = 8
    x = torch.randn(2, size, size, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    A = Sense(coil_maps(2, size, size).expand(2, -1, -1, -1), torch.ones(1, 1, size, size))
    y = A(x)
    ei = EquivariantImaging(transforms="rot90|flip|shift", seed=0)
    for _ in range(6):  # several draws of T
        assert float(ei(_adjoint_model(y, A), y, A, _adjoint_model)) < 1e-10

    weight = torch.linspace(0.5, 1.5, size).reshape(1, size, 1)  # position-dependent: not equivariant

    def shaded(y, A):
        return weight * A.adjoint(y)

    vals = [float(ei(shaded(y, A), y, A, shaded)) for _ in range(6)]
    assert max(vals) > 1e-3


def test_losses_return_differentiable_scalars_through_a_network():
    b = _batch()
    net = ToyNet()
    for name in ["l2", "l1", "ssim", "mc", "ssdu", "wssdu", "ei"]:
        net.zero_grad()
        loss = make_loss(name)(net(b.y, b.A), b.y, b.A, net, b.x)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert net.conv1.weight.grad.abs().sum() > 0, name


def test_psnr_loss_gradient_is_finite_where_output_equals_target():
    b = _batch()
    x_hat = b.x.clone().requires_grad_(True)
    x = b.x.clone()
    x[0] = 0
    x_hat.data[0] = 0  # an all-zero example with an exact prediction
    make_loss("psnr")(x_hat, b.y, b.A, _adjoint_model, x).backward()
    assert torch.isfinite(x_hat.grad).all()
