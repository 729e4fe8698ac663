"""benchmarks/inference.py: the bandwidth floor's arithmetic, its call counts, and the bf16 lines of a small run."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration, beam_search
from modeling.generation import GenerationOptions
from tests.benchmarks._load import BENCHMARKS
from tests.helpers import make_batch, random_clips

# Under a name of its own: as "inference" it would take the place of the repository's inference.py
# in sys.modules (tests/test_cli_inference_dtype.py imports that one).
_spec = importlib.util.spec_from_file_location("benchmarks_inference", BENCHMARKS / "inference.py")
inference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inference)


def test_a_bart_base_step_reads_its_decoder_linear_layers_and_the_lm_head():
    # Counted by hand from bart-base's shapes (d 768, feed-forward 3072, 6 decoder layers,
    # vocabulary 50265): per layer 4 self-attention and 2 cross-attention (query, output)
    # projections of 768x768 with biases and fc1/fc2 of 768x3072 with biases; an LM head without
    # bias. On the meta device: no memory, no time.
    per_layer = 6 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768
    params = 6 * per_layer + 50265 * 768
    with torch.device("meta"):
        model = EnClapBartForConditionalGeneration(EnClapBartConfig(vocab_size=50265, **inference.SIZES["base"]))
    assert beam_search.step_weight_bytes(model) == 4 * params  # 352.8 MB
    assert beam_search.step_weight_bytes(model.to(torch.bfloat16)) == 2 * params


def test_the_counted_weights_are_those_the_lean_steps_multiply_with(tiny_model, monkeypatch):
    used = {}
    original = beam_search._linear
    monkeypatch.setattr(beam_search, "_linear", lambda module, x, **k: used.__setitem__(id(module), module)
                        or original(module, x, **k))
    codes, clap = random_clips(1, [20], seed=1)
    config = GenerationOptions(max_length=6).to_generation_config(tiny_model.config)
    tiny_model.generate(**make_batch(codes, clap), generation_config=config)
    read = sum(p.numel() * p.element_size() for m in used.values() for p in (m.weight, m.bias) if p is not None)
    assert read == beam_search.step_weight_bytes(tiny_model)


def test_the_floor_line_divides_the_bytes_by_the_bandwidth():
    line = inference.floor_line(352_000_000, 28.16e9, {"stock": 0.034, "ours": 0.0129})
    assert line == ("later decoder steps read 352 MB of weights each; memory reads at 28.2 GB/s here -> at least "
                    "12.5 ms/step; stock 34.0 ms/step, ours 12.9 ms/step")


def test_the_bandwidth_counts_each_byte_of_the_buffer_once(monkeypatch):
    clock = iter(range(100))  # every timed sum takes exactly one "second"
    monkeypatch.setattr(inference.time, "perf_counter", lambda: float(next(clock)))
    assert inference.read_bandwidth(torch.device("cpu"), megabytes=8, repeats=2) == pytest.approx(8e6)


@pytest.mark.parametrize("name, calls", [("stock", 5), ("ours", 4)])
def test_split_counts_the_decoder_calls(tiny_model, name, calls):
    # max_length 6: stock runs the decoder for tokens 1..5; ours skips the forced </s> step (the 6th
    # token's call).
    codes, clap = random_clips(1, [20], seed=1)
    config = GenerationOptions(max_length=6).to_generation_config(tiny_model.config)
    split = inference.Split(tiny_model)
    with inference.path(tiny_model, name) as kwargs, torch.inference_mode(), split.measure():
        ids = tiny_model.generate(**make_batch(codes, clap), generation_config=config, **kwargs)
    assert ids.shape[1] == 6, "the caption must run to max_length for these counts"
    assert split.calls == calls
    assert split.per_later_call() == pytest.approx(split.parts["later decoder calls"] / (calls - 1))


def test_small_run_with_bf16_prints_its_lines_and_the_fp32_speedup_last(capsys):
    status = inference.main(["--size", "small", "--clips", "2", "--batch_size", "2", "--repeats", "1",
                             "--long_seconds", "14", "--max_length", "6", "--bf16", "on"])
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    floor = [line for line in lines if line.startswith("later decoder steps read")]
    assert len(floor) == 1 and re.search(r"-> at least [0-9.]+ ms/step; stock [0-9.]+ ms/step, ours [0-9.]+ ms/step$",
                                         floor[0]), lines
    assert any(re.match(r"--dtype bf16: later decoder steps read [0-9]+ MB .*; --dtype bf16 [0-9.]+ ms/step$", line)
               for line in lines), lines
    assert any(line.startswith("--dtype bf16 one clip: ") and "later decoder calls" in line for line in lines), lines
    one = re.search(r"one clip: stock ([0-9.]+) s/clip, shared [0-9.]+, ours ([0-9.]+); stock/ours ([0-9.]+)x",
                    "\n".join(lines))
    bf16 = re.search(r"one clip, --dtype bf16: ours ([0-9.]+) s/clip; stock fp32 / ours bf16 ([0-9.]+)x, ours fp32 "
                     r"/ ours bf16 ([0-9.]+)x; captions equal to fp32 [01]/1, tokens equal ([0-9]+) %",
                     "\n".join(lines))
    assert one and bf16, lines
    assert any(line.startswith(" batch of 2, --dtype bf16: ours ") for line in lines), lines
    assert any("near-tied logits" in line for line in lines), lines
    last = re.fullmatch(r"speedup with --dtype bf16 \(tokens ([0-9]+) % equal to fp32\): ([0-9.]+)", lines[-2])
    assert last and last[1] == bf16[4], lines[-2:]
    assert float(last[2]) == pytest.approx(float(bf16[2]), abs=0.006)
    assert float(re.fullmatch(r"speedup: ([0-9.]+)", lines[-1])[1]) == pytest.approx(float(one[3]), abs=0.006)
