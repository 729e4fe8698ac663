"""Captioning results as files: CSV (one row per caption or window) or JSON lines, and the part
files of collection captioning (:mod:`captioning.collection`): one JSON line per result, lossless,
so that results merged from parts print exactly as results captioned in one go."""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Sequence, Tuple

from common.io import atomic_write_text, csv_text, numbered_files

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
            record = {"file_path": res.source, "caption": res.caption, "duration": round(res.duration, 3),
                      "start": round(res.start, 3), "end": round(res.end, 3)}
            if res.segments:
                record["segments"] = [
                    {"start": round(s.start, 3), "end": round(s.end, 3), "caption": s.caption} for s in res.segments
                ]
            record["truncated"] = res.truncated
            record["error"] = res.error
            record["warning"] = res.warning
            lines.append(json.dumps(record, ensure_ascii=False))
        return "\n".join(lines) + "\n"
    rows = []
    for res in results:
        # start/end: the span captioned (a truncated clip ends where the model stopped reading).
        warning = res.warning or ""
        if res.segments:
            rows.extend([res.source, f"{seg.start:.3f}", f"{seg.end:.3f}", seg.caption, "false", "", warning]
                        for seg in res.segments)
        else:
            ok = res.error is None
            rows.append([res.source, f"{res.start:.3f}" if ok else "", f"{res.end:.3f}" if ok else "",
                         res.caption or "", str(res.truncated).lower() if ok else "", res.error or "", warning])
    return csv_text(["file_path", "start", "end", "caption", "truncated", "error", "warning"], rows,
                    lineterminator="\n")


# --------------------------------------------------------------------------- part files

#: ``<prefix>.<seq>-<clips>.jsonl``: the clip count in the name lets progress be counted from a listing.
PART_NAME = re.compile(r"^(?P<prefix>[^.]+)\.(?P<seq>\d{6})-(?P<clips>\d+)\.jsonl$")


def result_to_json(res) -> dict:
    """A :class:`captioning.pipeline.CaptionResult` as a JSON-able dict (floats kept exact)."""
    return {"source": res.source, "caption": res.caption, "duration": res.duration, "truncated": res.truncated,
            "error": res.error, "segments": [[s.start, s.end, s.caption] for s in res.segments],
            "start": res.start, "end": res.end, "warning": res.warning}


def result_from_json(record: dict):
    """The inverse of :func:`result_to_json`."""
    from captioning.pipeline import CaptionResult, Segment

    return CaptionResult(source=record["source"], caption=record["caption"], duration=record["duration"],
                         truncated=record["truncated"], error=record["error"],
                         segments=[Segment(start=a, end=b, caption=c) for a, b, c in record["segments"]],
                         start=record.get("start", 0.0), end=record.get("end", record["duration"]),
                         warning=record.get("warning"))


def part_files(folder: str) -> List[Tuple[str, str, int, int]]:
    """``(name, prefix, seq, clips)`` of every part file in ``folder``, sorted by name."""
    return [(name, match["prefix"], int(match["seq"]), int(match["clips"]))
            for name, match in numbered_files(folder, PART_NAME)]


def write_part(folder: str, prefix: str, seq: int, results: Sequence) -> str:
    """Writes one chunk of results as a part file, atomically; returns its path."""
    path = os.path.join(folder, f"{prefix}.{seq:06d}-{len(results)}.jsonl")
    atomic_write_text(path, "".join(json.dumps(result_to_json(r), ensure_ascii=False) + "\n" for r in results))
    return path


def read_parts(folder: str) -> Dict[str, object]:
    """Every result in the part files of ``folder``, by source; a caption wins over an error.

    Parts are read in name order; for an input captioned more than once (a rerun after a failure
    was fixed) the last successful result is kept, else the last error.
    """
    results: Dict[str, object] = {}
    for name, *_ in part_files(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            for line in handle:
                res = result_from_json(json.loads(line))
                old = results.get(res.source)
                if old is None or res.error is None or old.error is not None:
                    results[res.source] = res
    return results


def merge_results(sources: Iterable[str], found: Dict[str, object]) -> list:
    """The results of ``sources`` in that order, from :func:`read_parts` output.

    Raises:
        KeyError: a source has no result (the collection is not complete).
    """
    return [found[source] for source in sources]
