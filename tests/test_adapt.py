"""Adaptation: proximity to the prior, early stopping, never touching inputs."""

import dataclasses
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from mpcli.cli import app
from mpcli.io.readers import read_scans
from mpcli.io.weights import load_weights, save_weights
from mpcli.meta.adapt import (
    AdaptConfig,
    EarlyStopping,
    SiteBatch,
    adapt,
    heldout_loss,
    holdout,
    prior_params,
    scan_batch,
)
from mpcli.physics.coils import centred_acs_width, estimate_maps
from mpcli.physics.sense import sense
from mpcli.recon.network import ARCH_VERSION, build_network
from mpcli.scan import file_sha256
from tests.synthetic import line_mask, synthetic_kspace, write_synthetic_fastmri

# The tiny networks here are random, not trained priors: they predict held-out k-space far worse than
# zeros would, and the synthetic scans have 5 calibration lines; adapt() keeps the prior unchanged for
# either reason (AdaptConfig.max_prior_error, min_calibration) unless told not to.
RANDOM = math.inf
UNGUARDED = {"max_prior_error": RANDOM, "min_calibration": 0}

TINY = {"arch": "resunroll", "iters": 2, "features": 8, "depth": 2, "shared": True}


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    return write_synthetic_fastmri(d / "scan.h5", slices=3, coils=4, h=32, w=32, acceleration=3)


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prior") / "prior.safetensors"
    save_weights(path, build_network(TINY).state_dict(),
                 {"arch": "resunroll", "arch_version": ARCH_VERSION, "config": TINY})
    return path


@pytest.fixture(scope="module")
def batch(scan_file):
    scan = read_scans(scan_file)[0]
    return scan_batch(scan, estimate_maps(scan.kspace, scan.mask), torch.device("cpu"))


def test_early_stopping_triggers_on_crafted_curve():
    stopper = EarlyStopping(patience=3)
    curve = [1.0, 0.8, 0.7, 0.69999, 0.71, 0.9, 0.95, 0.5]
    stop_at = next(k for k, v in enumerate(curve) if stopper.update(k, v))
    assert stop_at == 5  # steps 3, 4, 5: no relative improvement on 0.7
    assert stopper.best_step == 2 and stopper.best == 0.7


def test_early_stopping_never_triggers_while_improving():
    stopper = EarlyStopping(patience=2)
    assert not any(stopper.update(k, 1.0 / (k + 1)) for k in range(20))


def test_a_step_must_beat_the_prior_by_min_gain_to_be_kept(batch):
    """With min_gain 0 the tiny prior adapts (its self-validation loss falls); demanding more
    than any step achieves keeps θ* itself (best step 0), whatever the curve did."""
    torch.manual_seed(0)
    model = build_network(TINY)
    theta = prior_params(model)
    free = adapt(model, theta, [batch], AdaptConfig(steps=4, patience=100, slices_per_step=2, min_gain=0.0, **UNGUARDED))
    assert free.best_step > 0 and free.curve[free.best_step]["val"] < free.curve[0]["val"]
    gain = 1 - min(r["val"] for r in free.curve[1:]) / free.curve[0]["val"]
    strict = adapt(model, theta, [batch], AdaptConfig(steps=4, patience=100, slices_per_step=2, **UNGUARDED,
                                                      min_gain=min(gain + 0.01, 0.99)))
    assert strict.best_step == 0 and all(torch.equal(strict.params[k], theta[k]) for k in theta)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="min_gain"):
            AdaptConfig(min_gain=bad)


def test_adapt_keeps_a_prior_the_held_out_data_cannot_judge(batch):
    """A prior that predicts held-out k-space worse than zeros (the random tiny network) comes back
    unchanged with the reason, no μ factor, step or refinement; a threshold above its error, or inf,
    lets adaptation run."""
    torch.manual_seed(0)
    model = build_network(TINY)
    theta = prior_params(model)
    kept = adapt(model, theta, [batch], AdaptConfig(steps=3, patience=100, slices_per_step=2, min_calibration=0))
    err = kept.curve[0]["val"]
    assert err >= 1 and "no better than zeros" in kept.kept_prior
    assert all(torch.equal(kept.params[k], theta[k]) for k in theta)
    assert (kept.best_step, kept.mu_scale, kept.refine, kept.refine_search, len(kept.curve)) == (0, 1.0, None, [], 1)
    for threshold in (err * 1.01, math.inf):
        ran = adapt(model, theta, [batch], AdaptConfig(steps=3, patience=100, slices_per_step=2,
                                                       max_prior_error=threshold, min_calibration=0))
        assert ran.kept_prior is None and len(ran.curve) > 1
    with pytest.raises(ValueError, match="max_prior_error"):
        AdaptConfig(max_prior_error=0.0)


def test_prior_is_kept_when_the_coil_maps_come_from_too_few_calibration_lines():
    """Maps calibrated on fewer than ``min_calibration`` centre lines (5 here) keep the prior, whatever its
    held-out error; the same scan with 12 lines adapts; a multi-scan site is judged by its worst scan."""
    torch.manual_seed(0)
    model = build_network(TINY)
    theta = prior_params(model)
    k = torch.from_numpy(synthetic_kspace(slices=3, coils=4, h=32, w=32))  # [S, C, H, W]

    def lines_batch(centre: int):
        mask = torch.from_numpy(line_mask(32, 3, centre)).expand(3, 1, 32, 32).contiguous()  # [S, 1, H, W]
        assert centred_acs_width(mask) == centre
        y = k * mask
        return SiteBatch(None, y, sense(estimate_maps(y, mask), mask))

    few, enough = lines_batch(5), lines_batch(12)
    cfg = AdaptConfig(steps=2, patience=100, slices_per_step=2, max_prior_error=math.inf)  # min_calibration 7
    kept = adapt(model, theta, [few], cfg)
    assert "5 fully sampled centre lines, fewer than 7" in kept.kept_prior
    assert all(torch.equal(kept.params[k], theta[k]) for k in theta)
    assert (kept.best_step, kept.mu_scale, kept.refine, len(kept.curve)) == (0, 1.0, None, 1)
    assert kept.val_prior == kept.curve[0]["val"] > 0
    assert adapt(model, theta, [enough], cfg).kept_prior is None
    assert "5 fully sampled" in adapt(model, theta, [enough, few], cfg).kept_prior
    assert adapt(model, theta, [few], dataclasses.replace(cfg, min_calibration=5)).kept_prior is None
    with pytest.raises(ValueError, match="min_calibration"):
        AdaptConfig(min_calibration=-1)


def test_holdout_partitions_acquired_kspace(batch):
    train, val = holdout(batch, 0.2, seed=3)
    omega = (batch.A.mask > 0).expand_as(train.A.mask)
    t, g = train.A.mask > 0, val.A.mask > 0
    assert not (t & g).any()
    assert torch.equal(t | g, omega)
    frac = g.sum() / omega.sum()
    assert 0.15 < float(frac) < 0.25
    assert torch.equal(g, g[..., :1, :].expand_as(g))  # the scan's line mask: whole lines held out


def test_heldout_loss_is_the_relative_error_on_gamma_and_weights_it(batch):
    """Zero image → 1; the held-out data themselves → 0; a constant weight changes nothing; a
    weight that is zero outside some columns scores only those columns."""
    from mpcli.recon.classical import cg_sense

    _, val = holdout(batch, 0.2, seed=3)
    H, W = batch.y.shape[-2:]
    x = cg_sense(batch.y, batch.A, tikhonov=1e-2, iters=5)  # [S, H, W]: imperfect on Γ
    assert heldout_loss(torch.zeros_like(x), val) == pytest.approx(1.0)
    plain = heldout_loss(x, val)
    assert 0 < plain < 1
    assert heldout_loss(x, val, torch.full((H, W), 7.0)) == pytest.approx(plain, rel=1e-5)
    cols = torch.zeros(H, W)
    cols[:, : W // 2] = 1.0
    r, y = (val.A(x) - val.y)[..., : W // 2], val.y[..., : W // 2]
    assert heldout_loss(x, val, cols) == pytest.approx(float(r.abs().pow(2).sum() / y.abs().pow(2).sum()), rel=1e-5)


def test_proximity_keeps_distance_bounded_as_lambda_grows(batch):
    """max_k ‖φ_k − θ*‖ shrinks as λ grows (SGD, lr·λ < 1 so the proximal pull contracts)."""
    torch.manual_seed(0)  # the init must not depend on which tests ran before (seed 1: ratio 0.58)
    model = build_network(TINY)
    theta = prior_params(model)
    dist = []
    for lam in (0.0, 30.0, 90.0):
        cfg = AdaptConfig(loss="mc", steps=6, lam=lam, lr=1e-2, optimizer="sgd", patience=100, slices_per_step=2, **UNGUARDED)
        res = adapt(model, theta, [batch], cfg)
        assert res.curve[-1]["step"] == 6
        dist.append(max(r["dist"] for r in res.curve))
    assert dist[0] > 0
    assert dist[0] > dist[1] > dist[2], dist
    assert dist[2] < 0.5 * dist[0], dist


def test_adapt_is_deterministic_given_seed(batch):
    model = build_network(TINY)
    theta = prior_params(model)
    cfg = AdaptConfig(steps=3, patience=100, slices_per_step=2, seed=7, **UNGUARDED)
    a, b = adapt(model, theta, [batch], cfg), adapt(model, theta, [batch], cfg)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert a.curve == b.curve


def test_adapt_never_writes_input(scan_file, prior_file, tmp_path):
    before, mtime = file_sha256(scan_file), scan_file.stat().st_mtime_ns
    out = tmp_path / "adapted.safetensors"
    res = CliRunner().invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior_file),
                                   "--out", str(out), "--steps", "2", "--recon", str(tmp_path / "recon"),
                                   "--plot", str(tmp_path / "curve.png"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert file_sha256(scan_file) == before and scan_file.stat().st_mtime_ns == mtime
    summary = json.loads(res.stdout)
    _, meta = load_weights(out)
    assert meta["parent_sha256"] == load_weights(prior_file)[1]["sha256"]
    assert meta["kind"] == "adapted" and len(meta["curve"]) == summary["steps"] + 1
    assert meta["data"]["input_sha256"] == [before]
    assert (tmp_path / "recon" / "scan.h5").exists() and (tmp_path / "curve.png").stat().st_size > 0


def test_adapt_refuses_existing_output_and_tampered_prior(scan_file, prior_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "a.safetensors"
    out.write_bytes(b"keep me")
    res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior_file),
                              "--out", str(out), "--steps", "1"])
    assert res.exit_code == 4 and out.read_bytes() == b"keep me"
    bad = tmp_path / "tampered.safetensors"
    data = bytearray(prior_file.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(bad),
                              "--out", str(tmp_path / "b.safetensors"), "--steps", "1"])
    assert res.exit_code == 5 and "SHA-256" in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "b.safetensors").exists()


def test_adapt_config_schedule_and_parameter_sets():
    cfg = AdaptConfig(steps=10, lr=1e-3, warmup=2, schedule="cosine", params="biases", mu_lr_scale=30.0)
    assert cfg.step_size(1) == pytest.approx(0.5e-3)  # warm-up ½, cosine 1
    assert cfg.step_size(6) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    rates = cfg.rates(["denoiser.net.0.weight", "denoiser.net.0.bias", "rho_mu", "mu_weights"], 3)
    base = cfg.step_size(3)
    assert rates == {"denoiser.net.0.weight": 0.0, "denoiser.net.0.bias": base,
                     "rho_mu": 30 * base, "mu_weights": 30 * base}
    assert set(AdaptConfig(params="mu").rates(["a.weight", "rho_mu"], 1).values()) == {0.0, 1e-3}
    with pytest.raises(ValueError):
        AdaptConfig(params="everything")
    with pytest.raises(ValueError):
        AdaptConfig(schedule="linear")


def test_head_parameter_set_is_the_denoisers_output_side_and_mu():
    """``head``: a U-Net's finest decoder block and output convolution, a CNN's last two
    convolutions, with μ; nothing else."""
    unet = build_network({"arch": "modl", "iters": 2, "features": 4, "levels": 3, "denoiser": "unet",
                          "adaptive_mu": True})
    cnn = build_network({"arch": "modl", "iters": 2, "features": 4, "depth": 4})
    for net, expect in ((unet, ("denoiser.up.0.", "denoiser.out.", "rho_mu", "mu_weights")),
                        (cnn, ("denoiser.convs.2.", "denoiser.convs.3.", "rho_mu"))):
        rates = AdaptConfig(params="head").rates(dict(net.named_parameters()), 1)
        assert {k for k, r in rates.items() if r > 0} == {k for k in rates if k.startswith(expect)}
        assert 0 < sum(r > 0 for r in rates.values()) < len(rates)


def test_adapting_only_mu_changes_only_mu(batch):
    model = build_network({"arch": "modl", "iters": 2, "features": 4, "depth": 3, "cg_iters": 2, "adaptive_mu": True})
    theta = prior_params(model)
    res = adapt(model, theta, [batch], AdaptConfig(steps=2, patience=100, slices_per_step=2, params="mu", min_gain=0.0, **UNGUARDED,
                                                   mu_lr_scale=10.0))
    changed = {k for k in theta if not torch.equal(res.params[k], theta[k])}
    assert changed and changed <= {"rho_mu", "mu_weights"}


def test_lowrank_adaptation_moves_weights_by_rank_r_deltas(batch):
    """``lowrank``: φ(ψ₀) is θ* exactly; after adaptation every matrix-shaped weight has moved by a
    delta of rank ≤ r (seen as o × n), the result has θ's names and shapes, and its distance is
    measured in θ's space."""
    from mpcli.meta.batches import take
    from mpcli.meta.functional import bind, params_of, tree_sqnorm, tree_sub
    from mpcli.meta.lowrank import LowRankDelta

    torch.manual_seed(0)
    model = build_network({"arch": "modl", "iters": 2, "features": 8, "levels": 2, "denoiser": "unet",
                           "cg_iters": 2, "adaptive_mu": True})
    theta = prior_params(model)
    delta = LowRankDelta(model, theta, rank=2)
    assert delta.low_rank and delta.size() < sum(v.numel() for v in theta.values())
    one = take(batch, slice(0, 1))
    assert torch.equal(bind(delta, params_of(delta))(one.y, one.A), model(one.y, one.A))
    res = adapt(model, theta, [batch], AdaptConfig(steps=3, patience=100, slices_per_step=2, params="lowrank", rank=2, **UNGUARDED,
                                                   min_gain=0.0))
    assert res.best_step > 0 and set(res.params) == set(theta)
    for k in delta.low_rank:
        d = (res.params[k] - theta[k]).reshape(theta[k].shape[0], -1)
        assert torch.linalg.matrix_rank(d.double(), rtol=1e-3) <= 2  # float32 rounding of θ + Δ: ~1e-4 of Δ
    moved = [k for k in theta if not torch.equal(res.params[k], theta[k])]
    assert set(delta.low_rank) <= set(moved)
    assert res.distance == pytest.approx(float(tree_sqnorm(tree_sub(res.params, theta)).sqrt()), rel=1e-5)
    with pytest.raises(ValueError):
        AdaptConfig(params="lowrank", rank=0)


def test_adapt_cli_low_rank_deltas_and_bad_parameter_set(scan_file, prior_file, tmp_path):
    """``--params lowrank --rank 2`` writes a full weight file whose matrix deltas have rank ≤ 2;
    an unknown set is a usage error (exit 2) before anything is written."""
    from mpcli.errors import EXIT_USAGE

    runner = CliRunner()
    out = tmp_path / "lr.safetensors"
    res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior_file), "--out", str(out),
                              "--steps", "2", "--patience", "100", "--params", "lowrank", "--rank", "2"])
    assert res.exit_code == 0, res.stderr
    adapted, meta = load_weights(out)
    prior, _ = load_weights(prior_file)
    assert set(adapted) == set(prior) and (meta["adapt"]["params"], meta["adapt"]["rank"]) == ("lowrank", 2)
    for k, w in prior.items():
        if w.ndim >= 2 and min(w.shape[0], w[0].numel()) > 2:
            d = (adapted[k] - w).reshape(w.shape[0], -1).double()
            assert torch.linalg.matrix_rank(d, rtol=1e-3) <= 2, k
    res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior_file),
                              "--out", str(tmp_path / "x.safetensors"), "--params", "everything"])
    assert res.exit_code == EXIT_USAGE and "--params" in res.stderr and not (tmp_path / "x.safetensors").exists()


def test_search_mu_finds_the_self_validation_minimum_and_keeps_mu_without_gain():
    """On a loss with its minimum at μ·4 (in log k), the grid and its refinement find 4 and shift
    ρ by log 4; where no factor beats k = 1 by min_gain, θ comes back unchanged."""
    from mpcli.meta.adapt import search_mu

    theta = {"rho_mu": torch.tensor(-5.0), "w": torch.ones(3)}

    def val(phi):
        return 1.0 + (float(phi["rho_mu"]) + 5.0 - math.log(4.0)) ** 2

    phi, k, tried = search_mu(theta, val, tuple(2.0**e for e in range(-3, 4)), 1e-3)
    assert k == pytest.approx(4.0) and float(phi["rho_mu"]) == pytest.approx(-5.0 + math.log(4.0))
    assert torch.equal(phi["w"], theta["w"]) and len(tried) == 7 + 2
    assert [t["factor"] for t in tried] == sorted(t["factor"] for t in tried)
    phi, k, _ = search_mu(theta, lambda p: 1.0 - 1e-4 * float(p["rho_mu"]), (0.5, 2.0), 1e-2)
    assert k == 1.0 and phi is theta
    assert search_mu({"w": torch.ones(1)}, val, (0.5, 2.0), 0.0)[1:] == (1.0, [])


def test_adapt_chooses_mu_by_self_validation_before_stepping(batch):
    """MoDL: the kept μ factor has the lowest self-validation loss of those tried, the curve starts
    there."""
    torch.manual_seed(0)
    model = build_network({"arch": "modl", "iters": 2, "features": 4, "depth": 3, "cg_iters": 2, "adaptive_mu": True})
    theta = prior_params(model)
    res = adapt(model, theta, [batch], AdaptConfig(steps=1, patience=100, slices_per_step=2, min_gain=0.0, **UNGUARDED,
                                                   mu_factors=(0.01, 0.1, 10.0, 100.0)))
    best = min(res.mu_search, key=lambda t: t["val"])
    assert res.mu_scale == best["factor"] != 1.0 and res.curve[0]["val"] == pytest.approx(best["val"])
    assert len(res.mu_search) >= 5 and 1.0 in [t["factor"] for t in res.mu_search]
    none = adapt(model, theta, [batch], AdaptConfig(steps=0, mu_factors=(), **UNGUARDED))
    assert none.mu_scale == 1.0 and none.mu_search == [] and none.distance == 0.0


def test_adapt_cli_reports_the_mu_factor_and_can_skip_the_search(scan_file, tmp_path):
    """A MoDL prior: the summary and the weight file give the μ factor chosen from 1/8…8;
    ``--no-mu-search`` keeps the prior's μ (factor 1, nothing tried)."""
    torch.manual_seed(0)
    net = {"arch": "modl", "iters": 2, "features": 4, "depth": 3, "cg_iters": 2, "adaptive_mu": True}
    prior = tmp_path / "modl.safetensors"
    save_weights(prior, build_network(net).state_dict(), {"arch": "modl", "arch_version": ARCH_VERSION, "config": net})
    runner = CliRunner()
    for flag, out in (([], "a.safetensors"), (["--no-mu-search"], "b.safetensors")):
        res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior), "--json",
                                  "--out", str(tmp_path / out), "--steps", "1", "--min-calibration", "0", *flag])
        assert res.exit_code == 0, res.stderr
        _, meta = load_weights(tmp_path / out)
        assert json.loads(res.stdout)["mu_scale"] == meta["mu_scale"]
        if flag:
            assert meta["mu_scale"] == 1.0 and meta["mu_search"] == []
        else:
            assert 1 / 8 <= meta["mu_scale"] <= 8 and len(meta["mu_search"]) >= 8


def test_virtual_coils_are_recorded_by_adapt_and_repeated_by_reconstruct(scan_file, prior_file, tmp_path):
    """``mp adapt --virtual-coils 2`` adapts on two virtual coils (4 in the file), records 2 in the weights
    file and reconstructs with them; ``mp reconstruct --method adapted`` repeats the file's 2 unless told."""
    runner = CliRunner()
    out = tmp_path / "adapted.safetensors"
    res = runner.invoke(app, ["adapt", "--kspace", str(scan_file), "--prior", str(prior_file), "--out", str(out),
                              "--steps", "1", "--virtual-coils", "2", "--recon", str(tmp_path / "a")])
    assert res.exit_code == 0, res.stderr
    assert load_weights(out)[1]["virtual_coils"] == 2

    def options(folder):
        return json.loads((folder / "scan.mp.json").read_text())["options"]

    assert options(tmp_path / "a")["virtual_coils"] == 2
    for extra, expected in (([], 2), (["--virtual-coils", "0"], 0), (["--virtual-coils", "3"], 3)):
        folder = tmp_path / f"r{expected}"
        res = runner.invoke(app, ["reconstruct", str(scan_file), "--out", str(folder), "--method", "adapted",
                                  "--model", str(out), "--format", "h5", *extra])
        assert res.exit_code == 0, res.stderr
        assert options(folder)["virtual_coils"] == expected
    res = runner.invoke(app, ["reconstruct", str(scan_file), "--out", str(tmp_path / "bad"), "--virtual-coils", "-1"])
    assert res.exit_code == 2 and not (tmp_path / "bad").exists()
    state, meta = load_weights(out)
    odd = tmp_path / "odd.safetensors"
    save_weights(odd, state, {**{k: v for k, v in meta.items() if k != "sha256"}, "virtual_coils": -2})
    res = runner.invoke(app, ["reconstruct", str(scan_file), "--out", str(tmp_path / "odd"), "--method", "adapted",
                              "--model", str(odd)])
    assert res.exit_code == 5 and "virtual_coils" in res.stderr and not (tmp_path / "odd").exists()
