"""Which audio the model reads: the long-audio policy, encoding only what is captioned, and the
inputs too short or too empty to describe.

* **truncate** (default): the model reads the first ``max_frames`` codec frames (13.6 s for the
  released models, design §3.4). EnCodec encodes only that start of the clip (see
  :func:`encodec_prefix`); CLAP still embeds the whole clip, as preprocessing and the original do.
* **window**: consecutive windows of ``max_frames`` frames, each decoded once, encoded once and
  captioned as a clip of its own.

Every piece says which span of the input it covers, so results can report ``start`` / ``end``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List

import numpy as np
import torch

from data.extraction.audio import ENCODEC_SAMPLE_RATE, AudioError, resample_for_clap, resample_for_encodec
from data.extraction.encoders import decode

#: Below this length a clip is captioned with a warning that it is too short to describe.
#: EnCodec gives a frame per 13.3 ms, and its last convolution spans 7 frames (93 ms) whose
#: start, in a shorter clip, is reflection padding of the clip's own edge: under 0.1 s the
#: codes say more about the padding than about the sound.
MIN_SECONDS = 0.1

#: Source audio resampled past the encoded prefix: torchaudio's windowed-sinc resampler reads
#: 6 zero crossings (< 1 ms at 8 kHz and above) either side of an output sample, so 50 ms makes
#: the prefix's 24 kHz samples those of the whole clip.
RESAMPLER_MARGIN_SECONDS = 0.05


@dataclass
class Piece:
    """One span of one input, resampled for both encoders.

    Args:
        index: the input's position in the request.
        start, end: the span the caption describes, in seconds of the input.
        wav24: what EnCodec encodes (24 kHz float32 tensor; the span's start when truncating).
        wav48: what CLAP embeds (48 kHz float32 array; the whole clip when truncating).
        codec_rate: the sample rate of ``wav24`` (the codec's; 24 kHz for EnCodec).
    """

    index: int
    start: float
    end: float
    wav24: torch.Tensor
    wav48: np.ndarray
    codec_rate: int = ENCODEC_SAMPLE_RATE

    @property
    def encoded_seconds(self) -> float:
        """Seconds of audio EnCodec reads (what a batch's padding cap counts)."""
        return len(self.wav24) / float(self.codec_rate)


def decode_input(source: Any) -> tuple[np.ndarray, int]:
    """A path or ``(array, sample_rate)`` -> (mono float32 (N,), rate), via the shared front end.

    Raises:
        AudioError: unreadable input; an empty (0-byte) file says so.
    """
    if isinstance(source, (str, os.PathLike)):
        if os.path.isfile(source) and os.path.getsize(source) == 0:
            raise AudioError(f"{source}: empty file (0 bytes)")
        return decode(source)
    if isinstance(source, tuple) and len(source) == 2:
        return decode((source[0], int(source[1])))
    raise AudioError(f"unsupported input {type(source).__name__}: pass a file path or an (array, sample_rate) pair")


def encodec_prefix(mono: np.ndarray, sr: int, encodec, frames: int) -> torch.Tensor:
    """The 24 kHz audio EnCodec needs for the first ``frames`` frames of ``mono``, and no more.

    The encoder is causal (frame t reads samples before 320 (t + 1)), so the first ``frames``
    frames of the prefix are those of the whole clip; :meth:`EncodecEncoder.prefix_samples` adds a
    frame of margin and the resampler gets :data:`RESAMPLER_MARGIN_SECONDS` of context.

    Args:
        mono: the clip (N,) at ``sr``.
        sr: its sample rate.
        encodec: the codec (a :class:`data.extraction.contract.Codec`).
        frames: frames the model will read.
    """
    samples24 = encodec.prefix_samples(frames)
    source = -(-samples24 * sr // encodec.sample_rate) + math.ceil(RESAMPLER_MARGIN_SECONDS * sr)
    return resample_for_encodec(mono[:source], sr, encodec.sample_rate)[:samples24]


def split_input(index: int, mono: np.ndarray, sr: int, encodec, max_frames: int, long_audio: str) -> List[Piece]:
    """The pieces of one decoded input under the long-audio policy.

    Args:
        index: the input's position.
        mono: (N,) float32 at ``sr``.
        sr: sample rate.
        encodec: the codec (its rate and hop decide the frame count).
        max_frames: frames the model reads per caption.
        long_audio: ``"truncate"`` or ``"window"``.
    """
    duration = len(mono) / sr
    # Frames after resampling to 24 kHz (integer arithmetic, no float drift).
    frames = encodec.num_frames(-(-len(mono) * encodec.sample_rate // sr))
    if frames <= max_frames:
        return [Piece(index, 0.0, duration, resample_for_encodec(mono, sr, encodec.sample_rate),
                      resample_for_clap(mono, sr), encodec.sample_rate)]
    window = max_frames / float(encodec.frame_rate)
    if long_audio == "truncate":
        return [Piece(index, 0.0, window, encodec_prefix(mono, sr, encodec, max_frames), resample_for_clap(mono, sr),
                      encodec.sample_rate)]
    hop = int(round(window * sr))
    pieces = []
    for start in range(0, len(mono), hop):
        part = mono[start:start + hop]
        pieces.append(Piece(index, start / sr, (start + len(part)) / sr, resample_for_encodec(part, sr, encodec.sample_rate),
                            resample_for_clap(part, sr), encodec.sample_rate))
    return pieces
