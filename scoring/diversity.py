"""Is a set of generated captions degenerate? Empty captions, or one caption for (nearly) every clip.

A model that has not learned yet writes an empty string for every clip, and a little later the
same caption for every clip. Its scores are then ~0 and nothing fails, so training, evaluation
and inference all ask :func:`degenerate_warning` about their captions and print what it says
(design §8). Standard library only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

#: Share of the clips above which one repeated caption counts as "(nearly) all clips".
SAME_CAPTION_SHARE = 0.9


@dataclass(frozen=True)
class CaptionStats:
    """What a list of captions looks like.

    Args:
        total: number of captions.
        empty: captions that are empty (or only whitespace).
        distinct: distinct non-empty captions.
        top_caption: the most frequent non-empty caption ("" when all are empty).
        top_count: how many clips got ``top_caption``.
    """

    total: int
    empty: int
    distinct: int
    top_caption: str
    top_count: int

    @property
    def all_empty(self) -> bool:
        """True when there is at least one caption and every one is empty."""
        return self.total > 0 and self.empty == self.total

    @property
    def one_caption(self) -> bool:
        """True when one non-empty caption covers (nearly) every clip of a list of several."""
        if self.total < 2 or self.top_count == 0:
            return False
        return self.distinct == 1 or (self.total >= 10 and self.top_count >= SAME_CAPTION_SHARE * self.total)


def caption_stats(captions: Sequence[str]) -> CaptionStats:
    """Counts empty and distinct captions.

    Args:
        captions: one generated caption per clip.

    Returns:
        The :class:`CaptionStats` of ``captions``.
    """
    texts = [str(c).strip() for c in captions]
    counts = Counter(t for t in texts if t)
    top, top_count = counts.most_common(1)[0] if counts else ("", 0)
    return CaptionStats(total=len(texts), empty=len(texts) - sum(counts.values()), distinct=len(counts),
                        top_caption=top, top_count=top_count)


def degenerate_warning(captions: Sequence[str], hint: str, what: str = "clips") -> Optional[str]:
    """A one-line warning when the captions are degenerate, else None.

    Degenerate means: any empty caption, or one caption for (nearly) all of several clips.

    Args:
        captions: one generated caption per clip.
        hint: what the user can do about it (appended after a semicolon).
        what: what the captions describe, for the message ("validation clips", "files").

    Returns:
        E.g. ``"8 of 8 captions for validation clips are empty (0 distinct captions); raise ..."``.
    """
    stats = caption_stats(captions)
    if stats.empty == 0 and not stats.one_caption:
        return None
    parts = []
    if stats.empty:
        parts.append(f"{stats.empty} of {stats.total} captions for {what} are empty")
    if stats.one_caption:
        parts.append(f"{stats.top_count} of {stats.total} {what} got the same caption {stats.top_caption!r}")
    return f"{' and '.join(parts)} ({stats.distinct} distinct caption{'s' if stats.distinct != 1 else ''}); {hint}"


def checkpoint_hint(ckpt) -> str:
    """The hint of :func:`degenerate_warning` for captions from a finished checkpoint (evaluation, inference)."""
    return f"the checkpoint {ckpt} looks under-trained (see the validation warnings in its train.log)"
