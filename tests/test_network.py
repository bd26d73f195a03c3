"""Properties of the unrolled networks (mpcli/recon/network.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mpcli.physics.sense import Sense
from mpcli.recon.network import (
    ARCH_VERSION,
    PDNet,
    ResUnroll,
    build_network,
    default_config,
)

SMALL = {
    "pdnet": {"arch": "pdnet", "layers": 3, "filters": 4},
    "resunroll": {"arch": "resunroll", "iters": 2, "features": 4, "depth": 3},
    "modl": {"arch": "modl", "iters": 2, "features": 4, "depth": 3, "cg_iters": 3},
    "modl_unet": {"arch": "modl", "iters": 2, "features": 4, "levels": 3, "denoiser": "unet", "cg_iters": 3},
    "resunroll_unet": {"arch": "resunroll", "iters": 2, "features": 4, "levels": 2, "denoiser": "unet"},
}
ARCHS = sorted(SMALL)


def _problem(b: int, c: int, h: int, w: int, seed: int = 0, accel: float = 0.4):
    """A random SENSE problem with Σ|S|² = 1 and a random line mask."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(b, c, h, w, dtype=torch.complex64, generator=g)  # [B, C, H, W]
    maps = maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()
    mask = (torch.rand(1, 1, 1, w, generator=g) < accel).float()  # [1, 1, 1, W]
    mask[..., w // 2] = 1.0
    A = Sense(maps, mask)
    x = torch.randn(b, h, w, dtype=torch.complex64, generator=g)  # [B, H, W]
    return A, x, A(x)


def _net(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(SMALL[arch])



@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(2, 3, 17, 24), (1, 5, 20, 13)])
def test_network_output_shape_and_dtype(arch, shape):
    A, _, y = _problem(*shape)
    out = _net(arch)(y, A)
    assert out.shape == (shape[0], shape[2], shape[3])
    assert out.dtype == torch.complex64
    assert torch.isfinite(out.abs()).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_network_scale_equivariant(arch):
    A, _, y = _problem(2, 3, 16, 16)
    net = _net(arch)
    with torch.no_grad():
        ref = net(y, A)
        for c in (1e-3, 7.5, 250.0):
            out = net(c * y, A)
            err = (out - c * ref).abs().max() / (c * ref).abs().max()
            assert err < 1e-4, (c, float(err))


@pytest.mark.parametrize("arch", ARCHS)
def test_functional_call_equals_module_call(arch):
    A, _, y = _problem(2, 4, 16, 12)
    net = _net(arch)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    with torch.no_grad():
        assert torch.equal(functional_call(net, params, (y, A)), net(y, A))
        moved = {k: v + 0.05 for k, v in params.items()}
        assert not torch.allclose(functional_call(net, moved, (y, A)), net(y, A))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_every_parameter(arch):
    A, x, y = _problem(2, 3, 16, 16)
    net = _net(arch)
    loss = (net(y, A) - x).abs().pow(2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _landweber(y, A, steps):
    x = A.adjoint(y)
    for t in steps:
        x = x - t * A.adjoint(A(x) - y)
    return x


def test_pdnet_zero_threshold_is_landweber():
    """λ_k → 0 keeps the dual at 0: PDNet reduces to x ← x − τ_k Aᴴ(Ax − y)."""
    A, _, y = _problem(2, 3, 16, 16)
    net = PDNet(layers=4, filters=4)
    with torch.no_grad():
        net.rho_lambda.fill_(-60.0)  # softplus(-60) ≈ 1e-26
        net.rho_tau.copy_(torch.tensor([0.1, -0.3, 0.5, 0.2]))
        tau = F.softplus(net.rho_tau)
        assert torch.allclose(net(y, A), _landweber(y, A, tau), rtol=1e-4, atol=1e-5)


def test_resunroll_zero_cnn_is_landweber():
    """With the CNN output layer at zero, ResUnroll is gradient descent on ½‖Ax − y‖²."""
    A, _, y = _problem(2, 3, 16, 16)
    net = ResUnroll(iters=3, features=4, depth=3)
    with torch.no_grad():
        net.denoisers[0].convs[-1].weight.zero_()
        net.denoisers[0].convs[-1].bias.zero_()
        eta = F.softplus(net.rho_eta)
        assert torch.allclose(net(y, A), _landweber(y, A, eta), rtol=1e-4, atol=1e-5)


def test_modl_zero_cnn_is_proximal_point_on_least_squares():
    """With the CNN output at zero, z_k = x_{k-1}: MoDL is x₀ = (AᴴA + μI)⁻¹Aᴴy followed by
    proximal-point steps x_k = (AᴴA + μI)⁻¹(Aᴴy + μx_{k-1}) — checked against exact solves."""
    from mpcli.recon.cg import conjugate_gradient
    from mpcli.recon.network import MoDL

    A, _, y = _problem(2, 3, 16, 16)
    net = MoDL(iters=3, features=4, depth=3, cg_iters=80, mu=0.05)
    with torch.no_grad():
        net.denoiser.convs[-1].weight.zero_()
        net.denoiser.convs[-1].bias.zero_()
        mu = float(F.softplus(net.rho_mu))

        def normal(v):
            return A.adjoint(A.forward(v)) + mu * v

        aty = A.adjoint(y)
        x, _ = conjugate_gradient(normal, aty, iters=400, tol=1e-12)
        for _ in range(3):
            x, _ = conjugate_gradient(normal, aty + mu * x, iters=400, tol=1e-12)
        residuals = [float((A(v) - y).abs().norm()) for v in (x,)]
        assert torch.allclose(net(y, A), x, rtol=1e-3, atol=1e-4 * float(x.abs().max())), residuals


def test_pdnet_init_satisfies_condat_vu():
    """At initialisation 1/τ − γ‖W_k‖² > ‖A‖²/2 = 1/2 for every layer (‖A‖ ≤ 1)."""
    torch.manual_seed(1)
    net = PDNet(layers=5, filters=40)
    tau, gamma = F.softplus(net.rho_tau), F.softplus(net.rho_gamma)
    for k in range(net.layers):
        # ‖W‖² ≤ max over frequencies of λ_max(Ŵ(ω)ᴴŴ(ω)) (circular bound, exact
        # for the periodic convolution, an upper bound for zero padding)
        what = torch.fft.fft2(net.weight[k].detach(), s=(32, 32))  # [F, 2, 32, 32]
        gram = torch.einsum("fiuv,fjuv->uvij", what.conj(), what)  # [32, 32, 2, 2]
        norm2 = torch.linalg.eigvalsh(gram).max()
        assert 1 / tau[k] - gamma[k] * norm2 > 0.5


def test_pdnet_reconstruction_beats_zero_filling_when_fully_sampled():
    """Fully sampled, noiseless, Σ|S|² = 1: Aᴴy = x, and the default net stays near x."""
    A, x, y = _problem(1, 4, 24, 24, accel=2.0)
    net = PDNet()
    with torch.no_grad():
        out = net(y, A)
    assert ((out - x).norm() / x.norm()) < 0.1


def test_build_network_configs():
    assert isinstance(ARCH_VERSION, int)
    for arch, cls in (("pdnet", PDNet), ("resunroll", ResUnroll)):
        cfg = default_config(arch)
        assert cfg["arch"] == arch
        assert isinstance(build_network(cfg), cls)
    assert build_network({"arch": "pdnet", "layers": 2}).layers == 2
    with pytest.raises(ValueError):
        build_network({"arch": "unet"})
    with pytest.raises(ValueError):
        build_network({"arch": "pdnet", "nonsense": 1})


def test_unet_denoiser_keeps_any_shape_and_starts_small():
    """The U-Net pads to a multiple of 2^(levels−1) and crops back; its last layer starts at 0.1×."""
    from mpcli.recon.network import _UNet

    torch.manual_seed(0)
    d = _UNet(4, 4)
    for h, w in ((17, 24), (8, 8), (33, 9)):
        z = torch.randn(2, 2, h, w)
        assert d(z).shape == (2, 2, h, w)
    assert float(d.out.bias.detach().abs().max()) == 0.0


def test_modl_unet_size_and_weight_file_round_trip(tmp_path):
    from mpcli.io.weights import load_model, save_weights
    from mpcli.recon.network import MODL_UNET

    torch.manual_seed(0)
    net = build_network(MODL_UNET)
    n = sum(p.numel() for p in net.parameters())
    assert 400_000 < n < 600_000 and n * 4 < 20e6  # the 482k-parameter U-Net, well under 20 MB
    sd = {k: v.detach() for k, v in net.named_parameters()}
    path = tmp_path / "w.safetensors"
    save_weights(path, sd, {"arch": "modl", "config": MODL_UNET})
    model, _ = load_model(path)
    A, _, y = _problem(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(y, A), net(y, A))


@pytest.mark.parametrize("bad", [{"levels": 99}, {"features": 10**6}, {"iters": -1}, {"denoiser": "vit"},
                                 {"mu": "1"}, {"levels": True}])
def test_build_network_rejects_out_of_bounds_configs(bad):
    """A weight file's configuration is untrusted: absurd sizes are refused before building."""
    with pytest.raises(ValueError):
        build_network({"arch": "modl", "denoiser": "unet", **bad})


def test_build_network_rejects_too_many_parameters():
    with pytest.raises(ValueError, match="parameters"):
        build_network({"arch": "modl", "denoiser": "unet", "features": 256, "levels": 4})


def test_adaptive_mu_starts_as_plain_modl_and_learns_per_scan_mu():
    """mu_weights = 0 gives exactly the plain MoDL; non-zero weights make μ depend on the scan
    (acquired fraction, coils, noise) and keep the network scale-equivariant."""
    from mpcli.recon.network import acquisition_features

    plain, adaptive = SMALL["modl_unet"], {**SMALL["modl_unet"], "adaptive_mu": True}
    torch.manual_seed(0)
    a = build_network(plain)
    torch.manual_seed(0)
    b = build_network(adaptive)
    assert set(dict(b.named_parameters())) - set(dict(a.named_parameters())) == {"mu_weights"}
    A, _, y = _problem(2, 3, 16, 20, seed=3)
    with torch.no_grad():
        assert torch.equal(a(y, A), b(y, A))
        phi = acquisition_features(y, A)
        assert phi.shape == (2, 3) and torch.isfinite(phi).all()
        assert torch.allclose(phi[:, 0], (A.mask.mean()).log() - torch.log(torch.tensor(0.25)))
        assert torch.allclose(phi[:, 1], torch.log(torch.tensor(3 / 8)).expand(2))
        b.mu_weights.copy_(torch.tensor([0.0, 1.0, 0.0]))
        mu = b.mu(y, A).flatten()
        assert torch.allclose(mu, F.softplus(b.rho_mu + phi[:, 1]))
        assert not torch.equal(a(y, A), b(y, A))
        assert torch.allclose(b(7.0 * y, A), 7.0 * b(y, A), rtol=1e-4, atol=1e-5)


def test_acquisition_features_track_acceleration_coils_and_noise():
    from mpcli.recon.network import acquisition_features

    g = torch.Generator().manual_seed(0)
    y = 0.005 * torch.randn(1, 4, 32, 32, dtype=torch.complex64, generator=g)  # σ̂ below the reference
    full = Sense(torch.ones(1, 4, 32, 32, dtype=torch.complex64) / 2, torch.ones(1, 1, 32, 32))
    half = Sense(full.maps, (torch.arange(32) % 2 == 0).float().reshape(1, 1, 1, 32))
    f_full, f_half = acquisition_features(y, full), acquisition_features(y * half.mask, half)
    assert float(f_half[0, 0]) == pytest.approx(float(f_full[0, 0]) - math.log(2.0), abs=1e-5)
    assert float(acquisition_features(3 * y, full)[0, 2]) == pytest.approx(float(f_full[0, 2]) + math.log(3.0),
                                                                            abs=1e-4)
    assert float(acquisition_features(1e6 * y, full)[0, 2]) == 3.0  # clipped to the trained range


def test_noise_feature_reads_calibration_noise_and_falls_back_to_the_ring():
    """The ``noise`` feature is log σ̂ of :func:`noise_level` (which scales with the data) where
    the calibration region has enough windows, and the ring level read as noise
    (median |n| = σ·√ln 2) where it has not; the feature list decides the columns."""
    from mpcli.physics.coils import noise_level
    from mpcli.recon.network import FEATURE_REF, RAYLEIGH_MEDIAN, acquisition_features

    g = torch.Generator().manual_seed(1)
    lines = (torch.arange(96) % 3 == 0) | ((torch.arange(96) - 48).abs() < 10)  # 1-D mask, 20-line centre
    A = Sense(torch.ones(1, 4, 96, 96, dtype=torch.complex64) / 2, lines.float().reshape(1, 1, 1, 96))
    y = 0.02 * torch.randn(1, 4, 96, 96, dtype=torch.complex64, generator=g) * A.mask
    phi = acquisition_features(y, A, ("noise", "coils"))
    sigma = noise_level(y[0], A.mask.expand(1, 1, 96, 96)[0, 0] > 0)
    assert sigma == pytest.approx(0.02, rel=0.15)  # pure noise: σ read back
    assert float(phi[0, 0]) == pytest.approx(math.log(sigma) - FEATURE_REF["noise"], abs=1e-5)
    assert float(phi[0, 1]) == pytest.approx(math.log(4 / 8), abs=1e-6)
    assert float(acquisition_features(5 * y, A, ("noise",))[0, 0]) == pytest.approx(float(phi[0, 0]) + math.log(5),
                                                                                   abs=1e-4)
    square = torch.zeros(96, 96)
    square[44:52, 44:52] = 1.0  # an 8 × 8 calibration square: too few windows, so the ring stands in
    square[::4, ::4] = 1.0
    B = Sense(A.maps, square.reshape(1, 1, 96, 96))
    y = 0.02 * torch.randn(1, 4, 96, 96, dtype=torch.complex64, generator=g) * B.mask
    ring, noise = acquisition_features(y, B, ("ring", "noise"))[0]
    assert abs(float(ring)) < 1.0  # not clipped: the identity below is not one of ±3
    assert float(noise) == pytest.approx(float(ring) - math.log(RAYLEIGH_MEDIAN), abs=1e-5)
    with pytest.raises(ValueError, match="unknown μ feature"):
        acquisition_features(y, A, ("snr",))


def test_mu_features_choose_the_weights_and_grow_without_changing_the_function():
    from mpcli.recon.network import remap_mu_weights

    config = {**SMALL["modl_unet"], "adaptive_mu": True}
    torch.manual_seed(0)
    three = build_network(config)
    torch.manual_seed(0)
    four = build_network({**config, "mu_features": ["fraction", "coils", "ring", "noise"]})
    assert three.mu_weights.shape == (3,) and four.mu_weights.shape == (4,)
    with torch.no_grad():
        three.mu_weights.copy_(torch.tensor([0.5, -0.3, 0.2]))
        four.mu_weights.copy_(remap_mu_weights(three.mu_weights, three.mu_features, four.mu_features))
        A, _, y = _problem(2, 3, 16, 20, seed=3)
        assert torch.allclose(three(y, A), four(y, A), atol=1e-6)
    assert remap_mu_weights(torch.tensor([1.0, 2.0]), ("coils", "ring"), ("ring", "noise", "coils")).tolist() \
        == [2.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="only grow"):
        remap_mu_weights(torch.tensor([1.0, 2.0]), ("coils", "ring"), ("coils",))
    for bad in ([], ["ring", "ring"], ["fraction", "snr"], "noise"):
        with pytest.raises(ValueError, match="mu_features"):
            build_network({**config, "mu_features": bad})


def test_adaptive_mu_weight_file_round_trip(tmp_path):
    from mpcli.io.weights import load_model, save_weights

    config = {**SMALL["modl_unet"], "adaptive_mu": True}
    net = build_network(config)
    with torch.no_grad():
        net.mu_weights.copy_(torch.tensor([0.5, -1.0, 0.25]))
    path = tmp_path / "w.safetensors"
    save_weights(path, dict(net.named_parameters()), {"arch": "modl", "config": config})
    loaded, _ = load_model(path, "cpu")
    assert torch.equal(loaded.mu_weights, net.mu_weights)
    with pytest.raises(ValueError, match="adaptive_mu"):
        build_network({**config, "adaptive_mu": 1})
