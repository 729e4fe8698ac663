"""The EnCLAP model, its generation defaults, tokenizer helper, metrics and captioning pipeline."""

from .configuration_enclap import EnClapBartConfig
from .generation import GenerationOptions
from .modeling_enclap import CheckpointError, EnClapBartForConditionalGeneration

__all__ = ["CheckpointError", "EnClapBartConfig", "EnClapBartForConditionalGeneration", "GenerationOptions"]
