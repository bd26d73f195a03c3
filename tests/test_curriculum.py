"""The training curriculum (mpcli/meta/curriculum.py): resumption, checkpoint, log, guards."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mpcli.errors import ModelError
from mpcli.meta import curriculum as cur


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    config = cur.tiny_curriculum()
    state = cur.train(config, d / "ckpt.safetensors", d / "log.jsonl")
    return config, state, d


def test_curriculum_runs_every_stage_and_logs(uninterrupted):
    config, state, d = uninterrupted
    assert state.stage == len(config.stages) and state.step == 0 and state.wall_s > 0
    recs = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert recs[0]["kind"] == "baseline" and len(recs[0]["cs_psnr"]) == len(config.val_tasks)
    vals = [r for r in recs if r["kind"] == "val"]
    assert {r["stage"] for r in vals} == {s.name for s in config.stages}
    for r in vals:
        assert r["gap_to_cs_db"] == pytest.approx(r["psnr_mean"] - recs[0]["cs_mean"])
        assert r["wall_h"] >= 0


@pytest.mark.parametrize("first", [2, 4])  # inside the first stage, and across the stage boundary
def test_resume_is_bit_for_bit(uninterrupted, tmp_path, first):
    config, full, _ = uninterrupted
    ck = tmp_path / "ckpt.safetensors"
    part = cur.train(config, ck, tmp_path / "log.jsonl", max_steps=first)
    assert (part.stage, part.step) == ((0, 2) if first == 2 else (1, 1))
    resumed = cur.train(config, ck, tmp_path / "log.jsonl")
    assert resumed.stage == len(config.stages)
    for k, v in full.theta.items():
        assert torch.equal(resumed.theta[k], v), k
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["kind"] == "baseline" for x in lines) == 1


def test_workers_make_the_same_run(tmp_path):
    """Examples drawn ahead in a worker process (both stages, supervised and meta, with ESPIRiT
    maps) give the run drawn in place, bit for bit, and resuming with workers works."""
    config = dataclasses.replace(cur.tiny_curriculum(), maps="espirit")
    ck = tmp_path / "ckpt.safetensors"
    in_place = cur.train(config, tmp_path / "a.safetensors", None)
    cur.train(config, ck, None, max_steps=3, workers=1)
    ahead = cur.train(config, ck, None, workers=1)
    assert ahead.stage == len(config.stages)
    for k, v in in_place.theta.items():
        assert torch.equal(ahead.theta[k], v), k


def test_averaged_weights_follow_the_iterates_resume_exactly_and_are_exported(tmp_path):
    """θ̄ starts at the first step's θ, then θ̄ ← d·θ̄ + (1 − d)·θ; it survives a resume bit for
    bit, the log validates it too, and the export writes it (θ itself with ``averaged=False``)."""
    from mpcli.io.weights import load_model

    d = 0.9
    config = dataclasses.replace(cur.tiny_curriculum(), ema=d)
    ck = tmp_path / "ckpt.safetensors"
    first = cur.train(config, ck, None, max_steps=1)
    theta1 = {k: v.clone() for k, v in first.theta.items()}
    assert all(torch.equal(first.ema[k], theta1[k]) for k in theta1)
    second = cur.train(config, ck, None, max_steps=1)
    for k, v in second.theta.items():
        assert torch.allclose(second.ema[k], d * theta1[k] + (1 - d) * v, atol=1e-7), k
    full = cur.train(config, tmp_path / "full.safetensors", tmp_path / "log.jsonl")
    resumed = cur.train(config, ck, None)
    for k in full.theta:
        assert torch.equal(resumed.ema[k], full.ema[k]) and not torch.equal(full.ema[k], full.theta[k]), k
    vals = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"val"' in x]
    assert vals and all(len(r["psnr_ema"]) == len(config.val_tasks) for r in vals)
    for averaged, want in ((True, full.ema), (False, full.theta)):
        cur.export_weights(tmp_path / "full.safetensors", tmp_path / "w.safetensors", averaged=averaged)
        model, meta = load_model(tmp_path / "w.safetensors")
        assert meta["curriculum"]["averaged"] == (d if averaged else None)
        for k, v in model.named_parameters():
            assert torch.equal(v.detach(), want[k]), k
    with pytest.raises(ValueError, match="ema"):
        cur.amend(ck, None, ema=1.0)
    assert cur.amend(ck, None, ema=0.5) == {"ema": 0.5}


def test_mixed_precision_trains_and_resumes_in_full_precision(tmp_path):
    """``amp`` (bfloat16 autocast; CPU here, the GPU path in tests/test_gpu.py) trains to finite
    weights that differ from full precision, and the checkpoint resumes without it."""
    config = cur.tiny_curriculum()
    ck = tmp_path / "ckpt.safetensors"
    half = cur.train(config, ck, None, max_steps=2, amp=True)
    full = cur.train(config, tmp_path / "f.safetensors", None, max_steps=2)
    assert all(torch.isfinite(v).all() for v in half.theta.values())
    assert any(not torch.equal(half.theta[k], full.theta[k]) for k in full.theta)
    assert cur.train(config, ck, None).stage == len(config.stages)


def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path):
    config = cur.tiny_curriculum()
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    cur.train(config, ck, log, max_steps=2, val_every_s=0.0)
    n = len(log.read_text().splitlines())
    with open(log, "a") as fh:  # a record from steps the checkpoint never saw (killed before saving)
        fh.write(json.dumps({"kind": "val", "stage": "k1", "step": 99, "wall_h": 99.0, "psnr_mean": 0.0}) + "\n")
    cur.train(config, ck, log, max_steps=0)
    lines = log.read_text().splitlines()
    assert len(lines) == n and all(json.loads(x)["wall_h"] < 99 for x in lines)


def test_checkpoint_round_trip_keeps_adam_state(tmp_path):
    config = cur.tiny_curriculum()
    ck = tmp_path / "c.safetensors"
    state = cur.train(config, ck, None, max_steps=2)
    loaded, cfg = cur.load_checkpoint(ck)
    assert cfg.to_dict() == config.to_dict() or json.dumps(cfg.to_dict(), sort_keys=True) == json.dumps(
        json.loads(json.dumps(config.to_dict())), sort_keys=True)
    assert (loaded.stage, loaded.step) == (state.stage, state.step)
    assert loaded.adam["state"] and all(torch.equal(loaded.theta[k], v) for k, v in state.theta.items())
    assert ck.stat().st_size < 1_000_000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_resume_with_another_recipe_is_refused(tmp_path):
    config = cur.tiny_curriculum()
    ck = tmp_path / "c.safetensors"
    cur.train(config, ck, None, max_steps=1)
    other = dataclasses.replace(config, seed=1)
    with pytest.raises(ModelError, match="another configuration"):
        cur.train(other, ck, None)


def test_not_a_checkpoint_is_a_model_error(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError):
        cur.load_checkpoint(bad)


def test_validation_only_sources_cannot_be_trained_on():
    config = cur.tiny_curriculum()
    with pytest.raises(ValueError, match="validation-only"):
        dataclasses.replace(config, tasks={**config.tasks, "sources": ["itk_t1_head"]})
    with pytest.raises(ValueError, match="validation-only"):
        dataclasses.replace(config, stages=[cur.Stage("s", 1, 1, 1e-3, tasks={"sources": ["itk_t1_head"]})])


def test_default_curriculum_is_the_scan_like_modl_unet():
    c = cur.default_curriculum()
    assert c.network["denoiser"] == "unet" and c.network["adaptive_mu"] and c.loss == "psnr"
    assert c.stages[0].iters == 1 and c.stages[-1].mode == "meta"
    assert all(t["source"] in ("itk_t1_head", "mni_flairlike", "mni_t2like") for t in c.val_tasks)


def test_exported_weights_load_as_an_mp_model(uninterrupted, tmp_path):
    from mpcli.io.weights import load_model

    _, state, d = uninterrupted
    cur.export_weights(d / "ckpt.safetensors", tmp_path / "w.safetensors")
    model, meta = load_model(tmp_path / "w.safetensors")
    assert meta["kind"] == "curriculum-prior"
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), state.theta[k])


def test_resume_may_change_stage_lengths_only(tmp_path):
    """Shortening a stage on resume continues the same run: it ends that stage at the new length."""
    config = cur.tiny_curriculum()
    ck = tmp_path / "c.safetensors"
    cur.train(config, ck, None, max_steps=1)
    shorter = cur.with_stage_steps(config, {"k1": 2, "meta": 1})
    state = cur.train(shorter, ck, None)
    assert state.stage == 2
    with pytest.raises(ValueError, match="unknown stage"):
        cur.with_stage_steps(config, {"nope": 3})


def test_stages_not_started_may_change_on_resume(tmp_path):
    """Resuming inside stage 0, the meta stage (and the inner problem) may be redesigned;
    stage 0 itself may not."""
    config = cur.tiny_curriculum()
    ck = tmp_path / "c.safetensors"
    cur.train(config, ck, None, max_steps=1)
    later = dataclasses.replace(config.stages[1], lr=5e-5)
    changed = dataclasses.replace(config, stages=[config.stages[0], later],
                                  inner={**config.inner, "first_order": True})
    state = cur.train(changed, ck, None, max_steps=3)  # finishes stage 0, starts the changed stage 1
    assert state.stage == 1
    back = dataclasses.replace(config, inner={**config.inner, "first_order": True})
    with pytest.raises(ModelError, match="stages"):  # stage 1 has started: its lr is now fixed
        cur.train(back, ck, None)
    first = dataclasses.replace(config.stages[0], lr=1.0)
    with pytest.raises(ModelError, match="stages"):
        cur.train(dataclasses.replace(changed, stages=[first, later]), ck, None)


def test_a_finished_curriculum_continues_with_appended_stages(tmp_path):
    """After its last stage a run may take more stages (from its θ and θ̄; a new stage starts
    a new Adam, as every stage does); the stages it trained may still not change."""
    config = cur.tiny_curriculum()
    ck = tmp_path / "c.safetensors"
    done = cur.train(config, ck, None)
    assert done.stage == len(config.stages)
    again = cur.train(config, ck, None)  # nothing left: returns at once
    assert (again.stage, again.step) == (done.stage, done.step)
    more = dataclasses.replace(config, stages=[*config.stages, dataclasses.replace(config.stages[-1], name="meta2")])
    state = cur.train(more, ck, None)
    assert state.stage == 3 and state.wall_s > done.wall_s
    assert any(not torch.equal(state.theta[k], done.theta[k]) for k in done.theta)
    changed = dataclasses.replace(more, stages=[dataclasses.replace(config.stages[0], lr=1.0), *more.stages[1:]])
    with pytest.raises(ModelError, match="stages"):
        cur.train(changed, ck, None)


def test_amend_adds_parameters_logs_the_change_and_keeps_the_function(tmp_path):
    """A running recipe may change (adaptive μ, loss, μ step size): new parameters start at
    values that leave the network's output unchanged, and the log records where."""
    from mpcli.meta.functional import bind

    config = cur.tiny_curriculum()
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    cur.train(config, ck, log, max_steps=2)
    before, cfg0 = cur.load_checkpoint(ck)
    changes = cur.amend(ck, log, network={"adaptive_mu": True}, loss="psnr", mu_lr_scale=30.0)
    after, cfg = cur.load_checkpoint(ck)
    assert changes == {"network": {"adaptive_mu": True}, "loss": "psnr", "mu_lr_scale": 30.0}
    assert cfg.loss == "psnr" and cfg.mu_lr_scale == 30.0 and cfg.network["adaptive_mu"]
    assert set(after.theta) - set(before.theta) == {"mu_weights"} and not after.adam
    assert (after.stage, after.step, after.wall_s) == (before.stage, before.step, before.wall_s)
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["kind"] == "amend" and rec["changes"]["loss"] == "psnr"
    batch = cur._val_batches(cfg)[0]
    old = bind(cur._stage_model(cfg0, cfg0.stages[0]), before.theta)(batch.y, batch.A)
    new = bind(cur._stage_model(cfg, cfg.stages[0]), after.theta)(batch.y, batch.A)
    assert torch.equal(old, new)
    state = cur.train(cfg, ck, log, max_steps=2)  # resumes with two Adam groups, μ last
    assert list(state.theta)[-2:] == ["rho_mu", "mu_weights"]
    resumed, _ = cur.load_checkpoint(ck)
    assert len(resumed.adam["param_groups"]) == 2
    assert resumed.adam["param_groups"][1]["lr"] == pytest.approx(30 * resumed.adam["param_groups"][0]["lr"])


def test_amend_grows_the_mu_features_in_theta_and_its_average(tmp_path):
    """A μ feature added to a running adaptive-μ curriculum gets weight 0 in θ and θ̄, the
    others keep theirs, and training resumes; dropping a feature is refused."""
    config = cur.tiny_curriculum()
    config = dataclasses.replace(config, network={**config.network, "adaptive_mu": True}, ema=0.9)
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    cur.train(config, ck, log, max_steps=2)
    before, _ = cur.load_checkpoint(ck)
    four = ["fraction", "coils", "ring", "noise"]
    cur.amend(ck, log, network={"mu_features": four})
    after, cfg = cur.load_checkpoint(ck)
    for old, new in ((before.theta, after.theta), (before.ema, after.ema)):
        assert torch.equal(new["mu_weights"][:3], old["mu_weights"]) and float(new["mu_weights"][3]) == 0.0
    cur.train(cfg, ck, log, max_steps=1)
    resumed, _ = cur.load_checkpoint(ck)
    assert resumed.theta["mu_weights"].shape == (4,) and resumed.ema["mu_weights"].shape == (4,)
    with pytest.raises(ValueError, match="only grow"):
        cur.amend(ck, log, network={"mu_features": ["fraction", "noise"]})


def test_amend_changes_the_task_family_from_the_next_step(tmp_path):
    """A running recipe may move to another task family (the committed run's noise levels at kfull
    step 1663): the stored family changes, the log says so, and a bad family is refused untouched."""
    config = cur.tiny_curriculum()
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    cur.train(config, ck, log, max_steps=2)
    with pytest.raises(ValueError, match="log-uniform"):
        cur.amend(ck, log, tasks={"noise_rel": [0.0, 0.1], "noise_log": True})
    assert cur.load_checkpoint(ck)[1].tasks == config.tasks
    changes = cur.amend(ck, log, tasks={"noise_rel": [0.01, 0.2], "noise_log": True})
    assert changes == {"tasks": {"noise_rel": [0.01, 0.2], "noise_log": True}}
    state, cfg = cur.load_checkpoint(ck)
    assert cfg.tasks["noise_rel"] == [0.01, 0.2] and cfg.tasks["sources"] == config.tasks["sources"]
    assert state.adam["state"]  # the same parameters and loss: Adam's moments carry on
    assert json.loads(log.read_text().splitlines()[-1])["changes"] == changes
    cur.train(cfg, ck, log, max_steps=1)  # resumes with the amended family


def test_espirit_frame_batches_are_what_deployment_sees():
    """maps = "espirit": the network gets ESPIRiT maps estimated from the undersampled k-space
    and the target is the truth in their frame (so |target| ≈ |x|·RSS(S) inside the support)."""
    config = dataclasses.replace(cur.tiny_curriculum(), maps="espirit")
    plain = cur._draw(dataclasses.replace(config, maps="true"), 0, config.stages[0], 0, 0)
    batch = cur._draw(config, 0, config.stages[0], 0, 0)
    assert torch.equal(batch.y, plain.y) and not torch.equal(batch.A.maps, plain.A.maps)
    inside = batch.A.maps.abs().pow(2).sum(1) > 0
    norm = batch.A.maps.abs().pow(2).sum(1)
    assert torch.allclose(norm[inside], torch.ones_like(norm[inside]), atol=1e-4)
    assert torch.equal(batch.x[~inside], torch.zeros_like(batch.x[~inside]))
    rss_true = plain.x.abs() * plain.A.maps.abs().pow(2).sum(1).sqrt()
    err = (batch.x.abs() - rss_true)[inside].abs().mean() / rss_true[inside].mean()
    assert err < 0.05
    with pytest.raises(ValueError, match="maps"):
        dataclasses.replace(config, maps="sigpy")


def test_a_non_finite_step_is_skipped_and_logged(tmp_path, monkeypatch):
    """A NaN loss or gradient never reaches θ or Adam's moments: the step is skipped and logged."""
    config = dataclasses.replace(cur.tiny_curriculum(), val_tasks=[])
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    start = cur.initial_state(config).theta
    real = cur.make_loss

    def nan_loss(name, **kw):
        base = real(name, **kw)
        return lambda *a, **k: base(*a, **k) * float("nan")

    monkeypatch.setattr(cur, "make_loss", nan_loss)
    state = cur.train(config, ck, log, max_steps=2)
    assert all(torch.equal(state.theta[k], start[k]) for k in start)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    skipped = [r for r in recs if r["kind"] == "skipped"]
    assert len(skipped) == 2 and skipped[0]["loss"] is None


def test_an_example_that_cannot_be_made_is_skipped_and_logged(tmp_path, monkeypatch):
    """A ValueError while making an example (sigpy's Poisson search stopped the committed run once)
    costs that example, logged with its reason: the step trains on the others; with none, θ stays."""
    config = dataclasses.replace(cur.tiny_curriculum(), val_tasks=[])
    real = cur._draw_at

    def failing(cfg, j, step, i):
        if i == 0 or step == 1:
            raise ValueError(f"cannot make example {step}/{i}")
        return real(cfg, j, step, i)

    monkeypatch.setattr(cur, "_draw_at", failing)
    start = cur.initial_state(config).theta
    log = tmp_path / "log.jsonl"
    one = cur.train(config, tmp_path / "c.safetensors", log, max_steps=1)  # step 0: task 1 only
    assert any(not torch.equal(one.theta[k], start[k]) for k in start)
    after_one = {k: v.clone() for k, v in one.theta.items()}
    two = cur.train(config, tmp_path / "c.safetensors", log, max_steps=1)  # step 1: nothing made
    assert all(torch.equal(two.theta[k], after_one[k]) for k in after_one) and two.step == 2
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    reasons = [r["reason"] for r in recs if r["kind"] == "skipped" and "reason" in r]
    assert reasons == ["cannot make example 0/0", "cannot make example 1/0", "cannot make example 1/1"]


def test_validation_follows_the_training_frame_with_its_own_baseline(tmp_path):
    """With ESPIRiT maps the log validates in their frame (as deployed, PSNR inside the support) and
    its CS baseline is computed there; a run moved to that frame gets a new baseline record."""
    config = cur.tiny_curriculum()
    ck, log = tmp_path / "c.safetensors", tmp_path / "log.jsonl"
    cur.train(config, ck, log, max_steps=1)
    cur.amend(ck, log, maps="espirit")
    _, amended = cur.load_checkpoint(ck)
    cur.train(amended, ck, log, max_steps=2)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    bases = [r for r in recs if r["kind"] == "baseline"]
    assert [b["frame"] for b in bases] == ["true", "espirit"]
    fresh = cur.baseline(amended)  # the same numbers, up to the CS solver's last digits
    assert bases[1]["cs_mean"] == pytest.approx(fresh["cs_mean"], abs=0.01)
    assert bases[1]["zf_mean"] == pytest.approx(fresh["zf_mean"], abs=0.01)
    assert bases[1]["cs_mean"] != pytest.approx(bases[0]["cs_mean"], abs=0.01)  # another frame
    vals = [r for r in recs if r["kind"] == "val"]
    assert vals and vals[-1]["frame"] == "espirit"
    assert vals[-1]["gap_to_cs_db"] == pytest.approx(vals[-1]["psnr_mean"] - bases[1]["cs_mean"])
    cur.train(amended, ck, log, max_steps=1)  # resumed in the same frame: no third baseline
    assert sum(json.loads(x)["kind"] == "baseline" for x in log.read_text().splitlines()) == 2


def test_each_step_is_validated_at_most_once(tmp_path):
    """With validation due after every step, a stage's last step is validated once, not again at its end."""
    config = cur.tiny_curriculum()
    log = tmp_path / "log.jsonl"
    cur.train(config, tmp_path / "c.safetensors", log, val_every_s=0.0)
    vals = [(r["stage"], r["step"]) for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "val"]
    assert len(vals) == len(set(vals)) and ("k1", config.stages[0].steps) in vals
    assert len(vals) == sum(s.steps for s in config.stages)


def test_meta_stages_also_validate_after_the_inner_steps(tmp_path):
    """A meta stage's validation adds the exported weights' PSNR after the inner problem it trains
    for (run on each task's own measurements); supervised stages do not; the figure is reproducible
    and is the unadapted one moved by the inner steps."""
    config = cur.tiny_curriculum()
    log = tmp_path / "log.jsonl"
    state = cur.train(config, tmp_path / "c.safetensors", log, val_every_s=0.0)
    vals = [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "val"]
    assert all(("psnr_adapted" in r) == (r["stage"] == "meta") for r in vals)
    last = vals[-1]
    assert len(last["psnr_adapted"]) == len(config.val_tasks)
    model = cur._stage_model(config, config.stages[-1])
    batches = cur._val_batches(config)
    weights = state.ema or state.theta
    again = cur.validate_adapted(model, weights, config, batches)
    assert again == pytest.approx(last["psnr_adapted"], abs=1e-4)
    assert again != pytest.approx(cur.validate(model, weights, config, batches), abs=1e-6)


def test_an_anchored_meta_stage_adds_the_unadapted_query_loss_to_the_outer_gradient():
    """anchor α: ∂/∂θ [L(f_φ) + α·L(f_θ)] on the query = the plain hypergradient + α·∂L(f_θ)/∂θ."""
    from mpcli.meta.batches import take
    from mpcli.meta.losses import make_loss

    config = cur.tiny_curriculum()
    plain = config.stages[-1]
    anchored = dataclasses.replace(plain, anchor=0.5)
    model = cur._stage_model(config, plain)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in cur.initial_state(config).theta.items()}
    batch = cur._val_batches(dataclasses.replace(config, val_slices=plain.slices))[0]
    loss_fn = make_loss(config.loss)

    def gradient(stage):
        return cur._gradient(config, 1, stage, 0, 0, model, theta, batch, loss_fn, make_loss(config.inner["loss"]))

    (g0, v0), (g1, v1) = gradient(plain), gradient(anchored)
    query = take(batch, slice(1, 2))
    start = loss_fn(cur.bind(model, theta)(query.y, query.A), query.y, query.A, None, query.x)
    direct = dict(zip(theta, torch.autograd.grad(start, list(theta.values()), allow_unused=True)))
    for k in theta:
        want = g0[k] if direct[k] is None else g0[k] + 0.5 * direct[k]
        torch.testing.assert_close(g1[k], want, rtol=1e-5, atol=1e-7)
    assert float(v1) == pytest.approx(float(v0) + 0.5 * float(start.detach()), rel=1e-5)
    assert any(direct[k] is not None and direct[k].abs().sum() > 0 for k in theta)


def test_only_meta_stages_take_a_non_negative_anchor():
    with pytest.raises(ValueError, match="anchor"):
        cur.Stage("k1", steps=1, iters=1, lr=1e-3, anchor=1.0)
    with pytest.raises(ValueError, match="anchor"):
        cur.Stage("m", steps=1, iters=1, lr=1e-3, mode="meta", anchor=-1.0)
