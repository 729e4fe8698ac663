"""benchmarks/padding.py: the padding share it reports, on lengths where it is known."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmarks._load import load_benchmark


@pytest.fixture(scope="module")
def padding():
    return load_benchmark("padding")


def test_grouping_removes_the_padding_of_two_length_classes(padding):
    lengths = np.array([97] * 64 + [497] * 64)  # rows of 100 and 500
    grouped = padding.padding_share(lengths, 8, grouped=True)
    assert grouped == 0.0  # every batch holds one length only
    plain = padding.padding_share(lengths, 8, grouped=False)
    # A shuffled batch of 8 is all short with probability ~2**-8: nearly every batch pads its
    # short rows up to 500, i.e. about half of (1 - 100/500) of the rows.
    assert 0.3 < plain < 0.45


def test_clips_past_the_crop_have_no_padding(padding):
    lengths = np.random.default_rng(0).integers(1100, 2300, 300)
    assert padding.padding_share(lengths, 16, grouped=False) == 0.0
