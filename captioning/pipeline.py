"""The EnCLAP captioning pipeline: audio in, captions out.

``EnClap`` hides everything between an audio file and its caption: decoding (the shared front
end in :mod:`data.extraction.audio`), the EnCodec and CLAP encoders (:class:`data.extraction.encoders.FeatureExtractor`,
the same object preprocessing uses), batching (:class:`data.training.collator.EnClapCollator`, the same
collator training uses), the model's beam search with the design §7 defaults
(:class:`modeling.generation.GenerationOptions`) and decoding of the token ids. ``evaluate.py``,
``inference.py`` and ``gradio_app.py`` are thin wrappers around it.

Beyond the original it offers optional CLAP re-ranking of N candidate captions and an explicit
long-audio policy (truncate with a warning, or caption consecutive windows).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from common.device import cpu_workers_per_process, resolve_device
from common.errors import UserError
from data.extraction.audio import AudioError
from data.training.collator import EnClapCollator
from data.training.dataset import CaptionDataset
from data.extraction.contract import Codec, Embedder
from data.extraction.batching import DEFAULT_MAX_BATCH_SECONDS, plan_batches
from data.extraction.encoders import (FeatureExtractor, build_clap, build_encodec, check_codebooks,
                           resolve_clap_checkpoint)
from data.training.masking import crop_codes
from captioning.pieces import MIN_SECONDS, Piece, decode_input, split_input
from captioning.rerank import RerankOptions, pick_best, score_candidates
from modeling.generation import GenerationOptions, decode_captions, generate_ids, token_agreement
from modeling.pretrained import load_pretrained

logger = logging.getLogger(__name__)

LONG_AUDIO_MODES = ("truncate", "window")

#: ``on_step(stage, done, total)``: stage "decode", "encode" or "generate" (see :meth:`EnClap.run`).
StepCallback = Callable[[str, int, int], None]


class PipelineError(UserError):
    """A problem the user can fix (missing checkpoint, bad option); the message is one line."""


@dataclass
class Segment:
    """The caption of one window of a long clip (``--long_audio window``)."""

    start: float  # seconds
    end: float  # seconds
    caption: str


@dataclass
class CaptionResult:
    """What the pipeline made of one input.

    Args:
        source: the file path, or ``"<array i>"`` for an in-memory waveform.
        caption: the caption (window mode: one ``"start-end s: caption"`` line per window);
            ``None`` when the input could not be read.
        segments: window mode only: the per-window captions with their times.
        duration: length of the audio in seconds.
        start, end: the span the caption describes, in seconds (``end`` < ``duration`` when
            truncated; window mode: the whole clip, each segment has its own span).
        truncated: the clip was longer than the model's maximum and only its start was used.
        error: one-line description of why the input failed, else ``None``.
        warning: one-line caveat about a caption that was made (e.g. a clip too short to
            describe), else ``None``.
    """

    source: str
    caption: str | None = None
    segments: list[Segment] = field(default_factory=list)
    duration: float = 0.0
    truncated: bool = False
    error: str | None = None
    start: float = 0.0
    end: float = 0.0
    warning: str | None = None


#: ``--dtype`` names and their torch types.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch type for ``--dtype name`` on ``device``; float32 with a warning where it is missing.

    bf16 runs on CUDA GPUs that have it (Ampere and later) and on any CPU (fast where the CPU
    has bf16 instructions); fp16 only on CUDA.

    Raises:
        PipelineError: an unknown name.
    """
    if name not in DTYPES:
        raise PipelineError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    missing = ((name == "fp16" and device.type != "cuda")
               or (name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported()))
    if missing:
        logger.warning("%s is not supported on %s; running in float32", name, device)
        return torch.float32
    return DTYPES[name]


def caption_agreement(captions: Sequence[str], reference: Sequence[str], tokenizer) -> tuple[float, float]:
    """How far two runs' captions of the same inputs agree (e.g. bf16 against fp32).

    Returns:
        ``(captions, tokens)``: the fraction of identical captions, and of token positions that
        hold the same token (over the longer caption of each pair); see
        :func:`modeling.generation.token_agreement`.
    """
    return token_agreement([tokenizer(c or "").input_ids for c in captions],
                           [tokenizer(c or "").input_ids for c in reference])


def _describe(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<array {index}>"


class EnClap:
    """Caption audio with an EnCLAP checkpoint.

    Example::

        model = EnClap("ckpt/audiocaps-base", clap_ckpt="630k-audioset-fusion-best.pt")
        model.caption(["dog.wav", "rain.flac"])  # -> ["a dog barks ...", "rain falls ..."]

    Args:
        ckpt: a folder with ``config.json`` and weights (released, or written by train.py) or a
            hub id.
        clap_ckpt: path to LAION-CLAP ``630k-audioset-fusion-best.pt``; ``None`` downloads it
            when online (ignored with ``random_encoders``).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        fp16: the same as ``dtype="fp16"`` (kept for older callers).
        dtype: the BART model's precision: ``"fp32"``, ``"bf16"`` (CUDA where the GPU has it,
            and CPU) or ``"fp16"`` (CUDA only); one the device lacks falls back to float32 with a
            warning (see :func:`model_dtype`). The encoders stay in float32.
        random_encoders: build EnCodec and CLAP with random weights instead of the pretrained
            ones. For tests and the offline demo only: captions are then meaningless.
        batch_size: default number of clips per generate call.
        long_audio: ``"truncate"`` (use the first ``max_frames`` frames, warn naming the file)
            or ``"window"`` (caption consecutive windows of ``max_frames`` frames).
        seed: seed of the CLAP encoder's random chunk choice for clips over 10 s and, when
            random, of its weights.
        encodec: an already-built codec (a :class:`data.extraction.contract.Codec`) to reuse
            (optional); otherwise the one the checkpoint's config names (``codec``, from the
            recipe's ``data.codec``), EnCodec when it names none.
        clap: an already-built embedder (a :class:`data.extraction.contract.Embedder`) to reuse (optional).
        max_batch_seconds: cap on an encoder batch's padded audio (clips x longest, seconds),
            the one preprocessing uses: bounds GPU memory for long or mixed-length inputs.
        decode_workers: threads that decode and resample inputs while the model works
            (default: this process's share of the cores, at most 4).
    """

    def __init__(
        self,
        ckpt: str | os.PathLike,
        clap_ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        fp16: bool = False,
        dtype: str = "fp32",
        random_encoders: bool = False,
        batch_size: int = 8,
        long_audio: str = "truncate",
        seed: int = 0,
        encodec: Codec | None = None,
        clap: Embedder | None = None,
        max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
        decode_workers: int | None = None,
    ):
        if long_audio not in LONG_AUDIO_MODES:
            raise PipelineError(f"unknown long_audio mode {long_audio!r}: use one of {', '.join(LONG_AUDIO_MODES)}")
        if batch_size < 1:
            raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.long_audio = long_audio
        self.max_batch_seconds = float(max_batch_seconds)
        if decode_workers is not None and decode_workers < 1:
            raise PipelineError(f"decode_workers must be >= 1, got {decode_workers}")
        self.decode_workers = decode_workers or cpu_workers_per_process(cap=4)
        # Said after a truncation warning; a caller without --long_audio (evaluate.py) replaces it.
        self.truncate_hint = "use long_audio='window' / --long_audio window to caption all of it"

        loaded = load_pretrained(ckpt)
        self.model = loaded.model.eval().to(self.device)
        self.tokenizer = loaded.tokenizer
        self.dtype = model_dtype("fp16" if fp16 else dtype, self.device)
        self.model.to(self.dtype)
        self.max_frames = int(self.model.config.max_frames)
        self.collator = EnClapCollator(
            tokenizer=None,
            num_rvq=self.model.config.num_rvq,
            encodec_pad_token_id=self.model.config.encodec_pad_token_id,
        )

        # The encoders are built on first use: captioning preprocessed features needs neither
        # (nor their downloads), re-ranking needs only CLAP.
        self._random_encoders = random_encoders
        self._seed = seed
        self._encodec = encodec
        self._clap = clap
        self._features: FeatureExtractor | None = None
        self._warned_random = False
        if clap is None and not random_encoders and clap_ckpt is not None:
            self._clap_ckpt: str | None = resolve_clap_checkpoint(clap_ckpt)  # fail early on a wrong path
        else:
            self._clap_ckpt = None if clap_ckpt is None else str(clap_ckpt)

    @property
    def random_encoders(self) -> bool:
        """Whether the encoders are built with random weights (captions are then meaningless)."""
        return self._random_encoders

    @property
    def encodec(self) -> Codec:
        """The EnCodec encoder (built on first use)."""
        if self._encodec is None:
            self._warn_random()
            # Random weights come from the seed, so that two pipelines (e.g. the one that
            # preprocessed a test split and the one evaluating it) get the same encoder.
            self._encodec = build_encodec(self.device, self._random_encoders, self._seed,
                                          codec=getattr(self.model.config, "codec", None))
            check_codebooks(self._encodec, self.model.config.num_rvq, "the checkpoint")
        return self._encodec

    @property
    def clap(self) -> Embedder:
        """The LAION-CLAP encoder (built on first use)."""
        if self._clap is None:
            self._warn_random()
            self._clap = build_clap(self.device, self._random_encoders, self._seed, self._clap_ckpt)
        return self._clap

    @property
    def features(self) -> FeatureExtractor:
        """The shared audio -> (codes, CLAP embedding) front end."""
        if self._features is None:
            self._features = FeatureExtractor(self.encodec, self.clap)
        return self._features

    def _warn_random(self) -> None:
        if self._random_encoders and not self._warned_random:
            self._warned_random = True
            logger.warning("using RANDOM-WEIGHT EnCodec and CLAP encoders (tests/demo only: captions are meaningless)")

    # ------------------------------------------------------------------ public API

    @property
    def window_seconds(self) -> float:
        """Audio length that fills the model's maximum number of codec frames."""
        return self.max_frames / float(self.encodec.frame_rate)

    def caption(
        self,
        audio_or_paths: Any,
        batch_size: int | None = None,
        options: GenerationOptions | None = None,
        rerank: RerankOptions | None = None,
    ) -> list[str]:
        """Caption audio files or waveforms; one caption per input, in input order.

        Args:
            audio_or_paths: a path, an ``(array, sample_rate)`` pair, or a list of those.
                Arrays are (samples,) or (channels, samples), numpy or torch, float or int, any
                rate (see :func:`data.extraction.audio.load_audio`).
            batch_size: clips per generate call (default: the pipeline's).
            options: generation options (default: design §7 beam search).
            rerank: CLAP re-ranking options (default: off).

        Raises:
            AudioError: an input could not be read (use :meth:`run` to get per-input errors).
        """
        results = self.run(audio_or_paths, batch_size=batch_size, options=options, rerank=rerank)
        for res in results:
            if res.error is not None:
                raise AudioError(res.error)
        return [res.caption for res in results]

    def run(
        self,
        audio_or_paths: Any,
        batch_size: int | None = None,
        options: GenerationOptions | None = None,
        rerank: RerankOptions | None = None,
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> list[CaptionResult]:
        """Caption inputs and report per-input errors instead of raising.

        Inputs are decoded a chunk at a time (so memory stays bounded on long lists), by
        ``decode_workers`` threads and one chunk ahead of the model (the next chunk is read while
        this one is encoded and captioned). EnCodec
        encodes only what the model reads (:mod:`captioning.pieces`), in batches of similar
        length whose padded audio stays under ``max_batch_seconds`` (the cap preprocessing uses,
        :func:`data.extraction.batching.plan_batches`), and the results come back in input order.

        Args:
            audio_or_paths: as for :meth:`caption`.
            batch_size: clips per encoder batch and per generate call.
            options: generation options.
            rerank: CLAP re-ranking options.
            progress: show a tqdm progress bar.
            on_step: called as ``on_step(stage, done, total)`` with stage ``"decode"``,
                ``"encode"`` or ``"generate"`` as the work advances (the demo page's progress).
        """
        sources = self._as_list(audio_or_paths)
        batch_size = batch_size or self.batch_size
        step = on_step or (lambda stage, done, total: None)
        self.features  # build the encoders (and fail on missing weights) before any decoding
        results = [CaptionResult(source=_describe(src, i)) for i, src in enumerate(sources)]
        chunk = max(batch_size * 4, 16)
        chunks = [list(range(first, min(first + chunk, len(sources)))) for first in range(0, len(sources), chunk)]
        bar = _progress(len(sources), progress, "captioning")
        # Decoding and resampling run in worker threads (soundfile, ffmpeg and torch release the
        # GIL), one chunk ahead: the next chunk is read while this one is encoded and captioned.
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="enclap-decode") as pool:
            def submit(idx: list[int]) -> list[Future]:
                return [pool.submit(self._pieces, i, sources[i], results[i]) for i in idx]

            ahead = submit(chunks[0]) if chunks else []
            for number, idx in enumerate(chunks):
                decoding, ahead = ahead, submit(chunks[number + 1]) if number + 1 < len(chunks) else []
                pieces: list[Piece] = []
                for done, future in enumerate(decoding):
                    step("decode", done, len(idx))
                    pieces.extend(future.result())
                step("decode", len(idx), len(idx))
                self._caption_pieces(pieces, results, batch_size, options, rerank, step)
                bar.update(len(idx))
        bar.close()
        return results

    def _caption_pieces(self, pieces: list[Piece], results: list[CaptionResult], batch_size: int,
                        options: GenerationOptions | None, rerank: RerankOptions | None, step: StepCallback) -> None:
        """Encode and caption the decoded pieces of one chunk into their inputs' results."""
        features = self.features
        items: list[dict | None] = [None] * len(pieces)
        plan = plan_batches([p.encoded_seconds for p in pieces], batch_size, self.max_batch_seconds)
        for done, batch in enumerate(plan):
            step("encode", done, len(plan))
            feats = features.extract_prepared([(pieces[j].wav24, pieces[j].wav48) for j in batch])
            for j, (codes, clap) in zip(batch, feats):
                items[j] = {"codes": self._crop(codes), "clap_embedding": clap}
        step("encode", len(plan), len(plan))
        captions = self.caption_features(items, batch_size=batch_size, options=options, rerank=rerank,
                                         on_step=step) if items else []
        for piece, text in zip(pieces, captions):
            res = results[piece.index]
            if self.long_audio == "window":
                res.segments.append(Segment(start=piece.start, end=piece.end, caption=text))
            else:
                res.caption = text
        for i in sorted({piece.index for piece in pieces}):
            if results[i].segments:
                results[i].caption = "\n".join(
                    f"{seg.start:.2f}-{seg.end:.2f} s: {seg.caption}" for seg in results[i].segments
                )

    def _pieces(self, index: int, source: Any, res: CaptionResult) -> list[Piece]:
        """Decode one input and cut it by the long-audio policy; a failure goes into ``res.error``."""
        try:
            mono, sr = decode_input(source)
        except AudioError as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0]
            res.error = message if res.source in message else f"{res.source}: {message}"
            return []
        res.duration = len(mono) / sr
        pieces = split_input(index, mono, sr, self.encodec, self.max_frames, self.long_audio)
        res.start, res.end = 0.0, pieces[-1].end
        if res.duration < MIN_SECONDS:
            res.warning = f"too short to describe ({res.duration:.2f} s < {MIN_SECONDS} s): the caption is unreliable"
            logger.warning("%s: %s", res.source, res.warning)
        if self.long_audio == "truncate" and res.end < res.duration:
            res.truncated = True
            logger.warning(
                "%s is %.1f s long; only its first %.1f s (%d frames) are captioned (%s)",
                res.source, res.duration, self.window_seconds, self.max_frames, self.truncate_hint,
            )
        return pieces

    @torch.inference_mode()
    def caption_features(
        self,
        items: Sequence[dict],
        batch_size: int | None = None,
        options: GenerationOptions | None = None,
        rerank: RerankOptions | None = None,
        progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> list[str]:
        """Caption precomputed features (evaluate.py's preprocessed mode uses this directly).

        Args:
            items: dicts with ``codes`` (T, 16) int64 (at most ``max_frames`` frames) and
                ``clap_embedding`` (512,) float32, e.g. from :class:`data.training.dataset.CaptionDataset`.
            batch_size: clips per generate call.
            options: generation options.
            rerank: CLAP re-ranking options.
            progress: show a tqdm progress bar.
            on_step: called as ``on_step("generate", done, total)`` before each batch and at the end.

        Returns:
            One caption per item, in item order.
        """
        options = options or GenerationOptions()
        batch_size = batch_size or self.batch_size
        # Longest first and similar lengths together: less padding, so less encoder work and
        # the first (largest) batch shows an out-of-memory error early.
        order = sorted(range(len(items)), key=lambda i: -len(items[i]["codes"]))
        captions: list[str | None] = [None] * len(items)
        bar = _progress(len(items), progress, "generating")
        for start in range(0, len(order), batch_size):
            if on_step is not None:
                on_step("generate", start, len(order))
            idx = order[start : start + batch_size]
            batch_items = [
                {"codes": np.asarray(items[i]["codes"]), "clap_embedding": np.asarray(items[i]["clap_embedding"])}
                for i in idx
            ]
            for i, text in zip(idx, self._generate(batch_items, options, rerank)):
                captions[i] = text
            bar.update(len(idx))
        bar.close()
        if on_step is not None:
            on_step("generate", len(order), len(order))
        return captions  # type: ignore[return-value]

    def caption_preprocessed(
        self,
        split_csv: str,
        encodec_root: str,
        clap_root: str,
        num_workers: int = 0,
        **caption_kwargs,
    ) -> list[str]:
        """Caption every clip of a split CSV from its stored features (``evaluate.py --from_preprocessed``).

        Codes are cut to the checkpoint's limit (their first ``max_frames`` frames), as in
        training's validation.

        Args:
            split_csv: the split file (design §5); one caption per clip, in file order.
            encodec_root, clap_root: the feature trees.
            num_workers: feature-loading worker processes.
            **caption_kwargs: ``batch_size``, ``options``, ``rerank``, ``progress`` as for
                :meth:`caption_features`.
        """
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        config = self.model.config
        dataset = CaptionDataset(split_csv, encodec_root, clap_root, train=False, max_frames=self.max_frames,
                                 num_rvq=config.num_rvq, codebook_size=config.encodec_vocab_size,
                                 clap_dim=config.d_clap)
        loader = DataLoader(dataset, batch_size=16, num_workers=num_workers, collate_fn=list)
        items: list[dict] = []
        for batch in tqdm(loader, desc="loading features", unit="batch",
                          disable=not caption_kwargs.get("progress") or len(dataset) <= 16):
            items.extend(batch)
        return self.caption_features(items, **caption_kwargs)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _as_list(audio_or_paths: Any) -> list:
        if isinstance(audio_or_paths, (str, os.PathLike)):
            return [audio_or_paths]
        if isinstance(audio_or_paths, tuple) and len(audio_or_paths) == 2 and np.isscalar(audio_or_paths[1]):
            return [audio_or_paths]  # one (array, sample_rate) pair
        return list(audio_or_paths)

    def _crop(self, codes: np.ndarray) -> np.ndarray:
        # The first max_frames frames, as evaluation of preprocessed features does.
        return crop_codes(codes, self.max_frames) if len(codes) > self.max_frames else codes

    def _model_inputs(self, batch_items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(batch_items)
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "encodec_mask", "attention_mask", "clap_embedding")}
        inputs["clap_embedding"] = inputs["clap_embedding"].to(self.dtype)
        return inputs

    def _sequences(
        self, inputs: dict[str, torch.Tensor], options: GenerationOptions, num_candidates: int, seed: int
    ) -> tuple[torch.Tensor, list[str], int]:
        """Run generate; returns (ids (B*R, S), decoded texts, R = sequences per input)."""
        config = options.to_generation_config(self.model.config)
        if num_candidates > 1:
            config.num_return_sequences = num_candidates
            if config.num_beams > 1 and config.num_beams < num_candidates:
                # The beam N-best (or beam-sample N-best) needs at least N beams; pure sampling
                # (num_beams 1) draws N independent samples instead.
                config.num_beams = num_candidates
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # sampling is reproducible and leaves the caller's RNG alone
            sequences = generate_ids(self.model, inputs, config)  # (B*R, S)
        per_input = sequences.shape[0] // inputs["input_ids"].shape[0]
        texts = decode_captions(self.tokenizer, sequences)
        return sequences, texts, per_input

    def _generate(self, batch_items: list[dict], options: GenerationOptions, rerank: RerankOptions | None) -> list[str]:
        inputs = self._model_inputs(batch_items)
        n = rerank.candidates_for(options) if rerank is not None and rerank.enabled else 1
        seed = rerank.seed if rerank is not None else 0
        sequences, texts, per_input = self._sequences(inputs, options, n, seed)
        if n == 1 or per_input == 1:
            return texts[::per_input]  # the best-scored sequence of each input
        clap_sim, mean_logprob = score_candidates(self.model, self.tokenizer, self.clap, inputs, sequences, texts,
                                                  per_input)
        return [texts[i] for i in pick_best(clap_sim, mean_logprob, per_input, rerank)]

    @torch.inference_mode()
    def candidates(
        self, items: Sequence[dict], options: GenerationOptions | None = None, num_candidates: int = 4, seed: int = 0
    ) -> list[list[str]]:
        """The N candidate captions re-ranking chooses from (beam N-best, or N samples), per item.

        Args:
            items: dicts with ``codes`` (T, 16) and ``clap_embedding`` (512,), as for
                :meth:`caption_features`; captioned as one batch.
            options: generation options (``do_sample`` selects sampling).
            num_candidates: N.
            seed: sampling seed.
        """
        options = options or GenerationOptions()
        inputs = self._model_inputs([{"codes": it["codes"], "clap_embedding": it["clap_embedding"]} for it in items])
        _, texts, per_input = self._sequences(inputs, options, num_candidates, seed)
        return [texts[i : i + per_input] for i in range(0, len(texts), per_input)]


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled or total <= 1, desc=desc, unit="clip")
