"""The one place that knows which major version of transformers is installed (4.57 or 5.x).

transformers 5 changed these interfaces that the model subclasses or calls (design §10):

* the decoding cache is passed and returned as ``cache`` (4.x: ``past_key_values``);
* ``BartEncoderLayer.forward(hidden_states, attention_mask, **kwargs)`` returns the hidden states
  alone (4.x: ``(hidden_states, attention_mask, layer_head_mask, output_attentions)`` returning a
  tuple), and attention weights are collected by forward hooks on the attention modules instead
  of being returned; the EnCLAP encoder records its own the same way (:func:`run_encoder_layer`).
  Only eager attention computes weights: 5.x refuses a config with ``output_attentions`` and
  SDPA, and so does the encoder a call (:func:`require_attention_weights`); 4.x gives None per
  layer there;
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

import contextlib
from typing import Any, Iterator, Optional

import torch
import transformers
from torch import nn
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


def require_attention_weights(config, requested: bool) -> None:
    """Raise where attention weights are requested from an attention implementation that computes none.

    As transformers 5 itself refuses ``output_attentions`` in a config whose implementation is not
    eager (SDPA and flash attention return no weights). 4.x warns and gives None per layer.
    """
    implementation = config._attn_implementation
    if TRANSFORMERS_5 and requested and implementation not in ("eager", None):
        raise ValueError(
            f"output_attentions is not supported with attn_implementation {implementation!r} "
            "(it computes no attention weights); call model.set_attn_implementation('eager') first"
        )


@contextlib.contextmanager
def recorded_attention_weights(attention: nn.Module) -> Iterator[list]:
    """Collect the attention weights that ``attention`` (a ``BartAttention``) computes inside the block.

    Its layer drops them under 5.x; transformers' own models record them with the same kind of
    forward hook (the module returns ``(output, weights)``). Yields the list they are appended to,
    one entry per call.
    """
    weights = []
    handle = attention.register_forward_hook(lambda module, args, output: weights.append(output[1]))
    try:
        yield weights
    finally:
        handle.remove()


def run_encoder_layer(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      layer_head_mask: Optional[torch.Tensor], output_attentions: bool):
    """Run an :class:`~modeling.layers.EnClapBartEncoderLayer` under the installed interface.

    Returns:
        ``(hidden_states, weights)``: the layer's output and, when ``output_attentions``, its
        self-attention weights (B, heads, L, L), else None.
    """
    recording = TRANSFORMERS_5 and output_attentions
    with recorded_attention_weights(layer.self_attn) if recording else contextlib.nullcontext() as recorded:
        output = layer(hidden_states, attention_mask, layer_head_mask=layer_head_mask,
                       output_attentions=output_attentions)
    if not output_attentions:
        return encoder_layer_hidden_states(output), None
    return encoder_layer_hidden_states(output), (recorded[-1] if TRANSFORMERS_5 else output[1])


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
