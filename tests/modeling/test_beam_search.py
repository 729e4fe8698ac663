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
def kernel(monkeypatch):
    """Fixes the measured kernel: sets ``choice["name"]``; records each measurement."""
    choice = {"name": "transposed", "measured": [], "before": []}

    def measure(weight, bias, rows, before=None):
        choice["measured"].append((tuple(weight.shape), rows))
        choice["before"].append(before)
        return choice["name"]

    monkeypatch.setattr(beam_search, "_KERNEL", {})
    monkeypatch.setattr(beam_search, "_measure_kernel", measure)
    return choice


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records ``(kernel, rows)`` for every product :func:`beam_search._linear` takes past ``F.linear``."""
    calls = []
    transposed, onednn = beam_search._transposed_linear, beam_search._onednn_linear

    def record_onednn(weight, bias, flat):
        calls.append(("onednn" if isinstance(weight, torch.nn.Parameter) else "onednn_packed", flat.shape[0]))
        return onednn(weight, bias, flat)

    monkeypatch.setattr(beam_search, "_transposed_linear",
                        lambda weight, bias, flat: calls.append(("transposed", flat.shape[0]))
                        or transposed(weight, bias, flat))
    monkeypatch.setattr(beam_search, "_onednn_linear", record_onednn)
    return calls


@pytest.mark.parametrize("name", beam_search.KERNELS)
def test_tokens_equal_stock_generate_in_each_kernel(tiny_model, kernel, kernel_calls, name):
    kernel["name"] = name
    codes, clap = random_clips(1, [25], seed=7)
    inputs = make_batch(codes, clap)
    for opts in OPTIONS:
        config = GenerationOptions(**opts).to_generation_config(tiny_model.config)
        stock = tiny_model.generate(**inputs, generation_config=config, share_cross_attention=False)
        assert torch.equal(tiny_model.generate(**inputs, generation_config=config), stock), opts
    assert {k for k, _ in kernel_calls} == ({name} if name != "linear" else set())


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 12])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", beam_search.KERNELS)
@pytest.mark.numerics
def test_decoder_linear_layers_compute_what_the_module_computes(kernel, rows, bias, name):
    kernel["name"] = name
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80, bias=bias)
    x = torch.randn(rows, 1, 48)
    expected = layer(x)
    with torch.no_grad():
        got = beam_search._linear(layer, x)
        other = beam_search._linear(layer, x.flip(0) + 1.0)
    assert got.shape == expected.shape == (rows, 1, 80) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if rows > 4 or name == "linear":  # the module's own kernel: bit for bit
        assert torch.equal(got, expected)
    assert not torch.allclose(other, got), "different rows must give different outputs"


@pytest.mark.parametrize("name", beam_search.KERNELS)
def test_up_to_four_rows_take_the_measured_kernel_and_more_rows_never_measure(kernel, kernel_calls, name):
    # Four rows: one clip's beams at the default num_beams. More rows (a batch of clips, or more
    # beams) keep F.linear and measure nothing.
    kernel["name"] = name
    layer = torch.nn.Linear(16, 24)
    with torch.no_grad():
        for rows in (1, 2, 3, 4, 5, 8, 12):
            beam_search._linear(layer, torch.randn(rows, 1, 16))
    assert kernel["measured"] == [((24, 16), rows) for rows in (1, 2, 3, 4)]
    assert kernel_calls == ([] if name == "linear" else [(name, rows) for rows in (1, 2, 3, 4)])


def test_the_kernel_is_measured_once_per_shape(kernel, kernel_calls):
    small, wide = torch.nn.Linear(16, 24), torch.nn.Linear(16, 40)
    with torch.no_grad():
        for _ in range(3):
            beam_search._linear(small, torch.randn(4, 1, 16))
            beam_search._linear(torch.nn.Linear(16, 24), torch.randn(4, 16))  # same shape, other weights
        kernel["name"] = "linear"  # a new measurement would now say F.linear: only new shapes see it
        beam_search._linear(wide, torch.randn(4, 1, 16))
        beam_search._linear(small, torch.randn(2, 1, 16))
        beam_search._linear(small, torch.randn(4, 1, 16))
    assert kernel["measured"] == [((24, 16), 4), ((40, 16), 4), ((24, 16), 2)]
    assert kernel_calls == [("transposed", 4)] * 7


def test_off_the_cpu_nothing_is_measured(kernel, kernel_calls):
    layer = torch.nn.Linear(16, 24, device="meta")
    assert beam_search._linear(layer, torch.empty(4, 1, 16, device="meta")).shape == (4, 1, 24)
    assert kernel["measured"] == [] and kernel_calls == []


def test_the_packed_copy_follows_the_weight(kernel, kernel_calls, monkeypatch):
    # Made once and reused while the weight stays; an in-place update (an optimizer step between
    # two validation runs) or a cast makes the next call pack again, and the result follows.
    kernel["name"] = "onednn_packed"
    with torch.no_grad():  # oneDNN packs bf16 only on CPUs with bf16 conversions (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
        probe = torch.nn.Linear(32, 64).to(torch.bfloat16)
        bf16_packs = "onednn_packed" in beam_search._candidates(probe.weight, probe.bias, torch.ones(4, 32).bfloat16())
    kernel_calls.clear()
    packs = []
    original = beam_search._pack
    monkeypatch.setattr(beam_search, "_pack", lambda weight: packs.append(weight.dtype) or original(weight))
    layer = torch.nn.Linear(32, 64)
    x = torch.randn(4, 1, 32)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(beam_search._linear(layer, x), layer(x))
        assert packs == [torch.float32]
        layer.weight.mul_(-2.0)
        torch.testing.assert_close(beam_search._linear(layer, x), layer(x))
        assert packs == [torch.float32] * 2
        if bf16_packs:
            layer.to(torch.bfloat16)
            torch.testing.assert_close(beam_search._linear(layer, x.bfloat16()), layer(x.bfloat16()))
    assert packs == [torch.float32, torch.float32] + ([torch.bfloat16] if bf16_packs else [])
    assert "_enclap_packed" not in "".join(layer.state_dict())
    assert [k for k, _ in kernel_calls] == ["onednn_packed"] * (5 if bf16_packs else 4)


def test_a_model_made_in_inference_mode_runs_the_packed_kernel(kernel, kernel_calls):
    # Its weights are inference tensors, which keep no version counter.
    kernel["name"] = "onednn_packed"
    with torch.inference_mode():
        layer = torch.nn.Linear(32, 64)
        x = torch.randn(4, 1, 32)
        torch.testing.assert_close(beam_search._linear(layer, x), layer(x))
    with torch.no_grad():
        torch.testing.assert_close(beam_search._linear(layer, x), layer(x))
    assert kernel_calls == [("onednn_packed", 4)] * 2


def fake_kernels(monkeypatch, seconds: dict):
    """Kernels that each advance a fake clock by ``seconds[name]`` per call."""
    clock = [0.0]
    monkeypatch.setattr(beam_search.time, "perf_counter", lambda: clock[0])

    def run(name):
        clock[0] += seconds[name]

    monkeypatch.setattr(beam_search, "_candidates", lambda weight, bias, x: {
        name: (lambda name=name: run(name)) for name in seconds})


@pytest.mark.parametrize("seconds, chosen", [
    ({"linear": 5.0, "transposed": 3.0, "onednn": 4.0, "onednn_packed": 2.8}, "transposed"),  # packed: < 10 % better
    ({"linear": 5.0, "transposed": 3.0, "onednn": 4.0, "onednn_packed": 2.6}, "onednn_packed"),
    ({"linear": 1.0, "transposed": 3.0, "onednn": 4.0, "onednn_packed": 2.0}, "linear"),
    ({"linear": 5.0, "transposed": 3.0, "onednn": 2.0}, "onednn"),  # no packed kernel on this CPU
    ({"linear": 5.0, "transposed": 3.0}, "transposed"),  # no oneDNN at all
])
def test_the_measurement_picks_the_fastest_kernel_and_packs_only_for_a_clear_gain(monkeypatch, seconds, chosen):
    fake_kernels(monkeypatch, seconds)
    layer = torch.nn.Linear(32, 64)
    assert beam_search._measure_kernel(layer.weight, layer.bias, 4) == chosen


def test_kernels_that_fail_or_disagree_here_are_left_out(monkeypatch):
    layer = torch.nn.Linear(32, 64)
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert set(beam_search._candidates(layer.weight, layer.bias, x)) == set(beam_search.KERNELS)
        monkeypatch.setattr(beam_search, "_pack", lambda weight: (_ for _ in ()).throw(RuntimeError("no")))
        assert set(beam_search._candidates(layer.weight, layer.bias, x)) == {"linear", "transposed", "onednn"}
        monkeypatch.setattr(beam_search, "_pack", lambda weight: (_ for _ in ()).throw(TypeError("other signature")))
        assert set(beam_search._candidates(layer.weight, layer.bias, x)) == {"linear", "transposed", "onednn"}
        original = beam_search._onednn_linear
        monkeypatch.setattr(beam_search, "_onednn_linear", lambda *a: original(*a) * 1.001)
        assert set(beam_search._candidates(layer.weight, layer.bias, x)) == {"linear", "transposed"}


def test_each_timed_call_of_the_measurement_starts_after_a_flush(monkeypatch):
    events = []
    fake_kernels(monkeypatch, {"linear": 1.0, "transposed": 2.0, "onednn": 3.0})
    original = beam_search._candidates
    monkeypatch.setattr(beam_search, "_candidates", lambda *a: {
        name: (lambda name=name, run=run: events.append(name) or run()) for name, run in original(*a).items()})
    layer = torch.nn.Linear(32, 64)
    beam_search._measure_kernel(layer.weight, layer.bias, 4, min_rounds=3, max_rounds=3,
                                before=lambda: events.append("flush"))
    assert events == ["flush", "linear", "flush", "transposed", "flush", "onednn"] * 3


def test_decoder_steps_measure_after_streaming_their_weight_bytes(tiny_model, kernel, monkeypatch):
    streamed = []
    monkeypatch.setattr(beam_search, "_cache_flusher", lambda cold_bytes: streamed.append(cold_bytes) or "flush")
    codes, clap = random_clips(1, [20], seed=2)
    config = GenerationOptions().to_generation_config(tiny_model.config)
    tiny_model.generate(**make_batch(codes, clap), generation_config=config)
    assert streamed and set(streamed) == {beam_search.step_weight_bytes(tiny_model)}
    assert set(kernel["before"]) == {"flush"}


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
