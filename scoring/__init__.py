"""Corpus-level captioning scores through aac-metrics (design §8), and the Java / jar set-up.

``scoring.names`` holds the metric names and the score table, ``scoring.install`` the set-up,
``scoring.java`` which metrics can run here (both standard library only), ``scoring.metrics`` the
scores themselves and their per-clip parts, ``scoring.fense`` FENSE's models, ``scoring.bootstrap``
the intervals and the paired comparison that ``scoring.compare`` prints.
"""

from scoring.diversity import caption_stats, degenerate_warning
from scoring.install import setup
from scoring.java import MetricsUnavailable, available_metrics, check_requirements, preflight, usable_metrics
from scoring.metrics import ClipScores, close_meteor, compute_scores, score_clips
from scoring.names import DEFAULT_METRICS, METRIC_NAMES, format_scores, normalize_metrics

__all__ = ["ClipScores", "DEFAULT_METRICS", "METRIC_NAMES", "MetricsUnavailable", "available_metrics", "caption_stats",
           "check_requirements", "close_meteor", "compute_scores", "degenerate_warning", "format_scores",
           "normalize_metrics", "preflight", "score_clips", "setup", "usable_metrics"]
