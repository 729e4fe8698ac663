"""Deterministic batching: the per-step dropout seed and the global batch sampler
(``split_batches`` semantics, optional length grouping, resumable mid-epoch).
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from training.config import ConfigError


def check_global_batch(batch_size: int, num_processes: int) -> int:
    """The examples each process gets per forward pass of a global batch of ``batch_size``.

    Raises:
        ConfigError: the global batch does not split evenly over the processes (one line, the fix).
    """
    if batch_size % num_processes:
        fits = [n for n in range(num_processes, 0, -1) if batch_size % n == 0][0]
        raise ConfigError(f"optim.batch_size={batch_size} (the global batch) is not a multiple of the "
                          f"{num_processes} processes launched: set optim.batch_size to a multiple of "
                          f"{num_processes} (e.g. {num_processes * max(1, -(-batch_size // num_processes))}) "
                          f"or launch a number of processes that divides it (e.g. {fits})")
    return batch_size // num_processes


def step_seed(seed: int, process_index: int, step: int) -> int:
    """Seed of the torch RNG (dropout) for one optimizer step on one process.

    Re-seeding every step from (seed, process, step) makes a resumed run draw exactly the
    dropout masks of an uninterrupted one, whatever else consumed random numbers in between.
    """
    low, high = np.random.SeedSequence([seed, process_index, step]).generate_state(2)  # two uint32
    return (int(high) & 0x7FFFFFFF) << 32 | int(low)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's share of each global batch, deterministically per epoch.

    ``split_batches`` semantics: ``batch_size`` is the GLOBAL batch; process ``p`` of ``P``
    gets items ``p::P`` of every global batch. The last global batch is filled up with the
    first items of the epoch's order so that every process runs the same number of equal
    batches (as Accelerate's ``even_batches``). The order depends only on (seed, epoch), so
    a resumed run sees the same batches; :meth:`set_start` skips the batches already done.

    Args:
        num_examples: dataset size.
        batch_size: global batch size (a multiple of ``num_processes``).
        num_processes, process_index: data-parallel layout.
        seed: base seed of the shuffling.
        shuffle: shuffle each epoch (else dataset order).
        lengths: example lengths for length-grouped batching (None: plain shuffling).
        group_size: with ``lengths``, examples are sorted by length inside chunks of
            ``group_size`` global batches; the batches are then shuffled.
    """

    def __init__(self, num_examples: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, shuffle: bool = True, lengths: Optional[Sequence[int]] = None,
                 group_size: int = 50):
        check_global_batch(batch_size, num_processes)
        if num_examples < 1:
            raise ValueError("empty dataset")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order is served."""
        self.epoch = epoch

    def set_start(self, num_batches: int) -> None:
        """Skips the first ``num_batches`` batches of the epoch (resume mid-epoch)."""
        self.start = num_batches

    def global_batches(self) -> list[np.ndarray]:
        """All global batches of the current epoch, each an index array of ``batch_size``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_examples) if self.shuffle else np.arange(self.num_examples)
        if self.lengths is not None:
            chunk = self.batch_size * self.group_size
            order = np.concatenate([
                part[np.argsort(-self.lengths[part], kind="stable")] for part in np.array_split(
                    order, max(1, math.ceil(len(order) / chunk)))
            ])
        pad = -len(order) % self.batch_size
        if pad:
            order = np.concatenate([order, np.resize(order, pad)])
        batches = list(order.reshape(-1, self.batch_size))
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start:]:
            yield batch[self.process_index::self.num_processes].tolist()
        self.start = 0
