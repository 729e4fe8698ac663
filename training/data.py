"""The data side of a training run: datasets, collator, global batch sampler and loader."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from data.training.collator import EnClapCollator
from data.training.dataset import CaptionDataset
from training.config import ConfigError
from training.sampler import GlobalBatchSampler


@dataclass
class TrainData:
    """What the loop reads.

    Args:
        train_set: the training examples (crops and MCM masks drawn per epoch).
        val_set: the validation clips (possibly the first ``eval.max_samples``).
        collator: the one collator of training, evaluation and inference.
        sampler: this process's share of each global batch.
        loader: the training DataLoader.
        batches_per_epoch: global batches per epoch.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
    """

    train_set: CaptionDataset
    val_set: Any
    collator: EnClapCollator
    sampler: GlobalBatchSampler
    loader: DataLoader
    batches_per_epoch: int
    steps_per_epoch: int


def build_data(cfg: DictConfig, model_config, tokenizer, accelerator,
               known_frames: dict[str, int] | None = None) -> TrainData:
    """Datasets, collator, sampler and loader for the recipe and the model being trained.

    Args:
        known_frames: frames per training clip already read by the recipe checks (reused by
            length grouping instead of reading every header again).

    Raises:
        ConfigError: ``data.max_frames`` beyond what the model's positions allow.
    """
    max_frames = cfg.data.max_frames or model_config.max_frames
    if max_frames > model_config.max_frames:
        raise ConfigError(f"data.max_frames={max_frames} exceeds what the model's "
                          f"{model_config.max_position_embeddings} positions allow ({model_config.max_frames}); "
                          "lower data.max_frames")
    roots = (cfg.data.encodec_base_path, cfg.data.clap_base_path)
    common = dict(max_frames=max_frames, seed=cfg.seed, num_rvq=model_config.num_rvq,
                  codebook_size=model_config.encodec_vocab_size, clap_dim=model_config.d_clap, check_files=False,
                  layout=cfg.data.feature_layout)  # per-file trees or packed stores (docs/data.md)
    train_set = CaptionDataset(cfg.data.train_csv, *roots, train=True, masking_prob=cfg.data.encodec_masking_prob,
                               mask_span=cfg.data.encodec_masking_span, static_masks=cfg.data.static_masks, **common)
    val_set = CaptionDataset(cfg.data.val_csv, *roots, train=False, **common)
    if cfg.eval.max_samples is not None:
        val_set = Subset(val_set, range(min(cfg.eval.max_samples, len(val_set))))
    collator = EnClapCollator(tokenizer, max_target_length=cfg.data.max_target_length,
                              num_rvq=model_config.num_rvq, encodec_pad_token_id=model_config.encodec_pad_token_id,
                              bos_token_id=model_config.bos_token_id, eos_token_id=model_config.eos_token_id)
    sampler = GlobalBatchSampler(len(train_set), cfg.optim.batch_size, accelerator.num_processes,
                                 accelerator.process_index, seed=cfg.seed,
                                 lengths=train_set.clip_frames(known_frames) if cfg.data.group_by_length else None)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and accelerator.device.type == "cuda")
    batches = len(sampler)
    return TrainData(train_set=train_set, val_set=val_set, collator=collator, sampler=sampler, loader=loader,
                     batches_per_epoch=batches,
                     steps_per_epoch=math.ceil(batches / cfg.optim.gradient_accumulation_steps))
