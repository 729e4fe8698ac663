"""Validation during training: captions for every validation clip exactly once across processes,
scored once on the main process (design §8), written as a predictions CSV, with a warning when the
captions are degenerate (all empty, or one caption for nearly every clip)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from common.io import write_predictions_csv
from modeling.generation import generate_captions
from scoring import compute_scores
from scoring.diversity import CaptionStats, caption_stats, degenerate_warning

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "encodec_mask", "attention_mask", "clap_embedding")


def val_references(dataset) -> tuple[list[list[str]], list[str]]:
    """(references, file_path) of every validation clip, read from the CSV (no feature loading)."""
    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) \
        else (dataset, range(len(dataset)))
    return [list(base.references[i]) for i in indices], [base.file_paths[i] for i in indices]


def validation_loader(dataset, collator, accelerator, batch_size: int, num_workers: int = 0) -> DataLoader:
    """This process's validation clips ``p, p+P, ...`` in batches; build it once per run.

    With workers, ``persistent_workers`` keeps them alive from one validation to the next (no
    start-up per validation), and on CUDA the batches come in pinned memory so that the copies
    to the device do not block.
    """
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collator, num_workers=num_workers,
                      pin_memory=accelerator.device.type == "cuda", persistent_workers=num_workers > 0)


def generate_validation(model, dataset, collator, tokenizer, accelerator, batch_size: int, generation_config,
                        num_workers: int = 0, loader: Optional[DataLoader] = None) -> list[str]:
    """Captions every validation clip exactly once across processes.

    Process ``p`` of ``P`` captions clips ``p, p+P, ...`` (no padding, so no duplicates) with the
    pipeline's generation routine; ``(index, caption)`` pairs are gathered and sorted on every
    process.

    Args:
        loader: :func:`validation_loader` of ``dataset`` (built here when None).

    Returns:
        The list of predictions in dataset order (on every process).
    """
    from accelerate.utils import gather_object

    if loader is None:
        loader = validation_loader(dataset, collator, accelerator, batch_size, num_workers)
    indices = list(loader.dataset.indices)
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    local = []
    with torch.no_grad(), accelerator.autocast():
        for batch in loader:
            inputs = {k: batch[k].to(accelerator.device, non_blocking=True) for k in MODEL_INPUTS}
            texts = generate_captions(unwrapped, tokenizer, inputs, generation_config)
            local.extend(zip(indices[len(local):len(local) + len(texts)], texts))
    unwrapped.train(was_training)
    pairs = dict(gather_object(local)) if accelerator.num_processes > 1 else dict(local)
    if sorted(pairs) != list(range(len(dataset))):
        raise RuntimeError(f"validation gathered {len(pairs)} of {len(dataset)} clips")
    return [pairs[i] for i in range(len(dataset))]


@dataclass
class Validation:
    """One validation pass.

    Args:
        scores: corpus scores (the same on every process).
        stats: empty / distinct counts of the captions.
    """

    scores: dict[str, float]
    stats: CaptionStats


def validate(model, dataset, collator, tokenizer, accelerator, generation_config, metrics, batch_size: int,
             predictions_path: str, num_workers: int = 0, hint: str = "",
             loader: Optional[DataLoader] = None) -> Validation:
    """Generate (all processes), then write the predictions and score them once (main process).

    Args:
        hint: what to do when the captions are degenerate (see :func:`undertrained_hint`);
            the main process logs it in the warning.
        loader: :func:`validation_loader` of ``dataset``, kept for the whole run (persistent workers).

    Returns:
        The scores and caption statistics, on every process.
    """
    from training.distributed import share_from_main

    predictions = generate_validation(model, dataset, collator, tokenizer, accelerator, batch_size,
                                      generation_config, num_workers, loader)
    scores = None
    if accelerator.is_main_process:
        refs, files = val_references(dataset)
        write_predictions_csv(predictions_path, files, predictions, refs)
        scores = compute_scores(predictions, refs, metrics)
        warning = degenerate_warning(predictions, hint, "validation clips")
        if warning:
            logger.warning("%s (%s)", warning, predictions_path)
    # The other ranks wait for the scores as long as the main process is alive (SPICE takes minutes).
    return Validation(scores=share_from_main(scores), stats=caption_stats(predictions))


def undertrained_hint(step: int, examples: int, epochs: int, lr: float) -> str:
    """What a user can raise when validation captions are degenerate (a run too short or too small).

    Args:
        step: optimizer steps so far.
        examples: training examples (caption rows).
        epochs, lr: the recipe's ``optim.epochs`` and ``optim.lr``.
    """
    return (f"the model is under-trained after {step} optimizer steps on {examples} training captions: raise "
            f"optim.epochs (now {epochs}), optim.lr (now {lr:g}) or add training data; best/ is never taken from "
            "a pass whose captions are all empty")


def predictions_path(output_dir: str, step: int) -> str:
    """Where the validation captions of ``step`` are written."""
    return os.path.join(output_dir, "predictions", f"step_{step:08d}.csv")
