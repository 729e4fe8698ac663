"""Atomic writes for every file the tools produce (features, predictions, scores, CSVs, configs, markers).

A file is written to a temporary sibling and renamed over its destination, so a killed or
failed run leaves either the old file or the complete new one, never a truncated one.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from contextlib import contextmanager
from typing import IO, Iterable, Iterator, List, Sequence, Tuple


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", stable_temp: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    Temporary names end in ``.partial``, so they are never taken for outputs.

    Args:
        path: destination; its folder is created when missing.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        stable_temp: write to ``<path>.partial`` instead of a unique name, so that a rerun of a
            killed job overwrites what it left (for outputs only one process writes).
        **open_kwargs: passed to :func:`os.fdopen` (e.g. ``encoding``, ``newline``).
    """
    path = os.path.abspath(os.fspath(path))  # absolute: dirname is never ''
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    if stable_temp:
        tmp = path + ".partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]], lineterminator: str = "\r\n") -> str:
    """``header`` and ``rows`` as CSV text (the csv module's quoting)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]],
              lineterminator: str = "\r\n") -> None:
    """Write a CSV file atomically."""
    atomic_write_text(path, csv_text(header, rows, lineterminator))


def predictions_csv(file_paths: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> str:
    """``file_path, prediction, caption_1 .. caption_N`` rows as CSV text (N = most references)."""
    width = max((len(refs) for refs in references), default=0)
    header = ["file_path", "prediction", *[f"caption_{i + 1}" for i in range(width)]]
    rows = ([path, prediction, *refs, *[""] * (width - len(refs))]
            for path, prediction, refs in zip(file_paths, predictions, references))
    return csv_text(header, rows, lineterminator="\n")


def write_predictions_csv(path: str | os.PathLike, file_paths: Sequence[str], predictions: Sequence[str],
                          references: Sequence[Sequence[str]]) -> None:
    """Write the predictions CSV of evaluation and training validation atomically."""
    atomic_write_text(path, predictions_csv(file_paths, predictions, references))


def numbered_files(folder: str | os.PathLike, pattern: re.Pattern) -> List[Tuple[str, re.Match]]:
    """``(name, match)`` of every file in ``folder`` whose whole name ``pattern`` matches, by name.

    For outputs written a numbered piece at a time by resumable jobs (collection part files,
    packed-store shards): ``pattern`` has the groups ``prefix`` (the writer) and ``seq``.
    A missing folder has none.
    """
    if not os.path.isdir(folder):
        return []
    return [(name, match) for name in sorted(os.listdir(folder)) if (match := pattern.fullmatch(name))]


def next_number(folder: str | os.PathLike, pattern: re.Pattern, prefix: str) -> int:
    """The ``seq`` after the highest one ``prefix`` has written in ``folder`` (0 for none yet)."""
    seqs = [int(match["seq"]) for _, match in numbered_files(folder, pattern) if match["prefix"] == prefix]
    return max(seqs) + 1 if seqs else 0
