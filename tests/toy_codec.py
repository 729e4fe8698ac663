"""A second codec, defined by the tests only, to prove the codec seam of design §10.

It implements :class:`data.extraction.contract.Codec` and imports nothing else of ours: 16 kHz
audio, a hop of 320 samples (50 frames per second), 4 codebooks of 64 codes. Each frame's code in
codebook k is a seeded random projection of its samples, squashed and binned, so codes depend on
the audio and on nothing else (batches give what clips give alone).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from data.extraction.contract import Wave, resolve_batch_size


class ToyCodec:
    """The tests' codec; ``pretrained`` is accepted as the contract says (there are no weights)."""

    sample_rate = 16000
    hop_length = 320
    frame_rate = sample_rate / hop_length  # 50.0
    num_codebooks = 4
    codebook_size = 64

    def __init__(self, device: Union[str, torch.device] = "cpu", pretrained: bool = True, seed: int = 0,
                 max_batch_size: Optional[int] = None):
        self.device = torch.device(device)
        self.max_batch_size = resolve_batch_size(max_batch_size, self.device)
        self.bandwidth = self.frame_rate * self.num_codebooks * math.log2(self.codebook_size) / 1000  # kbps
        self.projection = np.random.default_rng(seed).standard_normal((self.hop_length, self.num_codebooks))

    def num_frames(self, num_samples: int) -> int:
        return int(math.ceil(num_samples / self.hop_length))

    def prefix_samples(self, frames: int) -> int:
        return int(frames) * self.hop_length  # frames never look ahead

    def encode(self, wavs: Sequence[Wave]) -> List[np.ndarray]:
        out = []
        for wav in wavs:
            x = np.asarray(wav.detach().cpu() if isinstance(wav, torch.Tensor) else wav, dtype=np.float64)
            frames = self.num_frames(len(x))
            padded = np.zeros(frames * self.hop_length)
            padded[:len(x)] = x
            squashed = np.tanh(padded.reshape(frames, self.hop_length) @ self.projection)  # (T, 4) in (-1, 1)
            out.append(np.minimum((squashed + 1) / 2 * self.codebook_size, self.codebook_size - 1).astype(np.int64))
        return out
