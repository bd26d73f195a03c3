"""Meta-training: resumption, multi-process equivalence, files, site mode."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mpcli.errors import InputError, ModelError
from mpcli.meta.train import (
    MetaTrainConfig,
    checkpoint_path,
    load_checkpoint,
    meta_train,
    meta_train_site,
)

sys.path.insert(0, str(Path(__file__).parent))
from ddp_script import ToyBatch, ToyFamily, ToyTask, toy_config, toy_model

HERE = Path(__file__).parent


def _train(tmp: Path, name: str, cfg: MetaTrainConfig, resume=False, **kw):
    return meta_train(cfg, tmp / f"{name}.safetensors", log=tmp / f"{name}.jsonl", resume=resume,
                      model=toy_model(), family=ToyFamily(), **kw)


def test_resume_continues_to_same_weights(tmp_path):
    kw = {"inner_loss": "ssdu", "inner_optimizer": "adam", "checkpoint_every": 2, "val_every": 2, "val_tasks": 2}
    straight = _train(tmp_path, "a", toy_config(steps=4, **kw))
    first = _train(tmp_path, "b", toy_config(steps=2, **kw))
    assert not all(torch.equal(first.params[k], straight.params[k]) for k in first.params)
    resumed = _train(tmp_path, "b", toy_config(steps=4, **kw), resume=True)
    assert set(resumed.params) == set(straight.params)
    for k in straight.params:
        assert torch.equal(resumed.params[k], straight.params[k]), k
    log_a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    assert [r["outer_loss"] for r in log_a] == [r["outer_loss"] for r in log_b]
    assert "val_psnr" in log_a[1] and "val_psnr" in log_a[3] and "val_psnr" not in log_a[0]


def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path):
    _train(tmp_path, "c", toy_config(steps=1))
    with pytest.raises(ModelError):
        _train(tmp_path, "c", toy_config(steps=2, inner_lr=0.5), resume=True)


def test_checkpoint_is_tensors_and_json_only(tmp_path):
    res = _train(tmp_path, "d", toy_config(steps=1, inner_optimizer="sgd"))
    ckpt = checkpoint_path(res.weights)
    with safe_open(str(ckpt), framework="pt") as fh:  # safetensors: no pickle anywhere
        meta = fh.metadata()
        keys = set(fh.keys())
    assert meta["step"] == "1" and json.loads(meta["config"])["seed"] == 3
    assert {"theta/step", "adam/exp_avg/step", "adam/exp_avg_sq/conv1.weight", "rng/torch"} <= keys
    theta, _, _, step, _ = load_checkpoint(ckpt)
    assert step == 1 and all(torch.equal(theta[k], res.params[k]) for k in theta)
    assert res.weights.exists() and len(res.sha256) == 64


def test_torchrun_two_processes_match_one(tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "ddp_script.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with safe_open(str(out), framework="pt") as fh:
        ddp = {k: fh.get_tensor(k) for k in fh.keys()}
    single = meta_train(toy_config(inner_loss="ssdu"), tmp_path / "one.safetensors", model=toy_model(),
                        family=ToyFamily())
    init = toy_model().state_dict()
    assert set(ddp) == set(single.params)
    for k in single.params:
        torch.testing.assert_close(ddp[k], single.params[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(single.params[k], init[k]) for k in init)  # training moved θ


def test_config_from_toml(tmp_path):
    p = tmp_path / "meta.toml"
    p.write_text('steps = 7\ninner_loss = "wssdu"\nfirst_order = true\n'
                 '[inner_loss_kw]\nrho = 0.3\n[network]\narch = "pdnet"\nlayers = 2\n[tasks]\nsize = 16\n')
    cfg = MetaTrainConfig.from_toml(p)
    assert cfg.steps == 7 and cfg.first_order and cfg.inner_loss_kw == {"rho": 0.3}
    assert cfg.network == {"arch": "pdnet", "layers": 2} and cfg.tasks == {"size": 16}
    assert MetaTrainConfig.from_dict(cfg.to_dict()) == cfg
    p.write_text("stepz = 7\n")
    with pytest.raises(InputError):
        MetaTrainConfig.from_toml(p)
    p.write_text("steps = [\n")
    with pytest.raises(InputError):
        MetaTrainConfig.from_toml(p)


def test_site_mode_trains_without_ground_truth(tmp_path):
    gen = torch.Generator().manual_seed(0)
    scans = []
    for accel in (2, 3):
        b = ToyTask(size=8, coils=2, accel=accel).sample(3, gen)
        scans.append(ToyBatch(x=None, y=b.y, A=b.A))  # no ground truth anywhere
    cfg = toy_config(steps=2, inner_loss="ssdu", val_every=2, val_tasks=2)
    init = {k: v.detach().clone() for k, v in toy_model(5).named_parameters()}
    res = meta_train_site(cfg, scans, init, tmp_path / "site.safetensors", log=tmp_path / "site.jsonl",
                          model=toy_model())
    log = [json.loads(line) for line in (tmp_path / "site.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 < r["outer_loss"] < 10 for r in log)
    assert "val_outer_loss" in log[-1] and "val_psnr" not in log[-1]
    assert any(not torch.equal(res.params[k], init[k]) for k in init)
    with pytest.raises(ValueError):
        meta_train_site(toy_config(inner_loss="l2"), scans, init, tmp_path / "bad.safetensors", model=toy_model())
    # the outer step is site_outer_lr, not the from-scratch outer_lr: 0 leaves θ where it started
    frozen = meta_train_site(dataclasses.replace(cfg, outer_lr=1.0, site_outer_lr=0.0), scans, init,
                             tmp_path / "frozen.safetensors", model=toy_model())
    assert all(torch.equal(frozen.params[k], init[k]) for k in init)


def test_meta_train_from_config_alone_builds_network_and_task_family(tmp_path):
    """The production path: network and task family from the config, weights load back."""
    from mpcli.data.tasks import TaskFamily
    from mpcli.io.weights import load_model

    tasks = {"sizes": [[16, 16]], "n_coils": [2, 2], "sources": ["shepp_logan"], "accelerations": [2.0, 4.0]}
    cfg = toy_config(steps=1, tasks_per_step=1, inner_steps=1, inner_loss="ssdu", val_every=1, val_tasks=1,
                     network={"arch": "pdnet", "layers": 1, "filters": 4}, tasks=tasks)
    res = meta_train(cfg, tmp_path / "w.safetensors", log=tmp_path / "w.jsonl")
    model, meta = load_model(res.weights)
    assert meta["config"] == cfg.network and meta["meta_train"]["steps"] == 1 and meta["sha256"] == res.sha256
    assert meta["data"]["family"] == TaskFamily.from_config(tasks).to_config()
    state = model.state_dict()
    assert set(state) == set(res.params) and all(torch.equal(state[k], res.params[k]) for k in state)
    record = json.loads((tmp_path / "w.jsonl").read_text())
    assert record["step"] == 1 and record["val_psnr"] > 0
