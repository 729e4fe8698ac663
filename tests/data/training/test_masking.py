"""Tests of data/training/masking.py: crop rules and the MCM span masks of design §4."""

from math import comb

import numpy as np
import pytest

from data.training.masking import crop_codes, example_rng, num_masked_spans, span_mask


def expected_masked_fraction(num_frames, mask_prob=0.15, span=10):
    """Exact E[masked share] from the design document's rule (not from the code under test).

    n = int(p*T/span + eps), eps ~ U(0,1): n = floor(x) with probability 1 - frac(x), else
    floor(x) + 1. Given n distinct starts among S = T - span + 1, frame t stays unmasked iff
    none of the k_t starts that cover it is chosen: C(S - k_t, n) / C(S, n).
    """
    x = mask_prob * num_frames / span
    low, frac = int(x), x - int(x)
    starts = num_frames - span + 1
    total = 0.0
    for n, weight in ((low, 1 - frac), (low + 1, frac)):
        covered = 0.0
        for t in range(num_frames):
            k = min(t, starts - 1) - max(0, t - span + 1) + 1
            covered += 1 - comb(starts - k, n) / comb(starts, n)
        total += weight * covered / num_frames
    return total


def test_masked_fraction_matches_spec_at_750_frames():
    masks = np.stack([span_mask(750, example_rng(1115, 0, i)) for i in range(600)])  # (600, 750, 16)
    expected = expected_masked_fraction(750)
    assert 0.135 < expected < 0.145  # the "about 14 %" of the design document
    assert masks.mean() == pytest.approx(expected, abs=0.003)
    # every codebook row is masked at the same rate
    per_codebook = masks.mean(axis=(0, 1))  # (16,)
    assert np.all(np.abs(per_codebook - expected) < 0.01)


def test_masks_are_independent_per_codebook():
    masks = np.stack([span_mask(750, example_rng(3, 0, i)) for i in range(50)])
    for example in masks:
        rows = example.T  # (16, 750)
        assert len({row.tobytes() for row in rows}) == 16


def test_span_count_epsilon_is_shared_by_the_16_codebooks():
    # T = 50: 0.15 * 50 / 10 = 0.75, so each row gets 0 spans (eps < 0.25) or exactly one
    # 10-frame span; with one eps per example all rows agree.
    counts = []
    for i in range(400):
        per_row = span_mask(50, example_rng(7, 0, i)).sum(axis=0)  # (16,)
        assert set(per_row.tolist()) in ({0}, {10})
        counts.append(per_row[0])
    share_without = np.mean(np.array(counts) == 0)
    assert share_without == pytest.approx(0.25, abs=0.07)


def test_spans_are_ten_frames_and_starts_cover_zero_to_t_minus_10():
    num_frames, draws = 200, 1500
    first = last = 0
    for i in range(draws):
        mask = span_mask(num_frames, example_rng(11, 0, i))  # (200, 16)
        for row in mask.T:
            padded = np.concatenate([[False], row, [False]]).astype(int)
            edges = np.flatnonzero(np.diff(padded))
            runs = edges[1::2] - edges[::2]
            assert np.all(runs >= 10)  # overlapping spans merge, never shorter than a span
        first += mask[0].sum()
        last += mask[-1].sum()
    # frame 0 is masked only by start 0, the last frame only by start T - 10: each is hit
    # with probability E[n] / (T - 9) per row, E[n] = 0.15 * 200 / 10 = 3.
    expected = draws * 16 * 3 / (num_frames - 9)
    assert first == pytest.approx(expected, rel=0.2)
    assert last == pytest.approx(expected, rel=0.2)


@pytest.mark.parametrize("num_frames", [1, 2, 9])
def test_clips_shorter_than_a_span_get_no_mask(num_frames):
    for i in range(50):
        mask = span_mask(num_frames, example_rng(0, 0, i))
        assert mask.shape == (num_frames, 16) and mask.dtype == bool
        assert not mask.any()


def test_clip_of_exactly_one_span():
    seen = set()
    for i in range(100):
        mask = span_mask(10, example_rng(0, 0, i))  # one possible start: a row is all or nothing
        for row in mask.T:
            assert row.all() or not row.any()
        seen.add(int(mask.sum()))
    assert seen == {0, 160}


def test_span_count_rule():
    assert num_masked_spans(750, 0.15, 10, 0.2) == 11  # int(11.25 + 0.2)
    assert num_masked_spans(750, 0.15, 10, 0.8) == 12  # int(11.25 + 0.8)
    assert num_masked_spans(50, 0.15, 10, 0.2) == 0    # zero spans
    assert num_masked_spans(9, 0.15, 10, 0.99) == 0    # shorter than a span
    assert num_masked_spans(20, 1.0, 10, 0.5) == 2     # never more spans than fit


def test_zero_spans_give_an_empty_mask():
    for i in range(20):
        mask = span_mask(300, example_rng(5, 0, i), mask_prob=1e-7)
        assert mask.shape == (300, 16) and not mask.any()


def test_probability_zero_turns_masking_off():
    assert span_mask(750, example_rng(0, 0, 0), mask_prob=0.0) is None


def test_masks_depend_only_on_seed_epoch_index():
    forward = {i: span_mask(300, example_rng(1115, 2, i)) for i in range(20)}
    backward = {i: span_mask(300, example_rng(1115, 2, i)) for i in reversed(range(20))}
    for i in range(20):
        assert np.array_equal(forward[i], backward[i])
    assert not np.array_equal(forward[0], forward[1])
    assert not np.array_equal(forward[0], span_mask(300, example_rng(1115, 3, 0)))   # epoch
    assert not np.array_equal(forward[0], span_mask(300, example_rng(1116, 2, 0)))   # seed


def test_crop_keeps_short_clips_whole():
    codes = np.arange(40 * 16).reshape(40, 16)
    assert np.array_equal(crop_codes(codes, 40, example_rng(0, 0, 0)), codes)
    assert np.array_equal(crop_codes(codes, 1021), codes)


def test_crop_without_rng_keeps_the_first_frames():
    codes = np.arange(1500 * 16).reshape(1500, 16)
    cropped = crop_codes(codes)
    assert cropped.shape == (1021, 16)
    assert np.array_equal(cropped, codes[:1021])


def test_random_crop_is_a_window_covering_all_starts():
    codes = np.repeat(np.arange(30)[:, None], 16, axis=1)  # row t holds t
    starts = set()
    for i in range(300):
        window = crop_codes(codes, 25, example_rng(0, 0, i))
        assert window.shape == (25, 16)
        start = int(window[0, 0])
        assert np.array_equal(window[:, 3], np.arange(start, start + 25))
        starts.add(start)
    assert starts == set(range(6))  # 0 .. T - max_frames, inclusive
    again = crop_codes(codes, 25, example_rng(0, 0, 7))
    assert np.array_equal(again, crop_codes(codes, 25, example_rng(0, 0, 7)))
