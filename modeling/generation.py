"""Generation settings shared by training validation, evaluation, inference and the demo (design §7)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from transformers import GenerationConfig, PretrainedConfig

from . import compat


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


def generate_ids(model, inputs: dict, generation_config: GenerationConfig):
    """Token ids of ``model.generate`` under exactly ``generation_config``: (B * R, S).

    With :data:`modeling.compat.GENERATE_AS_GIVEN`: otherwise transformers 4.x replaces every
    option equal to its global default (e.g. ``num_beams=1``) by the checkpoint's value.
    """
    return model.generate(**inputs, generation_config=generation_config, **compat.GENERATE_AS_GIVEN)


def decode_captions(tokenizer, sequences) -> list[str]:
    """Captions of generated ids: special tokens skipped, surrounding spaces stripped (design §7)."""
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


def generate_captions(model, tokenizer, inputs: dict, generation_config: GenerationConfig) -> list[str]:
    """One caption per input row: the routine of the pipeline and of training's validation alike.

    Args:
        model: an ``EnClapBartForConditionalGeneration`` (in eval mode).
        tokenizer: its tokenizer.
        inputs: ``input_ids``, ``encodec_mask``, ``attention_mask``, ``clap_embedding`` on the
            model's device (a collator batch).
        generation_config: from :meth:`GenerationOptions.to_generation_config`.
    """
    return decode_captions(tokenizer, generate_ids(model, inputs, generation_config))


def token_agreement(ids: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> tuple[float, float]:
    """How far two runs' token ids for the same inputs agree (e.g. bf16 against fp32).

    Returns:
        ``(sequences, tokens)``: the fraction of identical sequences, and of token positions that
        hold the same token, counted over the longer sequence of each pair.
    """
    same = positions = identical = 0
    for ours, theirs in zip(ids, reference):
        ours, theirs = list(ours), list(theirs)
        same += sum(x == y for x, y in zip(ours, theirs))
        positions += max(len(ours), len(theirs))
        identical += ours == theirs
    return identical / max(len(reference), 1), same / max(positions, 1)
