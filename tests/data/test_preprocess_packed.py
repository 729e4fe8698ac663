"""``data/preprocess.py --pack``: a rerun into an existing store adds only what is missing, and
``--shard i/N`` decides the share even under a launcher that sets another RANK.

In-process runs with the seeded random-weight encoders of tests/data/test_preprocess.py.
"""

from __future__ import annotations

import json

import numpy as np

from data.extraction.store import PackedStore
from tests.data.test_preprocess import _run, _write_clip, extractor  # noqa: F401 (extractor: a fixture)

BASE = ["--random_weights", "--quiet", "--num_workers", 0]


def _shard_lists(store) -> dict:
    """Committed shard name -> the clips its ``.json`` lists."""
    return {p.name[:-len(".json")]: json.loads(p.read_text())["files"] for p in sorted((store / "shards").glob("*.json"))}


def _shard_bytes(store) -> dict:
    return {p.name: p.read_bytes() for p in sorted((store / "shards").iterdir())}


def test_a_rerun_into_an_existing_store_encodes_only_new_clips(extractor, tmp_path):  # noqa: F811
    wavs, store = tmp_path / "wavs", tmp_path / "store"
    for i in range(3):
        _write_clip(wavs / f"c{i}.wav", 0.2 + 0.1 * i, 16000, seed=i)
    first = _run(extractor, "--data_path", wavs, "--pack", store, *BASE)
    assert (first.done, first.skipped, first.indexed) == (3, 0, 3)
    before = _shard_bytes(store)
    features = {rel: PackedStore(store).codes(rel).copy() for rel in ("c0.npy", "c1.npy", "c2.npy")}

    # The same command again: nothing encoded, nothing rewritten.
    again = _run(extractor, "--data_path", wavs, "--pack", store, *BASE)
    assert (again.done, again.skipped, again.indexed) == (0, 3, 3)
    assert _shard_bytes(store) == before

    # One more clip: only it is encoded, into a shard of its own; the others keep their features.
    _write_clip(wavs / "c3.wav", 0.3, 16000, seed=3)
    more = _run(extractor, "--data_path", wavs, "--pack", store, *BASE)
    assert (more.done, more.skipped, more.indexed) == (1, 3, 4)
    lists = _shard_lists(store)
    assert sorted(sum(lists.values(), [])) == ["c0.npy", "c1.npy", "c2.npy", "c3.npy"]  # each clip once
    assert [files for files in lists.values() if "c3.npy" in files] == [["c3.npy"]]
    opened = PackedStore(store)
    for rel, codes in features.items():
        np.testing.assert_array_equal(opened.codes(rel), codes)


def test_shard_flag_wins_over_the_launchers_rank(extractor, tmp_path, monkeypatch):  # noqa: F811
    """``--shard i/N`` under a launcher that set RANK/WORLD_SIZE (a job script running shards by
    hand) writes share i, not the launcher's rank."""
    wavs, store = tmp_path / "wavs", tmp_path / "store"
    for i in range(5):
        _write_clip(wavs / f"c{i}.wav", 0.2, 16000, seed=i)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    first = _run(extractor, "--data_path", wavs, "--pack", store, "--shard", "0/2", *BASE)
    assert first.done == 3 and first.indexed is None  # share 0 of 2: c0, c2, c4; share 1 still to run
    monkeypatch.setenv("RANK", "0")
    second = _run(extractor, "--data_path", wavs, "--pack", store, "--shard", "1/2", *BASE)
    assert second.done == 2 and second.indexed == 5
    by_share = {}
    for name, files in _shard_lists(store).items():
        by_share.setdefault(name.split(".")[0], []).extend(files)
    assert by_share == {"r00000-of-00002": ["c0.npy", "c2.npy", "c4.npy"], "r00001-of-00002": ["c1.npy", "c3.npy"]}
