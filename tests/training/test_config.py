"""Tests for training/config.py: the recipes, overrides and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, load_config

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


# ------------------------------------------------------------------------------ paths and workers


def test_relative_paths_resolve_against_the_callers_folder(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path / "mine")
    own = tmp_path / "mine" / "own.yaml"
    own.write_text("output_dir: runs/from_yaml\ndata:\n  val_csv: csv/valid.csv\n")
    cfg = load_config("own.yaml", ["data.train_csv=csv/train.csv", "data.encodec_base_path=../feats/enc",
                                   "data.clap_base_path=/abs/clap"])
    mine = tmp_path / "mine"
    assert cfg.data.train_csv == str(mine / "csv" / "train.csv")          # override
    assert cfg.data.val_csv == str(mine / "csv" / "valid.csv")            # written in the YAML
    assert cfg.output_dir == str(mine / "runs" / "from_yaml")
    assert cfg.data.encodec_base_path == str(tmp_path / "feats" / "enc")  # ".." normalised
    assert cfg.data.clap_base_path == "/abs/clap"


def test_shipped_recipe_found_from_any_folder_and_model_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("cfg/tiny.yaml")  # not in tmp_path: the repository's recipe
    assert cfg.model.init == "scratch" and cfg.output_dir == str(tmp_path / "runs" / "tiny")
    assert load_config(None).model.name_or_path == "facebook/bart-base"  # a Hub id stays one
    (tmp_path / "ckpt").mkdir()
    cfg = load_config(None, ["model.init=enclap", "model.name_or_path=ckpt"])  # exists here: a folder
    assert cfg.model.name_or_path == str(tmp_path / "ckpt")
    cfg = load_config(None, ["model.name_or_path=runs/x/best", "model.tokenizer=org/tok"])  # cannot be a Hub id
    assert cfg.model.name_or_path == str(tmp_path / "runs" / "x" / "best") and cfg.model.tokenizer == "org/tok"
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'cfg' / 'nope.yaml'} "):
        load_config("cfg/nope.yaml")


def test_loader_workers_default_to_the_machines_cores(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert load_config(str(REPO / "cfg/clotho_finetune/base.yaml")).data.num_workers == 1  # 2 cores: 1 spare
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert load_config(None).data.num_workers == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 processes share 64 cores: 8 each, 4 workers at most
    assert load_config(None).data.num_workers == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert load_config(None).data.num_workers == 1
    assert load_config(None, ["data.num_workers=3"]).data.num_workers == 3  # an explicit value stays
