"""modeling/beam_search.py: the lean beam search gives stock ``generate``'s tokens (design §7).

Stock = ``generate(share_cross_attention=False)``: Hugging Face's own loop, cache and logits
processors. Compared over beam counts, candidate counts, length penalties, early-stopping modes,
n-gram sizes, a length cap that forces ``</s>``, and padded batches of clips of different lengths.
"""

from __future__ import annotations

import pytest
import torch

from modeling import beam_search
from modeling.generation import GenerationOptions
from tests.helpers import make_batch, random_clips

OPTIONS = [
    {},
    {"num_beams": 2},
    {"num_beams": 5, "num_return_sequences": 3},
    {"length_penalty": 2.0},
    {"length_penalty": 0.5, "early_stopping": False},
    {"early_stopping": False},
    {"max_length": 6},
    {"no_repeat_ngram_size": 0, "max_length": 30},
    {"no_repeat_ngram_size": 2},
]


@pytest.mark.parametrize("lengths", [[20], [61, 5, 33], [12, 12]])
@pytest.mark.numerics
def test_tokens_equal_stock_generate(tiny_model, lengths):
    codes, clap = random_clips(len(lengths), lengths, seed=len(lengths))
    inputs = make_batch(codes, clap)
    seen = set()
    for opts in OPTIONS:
        config = GenerationOptions(**opts).to_generation_config(tiny_model.config)
        assert beam_search.supported(tiny_model, config)
        stock = tiny_model.generate(**inputs, generation_config=config, share_cross_attention=False)
        ours = tiny_model.generate(**inputs, generation_config=config)
        assert ours.shape == stock.shape and torch.equal(ours, stock), opts
        seen.add(tuple(map(tuple, ours.tolist())))
    assert len(seen) > 3, "the options should change the tokens, or the comparison proves little"


def test_the_lean_search_is_what_generate_runs(tiny_model, monkeypatch):
    calls = []
    original = beam_search.beam_search
    monkeypatch.setattr(beam_search, "beam_search", lambda *a, **k: calls.append(1) or original(*a, **k))
    codes, clap = random_clips(1, [30])
    config = GenerationOptions().to_generation_config(tiny_model.config)
    tiny_model.generate(**make_batch(codes, clap), generation_config=config)
    assert calls == [1]
    tiny_model.generate(**make_batch(codes, clap), generation_config=config, share_cross_attention=False)
    assert calls == [1], "share_cross_attention=False must stay the stock loop"


@pytest.mark.parametrize("opts", [{"do_sample": True, "num_beams": 1}, {"num_beams": 1}, {"do_sample": True}])
def test_options_outside_its_scope_go_to_the_stock_loop(tiny_model, opts):
    config = GenerationOptions(**opts).to_generation_config(tiny_model.config)
    assert not beam_search.supported(tiny_model, config)
    other = GenerationOptions().to_generation_config(tiny_model.config)
    other.repetition_penalty = 1.3  # a processor the lean search does not implement
    assert not beam_search.supported(tiny_model, other)


def test_banned_ngrams_are_the_tokens_that_would_repeat_one():
    # 3-grams of [5, 1, 2, 9, 1, 2]: the last two tokens (1, 2) were followed by 9 before.
    assert beam_search._banned_ngram_tokens([[5, 1, 2, 9, 1, 2], [1, 2, 3]], 3) == [[9], []]
    assert beam_search._banned_ngram_tokens([[4, 4, 4]], 2) == [[4, 4]]


def test_generate_leaves_the_callers_encoder_output_alone(tiny_model):
    codes, clap = random_clips(2, [20, 9])
    inputs = make_batch(codes, clap)
    with torch.no_grad():
        encoded = tiny_model.get_encoder()(**inputs)
    config = GenerationOptions().to_generation_config(tiny_model.config)
    first = tiny_model.generate(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                                generation_config=config, share_cross_attention=False)
    assert encoded.last_hidden_state.shape[0] == 2  # the stock loop expands per beam, on a copy
    again = tiny_model.generate(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                                generation_config=config, share_cross_attention=False)
    assert torch.equal(first, again)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 12])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.numerics
def test_decoder_linear_layers_compute_what_the_module_computes(rows, bias):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    expected = layer(x)
    got = beam_search._linear(layer, x)
    assert got.shape == expected.shape == (rows, 1, 80) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if rows > beam_search._SKINNY_ROWS:  # the module's own kernel: bit for bit
        assert torch.equal(got, expected)
    other = beam_search._linear(layer, x.flip(0) + 1.0)
    assert not torch.allclose(other, got), "different rows must give different outputs"
