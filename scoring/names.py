"""Metric names: the defaults (design §8), the spellings users type, and the printed score table."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

# The set the field reports since DCASE 2024 (aac-metrics 0.6.0's definitions).
DEFAULT_METRICS: tuple[str, ...] = ("meteor", "cider_d", "spice", "spider", "spider_fl", "fense", "vocab")

# Canonical name -> how it is printed. Order here is the order of `format_scores` tables.
DISPLAY_NAMES: dict[str, str] = {
    "meteor": "METEOR",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "spider_fl": "SPIDEr-FL",
    "fense": "FENSE",
    "vocab": "Vocab",
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L",
}
#: Every canonical metric name this module computes.
METRIC_NAMES: tuple[str, ...] = tuple(DISPLAY_NAMES)

# Spellings users type (after lower-casing and mapping "-" / " " to "_") -> canonical name.
_ALIASES: dict[str, str] = {
    "cider": "cider_d",
    "ciderd": "cider_d",
    "rouge": "rouge_l",
    "rougel": "rouge_l",
    "spiderfl": "spider_fl",
    "spider_fl": "spider_fl",
    "vocabulary": "vocab",
    **{f"bleu{n}": f"bleu_{n}" for n in range(1, 5)},
}

# aac-metrics 0.6.0 cache layout, relative to the cache dir (verified against its source:
# utils/tokenization.py FNAME_STANFORD_CORENLP_3_4_1_JAR, functional/meteor.py
# FNAME_METEOR_JAR, functional/spice.py FNAME_SPICE_JAR / check_spice_install; the tests


def normalize_metrics(metrics: Union[str, Iterable[str], None] = None) -> tuple[str, ...]:
    """Turns user-typed metric names into canonical ones.

    Args:
        metrics: names, case-insensitive, with aliases ("CIDEr-D", "cider", "ROUGE-L",
            "bleu4", "SPIDEr-FL", ...); a single string may hold a comma-separated list
            (``"meteor,cider_d"``), as CLI flags give it. None -> ``DEFAULT_METRICS``.

    Returns:
        The canonical names in the given order, duplicates removed.

    Raises:
        ValueError: an unknown name; the message lists the valid names.
    """
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out: list[str] = []
    for raw in metrics:
        key = re.sub(r"[\s\-]+", "_", str(raw).strip().lower())
        if not key:
            continue
        name = key if key in DISPLAY_NAMES else _ALIASES.get(key.replace("_", ""), _ALIASES.get(key))
        if name is None:
            raise ValueError(f"unknown metric {raw!r}; valid names: {', '.join(METRIC_NAMES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no metric given; valid names: {', '.join(METRIC_NAMES)}")
    return tuple(out)


def format_value(name: str, value: float, digits: int = 4) -> str:
    """One score as printed: Vocab (a count of words) as a whole number, the others with ``digits`` decimals."""
    return f"{value:.0f}" if name == "vocab" else f"{value:.{digits}f}"


def format_scores(scores: dict[str, float], title: Optional[str] = None,
                  intervals: Optional[dict[str, tuple[float, float]]] = None) -> str:
    """A small aligned table of scores, e.g. for evaluate.py and training logs.

    Args:
        scores: ``{name: value}``; canonical names are shown with their usual spelling
            (``cider_d`` -> ``CIDEr-D``), other keys as given, in the canonical order first.
        title: optional first line.
        intervals: ``{name: (low, high)}`` 95 % intervals; when given, values are printed with
            3 decimals as ``0.483 [0.471, 0.495]`` (metrics without one show the value alone).

    Returns:
        The table as text (no trailing newline).
    """
    order = [k for k in METRIC_NAMES if k in scores] + [k for k in scores if k not in DISPLAY_NAMES]
    labels = [DISPLAY_NAMES.get(k, k) for k in order]
    width = max([len(label) for label in labels] + [len("metric")])
    digits = 3 if intervals is not None else 4
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  score" + (" [95 % interval]" if intervals else ""))
    lines.append(f"{'-' * width}  ------")
    for key, label in zip(order, labels):
        text = format_value(key, float(scores[key]), digits)
        if intervals and key in intervals:
            low, high = intervals[key]
            text += f" [{format_value(key, low, digits)}, {format_value(key, high, digits)}]"
        lines.append(f"{label:<{width}}  {text}")
    return "\n".join(lines)


def describe_unavailable(reasons: dict[str, str]) -> str:
    """One line for :func:`check_requirements`' reasons, metrics sharing a reason grouped.

    Args:
        reasons: ``{canonical name: reason}``.

    Returns:
        E.g. ``"cannot compute SPICE, SPIDEr: Stanford CoreNLP 3.6.0 jars missing ...; fix: ..."``.
    """
    by_reason: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        by_reason.setdefault(reason, []).append(DISPLAY_NAMES[name])
    return " | ".join(f"cannot compute {', '.join(ms)}: {reason}" for reason, ms in by_reason.items())
