"""Feature encoders behind one interface, the one FeatureExtractor, and the one builder.

``FeatureExtractor.extract`` is THE single place raw audio becomes EnCLAP features; the
preprocessing CLI, the captioning pipeline, evaluation's raw-audio mode and the demo all
call it (or ``extract_prepared`` after decoding and resampling in DataLoader workers with
``prepare_branches``), so a clip gets identical features whichever way it comes in.

The two encoders share a small interface, so a different codec can be swapped in without
touching the model:

* the codec (:class:`data.extraction.encodec_encoder.EncodecEncoder`): ``sample_rate``, ``frame_rate``,
  ``num_codebooks``, ``codebook_size``, ``encode(wavs) -> [(T, num_codebooks) int64]`` and
  ``num_frames(samples)``;
* CLAP (:class:`data.extraction.clap_encoder.ClapEncoder`): ``sample_rate``, ``dim`` (the embedding
  size), ``encode(wavs) -> (B, dim)`` and ``embed_text(texts)``.

Both encode batches with results equal to encoding each clip alone. :func:`build_encodec`,
:func:`build_clap` and :func:`build_feature_extractor` are the one place where weights,
random weights and seeds are chosen.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from common.errors import UserError
from data.extraction.audio import load_audio, resample_for_clap, resample_for_encodec, to_mono

if TYPE_CHECKING:  # the encoders import this module; their classes are only named here
    from data.extraction.clap_encoder import ClapEncoder
    from data.extraction.encodec_encoder import EncodecEncoder

logger = logging.getLogger(__name__)

ENCODEC_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + ENCODEC_CHECKPOINT
CLAP_HUB_REPO = "lukewys/laion_clap"  # where laion_clap itself fetches its checkpoints
CLAP_CHECKPOINT_NAME = "630k-audioset-fusion-best.pt"
CLAP_CHECKPOINT_URL = f"https://huggingface.co/{CLAP_HUB_REPO}/resolve/main/{CLAP_CHECKPOINT_NAME}"


class ModelLoadError(UserError, RuntimeError):
    """Encoder weights that cannot be found or loaded; the message is one line with the fix."""


def resolve_batch_size(max_batch_size: Optional[int], device: torch.device) -> Optional[int]:
    """None -> 1 on CPU, unlimited (None) elsewhere; an explicit positive value is kept."""
    if max_batch_size is None:
        return 1 if device.type == "cpu" else None
    if int(max_batch_size) < 1:
        raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
    return int(max_batch_size)

# --------------------------------------------------------------------------------------------
# The one raw-audio -> features entry point
# --------------------------------------------------------------------------------------------

AudioInput = Union[str, os.PathLike, Tuple[Union[np.ndarray, torch.Tensor], int]]


def decode(source: AudioInput) -> Tuple[np.ndarray, int]:
    """Decodes a path or an ``(array, sample_rate)`` pair into mono float32 and its rate.

    Args:
        source: a file path, or ``(array, sr)`` with the array laid out as
            ``data.extraction.audio.load_audio`` documents ((N,), (C, N) or (N, C); the shorter axis of
            a 2-D array is taken as channels).

    Returns:
        ``(mono (N,) float32, sr)``.

    Raises:
        AudioError: undecodable, empty or non-finite audio (one-line message).
    """
    if isinstance(source, tuple):
        array, sr = source
        wav, sr = load_audio(array, sample_rate=sr)
    else:
        wav, sr = load_audio(source)
    return to_mono(wav), sr


def prepare_branches(mono: np.ndarray, sr: int) -> Tuple[torch.Tensor, np.ndarray]:
    """Resamples one mono clip for both branches (cheap enough for DataLoader workers).

    Args:
        mono: float32 (N,).
        sr: its sample rate.

    Returns:
        ``(wav24 (N24,) float32 tensor for EnCodec, wav48 (N48,) float32 array for CLAP)``.
    """
    return resample_for_encodec(mono, sr), resample_for_clap(mono, sr)


class FeatureExtractor:
    """Raw audio -> ``(codes (T, 16) int64, clap_embedding (512,) float32)`` per clip.

    Each source is decoded once (``decode``), downmixed by mean, resampled per branch
    (``prepare_branches``) and fed to both encoders as one batch each.

    Args:
        encodec: an ``EncodecEncoder``.
        clap: a ``ClapEncoder``.
    """

    def __init__(self, encodec: EncodecEncoder, clap: ClapEncoder):
        self.encodec = encodec
        self.clap = clap

    def extract(self, sources: Sequence[AudioInput]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Features for audio files and/or ``(array, sr)`` pairs, one batch.

        Raises:
            AudioError: the first source that cannot be decoded (message names it).
        """
        return self.extract_arrays([decode(source) for source in sources])

    def extract_arrays(self, clips: Sequence[Tuple[np.ndarray, int]]
                       ) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Features for already decoded ``(mono (N,) float32, sr)`` pairs, one batch."""
        return self.extract_prepared([prepare_branches(mono, sr) for mono, sr in clips])

    def extract_prepared(self, prepared: Sequence[Tuple[torch.Tensor, np.ndarray]]
                         ) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Features for ``prepare_branches`` outputs (decode + resample done in workers)."""
        if len(prepared) == 0:
            return []
        codes = self.encodec.encode([wav24 for wav24, _ in prepared])  # B x (T, 16)
        embeddings = self.clap.encode([wav48 for _, wav48 in prepared])  # (B, 512)
        return [(c, embeddings[i]) for i, c in enumerate(codes)]


# --------------------------------------------------------------------------------------------
# The one builder: weights, random weights and seeds in one place
# --------------------------------------------------------------------------------------------


def resolve_clap_checkpoint(clap_ckpt: Optional[Union[str, os.PathLike]]) -> str:
    """A local path to the LAION-CLAP fusion checkpoint.

    A given path must exist. ``None`` looks the file up in the Hugging Face cache and downloads
    it when a network is there; otherwise the error says where to get it.

    Raises:
        ModelLoadError: the file is missing or cannot be fetched (one line, with the fix).
    """
    if clap_ckpt is not None:
        path = pathlib.Path(clap_ckpt).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"CLAP checkpoint not found: {path.absolute()} "
                                 f"(download {CLAP_CHECKPOINT_URL} and pass its path)")
        return str(path)
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(CLAP_HUB_REPO, CLAP_CHECKPOINT_NAME)
    except Exception as exc:  # offline, hub error: all mean "get the file yourself"
        raise ModelLoadError(
            f"no CLAP checkpoint given and it could not be downloaded ({type(exc).__name__}): "
            f"download {CLAP_CHECKPOINT_URL} and pass --clap_ckpt PATH") from exc


def exact_float32(device: Union[str, torch.device]) -> None:
    """Turn TF32 off for CUDA matmuls and cuDNN convolutions before encoding on a GPU.

    Features must not depend on the device or the batch (design §2): TF32 rounds float32
    inputs to 10 mantissa bits, and cuDNN convolutions (EnCodec is convolutional) use it by
    default on recent GPUs, which would move codes across quantiser boundaries.
    """
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def build_encodec(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
                  max_batch_size: Optional[int] = None) -> "EncodecEncoder":
    """The EnCodec encoder: Meta's weights, or seeded random ones (``random_weights``)."""
    from data.extraction.encodec_encoder import EncodecEncoder

    exact_float32(device)
    return EncodecEncoder(device=device, pretrained=not random_weights, seed=seed, max_batch_size=max_batch_size)


def build_clap(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
               clap_ckpt: Optional[Union[str, os.PathLike]] = None,
               max_batch_size: Optional[int] = None) -> "ClapEncoder":
    """The CLAP encoder: the checkpoint ``clap_ckpt`` (None: the hub cache), or seeded random weights."""
    from data.extraction.clap_encoder import ClapEncoder

    exact_float32(device)
    path = None if random_weights else resolve_clap_checkpoint(clap_ckpt)
    return ClapEncoder(ckpt_path=path, device=device, seed=seed, max_batch_size=max_batch_size)


def build_feature_extractor(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
                            clap_ckpt: Optional[Union[str, os.PathLike]] = None, encodec: bool = True,
                            clap: bool = True, max_batch_size: Optional[int] = None) -> FeatureExtractor:
    """Both encoders behind the shared front end, as preprocessing and the pipeline use them.

    Args:
        device: where the encoders run.
        random_weights: seeded random weights for both (tests, the offline demo).
        seed: seeds both random-weight encoders and CLAP's chunk choice for clips over 10 s; the
            same seed gives identical features in any process.
        clap_ckpt: the LAION-CLAP checkpoint (ignored with ``random_weights``).
        encodec, clap: build that branch (a skipped branch is ``None`` in the extractor).
        max_batch_size: clips per forward pass (None: 1 on CPU, all on a GPU).
    """
    return FeatureExtractor(
        build_encodec(device, random_weights, seed, max_batch_size) if encodec else None,
        build_clap(device, random_weights, seed, clap_ckpt, max_batch_size) if clap else None)


def check_codebooks(codec: "EncodecEncoder", num_rvq: int, source: str) -> None:
    """Refuse a model whose number of codebooks (``num_rvq``) is not the codec's.

    Raises:
        ModelLoadError: one line naming both numbers.
    """
    if int(num_rvq) != codec.num_codebooks:
        raise ModelLoadError(f"{source} expects num_rvq={num_rvq} codebooks, but the EnCodec encoder at "
                             f"{codec.bandwidth:g} kbps gives {codec.num_codebooks}: use a matching checkpoint")
