"""Every recipe check in one place, run before anything heavy (no model, no accelerator yet).

:func:`check_recipe` is the one validation function of ``train.py``: schema keys and values
(already checked by :func:`training.config.load_config`), the CSV files and feature folders,
every feature file the CSVs name, the metric names and which of them can run here, and the
frame limit against the model's positions. Each problem raises a :class:`ConfigError` whose
message is one line naming the key and the fix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from omegaconf import DictConfig

from data.dataset import CaptionDataset
from scoring import available_metrics, normalize_metrics, preflight
from training.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class RecipePlan:
    """What the checks found out, for the run to use.

    Args:
        metrics: the requested metrics that can run here.
        select_metric: the metric that picks ``best/`` (the recipe's, or CIDEr-D when that
            one cannot run here).
        skipped_metrics: requested metrics that cannot run here.
        train_captions: the training captions (for a scratch tokenizer).
    """

    metrics: tuple[str, ...]
    select_metric: str
    skipped_metrics: tuple[str, ...]
    train_captions: list[str]


def model_positions(cfg: DictConfig) -> int:
    """``max_position_embeddings`` of the model the recipe builds, read from a config file only."""
    if cfg.model.init == "scratch":
        return int(cfg.model.max_position_embeddings)
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(str(cfg.model.name_or_path)).max_position_embeddings)
    except (OSError, TypeError, ValueError) as error:
        raise ConfigError(f"model.name_or_path: cannot read the config of {cfg.model.name_or_path!r} "
                          f"({type(error).__name__}); download it or set a local folder") from None


def check_recipe(cfg: DictConfig, check_model: bool = True) -> RecipePlan:
    """Run every check of the recipe ``cfg``; returns what the run needs to know.

    Args:
        cfg: a recipe from :func:`training.config.load_config`.
        check_model: also read the model's config for the frame limit (off when resuming,
            where the checkpoint's own config decides).
    """
    try:
        wanted = normalize_metrics(list(cfg.eval.metrics))
        select_metric = normalize_metrics([cfg.eval.select_metric])[0]
    except ValueError as error:
        raise ConfigError(f"eval.metrics / eval.select_metric: {error}") from None
    for key in ("train_csv", "val_csv"):
        if not os.path.isfile(cfg.data[key]):
            raise ConfigError(f"data.{key} file not found: {os.path.abspath(cfg.data[key])} (set data.{key}=PATH)")
    for key in ("encodec_base_path", "clap_base_path"):
        if not os.path.isdir(cfg.data[key]):
            raise ConfigError(f"data.{key} folder not found: {os.path.abspath(cfg.data[key])} (set data.{key}=PATH)")
    roots = (cfg.data.encodec_base_path, cfg.data.clap_base_path)
    train_probe = CaptionDataset(cfg.data.train_csv, *roots, train=True)  # checks every feature file exists
    CaptionDataset(cfg.data.val_csv, *roots, train=False)
    if check_model and cfg.data.max_frames is not None:
        positions = model_positions(cfg)
        if cfg.data.max_frames > positions - 3:
            raise ConfigError(f"data.max_frames={cfg.data.max_frames} exceeds what the model's {positions} positions "
                              f"allow ({positions - 3}); lower data.max_frames")

    metrics = available_metrics(wanted)
    if not metrics:
        preflight(wanted)  # raises the one-line reason and fix
    skipped = tuple(m for m in wanted if m not in metrics)
    if select_metric not in metrics:
        select_metric = "cider_d" if "cider_d" in metrics else metrics[0]
    return RecipePlan(metrics=metrics, select_metric=select_metric, skipped_metrics=skipped,
                      train_captions=list(train_probe.captions))
