"""Tests for the feature encoders (data/extraction/encodec_encoder.py, data/extraction/clap_encoder.py, data/extraction/encoders.py): batch-exact EnCodec codes, CLAP equal to laion_clap's own code path.

Everything runs on random weights built here. The references are the original libraries'
code paths called directly: ``EncodecModel.encode`` on one clip, and laion_clap's
``CLAP_Module.get_audio_embedding_from_data`` on a checkpoint saved in laion's format.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from data.extraction.audio import AudioError
from data.extraction.clap_encoder import ClapEncoder
from data.extraction.encodec_encoder import EncodecEncoder
from data.extraction.contract import ModelLoadError
from data.extraction.encoders import FeatureExtractor
from tests.helpers import assert_codes_agree

HTSAT_TINY_AUDIO_CFG = dict(  # laion_clap/clap_module/model_configs/HTSAT-tiny.json
    audio_length=1024, clip_samples=480000, mel_bins=64, sample_rate=48000, window_size=1024,
    hop_size=480, fmin=50, fmax=14000, class_num=527, model_type="HTSAT", model_name="tiny")


@pytest.fixture(scope="module")
def encodec():
    """Random-weight EnCodec whose codes vary (fresh codebooks are all zeros -> code 0)."""
    encoder = EncodecEncoder(pretrained=False, max_batch_size=64)  # really batch on CPU too
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in encoder.model.quantizer.vq.layers:
            codebook = layer._codebook.embed
            codebook.copy_(0.05 * torch.randn(codebook.shape, generator=gen))
    return encoder


@pytest.fixture(scope="module")
def clap():
    return ClapEncoder(seed=0, max_batch_size=64)  # really batch on CPU too


def _roberta_tokenizer_folder(folder):
    """A byte-level BPE tokenizer saved as a RoBERTa tokenizer folder (roberta-base is offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>",
                                                                  "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a dog barks", "rain falls on a roof", "a man speaks"] * 5, trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                     sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                     pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    """laion_clap's own CLAP model (random weights, small RoBERTa), saved as a release is.

    Returns:
        (laion CLAP_Module, checkpoint path, tokenizer folder, tokenizer).
    """
    import transformers

    folder = tmp_path_factory.mktemp("clap")
    tokenizer = _roberta_tokenizer_folder(folder / "tokenizer")
    # A RoBERTa with roberta-base's width (laion hard-codes 768 in its text projection) but
    # one layer and a small vocabulary, standing in for the roberta-base download.
    small_roberta = transformers.RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
        intermediate_size=64, max_position_embeddings=80, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)

    # `import laion_clap` loads three hub tokenizers at import time; they are not needed
    # here, so they are stubbed while importing. Its __init__ also appends its folder to
    # sys.path, which is undone afterwards.
    torch.manual_seed(1)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("BertTokenizer", "RobertaTokenizer", "BartTokenizer"):
            patch.setattr(getattr(transformers, name), "from_pretrained",
                          classmethod(lambda cls, *args, **kwargs: None))
        patch.setattr(transformers.RobertaModel, "from_pretrained",
                      classmethod(lambda cls, *args, **kwargs: cls(small_roberta)))
        patch.setattr(sys, "path", list(sys.path))
        import laion_clap
        from clap_module.model import CLAP

        text_cfg = dict(context_length=77, vocab_size=len(tokenizer), width=768, heads=12,
                        layers=1, model_type="roberta")
        model_cfg = dict(embed_dim=768, audio_cfg=HTSAT_TINY_AUDIO_CFG, text_cfg=text_cfg,
                         enable_fusion=True, fusion_type="aff_2d")
        model = CLAP(**model_cfg).eval()
    state = {"module." + k: v for k, v in model.state_dict().items()}
    # Release checkpoints carry roberta's position_ids, which laion's loader deletes.
    state["module.text_branch.embeddings.position_ids"] = torch.arange(80)[None]
    path = folder / "630k-audioset-fusion-best.pt"
    torch.save({"epoch": 45, "state_dict": state}, path)

    module = laion_clap.CLAP_Module.__new__(laion_clap.CLAP_Module)
    torch.nn.Module.__init__(module)
    module.model, module.model_cfg, module.enable_fusion = model, model_cfg, True
    module.load_ckpt(str(path), verbose=False)  # laion's own loader, strict
    return module, path, folder / "tokenizer", tokenizer


# ------------------------------------------------------------------------------- EnCodec


def test_encodec_interface(encodec):
    assert (encodec.sample_rate, encodec.frame_rate, encodec.num_codebooks) == (24000, 75, 16)
    # On CPU the default is one clip per forward pass: bit-identical however clips are grouped.
    assert EncodecEncoder(pretrained=False).max_batch_size == 1


@pytest.mark.numerics
def test_encodec_batch_equals_each_clip_alone(encodec):
    gen = torch.Generator().manual_seed(3)
    lengths = [5, 320, 321, 24007, 13000]  # sub-frame, exact frame, one sample over, ...
    wavs = [0.3 * torch.randn(n, generator=gen) for n in lengths]
    batch = encodec.encode(wavs)
    alone = []
    for n, wav, codes in zip(lengths, wavs, batch):
        with torch.inference_mode():
            own = encodec.model.encode(wav[None, None])[0][0]  # encodec's own path, (1, 16, T)
        alone.append(own[0].T.numpy())  # (T, 16)
        assert codes.dtype == np.int64 and codes.shape == (math.ceil(n / 320), 16)
    # Equal but for a rare code that the batch's other rounding moves across a boundary (design §12).
    assert_codes_agree(batch, alone)
    assert len(np.unique(np.concatenate(batch))) > 10  # the codes are not trivially constant
    for k in range(16):  # nor any one codebook (which would agree whatever the rounding)
        assert len(np.unique(np.concatenate(batch)[:, k])) > 1, k
    encodec.max_batch_size = 2  # sub-batches of 2, 2, 1
    try:
        assert_codes_agree(encodec.encode(wavs), batch)
    finally:
        encodec.max_batch_size = 64


@pytest.mark.numerics
def test_encodec_latents_exact_and_zero_padding_would_not_be(encodec):
    gen = torch.Generator().manual_seed(4)
    wavs = [0.3 * torch.randn(n, generator=gen) for n in (24007, 900, 30011)]
    latents = encodec.latents(wavs)
    for wav, latent in zip(wavs, latents):
        with torch.inference_mode():
            alone = encodec.model.encoder(wav[None, None])[0].T.numpy()  # (T, 128)
        np.testing.assert_allclose(latent, alone, atol=1e-6, rtol=0)
    # Why each clip is padded like encodec pads it alone: zero padding (what stacking clips
    # of different lengths naively does) changes the last frame of the shorter clip.
    padded = torch.nn.functional.pad(wavs[0], (0, 30011 - 24007))
    with torch.inference_mode():
        naive = encodec.model.encoder(padded[None, None])[0].T.numpy()[:latents[0].shape[0]]
    np.testing.assert_allclose(naive[:-1], latents[0][:-1], atol=1e-6, rtol=0)  # causal
    assert np.abs(naive[-1] - latents[0][-1]).max() > 1e-4


def test_encodec_missing_weights_is_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        EncodecEncoder(pretrained=True, repository=str(tmp_path))
    message = str(info.value)
    assert "encodec_24khz-d7cc33bc.th" in message and "\n" not in message


# ---------------------------------------------------------------------------------- CLAP


def test_clap_matches_laion_get_audio_embedding_from_data(laion):
    module, path, _, _ = laion
    rng = np.random.default_rng(5)
    wavs = [
        (0.4 * rng.standard_normal(48000 * 2)).astype(np.float32),  # repeat-padded to 10 s
        (1.5 * rng.standard_normal(int(48000 * 10.6))).astype(np.float32),  # > 10 s, clips
        (0.3 * rng.standard_normal(36)).astype(np.float32),  # 6 samples at 8 kHz, resampled
    ]
    ours = ClapEncoder(str(path), seed=7, max_batch_size=8).encode(wavs)  # one batch
    for wav, row in zip(wavs, ours):
        np.random.seed(7)  # laion draws the fusion chunks from numpy's global generator
        reference = module.get_audio_embedding_from_data(x=[wav])[0]
        np.testing.assert_allclose(row, reference, atol=2e-6, rtol=0)
    # Not a coincidence of random weights: a differently seeded random model disagrees.
    assert np.abs(ClapEncoder(seed=0).encode(wavs[:1])[0] - ours[0]).max() > 1e-3


@pytest.mark.numerics
def test_clap_fusion_is_seeded_and_batch_invariant(clap):
    rng = np.random.default_rng(6)
    long_clip = (0.3 * rng.standard_normal(int(48000 * 10.6))).astype(np.float32)
    short_clip = (0.3 * rng.standard_normal(48000)).astype(np.float32)
    batch = clap.encode([short_clip, long_clip])
    assert batch.shape == (2, 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    again = clap.encode([long_clip])
    np.testing.assert_array_equal(again[0], clap.encode([long_clip])[0])  # same file twice
    np.testing.assert_allclose(again[0], batch[1], atol=1e-6, rtol=0)  # alone == in a batch
    np.testing.assert_allclose(clap.encode([short_clip])[0], batch[0], atol=1e-6, rtol=0)
    clap.max_batch_size = 1  # the CPU default: each clip alone, so exactly equal
    try:
        one_by_one = clap.encode([short_clip, long_clip])
        np.testing.assert_array_equal(one_by_one[1], again[0])
        np.testing.assert_allclose(one_by_one, batch, atol=1e-6, rtol=0)
    finally:
        clap.max_batch_size = 64
    # The seed picks the chunks of a long clip (and nothing for a short one).
    clap.seed = 1
    try:
        other = clap.encode([short_clip, long_clip])
    finally:
        clap.seed = 0
    np.testing.assert_allclose(other[0], batch[0], atol=1e-6, rtol=0)
    assert np.abs(other[1] - batch[1]).max() > 1e-4


def test_clap_checkpoint_errors(tmp_path, laion):
    _, path, _, _ = laion
    with pytest.raises(ModelLoadError, match="not found"):
        ClapEncoder(str(tmp_path / "missing.pt"))
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    truncated = {k: v for k, v in state.items() if "fusion_model" not in k}  # a non-fusion ckpt
    torch.save({"state_dict": truncated}, tmp_path / "nofusion.pt")
    with pytest.raises(ModelLoadError) as info:
        ClapEncoder(str(tmp_path / "nofusion.pt"))
    assert "missing" in str(info.value) and "\n" not in str(info.value)
    # With a checkpoint the text branch needs roberta's tokenizer: a one-line error offline.
    encoder = ClapEncoder(str(path))
    encoder.text_tokenizer_name = str(tmp_path / "no_tokenizer_here")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        encoder.embed_text(["a dog barks"])


def test_clap_text_embeddings_match_laion(laion):
    module, path, tokenizer_folder, tokenizer = laion
    texts = ["a dog barks", "rain falls on a roof while a man speaks"]
    tokens = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=77,
                            return_tensors="pt"))  # laion's CLAP_Module.tokenizer settings
    with torch.no_grad():
        reference = module.model.get_text_embedding(tokens).numpy()
    ours = ClapEncoder(str(path), text_tokenizer=str(tokenizer_folder)).embed_text(texts)
    np.testing.assert_allclose(ours, reference, atol=2e-6, rtol=0)


def test_clap_text_embeddings_random_mode(clap):
    texts = ["a dog barks", "rain falls on a roof", "a dog barks"]
    emb = clap.embed_text(texts)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert np.abs(emb[0] - emb[1]).max() > 1e-4


# ------------------------------------------------------------------------ FeatureExtractor


def test_feature_extractor_on_awkward_files(tmp_path, encodec, clap):
    rng = np.random.default_rng(7)
    files = {
        "six.wav": ((0.3 * rng.standard_normal(6)).astype(np.float32), 8000, "PCM_16"),
        "short.flac": ((0.3 * rng.standard_normal((882, 2))).astype(np.float32), 44100,
                       "PCM_24"),
        "silence.wav": (np.zeros(16000, dtype=np.float32), 16000, "PCM_16"),
        "float.wav": ((1.3 * rng.standard_normal((9600, 2))).astype(np.float32), 96000, "FLOAT"),
    }
    paths = []
    for name, (data, sr, subtype) in files.items():
        sf.write(tmp_path / name, data, sr, subtype=subtype)
        paths.append(tmp_path / name)
    extractor = FeatureExtractor(encodec, clap)
    features = extractor.extract(paths)
    assert len(features) == len(paths)
    for (data, sr, _), (codes, embedding) in zip(files.values(), features):
        n24 = math.ceil(data.shape[0] * 24000 / sr)
        assert codes.shape == (math.ceil(n24 / 320), 16) and codes.dtype == np.int64
        assert embedding.shape == (512,) and embedding.dtype == np.float32
        assert np.isfinite(embedding).all()
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)

    # An array source gives exactly what the same samples give from a file; (N, C) arrays
    # are passed channels-first, as load_audio documents.
    data, sr, _ = files["float.wav"]
    from_array = extractor.extract([(data.T, sr)])[0]
    np.testing.assert_array_equal(from_array[0], features[3][0])
    np.testing.assert_allclose(from_array[1], features[3][1], atol=1e-6, rtol=0)

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("hello")
    with pytest.raises(AudioError, match="notes.wav"):
        extractor.extract([paths[0], not_audio])


def test_random_weight_encodec_codes_depend_on_the_audio():
    """Fresh encodec codebooks are zeros; ours are calibrated so random-weight codes carry information."""
    t = np.arange(24000, dtype=np.float32) / 24000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.3 * np.random.default_rng(1).standard_normal(24000)).astype(np.float32)
    first = EncodecEncoder(pretrained=False, seed=3)
    codes_tone, codes_noise = first.encode([torch.from_numpy(tone), torch.from_numpy(noise)])
    assert len(np.unique(codes_tone[:, 0])) > 1 or len(np.unique(codes_noise[:, 0])) > 1
    assert set(codes_tone[:, 0]) != set(codes_noise[:, 0])
    again = EncodecEncoder(pretrained=False, seed=3).encode([torch.from_numpy(tone)])[0]
    assert np.array_equal(again, codes_tone)


def test_encoders_on_a_gpu_turn_tf32_off():
    from data.extraction.encoders import exact_float32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        exact_float32("cpu")  # the CPU never uses TF32: the flags are left alone
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        exact_float32(torch.device("cuda", 0))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
