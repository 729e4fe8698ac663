"""Feature stores: where a split's codes and CLAP embeddings live, in either of two layouts.

* **files** (design §5): one ``.npy`` per clip under each root, ``<root>/<file_path>``.
* **packed**: ``STORE/index.json`` (file_path -> shard, first frame, frames, row) and, per shard,
  ``STORE/shards/<name>.codes.npy`` ((sum of T, 16) int16), ``<name>.clap.npy`` ((clips, 512)
  float32) and ``<name>.json`` (its clip list, written last: the shard's commit mark).

Plain ``.npy`` shards with an offsets index because numpy memory-maps them by itself (a clip is a
slice of an open map: no file opened per clip), they stay readable with numpy alone, and no
dependency is added (docs/data.md, "Packed feature store", has the comparison). Codes are kept
as int16 (all below 1024) and handed out as int64 like the per-file layout's.

:class:`PackedWriter` writes one process's shards, each atomically (:mod:`common.io`); the share
that finishes last writes the index (:func:`finish_share`). :class:`FeatureStore` reads a CSV's
``file_path`` from two roots of either layout. ``python -m data.extraction.store_cli pack|index|info`` converts
per-file trees, rebuilds an index, describes a store.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError
from common.io import atomic_open, atomic_write_text, next_number, numbered_files

INDEX_NAME = "index.json"
SHARDS_DIR = "shards"
FORMAT = "enclap-packed-features"
VERSION = 1
KINDS = ("codes", "clap")
LAYOUTS = ("auto", "files", "packed")
CODES_DTYPE = np.int16
#: Clips per shard by default: a killed run loses at most this many clips of work per process,
#: and a 400 000-clip corpus of 10 s clips makes about 400 shards of ~27 MB.
DEFAULT_SHARD_CLIPS = 1024

_SHARD_JSON = re.compile(r"^(?P<prefix>.+)\.(?P<seq>\d{6})\.json$")


class StoreError(UserError):
    """A feature store that is missing, unfinished or malformed; one line naming it and the fix."""


def is_packed(root: str | os.PathLike) -> bool:
    """Whether ``root`` is (or is becoming) a packed store: it has ``index.json`` or ``shards/``."""
    return os.path.isfile(os.path.join(root, INDEX_NAME)) or os.path.isdir(os.path.join(root, SHARDS_DIR))


# --------------------------------------------------------------------------- reading


class TreeSource:
    """One kind of feature as one ``.npy`` per clip under ``root`` (design §5)."""

    layout = "files"

    def __init__(self, root: str | os.PathLike, kind: str):
        """Args:
            root: the tree's root folder.
            kind: ``codes`` or ``clap`` (for messages only).
        """
        self.root = os.fspath(root)
        self.kind = kind

    def describe(self, file_path: str) -> str:
        """The file that holds ``file_path`` (for messages)."""
        return os.path.join(self.root, file_path)

    def exists(self, file_path: str) -> bool:
        return os.path.isfile(self.describe(file_path))

    def load(self, file_path: str) -> np.ndarray:
        """Memory-maps the clip's array (only the pages a caller touches are read)."""
        path = self.describe(file_path)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"feature file not found: {path} (run data/preprocess.py for this split, "
                             "or fix encodec_root/clap_root)") from None
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read feature file {path}: {error} (re-run data/preprocess.py)") from None

    def frames(self, file_path: str) -> int:
        """Frames of a codes file, from its header."""
        return int(self.load(file_path).shape[0])


class PackedStore:
    """A packed store opened for reading: the index in memory, shards memory-mapped on first use.

    Args:
        root: the store folder (holding ``index.json``).

    Raises:
        StoreError: no index (unfinished preprocessing), or an index of another format.
    """

    layout = "packed"

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        path = os.path.join(self.root, INDEX_NAME)
        if not os.path.isdir(self.root):
            raise StoreError(f"packed feature store not found: {os.path.abspath(self.root)} (check the path, or "
                             "write it with data/preprocess.py --pack)")
        if not os.path.isfile(path) and not os.path.isdir(os.path.join(self.root, SHARDS_DIR)):
            raise StoreError(f"{os.path.abspath(self.root)} is not a packed feature store (no {INDEX_NAME}); write one "
                             "with data/preprocess.py --pack or python -m data.extraction.store_cli pack, or read it as files")
        if not os.path.isfile(path):
            raise StoreError(f"packed feature store {os.path.abspath(self.root)} has no {INDEX_NAME}: preprocessing "
                             f"is unfinished (rerun it) or run `python -m data.extraction.store_cli index {self.root}`")
        try:
            with open(path, encoding="utf-8") as handle:
                index = json.load(handle)
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot read {os.path.abspath(path)}: {error} "
                             f"(rebuild it: python -m data.extraction.store_cli index {self.root})") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise StoreError(f"{os.path.abspath(path)} is not a version-{VERSION} {FORMAT} index "
                             f"(rebuild it: python -m data.extraction.store_cli index {self.root})")
        self.kinds = tuple(index["kinds"])
        self.shards = [shard["name"] for shard in index["shards"]]
        names: List[Optional[str]] = []
        shard_ids, offsets, frames, rows = [], [], [], []
        for sid, shard in enumerate(index["shards"]):
            lengths = np.asarray(shard["frames"], dtype=np.int64)
            names.extend(shard["files"])
            shard_ids.append(np.full(len(lengths), sid, dtype=np.int64))
            offsets.append(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
            frames.append(lengths)
            rows.append(np.arange(len(lengths), dtype=np.int64))
        # null: a duplicate of a clip indexed from an earlier shard (see build_index).
        self._row: Dict[str, int] = {name: i for i, name in enumerate(names) if name is not None}
        cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        self._shard, self._offset, self._frames, self._clap_row = cat(shard_ids), cat(offsets), cat(frames), cat(rows)
        self._maps: Dict[Tuple[int, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._row)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get a copy without the open maps; they reopen them.
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def file_paths(self) -> List[str]:
        """Every ``file_path`` in the store, in index order."""
        return list(self._row)

    def exists(self, file_path: str) -> bool:
        return file_path in self._row

    def describe(self, file_path: str) -> str:
        return f"{file_path} in the packed store {self.root}"

    def _array(self, shard: int, kind: str) -> np.ndarray:
        key = (shard, kind)
        if key not in self._maps:
            path = os.path.join(self.root, SHARDS_DIR, f"{self.shards[shard]}.{kind}.npy")
            try:
                self._maps[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise StoreError(f"cannot read shard {path}: {error} (re-run the preprocessing that wrote "
                                 f"{self.root}, or rebuild its index)") from None
        return self._maps[key]

    def _entry(self, file_path: str) -> int:
        row = self._row.get(file_path)
        if row is None:
            raise StoreError(f"{file_path} is not in the packed store {os.path.abspath(self.root)} "
                             "(run data/preprocess.py for this split, or fix the feature path)")
        return row

    def codes(self, file_path: str) -> np.ndarray:
        """The clip's codes, (T, 16) int16, a view of the memory-mapped shard."""
        row = self._entry(file_path)
        start = int(self._offset[row])
        return self._array(int(self._shard[row]), "codes")[start:start + int(self._frames[row])]

    def clap(self, file_path: str) -> np.ndarray:
        """The clip's CLAP embedding, (512,) float32, a view of the memory-mapped shard."""
        row = self._entry(file_path)
        return self._array(int(self._shard[row]), "clap")[int(self._clap_row[row])]

    def frames(self, file_path: str) -> int:
        return int(self._frames[self._entry(file_path)])


class PackedSource:
    """One kind of feature of a :class:`PackedStore` (same interface as :class:`TreeSource`)."""

    layout = "packed"

    def __init__(self, store: PackedStore, kind: str):
        if kind not in store.kinds:
            raise StoreError(f"the packed store {os.path.abspath(store.root)} holds no {kind} "
                             f"(it holds {', '.join(store.kinds)}); point the {kind} path elsewhere")
        self.store, self.kind, self.root = store, kind, store.root

    def describe(self, file_path: str) -> str:
        return self.store.describe(file_path)

    def exists(self, file_path: str) -> bool:
        return self.store.exists(file_path)

    def load(self, file_path: str) -> np.ndarray:
        return self.store.codes(file_path) if self.kind == "codes" else self.store.clap(file_path)

    def frames(self, file_path: str) -> int:
        return self.store.frames(file_path)


def open_source(root: str | os.PathLike, kind: Optional[str], layout: str = "auto", _cache: Optional[dict] = None):
    """One kind of feature under ``root``, in whichever layout it is.

    Args:
        root: a per-file tree root or a packed store folder.
        kind: ``codes`` or ``clap``; None for whatever the root holds (existence checks).
        layout: ``auto`` (packed when the folder has ``index.json`` or ``shards/``), ``files`` or ``packed``.
        _cache: shares one opened :class:`PackedStore` between the two kinds of one folder.

    Raises:
        StoreError: an unknown layout, or a packed store that cannot be opened.
    """
    if layout not in LAYOUTS:
        raise StoreError(f"unknown feature layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "files" or (layout == "auto" and not is_packed(root)):
        return TreeSource(root, kind or "features")
    key = os.path.realpath(root)
    cache = {} if _cache is None else _cache
    if key not in cache:
        cache[key] = PackedStore(root)
    return PackedSource(cache[key], kind or cache[key].kinds[0])


class FeatureStore:
    """The codes and CLAP embedding of a CSV ``file_path``, whatever the layout of the two roots.

    Args:
        encodec_root: a codes tree or a packed store.
        clap_root: an embeddings tree or a packed store (may be the same store as ``encodec_root``).
        layout: ``auto``, ``files`` or ``packed`` (applies to both roots).
    """

    def __init__(self, encodec_root: str | os.PathLike, clap_root: str | os.PathLike, layout: str = "auto"):
        cache: dict = {}
        self.codes_source = open_source(encodec_root, "codes", layout, cache)
        self.clap_source = open_source(clap_root, "clap", layout, cache)

    @property
    def layout(self) -> str:
        """``files``, ``packed`` or ``mixed``."""
        kinds = {self.codes_source.layout, self.clap_source.layout}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def load(self, file_path: str) -> Tuple[np.ndarray, np.ndarray, str, str]:
        """``(codes, clap_embedding, codes source, clap source)``: arrays as stored, unchecked."""
        return (self.codes_source.load(file_path), self.clap_source.load(file_path),
                self.codes_source.describe(file_path), self.clap_source.describe(file_path))

    def frames(self, file_path: str) -> int:
        """Frames of the clip's codes (no code is read)."""
        return self.codes_source.frames(file_path)

    def missing(self, file_paths: Iterable[str]) -> List[str]:
        """Where each absent feature should be, for every ``file_path`` (unique, in order)."""
        out = []
        for file_path in dict.fromkeys(file_paths):
            out.extend(src.describe(file_path) for src in (self.codes_source, self.clap_source)
                       if not src.exists(file_path))
        return out


# --------------------------------------------------------------------------- writing


def _shard_names(root: str | os.PathLike) -> List[str]:
    """The name of every committed shard (its ``.json`` written), sorted."""
    return [entry[:-len(".json")] for entry, _ in numbered_files(os.path.join(root, SHARDS_DIR), _SHARD_JSON)]


def _read_shard(root: str | os.PathLike, name: str) -> dict:
    path = os.path.join(root, SHARDS_DIR, name + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot read shard list {os.path.abspath(path)}: {error} (delete that shard's three "
                         "files and rerun: its clips are redone)") from None


def done_files(root: str | os.PathLike) -> Dict[str, int]:
    """``{file_path: frames}`` of every clip in a committed shard (what a resumed run skips)."""
    done: Dict[str, int] = {}
    for name in _shard_names(root):
        shard = _read_shard(root, name)
        for file_path, frames in zip(shard["files"], shard["frames"]):
            done.setdefault(file_path, int(frames))
    return done


class PackedWriter:
    """Appends clips to a packed store, one committed shard per ``shard_clips`` clips.

    Args:
        root: the store folder (created when missing).
        prefix: this writer's shard-name prefix; distinct per process (e.g. ``r00001-of-00004``),
            so that processes never write the same file.
        kinds: what each clip carries: ``codes`` and/or ``clap``.
        shard_clips: clips per shard.
    """

    def __init__(self, root: str | os.PathLike, prefix: str, kinds: Sequence[str] = KINDS,
                 shard_clips: int = DEFAULT_SHARD_CLIPS):
        if shard_clips < 1:
            raise StoreError(f"clips per shard must be >= 1, got {shard_clips}")
        self.root = os.fspath(root)
        self.prefix = prefix
        self.kinds = tuple(kinds)
        self.shard_clips = shard_clips
        os.makedirs(os.path.join(self.root, SHARDS_DIR), exist_ok=True)
        # A shard killed before its .json reuses its sequence number: its arrays are overwritten.
        self._seq = next_number(os.path.join(self.root, SHARDS_DIR), _SHARD_JSON, prefix)
        self._files: List[str] = []
        self._codes: List[np.ndarray] = []
        self._clap: List[np.ndarray] = []
        self.shards_written = 0

    def add(self, file_path: str, codes: Optional[np.ndarray] = None, clap: Optional[np.ndarray] = None) -> None:
        """Buffers one clip; a full buffer becomes a shard.

        Args:
            file_path: the CSV ``file_path`` of the clip (``split/name.npy``).
            codes: (T, 16) integer codes (stored as int16), when the store holds codes.
            clap: (512,) float embedding (stored as float32), when the store holds embeddings.
        """
        if "\n" in file_path:
            raise StoreError(f"file_path {file_path!r} contains a line break; rename the file")
        if "codes" in self.kinds:
            codes = np.asarray(codes)
            if codes.ndim != 2 or codes.shape[0] < 1:
                raise StoreError(f"codes of {file_path} have shape {codes.shape}, expected (T, 16) with T >= 1")
            if codes.size and (codes.min() < np.iinfo(CODES_DTYPE).min or codes.max() > np.iinfo(CODES_DTYPE).max):
                raise StoreError(f"codes of {file_path} do not fit in int16 (min {codes.min()}, max {codes.max()}); "
                                 "EnCodec codes lie in [0, 1024): re-run data/preprocess.py")
            self._codes.append(codes.astype(CODES_DTYPE))
        if "clap" in self.kinds:
            self._clap.append(np.asarray(clap, dtype=np.float32).reshape(-1))
        self._files.append(file_path)
        if len(self._files) >= self.shard_clips:
            self.flush()

    def flush(self) -> Optional[str]:
        """Writes the buffered clips as one shard (arrays first, its ``.json`` last); returns its name."""
        if not self._files:
            return None
        name = f"{self.prefix}.{self._seq:06d}"
        folder = os.path.join(self.root, SHARDS_DIR)
        record = {"files": self._files, "kinds": list(self.kinds)}
        record["frames"] = [len(c) for c in self._codes] if "codes" in self.kinds else [1] * len(self._files)
        try:
            if "codes" in self.kinds:
                with atomic_open(os.path.join(folder, f"{name}.codes.npy"), "wb") as handle:
                    np.save(handle, np.concatenate(self._codes))
            if "clap" in self.kinds:
                with atomic_open(os.path.join(folder, f"{name}.clap.npy"), "wb") as handle:
                    np.save(handle, np.stack(self._clap))
            atomic_write_text(os.path.join(folder, f"{name}.json"), json.dumps(record))
        except OSError as err:  # full disk, read-only folder: every later shard fails too
            raise StoreError(f"cannot write shard {os.path.join(folder, name)}: {err.strerror or err}; check free "
                             "space and permissions (committed shards are kept: rerun to resume)") from None
        self._seq += 1
        self.shards_written += 1
        self._files, self._codes, self._clap = [], [], []
        return name


def build_index(root: str | os.PathLike) -> int:
    """Writes ``index.json`` from every committed shard (atomically); returns the number of clips.

    A ``file_path`` found in two shards (a rerun with another number of processes) is taken
    from the first shard in name order.

    Raises:
        StoreError: no shard, shards of different kinds, or a shard whose arrays do not match its list.
    """
    shards, seen, kinds = [], set(), None
    num_rvq, clap_dim = 16, 512
    for name in _shard_names(root):
        record = _read_shard(root, name)
        if kinds is None:
            kinds = record["kinds"]
        elif record["kinds"] != kinds:
            raise StoreError(f"shard {name} of {os.path.abspath(root)} holds {record['kinds']}, others hold {kinds}: "
                             "one store, one set of kinds (write the other kinds to another store)")
        arrays = {k: np.load(os.path.join(root, SHARDS_DIR, f"{name}.{k}.npy"), mmap_mode="r") for k in kinds}
        if "codes" in arrays:
            num_rvq = int(arrays["codes"].shape[1])
            if arrays["codes"].shape[0] != sum(record["frames"]):
                raise StoreError(f"shard {name} of {os.path.abspath(root)}: codes rows do not match its list "
                                 "(delete the shard's files and rerun)")
        if "clap" in arrays:
            clap_dim = int(arrays["clap"].shape[1])
            if arrays["clap"].shape[0] != len(record["files"]):
                raise StoreError(f"shard {name} of {os.path.abspath(root)}: embedding rows do not match its list "
                                 "(delete the shard's files and rerun)")
        # Rows are addressed by position, so a clip already indexed from an earlier shard keeps
        # its place here as null (its frames still count towards the offsets).
        files = []
        for file_path in record["files"]:
            files.append(None if file_path in seen else file_path)
            seen.add(file_path)
        shards.append({"name": name, "files": files, "frames": record["frames"]})
    if kinds is None:
        raise StoreError(f"no committed shard under {os.path.abspath(os.path.join(root, SHARDS_DIR))}: nothing to index")
    index = {"format": FORMAT, "version": VERSION, "kinds": kinds, "num_rvq": num_rvq, "clap_dim": clap_dim,
             "codes_dtype": np.dtype(CODES_DTYPE).name, "clips": len(seen), "shards": shards}
    atomic_write_text(os.path.join(root, INDEX_NAME), json.dumps(index))
    return len(seen)


def _marker(root: str | os.PathLike, index: int, count: int) -> str:
    return os.path.join(root, SHARDS_DIR, f"done.{index}-of-{count}")


def start_share(root: str | os.PathLike, index: int, count: int) -> None:
    """Forgets that share ``index``/``count`` was finished (it is about to write again)."""
    marker = _marker(root, index, count)
    if os.path.exists(marker):
        os.unlink(marker)


def finish_share(root: str | os.PathLike, index: int, count: int) -> Optional[int]:
    """Marks share ``index``/``count`` finished; the share that completes the set writes the index.

    Returns:
        The number of clips indexed, or None while other shares are still running.
    """
    os.makedirs(os.path.join(root, SHARDS_DIR), exist_ok=True)
    atomic_write_text(_marker(root, index, count), "done\n")
    if all(os.path.exists(_marker(root, i, count)) for i in range(count)):
        # Two shares finishing together both write the same index; the rename keeps one whole.
        return build_index(root)
    return None
