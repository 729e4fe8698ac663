"""Command-line helpers shared by ``evaluate.py``, ``inference.py`` and ``gradio_app.py``: the
pipeline's flags, the generation flags (one per :class:`GenerationOptions` field) and the
builders from parsed arguments."""

from __future__ import annotations

import argparse
from dataclasses import fields

from captioning.pipeline import DTYPES, LONG_AUDIO_MODES, EnClap
from captioning.rerank import RerankOptions
from data.extraction.audio import ENCODEC_FRAME_RATE
from data.extraction.clap_encoder import CLAP_CHECKPOINT_NAME, CLAP_HUB_REPO
from common.constants import MAX_FRAMES
from modeling.generation import GenerationOptions


def add_generation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one ``--<option>`` flag per :class:`GenerationOptions` field (defaults = design §7)."""
    group = parser.add_argument_group("generation (defaults are the paper's)")
    defaults = GenerationOptions()
    for field in fields(GenerationOptions):
        default = getattr(defaults, field.name)
        flag = f"--{field.name}"
        if isinstance(default, bool):
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=f"(default: {default})"
            )
        else:
            group.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")
    return parser


def generation_from_args(namespace: argparse.Namespace) -> GenerationOptions:
    """The :class:`GenerationOptions` of flags added by :func:`add_generation_args`."""
    return GenerationOptions(**{f.name: getattr(namespace, f.name) for f in fields(GenerationOptions)})


def add_pipeline_args(parser, long_audio: bool = True) -> None:
    """Add the options every entry point shares: checkpoint, CLAP, device, long audio, re-ranking.

    Args:
        parser: an ``argparse.ArgumentParser``.
        long_audio: offer ``--long_audio`` (evaluation always truncates, as the references
            describe whole clips and scoring needs one caption per clip).
    """
    group = parser.add_argument_group("model")
    group.add_argument("--ckpt", required=True, help="EnCLAP checkpoint: a folder with config.json + weights, or a hub id")
    group.add_argument(
        "--clap_ckpt",
        default=None,
        help=f"LAION-CLAP {CLAP_CHECKPOINT_NAME} (default: download it from {CLAP_HUB_REPO} when online)",
    )
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                       help="precision of the BART model: bf16 on CUDA (Ampere or later) and CPU, fp16 on CUDA; "
                       "a device without it runs fp32 with a warning (default: fp32)")
    group.add_argument("--fp16", dest="dtype", action="store_const", const="fp16", help="the same as --dtype fp16")
    group.add_argument("--batch_size", type=int, default=8, help="clips per generate call (default: 8)")
    group.add_argument(
        "--random_encoders",
        action="store_true",
        help="random-weight EnCodec and CLAP instead of the pretrained ones: tests/offline demo only, "
        "captions are meaningless (default: off)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for CLAP chunk choice and sampling (default: 0)")
    if long_audio:
        window = f"{MAX_FRAMES} frames = {MAX_FRAMES / ENCODEC_FRAME_RATE:.1f} s for the released models"
        group.add_argument(
            "--long_audio",
            choices=LONG_AUDIO_MODES,
            default="truncate",
            help=f"clips longer than the model's maximum ({window}): 'truncate' captions the start "
            "and warns naming the file; 'window' captions consecutive windows of that length, one caption each "
            "with start/end times (default: truncate)",
        )
    rr = parser.add_argument_group("CLAP re-ranking (off by default)")
    rr.add_argument(
        "--rerank",
        action="store_true",
        help="generate N candidates and keep the one maximising "
        "clap_weight*cos(CLAP audio, CLAP text) + lm_weight*mean token log-prob",
    )
    rr.add_argument(
        "--rerank_candidates",
        type=int,
        default=None,
        help="N (default: --num_return_sequences if > 1, else --num_beams); with --do_sample they are N samples",
    )
    rr.add_argument("--rerank_clap_weight", type=float, default=RerankOptions.clap_weight, help="default: %(default)s")
    rr.add_argument("--rerank_lm_weight", type=float, default=RerankOptions.lm_weight, help="default: %(default)s")


def rerank_from_args(args) -> RerankOptions:
    """The :class:`RerankOptions` of parsed :func:`add_pipeline_args` arguments."""
    return RerankOptions(
        enabled=args.rerank,
        num_candidates=args.rerank_candidates,
        clap_weight=args.rerank_clap_weight,
        lm_weight=args.rerank_lm_weight,
        seed=args.seed,
    )


def pipeline_from_args(args, long_audio: str | None = None, **overrides) -> EnClap:
    """Build :class:`EnClap` from parsed :func:`add_pipeline_args` arguments.

    Args:
        args: the parsed arguments.
        long_audio: the long-audio mode when the parser has no ``--long_audio``.
        **overrides: other :class:`EnClap` arguments, taking precedence (e.g. ``dtype``, or
            ``encodec`` and ``clap`` to share another pipeline's encoders).
    """
    settings = dict(
        clap_ckpt=args.clap_ckpt,
        device=args.device,
        dtype=args.dtype,
        random_encoders=args.random_encoders,
        batch_size=args.batch_size,
        long_audio=long_audio or getattr(args, "long_audio", "truncate"),
        seed=args.seed,
    )
    return EnClap(args.ckpt, **{**settings, **overrides})
