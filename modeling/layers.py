"""Training-time shortcuts inside BART's layers: same weights, same results, less memory and work.

Both classes keep the stock module names (``fc1``, ``fc2``, ``self_attn_layer_norm``, ``q_proj`` ...)
so state dicts are unchanged, and both run the stock BART code whenever their shortcut does not
apply: evaluation, no gradient, attention weights or head masks requested, a decoding cache, or
``efficient_training = False`` (see
:meth:`~modeling.modeling_enclap.EnClapBartForConditionalGeneration.set_efficient_training`).

* :class:`EnClapBartEncoderLayer` runs the feed-forward half of the layer (layer norm, ``fc1``,
  activation, dropout, ``fc2``, dropout, residual) as one autograd function that keeps only its
  input, ``fc1``'s output and its dropout masks (one byte per element) for the backward pass. The
  layer-norm output and the activation output, a (B, L, ffn_dim) tensor, are recomputed there
  instead of being stored. On CPU with attention dropout, its self-attention
  runs :func:`modeling.attention.attention` (blocked, the dropout mask kept packed to one bit)
  instead of SDPA's fallback that materialises the attention matrix and its mask. Dropout masks
  on CPU come from :class:`modeling.attention.MaskStream` (same keep probability, cheaper than
  ``bernoulli_``; different draws from stock dropout, so only dropout-free runs are equal).
* :class:`EnClapCrossAttention`: with teacher forcing a decoder layer has S (caption tokens)
  queries against L (~750) encoder rows. ``softmax(q K^T) V`` with ``K = E W_k^T + b_k`` and
  ``V = E W_v^T + b_v`` is computed as ``softmax((q W_k) E^T + q b_k) (P E) W_v^T + b_v``, which
  never builds the (B, L, D) keys and values: ~L/S times less work than projecting them, and no
  key/value activations kept per decoder layer. Equal to the stock result up to float rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers.models.bart.modeling_bart import BartAttention, BartEncoderLayer

from . import compat
from .attention import apply_drop, attention, drop_mask, dropout


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _keep_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _exact_gelu(layer) -> bool:
    """Whether the layer's activation is torch's exact GELU (BART's ``gelu``): then the backward
    calls ``gelu_backward`` directly instead of building an autograd graph of the recomputation."""
    return getattr(layer.activation_fn, "act", None) is F.gelu


def _activation(layer, pre: torch.Tensor, dropped: Optional[torch.Tensor]) -> torch.Tensor:
    """``act(pre)`` with the dropped elements zeroed, not yet scaled by ``1 / (1 - p)``: the scale is
    applied inside ``fc2``'s matrix product (``alpha``), which costs nothing there."""
    act = layer.activation_fn(pre)
    if dropped is None:
        return act
    # In place, except on an activation that returns its input ("linear"): pre is kept for backward.
    return act.masked_fill(dropped, 0.0) if act is pre else act.masked_fill_(dropped, 0.0)


class _FeedForward(torch.autograd.Function):
    """``h1 -> ln1 = LN(h1) -> ln1 + drop(fc2(drop(act(fc1(ln1)))))``, storing h1, fc1(ln1) and the masks.

    The dropout masks are kept as bytes (True = dropped) and applied with ``masked_fill_``; the
    activation dropout's ``1 / (1 - p)`` rides on ``fc2``'s product (``addmm``'s ``alpha``) in both
    directions. Per (B, L, ffn_dim) element that leaves two passes forward (activation, mask) and
    four backward (activation and mask again for ``fc2``'s weight gradient, the activation's
    derivative, the mask), where dropout by multiplication took about twice as many. The weight
    gradients of ``fc1`` and ``fc2`` are the usual matrix products, computed in the dtype the
    forward matmul ran in (autocast) and returned in the parameter's dtype; the layer norm (and
    an activation other than exact GELU) is differentiated by autograd on its recomputed output.
    """

    @staticmethod
    def forward(ctx, h1, ln_weight, ln_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, layer):
        ln = layer.self_attn_layer_norm
        ln1 = F.layer_norm(h1, ln.normalized_shape, ln_weight, ln_bias, ln.eps)
        pre = F.linear(ln1, fc1_weight, fc1_bias)  # (B, L, ffn_dim), kept for backward
        act_dropped = drop_mask(pre, layer.activation_dropout)
        act = _activation(layer, pre, act_dropped)
        out = torch.addmm(fc2_bias, _rows(act), fc2_weight.t(), alpha=_keep_scale(layer.activation_dropout))
        del act
        out = out.view(*pre.shape[:-1], -1)
        out_dropped = drop_mask(out, layer.dropout)
        out = apply_drop(out, out_dropped, layer.dropout)
        ctx.layer, ctx.out_dtype = layer, out.dtype
        ctx.save_for_backward(h1, pre, ln_weight, ln_bias, fc1_weight, fc2_weight, act_dropped, out_dropped)
        return ln1 + out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h1, pre, ln_weight, ln_bias, fc1_weight, fc2_weight, act_dropped, out_dropped = ctx.saved_tensors
        layer = ctx.layer
        need = ctx.needs_input_grad
        grad_out = apply_drop(grad.to(ctx.out_dtype), out_dropped, layer.dropout)  # d loss / d fc2 output
        grad_fc2_b = _rows(grad_out).sum(0).to(fc2_weight.dtype) if need[6] else None
        # fc2 read the activation scaled by 1 / (1 - p): its weight and input gradients carry that scale.
        scaled = grad_out * _keep_scale(layer.activation_dropout) if act_dropped is not None else grad_out
        del grad_out
        rows_out = _rows(scaled)
        if need[5]:
            act = _activation(layer, pre, act_dropped)
            grad_fc2_w = (rows_out.t() @ _rows(act).to(rows_out.dtype)).to(fc2_weight.dtype)
            del act
        else:
            grad_fc2_w = None
        grad_act = scaled @ fc2_weight.to(scaled.dtype)  # d loss / d (masked activation), (B, L, ffn_dim)
        del scaled, rows_out
        if act_dropped is not None:
            grad_act.masked_fill_(act_dropped, 0.0)
        if _exact_gelu(layer):
            grad_pre = torch.ops.aten.gelu_backward(grad_act.to(pre.dtype), pre)
        else:
            with torch.enable_grad():
                pre_leaf = pre.detach().requires_grad_()
                act = layer.activation_fn(pre_leaf)
            (grad_pre,) = torch.autograd.grad(act, pre_leaf, grad_act.to(act.dtype))
            del act, pre_leaf
        del grad_act

        ln = layer.self_attn_layer_norm
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() if n else t for t, n in zip((h1, ln_weight, ln_bias), need[:3])]
            ln1 = F.layer_norm(inputs[0], ln.normalized_shape, inputs[1], inputs[2], ln.eps)
        rows_pre = _rows(grad_pre)
        grad_fc1_w = (rows_pre.t() @ _rows(ln1.detach()).to(rows_pre.dtype)).to(fc1_weight.dtype) if need[3] else None
        grad_fc1_b = rows_pre.sum(0).to(fc1_weight.dtype) if need[4] else None
        grad_ln1 = (grad_pre @ fc1_weight.to(grad_pre.dtype)).to(ln1.dtype) + grad  # + the residual path
        del grad_pre, rows_pre
        wanted = [t for t, n in zip(inputs, need[:3]) if n]
        found = iter(torch.autograd.grad(ln1, wanted, grad_ln1) if wanted else ())
        grad_h1, grad_ln_w, grad_ln_b = (next(found) if n else None for n in need[:3])
        return grad_h1, grad_ln_w, grad_ln_b, grad_fc1_w, grad_fc1_b, grad_fc2_w, grad_fc2_b, None


class EnClapBartEncoderLayer(BartEncoderLayer):
    """BART encoder layer whose training step stores less (see the module docstring)."""

    efficient_training = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        layer_head_mask: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = False,
        **kwargs,
    ):
        """The installed stock layer's interface and output (:mod:`modeling.compat`)."""
        if (not (self.efficient_training and self.training and torch.is_grad_enabled())
                or self.fc1.bias is None or self.fc2.bias is None):
            stock = compat.stock_encoder_layer_kwargs(layer_head_mask, output_attentions)
            return super().forward(hidden_states, attention_mask, **stock, **kwargs)
        if self._blocked_attention_applies(hidden_states, attention_mask, layer_head_mask, output_attentions):
            attn, attn_weights = self._blocked_self_attention(hidden_states, attention_mask), None
        else:
            attn, attn_weights = self.self_attn(
                hidden_states=hidden_states,
                attention_mask=attention_mask,
                **compat.stock_encoder_layer_kwargs(layer_head_mask, output_attentions),
            )
        hidden_states = hidden_states + dropout(attn, self.dropout)
        ln = self.self_attn_layer_norm
        hidden_states = _FeedForward.apply(
            hidden_states, ln.weight, ln.bias, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self
        )
        hidden_states = self.final_layer_norm(hidden_states)
        if hidden_states.dtype == torch.float16:  # as stock BART: keep fp16 activations finite
            limit = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-limit, max=limit)
        return compat.encoder_layer_output(hidden_states, attn_weights, output_attentions)

    def _blocked_attention_applies(self, hidden_states, attention_mask, layer_head_mask, output_attentions) -> bool:
        """CPU, attention dropout on, nothing but the output wanted: SDPA would materialise it all.

        Without dropout SDPA's CPU flash kernel is faster; on CUDA SDPA's fused kernels do dropout.
        """
        attn = self.self_attn
        return (
            hidden_states.device.type == "cpu"
            and attn.dropout > 0
            and layer_head_mask is None
            and not output_attentions
            and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1)))
        )

    def _blocked_self_attention(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor]):
        """The self-attention sub-layer through :func:`modeling.attention.attention` (same weights)."""
        attn = self.self_attn
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, attn.head_dim)
        q = attn.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = attn.v_proj(hidden_states).view(shape).transpose(1, 2)
        out = attention(q, k, v, attention_mask, attn.scaling, attn.dropout)  # (B, H, L, d)
        return attn.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class EnClapCrossAttention(BartAttention):
    """Decoder cross-attention that, with teacher forcing, never projects the encoder rows."""

    efficient_training = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: Optional[torch.Tensor] = None,
        past_key_values=None,
        attention_mask: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """The installed ``BartAttention.forward`` interface; the cache under either name (:mod:`modeling.compat`)."""
        cache = compat.pop_cache(past_key_values, kwargs)
        mask_ok = attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() in (2, 4))
        if (
            not (self.efficient_training and self.training and torch.is_grad_enabled())
            # Its (B, H, S, L) fp32 score tensors beat projecting L keys and values on a CPU;
            # on CUDA, SDPA's fused cross-attention is the faster one.
            or hidden_states.device.type != "cpu"
            or key_value_states is None
            or cache is not None
            or kwargs.get("output_attentions")
            or kwargs.get("layer_head_mask") is not None
            or not mask_ok
            or self.k_proj.bias is None
            or self.v_proj.bias is None
        ):
            return super().forward(
                hidden_states,
                key_value_states=key_value_states,
                attention_mask=attention_mask,
                **{compat.CACHE: cache},
                **kwargs,
            )
        batch, queries, dim = hidden_states.shape
        heads, head_dim = self.num_heads, self.head_dim
        enc = key_value_states  # (B, L, D)
        q = self.q_proj(hidden_states).view(batch, queries, heads, head_dim).permute(2, 0, 1, 3)
        q = q.reshape(heads, batch * queries, head_dim)
        # (q W_k) E^T + q b_k: one row of D numbers per query and head instead of L keys.
        q_wk = torch.bmm(q, self.k_proj.weight.view(heads, head_dim, dim))  # (H, B*S, D)
        q_bk = (q * self.k_proj.bias.view(heads, 1, head_dim)).sum(-1)  # (H, B*S)
        q_wk = q_wk.view(heads, batch, queries, dim).transpose(0, 1).reshape(batch, heads * queries, dim)
        scores = torch.bmm(q_wk, enc.transpose(1, 2)).view(batch, heads, queries, -1)
        scores = (scores + q_bk.view(heads, batch, queries, 1).transpose(0, 1)) * self.scaling
        if attention_mask is not None:
            if attention_mask.dim() == 2:  # (B, L) 1 = keep, as flash-attention configs pass it
                attention_mask = attention_mask[:, None, None, :].bool()
            if attention_mask.dtype == torch.bool:  # True = keep: transformers 5's SDPA masks, and the line above
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:  # additive
                scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(scores.dtype)
        probs = dropout(probs, self.dropout)
        # (P E) W_v^T + (row sums of P) b_v
        mixed = torch.bmm(probs.view(batch, heads * queries, -1), enc)  # (B, H*S, D)
        mixed = mixed.view(batch, heads, queries, dim).transpose(0, 1).reshape(heads, batch * queries, dim)
        out = torch.bmm(mixed, self.v_proj.weight.view(heads, head_dim, dim).transpose(1, 2))  # (H, B*S, d)
        out = out.view(heads, batch, queries, head_dim) + probs.sum(-1).transpose(0, 1)[..., None] * self.v_proj.bias.view(
            heads, 1, 1, head_dim
        )
        out = out.permute(1, 2, 0, 3).reshape(batch, queries, heads * head_dim)
        return self.out_proj(out), None
