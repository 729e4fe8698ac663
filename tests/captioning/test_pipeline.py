"""The EnClap captioning pipeline on a tiny checkpoint with random-weight encoders (CPU).

Covers batch invariance (a clip alone == the same clip inside a batch of 8 of other lengths),
input order, different clips getting different captions, CLAP re-ranking, the long-audio
policies (truncation encodes only the start, with the whole clip's codes), the encoder batches'
padded-seconds cap, progress stages, and the one-line errors and warnings a user can cause.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from data.extraction.audio import AudioError
from modeling.generation import GenerationOptions
from captioning.pipeline import EnClap
from captioning.rerank import RerankOptions
from common.errors import UserError
from tests.helpers import assert_codes_agree

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


@pytest.mark.numerics
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
    # A pipeline that ignored its input (or mixed inputs up) would give repeated captions.
    assert len(set(batched)) == len(inputs), "different clips must get different captions"


def encoder_states(pipeline, sources) -> torch.Tensor:
    """The BART encoder's last hidden states (B, L, D) for audio sources of one length."""
    items = [{"codes": codes, "clap_embedding": clap} for codes, clap in pipeline.features.extract(sources)]
    with torch.no_grad():
        return pipeline.model.get_encoder()(**pipeline._model_inputs(items)).last_hidden_state


@pytest.mark.numerics
def test_stereo_file_captions_like_its_mean_downmix(pipeline, tmp_path):
    wav = make_clip(9, 0.5, SR, channels=2)  # (2, N)
    path = tmp_path / "stereo.wav"
    sf.write(path, wav.T, SR, subtype="FLOAT")
    assert pipeline.caption(str(path)) == pipeline.caption((wav.mean(axis=0), SR)) == pipeline.caption((wav, SR))
    # ...and the model reads something else than its left channel alone or another clip. Not
    # asserted on captions: the tiny random model may caption two inputs alike, depending on
    # the CPU's kernels (design §12).
    stereo, left, other = encoder_states(pipeline, [str(path), (wav[0], SR), (make_clip(19, 0.5), SR)])
    assert (stereo - left).abs().max() > 1e-3 and (stereo - other).abs().max() > 1e-3


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
    # The record says which span was captioned.
    assert result.start == 0.0 and result.end == pytest.approx(pipeline.max_frames / 75.0)
    assert result.duration == pytest.approx(2.0)
    assert pipeline.caption((make_clip(20, 2.0), SR)) != [result.caption], "another long clip, another caption"


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
    assert len({seg.caption for seg in result.segments}) == 3, "different windows must get different captions"
    assert (result.start, result.end) == (0.0, pytest.approx(2.0))
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



@pytest.mark.numerics
def test_truncation_encodes_only_the_start_and_gets_the_whole_clips_codes(tiny_ckpt, pipeline):
    """At the released models' 1021 frames: a 20 s clip at 44.1 kHz, encoded whole vs its prefix."""
    from captioning.pieces import encodec_prefix
    from data.extraction.encoders import prepare_branches

    wav = make_clip(21, 20.0, 44100)
    whole = pipeline.encodec.encode([prepare_branches(wav, 44100)[0]])[0]  # (1500, 16)
    prefix = encodec_prefix(wav, 44100, pipeline.encodec, 1021)
    assert len(prefix) == (1021 + 1) * 320, "only the start (plus one frame) is encoded"
    codes = pipeline.encodec.encode([prefix])[0]
    # Another length may round otherwise (design §12): the latents agree to rounding, up to the
    # last kept frame, and so do the codes but for a rare one.
    latents = pipeline.encodec.latents([prefix, prepare_branches(wav, 44100)[0]])
    np.testing.assert_allclose(latents[0][:1021], latents[1][:1021], rtol=0, atol=1e-5)
    assert_codes_agree(codes[:1021], whole[:1021])
    assert not np.array_equal(whole[:1021], whole[400:1421]), "codes should vary along the clip"


def test_long_clip_encodes_a_prefix_and_clap_hears_the_whole_clip(pipeline, monkeypatch):
    seen = {}
    encode, embed = pipeline.encodec.encode, pipeline.clap.encode
    monkeypatch.setattr(pipeline.encodec, "encode", lambda wavs: seen.setdefault("codec", [len(w) for w in wavs]) and encode(wavs))
    monkeypatch.setattr(pipeline.clap, "encode", lambda wavs: seen.setdefault("clap", [len(w) for w in wavs]) and embed(wavs))
    (result,) = pipeline.run([(make_clip(22, 6.0), SR)])
    assert result.truncated and result.end < result.duration == pytest.approx(6.0)
    assert seen["codec"] == [(pipeline.max_frames + 1) * 320]  # 62 frames of 24 kHz audio, not 6 s
    assert seen["clap"] == [6 * 48000]


def test_encoder_batches_are_capped_in_padded_seconds_and_sorted_by_length(tiny_ckpt, pipeline, monkeypatch):
    capped = EnClap(tiny_ckpt, device="cpu", encodec=pipeline.encodec, clap=pipeline.clap, batch_size=8,
                    max_batch_seconds=1.0)
    batches = []
    extract = capped.features.extract_prepared
    monkeypatch.setattr(capped.features, "extract_prepared",
                        lambda prepared: batches.append([len(w) / 24000 for w, _ in prepared]) or extract(prepared))
    seconds = [0.2, 0.7, 0.3, 0.6, 0.1, 0.4]
    results = capped.run([(make_clip(30 + i, s), SR) for i, s in enumerate(seconds)])
    assert all(r.error is None for r in results)
    assert all(len(b) * max(b) <= 1.0 + 1e-6 for b in batches), batches  # padded audio under the cap
    flat = [s for b in batches for s in b]
    assert flat == sorted(flat, reverse=True) and len(batches) > 1
    # The cap changes how clips are grouped, not their captions.
    assert [r.caption for r in results] == [r.caption for r in pipeline.run([(make_clip(30 + i, s), SR)
                                                                             for i, s in enumerate(seconds)])]


def test_too_short_and_empty_inputs_say_so(pipeline, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    empty_result, *short = pipeline.run([str(empty), (make_clip(40, 0.02), SR), (make_clip(41, 0.5), SR)])
    assert "empty file" in empty_result.error and str(empty) in empty_result.error
    assert short[0].caption and "too short to describe" in short[0].warning and "0.1 s" in short[0].warning
    assert short[1].warning is None


def test_progress_reports_decode_encode_generate(pipeline):
    steps = []
    pipeline.run([(make_clip(42, 0.5), SR), (make_clip(43, 0.3), SR)], on_step=lambda *a: steps.append(a))
    stages = [stage for stage, _, _ in steps]
    assert stages.index("decode") < stages.index("encode") < stages.index("generate")
    assert ("generate", 2, 2) in steps and ("decode", 2, 2) in steps


def test_pick_best_weighs_clap_similarity_against_mean_log_probability():
    from captioning.rerank import pick_best

    clap_sim = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3, 0.3])
    logprob = torch.tensor([-0.1, -3.0, -0.5, -0.2, -1.0, -2.0])
    # Scores by hand, group 0 (rows 0-3) and group 1 (rows 4-5):
    #   clap 1, lm 0.5, four per clip: 0.05, -0.6, 0.25, 0.1 -> row 2
    #   clap 1, lm 0.5, two per clip: (0.05, -0.6) -> 0; (0.25, 0.1) -> 2; (-0.2, -0.7) -> 4
    assert pick_best(clap_sim, logprob, 2, RerankOptions(clap_weight=1.0, lm_weight=0.5)) == [0, 2, 4]
    assert pick_best(clap_sim[:4], logprob[:4], 4, RerankOptions(clap_weight=1.0, lm_weight=0.5)) == [2]
    assert pick_best(clap_sim[:4], logprob[:4], 4, RerankOptions(clap_weight=1.0, lm_weight=0.0)) == [1]
    assert pick_best(clap_sim[:4], logprob[:4], 4, RerankOptions(clap_weight=0.0, lm_weight=1.0)) == [0]


def test_rerank_by_language_model_alone_picks_the_best_mean_log_probability(pipeline):
    """Mean token log-probabilities recomputed here one candidate at a time, by teacher forcing."""
    items = made_up_items([25, 45, 33], seed=4)
    options = GenerationOptions(num_beams=4)
    inputs = pipeline._model_inputs(items)
    sequences, texts, n = pipeline._sequences(inputs, options, 4, 0)
    chosen = pipeline.caption_features(
        items, options=options, rerank=RerankOptions(enabled=True, num_candidates=4, clap_weight=0.0, lm_weight=1.0))
    pad = pipeline.tokenizer.pad_token_id
    for b, caption in enumerate(chosen):
        means = []
        for row in sequences[b * n:(b + 1) * n]:
            ids = row[row != pad]  # <start> tokens ... </s>
            one = {k: v[b:b + 1] for k, v in inputs.items()}
            with torch.no_grad():
                logits = pipeline.model(**one, decoder_input_ids=ids[None, :-1]).logits[0]
            logp = torch.log_softmax(logits.float(), -1)[torch.arange(len(ids) - 1), ids[1:]]
            means.append(float(logp.mean()))
        assert caption == texts[b * n + int(np.argmax(means))]


def test_rerank_changes_the_top_beam_for_some_clip(pipeline):
    items = made_up_items([20, 30, 40, 50, 60, 10], seed=5)
    options = GenerationOptions(num_beams=4)
    top = pipeline.caption_features(items, options=options)
    chosen = pipeline.caption_features(
        items, options=options, rerank=RerankOptions(enabled=True, num_candidates=4, clap_weight=1.0, lm_weight=0.0))
    assert top == [c[0] for c in pipeline.candidates(items, options, num_candidates=4)]
    assert any(a != b for a, b in zip(top, chosen)), "a re-ranker that never changes the pick is a no-op"


def test_decoding_overlaps_the_model_with_the_same_captions_and_errors(tiny_ckpt, pipeline, tmp_path, monkeypatch):
    """The next chunk is decoded in worker threads while this chunk's captions are generated."""
    import threading

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    sources = [(make_clip(60 + i, 0.3), SR) for i in range(16)] + [str(bad), (make_clip(76, 0.4), SR)]
    expected = [pipeline.run([source])[0] for source in sources]  # one at a time: nothing to overlap

    overlapped = EnClap(tiny_ckpt, device="cpu", random_encoders=True, batch_size=1, decode_workers=2)
    second_chunk_read = threading.Event()
    threads = set()
    decode, generate = overlapped._pieces, overlapped.caption_features

    def watched_decode(index, source, res):
        threads.add(threading.current_thread().name)
        pieces = decode(index, source, res)
        if index >= 16:  # batch_size 1 makes chunks of 16: this input is in the second one
            second_chunk_read.set()
        return pieces

    def watched_generate(items, **kwargs):
        if len(items) == 16:  # the first chunk's captions wait until the second chunk was read
            assert second_chunk_read.wait(timeout=30), "the next chunk was not decoded during generation"
        return generate(items, **kwargs)

    monkeypatch.setattr(overlapped, "_pieces", watched_decode)
    monkeypatch.setattr(overlapped, "caption_features", watched_generate)
    results = overlapped.run(sources)
    assert threading.current_thread().name not in threads and threads
    assert [r.caption for r in results] == [r.caption for r in expected]
    assert [r.error for r in results] == [r.error for r in expected]
    assert "broken.wav" in results[16].error and results[16].caption is None
