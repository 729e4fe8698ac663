"""The single audio front end: decode any file or array, downmix, resample per branch.

Everything that turns raw audio into EnCLAP features (preprocessing, evaluation on raw audio,
inference, the demo) goes through these functions, so one clip gives the same features
whichever door it came in by (design §1, §2, §9):

* ``load_audio`` decodes a file with libsndfile (wav incl. 8-bit/MS-ADPCM, flac incl. 24-bit,
  ogg/vorbis, opus, mp3, aiff, ...) or accepts a numpy/torch array ((N,), (C, N) or (N, C)),
  and returns float32 ``(channels, samples)`` plus the sample rate. Integer samples are scaled by their full
  scale (int16 / 32768, ...), as libsndfile does for files.
* ``to_mono`` averages the channels (the original inference kept channel 0; preprocessing
  averaged: we always average).
* ``resample_for_encodec`` uses torchaudio's ``Resample`` with default settings, which is what
  ``encodec.utils.convert_audio`` did when the released checkpoints' codes were made.
* ``resample_for_clap`` uses soxr HQ exactly as ``librosa.load(path, sr=48000)`` did for the
  CLAP branch (librosa's default ``res_type='soxr_hq'`` plus its length fix).
* ``clap_quantize`` is laion_clap's int16 round trip (clip to [-1, 1], x 32767, truncate
  toward zero, / 32767) that its numpy ``get_audio_embedding_from_data`` path applies.

Lossy decoders (mp3, vorbis, opus) return peaks beyond +-1. Those values are kept as they are
for the EnCodec branch (the original passed them through ``convert_audio`` unchanged) and
are clipped only by the CLAP int16 round trip, exactly as in the original pipeline.
"""

from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio
from common.errors import UserError

ENCODEC_SAMPLE_RATE = 24000
# The 24 kHz EnCodec model's hop and frame rate (design §2), for code that has no encoder at
# hand (reports on stored codes, help texts); a built EncodecEncoder reads them from its model.
ENCODEC_HOP = 320
ENCODEC_FRAME_RATE = ENCODEC_SAMPLE_RATE // ENCODEC_HOP  # 75
CLAP_SAMPLE_RATE = 48000

# Extensions the preprocessing CLI looks for by default: every container libsndfile decodes
# that audio datasets actually ship. Lower case, with the dot.
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64",
)

AudioSource = Union[str, os.PathLike, np.ndarray, torch.Tensor]


class AudioError(UserError):
    """A clip that cannot be used: unreadable, not audio, empty or non-finite.

    The message is one line naming the file (or ``<array>``) and the reason, ready to be
    printed by an entry point or written to a failures file.
    """


def _int_to_float(samples: np.ndarray) -> np.ndarray:
    """Scales integer PCM to float32 by its full scale, as libsndfile does for files."""
    if samples.dtype == np.uint8:
        # 8-bit PCM is unsigned with its zero at 128 (WAV convention).
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    info = np.iinfo(samples.dtype)
    if info.min == 0:
        raise AudioError(f"<array>: unsupported unsigned sample type {samples.dtype}; "
                         "pass float or signed integer samples")
    return (samples.astype(np.float64) / float(-info.min)).astype(np.float32)


def _array_to_channels_first(samples: Union[np.ndarray, torch.Tensor],
                             channels_axis: Optional[int]) -> np.ndarray:
    """Turns an array of any supported layout into float32 (channels, samples)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples)
    if samples.dtype == np.bool_ or not (np.issubdtype(samples.dtype, np.floating)
                                         or np.issubdtype(samples.dtype, np.integer)):
        raise AudioError(f"<array>: samples must be float or integer, got {samples.dtype}")
    if samples.ndim == 1:
        samples = samples[None, :]  # (1, N)
    elif samples.ndim == 2:
        if channels_axis is None:
            # A clip has more samples than channels: the shorter axis holds the channels.
            channels_axis = 0 if samples.shape[0] <= samples.shape[1] else 1
        if channels_axis not in (0, 1, -1):
            raise ValueError(f"channels_axis must be None, 0 or -1, got {channels_axis}")
        if channels_axis != 0:
            samples = samples.T  # (N, C) -> (C, N)
    else:
        raise AudioError(f"<array>: expected shape (samples,) or (channels, samples), "
                         f"got {tuple(samples.shape)}")
    if np.issubdtype(samples.dtype, np.integer):
        samples = _int_to_float(samples)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _read_file(path: str) -> Tuple[np.ndarray, int]:
    """Decodes a file with libsndfile into float32 (channels, samples)."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found; check the path")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        # always_2d gives (N, C) even for mono; float32 scales ints by full scale.
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        reason = " ".join(str(err).split())  # keep it on one line
        raise AudioError(f"{path}: cannot decode audio ({reason}); "
                         "convert it to wav/flac or remove it") from None
    return np.ascontiguousarray(data.T), int(sr)  # (C, N)


def load_audio(source: AudioSource, sample_rate: Optional[int] = None,
               channels_axis: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Decodes a file or accepts an array, returning float32 (channels, samples) and its rate.

    Args:
        source: a path to any file libsndfile reads, or a numpy/torch array of shape
            ``(samples,)``, ``(channels, samples)`` (torchaudio's layout) or
            ``(samples, channels)`` (soundfile's and gradio's layout); see ``channels_axis``.
            Integer arrays are scaled by their full scale (int16 / 32768, int32 / 2**31,
            uint8 around 128); float arrays are taken as they are.
        sample_rate: the sample rate of an array source (required for arrays). For a path it
            must be None (the file header gives the rate).
        channels_axis: for 2-D arrays, the axis that holds channels: 0 for ``(C, N)``, -1 (or
            1) for ``(N, C)``; None (default) takes the shorter axis as channels (a square
            array counts as ``(C, N)``), which is right for any clip longer than its channel
            count.

    Returns:
        ``(wav, sr)`` with ``wav`` float32 of shape (channels, samples), samples >= 1.

    Raises:
        AudioError: the file is missing or undecodable, the clip has no samples, or it
            contains NaN/inf. The message is one line naming the file and the reason.
        ValueError: an array without ``sample_rate``, or a path with one.
    """
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is only for array sources; a file's rate comes "
                             "from its header")
        name = os.fspath(source)
        wav, sr = _read_file(name)
    else:
        if sample_rate is None:
            raise ValueError("load_audio(array) needs sample_rate")
        name = "<array>"
        wav, sr = _array_to_channels_first(source, channels_axis), int(sample_rate)
    if sr <= 0:
        raise AudioError(f"{name}: invalid sample rate {sr}")
    if wav.shape[0] == 0 or wav.shape[1] == 0:
        raise AudioError(f"{name}: contains no audio samples; remove it from the dataset")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: contains NaN or infinite samples; re-export the file")
    return wav, sr


def to_mono(wav: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Downmixes by averaging channels (design §2), for every branch and every caller.

    Args:
        wav: float array of shape (channels, samples), or (samples,) which is returned as is.

    Returns:
        float32 array of shape (samples,).
    """
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        return wav
    if wav.ndim != 2:
        raise ValueError(f"to_mono expects (channels, samples), got shape {wav.shape}")
    if wav.shape[0] == 1:
        return wav[0].copy()
    return wav.mean(axis=0, dtype=np.float32)  # (N,)


@functools.lru_cache(maxsize=32)
def _torchaudio_resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    # The sinc kernel is computed once per rate pair; default settings as in convert_audio.
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample_for_encodec(mono: Union[np.ndarray, torch.Tensor], sr: int,
                         rate: int = ENCODEC_SAMPLE_RATE) -> torch.Tensor:
    """Resamples mono audio to 24 kHz with torchaudio's default ``Resample`` (EnCodec branch).

    Args:
        mono: float array of shape (samples,).
        sr: its sample rate.
        rate: the codec's rate (``Codec.sample_rate``; 24 kHz for EnCodec).

    Returns:
        float32 tensor of shape (ceil(samples * 24000 / sr),). Values beyond +-1 are kept.
    """
    wav = torch.as_tensor(np.asarray(mono, dtype=np.float32) if not isinstance(mono, torch.Tensor)
                          else mono.detach().cpu().float())
    if wav.dim() != 1:
        raise ValueError(f"resample_for_encodec expects a 1-D signal, got shape {tuple(wav.shape)}")
    if int(sr) == int(rate):
        return wav.clone()
    with torch.inference_mode():
        out = _torchaudio_resampler(int(sr), int(rate))(wav[None])[0]  # (N24,)
    return out.clone()  # a normal tensor (not an inference tensor) that callers may modify


def resample_for_clap(mono: Union[np.ndarray, torch.Tensor], sr: int) -> np.ndarray:
    """Resamples mono audio to 48 kHz with soxr HQ, as ``librosa.load(sr=48000)`` did.

    Args:
        mono: float array of shape (samples,).
        sr: its sample rate.

    Returns:
        float32 array of about samples * 48000 / sr samples: exactly librosa's ``fix=True``
        length, ``ceil(samples * (48000 / sr))`` in floating point.
    """
    if isinstance(mono, torch.Tensor):
        mono = mono.detach().cpu().numpy()
    wav = np.ascontiguousarray(mono, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"resample_for_clap expects a 1-D signal, got shape {wav.shape}")
    if int(sr) == CLAP_SAMPLE_RATE:
        return wav.copy()
    out = soxr.resample(wav, int(sr), CLAP_SAMPLE_RATE, quality="soxr_hq")
    # librosa's own length formula, float rounding included: 22050 Hz x 1 s gives 48001
    # samples there (22050 * (48000 / 22050) = 48000.00000000001), so we do the same.
    n_out = int(np.ceil(wav.shape[0] * (float(CLAP_SAMPLE_RATE) / sr)))
    # librosa.util.fix_length: trim or zero-pad to exactly n_out samples.
    if out.shape[0] > n_out:
        out = out[:n_out]
    elif out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return np.asarray(out, dtype=np.float32)


def clap_quantize(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """laion_clap's int16 round trip applied to CLAP input (design §2).

    Clips to [-1, 1], multiplies by 32767, casts to int16 (truncation toward zero, not
    rounding) and divides by 32767 again, as ``get_audio_embedding_from_data`` does on its
    numpy path; the released checkpoints' CLAP features were made this way.

    Args:
        x: float array of any shape.

    Returns:
        float32 array of the same shape.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x16 = (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
    return (x16 / 32767.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Finding audio files: the one discovery rule of preprocessing, inference and evaluation
# --------------------------------------------------------------------------------------------


def is_audio_name(name: str, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> bool:
    """Whether a file name has one of ``extensions`` (lower-case, with the dot; case-insensitive)."""
    return os.path.splitext(name)[1].lower() in extensions


def find_audio_files(folder: Union[str, os.PathLike], extensions: Sequence[str] = AUDIO_EXTENSIONS) -> List[str]:
    """Audio files under ``folder``, recursively, as sorted POSIX paths relative to it.

    Symbolic links to folders are followed (datasets are often assembled from links), each
    real folder once, so a link loop cannot recurse forever. Hidden files and folders
    (``.name``) are skipped.

    Args:
        folder: the folder to search.
        extensions: lower-case extensions with the dot.

    Returns:
        Relative paths such as ``train/abc.wav``.
    """
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if not name.startswith(".") and is_audio_name(name, extensions):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return sorted(found)


def expand_audio_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Turn files, folders and globs into a list of files, in the order given.

    Args:
        patterns: command-line inputs.

    Returns:
        ``(files, problems)``: the files to caption (explicit files are kept whatever their
        extension; folders and globs contribute files with an audio extension) and one-line
        messages for inputs that matched nothing.
    """
    import glob

    files: List[str] = []
    problems: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, rel) for rel in find_audio_files(pattern)]
            if not found:
                problems.append(f"{pattern}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        elif os.path.isfile(pattern):
            found = [pattern]
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p) and is_audio_name(p))
            if not found:
                problems.append(f"{pattern}: the pattern matches no audio file")
        else:
            problems.append(f"{pattern}: no such file or folder")
            found = []
        files.extend(found)
    return list(dict.fromkeys(files)), problems


def audio_for_feature_path(audio_root: Union[str, os.PathLike], file_path: str) -> Optional[str]:
    """The audio file under ``audio_root`` that a split CSV's ``file_path`` (``split/name.npy``) names.

    Tries ``audio_root/split/name.<ext>`` for every front-end extension, then the same name
    directly under ``audio_root`` (for folders that hold one split flat).

    Returns:
        The path, or ``None`` when no such audio file exists.
    """
    audio_root = os.fspath(audio_root)
    stem = file_path[: -len(".npy")] if file_path.endswith(".npy") else file_path
    if is_audio_name(stem) and os.path.isfile(os.path.join(audio_root, stem)):
        return os.path.join(audio_root, stem)  # "name.wav.npy" style
    for base in (os.path.join(audio_root, stem), os.path.join(audio_root, os.path.basename(stem))):
        for ext in AUDIO_EXTENSIONS:
            for candidate in (base + ext, base + ext.upper()):
                if os.path.isfile(candidate):
                    return candidate
    return None
