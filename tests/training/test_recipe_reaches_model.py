"""The recipe's ``model.*`` settings reach the model train.py builds (training/model.py), for a
model built from scratch and for one fine-tuned from an EnCLAP checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.helpers import CAPTIONS
from training.config import load_config
from training.model import build_model_and_tokenizer

REPO = Path(__file__).resolve().parents[2]
# Every value off cfg/tiny.yaml's and the model defaults, and all different.
SETTINGS = {"dropout": 0.15, "label_smoothing": 0.05, "mcm_loss_scale": 0.35}
SIZES = {"d_model": 24, "ffn_dim": 40, "encoder_layers": 3, "decoder_layers": 1, "attention_heads": 2,
         "max_position_embeddings": 48}

ACCELERATOR = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)


def _cfg(tmp_path, *overrides):
    return load_config(str(REPO / "cfg" / "tiny.yaml"), [f"output_dir={tmp_path / 'run'}", *overrides])


def test_scratch_model_has_the_recipes_sizes_and_losses(tmp_path):
    cfg = _cfg(tmp_path, *(f"model.{k}={v}" for k, v in {**SETTINGS, **SIZES}.items()))
    model, tokenizer = build_model_and_tokenizer(cfg, ACCELERATOR, CAPTIONS, None)
    config = model.config
    assert {k: getattr(config, k) for k in SETTINGS} == SETTINGS
    assert (config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim, config.encoder_layers,
            config.decoder_layers, config.encoder_attention_heads, config.decoder_attention_heads,
            config.max_position_embeddings) == (24, 40, 40, 3, 1, 2, 2, 48)
    assert len(model.model.encoder.layers) == 3 and len(model.model.decoder.layers) == 1
    assert config.vocab_size == len(tokenizer)


def test_fine_tuning_takes_the_recipes_losses_and_dropout_over_the_checkpoints(tmp_path, tiny_ckpt):
    cfg = _cfg(tmp_path, "model.init=enclap", f"model.name_or_path={tiny_ckpt}",
               *(f"model.{k}={v}" for k, v in SETTINGS.items()))
    model, _ = build_model_and_tokenizer(cfg, ACCELERATOR, CAPTIONS, None)
    assert {k: getattr(model.config, k) for k in SETTINGS} == SETTINGS
    assert model.config.d_model == 32  # the checkpoint's architecture (tests/helpers.make_tiny_config)
