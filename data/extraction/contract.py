"""The contracts of the two encoders, in code: what the rest of the repository uses of a codec and
of an audio-embedding model, and the two helpers every encoder shares.

A codec (EnCodec here, :class:`data.extraction.encodec_encoder.EncodecEncoder`) turns audio into
discrete codes ``(T, num_codebooks)``; an embedder (LAION-CLAP,
:class:`data.extraction.clap_encoder.ClapEncoder`) turns audio into one vector. Preprocessing,
the captioning pipeline and training are typed against :class:`Codec` and :class:`Embedder`
only, so another codec is one file implementing :class:`Codec` plus the recipe key
``data.codec`` naming it (``package.module:Class``, see ``data.extraction.encoders.codec_class``)
and preprocessing's ``--codec``. Encoders import this module (and the audio front end), never
the builder in ``data/extraction/encoders.py``.
"""

from __future__ import annotations

from typing import ClassVar, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from common.errors import UserError

Wave = Union[np.ndarray, torch.Tensor]


class ModelLoadError(UserError, RuntimeError):
    """Encoder weights that cannot be found or loaded; the message is one line with the fix."""


@runtime_checkable
class Codec(Protocol):
    """Audio -> discrete codes, batch-exact (a batch gives what each clip gives alone).

    The class attributes describe the codes without building the codec (training reads them for
    a scratch model and for limits in seconds); an instance may refine them (EnCodec's codebooks
    follow its bandwidth).

    Construction: ``Codec(device=..., pretrained=..., seed=..., max_batch_size=...)``, where
    ``pretrained=False`` gives seeded random weights (tests, the offline demo).
    """

    #: Hz of the audio ``encode`` reads (the front end resamples to it).
    sample_rate: ClassVar[int]
    #: Frames per second of the codes: a frame limit (``common.constants.frame_limit``) lasts
    #: ``frames / frame_rate`` seconds.
    frame_rate: ClassVar[float]
    #: Codes per frame (residual quantisers): the model's ``num_rvq``.
    num_codebooks: ClassVar[int]
    #: Codes lie in ``[0, codebook_size)``: the model's ``encodec_vocab_size``.
    codebook_size: ClassVar[int]
    #: Bit rate in kbps, named in messages about a codebook mismatch.
    bandwidth: float

    def encode(self, wavs: Sequence[Wave]) -> List[np.ndarray]:
        """Codes ``(T, num_codebooks)`` int64 per mono clip at ``sample_rate``."""

    def num_frames(self, num_samples: int) -> int:
        """Frames ``encode`` gives for a clip of ``num_samples`` samples at ``sample_rate``."""

    def prefix_samples(self, frames: int) -> int:
        """Samples to encode so that the first ``frames`` frames equal the whole clip's (truncation)."""


@runtime_checkable
class Embedder(Protocol):
    """Audio -> one embedding per clip (and text -> embeddings in the same space, for re-ranking)."""

    #: Hz of the audio ``encode`` reads.
    sample_rate: int
    #: Size of the embedding: the model's ``d_clap``.
    dim: int

    def encode(self, wavs: Sequence[Wave]) -> np.ndarray:
        """Embeddings ``(B, dim)`` float32 of mono clips at ``sample_rate``."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings ``(B, dim)`` float32 of captions."""


def resolve_batch_size(max_batch_size: Optional[int], device: torch.device) -> Optional[int]:
    """None -> 1 on CPU, unlimited (None) elsewhere; an explicit positive value is kept."""
    if max_batch_size is None:
        return 1 if device.type == "cpu" else None
    if int(max_batch_size) < 1:
        raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
    return int(max_batch_size)
