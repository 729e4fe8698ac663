"""The EnCLAP model only: configuration, model, training-time layers, generation defaults and the loader."""

from .configuration_enclap import EnClapBartConfig
from .generation import GenerationOptions
from .loading import CheckpointError
from .pretrained import Pretrained, load_pretrained, load_tokenizer
from .modeling_enclap import EnClapBartForConditionalGeneration

__all__ = ["CheckpointError", "EnClapBartConfig", "EnClapBartForConditionalGeneration", "GenerationOptions",
           "Pretrained", "load_pretrained", "load_tokenizer"]
