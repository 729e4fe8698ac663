"""The one way in to a trained model: "a local folder, a weights file, or a hub id" -> model,
tokenizer and generation configuration (design §11).

:func:`load_pretrained` is what the pipeline, ``evaluate.py``, ``gradio_app.py``, ``train.py``
(fine-tuning with ``model.init=enclap``, resuming) and the benchmarks call. The lower-level
functions read checkpoint files for :meth:`EnClapBartForConditionalGeneration.from_pretrained`:
hub ids are fetched once through ``huggingface_hub`` (and cached there), wrapper prefixes are
stripped, and a missing key is an error, never a silent random initialisation.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from common.errors import UserError

logger = logging.getLogger(__name__)

#: The tokenizer of checkpoints that carry none (the authors' releases): BART's (design §7).
DEFAULT_TOKENIZER = "facebook/bart-base"
#: Any of these in a folder means it carries its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Copies of `model.shared.weight`; a checkpoint file may omit them (save_pretrained does).
TIED_KEYS = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
# Prefixes added by wrappers around the module: DDP (`accelerator.save_state`) and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used: missing files, missing keys, wrong shapes, unreachable hub id."""


@dataclass
class Pretrained:
    """What :func:`load_pretrained` returns.

    Args:
        model: the model in evaluation mode, on the CPU.
        tokenizer: the checkpoint's own tokenizer, else BART's.
        generation_config: the design §7 beam search with the model's special ids.
        folder: the local folder the files came from (a hub snapshot for a hub id).
    """

    model: Any
    tokenizer: Any
    generation_config: Any
    folder: str


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


def has_tokenizer(folder: str) -> bool:
    """Whether a local folder carries tokenizer files."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike, fallback: bool = True):
    """A tokenizer from a local folder or a hub id.

    A local checkpoint folder without tokenizer files (the authors' releases carry none) gets
    ``fallback``. A hub id is handed to transformers as it is, so only its tokenizer files are
    fetched; :func:`load_pretrained` passes the hub checkpoint's resolved snapshot instead, so
    a hub checkpoint that ships its own tokenizer gets it.

    Args:
        name_or_path: a folder, a weights file inside a checkpoint folder, or a hub id.
        fallback: give a local folder that carries no tokenizer :data:`DEFAULT_TOKENIZER` (False:
            that is an error).
    """
    from transformers import AutoTokenizer

    source = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isfile(source):
        source = os.path.dirname(os.path.abspath(source))
    if os.path.isdir(source) and not has_tokenizer(source) and fallback:
        source = DEFAULT_TOKENIZER
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, TypeError, ValueError) as exc:
        # Offline, transformers raises TypeError for an uncached hub tokenizer.
        raise CheckpointError(
            f"could not load the tokenizer from {source} ({type(exc).__name__}): download it once "
            f"(e.g. `huggingface-cli download {source}`) or copy its tokenizer files into {name_or_path}"
        ) from exc


def load_pretrained(name_or_path: str | os.PathLike, tokenizer: Optional[str] = None,
                    cache_dir: Optional[str] = None, **config_overrides) -> Pretrained:
    """Load a trained EnCLAP model with its tokenizer and generation configuration.

    Args:
        name_or_path: a checkpoint folder (released or written by ``train.py``), a weights file
            in such a folder, or a hub id.
        tokenizer: a tokenizer folder or hub id to use instead of the checkpoint's own.
        cache_dir: the Hugging Face cache for hub ids (default: huggingface_hub's).
        **config_overrides: model config attributes to override (e.g. ``dropout=0.1``).
    """
    from .generation import GenerationOptions
    from .modeling_enclap import EnClapBartForConditionalGeneration

    folder, weights_file = resolve_checkpoint(name_or_path, cache_dir=cache_dir)  # a hub id is fetched once, here
    model = EnClapBartForConditionalGeneration.from_pretrained(weights_file or folder, **config_overrides)
    tok = load_tokenizer(tokenizer or folder)
    return Pretrained(model=model, tokenizer=tok,
                      generation_config=GenerationOptions().to_generation_config(model.config), folder=folder)
