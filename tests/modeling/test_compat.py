"""modeling/compat.py: what differs between transformers 4.57 and 5.x, under whichever is installed.

The model, generation, loading and training tests run under both (`make test-transformers5` for
5.x); these check the few places where the two majors need different calls.
"""

from __future__ import annotations

import pytest
import torch
import transformers.configuration_utils

from modeling import EnClapBartForConditionalGeneration, compat
from tests.helpers import make_batch, make_tiny_config, random_clips


def test_the_installed_major_is_detected():
    major = int(transformers.__version__.split(".")[0])
    assert compat.TRANSFORMERS_5 == (major == 5)
    assert compat.CACHE in type(transformers.modeling_outputs.Seq2SeqLMOutput()).__dataclass_fields__


def test_cache_is_taken_under_either_name():
    cache = object()
    for name in ("cache", "past_key_values"):
        kwargs = {name: cache, "use_cache": True}
        assert compat.pop_cache(None, kwargs) is cache and kwargs == {"use_cache": True}
    assert compat.pop_cache(cache, {}) is cache


def test_saving_a_config_warns_of_nothing(tmp_path, monkeypatch):
    # transformers 5 checks every `*_token_id` field against the text vocabulary when saving;
    # the codec pad id (1024) indexes the codec tables instead.
    warned = []
    logger = transformers.configuration_utils.logger
    monkeypatch.setattr(logger, "warning_once", lambda message, *args: warned.append(message))
    monkeypatch.setattr(logger, "warning", lambda message, *args: warned.append(message))
    config = make_tiny_config(100)
    config.save_pretrained(tmp_path)
    assert warned == []
    assert config.encodec_pad_token_id == 1024


def test_head_masks_run_under_4x_and_are_refused_under_5x():
    torch.manual_seed(0)
    config = make_tiny_config(100)
    model = EnClapBartForConditionalGeneration(config).eval()
    codes, clap = random_clips(2, [9, 6], seed=0)
    batch = make_batch(codes, clap)
    batch["decoder_input_ids"] = torch.tensor([[2, 0, 5], [2, 0, 7]])
    masks = {"head_mask": torch.ones(config.encoder_layers, config.encoder_attention_heads),
             "decoder_head_mask": torch.ones(config.decoder_layers, config.decoder_attention_heads)}
    with torch.no_grad():
        for name, mask in masks.items():
            if compat.TRANSFORMERS_5:
                with pytest.raises(ValueError, match="head masks needs transformers 4.x"):
                    model(**batch, **{name: mask})
            else:
                torch.testing.assert_close(model(**batch, **{name: mask}).logits, model(**batch).logits)
