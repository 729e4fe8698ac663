"""The one place that knows which major version of transformers is installed (4.57 or 5.x).

transformers 5 changed these interfaces that the model subclasses or calls (design §10):

* the decoding cache is passed and returned as ``cache`` (4.x: ``past_key_values``);
* ``BartEncoderLayer.forward(hidden_states, attention_mask, **kwargs)`` returns the hidden states
  alone (4.x: ``(hidden_states, attention_mask, layer_head_mask, output_attentions)`` returning a
  tuple), and attention weights are collected by hooks instead of being returned;
* head masks are gone;
* ``generate`` fills every unset (None) option of a passed generation config from the model's
  own generation config, then from library defaults, and has no ``use_model_defaults`` (4.x, which
  this package calls with ``use_model_defaults=False``, runs a passed config as it is).

Two more changes need no version check where they are met: ``BartDecoder`` no longer takes the
embedding (the model builds it, then ties the weight), and attention masks reach the layers as
booleans (the cross-attention shortcut reads boolean and additive masks). Everything else reads
the same under both; the rest of the package asks this module instead of comparing versions.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import transformers
from transformers import GenerationConfig

#: True under transformers 5.x.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

#: Keyword under which models and ``generate`` take and return the decoding cache.
CACHE = "cache" if TRANSFORMERS_5 else "past_key_values"


def pop_cache(past_key_values: Any, kwargs: dict) -> Any:
    """The decoding cache a caller passed under either name (removed from ``kwargs``)."""
    for name in ("cache", "past_key_values"):
        value = kwargs.pop(name, None)
        if past_key_values is None:
            past_key_values = value
    return past_key_values


def output_cache(output: Any) -> Any:
    """The decoding cache of a model output."""
    return getattr(output, CACHE, None)


def require_4x(feature: str, requested: bool) -> None:
    """Raise a one-line error where ``feature`` is requested under transformers 5, which lacks it."""
    if TRANSFORMERS_5 and requested:
        raise ValueError(f"{feature} needs transformers 4.x (installed: {transformers.__version__})")


def stock_encoder_layer_kwargs(layer_head_mask: Optional[torch.Tensor], output_attentions: bool) -> dict:
    """Keyword arguments of the installed ``BartEncoderLayer.forward`` besides hidden states and mask."""
    if TRANSFORMERS_5:
        require_4x("head masks", layer_head_mask is not None)
        return {}
    return {"layer_head_mask": layer_head_mask, "output_attentions": output_attentions}


def stock_decoder_kwargs(decoder_head_mask: Optional[torch.Tensor], cross_attn_head_mask: Optional[torch.Tensor],
                         cache_position: Optional[torch.Tensor]) -> dict:
    """Keyword arguments of the installed ``BartModel.forward`` for these decoder options (5.x
    has no head masks and takes cache positions from the cache)."""
    if TRANSFORMERS_5:
        require_4x("head masks", decoder_head_mask is not None or cross_attn_head_mask is not None)
        return {}
    return {"decoder_head_mask": decoder_head_mask, "cross_attn_head_mask": cross_attn_head_mask,
            "cache_position": cache_position}


def encoder_layer_output(hidden_states: torch.Tensor, attn_weights: Optional[torch.Tensor],
                         output_attentions: bool):
    """What the installed ``BartEncoderLayer.forward`` returns for these results."""
    if TRANSFORMERS_5:
        return hidden_states
    return (hidden_states, attn_weights) if output_attentions else (hidden_states,)


def encoder_layer_hidden_states(output) -> torch.Tensor:
    """The hidden states in an encoder layer's output (a tensor under 5.x, a tuple under 4.x)."""
    return output if isinstance(output, torch.Tensor) else output[0]


#: Options that make ``generate`` run a passed generation config as it is (4.x; 5.x does so by itself
#: for every option the config sets).
GENERATE_AS_GIVEN = {} if TRANSFORMERS_5 else {"use_model_defaults": False}


def generation_config_used(model, config: Optional[GenerationConfig]) -> GenerationConfig:
    """The generation config ``generate`` runs with for ``config`` (None: the model's), given
    :data:`GENERATE_AS_GIVEN` and no other option."""
    if TRANSFORMERS_5:
        return model._prepare_generation_config(config)[0]  # what generate() itself does first
    return config if config is not None else model.generation_config


def default_generation_options() -> dict:
    """Every generation option at the value ``generate`` uses when nothing sets it."""
    config = GenerationConfig()
    if TRANSFORMERS_5:
        config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    return config.to_dict()
