"""Validation during training: captions for every validation clip exactly once across processes,
scored once on the main process (design §8), written as a predictions CSV."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Subset

from common.io import write_predictions_csv
from modeling.generation import generate_captions
from scoring import compute_scores

MODEL_INPUTS = ("input_ids", "encodec_mask", "attention_mask", "clap_embedding")


def val_references(dataset) -> tuple[list[list[str]], list[str]]:
    """(references, file_path) of every validation clip, read from the CSV (no feature loading)."""
    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) \
        else (dataset, range(len(dataset)))
    return [list(base.references[i]) for i in indices], [base.file_paths[i] for i in indices]


def generate_validation(model, dataset, collator, tokenizer, accelerator, batch_size: int, generation_config,
                        num_workers: int = 0) -> list[str]:
    """Captions every validation clip exactly once across processes.

    Process ``p`` of ``P`` captions clips ``p, p+P, ...`` (no padding, so no duplicates) with the
    pipeline's generation routine; ``(index, caption)`` pairs are gathered and sorted on every
    process.

    Returns:
        The list of predictions in dataset order (on every process).
    """
    from accelerate.utils import gather_object

    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collator,
                        num_workers=num_workers, pin_memory=accelerator.device.type == "cuda")
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


def validate(model, dataset, collator, tokenizer, accelerator, generation_config, metrics, batch_size: int,
             predictions_path: str, num_workers: int = 0) -> dict[str, float]:
    """Generate (all processes), then write the predictions and score them once (main process).

    Returns:
        The scores, on every process.
    """
    from accelerate.utils import broadcast_object_list

    predictions = generate_validation(model, dataset, collator, tokenizer, accelerator, batch_size,
                                      generation_config, num_workers)
    box = [None]
    if accelerator.is_main_process:
        refs, files = val_references(dataset)
        write_predictions_csv(predictions_path, files, predictions, refs)
        box[0] = compute_scores(predictions, refs, metrics)
    return broadcast_object_list(box)[0]


def predictions_path(output_dir: str, step: int) -> str:
    """Where the validation captions of ``step`` are written."""
    return os.path.join(output_dir, "predictions", f"step_{step:08d}.csv")
