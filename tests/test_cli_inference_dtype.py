"""``--dtype``: the flag reaches the model of inference.py and of the page, and ``--compare_fp32``
measures how far bf16 captions agree with float32 ones (printed, not asserted equal: bf16 may
change a close beam)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import gradio_app
import inference
from captioning.cli import pipeline_from_args
from captioning.pipeline import caption_agreement

SR = 16000


def _args(ckpt, *extra):
    return ["--ckpt", str(ckpt), "--random_encoders", "--device", "cpu", *map(str, extra)]


@pytest.mark.parametrize("parser", [inference.build_parser, gradio_app.build_parser], ids=["inference", "page"])
@pytest.mark.parametrize("flags, expected", [([], torch.float32), (["--dtype", "bf16"], torch.bfloat16)])
def test_dtype_flag_reaches_the_model(tiny_ckpt, parser, flags, expected):
    extra = ["--input", "x.wav"] if parser is inference.build_parser else []
    pipeline = pipeline_from_args(parser().parse_args(_args(tiny_ckpt, *extra, *flags)))
    assert pipeline.dtype == expected
    assert {p.dtype for p in pipeline.model.parameters()} == {expected}


def test_fp16_on_cpu_falls_back_to_float32_with_a_warning(tiny_ckpt, caplog):
    with caplog.at_level(logging.WARNING):
        pipeline = pipeline_from_args(inference.build_parser().parse_args(_args(tiny_ckpt, "--input", "x", "--fp16")))
    assert pipeline.dtype == torch.float32 and "fp16 is not supported on cpu" in caplog.text


def test_caption_agreement_counts_identical_captions_and_tokens():
    words = SimpleNamespace  # a tokenizer that splits on spaces is enough here
    tokenizer = lambda text: words(input_ids=text.split())  # noqa: E731
    captions, tokens = caption_agreement(["a dog barks", "rain falls", "wind"], ["a dog barks", "rain stops", "a bird"],
                                         tokenizer)
    assert captions == pytest.approx(1 / 3)
    assert tokens == pytest.approx((3 + 1 + 0) / (3 + 2 + 2))


def test_bf16_captions_are_compared_with_fp32_and_the_agreement_printed(tiny_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        t = np.arange(int(0.5 * SR)) / SR
        sf.write(tmp_path / f"clip{i}.wav", 0.4 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t), SR)
    status = inference.main(_args(tiny_ckpt, "--input", tmp_path, "--dtype", "bf16", "--compare_fp32"))
    err = capsys.readouterr().err
    assert status == 0
    found = re.search(r"bf16 vs fp32 on 4 input\(s\): ([\d.]+)% of captions identical, ([\d.]+)% of tokens agree",
                      err)
    assert found, err
    captions, tokens = map(float, found.groups())
    assert 0 <= captions <= 100 and 0 <= tokens <= 100
    print(f"tiny random model on CPU, bf16 vs fp32: {captions}% captions identical, {tokens}% tokens agree")
