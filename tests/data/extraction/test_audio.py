"""Tests for data/extraction/audio.py: decoding every format, downmix, per-branch resamplers, int16 round trip.

Audio files are written by the tests with soundfile; the references for the resamplers are the
libraries the original EnCLAP called (encodec's convert_audio / torchaudio Resample for the
EnCodec branch, librosa's soxr_hq resampling for the CLAP branch), called directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from data.extraction.audio import (
    AUDIO_EXTENSIONS,
    CLAP_SAMPLE_RATE,
    ENCODEC_SAMPLE_RATE,
    AudioError,
    clap_quantize,
    load_audio,
    resample_for_clap,
    resample_for_encodec,
    to_mono,
)

RATES = [8000, 11025, 16000, 22050, 44100, 48000, 96000]
# (extension, soundfile format, subtype, max abs decoding error, rates the encoder accepts)
FORMATS = [
    ("wav", "WAV", "PCM_U8", 1.0 / 127, RATES),
    ("wav", "WAV", "PCM_16", 1.0 / 32767, RATES),
    ("wav", "WAV", "MS_ADPCM", 0.03, RATES),
    ("flac", "FLAC", "PCM_24", 1e-6, RATES),
    ("ogg", "OGG", "VORBIS", 0.1, RATES),
    ("opus", "OGG", "OPUS", 0.1, [8000, 16000, 48000]),  # Opus only has these rates
    ("mp3", "MP3", "MPEG_LAYER_III", 0.1, [r for r in RATES if r <= 48000]),
    ("aiff", "AIFF", "PCM_16", 1.0 / 32767, RATES),
]
MATRIX = [(ext, fmt, sub, tol, sr, ch)
          for ext, fmt, sub, tol, rates in FORMATS for sr in rates for ch in (1, 2)]


def _tones(sr: int, channels: int, seconds: float = 0.25) -> np.ndarray:
    """(N, C) float32: a 220 Hz tone on channel 0 and a quieter 330 Hz tone on channel 1."""
    t = np.arange(int(seconds * sr)) / sr
    cols = [0.5 * np.sin(2 * np.pi * 220 * t), 0.25 * np.sin(2 * np.pi * 330 * t)][:channels]
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.mark.parametrize("ext,fmt,subtype,tol,sr,channels", MATRIX,
                         ids=[f"{m[2]}-{m[4]}-{m[5]}ch" for m in MATRIX])
def test_format_rate_channel_matrix(tmp_path, ext, fmt, subtype, tol, sr, channels):
    written = _tones(sr, channels)  # (N, C)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, written, sr, format=fmt, subtype=subtype)
    assert path.suffix in AUDIO_EXTENSIONS

    wav, got_sr = load_audio(path)
    assert got_sr == sr
    assert wav.dtype == np.float32 and wav.ndim == 2 and wav.shape[0] == channels
    n = written.shape[0]
    # ADPCM pads to whole blocks; decoders never lose more than a few samples.
    assert n - 64 <= wav.shape[1] <= n + 2048
    m = min(n, wav.shape[1])
    assert np.abs(wav[:, :m] - written[:m].T).max() <= tol

    mono = to_mono(wav)
    np.testing.assert_allclose(mono, wav.mean(axis=0), atol=1e-7)
    wav24 = resample_for_encodec(mono, sr)
    wav48 = resample_for_clap(mono, sr)
    assert isinstance(wav24, torch.Tensor) and wav24.dtype == torch.float32
    assert wav24.shape[0] == math.ceil(mono.shape[0] * ENCODEC_SAMPLE_RATE / sr)
    assert wav48.dtype == np.float32
    assert abs(wav48.shape[0] - mono.shape[0] * CLAP_SAMPLE_RATE / sr) <= 1
    assert torch.isfinite(wav24).all() and np.isfinite(wav48).all()


@pytest.mark.parametrize("num_samples,sr", [(6, 8000), (6, 96000), (int(0.02 * 44100), 44100)])
def test_very_short_clips_load_and_resample(tmp_path, num_samples, sr):
    rng = np.random.default_rng(0)
    path = tmp_path / "short.wav"
    sf.write(path, (0.3 * rng.standard_normal((num_samples, 2))).astype(np.float32), sr,
             subtype="PCM_16")
    wav, got_sr = load_audio(path)
    assert wav.shape == (2, num_samples) and got_sr == sr
    wav24 = resample_for_encodec(to_mono(wav), sr)
    assert wav24.shape[0] == math.ceil(num_samples * 24000 / sr) >= 1
    assert abs(resample_for_clap(to_mono(wav), sr).shape[0] - num_samples * 48000 / sr) <= 1


def test_digital_silence_stays_silent(tmp_path):
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros((4410, 2), dtype=np.float32), 44100, subtype="PCM_16")
    wav, sr = load_audio(path)
    mono = to_mono(wav)
    assert not mono.any()
    assert not resample_for_encodec(mono, sr).abs().max().item()
    assert not resample_for_clap(mono, sr).any()
    assert not clap_quantize(resample_for_clap(mono, sr)).any()


def test_lossy_overshoot_kept_for_encodec_clipped_for_clap(tmp_path):
    # A full-scale square wave encoded lossily decodes with peaks above 1 (Gibbs ringing).
    sr = 44100
    t = np.arange(sr // 2) / sr
    square = np.sign(np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    path = tmp_path / "loud.ogg"
    sf.write(path, square, sr, format="OGG", subtype="VORBIS")
    wav, sr = load_audio(path)
    assert np.abs(wav).max() > 1.0, "the premise: the decoder overshoots"

    mono = to_mono(wav)
    wav24 = resample_for_encodec(mono, sr)
    assert wav24.abs().max().item() > 1.0  # EnCodec gets the values as they are (design §2)
    quantized = clap_quantize(resample_for_clap(mono, sr))
    assert np.abs(quantized).max() == pytest.approx(1.0)  # CLAP's round trip clips


def test_int16_round_trip_truncates_toward_zero():
    step = np.float32(1.0 / 32767)
    x = np.array([1.9 * step, -1.9 * step, 0.6 * step, -0.6 * step, 2.2 * step, 1.5, -3.0, 0.0],
                 dtype=np.float32)
    expected = np.array([1, -1, 0, 0, 2, 32767, -32767, 0], dtype=np.float64) / 32767
    out = clap_quantize(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    # Rounding would have given 2 and -2 for the first two values.
    assert out[0] * 32767 == pytest.approx(1.0)


def test_downmix_is_the_channel_mean():
    left = np.array([0.5, -0.25, 1.0, 0.0], dtype=np.float32)
    right = np.array([0.0, 0.25, -1.0, 0.75], dtype=np.float32)
    mono = to_mono(np.stack([left, right]))
    np.testing.assert_array_equal(mono, np.array([0.25, 0.0, 0.0, 0.375], dtype=np.float32))
    # Not channel 0 (the original inference's bug).
    assert not np.array_equal(mono, left)
    np.testing.assert_array_equal(to_mono(left), left)


def test_array_sources_and_layouts():
    ints = np.array([[16384, -32768, 0], [8192, 32767, -16384]], dtype=np.int16)  # (C, N)
    wav, sr = load_audio(ints, sample_rate=16000)
    np.testing.assert_allclose(wav, [[0.5, -1.0, 0.0], [0.25, 32767 / 32768, -0.5]], atol=1e-7)
    assert sr == 16000
    # (N, C) layout, as soundfile and gradio return it: explicit, or found as the longer axis.
    wav_nc, _ = load_audio(ints.T, sample_rate=16000, channels_axis=-1)
    np.testing.assert_array_equal(wav_nc, wav)
    long_nc = np.zeros((1000, 2), dtype=np.float32)
    long_nc[:, 1] = 0.5
    auto, _ = load_audio(long_nc, sample_rate=16000)
    assert auto.shape == (2, 1000) and auto[1].min() == 0.5
    assert load_audio(long_nc.T, sample_rate=16000)[0].shape == (2, 1000)
    assert load_audio(long_nc.T[:, :2], sample_rate=16000, channels_axis=0)[0].shape == (2, 2)
    # 8-bit PCM is unsigned around 128; torch tensors and 1-D arrays work too.
    wav_u8, _ = load_audio(np.array([128, 255, 0], dtype=np.uint8), sample_rate=8000)
    np.testing.assert_allclose(wav_u8, [[0.0, 127 / 128, -1.0]])
    wav_t, _ = load_audio(torch.tensor([0.1, -0.2]), sample_rate=8000)
    np.testing.assert_allclose(wav_t, [[0.1, -0.2]])
    with pytest.raises(ValueError):
        load_audio(np.zeros(10, dtype=np.float32))  # no sample rate


def test_encodec_branch_matches_the_original_convert_audio():
    from encodec.utils import convert_audio

    rng = np.random.default_rng(1)
    stereo = (0.4 * rng.standard_normal((2, 22050))).astype(np.float32)
    reference = convert_audio(torch.from_numpy(stereo), 44100, 24000, 1)[0]  # the original's path
    ours = resample_for_encodec(to_mono(stereo), 44100)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    direct = torchaudio.transforms.Resample(44100, 24000)(torch.from_numpy(to_mono(stereo)))
    torch.testing.assert_close(ours, direct, atol=0, rtol=0)


def test_clap_branch_matches_librosa_soxr_hq(tmp_path):
    import librosa

    rng = np.random.default_rng(2)
    stereo = (0.4 * rng.standard_normal((22050, 2))).astype(np.float32)
    path = tmp_path / "clip.flac"
    sf.write(path, stereo, 22050, subtype="PCM_24")
    reference, _ = librosa.load(path, sr=48000)  # what the original CLAP preprocessing did
    wav, sr = load_audio(path)
    ours = resample_for_clap(to_mono(wav), sr)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    # The two branches really use different resamplers (why each is pinned).
    sinc48 = torchaudio.transforms.Resample(22050, 48000)(torch.from_numpy(to_mono(wav))).numpy()
    n = min(sinc48.shape[0], ours.shape[0])
    assert np.abs(sinc48[:n] - ours[:n]).max() > 1e-4


def test_missing_corrupt_and_non_audio_files(tmp_path):
    missing = tmp_path / "nope.wav"
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n")
    corrupt = tmp_path / "corrupt.wav"
    sf.write(corrupt, np.zeros(1000, dtype=np.float32), 16000, subtype="PCM_16")
    corrupt.write_bytes(corrupt.read_bytes()[:20])  # header cut in the middle
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 16000, subtype="PCM_16")
    for path in (missing, text, corrupt, empty):
        with pytest.raises(AudioError) as info:
            load_audio(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan], dtype=np.float32), sample_rate=8000)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(np.zeros((2, 0), dtype=np.float32), sample_rate=8000)
