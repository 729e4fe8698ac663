"""LAION-CLAP embeddings (design §2): HTSAT-tiny with fusion, and text embeddings for re-ranking.

Built from laion_clap's ``clap_module`` files without importing the ``laion_clap`` package (its
``__init__`` fetches three hub tokenizers and fails offline). Input preparation follows
laion_clap's ``get_audio_embedding_from_data`` numpy path (int16 round trip, repeat-pad to
10 s, fusion mel) with the random fusion chunks drawn from a per-clip generator seeded with
``seed``, so the same clip always gives the same embedding, alone or in a batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.extraction.audio import CLAP_SAMPLE_RATE, AudioError, clap_quantize
from data.extraction.contract import ModelLoadError, resolve_batch_size

logger = logging.getLogger(__name__)

CLAP_HUB_REPO = "lukewys/laion_clap"  # where laion_clap itself fetches its checkpoints
CLAP_CHECKPOINT_NAME = "630k-audioset-fusion-best.pt"
CLAP_CHECKPOINT_URL = f"https://huggingface.co/{CLAP_HUB_REPO}/resolve/main/{CLAP_CHECKPOINT_NAME}"

# --------------------------------------------------------------------------------------------
# LAION-CLAP (HTSAT-tiny, fusion)
# --------------------------------------------------------------------------------------------

# HTSAT-tiny's audio_cfg from laion_clap/clap_module/model_configs/HTSAT-tiny.json.
_HTSAT_TINY_AUDIO_CFG = dict(
    model_type="HTSAT", model_name="tiny", sample_rate=48000, audio_length=1024,
    clip_samples=480000, mel_bins=64, window_size=1024, hop_size=480, fmin=50, fmax=14000,
    class_num=527,
)
_HTSAT_EMBED_DIM = 768  # HTSAT-tiny's pooled embedding, projected to the 512-d joint space
_CLAP_DIM = 512
_CLAP_MAX_LEN = 480000  # 10 s at 48 kHz
_TEXT_MAX_LENGTH = 77  # laion_clap's tokenizer(padding="max_length", max_length=77)
# RoBERTa settings the released text branch (roberta-base) uses that its weight shapes don't show.
_ROBERTA_FIXED = dict(hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2)
_PRIVATE_CLAP_PACKAGE = "_enclap_laion_clap_module"


def _clap_htsat_module():
    """Imports laion_clap's ``clap_module/htsat.py`` without running any package __init__.

    ``import laion_clap`` downloads three tokenizers at import time (fails offline) and
    putting its folder on sys.path would shadow top-level names such as ``evaluate``. So the
    ``clap_module`` folder is registered as an empty private package and only ``htsat`` (with
    its relative imports ``utils`` and ``feature_fusion``) is loaded from it.
    """
    if _PRIVATE_CLAP_PACKAGE + ".htsat" in sys.modules:
        return sys.modules[_PRIVATE_CLAP_PACKAGE + ".htsat"]
    spec = importlib.util.find_spec("laion_clap")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the laion-clap package is not installed; run "
                             "`pip install -r requirements.txt`")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "clap_module")
    package = types.ModuleType(_PRIVATE_CLAP_PACKAGE)
    package.__path__ = [folder]
    sys.modules[_PRIVATE_CLAP_PACKAGE] = package
    return importlib.import_module(_PRIVATE_CLAP_PACKAGE + ".htsat")


class _ClapAudio(nn.Module):
    """laion_clap's audio tower with the attribute names of its ``CLAP`` model.

    The names ``audio_branch`` / ``audio_projection`` make the state-dict keys those of the
    released checkpoints (minus their ``module.`` prefix).
    """

    def __init__(self):
        super().__init__()
        htsat = _clap_htsat_module()
        cfg = types.SimpleNamespace(**_HTSAT_TINY_AUDIO_CFG)
        with warnings.catch_warnings():  # torch.meshgrid's indexing notice, not actionable
            warnings.simplefilter("ignore", UserWarning)
            self.audio_branch = htsat.create_htsat_model(cfg, enable_fusion=True,
                                                         fusion_type="aff_2d")
        self.audio_projection = nn.Sequential(
            nn.Linear(_HTSAT_EMBED_DIM, _CLAP_DIM), nn.ReLU(), nn.Linear(_CLAP_DIM, _CLAP_DIM))

    def forward(self, mel_fusion: torch.Tensor, longer: torch.Tensor) -> torch.Tensor:
        """Embeds fusion mels (B, 4, 1001, 64) with flags (B,) bool -> (B, 512) L2-normalised."""
        out = self.audio_branch({"mel_fusion": mel_fusion, "longer": longer},
                                mixup_lambda=None, device=mel_fusion.device)
        return F.normalize(self.audio_projection(out["embedding"]), dim=-1)


class _ClapText(nn.Module):
    """laion_clap's roberta text tower: pooled RoBERTa output -> 512-d projection."""

    def __init__(self, roberta_kwargs: dict):
        super().__init__()
        from transformers import RobertaConfig, RobertaModel
        self.text_branch = RobertaModel(RobertaConfig(**roberta_kwargs))
        width = roberta_kwargs["hidden_size"]
        self.text_projection = nn.Sequential(
            nn.Linear(width, _CLAP_DIM), nn.ReLU(), nn.Linear(_CLAP_DIM, _CLAP_DIM))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_branch(input_ids=input_ids,
                                  attention_mask=attention_mask)["pooler_output"]
        return F.normalize(self.text_projection(pooled), dim=-1)


class _ByteTokenizer:
    """Offline stand-in for roberta's tokenizer used with random-weight CLAP (tests only).

    ids: 0 <s>, 1 <pad>, 2 </s>, 3 + byte value; padded to 77 like laion_clap's tokenizer.
    """

    vocab_size = 3 + 256

    def __call__(self, texts: List[str]) -> dict:
        ids = torch.ones(len(texts), _TEXT_MAX_LENGTH, dtype=torch.long)  # pad = 1
        mask = torch.zeros(len(texts), _TEXT_MAX_LENGTH, dtype=torch.long)
        for row, text in enumerate(texts):
            body = [3 + b for b in text.encode("utf-8")][:_TEXT_MAX_LENGTH - 2]
            seq = [0] + body + [2]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _load_clap_state_dict(path: str) -> dict:
    """Reads a laion_clap checkpoint ({"state_dict": ...} or a bare dict), strips ``module.``."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: CLAP checkpoint not found; download {CLAP_CHECKPOINT_URL} "
                             f"and pass its path")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # older laion checkpoints pickle extra objects next to the weights
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ModelLoadError(f"{path}: cannot read the CLAP checkpoint ({reason}); download "
                             f"{CLAP_CHECKPOINT_URL} again") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: not a laion_clap checkpoint (no state_dict); expected "
                             f"{CLAP_CHECKPOINT_NAME}")
    # Multi-GPU training saved every key as "module.<name>".
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _roberta_config_from_state(state: dict, path: str) -> dict:
    """RoBERTa sizes read off the checkpoint's text-branch weights (roberta-base: 768 x 12).

    Building from shapes needs no download of roberta-base's config.json.
    """
    prefix = "text_branch."
    try:
        vocab_size, hidden = state[prefix + "embeddings.word_embeddings.weight"].shape
        max_positions = state[prefix + "embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state[prefix + "embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as err:
        raise ModelLoadError(f"{path}: no RoBERTa text branch ({err.args[0]} missing); "
                             f"text embeddings need the full {CLAP_CHECKPOINT_NAME}") from None
    layers = {k.split(".")[3] for k in state if k.startswith(prefix + "encoder.layer.")}
    return dict(vocab_size=int(vocab_size), hidden_size=int(hidden),
                num_hidden_layers=len(layers),
                num_attention_heads=max(1, int(hidden) // 64),  # RoBERTa's 64-d heads
                intermediate_size=int(intermediate), max_position_embeddings=int(max_positions),
                type_vocab_size=int(type_vocab), **_ROBERTA_FIXED)


def _load_tower(module: nn.Module, state: dict, prefixes: Tuple[str, ...], path: str,
                ignore: Tuple[str, ...] = ()) -> None:
    """Loads the keys under ``prefixes`` strictly: a missing key is an error, never random."""
    own = {k: v for k, v in state.items() if k.startswith(prefixes) and not k.endswith(ignore)}
    missing, unexpected = module.load_state_dict(own, strict=False)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise ModelLoadError(
            f"{path}: {len(missing)} missing / {len(unexpected)} unexpected CLAP keys (e.g. "
            f"{example}); expected a LAION-CLAP HTSAT-tiny fusion checkpoint such as "
            f"{CLAP_CHECKPOINT_NAME}")


def clap_fusion_input(wav48: np.ndarray, mel: nn.Module, rng: np.random.RandomState,
                      device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, bool]:
    """laion_clap's fusion input for one quantised 48 kHz clip (its get_audio_features).

    Clips of at most 10 s are repeat-padded (whole repeats, then zeros) to 480000 samples and
    their log-mel is used four times; longer clips stack a resized global log-mel with three
    random 10 s mel chunks, one from each third, chosen with ``rng`` in laion's call order.

    Args:
        wav48: float32 (N,) at 48 kHz, already int16 round-tripped.
        mel: the log-mel module (``ClapEncoder.mel``).
        rng: numpy RandomState used like laion_clap uses the global numpy generator.
        device: where the mel is computed.

    Returns:
        ``(mel_fusion (4, 1001, 64) float32, longer)``.
    """
    import torchvision

    audio = torch.from_numpy(np.ascontiguousarray(wav48, dtype=np.float32)).to(device)  # (N,)
    if audio.shape[0] > _CLAP_MAX_LEN:
        logmel = mel(audio).T  # (frames, 64)
        chunk_frames = _CLAP_MAX_LEN // _HTSAT_TINY_AUDIO_CFG["hop_size"] + 1  # 1001
        total_frames = logmel.shape[0]
        if chunk_frames == total_frames:
            # laion's corner case: barely longer than 10 s -> whole mel, not "longer".
            return torch.stack([logmel] * 4), False
        ranges = np.array_split(list(range(0, total_frames - chunk_frames + 1)), 3)
        if len(ranges[1]) == 0:
            ranges[1] = [0]
        if len(ranges[2]) == 0:
            ranges[2] = [0]
        starts = [rng.choice(ranges[0]), rng.choice(ranges[1]), rng.choice(ranges[2])]
        chunks = [logmel[s:s + chunk_frames, :] for s in starts]
        shrink = torchvision.transforms.Resize(
            size=[chunk_frames, _HTSAT_TINY_AUDIO_CFG["mel_bins"]])(logmel[None])[0]
        return torch.stack([shrink] + chunks), True  # (4, 1001, 64)
    if audio.shape[0] < _CLAP_MAX_LEN:
        n_repeat = int(_CLAP_MAX_LEN / audio.shape[0])
        audio = audio.repeat(n_repeat)
        audio = F.pad(audio, (0, _CLAP_MAX_LEN - audio.shape[0]), mode="constant", value=0)
    logmel = mel(audio).T  # (1001, 64)
    return torch.stack([logmel] * 4), False  # (4, 1001, 64)


class _LogMel(nn.Module):
    """laion_clap's get_mel: torchaudio power mel (HTK, no norm) then dB with top_db=None."""

    def __init__(self):
        super().__init__()
        import torchaudio
        cfg = _HTSAT_TINY_AUDIO_CFG
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg["sample_rate"], n_fft=cfg["window_size"],
            win_length=cfg["window_size"], hop_length=cfg["hop_size"], center=True,
            pad_mode="reflect", power=2.0, norm=None, n_mels=cfg["mel_bins"],
            f_min=cfg["fmin"], f_max=cfg["fmax"])
        self.to_db = torchaudio.transforms.AmplitudeToDB(top_db=None)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.to_db(self.mel(audio))  # (64, frames)


class ClapEncoder:
    """LAION-CLAP HTSAT-tiny fusion audio embeddings (and text embeddings for re-ranking); a
    :class:`data.extraction.contract.Embedder`.

    Args:
        ckpt_path: a laion_clap checkpoint (``630k-audioset-fusion-best.pt``); None builds
            seeded random weights (tests, benchmarks) and says so in a log warning.
        device: torch device to run on.
        seed: seeds the fusion chunk choice of clips over 10 s (one fresh generator per
            clip, so results do not depend on batch composition or call order) and, without
            a checkpoint, the random weights.
        text_tokenizer: name or folder of roberta's tokenizer for ``embed_text`` with a
            checkpoint (loaded on first use; offline it must be in the local HF cache).
        max_batch_size: ``encode`` runs at most this many clips per forward pass. None
            (default) means 1 on CPU (no slower than batching there, and embeddings become
            bit-identical however clips are grouped; batched rows agree to ~1e-7 only) and
            the whole list on a GPU.
    """

    def __init__(self, ckpt_path: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                 seed: int = 0, text_tokenizer: str = "roberta-base",
                 max_batch_size: Optional[int] = None):
        self.device = torch.device(device)
        self.seed = int(seed)
        self.ckpt_path = None if ckpt_path is None else os.fspath(ckpt_path)
        self.text_tokenizer_name = text_tokenizer
        self.max_batch_size = resolve_batch_size(max_batch_size, self.device)
        self.sample_rate = CLAP_SAMPLE_RATE
        self.dim = _CLAP_DIM  # the embedding size
        if self.ckpt_path is None:
            logger.warning("CLAP: no checkpoint given, using RANDOM weights (seed %d); "
                           "embeddings are meaningless (tests/benchmarks only)", self.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.audio = _ClapAudio()
        else:
            self.audio = _ClapAudio()
            state = _load_clap_state_dict(self.ckpt_path)
            _load_tower(self.audio, state, ("audio_branch.", "audio_projection."), self.ckpt_path)
        self.audio.to(self.device).eval()
        self.mel = _LogMel().to(self.device)
        self._text = None
        self._tokenize = None

    @torch.inference_mode()
    def encode(self, wavs: Sequence[Union[np.ndarray, torch.Tensor]]) -> np.ndarray:
        """Embeds 48 kHz mono clips, one batch.

        Each clip gets laion_clap's int16 round trip (``data.extraction.audio.clap_quantize``), so pass
        the resampled float audio, not an already quantised copy (quantising twice is
        harmless anyway: the round trip is idempotent).

        Args:
            wavs: 1-D float arrays at 48 kHz (see ``data.extraction.audio.resample_for_clap``).

        Returns:
            np.float32 (B, 512), each row L2-normalised.
        """
        if len(wavs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = self.max_batch_size or len(wavs)
        return np.concatenate([self._encode_batch(wavs[start:start + step])
                               for start in range(0, len(wavs), step)])

    def _encode_batch(self, wavs: Sequence[Union[np.ndarray, torch.Tensor]]) -> np.ndarray:
        mels, longer = [], []
        for wav in wavs:
            quantized = clap_quantize(wav).reshape(-1)  # (N,) float32, any input device
            if quantized.shape[0] == 0:
                raise AudioError("<array>: an empty clip cannot be embedded")
            rng = np.random.RandomState(self.seed)
            mel_fusion, is_longer = clap_fusion_input(quantized, self.mel, rng, self.device)
            mels.append(mel_fusion)
            longer.append(is_longer)
        mel_fusion = torch.stack(mels)  # (B, 4, 1001, 64)
        flags = torch.tensor(longer, dtype=torch.bool, device=self.device)  # (B,)
        return self.audio(mel_fusion, flags).float().cpu().numpy().astype(np.float32)

    def _build_text(self) -> None:
        if self.ckpt_path is None:
            small = dict(vocab_size=_ByteTokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=_TEXT_MAX_LENGTH + 2, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1)
                text = _ClapText(small)
            tokenize = _ByteTokenizer()
        else:
            from transformers import AutoTokenizer
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.text_tokenizer_name)
            except Exception as err:  # offline the hub raises OSError or TypeError
                raise ModelLoadError(
                    f"CLAP text branch: cannot load the tokenizer '{self.text_tokenizer_name}' "
                    f"({type(err).__name__}); fetch roberta-base once online or pass a local "
                    f"tokenizer folder as text_tokenizer") from None

            def tokenize(texts):
                return dict(tokenizer(texts, padding="max_length", truncation=True,
                                      max_length=_TEXT_MAX_LENGTH, return_tensors="pt"))
            state = _load_clap_state_dict(self.ckpt_path)
            text = _ClapText(_roberta_config_from_state(state, self.ckpt_path))
            # position_ids / token_type_ids are buffers newer transformers no longer store
            # (laion deletes position_ids before loading too).
            _load_tower(text, state, ("text_branch.", "text_projection."), self.ckpt_path,
                        ignore=("position_ids", "token_type_ids"))
        self._text = text.to(self.device).eval()
        self._tokenize = tokenize

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds captions into the joint space (for CLAP re-ranking of N-best captions).

        Args:
            texts: strings.

        Returns:
            np.float32 (B, 512), each row L2-normalised; cosine similarity with ``encode``'s
            rows is a plain dot product.
        """
        if self._text is None:
            self._build_text()  # outside inference mode: its weights stay ordinary tensors
        tokens = self._tokenize(list(texts))
        with torch.inference_mode():
            out = self._text(tokens["input_ids"].to(self.device),
                             tokens["attention_mask"].to(self.device))  # (B, 512)
        return out.float().cpu().numpy().astype(np.float32)
