"""CLAP re-ranking of candidate captions (off by default, so outputs stay the paper's).

For every clip N candidates are generated (the beam N-best, or N samples) and the one with the
highest ``clap_weight * cos(CLAP audio, CLAP text) + lm_weight * mean token log-probability``
is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modeling.generation import GenerationOptions


@dataclass
class RerankOptions:
    """CLAP re-ranking of candidate captions (off by default, so outputs stay the paper's).

    For every clip ``num_candidates`` captions are generated (the beam N-best, or N samples when
    ``GenerationOptions.do_sample`` is set) and the one with the highest
    ``clap_weight * cos(CLAP audio, CLAP text) + lm_weight * mean token log-probability`` is
    returned. The log-probability is the model's own, averaged over the caption's tokens
    (including ``</s>``), so long captions are not penalised for their length.

    Args:
        enabled: turn re-ranking on.
        num_candidates: candidates per clip; ``None`` takes ``num_return_sequences`` of the
            generation options when that is above 1, else ``num_beams`` (at least 2).
        clap_weight: weight of the CLAP audio-text cosine similarity (in [-1, 1]).
        lm_weight: weight of the length-normalised log-probability (<= 0, typically -0.3 .. -2).
        seed: seed of the sampling random generator, so that sampled candidates are reproducible.
    """

    enabled: bool = False
    num_candidates: int | None = None
    clap_weight: float = 1.0
    lm_weight: float = 0.5
    seed: int = 0

    def candidates_for(self, options: GenerationOptions) -> int:
        """Number of candidates per clip under ``options``."""
        if self.num_candidates is not None:
            return max(1, int(self.num_candidates))
        if options.num_return_sequences > 1:
            return int(options.num_return_sequences)
        return max(2, int(options.num_beams))


def score_candidates(model, tokenizer, clap, inputs: dict[str, torch.Tensor], sequences: torch.Tensor,
                     texts: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAP similarity and mean token log-probability of ``n`` candidates per input.

    Args:
        model: the captioning model (eval mode).
        tokenizer: its tokenizer (for the pad id).
        clap: a CLAP encoder with ``embed_text``.
        inputs: the model inputs of B clips.
        sequences: (B*n, S) generated ids, ``n`` consecutive rows per clip.
        texts: the B*n decoded captions.
        n: candidates per clip.

    Returns:
        ``(clap_sim, mean_logprob)``, both (B*n,) float32 on the CPU.
    """
    labels = sequences[:, 1:].clone()  # drop the decoder start token: the model shifts it back in
    labels[labels == tokenizer.pad_token_id] = -100
    expanded = {k: v.repeat_interleave(n, dim=0) for k, v in inputs.items()}  # (B*n, ...)
    logits = model(**expanded, labels=labels).logits.float()  # (B*n, S-1, V)
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    valid = labels != -100
    mean_logprob = (logp * valid).sum(1) / valid.sum(1).clamp(min=1)  # (B*n,)
    text_emb = torch.as_tensor(np.asarray(clap.embed_text(texts)), dtype=torch.float32)  # (B*n, 512)
    audio_emb = inputs["clap_embedding"].float().cpu().repeat_interleave(n, dim=0)  # (B*n, 512)
    clap_sim = torch.nn.functional.cosine_similarity(text_emb, audio_emb, dim=-1)
    return clap_sim, mean_logprob.cpu()


def pick_best(clap_sim: torch.Tensor, mean_logprob: torch.Tensor, n: int, rerank: RerankOptions) -> list[int]:
    """Row index of the best-scored candidate of each group of ``n``."""
    score = rerank.clap_weight * clap_sim + rerank.lm_weight * mean_logprob  # (B*n,)
    # argmax returns the first maximum, so ties go to the better generation score.
    best_in_group = score.view(-1, n).argmax(dim=1)
    return [g * n + int(j) for g, j in enumerate(best_in_group)]
