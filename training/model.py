"""The model and tokenizer a recipe starts from: BART, a trained EnCLAP checkpoint, or scratch."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from data.extraction.encoders import codec_class
from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration, load_pretrained, load_tokenizer
from training.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


class _TiedWeightsNotice(logging.Filter):
    """Drops Accelerate's "Removed shared tensor ... check ... while reloading" notice: the model
    ties its token embeddings on purpose, checkpoints store them once and loading re-ties them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.msg)  # Accelerate prefixes "[RANK n] "


def quiet_tied_weights_notice() -> None:
    """Replaces Accelerate's tied-weights notice on every checkpoint by one line of ours, once per run."""
    accelerate_logger = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedWeightsNotice) for f in accelerate_logger.filters):
        accelerate_logger.addFilter(_TiedWeightsNotice())
    logger.info("checkpoints store the tied token embeddings (model.shared, embed_tokens, lm_head) once; "
                "loading re-ties them (design §11)")


def starting_step(folder) -> str:
    """Which training step a checkpoint folder holds, in words, for the fine-tuning log line.

    ``checkpoints/step_N/model`` has ``../trainer_state.json``; a run's ``best/`` has the run's
    ``summary.json`` beside it; a released folder has neither.

    Args:
        folder: the folder the weights were loaded from.
    """
    folder = os.path.abspath(str(folder))
    parent = os.path.dirname(folder)
    for state, key in ((os.path.join(parent, "trainer_state.json"), "global_step"),
                       (os.path.join(parent, "summary.json"), "best_step")):
        if os.path.isfile(state):
            try:
                with open(state, encoding="utf-8") as handle:
                    return f"step {int(json.load(handle)[key])} of the run in {os.path.dirname(state)}"
            except (OSError, ValueError, KeyError, TypeError):
                break
    return "no training state beside it: a released or copied checkpoint, step unknown"


def build_model_and_tokenizer(cfg: DictConfig, accelerator, train_captions: Sequence[str],
                              resume_dir: Optional[str]):
    """The model and tokenizer the recipe asks for (or those of the checkpoint being resumed).

    Tokenizer rule: ``model.tokenizer`` when set; else the checkpoint's own (our checkpoints
    carry one, the authors' releases do not and get BART's); for ``init=bart`` the BART id's.

    Args:
        cfg: the merged recipe.
        accelerator: for main-process-only work (tokenizer training).
        train_captions: captions for the ``scratch`` tokenizer.
        resume_dir: checkpoint folder to resume from (its ``model/`` gives config + tokenizer).
    """
    quiet_tied_weights_notice()
    m = cfg.model
    fields = dict(mcm_loss_scale=m.mcm_loss_scale, label_smoothing=m.label_smoothing)
    if m.dropout is not None:
        fields["dropout"] = m.dropout
    if resume_dir is not None or m.init == "enclap":
        # Resuming: weights, optimizer etc. come from the Accelerate state right after; the model
        # folder gives the exact architecture and tokenizer (also for a scratch tokenizer).
        source = os.path.join(resume_dir, "model") if resume_dir is not None else m.name_or_path
        loaded = load_pretrained(source, tokenizer=None if resume_dir is not None else m.tokenizer, **fields)
        if resume_dir is None:
            logger.info("fine-tuning from %s (%s)", os.path.abspath(str(loaded.folder)), starting_step(loaded.folder))
        return loaded.model, loaded.tokenizer
    if cfg.data.codec is not None:  # another codec: its codebooks, and its name for captioning
        codec = codec_class(cfg.data.codec)
        fields.update(num_rvq=codec.num_codebooks, encodec_vocab_size=codec.codebook_size,
                      encodec_pad_token_id=codec.codebook_size, codec=cfg.data.codec)
    if m.init == "bart":
        tokenizer = load_tokenizer(m.tokenizer or m.name_or_path)
        return EnClapBartForConditionalGeneration.from_bart(m.name_or_path, **fields), tokenizer
    # scratch: a tokenizer trained from the training captions on the main process, then shared.
    tok_dir = os.path.join(cfg.output_dir, "tokenizer")
    if accelerator.is_main_process:
        train_tokenizer(train_captions, vocab_size=m.vocab_size).save_pretrained(tok_dir)
    accelerator.wait_for_everyone()
    tokenizer = load_tokenizer(tok_dir, fallback=False)
    config = EnClapBartConfig(
        vocab_size=len(tokenizer), d_model=m.d_model, encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers, encoder_attention_heads=m.attention_heads,
        decoder_attention_heads=m.attention_heads, encoder_ffn_dim=m.ffn_dim, decoder_ffn_dim=m.ffn_dim,
        max_position_embeddings=m.max_position_embeddings, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, **fields,
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    return EnClapBartForConditionalGeneration(config), tokenizer
