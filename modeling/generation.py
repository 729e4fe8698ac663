"""Generation settings shared by training validation, evaluation, inference and the demo (design §7)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Optional

from transformers import GenerationConfig, PretrainedConfig


@dataclass
class GenerationOptions:
    """Decoding options; the defaults are the paper's (design §7).

    Args:
        num_beams: beam width (4).
        max_length: maximum caption length in tokens, counting the decoder start token (50).
        no_repeat_ngram_size: forbid repeating any n-gram of this size (3).
        length_penalty: beam-score length exponent (1.0).
        early_stopping: stop a beam search once ``num_beams`` hypotheses are finished (True).
        do_sample: sample instead of beam search (False).
        top_p: nucleus-sampling mass when sampling (1.0).
        temperature: softmax temperature when sampling (1.0).
        num_return_sequences: candidates returned per clip, at most ``num_beams`` without sampling (1).
    """

    num_beams: int = 4
    max_length: int = 50
    no_repeat_ngram_size: int = 3
    length_penalty: float = 1.0
    early_stopping: bool = True
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    num_return_sequences: int = 1

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (decoder start + one token), got {self.max_length}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        # Beam search (with or without sampling) returns at most num_beams hypotheses per input;
        # only pure sampling (num_beams 1) can draw any number of candidates.
        if (not self.do_sample or self.num_beams > 1) and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}) "
                "unless sampling with num_beams 1"
            )

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> "GenerationOptions":
        """Build options from flags added by :func:`add_generation_args`."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls)})

    def to_generation_config(self, model_config: Optional[PretrainedConfig] = None) -> GenerationConfig:
        """A :class:`~transformers.GenerationConfig` with these options and the BART special ids.

        Args:
            model_config: takes ``bos/eos/pad/decoder_start`` ids from it; BART's 0/2/1/2 when None.
        """
        bos = getattr(model_config, "bos_token_id", 0) if model_config is not None else 0
        eos = getattr(model_config, "eos_token_id", 2) if model_config is not None else 2
        pad = getattr(model_config, "pad_token_id", 1) if model_config is not None else 1
        start = getattr(model_config, "decoder_start_token_id", 2) if model_config is not None else 2
        options = asdict(self)
        if not self.do_sample:
            options.pop("top_p")
            options.pop("temperature")
        if self.num_beams == 1:
            options.pop("early_stopping")
            options.pop("length_penalty")
        return GenerationConfig(
            **options,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            decoder_start_token_id=start,
            forced_bos_token_id=bos,
            forced_eos_token_id=eos,
        )


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


