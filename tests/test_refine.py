"""CS around the network's image (mpcli.recon.refine): the held-out choice, the solve, and how
``mp adapt`` stores it and ``mp reconstruct --method adapted`` applies it."""

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
import torch

from mpcli.errors import EXIT_MODEL
from mpcli.io.readers import read_scans
from mpcli.io.weights import load_weights, save_weights
from mpcli.meta.adapt import AdaptConfig, adapt, heldout_loss, holdout, prior_params, scan_batch, take
from mpcli.meta.losses import acquired_mask, derive_seed
from mpcli.physics.coils import estimate_maps, rss, spectral_weight
from mpcli.physics.fft import ifft2c
from mpcli.recon.network import ARCH_VERSION, build_network
from mpcli.recon.refine import EPS, LAMS, LAMS_WEIGHTED, MUS, REWEIGHT, Refinement, choose_refinement
from tests.cli_helpers import mp, nonblank_lines
from tests.synthetic import synthetic_kspace, write_synthetic_fastmri

TINY = {"arch": "resunroll", "iters": 2, "features": 8, "depth": 2, "shared": True}
SHAPE = {"slices": 3, "coils": 4, "h": 32, "w": 32}


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    return write_synthetic_fastmri(tmp_path_factory.mktemp("refine") / "scan.h5", **SHAPE, acceleration=3)


def _noisy_network() -> torch.nn.Module:
    """A network with unit-variance random weights: a noise-like image that CS around it must improve."""
    gen = torch.Generator().manual_seed(0)
    model = build_network(TINY)
    model.load_state_dict({k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()})
    return model


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prior") / "prior.safetensors"
    save_weights(path, _noisy_network().state_dict(), {"arch": "resunroll", "arch_version": ARCH_VERSION,
                                                       "config": TINY})
    return path


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((x - ref) ** 2)))


def test_choice_is_lambda_at_mu_zero_then_mu_and_the_network_wins_without_gain():
    """λ is searched at μ = 0, then μ at the best λ; the network alone stays unless beaten by min_gain.
    The weighted L1 (default) searches its own λ grid, plain L1 (eps None) the tuned-CS one."""
    def loss(r):
        return 1.0 if r is None else abs(np.log10(r.lam) + 3) + abs(r.mu - 0.03) + 0.5

    choice, tried = choose_refinement(loss, iters=17, midpoints=False)
    assert choice == Refinement(1e-3, 0.03, 17, EPS)  # a second pass that scores the same is not kept
    assert [(t["lam"], t["mu"], t["reweighted"]) for t in tried] == [
        (None, None, []), *((lam, 0.0, []) for lam in LAMS_WEIGHTED), *((1e-3, mu, []) for mu in MUS),
        *((1e-3, 0.03, [1e-3 * f]) for f in REWEIGHT)]
    plain, tried = choose_refinement(loss, iters=17, eps=None, midpoints=False)
    assert plain == Refinement(1e-3, 0.03, 17) and plain.eps is None
    assert [t["lam"] for t in tried[1:1 + len(LAMS)]] == list(LAMS)
    assert all(t["reweighted"] == [] for t in tried)  # plain L1 has no weights to take again
    assert tried[0]["val"] == 1.0 and min(t["val"] for t in tried) == pytest.approx(0.5)
    assert choose_refinement(loss, min_gain=0.6)[0] is None  # 0.5 is not 60 % below 1.0
    assert choose_refinement(lambda r: 1.0 if r is None else 2.0)[0] is None


@pytest.mark.parametrize("optimum, chosen", [(1e-3, 1e-3), (1.5e-3, math.sqrt(1e-3 * 3e-3)),
                                             (6e-4, math.sqrt(3e-4 * 1e-3)), (5e-2, 3e-2), (1e-4, 3e-4)])
def test_midpoints_between_the_best_lambda_and_its_neighbours_are_tried_before_mu(optimum, chosen):
    """After the grid, √(λ_best λ_n) for each grid neighbour λ_n (one at the grid's edge), then μ at the
    better of the three; a loss whose optimum lies between grid steps is chosen there."""
    def loss(r):
        return 1.0 if r is None else abs(np.log10(r.lam / optimum)) + abs(r.mu - 0.03) + 0.1

    choice, tried = choose_refinement(loss, iters=17)
    grid = list(LAMS_WEIGHTED)
    best = min(grid, key=lambda lam: abs(np.log10(lam / optimum)))
    i = grid.index(best)
    between = [math.sqrt(best * grid[j]) for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    assert len(between) == (1 if best in (grid[0], grid[-1]) else 2)
    assert [(t["lam"], t["mu"]) for t in tried[:-len(REWEIGHT)]] == [
        (None, None), *((lam, 0.0) for lam in grid), *((lam, 0.0) for lam in between),
        *((choice.lam, mu) for mu in MUS)]
    assert choice.lam == pytest.approx(chosen) and choice.mu == 0.03


@pytest.mark.parametrize("factor", REWEIGHT)
def test_a_second_pass_at_a_factor_of_lambda_is_kept_where_it_scores_better(factor):
    """After μ, a second pass at λ·f for each f of REWEIGHT (at the chosen μ); the one pass stays unless one
    of them scores lower; none is tried without a reweighting grid."""
    def loss(r):
        if r is None:
            return 1.0
        first = abs(np.log10(r.lam) + 3) + abs(r.mu - 0.03) + 0.5
        return first - 0.1 * sum(math.isclose(lam, 1e-3 * factor) for lam in r.reweighted)

    choice, tried = choose_refinement(loss, iters=17, midpoints=False)
    assert choice == Refinement(1e-3, 0.03, 17, EPS, (pytest.approx(1e-3 * factor),))
    assert [t["reweighted"] for t in tried[-len(REWEIGHT):]] == [[pytest.approx(1e-3 * f)] for f in REWEIGHT]
    one, tried = choose_refinement(loss, iters=17, midpoints=False, reweight=())
    assert one == Refinement(1e-3, 0.03, 17, EPS) and all(t["reweighted"] == [] for t in tried)


def test_a_reweighted_pass_is_the_one_pass_around_the_first_pass_image(scan_file):
    """Refinement(λ, μ, n, ε, (λ₂,)) = Refinement(λ₂, μ, n, ε) applied to Refinement(λ, μ, n, ε)'s image, and
    differs from the one pass (its weights come from x̂₁, not z); a second pass needs the weighted L1."""
    scan = read_scans(scan_file)[0]
    batch = scan_batch(scan, estimate_maps(scan.kspace, scan.mask), torch.device("cpu"))
    z = 0.5 * batch.A.adjoint(batch.y)
    first = Refinement(3e-3, 0.01, 10, EPS).apply(batch.y, batch.A, z)
    both = Refinement(3e-3, 0.01, 10, EPS, (1e-3,)).apply(batch.y, batch.A, z)
    torch.testing.assert_close(both, Refinement(1e-3, 0.01, 10, EPS).apply(batch.y, batch.A, first))
    assert float((both - first).abs().max()) > 1e-3 * float(first.abs().max())
    with pytest.raises(ValueError, match="eps"):
        Refinement(3e-3, 0.0, 10, None, (1e-3,))


@pytest.mark.parametrize("bad", [None, {"lam": 1e-3, "mu": 0.0}, {"lam": -1.0, "mu": 0.0, "iters": 60},
                                 {"lam": 1e-3, "mu": float("nan"), "iters": 60},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 0}, {"lam": 1e-3, "mu": 0.0, "iters": 2.5},
                                 {"lam": "1e-3", "mu": 0.0, "iters": 60},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "x": 1},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": 0},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": float("inf")},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": "0.05"},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": 0.05, "reweighted": 1e-3},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": 0.05, "reweighted": [-1e-3]},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "eps": 0.05, "reweighted": ["1e-3"]},
                                 {"lam": 1e-3, "mu": 0.0, "iters": 60, "reweighted": [1e-3]}])
def test_a_stored_refinement_is_validated(bad):
    """A stored refinement round-trips; files from before the weighted L1 (no "eps") are plain L1, files
    from before the reweighted pass (no "reweighted") one pass."""
    with pytest.raises(ValueError):
        Refinement.from_dict(bad)
    assert Refinement.from_dict({"lam": 0, "mu": 0.1, "iters": 5}) == Refinement(0.0, 0.1, 5, None)
    weighted = Refinement(3e-3, 0.01, 45, 0.05)
    assert Refinement.from_dict(weighted.as_dict()) == weighted
    assert Refinement.from_dict({"lam": 3e-3, "mu": 0.01, "iters": 45, "eps": 0.05}) == weighted
    assert weighted.as_dict() == {"lam": 3e-3, "mu": 0.01, "iters": 45, "eps": 0.05}  # as stored before
    twice = Refinement(3e-3, 0.01, 45, 0.05, (1e-3,))
    assert Refinement.from_dict(json.loads(json.dumps(twice.as_dict()))) == twice
    assert Refinement.from_dict({"lam": 3e-3, "mu": 0.01, "iters": 45, "eps": None}).eps is None


def test_refinement_moves_a_poor_image_towards_the_data_and_large_mu_keeps_it(scan_file):
    """μ = 0: the iterations lower ‖A x − y‖ from a start image that is off by a factor; μ → ∞: x̂ = z."""
    scan = read_scans(scan_file)[0]
    batch = scan_batch(scan, estimate_maps(scan.kspace, scan.mask), torch.device("cpu"))
    truth = batch.A.adjoint(batch.y)  # a blurred, aliased image; scaled by ½ it is a poor start
    z = 0.5 * truth

    def residual(x):
        return float((batch.A(x) - batch.y).abs().pow(2).sum())

    free = Refinement(1e-4, 0.0, 30).apply(batch.y, batch.A, z)
    assert free.shape == z.shape and residual(free) < 0.05 * residual(z)
    held = Refinement(1e-4, 1e6, 30).apply(batch.y, batch.A, z)
    assert torch.allclose(held, z, atol=1e-3 * float(z.abs().max()))


def test_adapt_scores_the_network_and_each_candidate_on_the_held_out_samples(scan_file):
    """The result carries the choice with the lowest held-out loss, or none; refine=False tries nothing."""
    scan = read_scans(scan_file)[0]
    batch = scan_batch(scan, estimate_maps(scan.kspace, scan.mask), torch.device("cpu"))
    model = _noisy_network()
    res = adapt(model, prior_params(model), [batch], AdaptConfig(steps=1, slices_per_step=2, max_prior_error=math.inf, min_calibration=0))
    grid = res.refine_search[1:1 + len(LAMS_WEIGHTED)]
    assert res.refine_search[0]["lam"] is None and [t["lam"] for t in grid] == list(LAMS_WEIGHTED)
    midpoints = res.refine_search[1 + len(grid):-len(MUS) - len(REWEIGHT)]  # one at the grid's edge, two inside
    assert len(midpoints) in (1, 2) and all(t["mu"] == 0.0 for t in midpoints)
    best = min(res.refine_search, key=lambda t: t["val"])
    expected = {"lam": best["lam"], "mu": best["mu"], "iters": AdaptConfig().refine_iters, "eps": EPS}
    assert res.refine == ({**expected, "reweighted": best["reweighted"]} if best["reweighted"] else expected)
    assert best["lam"] is not None
    off = adapt(model, prior_params(model), [batch], AdaptConfig(steps=1, slices_per_step=2, refine=False,
                                                                   max_prior_error=math.inf, min_calibration=0))
    assert off.refine is None and off.refine_search == []


@pytest.mark.parametrize("slices", [3, 1])
def test_adapt_scores_the_candidates_by_the_whitened_held_out_error(scan_file, slices):
    """With ``refine_whiten`` (default) the network's held-out error is ‖w^½(A_Γ z − y_Γ)‖² / ‖w^½ y_Γ‖²,
    w = 1 / radial k-space power of the scored slices' acquired samples; without it, unweighted. A scan
    of one slice (fewer than ``refine_slices``) is scored on a second draw of Γ too, the errors averaged.
    Every candidate also carries its unweighted error."""
    scan = read_scans(scan_file)[0]
    batch = take(scan_batch(scan, estimate_maps(scan.kspace, scan.mask), torch.device("cpu")), torch.arange(slices))
    model = _noisy_network()
    config = AdaptConfig(steps=0, mu_factors=(), max_prior_error=math.inf, min_calibration=0)
    train, val = holdout(batch, config.val_fraction, derive_seed(config.seed, 0, 17))
    pick = torch.randperm(slices, generator=torch.Generator().manual_seed(derive_seed(config.seed, 1)))
    pick = pick[: config.val_slices].sort().values[: config.refine_slices]
    scored = take(batch, pick)
    held = [(take(train, pick), take(val, pick))]  # the split the steps use
    if slices < config.refine_slices:
        held.append(holdout(scored, config.val_fraction, derive_seed(config.seed, 0, 31, 1)))
    w = spectral_weight(scored.y, acquired_mask(scored.y, scored.A))
    with torch.no_grad():
        zs = [model(t.y, t.A) for t, _ in held]
    by_hand = {True: np.mean([heldout_loss(z, g, w) for z, (_, g) in zip(zs, held)]),
               False: np.mean([heldout_loss(z, g) for z, (_, g) in zip(zs, held)])}
    assert by_hand[True] != pytest.approx(by_hand[False], rel=1e-3)
    if slices == 1:  # the second draw counts: the first alone scores differently
        assert by_hand[False] != pytest.approx(heldout_loss(zs[0], held[0][1]), rel=1e-3)
    for whiten, expected in by_hand.items():
        res = adapt(model, prior_params(model), [batch], dataclasses.replace(config, refine_whiten=whiten))
        assert res.refine_search[0]["lam"] is None
        assert res.refine_search[0]["val"] == pytest.approx(expected, rel=1e-5)
        assert res.refine_search[0]["val_unweighted"] == pytest.approx(by_hand[False], rel=1e-5)
        assert all(t["val_unweighted"] == t["val"] for t in res.refine_search) is not whiten
        # a second pass is scored from its first pass's kept images: as if solved from z
        t = res.refine_search[-1]
        r = Refinement(t["lam"], t["mu"], config.refine_iters, EPS, tuple(t["reweighted"]))
        by_hand_two = np.mean([heldout_loss(r.apply(tr.y, tr.A, z), g) for z, (tr, g) in zip(zs, held)])
        assert t["reweighted"] and t["val_unweighted"] == pytest.approx(by_hand_two, rel=1e-4)


@pytest.mark.parametrize("field", ["refine_iters", "refine_slices"])
def test_the_refinement_budget_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        AdaptConfig(**{field: 0})


def test_adapt_stores_the_choice_and_reconstruct_applies_it(scan_file, prior_file, tmp_path):
    """mp adapt --recon and mp reconstruct --method adapted give the same refined image, closer to the
    fully sampled reference than the network alone (--no-refine), which is stored as no refinement."""
    full = rss(ifft2c(torch.from_numpy(synthetic_kspace(**SHAPE)))).numpy()  # [S, H, W]
    images = {}
    for name, flag in (("refined", []), ("network", ["--no-refine"])):
        weights, recon = tmp_path / f"{name}.safetensors", tmp_path / name
        res = mp("adapt", "--kspace", scan_file, "--prior", prior_file, "--out", weights, "--steps", "1",
                 "--recon", recon, "--format", "h5", "--json", "--keep-prior-above", "inf", "--min-calibration", "0", *flag)
        assert res.exit_code == 0, res.stderr
        summary, meta = json.loads(res.stdout), load_weights(weights)[1]
        assert summary["refine"] == meta["refine"]
        def key(d):
            return d["lam"], d["mu"], d.get("reweighted", [])

        chosen = (None, None, []) if meta["refine"] is None else key(meta["refine"])
        refined = [t["val_unweighted"] for t in meta["refine_search"] if key(t) == chosen]
        assert summary["val_loss_refined"] == (refined[0] if refined else None)  # comparable with val_loss_best
        with h5py.File(recon / "scan.h5") as f:
            images[name] = f["reconstruction"][()]
        again = mp("reconstruct", scan_file, "--out", tmp_path / f"{name}_again", "--method", "adapted",
                   "--model", weights, "--format", "h5")
        assert again.exit_code == 0, again.stderr
        with h5py.File(tmp_path / f"{name}_again" / "scan.h5") as f:
            np.testing.assert_allclose(f["reconstruction"][()], images[name], rtol=1e-4, atol=1e-6)
    assert meta["refine"] is None and meta["refine_search"] == []  # the --no-refine file
    assert load_weights(tmp_path / "refined.safetensors")[1]["refine"]["iters"] == AdaptConfig().refine_iters
    assert _psnr(images["refined"], full) > _psnr(images["network"], full) + 3


def test_mp_adapt_keeps_a_prior_that_cannot_predict_the_held_out_kspace(scan_file, prior_file, tmp_path):
    """By default the noise-like prior (held-out error ≫ 1) is kept as it is: the summary says why,
    nothing is refined, the weights file holds the prior's weights and the reason."""
    weights = tmp_path / "kept.safetensors"
    res = mp("adapt", "--kspace", scan_file, "--prior", prior_file, "--out", weights, "--json",
             "--min-calibration", "0")  # the scan's 5 calibration lines would keep the prior first
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert "no better than zeros" in summary["kept_prior"] and summary["val_loss_prior"] >= 1
    assert summary["refine"] is None and summary["steps"] == 0 and summary["distance_to_prior"] == 0
    state, meta = load_weights(weights)
    prior_state, _ = load_weights(prior_file)
    assert meta["kept_prior"] == summary["kept_prior"]
    assert all(torch.equal(state[k], prior_state[k]) for k in prior_state)


def test_mp_adapt_keeps_the_prior_when_the_maps_come_from_few_calibration_lines(scan_file, prior_file, tmp_path,
                                                                                caplog):
    """The synthetic scan has 5 calibration lines (< 7): the prior is kept whatever its held-out error, and
    the summary, the weights file and a logged warning (stderr outside pytest) say why; a negative --min-calibration is a
    one-line usage error (exit 2) that writes nothing."""
    weights = tmp_path / "kept.safetensors"
    res = mp("adapt", "--kspace", scan_file, "--prior", prior_file, "--out", weights, "--json",
             "--keep-prior-above", "inf")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert "5 fully sampled centre lines, fewer than 7" in summary["kept_prior"]
    assert any("5 fully sampled centre lines, fewer than 7" in r.getMessage() for r in caplog.records)
    assert summary["refine"] is None and summary["steps"] == 0 and summary["distance_to_prior"] == 0
    assert load_weights(weights)[1]["kept_prior"] == summary["kept_prior"]
    bad = mp("adapt", "--kspace", scan_file, "--prior", prior_file, "--out", tmp_path / "no.safetensors",
             "--min-calibration", "-1")
    assert bad.exit_code == 2 and len(nonblank_lines(bad.stderr)) == 1 and "--min-calibration" in bad.stderr
    assert not (tmp_path / "no.safetensors").exists()


def test_a_bad_stored_refinement_is_a_model_error(scan_file, prior_file, tmp_path):
    state, meta = load_weights(prior_file)
    bad = tmp_path / "bad.safetensors"
    save_weights(bad, state, {**{k: v for k, v in meta.items() if k != "sha256"},
                              "refine": {"lam": -1, "mu": 0, "iters": 60}})
    res = mp("reconstruct", scan_file, "--out", tmp_path / "out", "--method", "adapted", "--model", bad)
    assert res.exit_code == EXIT_MODEL, res.output
    assert "bad refinement" in res.stderr and str(bad.name) in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())



def test_the_adapt_summary_names_a_second_pass():
    """mp adapt's table says when the refinement runs a second, reweighted pass, and with which λ."""
    from mpcli.cli import _refine_cell

    two = _refine_cell(Refinement(3e-3, 0.0, 45, EPS, (1e-3,)).as_dict(), off=False)
    assert "λ 0.003" in two and "then again around that image with λ 0.001" in two
    assert "then again" not in _refine_cell(Refinement(3e-3, 0.0, 45, EPS).as_dict(), off=False)
