"""Properties of the inner loop (mpcli.meta.inner) and the parameter-dict helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mpcli.meta.functional import (
    bind,
    params_of,
    proximity,
    tree_dot,
    tree_sqnorm,
    tree_sub,
)
from mpcli.meta.inner import init_opt_state, inner_loop, inner_step
from mpcli.meta.losses import make_loss

sys.path.insert(0, str(Path(__file__).parent))
from ddp_script import ToyNet, ToyTask


def _setup(seed=0):
    torch.manual_seed(seed)
    model = ToyNet().double()
    batch = ToyTask(size=8, coils=2, accel=2, dtype=torch.complex128).sample(2, torch.Generator().manual_seed(seed))
    return model, batch


def test_tree_helpers():
    a = {"u": torch.tensor([1.0, 2.0]), "v": torch.tensor([[3.0]])}
    b = {"u": torch.tensor([0.5, 0.0]), "v": torch.tensor([[1.0]])}
    assert float(tree_sqnorm(a)) == 14.0
    assert float(tree_dot(a, b)) == 3.5
    assert float(proximity(a, b)) == pytest.approx(0.5 * (0.25 + 4 + 4))
    assert torch.equal(tree_sub(a, b)["u"], torch.tensor([0.5, 2.0]))


def test_inner_loop_never_modifies_theta_and_returns_new_dicts():
    model, batch = _setup()
    theta = params_of(model, requires_grad=True)
    before = {k: v.detach().clone() for k, v in theta.items()}
    for opt in ("sgd", "adam"):
        phi = inner_loop(model, theta, batch, make_loss("mc"), steps=3, lr=0.05, lam=0.1, optimizer=opt)
        assert phi is not theta and set(phi) == set(theta)
        assert all(torch.equal(theta[k], before[k]) for k in theta)
        assert any(not torch.equal(phi[k], theta[k]) for k in theta)
    assert all(torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())


def test_sgd_steps_follow_the_proximal_gradient():
    """φ_{k+1} = φ_k − η(∇L(φ_k) + λ(φ_k − θ)), checked against a hand-written loop."""
    model, batch = _setup(1)
    loss = make_loss("mc")
    theta = params_of(model)
    lr, lam = 0.1, 0.7
    phi = inner_loop(model, theta, batch, loss, steps=3, lr=lr, lam=lam, create_graph=False)
    ref = {k: v.clone() for k, v in theta.items()}
    for _ in range(3):
        leaf = {k: v.detach().requires_grad_(True) for k, v in ref.items()}
        f = bind(model, leaf)
        value = loss(f(batch.y, batch.A), batch.y, batch.A, f)
        grads = torch.autograd.grad(value, list(leaf.values()))
        ref = {k: ref[k] - lr * (g + lam * (ref[k] - theta[k])) for k, g in zip(leaf, grads)}
    for k in theta:
        torch.testing.assert_close(phi[k], ref[k], rtol=1e-12, atol=1e-12)


def test_functional_adam_matches_torch_adam():
    """With ε = 0 the functional Adam is torch.optim.Adam step for step."""
    model, batch = _setup(2)
    loss = make_loss("mc")
    theta = params_of(model)
    phi, state = dict(theta), init_opt_state("adam", theta, eps=0.0)
    for _ in range(3):
        phi, state, _ = inner_step(model, phi, theta, batch, loss, lr=0.01, lam=0.0, opt_state=state)
    ref = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=0.01, eps=0.0)
    for _ in range(3):
        opt.zero_grad()
        f = bind(model, ref)
        loss(f(batch.y, batch.A), batch.y, batch.A, f).backward()
        opt.step()
    for k in theta:
        torch.testing.assert_close(phi[k].detach(), ref[k].detach(), rtol=1e-10, atol=1e-12)


def test_inner_step_reports_loss_and_decreases_it():
    model, batch = _setup(3)
    loss = make_loss("mc")
    theta = params_of(model)
    values = []
    inner_loop(model, theta, batch, loss, steps=5, lr=0.05, lam=0.0, create_graph=False,
               callback=lambda k, p, v: values.append(float(v)))
    assert len(values) == 5 and values[-1] < values[0]


def test_second_order_keeps_the_graph_and_first_order_cuts_it():
    model, batch = _setup(4)
    theta = params_of(model, requires_grad=True)
    loss = make_loss("mc")
    phi2 = inner_loop(model, theta, batch, loss, steps=2, lr=0.05, create_graph=True)
    phi1 = inner_loop(model, theta, batch, loss, steps=2, lr=0.05, create_graph=False)
    for k in theta:
        torch.testing.assert_close(phi1[k], phi2[k], rtol=1e-12, atol=1e-12)  # same values
    # First order: ∂φ/∂θ = I, so ⟨∂φ/∂θ, v⟩ = v.
    v = {k: torch.randn_like(t) for k, t in theta.items()}
    g1 = torch.autograd.grad(tree_dot(phi1, v), list(theta.values()))
    g2 = torch.autograd.grad(tree_dot(phi2, v), list(theta.values()))
    assert all(torch.equal(a, v[k]) for a, k in zip(g1, theta))
    assert any(not torch.allclose(a, v[k]) for a, k in zip(g2, theta))


@pytest.mark.parametrize("name, calls", [("ssdu", 1), ("wssdu", 1), ("mc", 1), ("ei", 2)])
def test_inner_step_runs_the_network_only_as_often_as_the_loss_needs(name, calls):
    """Splitting losses re-run the network on their own split: no forward on the full data."""
    model, batch = _setup()
    seen = []
    model.register_forward_hook(lambda *_: seen.append(1))
    theta = {k: v.detach() for k, v in params_of(model).items()}
    inner_step(model, theta, theta, batch, make_loss(name), lr=1e-2, lam=0.0)
    assert len(seen) == calls


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_chunked_inner_step_equals_whole_batch_step(lam):
    """Gradient accumulation over slice groups gives the whole-batch step (MC
    averages per-slice terms, so the group weights B_g/B make it exact)."""
    torch.manual_seed(0)
    model = ToyNet().double()
    batch = ToyTask(size=8, coils=2, accel=2, dtype=torch.complex128).sample(5, torch.Generator().manual_seed(1))
    theta = {k: v.detach() for k, v in params_of(model).items()}
    phi0 = {k: v + 0.01 * torch.randn_like(v) for k, v in theta.items()}
    # SGD: the step is the gradient itself (Adam's first step would hide a wrong scale)
    whole, _, v_whole = inner_step(model, phi0, theta, batch, make_loss("mc"), 1e-2, lam)
    parts, _, v_parts = inner_step(model, phi0, theta, batch, make_loss("mc"), 1e-2, lam, chunk=2)
    assert any(not torch.allclose(whole[k], phi0[k]) for k in whole)
    assert torch.allclose(v_whole, v_parts, rtol=1e-12)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], rtol=1e-10, atol=1e-12)


def test_per_parameter_step_sizes_freeze_and_scale():
    """lr as a dict: a parameter at 0 keeps its value (and gets no gradient), a parameter at
    2·lr moves exactly twice as far under SGD, and Adam's moments of frozen ones stay put."""
    model, batch = _setup()
    theta = {k: v.detach() for k, v in params_of(model).items()}
    names = list(theta)
    frozen, doubled = names[0], names[-1]
    rates = {k: 1e-2 for k in names}
    rates[frozen], rates[doubled] = 0.0, 2e-2
    plain, _, _ = inner_step(model, theta, theta, batch, make_loss("mc"), 1e-2, 0.0)
    mixed, _, _ = inner_step(model, theta, theta, batch, make_loss("mc"), rates, 0.0)
    assert torch.equal(mixed[frozen], theta[frozen]) and not torch.equal(plain[frozen], theta[frozen])
    torch.testing.assert_close(mixed[doubled] - theta[doubled], 2 * (plain[doubled] - theta[doubled]))
    for k in names[1:-1]:
        torch.testing.assert_close(mixed[k], plain[k])
    state = init_opt_state("adam", theta)
    _, state, _ = inner_step(model, theta, theta, batch, make_loss("mc"), rates, 0.0, state, chunk=1)
    assert torch.equal(state["m"][frozen], torch.zeros_like(theta[frozen])) and state["m"][doubled].abs().sum() > 0
    still, _, value = inner_step(model, theta, theta, batch, make_loss("mc"), {}, 0.0)
    assert all(torch.equal(still[k], theta[k]) for k in names) and torch.isfinite(value)
