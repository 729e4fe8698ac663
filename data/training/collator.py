"""The one collator that turns examples into EnClap batches (design §3).

Training, validation, evaluation and inference all build their batches here, so the
encoder always sees the same layout. For a clip of T frames, row by row (L = max T + 3):

====================  ================  ============  ==============
position              ``input_ids``     encodec_mask  attention_mask
====================  ================  ============  ==============
0 (CLAP slot)         BOS (0) x16       0             1
1                     BOS (0) x16       0             1
2 .. T+1              the T frames      1             1
T+2                   EOS (2) x16       0             1
T+3 .. L-1 (padding)  1024 x16          1             0
====================  ================  ============  ==============

Masked codes (MCM) are replaced by 1024; ``mcm_labels`` holds the original code there and
-100 everywhere else.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

#: Default caption length in tokens, counting <s> and </s>; AudioCaps and Clotho captions
#: are far shorter (Clotho's longest, 20 words, is ~25 BART tokens).
MAX_TARGET_LENGTH = 64
IGNORE_INDEX = -100


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class EnClapCollator:
    """Builds the design §3 batch from a list of examples.

    An example is a dict with ``codes`` (T, num_rvq) int (numpy or torch) and
    ``clap_embedding`` (512,), and optionally ``mcm_mask`` (T, num_rvq) bool or None,
    ``caption`` (str), ``file_path`` and ``references`` -- what
    :class:`data.training.dataset.CaptionDataset` returns, or what inference builds from features.

    The batch holds ``input_ids`` (B, L, num_rvq) long, ``encodec_mask`` (B, L) bool,
    ``attention_mask`` (B, L) long and ``clap_embedding`` (B, 512) float32, plus:
    ``labels`` (B, S) long (``<s> caption </s>``, -100 padding) when every example has a
    caption and a tokenizer was given; ``mcm_labels`` (B, L, num_rvq) long when any example
    has an ``mcm_mask`` (an all-False mask gives all -100 rows: no MCM target, zero MCM loss);
    and the lists ``file_path`` / ``references`` when the examples carry them.

    Args:
        tokenizer: A BART tokenizer (only called, never modified); None for inference.
        max_target_length: Longest label sequence in tokens including <s> and </s>
            (default 64); longer captions are cut before the </s>, which is always kept.
        num_rvq: Codebooks per frame (16).
        encodec_pad_token_id: Id of padding and masked codes (1024).
        bos_token_id: BART <s> id, used in the encoder rows and the labels (0).
        eos_token_id: BART </s> id, used in the encoder rows and the labels (2).
    """

    def __init__(self, tokenizer=None, max_target_length: int = MAX_TARGET_LENGTH, num_rvq: int = 16,
                 encodec_pad_token_id: int = 1024, bos_token_id: int = 0, eos_token_id: int = 2):
        if max_target_length < 2:
            raise ValueError(f"max_target_length must be >= 2 (<s> and </s>), got {max_target_length}")
        self.tokenizer = tokenizer
        self.max_target_length = max_target_length
        self.num_rvq = num_rvq
        self.encodec_pad_token_id = encodec_pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def __call__(self, examples: Sequence[dict]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        codes = [_as_numpy(example["codes"]).astype(np.int64, copy=False) for example in examples]
        for example, array in zip(examples, codes):
            if array.ndim != 2 or array.shape[1] != self.num_rvq or array.shape[0] < 1:
                raise ValueError(f"codes of {example.get('file_path', 'an example')} have shape "
                                 f"{array.shape}, expected (T, {self.num_rvq}) with T >= 1")
        lengths = np.array([array.shape[0] for array in codes])  # (B,) frames per clip
        batch_size, seq_len = len(codes), int(lengths.max()) + 3

        # Scatter all frames at once: example b's frame t goes to (b, t + 2). For the flat
        # frame list, t = flat index - (offset of example b's first frame).
        batch_index = np.repeat(np.arange(batch_size), lengths)                     # (sum T,)
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)                  # (sum T,)
        position = np.arange(lengths.sum()) - offsets + 2                           # (sum T,)
        frames = np.concatenate(codes, axis=0)                                      # (sum T, 16)

        input_ids = np.full((batch_size, seq_len, self.num_rvq), self.encodec_pad_token_id, np.int64)
        input_ids[:, :2] = self.bos_token_id                                        # CLAP slot, <s>
        input_ids[np.arange(batch_size), lengths + 2] = self.eos_token_id           # </s>
        positions = np.arange(seq_len)[None, :]                                     # (1, L)
        attention_mask = (positions < (lengths + 3)[:, None]).astype(np.int64)      # (B, L)
        # Codec positions are the frames AND the padding (as the original marks them).
        encodec_mask = (positions >= 2) & (positions != (lengths + 2)[:, None])     # (B, L)

        masks = [example.get("mcm_mask") for example in examples]
        mcm_labels = None
        if any(mask is not None for mask in masks):
            hidden = np.concatenate([np.zeros(array.shape, bool) if mask is None else _as_numpy(mask).astype(bool)
                                     for array, mask in zip(codes, masks)], axis=0)  # (sum T, 16)
            if hidden.shape != frames.shape:
                raise ValueError("every mcm_mask must have the shape of its example's codes")
            mcm_labels = np.full(input_ids.shape, IGNORE_INDEX, np.int64)            # (B, L, 16)
            mcm_labels[batch_index, position] = np.where(hidden, frames, IGNORE_INDEX)
            frames = np.where(hidden, self.encodec_pad_token_id, frames)
        input_ids[batch_index, position] = frames

        clap = np.stack([_as_numpy(example["clap_embedding"]).reshape(-1) for example in examples])
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),                      # (B, L, 16) long
            "encodec_mask": torch.from_numpy(encodec_mask),                # (B, L) bool
            "attention_mask": torch.from_numpy(attention_mask),            # (B, L) long
            "clap_embedding": torch.from_numpy(clap.astype(np.float32)),   # (B, 512) float32
        }
        if mcm_labels is not None:
            batch["mcm_labels"] = torch.from_numpy(mcm_labels)             # (B, L, 16) long

        captions = [example.get("caption") for example in examples]
        if self.tokenizer is not None and all(caption is not None for caption in captions):
            batch["labels"] = self.tokenize(captions)                      # (B, S) long
        for key in ("file_path", "references"):
            if all(key in example for example in examples):
                batch[key] = [example[key] for example in examples]
        return batch

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Tokenizes captions as ``<s> caption </s>`` labels padded with -100.

        Special tokens are added here rather than by the tokenizer, so the layout does not
        depend on how a tokenizer's post-processor is configured; the word pieces are the
        same as BART's ``tokenizer(caption)`` produces.

        Args:
            captions: B caption strings.

        Returns:
            (B, S) long tensor, S = the longest label in the batch (<= max_target_length).
        """
        pieces = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        body = self.max_target_length - 2
        rows = [[self.bos_token_id, *ids[:body], self.eos_token_id] for ids in pieces]
        lengths = np.array([len(row) for row in rows])
        labels = np.full((len(rows), int(lengths.max())), IGNORE_INDEX, np.int64)   # (B, S)
        labels[np.arange(labels.shape[1])[None, :] < lengths[:, None]] = np.concatenate(rows)
        return torch.from_numpy(labels)
