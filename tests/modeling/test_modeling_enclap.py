"""EnCLAP model: state-dict layout, embeddings, losses, invariances, checkpoint loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.helpers import make_batch, make_tiny_config, random_clips

from modeling import CheckpointError, EnClapBartConfig, EnClapBartForConditionalGeneration

BART_BASE = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)
BART_LARGE = dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)


# ------------------------------------------------------------------ layout (design §3 table)

@pytest.mark.parametrize("sizes,keys,params,d", [(BART_BASE, 313, 165.8, 768), (BART_LARGE, 565, 441.4, 1024)])
def test_state_dict_names_and_shapes(sizes, keys, params, d):
    config = EnClapBartConfig(vocab_size=50265, **sizes)
    with torch.device("meta"):
        model = EnClapBartForConditionalGeneration(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == keys
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == params
    assert shapes["model.shared.weight"] == (50265, d)
    assert shapes["model.encoder.embed_tokens.weight"] == (50265, d)
    for j in range(16):
        assert shapes[f"model.encoder.embed_encodec.{j}.weight"] == (1088, d)
        assert shapes[f"mcm_heads.{j}.weight"] == (1024, d)
        assert shapes[f"mcm_heads.{j}.bias"] == (1024,)
    assert "model.encoder.embed_encodec.16.weight" not in shapes
    assert shapes["model.encoder.clap_projection.weight"] == (d, 512)
    assert shapes["model.encoder.clap_projection.bias"] == (d,)
    assert shapes["model.encoder.embed_positions.weight"] == (1026, d)
    assert shapes["final_logits_bias"] == (1, 50265)
    assert shapes["lm_head.weight"] == (50265, d)
    assert model.model.encoder.embed_encodec[0].padding_idx == 1024
    # tied copies share storage with model.shared
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.config.model_type == "bart"
    assert config.max_frames == 1021


def test_config_defaults_and_validation():
    config = EnClapBartConfig()
    assert (config.d_clap, config.num_rvq, config.encodec_vocab_size, config.encodec_pad_token_id) == (512, 16, 1024, 1024)
    assert (config.mcm_loss_scale, config.label_smoothing) == (0.7, 0.2)
    for bad in (dict(num_rvq=0), dict(encodec_pad_token_id=10), dict(label_smoothing=1.5), dict(mcm_loss_scale=-1)):
        with pytest.raises(ValueError):
            EnClapBartConfig(**bad)


def test_new_modules_initialised_like_bart(tiny_config):
    torch.manual_seed(0)
    config = make_tiny_config(tiny_config.vocab_size, init_std=0.02, d_model=64)
    model = EnClapBartForConditionalGeneration(config)
    table = model.model.encoder.embed_encodec[3].weight
    assert torch.all(table[1024] == 0)
    assert abs(table[:1024].std().item() - 0.02) < 0.002
    assert torch.all(model.mcm_heads[5].bias == 0)
    assert torch.all(model.model.encoder.clap_projection.bias == 0)


# ------------------------------------------------------------------ embeddings

def test_encoder_embedding_layout(tiny_model):
    encoder = tiny_model.model.encoder
    codes, clap = random_clips(1, [5])
    batch = make_batch(codes, clap)
    with torch.no_grad():
        embeds = encoder.embed(batch["input_ids"], batch["encodec_mask"], batch["clap_embedding"])[0]
    positions = encoder.embed_positions.weight
    shared = tiny_model.model.shared.weight
    # slot 0: the projected CLAP vector, no positional embedding
    torch.testing.assert_close(embeds[0], encoder.clap_projection(batch["clap_embedding"])[0].detach())
    # slot 1: <s> token embedding (no scale) + BART position 2
    torch.testing.assert_close(embeds[1], shared[0] + positions[2])
    # slot 2 + t: sum over codebooks + position row t + 3
    for t in range(5):
        expected = sum(encoder.embed_encodec[j].weight[codes[0][t, j]] for j in range(16)) + positions[t + 3]
        torch.testing.assert_close(embeds[2 + t], expected.detach())
    # slot T + 2: </s>
    torch.testing.assert_close(embeds[7], shared[2] + positions[8])


def test_positions_are_used(tiny_model):
    codes, clap = random_clips(1, [6])
    swapped = codes[0].copy()
    swapped[[1, 4]] = swapped[[4, 1]]
    with torch.no_grad():
        a = tiny_model.model.encoder(**make_batch(codes, clap)).last_hidden_state
        b = tiny_model.model.encoder(**make_batch([swapped], clap)).last_hidden_state
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-4)


def test_too_long_input_raises(tiny_model):
    codes, clap = random_clips(1, [62])  # 62 + 3 > 64 positions
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_model(**make_batch(codes, clap))


# ------------------------------------------------------------------ losses

def _label_smoothed_ce(logits, labels, eps):
    """Cross-entropy with label smoothing, written out: (1-eps)*NLL + eps*mean_k(-log p_k)."""
    total, count = 0.0, 0
    for row, target in zip(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)):
        if target == -100:
            continue
        logp = torch.log_softmax(row.double(), -1)
        total += (1 - eps) * -logp[target] + eps * -logp.mean()
        count += 1
    return total / count


def test_losses_match_hand_computation(tiny_model, tokenizer):
    codes, clap = random_clips(2, [8, 5], seed=3)
    batch = make_batch(codes, clap)
    labels = tokenizer(["a dog barks", "rain falls on a metal roof"], padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    mcm_labels = torch.full_like(batch["input_ids"], -100)
    # codebook 0 masked at three rows of clip 0 and one of clip 1; codebook 3 at one row; others empty
    for i, row in [(0, 2), (0, 3), (0, 7), (1, 4)]:
        mcm_labels[i, row, 0] = batch["input_ids"][i, row, 0]
    mcm_labels[1, 6, 3] = batch["input_ids"][1, 6, 3]
    out = tiny_model(**batch, labels=labels, mcm_labels=mcm_labels)

    lm = _label_smoothed_ce(out.logits.detach(), labels, 0.2)
    assert out.lm_loss.item() == pytest.approx(lm.item(), abs=1e-5)

    hidden = out.encoder_last_hidden_state.detach()
    mcm = 0.0
    for j in (0, 3):
        head = tiny_model.mcm_heads[j]
        logits = hidden @ head.weight.detach().T + head.bias.detach()  # all rows, like the original
        ce = F.cross_entropy(logits.reshape(-1, 1024), mcm_labels[..., j].reshape(-1), ignore_index=-100)
        mcm += ce.item() * 0.5 ** (j + 1)
    assert out.mcm_loss.item() == pytest.approx(0.7 * mcm, abs=1e-5)
    assert out.loss.item() == pytest.approx(lm.item() + 0.7 * mcm, abs=1e-5)
    assert math.isfinite(out.loss.item())


def test_mcm_without_targets_is_zero_and_differentiable(tiny_model):
    codes, clap = random_clips(1, [4])
    batch = make_batch(codes, clap)
    out = tiny_model(**batch, labels=torch.tensor([[0, 5, 2]]), mcm_labels=torch.full_like(batch["input_ids"], -100))
    assert out.mcm_loss.item() == 0.0
    out.loss.backward()
    assert out.loss.item() == pytest.approx(out.lm_loss.item())


def test_mcm_loss_trains_heads(tiny_model):
    codes, clap = random_clips(1, [6])
    batch = make_batch(codes, clap)
    mcm_labels = torch.full_like(batch["input_ids"], -100)
    mcm_labels[0, 3, 1] = 7
    out = tiny_model(**batch, mcm_labels=mcm_labels)
    assert out.lm_loss is None and out.loss is out.mcm_loss
    out.loss.backward()
    assert tiny_model.mcm_heads[1].weight.grad.abs().sum() > 0
    assert tiny_model.mcm_heads[0].weight.grad is None or tiny_model.mcm_heads[0].weight.grad.abs().sum() == 0


# ------------------------------------------------------------------ invariances

LENGTHS = [12, 30, 7, 61, 1, 25, 40, 18]


@pytest.mark.numerics
def test_padding_and_batch_invariance(tiny_model, tokenizer):
    codes, clap = random_clips(8, LENGTHS, seed=1)
    labels = tokenizer(["a dog barks"] * 8, return_tensors="pt").input_ids
    with torch.no_grad():
        full = tiny_model(**make_batch(codes, clap), labels=labels)
        for i in (0, 2, 4):
            alone = tiny_model(**make_batch([codes[i]], clap[i : i + 1]), labels=labels[i : i + 1])
            t = LENGTHS[i] + 3
            torch.testing.assert_close(full.encoder_last_hidden_state[i, :t], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(full.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_encoder_passes_no_mask_without_padding(tiny_model):
    """A batch without padding reaches the layers with no mask (SDPA may then take its flash
    kernel on a GPU), and encodes as the same clips do beside a longer, padded one."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
             for layer in tiny_model.model.encoder.layers]
    codes, clap = random_clips(3, [20, 20, 35], seed=3)
    with torch.no_grad():
        even = tiny_model.model.encoder(**make_batch(codes[:2], clap[:2])).last_hidden_state
        assert seen and all(mask is None for mask in seen)
        seen.clear()
        padded = tiny_model.model.encoder(**make_batch(codes, clap)).last_hidden_state
        assert seen and all(mask is not None for mask in seen)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(even, padded[:2, : even.shape[1]], atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_generate_batch_invariance(tiny_model):
    codes, clap = random_clips(8, LENGTHS, seed=2)
    batched = tiny_model.generate(**make_batch(codes, clap))
    captions = set()
    for i in range(8):
        alone = tiny_model.generate(**make_batch([codes[i]], clap[i : i + 1]))[0]
        row = batched[i][: len(alone)]
        assert row.tolist() == alone.tolist()
        assert torch.all(batched[i][len(alone) :] == tiny_model.config.pad_token_id)
        captions.add(tuple(alone.tolist()))
    assert len(captions) > 1  # the model's output depends on the clip


def test_generation_defaults(tiny_model):
    g = tiny_model.generation_config
    assert (g.num_beams, g.max_length, g.no_repeat_ngram_size, g.early_stopping) == (4, 50, 3, True)
    assert (g.forced_bos_token_id, g.forced_eos_token_id, g.decoder_start_token_id) == (0, 2, 2)
    assert not g.do_sample and g.length_penalty == 1.0
    codes, clap = random_clips(2, [5, 9])
    out = tiny_model.generate(**make_batch(codes, clap))
    assert out.shape[1] <= 50
    assert torch.all(out[:, 0] == 2) and torch.all(out[:, 1] == 0)  # decoder start, forced <s>


# ------------------------------------------------------------------ persistence

def _outputs(model, seed=5):
    codes, clap = random_clips(3, [9, 4, 20], seed=seed)
    batch = make_batch(codes, clap)
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([[0, 7, 9, 2]] * 3))
    return out.encoder_last_hidden_state, out.logits, model.generate(**batch)


def _assert_same(model_a, model_b):
    for a, b in zip(_outputs(model_a), _outputs(model_b)):
        assert torch.equal(a, b)


def test_save_load_roundtrip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = EnClapBartForConditionalGeneration.from_pretrained(tmp_path)
    _assert_same(tiny_model, loaded)
    assert loaded.lm_head.weight is loaded.model.shared.weight


def _write_original_style(model, folder, prefix=""):
    """config.json + pytorch_model.bin as the original code (transformers 4.29) wrote them."""
    folder.mkdir(parents=True, exist_ok=True)
    bart_fields = {k: v for k, v in model.config.to_dict().items()
                   if k not in ("d_clap", "num_rvq", "encodec_vocab_size", "encodec_pad_token_id", "mcm_loss_scale", "label_smoothing")}
    bart_fields["architectures"] = ["BartModel"]
    bart_fields["transformers_version"] = "4.29.2"
    (folder / "config.json").write_text(json.dumps(bart_fields))
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}  # all keys, tied copies included
    torch.save(state, folder / "pytorch_model.bin")
    return state


def test_load_released_format(tiny_model, tmp_path):
    state = _write_original_style(tiny_model, tmp_path / "released")
    assert "lm_head.weight" in state and "model.encoder.embed_tokens.weight" in state
    loaded = EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "released")
    assert loaded.config.num_rvq == 16 and loaded.config.mcm_loss_scale == 0.7
    _assert_same(tiny_model, loaded)


def test_load_module_prefixed(tiny_model, tmp_path):
    _write_original_style(tiny_model, tmp_path / "ddp", prefix="module.")
    _assert_same(tiny_model, EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "ddp"))


def test_nonzero_padding_rows_are_kept(tiny_model, tmp_path):
    with torch.no_grad():
        tiny_model.model.encoder.embed_encodec[2].weight[1024:] = 0.5
    _write_original_style(tiny_model, tmp_path / "rows")
    loaded = EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "rows")
    assert torch.all(loaded.model.encoder.embed_encodec[2].weight[1024:] == 0.5)


def test_missing_key_is_an_error(tiny_model, tmp_path):
    state = _write_original_style(tiny_model, tmp_path / "broken")
    del state["mcm_heads.3.bias"]
    del state["model.encoder.clap_projection.weight"]
    torch.save(state, tmp_path / "broken" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="mcm_heads.3.bias") as info:
        EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "broken")
    assert "model.encoder.clap_projection.weight" in str(info.value)


def test_wrong_shape_is_an_error(tiny_model, tmp_path):
    state = _write_original_style(tiny_model, tmp_path / "shape")
    state["model.encoder.embed_encodec.0.weight"] = torch.zeros(1025, 32)
    torch.save(state, tmp_path / "shape" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="embed_encodec.0.weight"):
        EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "shape")


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_not_executed(tiny_model, tmp_path):
    state = _write_original_style(tiny_model, tmp_path / "evil")
    state["extra"] = _Payload()
    torch.save(state, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "evil")


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no_such_ckpt"):
        EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "no_such_ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        EnClapBartForConditionalGeneration.from_pretrained(tmp_path / "empty")


def test_from_bart_copies_weights(tokenizer, tmp_path):
    from transformers import BartForConditionalGeneration

    config = make_tiny_config(len(tokenizer), init_std=0.02)
    torch.manual_seed(1)
    bart = BartForConditionalGeneration(config.__class__.__bases__[0](**{k: v for k, v in config.to_dict().items()}))
    bart.save_pretrained(tmp_path / "bart")
    model = EnClapBartForConditionalGeneration.from_bart(tmp_path / "bart", mcm_loss_scale=0.5)
    assert model.config.mcm_loss_scale == 0.5
    bart_state = bart.state_dict()
    for key, value in model.state_dict().items():
        if key in bart_state and not key.startswith("model.encoder.embed_tokens"):
            assert torch.equal(value, bart_state[key]), key
    assert torch.all(model.model.encoder.embed_encodec[0].weight[1024] == 0)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3, "num_return_sequences": 2}, {"num_beams": 1}])
@pytest.mark.numerics
def test_shared_cross_attention_gives_the_same_tokens(tiny_model, options):
    codes, clap = random_clips(4, [12, 30, 7, 50], seed=4)
    batch = make_batch(codes, clap)
    fast = tiny_model.generate(**batch, **options)
    stock = tiny_model.generate(**batch, share_cross_attention=False, **options)
    assert fast.tolist() == stock.tolist()


def test_passed_generation_config_is_used_as_given(tiny_model):
    from modeling import GenerationOptions

    codes, clap = random_clips(2, [12, 30], seed=6)
    batch = make_batch(codes, clap)
    greedy = GenerationOptions(num_beams=1, no_repeat_ngram_size=0, max_length=12).to_generation_config(tiny_model.config)
    out = tiny_model.generate(**batch, generation_config=greedy, output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape[1] <= 12
    assert out.get("beam_indices") is None  # greedy, not the model's default 4-beam search


def test_generation_options_validation():
    from modeling import GenerationOptions

    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationOptions(do_sample=True, num_beams=2, num_return_sequences=3)
    assert GenerationOptions(do_sample=True, num_beams=1, num_return_sequences=5).num_return_sequences == 5
    with pytest.raises(ValueError, match="top_p"):
        GenerationOptions(top_p=0)


def test_positional_calls_in_the_authors_argument_order(tiny_model):
    codes, clap = random_clips(2, [9, 4], seed=8)
    batch = make_batch(codes, clap)
    labels = torch.tensor([[0, 7, 9, 2], [0, 5, 2, -100]])
    args = (batch["input_ids"], batch["clap_embedding"], batch["encodec_mask"], batch["attention_mask"])
    with torch.no_grad():
        by_name = tiny_model(**batch, labels=labels)
        by_position = tiny_model(*args, labels=labels)
        encoder = tiny_model.model.encoder(*args).last_hidden_state
        decoder_ids = torch.tensor([[2, 0, 7, 9]] * 2)
        base = tiny_model.model(*args, decoder_input_ids=decoder_ids)
    assert torch.equal(by_name.logits, by_position.logits)
    assert torch.equal(encoder, by_name.encoder_last_hidden_state)
    assert torch.allclose(base.encoder_last_hidden_state, encoder)
    assert tiny_model.generate(*args).tolist() == tiny_model.generate(**batch).tolist()
