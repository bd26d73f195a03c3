"""The paper's theory, checked on the meta-learning core.

Theorem 3.1 (Terris & Moreau): fine-tuning a linear model by gradient descent on
the measurement-only loss never moves θ in Ker(A). Lemma 3.2: on a Gaussian
masking task, meta-learning (unsupervised inner, supervised outer) recovers
θ_UO = Σ_UO Σ_OO⁻¹ and θ_OO = I. Then the hypergradient itself: second order
against finite differences, first order against the detached computation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mpcli.meta.functional import bind, params_of, tree_dot
from mpcli.meta.inner import inner_loop
from mpcli.meta.losses import make_loss, reseed
from mpcli.meta.train import hypergradient

sys.path.insert(0, str(Path(__file__).parent))
from ddp_script import ToyNet, ToyTask

N, M = 6, 3  # image size n, measurements m < n
O = [0, 2, 3]  # observed indices
U = [1, 4, 5]  # unobserved


class Linear(nn.Module):
    """f_θ(y) = θ y, θ ``[n, m]``; ``y`` ``[B, m]`` → ``[B, n]`` (A unused by the model)."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, y, A):
        return y @ self.theta.T


def _unsupervised(x_hat, y, A, model, x=None):
    """mean ‖A θ y − y‖² (measurement consistency of the linear model)."""
    return ((x_hat @ A.T - y) ** 2).sum(1).mean()


def _supervised(x_hat, y, A, model, x=None):
    return ((x_hat - x) ** 2).sum(1).mean()


def _row_selection() -> torch.Tensor:
    return torch.eye(N, dtype=torch.float64)[O]  # [m, n]


def _sigma(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(0.5, 2.0, N, dtype=torch.float64)) @ q.T


def test_finetuning_never_moves_theta_in_ker_A():
    g = torch.Generator().manual_seed(0)
    A = _row_selection()
    x = torch.randn(16, N, generator=g, dtype=torch.float64)
    batch = SimpleNamespace(y=x @ A.T, A=A, x=x)  # y = A x, [16, m]
    theta_star = torch.randn(N, M, generator=g, dtype=torch.float64)  # the meta-prior
    model = Linear(theta_star)
    ker = torch.eye(N, dtype=torch.float64) - torch.linalg.pinv(A) @ A  # Π_Ker(A) = I − A⁺A

    def run(loss, lam):
        path = []
        inner_loop(model, params_of(model), batch, loss, steps=60, lr=0.05, lam=lam, create_graph=False,
                   callback=lambda k, phi, v: path.append(phi["theta"].detach().clone()))
        return path

    for lam in (0.0, 0.3):
        path = run(_unsupervised, lam)
        for theta_t in path:
            assert float((ker @ (theta_t - theta_star)).norm()) < 1e-10
        assert float((path[-1] - theta_star).norm()) > 1e-2  # it did move, in the range of Aᵀ
    # Control: a supervised loss does move θ in Ker(A), so the projection has teeth.
    assert float((ker @ (run(_supervised, 0.0)[-1] - theta_star)).norm()) > 1e-2


def test_meta_linear_recovers_closed_form():
    sigma = _sigma()
    A = _row_selection()
    # N samples whose empirical second moment is exactly Σ: every quadratic loss
    # averaged over them equals its population expectation (no sampling noise).
    x = (torch.linalg.cholesky(sigma) * N**0.5).T  # [N samples, n], (1/N) xᵀx = Σ
    torch.testing.assert_close(x.T @ x / N, sigma)
    batch = SimpleNamespace(y=x @ A.T, A=A, x=x)
    model = Linear(torch.zeros(N, M, dtype=torch.float64))
    theta = {"theta": torch.randn(N, M, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
             .requires_grad_(True)}
    for _ in range(400):
        g, _, _ = hypergradient(model, theta, batch, batch, _unsupervised, _supervised, steps=2, lr=0.1)
        with torch.no_grad():
            theta["theta"] -= 0.2 * g["theta"]
    t = theta["theta"].detach()
    s_oo = sigma[O][:, O]
    s_uo = sigma[U][:, O]
    torch.testing.assert_close(t[O], torch.eye(M, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(t[U], s_uo @ torch.linalg.inv(s_oo), atol=1e-3, rtol=0)


def _tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = ToyNet(features=3).double()
    task = ToyTask(size=8, coils=2, accel=2, dtype=torch.complex128)
    b = task.sample(4, torch.Generator().manual_seed(seed))
    support = SimpleNamespace(x=b.x[:2], y=b.y[:2], A=type(b.A)(b.A.maps[:2], b.A.mask[:2]))
    query = SimpleNamespace(x=b.x[2:], y=b.y[2:], A=type(b.A)(b.A.maps[2:], b.A.mask[2:]))
    return model, support, query


@pytest.mark.parametrize("optimizer, inner", [("sgd", "ssdu"), ("adam", "mc")])
def test_second_order_hypergradient_matches_finite_differences(optimizer, inner):
    model, support, query = _tiny_problem()
    inner_loss, outer_loss = make_loss(inner), make_loss("l2")
    kw = {"steps": 3, "lr": 0.05 if optimizer == "sgd" else 0.01, "lam": 0.5, "optimizer": optimizer}

    def outer_value(theta):
        reseed(inner_loss, 0)  # the same splits at every evaluation
        phi = inner_loop(model, theta, support, inner_loss, create_graph=False, **kw)
        with torch.no_grad():
            return float(outer_loss(bind(model, phi)(query.y, query.A), query.y, query.A, None, query.x))

    theta = params_of(model, requires_grad=True)
    reseed(inner_loss, 0)
    g2, _, _ = hypergradient(model, theta, support, query, inner_loss, outer_loss, **kw)
    reseed(inner_loss, 0)
    g1, _, _ = hypergradient(model, theta, support, query, inner_loss, outer_loss, first_order=True, **kw)
    gen = torch.Generator().manual_seed(1)
    fd, ad, fo = [], [], []
    eps = 1e-5
    for _ in range(4):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in theta.items()}
        plus = {k: (theta[k] + eps * d[k]).detach() for k in theta}
        minus = {k: (theta[k] - eps * d[k]).detach() for k in theta}
        fd.append((outer_value(plus) - outer_value(minus)) / (2 * eps))
        ad.append(float(tree_dot(g2, d)))
        fo.append(float(tree_dot(g1, d)))
    fd, ad, fo = (torch.tensor(v, dtype=torch.float64) for v in (fd, ad, fo))
    assert float((ad - fd).norm() / fd.norm()) < 1e-4, (ad, fd)
    assert float((fo - fd).norm() / fd.norm()) > 1e-3  # first order is only an approximation


def test_first_order_equals_detached_computation():
    model, support, query = _tiny_problem(1)
    inner_loss, outer_loss = make_loss("mc"), make_loss("l2")
    kw = {"steps": 3, "lr": 0.05, "lam": 0.2, "optimizer": "sgd"}
    theta = params_of(model, requires_grad=True)
    g1, value, _ = hypergradient(model, theta, support, query, inner_loss, outer_loss, first_order=True, **kw)
    # Detached: run the inner loop without any graph, then differentiate the
    # outer loss at φ_N as a fresh leaf.
    phi = inner_loop(model, {k: v.detach() for k, v in theta.items()}, support, inner_loss,
                     create_graph=False, **kw)
    phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    f = bind(model, phi)
    ref_value = outer_loss(f(query.y, query.A), query.y, query.A, f, query.x)
    ref = torch.autograd.grad(ref_value, list(phi.values()))
    assert float(value) == pytest.approx(float(ref_value.detach()), rel=1e-12)
    for (k, r) in zip(phi, ref):
        torch.testing.assert_close(g1[k], r, rtol=1e-10, atol=1e-12)
