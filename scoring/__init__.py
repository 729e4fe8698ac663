"""Corpus-level captioning scores through aac-metrics (design §8), and the Java / jar set-up.

``scoring.names`` holds the metric names and the score table, ``scoring.install`` the set-up,
``scoring.java`` which metrics can run here (both standard library only), ``scoring.metrics`` the
scores themselves.
"""

from scoring.diversity import caption_stats, degenerate_warning
from scoring.install import setup
from scoring.java import MetricsUnavailable, available_metrics, check_requirements, preflight, usable_metrics
from scoring.metrics import close_meteor, compute_scores
from scoring.names import DEFAULT_METRICS, METRIC_NAMES, format_scores, normalize_metrics

__all__ = ["DEFAULT_METRICS", "METRIC_NAMES", "MetricsUnavailable", "available_metrics", "caption_stats",
           "check_requirements", "close_meteor", "compute_scores", "degenerate_warning", "format_scores",
           "normalize_metrics", "preflight", "setup", "usable_metrics"]
