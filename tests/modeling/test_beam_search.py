"""modeling/beam_search.py: the lean beam search gives stock ``generate``'s tokens (design §7).

Stock = ``generate(share_cross_attention=False)``: Hugging Face's own loop, cache and logits
processors. Compared over beam counts, candidate counts, length penalties, early-stopping modes,
n-gram sizes, a length cap that forces ``</s>``, and padded batches of clips of different lengths.
"""

from __future__ import annotations

import time

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


def _banned(tokens, size, vocab=10):
    scores = torch.zeros(len(tokens), vocab)
    beam_search.ban_repeated_ngrams(scores, torch.tensor(tokens), size)
    return [torch.nonzero(row == -float("inf")).flatten().tolist() for row in scores]


def test_banned_ngrams_are_the_tokens_that_would_repeat_one():
    # 3-grams of [5, 1, 2, 9, 1, 2]: the last two tokens (1, 2) were followed by 9 before.
    assert _banned([[5, 1, 2, 9, 1, 2], [1, 2, 3, 4, 5, 6]], 3) == [[9], []]
    assert _banned([[4, 4, 4], [4, 3, 4]], 2) == [[4], [3]]
    assert _banned([[7, 3, 7]], 1) == [[3, 7]]
    assert _banned([[1, 2]], 3) == [[]]  # no complete 3-gram yet


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_ngram_ban_equals_the_stock_logits_processor(size):
    """Random rows over a small vocabulary (so n-grams repeat often), every length from 1 to 12."""
    from transformers import NoRepeatNGramLogitsProcessor

    generator = torch.Generator().manual_seed(size)
    banned_somewhere = 0
    for length in range(1, 13):
        tokens = torch.randint(0, 5, (16, length), generator=generator)
        scores = torch.randn(16, 7, generator=generator)
        expected = NoRepeatNGramLogitsProcessor(size)(tokens, scores.clone())
        beam_search.ban_repeated_ngrams(scores, tokens, size)
        assert torch.equal(scores, expected), (size, length)
        banned_somewhere += int(torch.isinf(scores).sum())
    assert banned_somewhere > 0, "the rows should repeat n-grams, or the comparison proves little"


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


@pytest.fixture
def orientation(monkeypatch):
    """Fixes the measured orientation: sets ``choice["transposed"]``; records each measurement."""
    choice = {"transposed": True, "measured": []}

    def measure(weight, bias, rows, before=None):
        choice["measured"].append((tuple(weight.shape), rows))
        choice.setdefault("before", []).append(before)
        return choice["transposed"]

    monkeypatch.setattr(beam_search, "_ORIENTATION", {})
    monkeypatch.setattr(beam_search, "_measure_orientation", measure)
    return choice


@pytest.fixture
def transposed_calls(monkeypatch):
    """Records the row count of every product :func:`beam_search._linear` takes as ``(W @ x.T).T``."""
    calls = []
    original = beam_search._transposed_linear
    monkeypatch.setattr(beam_search, "_transposed_linear",
                        lambda weight, bias, flat: calls.append(flat.shape[0]) or original(weight, bias, flat))
    return calls


@pytest.mark.parametrize("transposed", [True, False])
def test_tokens_equal_stock_generate_in_either_orientation(tiny_model, orientation, transposed_calls, transposed):
    orientation["transposed"] = transposed
    codes, clap = random_clips(1, [25], seed=7)
    inputs = make_batch(codes, clap)
    for opts in OPTIONS:
        config = GenerationOptions(**opts).to_generation_config(tiny_model.config)
        stock = tiny_model.generate(**inputs, generation_config=config, share_cross_attention=False)
        assert torch.equal(tiny_model.generate(**inputs, generation_config=config), stock), opts
    assert bool(transposed_calls) == transposed


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 12])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.numerics
def test_decoder_linear_layers_compute_what_the_module_computes(orientation, rows, bias, transposed):
    orientation["transposed"] = transposed
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    expected = layer(x)
    got = beam_search._linear(layer, x)
    assert got.shape == expected.shape == (rows, 1, 80) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if rows > 4 or not transposed:  # the module's own kernel: bit for bit
        assert torch.equal(got, expected)
    other = beam_search._linear(layer, x.flip(0) + 1.0)
    assert not torch.allclose(other, got), "different rows must give different outputs"


@pytest.mark.parametrize("transposed", [True, False])
def test_up_to_four_rows_take_the_measured_orientation_and_more_rows_never_measure(orientation, transposed_calls,
                                                                                 transposed):
    # Four rows: one clip's beams at the default num_beams. More rows (a batch of clips, or more
    # beams) cost the same either way, so they keep F.linear and measure nothing.
    orientation["transposed"] = transposed
    layer = torch.nn.Linear(16, 24)
    for rows in (1, 2, 3, 4, 5, 8, 12):
        beam_search._linear(layer, torch.randn(rows, 1, 16))
    assert orientation["measured"] == [((24, 16), rows) for rows in (1, 2, 3, 4)]
    assert transposed_calls == ([1, 2, 3, 4] if transposed else [])


def test_the_orientation_is_measured_once_per_shape(orientation, transposed_calls):
    small, wide = torch.nn.Linear(16, 24), torch.nn.Linear(16, 40)
    for _ in range(3):
        beam_search._linear(small, torch.randn(4, 1, 16))
        beam_search._linear(torch.nn.Linear(16, 24), torch.randn(4, 16))  # same shape, other weights
    orientation["transposed"] = False  # a new measurement would now say F.linear: only new shapes see it
    beam_search._linear(wide, torch.randn(4, 1, 16))
    beam_search._linear(small, torch.randn(2, 1, 16))
    beam_search._linear(small, torch.randn(4, 1, 16))
    assert orientation["measured"] == [((24, 16), 4), ((40, 16), 4), ((24, 16), 2)]
    assert transposed_calls == [4] * 7


def test_off_the_cpu_nothing_is_measured(orientation, transposed_calls):
    layer = torch.nn.Linear(16, 24, device="meta")
    assert beam_search._linear(layer, torch.empty(4, 1, 16, device="meta")).shape == (4, 1, 24)
    assert orientation["measured"] == [] and transposed_calls == []


@pytest.mark.parametrize("slow", ["linear", "transposed"])
def test_the_measurement_picks_the_faster_orientation(monkeypatch, slow):
    # Slowing one orientation down by far more than either takes decides the measurement.
    layer = torch.nn.Linear(32, 64)
    if slow == "linear":
        original = torch.nn.functional.linear
        monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: time.sleep(0.02) or original(*a))
    else:
        original = beam_search._transposed_linear
        monkeypatch.setattr(beam_search, "_transposed_linear", lambda *a: time.sleep(0.02) or original(*a))
    with torch.no_grad():
        assert beam_search._measure_orientation(layer.weight, layer.bias, 4) == (slow == "linear")


def test_each_timed_call_of_the_measurement_starts_after_a_flush():
    events = []
    layer = torch.nn.Linear(32, 64)
    original = beam_search._transposed_linear
    linear = torch.nn.functional.linear
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(beam_search, "_transposed_linear", lambda *a: events.append("transposed") or original(*a))
        patch.setattr(beam_search.F, "linear", lambda *a: events.append("linear") or linear(*a))
        with torch.no_grad():
            beam_search._measure_orientation(layer.weight, layer.bias, 4, min_rounds=3, max_rounds=3,
                                             before=lambda: events.append("flush"))
    warm_up, timed = events[:2], events[2:]
    assert sorted(warm_up) == ["linear", "transposed"]
    assert timed == ["flush", "transposed", "flush", "linear"] * 3


def test_decoder_steps_measure_after_streaming_their_weight_bytes(tiny_model, orientation, monkeypatch):
    streamed = []
    monkeypatch.setattr(beam_search, "_cache_flusher", lambda cold_bytes: streamed.append(cold_bytes) or "flush")
    codes, clap = random_clips(1, [20], seed=2)
    config = GenerationOptions().to_generation_config(tiny_model.config)
    tiny_model.generate(**make_batch(codes, clap), generation_config=config)
    assert streamed and set(streamed) == {beam_search.step_weight_bytes(tiny_model)}
    assert set(orientation["before"]) == {"flush"}


def test_the_flusher_reads_a_buffer_of_the_bytes_asked_for(monkeypatch):
    sizes = []
    original = torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda self, *a, **k: sizes.append(self.numel() * self.element_size())
                        or original(self, *a, **k))
    beam_search._cache_flusher(4_000_000)()
    assert sizes == [4_000_000]
    assert beam_search._cache_flusher(0) is None
    monkeypatch.setattr(beam_search, "_MAX_COLD_BYTES", 1_000_000)
    sizes.clear()
    beam_search._cache_flusher(4_000_000)()
    assert sizes == [1_000_000]


def test_a_bf16_model_runs_the_lean_search_in_bf16(tiny_model, monkeypatch):
    # The one bf16 route (EnClap(dtype="bf16"), --dtype bf16) casts the whole model: generate must
    # still take the lean search, every decoder-step product must read bf16 weights and inputs,
    # and the beam scores must stay float32 (a bf16 log-softmax would tie most beams).
    model = tiny_model.to(torch.bfloat16)
    codes, clap = random_clips(2, [25, 14], seed=3)
    inputs = make_batch(codes, clap)
    inputs["clap_embedding"] = inputs["clap_embedding"].to(torch.bfloat16)
    config = GenerationOptions().to_generation_config(model.config)
    assert beam_search.supported(model, config)
    seen, softmax = set(), []
    original, log_softmax = beam_search._linear, beam_search.F.log_softmax
    monkeypatch.setattr(beam_search, "_linear", lambda module, x, **k: seen.add((module.weight.dtype, x.dtype))
                        or original(module, x, **k))
    monkeypatch.setattr(beam_search.F, "log_softmax", lambda x, **k: softmax.append(x.dtype) or log_softmax(x, **k))
    ids = model.generate(**inputs, generation_config=config)
    assert seen == {(torch.bfloat16, torch.bfloat16)}
    assert softmax and set(softmax) == {torch.float32}
    assert ids.shape[0] == 2 and ids[:, 0].eq(config.decoder_start_token_id).all()
