"""The EnCLAP model: a BART encoder-decoder whose encoder reads a CLAP vector and EnCodec frames.

Reading order: the encoder (embeddings of design §3 → stock BART layers), the encoder-decoder
model, the conditional-generation head with the masked-codec-modelling heads, the output
dataclass, and the checkpoint loading that keeps the authors' released weights usable.

Module names are fixed by the released ``pytorch_model.bin`` files: ``model.encoder.embed_encodec``,
``model.encoder.clap_projection`` and ``mcm_heads`` must keep exactly these names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BartForConditionalGeneration, BartModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import (
    BartDecoder,
    BartEncoder,
    BartLearnedPositionalEmbedding,
    BartScaledWordEmbedding,
    shift_tokens_right,
)

from .configuration_enclap import EnClapBartConfig
from . import beam_search, compat
from .generation import GenerationOptions
from .attention import dropout as cheap_dropout
from .layers import EnClapBartEncoderLayer, EnClapCrossAttention
from .loading import TIED_KEYS, CheckpointError, check_state_dict, load_state_dict, resolve_checkpoint

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label positions that carry no loss (padding), as in transformers


class EnClapBartEncoder(BartEncoder):
    """BART encoder over ``[CLAP] <s> codec frames </s>`` (design §3).

    The CLAP embedding is projected into slot 0 and gets no positional embedding; slot ``p >= 1``
    gets BART's learned position row ``(p - 1) + 2``, i.e. ordinary BART positions for
    ``<s> frames </s>``. Codec frames are the sum of one embedding per codebook.
    """

    #: Training shortcut: on CPU the embedding dropout draws its mask with
    #: :func:`modeling.attention.dropout` (same keep probability, cheaper); False: ``F.dropout``.
    efficient_training = True

    def __init__(self, config: EnClapBartConfig, embed_tokens: Optional[nn.Embedding] = None):
        # Skip BartEncoder.__init__ so its stock layers are never built and thrown away; these
        # are the attributes it sets, with EnClapBartEncoderLayer in place of BartEncoderLayer.
        super(BartEncoder, self).__init__(config)
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_source_positions = config.max_position_embeddings
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.embed_tokens = BartScaledWordEmbedding(
            config.vocab_size, config.d_model, self.padding_idx, embed_scale=embed_scale
        )
        if embed_tokens is not None:
            self.embed_tokens.weight = embed_tokens.weight
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(EnClapBartEncoderLayer(config, layer_idx=i) for i in range(config.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.gradient_checkpointing = False
        self.embed_encodec = nn.ModuleList(
            nn.Embedding(config.encodec_table_size, config.d_model, padding_idx=config.encodec_pad_token_id)
            for _ in range(config.num_rvq)
        )
        self.clap_projection = nn.Linear(config.d_clap, config.d_model)
        self.post_init()

    def embed(
        self, input_ids: torch.LongTensor, encodec_mask: torch.Tensor, clap_embedding: torch.Tensor
    ) -> torch.Tensor:
        """Input embeddings plus positions, before ``layernorm_embedding``.

        Args:
            input_ids: (B, L, num_rvq) token ids (channel 0) at non-codec positions, codes at codec ones.
            encodec_mask: (B, L), true where the row holds codec frames (or padding).
            clap_embedding: (B, d_clap).

        Returns:
            (B, L, d_model) float tensor.
        """
        if input_ids.dim() != 3 or input_ids.shape[-1] != self.config.num_rvq:
            raise ValueError(
                f"input_ids must have shape (batch, length, {self.config.num_rvq}), got {tuple(input_ids.shape)}"
            )
        batch, length, _ = input_ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {length} positions exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} (at most {self.config.max_frames} frames per clip)"
            )
        encodec_mask = encodec_mask.bool()
        # Zero the ids the other lookup owns so both lookups stay in range for any vocabulary.
        token_ids = input_ids[..., 0].masked_fill(encodec_mask, 0)  # (B, L)
        codec_ids = input_ids.masked_fill(~encodec_mask[..., None], 0)  # (B, L, num_rvq)
        # The released checkpoints were trained without embed_scale on this path.
        token_embeds = F.embedding(token_ids, self.embed_tokens.weight)  # (B, L, D)
        codec_embeds = self.embed_encodec[0](codec_ids[..., 0])
        for j in range(1, len(self.embed_encodec)):
            codec_embeds = codec_embeds + self.embed_encodec[j](codec_ids[..., j])
        embeds = torch.where(encodec_mask[..., None], codec_embeds, token_embeds)  # (B, L, D)
        clap = self.clap_projection(clap_embedding.to(embeds.dtype))  # (B, D)
        embeds = torch.cat([clap[:, None, :], embeds[:, 1:]], dim=1)

        positions = self.embed_positions.weight[2 : length + 1]  # rows (p - 1) + 2 for p = 1 .. L-1
        positions = torch.cat([positions.new_zeros(1, positions.shape[-1]), positions], dim=0)  # (L, D)
        return embeds + positions.to(embeds.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        clap_embedding: Optional[torch.Tensor] = None,
        encodec_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        head_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> BaseModelOutput:
        """Encode a padded batch of clips (argument order as the authors' code, for positional calls).

        Args:
            input_ids: (B, L, num_rvq) LongTensor, laid out as design §3.
            clap_embedding: (B, d_clap) CLAP audio embeddings.
            encodec_mask: (B, L), 1 at codec rows.
            attention_mask: (B, L), 1 for real rows, 0 for padding.
            head_mask, output_attentions, output_hidden_states, return_dict: as in BART (head masks
                under transformers 4.x only; attention weights come from eager attention only,
                design §10).
            inputs_embeds: precomputed output of :meth:`embed` (skips the lookups).
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if inputs_embeds is None:
            if input_ids is None or encodec_mask is None or clap_embedding is None:
                raise ValueError("EnClapBartEncoder needs input_ids, encodec_mask and clap_embedding")
            inputs_embeds = self.embed(input_ids, encodec_mask, clap_embedding)

        hidden_states = self.layernorm_embedding(inputs_embeds)
        if self.efficient_training and self.training and torch.is_grad_enabled():
            hidden_states = cheap_dropout(hidden_states, self.dropout)
        else:
            hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)

        mask = None
        # A batch without padding needs no mask, and only a mask-free SDPA call may take the flash
        # kernel on a GPU. Deciding so reads the mask on the host (one sync per forward), which a
        # compiled graph cannot branch on: it keeps the mask.
        if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
            # (B, 1, 1, L) additive mask; broadcasts over heads and query rows in eager and SDPA.
            mask = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * torch.finfo(
                hidden_states.dtype
            ).min
        compat.require_attention_weights(self.config, bool(output_attentions))
        if head_mask is not None and head_mask.size(0) != len(self.layers):
            raise ValueError(f"head_mask is for {head_mask.size(0)} layers, the encoder has {len(self.layers)}")

        all_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                all_states += (hidden_states,)
            if self.training and self.layerdrop > 0 and torch.rand([]) < self.layerdrop:
                if output_attentions:
                    all_attentions += (None,)
                continue
            layer_head_mask = head_mask[idx] if head_mask is not None else None
            hidden_states, weights = compat.run_encoder_layer(layer, hidden_states, mask, layer_head_mask,
                                                              bool(output_attentions))
            if output_attentions:
                all_attentions += (weights,)
        if output_hidden_states:
            all_states += (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_states, all_attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_states, attentions=all_attentions)


class EnClapBartModel(BartModel):
    """BART encoder-decoder with :class:`EnClapBartEncoder` in place of the text encoder."""

    def __init__(self, config: EnClapBartConfig):
        # Skip BartModel.__init__ so the stock text encoder is never built and thrown away.
        super(BartModel, self).__init__(config)
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(
            config.vocab_size, config.d_model, config.pad_token_id, embed_scale=embed_scale
        )
        self.encoder = EnClapBartEncoder(config, self.shared)
        self.decoder = BartDecoder(config)
        self.decoder.embed_tokens.weight = self.shared.weight  # tied, as BartModel ties them
        for i, layer in enumerate(self.decoder.layers):
            layer.encoder_attn = EnClapCrossAttention(
                config.d_model,
                config.decoder_attention_heads,
                dropout=config.attention_dropout,
                is_decoder=True,
                config=config,
                layer_idx=i,
            )
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        clap_embedding: Optional[torch.Tensor] = None,
        encodec_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.LongTensor] = None,
        decoder_attention_mask: Optional[torch.LongTensor] = None,
        head_mask: Optional[torch.Tensor] = None,
        decoder_head_mask: Optional[torch.Tensor] = None,
        cross_attn_head_mask: Optional[torch.Tensor] = None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        decoder_inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ):
        """Encoder (when ``encoder_outputs`` is not given) then BART's decoder.

        Args:
            input_ids, clap_embedding, encodec_mask, attention_mask: the encoder batch (design §3).
            decoder_input_ids: (B, S) decoder input; required (a 3-D codec input cannot be shifted
                into a caption).
            past_key_values: the decoding cache (transformers 5 also passes it as ``cache``).
            Other arguments: as in :class:`~transformers.BartModel` (head masks and
                ``cache_position`` under transformers 4.x only).
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                clap_embedding=clap_embedding,
                encodec_mask=encodec_mask,
                attention_mask=attention_mask,
                head_mask=head_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("EnClapBartModel needs decoder_input_ids (or decoder_inputs_embeds)")
        past_key_values = compat.pop_cache(past_key_values, kwargs)
        kwargs.update(compat.stock_decoder_kwargs(decoder_head_mask, cross_attn_head_mask, cache_position))
        return super().forward(
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **{compat.CACHE: past_key_values},
            **kwargs,
        )


class BeamSharedCrossAttentionCache(EncoderDecoderCache):
    """Decoder cache whose cross-attention part is never reordered between beam-search steps.

    Beam search only permutes beams within a clip, and every beam of a clip attends to the same
    encoder output, so reordering the cross-attention keys/values (what the stock cache does,
    a copy of the whole encoder-sized cache at every step) cannot change them.
    """

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self.self_attention_cache.reorder_cache(beam_idx)


@dataclass
class EnClapBartOutput(Seq2SeqLMOutput):
    """:class:`~transformers.modeling_outputs.Seq2SeqLMOutput` plus the two losses.

    Attributes:
        lm_loss: caption cross-entropy with label smoothing.
        mcm_loss: masked-codec-modelling loss, already multiplied by ``config.mcm_loss_scale``
            (the original's ``mcm_loss`` field has the same meaning).
    """

    lm_loss: Optional[torch.FloatTensor] = None
    mcm_loss: Optional[torch.FloatTensor] = None


def mcm_max_rows(mcm_labels: torch.Tensor) -> int:
    """The largest number of masked rows of one codebook in a batch of MCM labels (B, L, num_rvq).

    Compute it where the labels are on the host (the collator's output) and pass it to the model
    as ``mcm_max_rows``: the MCM loss then needs no device synchronisation.
    """
    if mcm_labels.numel() == 0:
        return 0
    return int((mcm_labels != IGNORE_INDEX).sum(dim=tuple(range(mcm_labels.dim() - 1))).max())


class EnClapBartForConditionalGeneration(BartForConditionalGeneration):
    """EnCLAP: :class:`EnClapBartModel` + BART LM head + one MCM head per codebook.

    ``loss = lm_loss + mcm_loss_scale * sum_j 2^-(j+1) * CE(mcm_heads[j], mcm_labels[..., j])``.
    """

    config_class = EnClapBartConfig
    #: Training shortcuts (see :meth:`set_efficient_training`); False gives stock BART's computation.
    efficient_training = True

    def __init__(self, config: EnClapBartConfig):
        super(BartForConditionalGeneration, self).__init__(config)
        self.model = EnClapBartModel(config)
        self.register_buffer("final_logits_bias", torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.mcm_heads = nn.ModuleList(nn.Linear(config.d_model, config.encodec_vocab_size) for _ in range(config.num_rvq))
        self.post_init()
        self.generation_config = GenerationOptions().to_generation_config(config)

    def set_efficient_training(self, enabled: bool = True) -> None:
        """Turns the training shortcuts on (default) or off, e.g. to compare with stock BART.

        In a training step with gradients they change no result beyond float rounding:

        * encoder layers keep a third less activation memory (:class:`~modeling.layers.EnClapBartEncoderLayer`);
        * decoder cross-attention never projects the encoder rows into keys and values
          (:class:`~modeling.layers.EnClapCrossAttention`);
        * the decoder's token lookup sends a sparse gradient into the tied word embedding, which
          the LM head's dense gradient absorbs in place (no second full-vocabulary buffer);
        * the MCM heads run only on masked rows (:meth:`masked_codec_loss`; this one is always on).
        """
        for module in self.modules():
            if hasattr(module, "efficient_training"):
                module.efficient_training = enabled

    def _decoder_embeds_sparse_grad(self, decoder_input_ids: torch.LongTensor) -> Optional[torch.Tensor]:
        """Decoder input embeddings whose weight gradient is sparse, or None where that is unsafe.

        Only when the table is tied to the LM head: the head's dense gradient then makes the
        summed gradient dense again, so optimizers and DDP see an ordinary dense ``.grad``.
        """
        embed = self.model.decoder.embed_tokens
        if not (self.efficient_training and self.training and torch.is_grad_enabled()):
            return None
        if embed.weight is not self.lm_head.weight or embed.max_norm is not None:
            return None
        return F.embedding(decoder_input_ids, embed.weight, embed.padding_idx, sparse=True) * embed.embed_scale

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        clap_embedding: Optional[torch.Tensor] = None,
        encodec_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        decoder_input_ids: Optional[torch.LongTensor] = None,
        decoder_attention_mask: Optional[torch.LongTensor] = None,
        head_mask: Optional[torch.Tensor] = None,
        decoder_head_mask: Optional[torch.Tensor] = None,
        cross_attn_head_mask: Optional[torch.Tensor] = None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        decoder_inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        mcm_labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        mcm_max_rows: Optional[int] = None,
        **kwargs,
    ) -> EnClapBartOutput:
        """Run encoder and decoder; compute the losses when labels are given.

        Arguments come in the authors' order (``input_ids, clap_embedding, encodec_mask,
        attention_mask, ...``) so that positional calls written for their code keep working.

        Args:
            input_ids: (B, L, num_rvq) encoder input (design §3).
            clap_embedding: (B, d_clap).
            encodec_mask: (B, L) codec-row mask.
            attention_mask: (B, L) encoder attention mask.
            labels: (B, S) caption ids ``<s> ... </s>``, -100 at padding. The decoder input is
                ``labels`` shifted right with ``decoder_start_token_id``.
            mcm_labels: (B, L, num_rvq) original codes where masked, -100 elsewhere.
            mcm_max_rows: :func:`mcm_max_rows` of ``mcm_labels``, computed where the labels were
                still on the host (train.py does): the MCM loss then never waits for the device.
            past_key_values: the decoding cache (transformers 5 passes it as ``cache``).
            Other arguments: as in :class:`~transformers.BartForConditionalGeneration` (head
                masks under transformers 4.x only).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        past_key_values = compat.pop_cache(past_key_values, kwargs)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            use_cache = False
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encodec_mask=encodec_mask,
                clap_embedding=clap_embedding,
                head_mask=head_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        mcm_loss = None
        if mcm_labels is not None:
            mcm_loss = self.config.mcm_loss_scale * self.masked_codec_loss(
                encoder_outputs.last_hidden_state, mcm_labels, mcm_max_rows
            )
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            # Encoder only (e.g. an MCM-only step): there is nothing to decode.
            output = EnClapBartOutput(
                loss=mcm_loss,
                mcm_loss=mcm_loss,
                encoder_last_hidden_state=encoder_outputs.last_hidden_state,
                encoder_hidden_states=encoder_outputs.hidden_states,
                encoder_attentions=encoder_outputs.attentions,
            )
            return output if return_dict else output.to_tuple()
        if decoder_inputs_embeds is None and past_key_values is None:
            decoder_inputs_embeds = self._decoder_embeds_sparse_grad(decoder_input_ids)
            if decoder_inputs_embeds is not None:
                decoder_input_ids = None
        outputs = self.model(
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=encoder_outputs,
            decoder_attention_mask=decoder_attention_mask,
            head_mask=head_mask,
            decoder_head_mask=decoder_head_mask,
            cross_attn_head_mask=cross_attn_head_mask,
            past_key_values=past_key_values,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        logits = self.lm_head(outputs.last_hidden_state) + self.final_logits_bias.to(outputs.last_hidden_state.dtype)

        lm_loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(
                logits.view(-1, logits.shape[-1]).float(),
                labels.to(logits.device).reshape(-1),
                ignore_index=IGNORE_INDEX,
                label_smoothing=self.config.label_smoothing,
            )
        loss = None
        if lm_loss is not None or mcm_loss is not None:
            loss = sum(x for x in (lm_loss, mcm_loss) if x is not None)

        output = EnClapBartOutput(
            loss=loss,
            lm_loss=lm_loss,
            mcm_loss=mcm_loss,
            logits=logits,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            **{compat.CACHE: compat.output_cache(outputs)},
        )
        return output if return_dict else output.to_tuple()

    def masked_codec_loss(
        self, hidden_states: torch.Tensor, mcm_labels: torch.LongTensor, max_rows: Optional[int] = None
    ) -> torch.Tensor:
        """Unscaled MCM loss: ``sum_j 2^-(j+1) * CE(mcm_heads[j](h), mcm_labels[..., j])`` (design §4).

        Head ``j`` is evaluated only at the rows where codebook ``j`` is masked, gathered into
        a fixed (num_rvq, ``max_rows``) layout: the same loss as evaluating every head everywhere
        (the original), for a fraction of the compute and memory. Shapes come from the host-side
        ``max_rows``, so on an accelerator nothing waits for the device (no ``nonzero``, no
        ``tolist``). A codebook without a masked row adds an exact 0 that still passes through
        its head, so every head gets a (zero) gradient and DDP needs no ``find_unused_parameters``.

        Args:
            hidden_states: (B, L, D) encoder output.
            mcm_labels: (B, L, num_rvq) targets, -100 where not masked.
            max_rows: at least the largest number of masked rows of one codebook
                (:func:`mcm_max_rows`); None computes it here, which costs one device
                synchronisation when ``mcm_labels`` is on an accelerator.
        """
        num_rvq = len(self.mcm_heads)
        if max_rows is None:
            max_rows = mcm_max_rows(mcm_labels)
        slots = max(int(max_rows), 1)
        device = hidden_states.device
        targets = mcm_labels.to(device, non_blocking=True).reshape(-1, num_rvq).t()  # (num_rvq, N)
        rows = targets.shape[1]
        masked = targets != IGNORE_INDEX
        counts = masked.sum(1)  # (num_rvq,), stays on the device
        # Masked row n of codebook j goes to slot (number of masked rows before it); the rest to
        # an overflow slot that is cut off. Slots past a codebook's count keep label -100.
        slot = torch.where(masked, masked.cumsum(1) - 1, slots).clamp_(max=slots)
        index = torch.zeros(num_rvq, slots + 1, dtype=torch.long, device=device)
        index.scatter_(1, slot, torch.arange(rows, device=device).expand(num_rvq, rows))
        labels = torch.full((num_rvq, slots + 1), IGNORE_INDEX, dtype=torch.long, device=device)
        labels.scatter_(1, slot, targets)
        index, labels = index[:, :slots], labels[:, :slots]
        selected = hidden_states.reshape(-1, hidden_states.shape[-1])[index.reshape(-1)].view(num_rvq, slots, -1)
        total = hidden_states.new_zeros((), dtype=torch.float32)
        # unbind, not selected[j]: the backward of each of 16 indexings would fill a zero tensor of
        # the whole (num_rvq, slots, D) shape (16 x 44 MB at bart-base); unbind's stacks them once.
        for j, (head, rows_j) in enumerate(zip(self.mcm_heads, selected.unbind(0))):
            summed = F.cross_entropy(head(rows_j).float(), labels[j], ignore_index=IGNORE_INDEX, reduction="sum")
            total = total + summed / counts[j].clamp(min=1) / 2 ** (j + 1)  # head(h): (slots, 1024)
        return total

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        clap_embedding: Optional[torch.Tensor] = None,
        encodec_mask: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_outputs: Optional[BaseModelOutput] = None,
        share_cross_attention: bool = True,
        **kwargs,
    ):
        """Caption a padded batch with beam search (defaults: design §7, ``self.generation_config``).

        Args:
            input_ids, clap_embedding, encodec_mask, attention_mask: the encoder batch (design §3).
            encoder_outputs: precomputed encoder output (then the encoder inputs may be omitted).
            share_cross_attention: compute the decoder's cross-attention keys and values once per
                clip instead of once per beam, and never reorder them between steps (all beams of a
                clip share them); beam search without sampling then runs in
                :func:`modeling.beam_search.beam_search`. Same tokens, less work; False gives stock
                Hugging Face behaviour.
            **kwargs: passed to :meth:`transformers.GenerationMixin.generate` (e.g. ``generation_config``,
                ``num_beams``, ``output_scores``, ``return_dict_in_generate``).
        """
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encodec_mask=encodec_mask,
                clap_embedding=clap_embedding,
                return_dict=True,
            )
        if kwargs.get("generation_config") is not None:
            # transformers 4.x otherwise replaces every option of a passed config that equals the
            # library default (e.g. num_beams=1) with this model's default (4 beams).
            for key, value in compat.GENERATE_AS_GIVEN.items():
                kwargs.setdefault(key, value)
        config = compat.generation_config_used(self, kwargs.get("generation_config"))
        use_cache = kwargs.get("use_cache", config.use_cache)
        # With merged defaults (4.x) the beam count is only known inside generate(): share nothing then.
        merged = kwargs.get("generation_config") is not None and kwargs.get("use_model_defaults")
        if (share_cross_attention and not merged and set(kwargs) <= {"generation_config", *compat.GENERATE_AS_GIVEN}
                and beam_search.supported(self, config)):
            # The paper's beam search without the generic loop's waste; same tokens (design §7).
            return beam_search.beam_search(self, encoder_outputs.last_hidden_state, attention_mask, config)
        cache = compat.pop_cache(None, kwargs)
        if share_cross_attention and use_cache and not merged and cache is None:
            # generate() repeats each clip max(num_beams, num_return_sequences) times.
            copies = max(kwargs.get("num_beams", config.num_beams), kwargs.get("num_return_sequences", config.num_return_sequences) or 1)
            cache = self._shared_cross_attention_cache(encoder_outputs.last_hidden_state, copies)
        if cache is not None:
            kwargs[compat.CACHE] = cache
        # A copy: transformers expands the encoder output per beam in place, which would change
        # the caller's object (a second generate on it would see every clip num_beams times).
        encoder_outputs = BaseModelOutput(**encoder_outputs)
        return super().generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, **kwargs)

    def _shared_cross_attention_cache(self, encoder_states: torch.Tensor, copies: int) -> "BeamSharedCrossAttentionCache":
        """Cross-attention keys/values of every decoder layer, computed once and repeated per copy."""
        cross = DynamicCache()
        batch, length, _ = encoder_states.shape
        for index, layer in enumerate(self.model.decoder.layers):
            attention = layer.encoder_attn
            shape = (batch, length, -1, attention.head_dim)
            keys = attention.k_proj(encoder_states).view(shape).transpose(1, 2)  # (B, H, L, head_dim)
            values = attention.v_proj(encoder_states).view(shape).transpose(1, 2)
            cross.update(keys.repeat_interleave(copies, 0), values.repeat_interleave(copies, 0), index)
        return BeamSharedCrossAttentionCache(DynamicCache(), cross)

    # ------------------------------------------------------------------ persistence

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: Optional[EnClapBartConfig] = None,
        torch_dtype: Optional[torch.dtype] = None,
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
        **config_overrides,
    ) -> "EnClapBartForConditionalGeneration":
        """Load a checkpoint folder (or Hugging Face Hub repo id) strictly.

        Accepts the authors' released folders (``config.json`` that may lack the EnCLAP fields and
        say ``BartModel``; ``pytorch_model.bin`` with all keys, tied copies included), folders
        written by :meth:`save_pretrained` (safetensors, possibly sharded) and state dicts saved
        from a DDP-wrapped model (``module.`` prefixes). Tensors are read without executing pickled
        code. Any expected key that is missing or of the wrong shape raises :class:`CheckpointError`.

        Args:
            pretrained_model_name_or_path: a local folder or a hub repo id.
            config: use this config instead of the folder's ``config.json``.
            torch_dtype: cast floating-point weights to this dtype.
            cache_dir, revision: hub download options.
            **config_overrides: config attributes to override (e.g. ``dropout=0.0``).
        """
        folder, weights_file = resolve_checkpoint(pretrained_model_name_or_path, cache_dir=cache_dir,
                                                  revision=revision)
        if config is None:
            if not os.path.isfile(os.path.join(folder, "config.json")):
                raise CheckpointError(f"{folder}: no config.json (a checkpoint folder holds config.json + weights)")
            config = EnClapBartConfig.from_pretrained(folder)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        state_dict = load_state_dict(folder, weights_file)
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(model, state_dict, source=folder)
        model.load_state_dict({k: v for k, v in state_dict.items() if k not in TIED_KEYS}, strict=False, assign=True)
        model.tie_weights()
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_meta:  # a key the check above should have caught
                raise CheckpointError(f"{folder}: {name} was not loaded")
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        generation_file = os.path.join(folder, "generation_config.json")
        if os.path.isfile(generation_file):
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(folder)
        model.eval()
        return model

    @classmethod
    def from_bart(cls, bart_name_or_path: str | os.PathLike, **enclap_config_fields) -> "EnClapBartForConditionalGeneration":
        """Start training from a pretrained BART (e.g. ``facebook/bart-base``).

        BART's weights are copied; the codec tables, CLAP projection and MCM heads start as BART's
        initialiser makes them (normal(0, init_std), zero bias, zero padding row).

        Args:
            bart_name_or_path: hub id or local folder of a ``BartForConditionalGeneration``.
            **enclap_config_fields: EnCLAP config fields (``d_clap``, ``mcm_loss_scale``, ...) or
                BART config overrides (``dropout``, ...).
        """
        try:
            bart = BartForConditionalGeneration.from_pretrained(bart_name_or_path)
        except (OSError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"cannot load BART from {bart_name_or_path!r} ({type(error).__name__}); download it "
                "(e.g. `huggingface-cli download facebook/bart-base`) or pass a local folder"
            ) from error
        fields = bart.config.to_dict()
        for key in ("architectures", "model_type", "transformers_version", "_name_or_path"):
            fields.pop(key, None)
        fields.update(enclap_config_fields)
        model = cls(EnClapBartConfig(**fields))
        missing, unexpected = model.load_state_dict(bart.state_dict(), strict=False)
        new_modules = ("model.encoder.embed_encodec.", "model.encoder.clap_projection.", "mcm_heads.")
        unexplained = [k for k in missing if not k.startswith(new_modules) and k not in TIED_KEYS]
        if unexplained or unexpected:
            raise CheckpointError(f"{bart_name_or_path}: not a BART checkpoint (missing {unexplained}, unexpected {unexpected})")
        model.tie_weights()
        return model
