"""The one way in to a trained model, above the model: checkpoint -> model, tokenizer and
generation configuration (design §11).

:func:`load_pretrained` is what the pipeline, ``evaluate.py``, ``gradio_app.py``, ``train.py``
(fine-tuning with ``model.init=enclap``, resuming) and the benchmarks call; the checkpoint files
themselves are read by :mod:`modeling.loading`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from .loading import CheckpointError, resolve_checkpoint
from .generation import GenerationOptions
from .modeling_enclap import EnClapBartForConditionalGeneration

#: The tokenizer of checkpoints that carry none (the authors' releases): BART's (design §7).
DEFAULT_TOKENIZER = "facebook/bart-base"
#: Any of these in a folder means it carries its own tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


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


def has_tokenizer(folder: str) -> bool:
    """Whether a local folder carries tokenizer files."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike, fallback: bool = True, config: Any = None):
    """A tokenizer from a local folder or a hub id.

    A local checkpoint folder without tokenizer files (the authors' releases carry none) gets
    ``fallback``. A hub id is handed to transformers as it is, so only its tokenizer files are
    fetched; :func:`load_pretrained` passes the hub checkpoint's resolved snapshot instead, so
    a hub checkpoint that ships its own tokenizer gets it.

    Args:
        name_or_path: a folder, a weights file inside a checkpoint folder, or a hub id.
        fallback: give a local folder that carries no tokenizer :data:`DEFAULT_TOKENIZER` (False:
            that is an error).
        config: the checkpoint's model config, when it is already loaded. Without it transformers
            reads the folder's ``config.json`` once more, as a stock BART config, and transformers 5
            then warns that ``encodec_pad_token_id`` lies outside the text vocabulary.
    """
    from transformers import AutoTokenizer

    source = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isfile(source):
        source = os.path.dirname(os.path.abspath(source))
    if os.path.isdir(source) and not has_tokenizer(source) and fallback:
        source = DEFAULT_TOKENIZER
    try:
        return AutoTokenizer.from_pretrained(source, **({} if config is None else {"config": config}))
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
    folder, weights_file = resolve_checkpoint(name_or_path, cache_dir=cache_dir)  # a hub id is fetched once, here
    model = EnClapBartForConditionalGeneration.from_pretrained(weights_file or folder, **config_overrides)
    tok = load_tokenizer(tokenizer or folder, config=None if tokenizer else model.config)
    return Pretrained(model=model, tokenizer=tok,
                      generation_config=GenerationOptions().to_generation_config(model.config), folder=folder)
