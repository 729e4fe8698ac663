"""The one FeatureExtractor and the one builder of the encoders.

``FeatureExtractor.extract`` is THE single place raw audio becomes EnCLAP features; the
preprocessing CLI, the captioning pipeline, evaluation's raw-audio mode and the demo all
call it (or ``extract_prepared`` after decoding and resampling in DataLoader workers with
``prepare_branches``), so a clip gets identical features whichever way it comes in.

The two encoders follow the contracts of :mod:`data.extraction.contract` (:class:`Codec`,
:class:`Embedder`), so a different codec can be swapped in without touching the model: the
codec is named by a spec (``encodec``, or ``package.module:Class``; :func:`codec_class`).
Both encode batches with results equal to encoding each clip alone. :func:`build_encodec`,
:func:`build_clap` and :func:`build_feature_extractor` are the one place where weights,
random weights and seeds are chosen.
"""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from data.extraction.audio import ENCODEC_SAMPLE_RATE, load_audio, resample_for_clap, resample_for_encodec, to_mono
from data.extraction.clap_encoder import CLAP_CHECKPOINT_NAME, CLAP_CHECKPOINT_URL, CLAP_HUB_REPO, ClapEncoder
from data.extraction.contract import Codec, Embedder, ModelLoadError
from data.extraction.encodec_encoder import EncodecEncoder

logger = logging.getLogger(__name__)

#: The codec of the paper, and of every recipe that names none (``data.codec``, ``--codec``).
DEFAULT_CODEC = "encodec"
CODECS = {DEFAULT_CODEC: EncodecEncoder}

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


def prepare_branches(mono: np.ndarray, sr: int,
                     codec_rate: int = ENCODEC_SAMPLE_RATE) -> Tuple[torch.Tensor, np.ndarray]:
    """Resamples one mono clip for both branches (cheap enough for DataLoader workers).

    Args:
        mono: float32 (N,).
        sr: its sample rate.
        codec_rate: the codec's ``sample_rate`` (24 kHz for EnCodec).

    Returns:
        ``(wav24 (N24,) float32 tensor for EnCodec, wav48 (N48,) float32 array for CLAP)``.
    """
    return resample_for_encodec(mono, sr, codec_rate), resample_for_clap(mono, sr)


class FeatureExtractor:
    """Raw audio -> ``(codes (T, 16) int64, clap_embedding (512,) float32)`` per clip.

    Each source is decoded once (``decode``), downmixed by mean, resampled per branch
    (``prepare_branches``) and fed to both encoders as one batch each.

    Args:
        encodec: the codec (a :class:`Codec`; EnCodec in the paper).
        clap: the embedder (an :class:`Embedder`; LAION-CLAP in the paper).
    """

    def __init__(self, encodec: Optional[Codec], clap: Optional[Embedder]):
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
        return self.extract_prepared([prepare_branches(mono, sr, self.codec_rate) for mono, sr in clips])

    @property
    def codec_rate(self) -> int:
        """The sample rate of the codec branch (EnCodec's when that branch is skipped)."""
        return self.encodec.sample_rate if self.encodec is not None else ENCODEC_SAMPLE_RATE

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


def codec_class(spec: Optional[str] = None) -> type:
    """The codec class a spec names: ``encodec`` (None), or ``package.module:Class`` of a
    :class:`Codec` defined elsewhere (the seam design §10 describes).

    Raises:
        ModelLoadError: the module or class cannot be found (one line).
    """
    spec = spec or DEFAULT_CODEC
    if spec in CODECS:
        return CODECS[spec]
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name) if class_name else None
    except (ImportError, AttributeError) as err:
        raise ModelLoadError(f"codec {spec!r} not found ({type(err).__name__}: {err})") from None
    if cls is None:
        raise ModelLoadError(f"unknown codec {spec!r}: use {', '.join(CODECS)} or package.module:Class")
    return cls


def build_encodec(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
                  max_batch_size: Optional[int] = None, codec: Optional[str] = None) -> Codec:
    """The codec ``codec`` names (EnCodec by default): its weights, or seeded random ones (``random_weights``)."""
    exact_float32(device)
    return codec_class(codec)(device=device, pretrained=not random_weights, seed=seed, max_batch_size=max_batch_size)


def build_clap(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
               clap_ckpt: Optional[Union[str, os.PathLike]] = None,
               max_batch_size: Optional[int] = None) -> Embedder:
    """The CLAP encoder: the checkpoint ``clap_ckpt`` (None: the hub cache), or seeded random weights."""
    exact_float32(device)
    path = None if random_weights else resolve_clap_checkpoint(clap_ckpt)
    return ClapEncoder(ckpt_path=path, device=device, seed=seed, max_batch_size=max_batch_size)


def build_feature_extractor(device: Union[str, torch.device] = "cpu", random_weights: bool = False, seed: int = 0,
                            clap_ckpt: Optional[Union[str, os.PathLike]] = None, encodec: bool = True,
                            clap: bool = True, max_batch_size: Optional[int] = None,
                            codec: Optional[str] = None) -> FeatureExtractor:
    """Both encoders behind the shared front end, as preprocessing and the pipeline use them.

    Args:
        device: where the encoders run.
        random_weights: seeded random weights for both (tests, the offline demo).
        seed: seeds both random-weight encoders and CLAP's chunk choice for clips over 10 s; the
            same seed gives identical features in any process.
        clap_ckpt: the LAION-CLAP checkpoint (ignored with ``random_weights``).
        encodec, clap: build that branch (a skipped branch is ``None`` in the extractor).
        max_batch_size: clips per forward pass (None: 1 on CPU, all on a GPU).
        codec: the codec spec (:func:`codec_class`; None: EnCodec).
    """
    return FeatureExtractor(
        build_encodec(device, random_weights, seed, max_batch_size, codec) if encodec else None,
        build_clap(device, random_weights, seed, clap_ckpt, max_batch_size) if clap else None)


def check_codebooks(codec: Codec, num_rvq: int, source: str) -> None:
    """Refuse a model whose number of codebooks (``num_rvq``) is not the codec's.

    Raises:
        ModelLoadError: one line naming both numbers.
    """
    if int(num_rvq) != codec.num_codebooks:
        raise ModelLoadError(f"{source} expects num_rvq={num_rvq} codebooks, but the codec at "
                             f"{codec.bandwidth:g} kbps gives {codec.num_codebooks}: use a matching checkpoint")
