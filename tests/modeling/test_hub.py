"""Hub ids: loading from a local Hugging Face cache laid out by the test, and offline failures."""

from __future__ import annotations


import pytest
import torch

from modeling import CheckpointError, EnClapBartForConditionalGeneration
from tests.helpers import lay_out_hub_cache, make_batch, random_clips


def test_hub_id_loads_from_the_local_cache_offline(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_hub_cache(tmp_path / "hub", "someone/enclap-tiny", tiny_ckpt)
    from_hub = EnClapBartForConditionalGeneration.from_pretrained("someone/enclap-tiny", cache_dir=str(tmp_path / "hub"))
    local = EnClapBartForConditionalGeneration.from_pretrained(tiny_ckpt)
    codes, clap = random_clips(2, [7, 12], seed=9)
    batch = make_batch(codes, clap)
    assert torch.equal(from_hub.generate(**batch), local.generate(**batch))


def test_uncached_hub_id_offline_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        EnClapBartForConditionalGeneration.from_pretrained("someone/not-downloaded", cache_dir=str(tmp_path / "hub"))
    message = str(info.value)
    assert "\n" not in message and "someone/not-downloaded" in message and "download" in message
