"""Split files for your own recordings: an audio folder plus a ``file,caption`` table -> design §5 tables.

The table is a CSV with a header. Each row names one audio file (relative to the audio folder,
with its extension, e.g. ``dogs/bark1.wav``) and one caption; several rows for one file give
that clip several references (one to five is the usual range, design §5). An optional column
(``split`` by default) assigns clips to ``train`` / ``valid`` / ``test``; without it the clips
are shuffled with a seed and cut by ratio. Clips, not rows, are split, so the references of a
clip never land in two splits.

``file_path`` in the tables is the audio path with its extension replaced by ``.npy``: exactly
what ``data/preprocess.py --data_path AUDIO`` writes under each feature root. ``data/make_csv.py
own`` is the command; this module holds the logic.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from common.errors import UserError
from data.extraction.audio import AUDIO_EXTENSIONS, find_audio_files

SPLITS = ("train", "valid", "test")
#: Values accepted in the split column (lower-cased) -> our split names.
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "train", "development": "train",
                 "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test", "eval": "test", "evaluation": "test"}


class OwnDataError(UserError):
    """A problem with the caption table or the audio folder; one line naming the file and the fix."""


def parse_ratios(text: str) -> Tuple[float, float, float]:
    """Parses ``--split 0.8,0.1,0.1`` (train, valid, test; normalised to sum 1).

    Raises:
        OwnDataError: not three non-negative numbers, or no training share.
    """
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0:
        raise OwnDataError(f"--split must be three ratios train,valid,test with train > 0 (e.g. 0.8,0.1,0.1), "
                           f"got {text!r}")
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def read_caption_table(path: Path, audio_dir: Path, file_column: str = "file", caption_column: str = "caption",
                       split_column: Optional[str] = None) -> Tuple[Dict[str, List[str]], Dict[str, str], int]:
    """Reads the ``file,caption`` table and checks every named audio file exists.

    Args:
        path: the table (CSV with a header).
        audio_dir: the folder the ``file`` column is relative to.
        file_column, caption_column: column names.
        split_column: the column assigning clips to splits, or None.

    Returns:
        ``({audio path: [captions]} in first-appearance order, {audio path: split}, rows skipped
        for an empty caption)``; audio paths are POSIX, relative to ``audio_dir``.

    Raises:
        OwnDataError: missing table or column, audio files that do not exist, unknown or
            conflicting split values, no captions at all.
    """
    path, audio_dir = Path(path).absolute(), Path(audio_dir).absolute()
    if not path.is_file():
        raise OwnDataError(f"caption table not found: {path} (a CSV with columns {file_column},{caption_column})")
    if not audio_dir.is_dir():
        raise OwnDataError(f"audio folder not found: {audio_dir} (--audio_dir)")
    with open(path, newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: spreadsheet exports add a BOM
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        needed = [file_column, caption_column] + ([split_column] if split_column else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise OwnDataError(f"{path} has no column {', '.join(missing)} (columns: {', '.join(header) or 'none'}); "
                               "set --file_column / --caption_column / --split_column")
        rows = list(reader)
    clips: Dict[str, List[str]] = {}
    splits: Dict[str, str] = {}
    empty = 0
    for line, row in enumerate(rows, start=2):
        name = (row.get(file_column) or "").strip()
        if not name:
            raise OwnDataError(f"{path} line {line}: empty {file_column}")
        rel = _relative_audio_path(name, audio_dir, path, line)
        caption = " ".join((row.get(caption_column) or "").split())  # one line, single spaces
        if not caption:
            empty += 1
            continue
        clips.setdefault(rel, []).append(caption)
        if split_column:
            value = (row.get(split_column) or "").strip().lower()
            split = SPLIT_ALIASES.get(value)
            if split is None:
                raise OwnDataError(f"{path} line {line}: {split_column}={value!r}; use train, valid or test")
            if splits.setdefault(rel, split) != split:
                raise OwnDataError(f"{path} line {line}: {rel} is in both {splits[rel]} and {split}; "
                                   "a clip belongs to one split")
    absent = [rel for rel in clips if not (audio_dir / rel).is_file()]
    if absent:
        shown = ", ".join(str(audio_dir / rel) for rel in absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise OwnDataError(f"{len(absent)} audio file(s) named in {path} do not exist: {shown} "
                           f"(the {file_column} column is relative to --audio_dir {audio_dir})")
    if not clips:
        raise OwnDataError(f"{path} has no rows with a caption")
    return clips, splits, empty


def _relative_audio_path(name: str, audio_dir: Path, table: Path, line: int) -> str:
    """The table's file name as a POSIX path relative to ``audio_dir`` (absolute names inside it allowed)."""
    candidate = Path(name)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(audio_dir)
        except ValueError:
            raise OwnDataError(f"{table} line {line}: {name} is not inside --audio_dir {audio_dir}") from None
    rel = PurePosixPath(*candidate.parts)
    if ".." in rel.parts:
        raise OwnDataError(f"{table} line {line}: {name} leaves --audio_dir ({audio_dir})")
    if rel.suffix.lower() not in AUDIO_EXTENSIONS:
        raise OwnDataError(f"{table} line {line}: {name} has no audio extension ({', '.join(AUDIO_EXTENSIONS)}); "
                           "write the file name with its extension")
    return str(rel)


def split_by_ratio(names: Sequence[str], ratios: Tuple[float, float, float], seed: int) -> Dict[str, str]:
    """Assigns clips to splits: a seeded shuffle cut by ``ratios``.

    A split with a non-zero ratio gets at least one clip while the training split keeps at
    least one, so a handful of clips still gives three usable files.

    Args:
        names: the clips.
        ratios: train, valid, test shares (sum 1).
        seed: the shuffle's seed; the same table and seed always give the same split.

    Returns:
        ``{clip: split}``.
    """
    order = sorted(names)  # the table's row order does not change the draw
    random.Random(seed).shuffle(order)
    n = len(order)
    counts = {}
    for split, ratio in zip(SPLITS[1:], ratios[1:]):
        counts[split] = max(1, round(ratio * n)) if ratio > 0 else 0
    while counts["valid"] + counts["test"] > n - 1 and counts["valid"] + counts["test"] > 0:
        bigger = "valid" if counts["valid"] >= counts["test"] else "test"  # give clips back to training
        counts[bigger] -= 1
    out = {}
    for index, name in enumerate(order):
        out[name] = "valid" if index < counts["valid"] else "test" if index < counts["valid"] + counts["test"] \
            else "train"
    return out


def own_tables(clips: Dict[str, List[str]], splits: Dict[str, str]) -> Dict[str, list]:
    """The three design §5 tables (same structure as ``make_csv.audiocaps_tables``).

    Args:
        clips: ``{audio path: [captions]}``.
        splits: ``{audio path: split}`` for every clip.

    Returns:
        ``{"train": [(file_path, caption), ...], "valid": [(file_path, [captions]), ...], "test": ...}``
        with ``file_path`` the audio path with ``.npy`` for its extension, in table order.
    """
    tables: Dict[str, list] = {split: [] for split in SPLITS}
    owner: Dict[str, str] = {}
    for rel, captions in clips.items():
        file_path = str(PurePosixPath(rel).with_suffix(".npy"))
        if owner.setdefault(file_path, rel) != rel:  # preprocessing would refuse them too
            raise OwnDataError(f"{owner[file_path]} and {rel} would share the feature file {file_path}; "
                               "rename one of them")
        split = splits[rel]
        if split == "train":
            tables["train"].extend((file_path, caption) for caption in captions)
        else:
            tables[split].append((file_path, list(captions)))
    return tables


def uncaptioned_audio(audio_dir: Path, clips: Dict[str, List[str]]) -> List[str]:
    """Audio files under ``audio_dir`` that the table does not name (left out of every split)."""
    return [rel for rel in find_audio_files(audio_dir) if rel not in clips]
