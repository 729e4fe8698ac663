"""Write the train/valid/test CSVs of design §5: from your own ``file,caption`` table, or from the
official AudioCaps / Clotho metadata.

Output format (what `data/training/dataset.py` reads):

* ``train.csv``: ``file_path,caption``, one row per audio-caption pair;
* ``valid.csv`` / ``test.csv``: ``file_path,caption_1,...,caption_5``, one row per clip.

``file_path`` is relative to the feature roots written by ``data/preprocess.py`` and ends in
``.npy``. Because preprocessing mirrors the audio tree, the default names follow the folder
layout that `aac-datasets <https://github.com/Labbeti/aac-datasets>`_ downloads:

* AudioCaps: ``AUDIOCAPS/audio_32000Hz/{train,val,test}/{youtube_id}_{start_time}.flac``
  -> ``train/{youtube_id}_{start_time}.npy`` (``--file_format`` and ``--split_dirs`` change it;
  the CSVs shipped with the original EnCLAP code used ``{train,valid,test}/Y{youtube_id}.npy``).
* Clotho v2.1: ``CLOTHO_v2.1/clotho_audio_files/{development,validation,evaluation}/NAME.wav``
  -> ``development/NAME.npy``.

Usage::

    # your own recordings: AUDIO/ plus captions.csv with rows "file,caption" (file relative to AUDIO)
    python data/make_csv.py own --audio_dir AUDIO --captions captions.csv --out_dir csv/mine
    python data/make_csv.py audiocaps --metadata_dir AUDIOCAPS --out_dir csv/audiocaps
    python data/make_csv.py clotho --metadata_dir CLOTHO_v2.1/clotho_csv_files --out_dir csv/clotho
    python data/make_csv.py check csv/clotho/*.csv --encodec_path F/encodec --clap_path F/clap

``own`` splits the clips (not the rows) by ``--split 0.8,0.1,0.1`` with ``--seed``, or by a
column (``--split_column split``, values train/valid/test); see :mod:`data.corpora.own_split`. Add
``--encodec_path/--clap_path`` with ``--check`` (report missing feature files, exit 1) or
``--drop_missing`` (leave out clips whose features are missing, e.g. AudioCaps videos that
could not be downloaded) to the first three forms.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a file: import from the repository root, not data/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from common.errors import UserError  # noqa: E402
from common.io import write_csv  # noqa: E402
from data.corpora.own_split import (own_tables, parse_ratios, read_caption_table, split_by_ratio,  # noqa: E402
                            uncaptioned_audio)

NUM_REFERENCES = 5  # design §5: caption_1 ... caption_5 in valid/test

# Official metadata names -> our split names.
AUDIOCAPS_FILES = {"train": "train.csv", "valid": "val.csv", "test": "test.csv"}
CLOTHO_FILES = {
    "train": "clotho_captions_development.csv",
    "valid": "clotho_captions_validation.csv",
    "test": "clotho_captions_evaluation.csv",
}
AUDIOCAPS_SPLIT_DIRS = "train,val,test"  # aac-datasets' audio folders
CLOTHO_SPLIT_DIRS = "development,validation,evaluation"  # Clotho's (and aac-datasets') folders
AUDIOCAPS_FILE_FORMAT = "{split_dir}/{youtube_id}_{start_time}.npy"
CLOTHO_FILE_FORMAT = "{split_dir}/{stem}.npy"


class MetadataError(UserError):
    """A user-fixable problem with the metadata files (missing file or column)."""


# --------------------------------------------------------------------------- reading


def read_rows(path: Path, required: Sequence[str]) -> List[Dict[str, str]]:
    """Reads a metadata CSV into dicts and checks that the needed columns are there.

    Args:
        path: the CSV file.
        required: column names that must be present.

    Returns:
        One dict per data row.

    Raises:
        MetadataError: the file is missing or lacks a required column.
    """
    if not path.is_file():
        raise MetadataError(f"metadata file not found: {path} (download the dataset metadata; see docs/data.md)")
    # utf-8-sig: tolerate a byte-order mark, which spreadsheet exports add.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise MetadataError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
        return list(reader)


def _parse_split_dirs(text: str) -> Dict[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise MetadataError(f"--split_dirs must name three folders (train,valid,test), got {text!r}")
    return dict(zip(("train", "valid", "test"), parts))


# --------------------------------------------------------------------------- building


def group_references(items: Sequence[Tuple[str, str]]) -> List[Tuple[str, List[str]]]:
    """Groups (file_path, caption) pairs by clip, keeping first-appearance order.

    Args:
        items: pairs in metadata order.

    Returns:
        ``[(file_path, [captions...]), ...]``.
    """
    grouped: Dict[str, List[str]] = {}
    for file_path, caption in items:
        grouped.setdefault(file_path, []).append(caption)
    return list(grouped.items())


def audiocaps_tables(
    metadata_dir: Path, split_dirs: str = AUDIOCAPS_SPLIT_DIRS, file_format: str = AUDIOCAPS_FILE_FORMAT
) -> Dict[str, list]:
    """Builds the three AudioCaps tables from ``train.csv``, ``val.csv``, ``test.csv``.

    Args:
        metadata_dir: folder holding the official AudioCaps CSVs (columns audiocap_id,
            youtube_id, start_time, caption), e.g. aac-datasets' ``AUDIOCAPS`` folder.
        split_dirs: comma-separated feature sub-folders for train, valid, test.
        file_format: ``str.format`` template of ``file_path``; fields ``split_dir``,
            ``youtube_id``, ``start_time``, ``audiocap_id``.

    Returns:
        ``{"train": [(file_path, caption), ...], "valid": [(file_path, [captions]), ...], "test": ...}``.
    """
    dirs = _parse_split_dirs(split_dirs)
    tables: Dict[str, list] = {}
    for split, name in AUDIOCAPS_FILES.items():
        rows = read_rows(metadata_dir / name, ("audiocap_id", "youtube_id", "start_time", "caption"))
        pairs = []
        for row in rows:
            # aac-datasets writes start_time as an integer; some mirrors say "30.0".
            start = row["start_time"].strip()
            start = str(int(float(start))) if start else start
            fields = dict(split_dir=dirs[split], youtube_id=row["youtube_id"].strip(), start_time=start,
                          audiocap_id=row["audiocap_id"].strip())
            pairs.append((_format_path(file_format, fields), row["caption"].strip()))
        tables[split] = pairs if split == "train" else group_references(pairs)
    return tables


def clotho_tables(
    metadata_dir: Path, split_dirs: str = CLOTHO_SPLIT_DIRS, file_format: str = CLOTHO_FILE_FORMAT
) -> Dict[str, list]:
    """Builds the three Clotho tables from ``clotho_captions_{development,validation,evaluation}.csv``.

    Args:
        metadata_dir: folder holding the Clotho caption CSVs (columns file_name, caption_1..5).
        split_dirs: comma-separated feature sub-folders for train, valid, test.
        file_format: ``str.format`` template of ``file_path``; fields ``split_dir``,
            ``file_name`` and ``stem`` (file_name without its extension).

    Returns:
        Same structure as :func:`audiocaps_tables`; train has 5 rows per clip.
    """
    dirs = _parse_split_dirs(split_dirs)
    caption_cols = [f"caption_{i}" for i in range(1, NUM_REFERENCES + 1)]
    tables: Dict[str, list] = {}
    for split, name in CLOTHO_FILES.items():
        rows = read_rows(metadata_dir / name, ["file_name", *caption_cols])
        clips = []
        for row in rows:
            fields = dict(split_dir=dirs[split], file_name=row["file_name"], stem=Path(row["file_name"]).stem)
            clips.append((_format_path(file_format, fields), [row[c].strip() for c in caption_cols]))
        if split == "train":
            tables[split] = [(fp, cap) for fp, caps in clips for cap in caps]
        else:
            tables[split] = clips
    return tables


def _format_path(file_format: str, fields: Dict[str, str]) -> str:
    try:
        path = file_format.format(**fields)
    except KeyError as err:
        raise MetadataError(f"--file_format uses unknown field {err}; available: {', '.join(fields)}") from None
    if not path.endswith(".npy"):
        raise MetadataError(f"--file_format must produce a path ending in .npy, got {path!r}")
    return path


# --------------------------------------------------------------------------- writing


def write_tables(tables: Dict[str, list], out_dir: Path, pad_to: int = NUM_REFERENCES) -> Dict[str, Path]:
    """Writes ``train.csv``, ``valid.csv`` and ``test.csv`` (atomically) in design §5 format.

    Args:
        tables: output of :func:`audiocaps_tables` / :func:`clotho_tables` / ``own_tables``.
        out_dir: destination folder (created).
        pad_to: at least this many ``caption_N`` columns; clips with fewer references get empty
            cells, with a warning when ``pad_to`` is the datasets' five (one to five references
            are all valid, design §5).

    Returns:
        ``{split: path}`` of the files written.
    """
    written = {}
    for split, table in tables.items():
        path = out_dir / f"{split}.csv"
        if split == "train":
            write_csv(path, ["file_path", "caption"], [[fp, cap] for fp, cap in table])
        else:
            width = max([pad_to] + [len(caps) for _, caps in table])
            short = sum(len(caps) < width for _, caps in table)
            if short and pad_to == NUM_REFERENCES:
                print(f"warning: {split}: {short} clip(s) have fewer than {width} captions; cells left empty",
                      file=sys.stderr)
            header = ["file_path"] + [f"caption_{i}" for i in range(1, width + 1)]
            rows = [[fp] + caps + [""] * (width - len(caps)) for fp, caps in table]
            write_csv(path, header, rows)
        written[split] = path
    return written


# --------------------------------------------------------------------------- checking


def missing_features(file_paths: Sequence[str], roots: Sequence[Path]) -> List[str]:
    """Lists the feature files that do not exist under every given root.

    Args:
        file_paths: relative ``.npy`` paths from a CSV.
        roots: feature roots (``encodec_base_path``, ``clap_base_path``).

    Returns:
        ``"ROOT/file_path"`` strings, one per missing file, in CSV order.
    """
    sources = _feature_sources(roots)
    return [source.describe(fp) for fp in dict.fromkeys(file_paths) for source in sources  # unique, in order
            if not source.exists(fp)]


def _feature_sources(roots: Sequence[Path]) -> list:
    """One reader per feature root: a per-file tree or a packed store (``data.extraction.store``)."""
    from data.extraction.store import StoreError, open_source

    try:
        return [open_source(root, None) for root in roots]
    except StoreError as err:
        raise MetadataError(str(err)) from None


def csv_file_paths(path: Path) -> List[str]:
    """Reads the ``file_path`` column of a design §5 CSV."""
    return [row["file_path"] for row in read_rows(path, ["file_path"])]


def drop_missing(tables: Dict[str, list], roots: Sequence[Path]) -> Dict[str, int]:
    """Removes, in place, rows whose features are missing under any root.

    Args:
        tables: output of :func:`audiocaps_tables` / :func:`clotho_tables`.
        roots: feature roots (per-file trees or packed stores).

    Returns:
        ``{split: number of clips dropped}``.
    """
    sources = _feature_sources(roots)
    dropped = {}
    for split, table in tables.items():
        missing_clips = {fp for fp, _ in table if any(not source.exists(fp) for source in sources)}
        tables[split] = [row for row in table if row[0] not in missing_clips]
        dropped[split] = len(missing_clips)
    return dropped


def report_missing(label: str, missing: List[str], limit: int = 20) -> None:
    """Prints the missing feature files (at most ``limit``, then a count) to stderr."""
    for path in missing[:limit]:
        print(f"missing: {path}", file=sys.stderr)
    if len(missing) > limit:
        print(f"... and {len(missing) - limit} more", file=sys.stderr)
    print(f"{label}: {len(missing)} feature file(s) missing", file=sys.stderr)


def own_data_tables(args: argparse.Namespace) -> Dict[str, list]:
    """The tables of the ``own`` command: read the table, split the clips, report what is left out."""
    clips, splits, empty = read_caption_table(args.captions, args.audio_dir, args.file_column, args.caption_column,
                                              args.split_column)
    if not args.split_column:
        splits = split_by_ratio(list(clips), parse_ratios(args.split), args.seed)
    if empty:
        print(f"warning: {empty} row(s) of {args.captions.absolute()} have an empty caption; left out", file=sys.stderr)
    left_out = uncaptioned_audio(args.audio_dir, clips)
    if left_out:
        print(f"warning: {len(left_out)} audio file(s) under {args.audio_dir.absolute()} have no caption in the table "
              f"and are left out: {', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''}", file=sys.stderr)
    tables = own_tables(clips, splits)
    for split in ("train", "valid"):
        if not tables[split]:
            print(f"warning: no clip went to {split} ({len(clips)} clips in all); training needs both train and "
                  "valid: add clips or change --split", file=sys.stderr)
    return tables


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``data/make_csv.py`` (sub-commands audiocaps, clotho, check)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_feature_roots(p: argparse.ArgumentParser, modes: bool = True) -> None:
        p.add_argument("--encodec_path", type=Path, help="root of the EnCodec .npy tree (from data/preprocess.py)")
        p.add_argument("--clap_path", type=Path, help="root of the CLAP .npy tree (from data/preprocess.py)")
        if modes:  # the table-writing commands: what to do about missing feature files
            mode = p.add_mutually_exclusive_group()
            mode.add_argument("--check", action="store_true",
                              help="after writing, list feature files missing under the roots; exit 1 if any")
            mode.add_argument("--drop_missing", action="store_true",
                              help="leave out clips whose feature files are missing under the roots")

    for name, dirs, fmt, meta_help in (
        ("audiocaps", AUDIOCAPS_SPLIT_DIRS, AUDIOCAPS_FILE_FORMAT,
         "folder with AudioCaps train.csv, val.csv, test.csv (e.g. aac-datasets' AUDIOCAPS)"),
        ("clotho", CLOTHO_SPLIT_DIRS, CLOTHO_FILE_FORMAT,
         "folder with clotho_captions_{development,validation,evaluation}.csv (CLOTHO_v2.1/clotho_csv_files)"),
    ):
        p = sub.add_parser(name, help=f"write {name} train/valid/test CSVs",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--metadata_dir", type=Path, required=True, help=meta_help)
        p.add_argument("--out_dir", type=Path, required=True, help="where train.csv, valid.csv, test.csv go")
        p.add_argument("--split_dirs", default=dirs, help="feature sub-folders for train,valid,test")
        p.add_argument("--file_format", default=fmt, help="template of file_path (see module docstring)")
        add_feature_roots(p)

    p = sub.add_parser("own", help="write train/valid/test CSVs for your own audio folder and caption table",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--audio_dir", type=Path, required=True, help="folder of your audio files (preprocess's --data_path)")
    p.add_argument("--captions", type=Path, required=True,
                   help="CSV with a header and rows file,caption (file relative to --audio_dir; one row per caption)")
    p.add_argument("--out_dir", type=Path, required=True, help="where train.csv, valid.csv, test.csv go")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,valid,test ratios of the clips (seeded shuffle)")
    p.add_argument("--split_column", default=None, help="column of the table holding train/valid/test instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle behind --split")
    p.add_argument("--file_column", default="file", help="column naming the audio file")
    p.add_argument("--caption_column", default="caption", help="column holding the caption")
    add_feature_roots(p)

    p = sub.add_parser("check", help="check that every file_path of existing CSVs has its feature files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("csv", type=Path, nargs="+", help="CSV files in design §5 format")
    add_feature_roots(p, modes=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    roots = [r for r in (args.encodec_path, args.clap_path) if r is not None]
    needs_roots = args.command == "check" or args.check or args.drop_missing
    if needs_roots and not roots:
        print("error: give --encodec_path and/or --clap_path (the feature roots) to check against", file=sys.stderr)
        return 2
    for root in roots:
        if needs_roots and not root.is_dir():
            print(f"error: feature root not found: {root} (run data/preprocess.py first)", file=sys.stderr)
            return 2
    try:
        if args.command == "check":
            status = 0
            for path in args.csv:
                missing = missing_features(csv_file_paths(path), roots)
                if missing:
                    report_missing(str(path), missing)
                    status = 1
                else:
                    print(f"{path}: all feature files present")
            return status

        if args.command == "own":
            tables = own_data_tables(args)
        else:
            build = audiocaps_tables if args.command == "audiocaps" else clotho_tables
            tables = build(args.metadata_dir, args.split_dirs, args.file_format)
        if args.drop_missing:
            for split, n in drop_missing(tables, roots).items():
                if n:
                    print(f"{split}: dropped {n} clip(s) without feature files", file=sys.stderr)
        written = write_tables(tables, args.out_dir, pad_to=1 if args.command == "own" else NUM_REFERENCES)
        for split, path in written.items():
            clips = len({row[0] for row in tables[split]})
            print(f"wrote {path.absolute()} ({len(tables[split])} rows, {clips} clips)")
        if args.check:
            status = 0
            for split, table in tables.items():
                missing = missing_features([fp for fp, _ in table], roots)
                if missing:
                    report_missing(str(written[split]), missing)
                    status = 1
            return status
        return 0
    except UserError as err:  # MetadataError, OwnDataError
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
