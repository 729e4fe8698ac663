"""How much padding ``data.group_by_length`` removes, on realistic clip-length mixes (no model).

    python benchmarks/padding.py

Batches come from the training sampler itself (``training.sampler.GlobalBatchSampler``, one
epoch, the recipes' seed), once with plain shuffling and once grouped by length. Padding is the
share of encoder rows in a batch that are padding: ``1 - sum(lengths) / (batch * longest)``,
with ``length = frames + 3`` (CLAP slot, ``<s>``, ``</s>``; design §3) after the training crop
to 1021 frames. EnCodec gives 75 frames per second.

Length mixes (assumptions, stated so they can be checked against the real CSVs):

* AudioCaps-like: AudioSet clips, 10 s for the large majority; here 90 % of 10 s and 10 %
  uniform in 2-10 s; one caption per clip (49,838 training rows).
* Clotho-like: 15-30 s uniform; five captions per clip (3,839 clips = 19,195 rows). Every clip
  is longer than the 1021-frame crop, so no batch has padding whatever the grouping.
* Both: the two training sets together (cfg/both), batch 64.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.constants import DEFAULT_SEED as SEED  # noqa: E402
from common.constants import MAX_FRAMES, NON_FRAME_POSITIONS  # noqa: E402
from data.extraction.audio import ENCODEC_FRAME_RATE as FPS  # noqa: E402


def audiocaps_like(rng: np.random.Generator, n: int = 49838) -> np.ndarray:
    seconds = np.where(rng.random(n) < 0.9, 10.0, rng.uniform(2.0, 10.0, n))
    return np.round(seconds * FPS).astype(int)


def clotho_like(rng: np.random.Generator, clips: int = 3839, captions: int = 5) -> np.ndarray:
    return np.repeat(np.round(rng.uniform(15.0, 30.0, clips) * FPS).astype(int), captions)


def padding_share(lengths: np.ndarray, batch_size: int, grouped: bool) -> float:
    from training.sampler import GlobalBatchSampler

    rows = np.minimum(lengths, MAX_FRAMES) + NON_FRAME_POSITIONS
    sampler = GlobalBatchSampler(len(rows), batch_size, seed=SEED, lengths=rows if grouped else None)
    real = padded = 0
    for batch in sampler.global_batches():
        real += int(rows[batch].sum())
        padded += len(batch) * int(rows[batch].max())
    return 1.0 - real / padded


def main() -> int:
    rng = np.random.default_rng(0)
    audiocaps, clotho = audiocaps_like(rng), clotho_like(rng)
    mixes = [("AudioCaps-like", audiocaps, 16), ("Clotho-like", clotho, 64),
             ("both (AudioCaps + Clotho)", np.concatenate([audiocaps, clotho]), 64)]
    print(f"{'length mix':28s} {'batch':>5s} {'padding, shuffled':>18s} {'padding, grouped':>17s}")
    for name, lengths, batch in mixes:
        plain, grouped = padding_share(lengths, batch, False), padding_share(lengths, batch, True)
        print(f"{name:28s} {batch:5d} {100 * plain:17.1f}% {100 * grouped:16.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
