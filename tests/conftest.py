"""Shared fixtures: a tokenizer trained from text, tiny EnCLAP configs/models and a saved checkpoint.

Nothing here downloads: the tokenizer is trained from the captions below and the models have
random weights, built and saved by the tests themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from modeling import EnClapBartForConditionalGeneration
from training.tokenizer import train_tokenizer
from tests.helpers import CAPTIONS, TEST_THREADS, make_tiny_config

# Tiny models run fastest single-threaded, and CI's two cores are shared with subprocess tests
# (ENCLAP_TEST_THREADS=2 is one of `make test-kernels`' settings).
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CAPTIONS * 2, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_config(tokenizer):
    return make_tiny_config(len(tokenizer))


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return EnClapBartForConditionalGeneration(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tokenizer, tiny_config):
    """A checkpoint folder as train.py writes it: config, safetensors weights, generation config, tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(tiny_config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
