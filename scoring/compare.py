"""``python -m scoring compare A.csv B.csv --test_csv SPLIT``: is system B better than A on the same clips?

Both prediction files (``evaluate.py --save_path`` output: ``file_path, prediction, ...``) are
scored against the split's references, and each metric's B - A gets a 95 % paired-bootstrap
interval and the share of resamples in which B wins (``scoring.bootstrap``).
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Iterable, Optional, Union

from common.errors import UserError


def read_predictions(path: str) -> dict[str, str]:
    """``{file_path: prediction}`` of a predictions CSV (one line per clip)."""
    if not os.path.isfile(path):
        raise UserError(f"prediction file not found: {os.path.abspath(path)}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"file_path", "prediction"} <= set(reader.fieldnames or ()):
            raise UserError(f"{path} has no file_path and prediction columns (expected evaluate.py --save_path output)")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            if row["file_path"] in out:
                raise UserError(f"{path} line {line}: clip {row['file_path']} appears twice")
            out[row["file_path"]] = row["prediction"] or ""
    return out


def _shown(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def compare(a_csv: str, b_csv: str, test_csv: str, metrics: Union[str, Iterable[str], None] = None,
            resamples: int = 1000, device: str = "cpu") -> str:
    """The comparison table of two prediction files on ``test_csv``'s clips.

    Args:
        a_csv, b_csv: the two systems' prediction files.
        test_csv: the split holding the references.
        metrics: names as for ``normalize_metrics``; None: the defaults this machine can run
            (the others are skipped with one warning), as in ``evaluate.py``.
        resamples: paired-bootstrap resamples (0: differences only).
        device: torch device for FENSE's models.

    Raises:
        UserError: the files' clips differ, a clip is not in the split, or a metric cannot run.
    """
    from data.training.dataset import read_split
    from scoring.bootstrap import paired_differences
    from scoring.java import preflight, usable_metrics
    from scoring.metrics import score_clips
    from scoring.names import DISPLAY_NAMES, format_value

    if resamples < 0:
        raise UserError(f"--bootstrap must be 0 (no intervals) or a number of resamples, not {resamples}")
    if metrics is None:
        names, skipped = usable_metrics(None)
        if skipped:
            logging.getLogger("scoring.compare").warning("%s", skipped)
    else:
        names = preflight(metrics)
    a, b = read_predictions(a_csv), read_predictions(b_csv)
    if set(a) != set(b):
        raise UserError(f"{a_csv} and {b_csv} caption different clips ({len(set(a) - set(b))} only in the first: "
                        f"{_shown(set(a) - set(b))}; {len(set(b) - set(a))} only in the second: "
                        f"{_shown(set(b) - set(a))}); compare predictions of the same clips")
    split = read_split(test_csv)
    references = dict(zip(split.file_paths, split.references))
    unknown = set(a) - set(references)
    if unknown:
        raise UserError(f"{len(unknown)} clip(s) of {a_csv} are not in {test_csv}: {_shown(unknown)}")
    clips = [path for path in split.file_paths if path in a]  # the split's order
    refs = [references[path] for path in clips]
    scores_a = score_clips([a[p] for p in clips], refs, names, device=device)
    scores_b = score_clips([b[p] for p in clips], refs, names, device=device)
    differences = paired_differences(scores_a, scores_b, resamples)
    width = max(len(DISPLAY_NAMES[n]) for n in names)
    lines = [f"A = {a_csv}", f"B = {b_csv}",
             f"{len(clips)} clips of {test_csv}; paired bootstrap, {resamples} resamples, 95 % intervals",
             f"{'metric':<{width}}  {'A':>7}  {'B':>7}  B - A [95 % interval]     B better"]
    for name, d in differences.items():
        diff = f"{d.diff:+.0f}" if name == "vocab" else f"{d.diff:+.3f}"
        if d.low is not None:
            diff += f" [{d.low:+.3f}, {d.high:+.3f}]"
        wins = f"{100 * d.b_wins:5.1f} %" if d.b_wins is not None else "    –"
        lines.append(f"{DISPLAY_NAMES[name]:<{width}}  {format_value(name, d.a, 3):>7}  "
                     f"{format_value(name, d.b, 3):>7}  {diff:<24}  {wins}")
    return "\n".join(lines)
