"""Tests for training/optim.py: AdamW groups and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import load_config
from training.optim import build_optimizer, build_scheduler, param_groups


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
