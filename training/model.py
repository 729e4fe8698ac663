"""The model and tokenizer a recipe starts from: BART, a trained EnCLAP checkpoint, or scratch."""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration, load_pretrained, load_tokenizer
from training.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


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
            logger.info("fine-tuning from %s", loaded.folder)
        return loaded.model, loaded.tokenizer
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
