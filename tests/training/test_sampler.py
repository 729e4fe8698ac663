"""Tests for training/sampler.py: step seeds and the global batch sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.config import ConfigError
from training.sampler import GlobalBatchSampler, step_seed


def test_step_seed_differs_per_step_and_process():
    seeds = {step_seed(1115, p, s) for p in range(3) for s in range(100)}
    assert len(seeds) == 300
    assert step_seed(1115, 0, 7) == step_seed(1115, 0, 7)
    assert all(0 <= s < 2**63 for s in seeds)


# ------------------------------------------------------------------------------ batching


def test_global_batches_split_across_processes_cover_every_example():
    n, batch, procs = 23, 6, 3
    shards = [GlobalBatchSampler(n, batch, procs, p, seed=5) for p in range(procs)]
    per_process = [list(s) for s in shards]
    assert all(len(b) == len(shards[0]) == math.ceil(n / batch) for b in per_process)
    seen = []
    for k in range(len(per_process[0])):
        pieces = [per_process[p][k] for p in range(procs)]
        assert all(len(piece) == batch // procs for piece in pieces)  # equal shares
        seen.extend(i for piece in pieces for i in piece)
    assert set(seen) == set(range(n))  # every example, the last batch filled up with repeats
    assert len(seen) == math.ceil(n / batch) * batch
    # Process p takes items p, p + P, ... of each global batch: with length grouping the
    # processes get rows of similar lengths (a contiguous split would give one the longest).
    batches = shards[0].global_batches()
    assert all(per_process[p][k] == list(batches[k][p::procs]) for p in range(procs) for k in range(len(batches)))
    # The repeats that fill the last batch are the first examples of the epoch's order.
    order = np.concatenate(batches)
    assert list(order[n:]) == list(order[: len(order) - n]) and len(set(order[:n])) == n


def test_global_batches_are_deterministic_per_epoch_and_resumable():
    sampler = GlobalBatchSampler(40, 8, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    sampler.set_epoch(1)
    sampler.set_start(3)
    assert list(sampler) == first[3:]
    assert list(sampler) == first  # the skip applies to one pass only
    with pytest.raises(ConfigError, match="not a multiple of the 2 processes launched"):
        GlobalBatchSampler(40, 5, num_processes=2)


def test_length_grouping_puts_similar_lengths_together():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, 400)
    grouped = list(GlobalBatchSampler(400, 8, seed=0, lengths=lengths, group_size=50))
    plain = list(GlobalBatchSampler(400, 8, seed=0))
    spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches])  # noqa: E731
    assert spread(grouped) < 0.2 * spread(plain)
    assert sorted(i for b in grouped for i in b) == list(range(400))


# ------------------------------------------------------------------------------ checkpoints
