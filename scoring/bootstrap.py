"""Bootstrap intervals of corpus scores and paired comparison of two systems (design §8).

Clips are resampled with replacement, with a fixed seed. Nothing is re-run per resample: each
metric's corpus score is rebuilt from per-clip parts computed once (``scoring.metrics.ClipScores``),
so 1000 resamples cost a matrix product per metric (and, for METEOR, 1000 short exchanges with
the METEOR process already running):

* CIDEr-D, SPICE, SPIDEr, SPIDEr-FL and FENSE are means of per-clip scores, so a resample's
  score is the count-weighted mean. CIDEr-D's document frequencies (IDF) are held fixed at
  those of the full test corpus: they define the metric on this test set, and recomputing
  them on a resample with repeated clips would count a repeated clip's n-grams as several
  documents, a corpus no one evaluates on (and would cost a full CIDEr-D run per resample).
* METEOR's corpus score is computed from per-clip statistics summed over the corpus, so a
  resample's sums go back to METEOR.
* Vocab (distinct words of the whole output) and BLEU / ROUGE-L get no interval: a resample
  holds about 63 % of the distinct clips, so its vocabulary is smaller than the corpus's by
  construction and a percentile interval would not describe the full corpus's value.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from scoring.metrics import ClipScores, meteor_of_sums

#: Metrics whose corpus score is the mean of their per-clip scores.
MEAN_METRICS: tuple[str, ...] = ("cider_d", "spice", "spider", "spider_fl", "fense")
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


def resample_counts(num_clips: int, resamples: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """How often each clip is drawn in each resample: ``(resamples, num_clips)``, rows summing to ``num_clips``."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, num_clips, size=(resamples, num_clips))
    counts = np.zeros((resamples, num_clips))
    np.add.at(counts, (np.arange(resamples)[:, None], drawn), 1.0)
    return counts


def resampled_scores(scores: ClipScores, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each resample's corpus score, for every metric of ``scores`` that has an interval.

    Args:
        scores: one system's scores on the corpus.
        counts: from :func:`resample_counts` for this corpus's clip count.

    Returns:
        ``{canonical name: array of one corpus score per resample}``.
    """
    out: dict[str, np.ndarray] = {}
    num_clips = counts.shape[1]
    for name in scores.corpus:
        if name in MEAN_METRICS:
            out[name] = counts @ scores.per_clip[name] / num_clips
        elif name == "meteor":
            out[name] = meteor_of_sums(counts @ scores.meteor_stats, scores.java, scores.cache)
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def intervals(scores: ClipScores, resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of the corpus scores that have one (module docstring)."""
    counts = resample_counts(len(scores.tokens), resamples, seed)
    return {name: _percentiles(values) for name, values in resampled_scores(scores, counts).items()}


@dataclasses.dataclass(frozen=True)
class Difference:
    """B - A for one metric on the same clips.

    Attributes:
        a, b: the two corpus scores.
        low, high: 95 % paired-bootstrap interval of B - A (None where the metric has none).
        b_wins: share of resamples in which B scores higher than A (None likewise).
    """

    a: float
    b: float
    low: Optional[float] = None
    high: Optional[float] = None
    b_wins: Optional[float] = None

    @property
    def diff(self) -> float:
        return self.b - self.a


def paired_differences(a: ClipScores, b: ClipScores, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> dict[str, Difference]:
    """B - A per metric, with a paired bootstrap: both systems are scored on the SAME resampled clips.

    Args:
        a, b: the two systems' scores on the same clips, in the same order, same metrics.
        resamples: bootstrap resamples (0: differences only).
        seed: the resampling seed.
    """
    counts = resample_counts(len(a.tokens), resamples, seed) if resamples else None
    sampled_a = resampled_scores(a, counts) if resamples else {}
    sampled_b = resampled_scores(b, counts) if resamples else {}
    out = {}
    for name in a.corpus:
        if name in sampled_a:
            delta = sampled_b[name] - sampled_a[name]
            low, high = _percentiles(delta)
            out[name] = Difference(a.corpus[name], b.corpus[name], low, high, float(np.mean(delta > 0)))
        else:
            out[name] = Difference(a.corpus[name], b.corpus[name])
    return out
