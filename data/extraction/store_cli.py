"""The command line of the packed feature store: ``python -m data.extraction.store_cli pack|index|info``.

* ``pack --encodec_path E --clap_path C --out STORE``: converts per-file trees into a packed store
  (resumable: a rerun packs only what is missing);
* ``index STORE``: (re)builds ``index.json`` from the committed shards;
* ``info STORE``: what a store holds.

The store itself is :mod:`data.extraction.store`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a file: import from the repository root, not data/extraction/
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import numpy as np

from data.extraction.store import (DEFAULT_SHARD_CLIPS, INDEX_NAME, PackedStore, PackedWriter, StoreError, build_index,
                        done_files, finish_share, start_share)


def pack_trees(encodec_root: str, clap_root: str, out: str, shard_clips: int = DEFAULT_SHARD_CLIPS,
               progress: bool = True) -> Tuple[int, int]:
    """Converts per-file trees into a packed store (resumable); returns ``(packed now, already there)``.

    Every ``.npy`` under ``encodec_root`` is taken, with the embedding of the same relative name.

    Raises:
        StoreError: a root is missing, or an embedding is missing for some codes file.
    """
    from tqdm import tqdm

    for root in (encodec_root, clap_root):
        if not os.path.isdir(root):
            raise StoreError(f"feature tree not found: {os.path.abspath(root)}")
    names = sorted(p.relative_to(encodec_root).as_posix() for p in Path(encodec_root).rglob("*.npy"))
    missing = [n for n in names if not os.path.isfile(os.path.join(clap_root, n))]
    if missing:
        raise StoreError(f"{len(missing)} codes file(s) have no embedding under {os.path.abspath(clap_root)}, "
                         f"e.g. {missing[0]} (preprocess them first)")
    done = done_files(out) if os.path.isdir(out) else {}
    todo = [n for n in names if n not in done]
    start_share(out, 0, 1)
    writer = PackedWriter(out, "pack", shard_clips=shard_clips)
    for name in tqdm(todo, desc="packing", unit="clip", disable=not progress or not todo):
        writer.add(name, np.load(os.path.join(encodec_root, name)), np.load(os.path.join(clap_root, name)))
    writer.flush()
    finish_share(out, 0, 1)
    return len(todo), len(names) - len(todo)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m data.extraction.store_cli pack|index|info``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m data.extraction.store_cli", description="Packed feature stores (docs/data.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="convert per-file .npy trees into a packed store (resumable)")
    p.add_argument("--encodec_path", required=True, help="root of the codes tree")
    p.add_argument("--clap_path", required=True, help="root of the CLAP embeddings tree")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--shard_clips", type=int, default=DEFAULT_SHARD_CLIPS, help="clips per shard")
    p = sub.add_parser("index", help="(re)build index.json from the committed shards")
    p.add_argument("store")
    p = sub.add_parser("info", help="print what a store holds")
    p.add_argument("store")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            packed, present = pack_trees(args.encodec_path, args.clap_path, args.out, args.shard_clips)
            print(f"packed {packed} clip(s) into {args.out} ({present} already there)")
        elif args.command == "index":
            print(f"indexed {build_index(args.store)} clip(s) in {os.path.join(args.store, INDEX_NAME)}")
        else:
            store = PackedStore(args.store)
            print(f"{args.store}: {len(store)} clip(s), {len(store.shards)} shard(s), holds {', '.join(store.kinds)}")
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
