"""Reading checkpoint files, below the model (design §11): "a local folder, a weights file, or a
hub id" -> a local folder and its state dict, for
:meth:`EnClapBartForConditionalGeneration.from_pretrained`. Hub ids are fetched once through
``huggingface_hub`` (and cached there), wrapper prefixes are stripped, and a missing key is an
error, never a silent random initialisation. The model + tokenizer entry point above the model is
:mod:`modeling.pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch
from torch import nn

from common.errors import UserError

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Copies of `model.shared.weight`; a checkpoint file may omit them (save_pretrained does).
TIED_KEYS = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
# Prefixes added by wrappers around the module: DDP (`accelerator.save_state`) and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used: missing files, missing keys, wrong shapes, unreachable hub id."""


def resolve_checkpoint(name_or_path: str | os.PathLike, cache_dir: Optional[str] = None,
                       revision: Optional[str] = None) -> tuple[str, Optional[str]]:
    """Find the local files of a checkpoint.

    Args:
        name_or_path: a folder (``config.json`` + weights), a weights file inside such a folder
            (``pytorch_model.bin`` / ``*.safetensors``), or a Hugging Face Hub repo id.
        cache_dir, revision: hub download options.

    Returns:
        ``(folder, weights file or None)``; ``None`` means "the folder's usual weight files".

    Raises:
        CheckpointError: a path that does not exist locally and cannot be fetched from the hub.
    """
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(path):
        return path, None
    if os.path.isfile(path):
        if not path.endswith((".bin", ".safetensors", ".pt", ".pth")):
            raise CheckpointError(f"{path}: expected a checkpoint folder (config.json + weights) or a weights file")
        return os.path.dirname(os.path.abspath(path)), path
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(path, revision=revision, cache_dir=cache_dir,
                                   allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"])
        return folder, None
    except Exception as error:  # offline, unknown repo, bad id: all mean "not available"
        raise CheckpointError(
            f"{path}: no such file or folder, and fetching it from the Hugging Face Hub failed "
            f"({type(error).__name__}); download the checkpoint and pass its folder"
        ) from error


def _read_weight_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    # weights_only: never execute pickled code from a downloaded file.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from every key."""
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        stripped[key] = value
    return stripped


def load_state_dict(folder: str, weights_file: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint (one file, or the folder's single or sharded files), prefixes stripped."""
    if weights_file is not None:
        return strip_wrapper_prefixes(_read_weight_file(weights_file))
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return strip_wrapper_prefixes(_read_weight_file(path))
    for name in INDEX_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state_dict = {}
            for shard in shards:
                state_dict.update(_read_weight_file(os.path.join(folder, shard)))
            return strip_wrapper_prefixes(state_dict)
    raise CheckpointError(f"{folder}: no weights found (expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)})")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming every missing or mis-shaped key; warn on unexpected keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and k not in TIED_KEYS]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if wrong_shape:
            parts.append(f"wrong shapes: {'; '.join(wrong_shape[:10])}")
        raise CheckpointError(f"{source}: checkpoint does not match the model config ({'; '.join(parts)})")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        logger.warning("%s: ignoring %d unexpected keys: %s", source, len(unexpected), ", ".join(unexpected[:10]))
