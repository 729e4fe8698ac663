"""Unit tests of modeling/training.py: recipes, optimizer groups, schedules, batching, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling.training import (CheckpointManager, ConfigError, GlobalBatchSampler, build_optimizer,
                               build_scheduler, load_config, param_groups, step_seed)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ recipes


# design §6 table: global batch, peak lr, warmup, time-scale, init.
DESIGN_RECIPES = {
    "audiocaps/base": (16, 6.5e-5, 2000, None, "bart", "facebook/bart-base"),
    "audiocaps/large": (64, 3e-5, 2000, None, "bart", "facebook/bart-large"),
    "clotho/base": (64, 4e-5, 1000, None, "bart", "facebook/bart-base"),
    "clotho/large": (64, 2.5e-5, 1000, None, "bart", "facebook/bart-large"),
    "clotho_finetune/base": (64, 2e-5, 0, 1000, "enclap", None),
    "clotho_finetune/large": (64, 1.25e-5, 0, 1000, "enclap", None),
}


@pytest.mark.parametrize("name", sorted(DESIGN_RECIPES))
def test_recipes_match_the_paper_table(name):
    cfg = load_config(str(REPO / "cfg" / f"{name}.yaml"))
    batch, lr, warmup, time_scale, init, base = DESIGN_RECIPES[name]
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.time_scale) == (batch, lr, warmup,
                                                                                                  time_scale)
    assert cfg.model.init == init and (base is None or cfg.model.name_or_path == base)
    assert (cfg.seed, cfg.optim.epochs, cfg.optim.weight_decay, cfg.optim.max_grad_norm) == (1115, 15, 0.01, 1.0)
    assert (cfg.optim.adam_beta1, cfg.optim.adam_beta2, cfg.optim.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert cfg.optim.lr_scheduler == "inverse_sqrt" and cfg.log.every_steps == 10
    assert cfg.eval.every_steps is None  # every epoch
    assert cfg.eval.select_metric == "spider"


@pytest.mark.parametrize("path", ["cfg/both/base.yaml", "cfg/both/large.yaml", "cfg/tiny.yaml"])
def test_other_recipes_load(path):
    cfg = load_config(str(REPO / path), ["optim.epochs=2"])
    assert cfg.optim.epochs == 2


def test_overrides_and_errors(tmp_path):
    cfg = load_config(str(REPO / "cfg/tiny.yaml"), ["optim.lr=0.25", "eval.metrics=[meteor]", "data.max_frames=10"])
    assert cfg.optim.lr == 0.25 and list(cfg.eval.metrics) == ["meteor"] and cfg.data.max_frames == 10
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lr_max'.*valid keys: .*optim\.lr\b"):
        load_config(str(REPO / "cfg/tiny.yaml"), ["optim.lr_max=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train_cvs: x.csv\n")
    with pytest.raises(ConfigError, match=r"'data\.train_cvs' in .*bad\.yaml.*data\.train_csv"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="optim.lr_scheduler"):
        load_config(None, ["optim.lr_scheduler=step"])
    with pytest.raises(ConfigError, match="optim.time_scale"):
        load_config(None, ["optim.warmup_steps=0"])  # inverse_sqrt needs a time-scale then
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    for error in (ConfigError,):
        with pytest.raises(error, match="optim.batch_size"):
            load_config(None, ["optim.batch_size=0"])


# ------------------------------------------------------------------------------ optimizer


def test_param_groups_follow_the_no_decay_rule(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for name in no_decay["names"]:
        assert "bias" in name or "LayerNorm.weight" in name or "layer_norm.weight" in name, name
    for name in decay["names"]:
        assert "bias" not in name and "layer_norm.weight" not in name and "LayerNorm.weight" not in name, name
    # BART's embedding layer norm is decayed (its name has no "layer_norm"), its bias is not.
    assert "model.encoder.layernorm_embedding.weight" in decay["names"]
    assert "model.encoder.layernorm_embedding.bias" in no_decay["names"]
    assert "model.encoder.layers.0.self_attn_layer_norm.weight" in no_decay["names"]
    assert "mcm_heads.3.bias" in no_decay["names"] and "mcm_heads.3.weight" in decay["names"]
    assert "model.encoder.clap_projection.weight" in decay["names"]
    # Every trainable parameter exactly once (the tied embedding included once).
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in tiny_model.parameters()}


def test_build_optimizer_uses_adamw_constants(tiny_model):
    cfg = load_config(None, ["optim.lr=0.5", "optim.weight_decay=0.05"])
    optimizer = build_optimizer(tiny_model, cfg.optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    for group in optimizer.param_groups:
        assert group["lr"] == 0.5 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8


# ------------------------------------------------------------------------------ schedules


def _lrs(schedule, steps, warmup, total=100, time_scale=None, peak=2.0):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = build_scheduler(optimizer, schedule, warmup, total, time_scale)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_inverse_sqrt_with_warmup_matches_spec():
    peak, warmup = 2.0, 8
    lrs = _lrs("inverse_sqrt", 40, warmup, peak=peak)
    for s, lr in enumerate(lrs):
        # design §6: peak * s / W for s < W, else peak / sqrt((s + tau - W) / tau) with tau = W.
        expected = peak * s / warmup if s < warmup else peak / math.sqrt((s + warmup - warmup) / warmup)
        assert lr == pytest.approx(expected, rel=1e-12), s
    assert lrs[warmup] == pytest.approx(peak) and lrs[4 * warmup] == pytest.approx(peak / 2)


def test_inverse_sqrt_without_warmup_uses_time_scale():
    peak, tau = 2.0, 1000
    lrs = _lrs("inverse_sqrt", 5, 0, time_scale=tau, peak=peak)
    assert lrs[0] == pytest.approx(peak)  # fine-tuning starts at the peak
    for s, lr in enumerate(lrs):
        assert lr == pytest.approx(peak / math.sqrt((s + tau) / tau), rel=1e-12)
    # With warmup and a separate time-scale.
    lrs = _lrs("inverse_sqrt", 30, 10, time_scale=40, peak=peak)
    assert lrs[25] == pytest.approx(peak / math.sqrt((25 + 40 - 10) / 40))


def test_linear_and_cosine_schedules():
    lin = _lrs("linear", 101, 10, total=100, peak=1.0)
    assert lin[5] == pytest.approx(0.5) and lin[10] == pytest.approx(1.0)
    assert lin[55] == pytest.approx(0.5) and lin[100] == pytest.approx(0.0)
    cos = _lrs("cosine", 101, 10, total=100, peak=1.0)
    assert cos[10] == pytest.approx(1.0) and cos[55] == pytest.approx(0.5) and cos[100] == pytest.approx(0.0, abs=1e-12)
    assert cos[32] == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert _lrs("constant", 20, 4, peak=3.0) == pytest.approx([0.0, 0.75, 1.5, 2.25] + [3.0] * 16)


def test_scheduler_state_round_trips():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, "inverse_sqrt", 4, 100)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_scheduler(fresh_opt, "inverse_sqrt", 4, 100)
    fresh.load_state_dict(state)
    fresh_opt.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]
    optimizer.step(); scheduler.step(); fresh_opt.step(); fresh.step()
    assert fresh.get_last_lr() == scheduler.get_last_lr() == [pytest.approx(1 / math.sqrt(8 / 4))]


def test_step_seed_differs_per_step_and_process():
    seeds = {step_seed(1115, p, s) for p in range(3) for s in range(100)}
    assert len(seeds) == 300
    assert step_seed(1115, 0, 7) == step_seed(1115, 0, 7)
    assert all(0 <= s < 2**63 for s in seeds)


# ------------------------------------------------------------------------------ batching


def test_global_batches_split_across_processes_cover_every_example():
    n, batch, procs = 23, 6, 3
    shards = [GlobalBatchSampler(n, batch, procs, p, seed=5) for p in range(procs)]
    per_process = [list(s) for s in shards]
    assert all(len(b) == len(shards[0]) == math.ceil(n / batch) for b in per_process)
    seen = []
    for k in range(len(per_process[0])):
        pieces = [per_process[p][k] for p in range(procs)]
        assert all(len(piece) == batch // procs for piece in pieces)  # equal shares
        seen.extend(i for piece in pieces for i in piece)
    assert set(seen) == set(range(n))  # every example, the last batch filled up with repeats
    assert len(seen) == math.ceil(n / batch) * batch


def test_global_batches_are_deterministic_per_epoch_and_resumable():
    sampler = GlobalBatchSampler(40, 8, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    sampler.set_epoch(1)
    sampler.set_start(3)
    assert list(sampler) == first[3:]
    assert list(sampler) == first  # the skip applies to one pass only
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        GlobalBatchSampler(40, 5, num_processes=2)


def test_length_grouping_puts_similar_lengths_together():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, 400)
    grouped = list(GlobalBatchSampler(400, 8, seed=0, lengths=lengths, group_size=50))
    plain = list(GlobalBatchSampler(400, 8, seed=0))
    spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches])  # noqa: E731
    assert spread(grouped) < 0.2 * spread(plain)
    assert sorted(i for b in grouped for i in b) == list(range(400))


# ------------------------------------------------------------------------------ checkpoints


def _fake_checkpoint(manager: CheckpointManager, step: int, score: float) -> str:
    tmp = manager.tmp_path(step)
    (Path(tmp) / "model").mkdir()
    (Path(tmp) / "model" / "weights.txt").write_text(str(step))
    return manager.commit(tmp, step, {"global_step": step, "scores": {"cider_d": score}})


def test_checkpoint_manager_latest_ignores_incomplete(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_best=2)
    assert manager.latest() is None
    _fake_checkpoint(manager, 10, 0.1)
    # A killed run leaves a temp folder and maybe a renamed folder without trainer_state.json.
    Path(manager.tmp_path(20)).joinpath("state").mkdir()
    (tmp_path / "checkpoints" / "step_00000030").mkdir()
    assert manager.latest() == manager.path(10)
    assert CheckpointManager.read_state(manager.latest())["global_step"] == 10


def test_checkpoint_rotation_keeps_best_k_and_newest(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_best=2)
    for step, score in [(1, 0.3), (2, 0.9), (3, 0.1), (4, 0.5), (5, 0.2)]:
        _fake_checkpoint(manager, step, score)
        manager.rotate("cider_d")
    kept = [step for step, _ in manager.complete()]
    assert kept == [2, 4, 5]  # best two (0.9, 0.5) + the newest for resume
    manager.update_best(str(Path(manager.path(2)) / "model"))
    manager.update_best(str(Path(manager.path(4)) / "model"))
    assert (tmp_path / "best" / "weights.txt").read_text() == "4"
    assert not (tmp_path / "best.tmp").exists() and not (tmp_path / "best.old").exists()
