"""The one loader: folders, weights files and hub ids -> model, tokenizer, generation config."""

from __future__ import annotations

import shutil

import pytest
import torch

import modeling.pretrained
from modeling import CheckpointError, load_pretrained
from modeling.generation import GenerationOptions
from tests.helpers import lay_out_hub_cache, CAPTIONS, make_batch, random_clips
from training.tokenizer import train_tokenizer


def test_hub_id_gets_the_tokenizer_stored_in_that_repo(tiny_ckpt, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_hub_cache(tmp_path / "hub", "someone/enclap-tiny", tiny_ckpt)
    # The fallback tokenizer differs from the repo's: a hub checkpoint must never get it.
    other = tmp_path / "other_tokenizer"
    train_tokenizer(["completely different words only"] * 3, vocab_size=280).save_pretrained(other)
    monkeypatch.setattr(modeling.pretrained, "DEFAULT_TOKENIZER", str(other))
    loaded = load_pretrained("someone/enclap-tiny", cache_dir=str(tmp_path / "hub"))
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded.tokenizer(CAPTIONS[0]).input_ids == tokenizer(CAPTIONS[0]).input_ids
    assert loaded.generation_config.num_beams == GenerationOptions().num_beams
    assert loaded.folder.startswith(str(tmp_path / "hub"))


def test_released_folder_without_tokenizer_gets_the_default(tiny_ckpt, tmp_path, monkeypatch):
    released_like = tmp_path / "released"
    released_like.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_ckpt / name, released_like / name)
    fallback = tmp_path / "fallback_tokenizer"
    train_tokenizer(CAPTIONS[:3] * 2, vocab_size=270).save_pretrained(fallback)
    monkeypatch.setattr(modeling.pretrained, "DEFAULT_TOKENIZER", str(fallback))
    loaded = load_pretrained(released_like)
    assert len(loaded.tokenizer) == len(train_tokenizer(CAPTIONS[:3] * 2, vocab_size=270))
    # An unreachable default fails in one line that names it.
    monkeypatch.setattr(modeling.pretrained, "DEFAULT_TOKENIZER", "facebook/bart-base-uncached-test")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(released_like)
    assert "facebook/bart-base-uncached-test" in str(err.value) and "\n" not in str(err.value)


def test_weights_file_path_loads_like_its_folder(tiny_ckpt):
    codes, clap = random_clips(2, [9, 14], seed=4)
    batch = make_batch(codes, clap)
    by_file = load_pretrained(tiny_ckpt / "model.safetensors")
    by_folder = load_pretrained(tiny_ckpt)
    assert torch.equal(by_file.model.generate(**batch), by_folder.model.generate(**batch))


def test_a_file_that_is_not_weights_is_refused(tiny_ckpt):
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tiny_ckpt / "config.json")


def test_loading_a_checkpoint_warns_of_nothing(tiny_ckpt, monkeypatch):
    # transformers 5 checks every `*_token_id` of a config against the text vocabulary; a stock
    # BART reading of an EnCLAP config.json (the tokenizer's, unless it is handed the model's
    # config) would report the codec pad id, which indexes the codec tables instead.
    import transformers.configuration_utils

    warned = []
    logger = transformers.configuration_utils.logger
    monkeypatch.setattr(logger, "warning_once", lambda message, *args: warned.append(message))
    monkeypatch.setattr(logger, "warning", lambda message, *args: warned.append(message))
    loaded = load_pretrained(tiny_ckpt)
    assert loaded.model.config.encodec_pad_token_id >= len(loaded.tokenizer)  # the case that would warn
    assert warned == []
