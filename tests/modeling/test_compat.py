"""modeling/compat.py: what differs between transformers 4.57 and 5.x, under whichever is installed.

The model, generation, loading and training tests run under both (`make test-transformers5` for
5.x); these check the few places where the two majors need different calls.
"""

from __future__ import annotations

import pytest
import torch
import transformers.configuration_utils

from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration, compat
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


def test_saving_and_loading_a_config_warns_of_nothing(tmp_path, monkeypatch):
    # transformers 5 checks every `*_token_id` field against the text vocabulary when saving and
    # loading; the codec pad id (1024) indexes the codec tables instead.
    warned = []
    logger = transformers.configuration_utils.logger
    monkeypatch.setattr(logger, "warning_once", lambda message, *args: warned.append(message))
    monkeypatch.setattr(logger, "warning", lambda message, *args: warned.append(message))
    config = make_tiny_config(100)
    config.save_pretrained(tmp_path)
    assert warned == []
    assert config.encodec_pad_token_id == 1024
    loaded = EnClapBartConfig.from_pretrained(tmp_path)
    assert warned == []
    assert loaded.encodec_pad_token_id == 1024 and loaded.vocab_size == 100
    config.pad_token_id = 100  # a text special token outside the vocabulary is still reported
    config.save_pretrained(tmp_path / "bad")
    if compat.TRANSFORMERS_5:
        assert len(warned) == 1 and "pad_token_id" in warned[0]
    else:  # 4.x has no such check
        assert warned == []


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


def _attention_model_and_batch(implementation: str):
    torch.manual_seed(0)
    config = make_tiny_config(100)
    model = EnClapBartForConditionalGeneration(config).eval()
    model.set_attn_implementation(implementation)
    codes, clap = random_clips(2, [9, 6], seed=0)
    batch = make_batch(codes, clap)
    batch["decoder_input_ids"] = torch.tensor([[2, 0, 5, 9], [2, 0, 7, 1]])
    return model, batch


def _self_attention_weights(attention, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head from the module's projections, padded keys excluded."""
    batch, length, _ = states.shape
    heads = attention.num_heads

    def split(x):
        return x.view(batch, length, heads, -1).transpose(1, 2)  # (B, H, L, d)

    q, k = split(attention.q_proj(states)), split(attention.k_proj(states))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.masked_fill(~keep[:, None, None, :].bool(), float("-inf")).softmax(-1)


def test_eager_attention_weights_of_the_encoder_decoder_and_cross_attention():
    model, batch = _attention_model_and_batch("eager")
    encoder_batch = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    keep = batch["attention_mask"]
    with torch.no_grad():
        encoded = model.model.encoder(**encoder_batch, output_attentions=True, output_hidden_states=True)
        output = model(**batch, output_attentions=True)
    layers = model.model.encoder.layers
    assert len(encoded.attentions) == len(layers)
    for layer, states, weights in zip(layers, encoded.hidden_states, encoded.attentions):  # states: the layer's input
        torch.testing.assert_close(weights, _self_attention_weights(layer.self_attn, states, keep))
    for got, want in zip(output.encoder_attentions, encoded.attentions, strict=True):
        torch.testing.assert_close(got, want)
    # The decoder's as stock BART gives them: causal self-attention, cross-attention off the padding.
    steps, rows = batch["decoder_input_ids"].shape[1], keep.shape[1]
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()
    assert len(output.decoder_attentions) == len(output.cross_attentions) == model.config.decoder_layers
    for self_weights, cross_weights in zip(output.decoder_attentions, output.cross_attentions):
        assert self_weights.shape == (2, model.config.decoder_attention_heads, steps, steps)
        assert cross_weights.shape == (2, model.config.decoder_attention_heads, steps, rows)
        assert torch.all(self_weights[..., causal] > 0) and torch.all(self_weights[..., ~causal] == 0)
        assert torch.all(cross_weights[~keep.bool()[:, None, None, :].expand_as(cross_weights)] == 0)
        torch.testing.assert_close(cross_weights.sum(-1), torch.ones(cross_weights.shape[:-1]))


def test_attention_weights_from_sdpa_are_refused_under_5x():
    model, batch = _attention_model_and_batch("sdpa")
    with torch.no_grad():
        if compat.TRANSFORMERS_5:  # transformers 5 refuses them in an SDPA config too
            with pytest.raises(ValueError, match=r"^output_attentions .* 'sdpa'.*set_attn_implementation\('eager'\)"):
                model(**batch, output_attentions=True)
        else:  # 4.x: stock BART's None per layer
            assert model(**batch, output_attentions=True).encoder_attentions == (None, None)
