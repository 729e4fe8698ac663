"""Captioning results as files: CSV (one row per caption or window) or JSON lines."""

from __future__ import annotations

import json
from typing import Sequence

from common.io import csv_text

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def format_records(results: Sequence, path: str) -> str:
    """Render results as CSV or JSON lines, chosen by the extension of ``path``.

    Args:
        results: :class:`captioning.pipeline.CaptionResult` objects.
        path: the output file name (``.csv`` or ``.jsonl``).
    """
    if path.lower().endswith(".jsonl"):
        lines = []
        for res in results:
            record = {"file_path": res.source, "caption": res.caption, "duration": round(res.duration, 3)}
            if res.segments:
                record["segments"] = [
                    {"start": round(s.start, 3), "end": round(s.end, 3), "caption": s.caption} for s in res.segments
                ]
            record["truncated"] = res.truncated
            record["error"] = res.error
            lines.append(json.dumps(record, ensure_ascii=False))
        return "\n".join(lines) + "\n"
    rows = []
    for res in results:
        if res.segments:
            rows.extend([res.source, f"{seg.start:.3f}", f"{seg.end:.3f}", seg.caption, ""] for seg in res.segments)
        else:
            ok = res.error is None
            rows.append([res.source, "0.000" if ok else "", f"{res.duration:.3f}" if ok else "", res.caption or "",
                         res.error or ""])
    return csv_text(["file_path", "start", "end", "caption", "error"], rows, lineterminator="\n")
