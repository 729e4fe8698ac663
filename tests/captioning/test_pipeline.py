"""The EnClap captioning pipeline on a tiny checkpoint with random-weight encoders (CPU).

Covers batch invariance (a clip alone == the same clip inside a batch of 8 of other lengths),
input order, CLAP re-ranking (returns one of the candidates, deterministic, picks the best
scored), the long-audio policies, and the one-line errors a user can cause.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from data.audio import AudioError
from modeling.generation import GenerationOptions
from captioning.pipeline import EnClap
from captioning.rerank import RerankOptions
from common.errors import UserError

SR = 16000


def make_clip(seed: int, seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    """A distinct clip per seed: two tones plus noise, float32 (samples,) or (channels, samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.2 * np.sin(2 * np.pi * rng.uniform(50, 500) * t)
    wav = (tone + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    if channels > 1:
        wav = np.stack([wav * (1 - 0.3 * c) for c in range(channels)])
    return wav


def made_up_items(lengths, seed=0):
    """Feature items with varied codes (random EnCodec weights can give constant codes)."""
    rng = np.random.default_rng(seed)
    items = []
    for t in lengths:
        clap = rng.standard_normal(512).astype(np.float32)
        items.append({"codes": rng.integers(0, 1024, size=(t, 16)), "clap_embedding": clap / np.linalg.norm(clap)})
    return items


@pytest.fixture(scope="module")
def pipeline(tiny_ckpt):
    return EnClap(tiny_ckpt, device="cpu", random_encoders=True, batch_size=8)


def test_feature_captions_alone_equal_captions_in_a_batch_of_8(pipeline):
    items = made_up_items([61, 5, 33, 17, 48, 9, 26, 40])
    batched = pipeline.caption_features(items, batch_size=8)
    alone = [pipeline.caption_features([item], batch_size=1)[0] for item in items]
    assert batched == alone  # same captions, in input order
    assert len(set(alone)) > 1, "the tiny model should caption different inputs differently"
    assert pipeline.caption_features(items, batch_size=3) == alone


def test_audio_captions_alone_equal_captions_in_a_batch_of_8(pipeline, tmp_path):
    # Other lengths, rates, channel counts and input kinds in the same batch.
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, make_clip(1, 0.6, 44100, channels=2).T, 44100, subtype="PCM_16")
    flac = tmp_path / "clip.flac"
    sf.write(flac, make_clip(2, 0.25, 22050), 22050, subtype="PCM_24")
    int16 = (make_clip(3, 0.5) * 32767).astype(np.int16)
    inputs = [
        str(stereo),
        (make_clip(4, 0.8), SR),
        str(flac),
        (int16, SR),
        (torch.from_numpy(make_clip(5, 0.1, 8000)), 8000),
        (make_clip(6, 0.4, 48000, channels=2), 48000),
        (make_clip(7, 0.7), SR),
        (make_clip(8, 0.05), SR),
    ]
    batched = pipeline.caption(inputs, batch_size=8)
    alone = [pipeline.caption(x, batch_size=1)[0] for x in inputs]
    assert batched == alone
    assert all(isinstance(c, str) and c for c in batched)


def test_stereo_file_captions_like_its_mean_downmix(pipeline, tmp_path):
    wav = make_clip(9, 0.5, SR, channels=2)  # (2, N)
    path = tmp_path / "stereo.wav"
    sf.write(path, wav.T, SR, subtype="FLOAT")
    assert pipeline.caption(str(path)) == pipeline.caption((wav.mean(axis=0), SR)) == pipeline.caption((wav, SR))


def test_rerank_returns_one_of_the_beam_candidates_deterministically(pipeline):
    items = made_up_items([30, 12, 50], seed=1)
    options = GenerationOptions()
    candidates = pipeline.candidates(items, options, num_candidates=4)
    rerank = RerankOptions(enabled=True, num_candidates=4)
    chosen = pipeline.caption_features(items, options=options, rerank=rerank)
    for caption, cands in zip(chosen, candidates):
        assert len(cands) == 4
        assert caption in cands
    assert pipeline.caption_features(items, options=options, rerank=rerank) == chosen


def test_rerank_with_sampling_is_deterministic_given_the_seed(pipeline):
    items = made_up_items([40, 20], seed=2)
    options = GenerationOptions(num_beams=1, do_sample=True, top_p=0.9, temperature=1.5, num_return_sequences=5)
    rerank = RerankOptions(enabled=True, seed=7)
    first = pipeline.caption_features(items, options=options, rerank=rerank)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    assert pipeline.caption_features(items, options=options, rerank=rerank) == first
    candidates = pipeline.candidates(items, options, num_candidates=5, seed=7)
    assert all(c in cands for c, cands in zip(first, candidates))
    other_seeds = {tuple(map(tuple, pipeline.candidates(items, options, num_candidates=5, seed=s))) for s in range(4)}
    assert len(other_seeds) > 1, "different seeds should sample different candidates"


def test_rerank_by_clap_alone_picks_the_most_similar_candidate(pipeline):
    items = made_up_items([25, 45], seed=3)
    options = GenerationOptions(num_beams=5)
    candidates = pipeline.candidates(items, options, num_candidates=5)
    chosen = pipeline.caption_features(
        items, options=options, rerank=RerankOptions(enabled=True, num_candidates=5, clap_weight=1.0, lm_weight=0.0)
    )
    for item, cands, caption in zip(items, candidates, chosen):
        text = torch.as_tensor(np.asarray(pipeline.clap.embed_text(cands)), dtype=torch.float32)  # (5, 512)
        audio = torch.as_tensor(item["clap_embedding"]).float()[None]  # (1, 512)
        sims = torch.nn.functional.cosine_similarity(text, audio, dim=-1)
        assert caption == cands[int(sims.argmax())]


def test_long_audio_truncate_warns_naming_the_file_and_keeps_the_start(pipeline, tmp_path, caplog):
    wav = make_clip(10, 2.0)
    path = tmp_path / "long_clip.wav"
    sf.write(path, wav, SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="captioning.pipeline"):
        (result,) = pipeline.run([str(path)])
    assert result.truncated and result.error is None
    assert any("long_clip.wav" in rec.getMessage() for rec in caplog.records)
    # The same as preprocessing + evaluation: features of the whole clip, first max_frames codes.
    (codes, clap), = pipeline.features.extract([(wav, SR)])
    assert len(codes) > pipeline.max_frames
    expected = pipeline.caption_features([{"codes": codes[: pipeline.max_frames], "clap_embedding": clap}])
    assert result.caption == expected[0]


def test_long_audio_window_captions_consecutive_windows(pipeline, tiny_ckpt, tmp_path):
    windowed = EnClap(tiny_ckpt, device="cpu", long_audio="window", encodec=pipeline.encodec, clap=pipeline.clap)
    wav = make_clip(11, 2.0)
    path = tmp_path / "long.wav"
    sf.write(path, wav, SR, subtype="FLOAT")
    (result,) = windowed.run([str(path), (make_clip(12, 0.5), SR)])[:1]
    window = pipeline.max_frames / 75.0  # 61 frames of the tiny model at 75 frames/s
    starts = [seg.start for seg in result.segments]
    ends = [seg.end for seg in result.segments]
    assert starts == pytest.approx([0.0, window, 2 * window], abs=1e-3)
    assert ends == pytest.approx([window, 2 * window, 2.0], abs=1e-3)
    for seg in result.segments:  # each window is captioned as that piece of audio alone
        piece = wav[round(seg.start * SR) : round(seg.end * SR)]
        assert seg.caption == pipeline.caption((piece, SR))[0]
    assert not result.truncated
    assert result.caption.count("\n") == 2


def test_unreadable_and_empty_inputs_are_reported_per_input(pipeline, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, make_clip(13, 0.3), SR)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    results = pipeline.run([str(good), str(bad), (np.zeros(0, np.float32), SR)])
    assert results[0].error is None and results[0].caption
    assert "broken.wav" in results[1].error and "\n" not in results[1].error
    assert results[2].error is not None and results[2].caption is None
    with pytest.raises(AudioError, match="broken.wav"):
        pipeline.caption([str(good), str(bad)])


def test_user_errors_are_one_line(tiny_ckpt, tmp_path):
    with pytest.raises(UserError) as missing:
        EnClap(tmp_path / "no_such_ckpt", device="cpu", random_encoders=True)
    assert "no_such_ckpt" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(UserError, match="630k-audioset-fusion-best.pt"):
        EnClap(tiny_ckpt, clap_ckpt=tmp_path / "clap.pt", device="cpu")
    with pytest.raises(UserError, match="long_audio"):
        EnClap(tiny_ckpt, device="cpu", random_encoders=True, long_audio="split")


def test_checkpoint_whose_codebooks_differ_from_the_codec_is_refused(tmp_path, tokenizer):
    from tests.helpers import make_tiny_config

    from common.errors import UserError
    from modeling import EnClapBartForConditionalGeneration

    folder = tmp_path / "eight_codebooks"
    EnClapBartForConditionalGeneration(make_tiny_config(len(tokenizer), num_rvq=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pipeline = EnClap(folder, device="cpu", random_encoders=True)
    with pytest.raises(UserError) as err:
        pipeline.caption([(make_clip(0, 1.0), SR)])
    message = str(err.value)
    assert "num_rvq=8" in message and "16" in message and "\n" not in message


def test_seed_reaches_both_random_encoders(tiny_ckpt):
    clip = [(make_clip(3, 1.5), SR)]

    def features(seed):
        pipeline = EnClap(tiny_ckpt, device="cpu", random_encoders=True, seed=seed)
        ((codes, clap),) = pipeline.features.extract_arrays(clip)
        return codes, clap

    codes_a, clap_a = features(1)
    codes_b, clap_b = features(1)
    codes_c, clap_c = features(2)
    assert np.array_equal(codes_a, codes_b) and np.array_equal(clap_a, clap_b)
    assert not np.array_equal(codes_a, codes_c), "another seed must give another random EnCodec"
    assert not np.allclose(clap_a, clap_c), "another seed must give another random CLAP"

