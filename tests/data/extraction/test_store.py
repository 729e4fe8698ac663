"""The packed feature store (data/extraction/store.py): round trip, resume, shares, index, and the same
training batches as the per-file layout of the same clips."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from common.errors import UserError
from data.extraction import store, store_cli
from data.training.collator import EnClapCollator
from data.training.dataset import CaptionDataset, DataError


def write_tree(root, n, seed=0, min_frames=5, max_frames=90):
    """Random per-file trees of ``n`` clips in two folders; returns the relative names."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"{'train' if i % 3 else 'valid/sub'}/clip_{i}.npy"
        for kind in ("enc", "clap"):
            (root / kind / name).parent.mkdir(parents=True, exist_ok=True)
        frames = int(rng.integers(min_frames, max_frames))
        np.save(root / "enc" / name, rng.integers(0, 1024, (frames, 16)).astype(np.int64))
        emb = rng.standard_normal(512).astype(np.float32)
        np.save(root / "clap" / name, emb / np.linalg.norm(emb))
        names.append(name)
    return names


def test_round_trip_over_several_shards(tmp_path):
    names = write_tree(tmp_path, 7)
    packed, present = store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"),
                                       shard_clips=3, progress=False)
    assert (packed, present) == (7, 0)
    assert len(list((tmp_path / "st" / "shards").glob("*.json"))) == 3  # 3 + 3 + 1 clips
    opened = store.PackedStore(tmp_path / "st")
    assert sorted(opened.file_paths()) == sorted(names)
    for name in names:
        codes, clap = np.load(tmp_path / "enc" / name), np.load(tmp_path / "clap" / name)
        assert opened.codes(name).dtype == np.int16  # a quarter of the bytes, same values
        np.testing.assert_array_equal(opened.codes(name), codes)
        np.testing.assert_array_equal(opened.clap(name), clap)
        assert opened.frames(name) == len(codes)
    with pytest.raises(store.StoreError, match="not in the packed store"):
        opened.codes("train/nope.npy")


def test_converter_resumes_and_index_is_rebuilt(tmp_path):
    write_tree(tmp_path, 5)
    out = tmp_path / "st"
    assert store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(out), 2, progress=False) == (5, 0)
    assert store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(out), 2, progress=False) == (0, 5)
    (out / "index.json").unlink()
    with pytest.raises(store.StoreError, match="has no index.json") as err:
        store.PackedStore(out)
    assert "\n" not in str(err.value)
    assert store_cli.main(["index", str(out)]) == 0
    assert len(store.PackedStore(out)) == 5


def test_a_shard_killed_before_its_list_is_redone(tmp_path):
    writer = store.PackedWriter(tmp_path, "r00000-of-00001", shard_clips=2)
    rng = np.random.default_rng(1)
    clips = {f"c{i}.npy": (rng.integers(0, 1024, (10 + i, 16)), rng.standard_normal(512)) for i in range(5)}
    for name, (codes, clap) in list(clips.items())[:3]:
        writer.add(name, codes, clap)  # c0, c1 committed; c2 buffered
    assert set(store.done_files(tmp_path)) == {"c0.npy", "c1.npy"}
    # What a kill between the arrays and the list leaves: arrays of the next shard, no list.
    shards = tmp_path / "shards"
    (shards / "r00000-of-00001.000001.codes.npy").write_bytes(b"truncated")
    resumed = store.PackedWriter(tmp_path, "r00000-of-00001", shard_clips=2)
    for name, (codes, clap) in list(clips.items())[2:]:
        resumed.add(name, codes, clap)
    resumed.flush()
    assert store.build_index(tmp_path) == 5
    opened = store.PackedStore(tmp_path)
    for name, (codes, clap) in clips.items():
        np.testing.assert_array_equal(opened.codes(name), codes)
        np.testing.assert_array_equal(opened.clap(name), clap.astype(np.float32))


def test_the_last_share_to_finish_writes_the_index_and_duplicates_count_once(tmp_path):
    rng = np.random.default_rng(2)
    for share in (0, 1):
        store.start_share(tmp_path, share, 2)
        writer = store.PackedWriter(tmp_path, f"r{share:05d}-of-00002", shard_clips=4)
        for i in range(share, 6, 2):
            writer.add(f"x/{i}.npy", np.full((3 + i, 16), i), rng.standard_normal(512))
        writer.flush()
        indexed = store.finish_share(tmp_path, share, 2)
        assert indexed == (None if share == 0 else 6)
    # A later rerun with one process re-adds clip 0 (it was not seen as done): indexed once,
    # from the first shard in name order, at its real rows.
    extra = store.PackedWriter(tmp_path, "s", shard_clips=4)
    extra.add("x/0.npy", np.full((9, 16), 77), rng.standard_normal(512))
    extra.add("x/9.npy", np.full((4, 16), 9), rng.standard_normal(512))
    extra.flush()
    assert store.build_index(tmp_path) == 7
    opened = store.PackedStore(tmp_path)
    assert opened.codes("x/0.npy").shape == (3, 16) and int(opened.codes("x/0.npy")[0, 0]) == 0
    np.testing.assert_array_equal(opened.codes("x/9.npy"), np.full((4, 16), 9))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["clips"] == 7 and index["kinds"] == ["codes", "clap"]


def test_codes_that_do_not_fit_int16_are_refused(tmp_path):
    writer = store.PackedWriter(tmp_path, "p")
    with pytest.raises(store.StoreError, match="int16"):
        writer.add("a.npy", np.full((2, 16), 40000), np.zeros(512))


def _batches(dataset, collator, order):
    return [collator([dataset[i] for i in order[k:k + 3]]) for k in range(0, len(order), 3)]


@pytest.mark.parametrize("train", [True, False])
def test_packed_and_per_file_layouts_give_identical_batches(tmp_path, tokenizer, train):
    names = write_tree(tmp_path, 9, seed=3, max_frames=140)
    store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"), 4, progress=False)
    csv_path = tmp_path / "split.csv"
    if train:
        csv_path.write_text("file_path,caption\n" + "".join(f"{n},a dog barks number {i}\n" for i, n in enumerate(names)))
    else:
        csv_path.write_text("file_path,caption_1,caption_2\n" + "".join(f"{n},rain {i},wind\n" for i, n in enumerate(names)))
    kwargs = dict(train=train, max_frames=61, seed=5)
    per_file = CaptionDataset(str(csv_path), str(tmp_path / "enc"), str(tmp_path / "clap"), **kwargs)
    packed = CaptionDataset(str(csv_path), str(tmp_path / "st"), str(tmp_path / "st"), **kwargs)
    assert per_file.store.layout == "files" and packed.store.layout == "packed"
    assert packed.clip_frames() == per_file.clip_frames()
    assert max(per_file.clip_frames()) == 61 and min(per_file.clip_frames()) < 61
    # Lengths already read (by the recipe checks) are taken as given and still cropped to max_frames.
    known = {per_file.file_paths[0]: 7, per_file.file_paths[-1]: 1000}
    reused = per_file.clip_frames(known)
    assert reused[0] == 7 and reused[-1] == 61 and reused[1:-1] == per_file.clip_frames()[1:-1]
    collator = EnClapCollator(tokenizer)
    order = list(np.random.default_rng(0).permutation(len(names)))  # shuffled, as a sampler serves them
    for epoch in (0, 1):
        per_file.set_epoch(epoch)
        packed.set_epoch(epoch)
        for a, b in zip(_batches(per_file, collator, order), _batches(packed, collator, order)):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert a[key].dtype == b[key].dtype, key
                    torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
                else:
                    assert a[key] == b[key], key
    # Different clips give different batches (the comparison above can fail).
    assert not torch.equal(collator([per_file[0]])["clap_embedding"], collator([packed[1]])["clap_embedding"])


def test_layouts_can_be_stated_and_mixed(tmp_path):
    names = write_tree(tmp_path, 3)
    store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"), progress=False)
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("file_path,caption\n" + "".join(f"{n},x\n" for n in names))
    mixed = CaptionDataset(str(csv_path), str(tmp_path / "st"), str(tmp_path / "clap"), train=False)
    assert mixed.store.layout == "mixed"
    np.testing.assert_array_equal(mixed[0]["clap_embedding"], np.load(tmp_path / "clap" / names[0]))
    with pytest.raises(DataError, match="enc is not a packed feature store"):
        CaptionDataset(str(csv_path), str(tmp_path / "enc"), str(tmp_path / "clap"), train=False, layout="packed")
    # A packed store that lacks a clip names the clip and the store in one line.
    (tmp_path / "s.csv").write_text("file_path,caption\ntrain/missing.npy,x\n")
    with pytest.raises(DataError) as err:
        CaptionDataset(str(csv_path), str(tmp_path / "st"), str(tmp_path / "st"), train=False)
    assert "train/missing.npy in the packed store" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UserError)


def test_store_survives_pickling_for_spawned_workers(tmp_path):
    import multiprocessing
    import pickle
    from operator import methodcaller

    names = write_tree(tmp_path, 2, min_frames=400, max_frames=500)
    store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"), progress=False)
    opened = store.PackedStore(tmp_path / "st")
    opened.codes(names[0])  # opens a map
    opened.clap(names[0])
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / "st" / "shards").glob("*.npy"))
    data = pickle.dumps(opened)
    # What a worker receives: the index, not the mapped shards copied into the pickle.
    assert len(data) < shard_bytes / 10, (len(data), shard_bytes)
    copy = pickle.loads(data)
    assert not copy._maps
    np.testing.assert_array_equal(copy.codes(names[1]), np.load(tmp_path / "enc" / names[1]))
    # A spawned process (as DataLoader workers are on macOS and under some launchers) reads the same items.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for name in names:
            codes = pool.apply(methodcaller("codes", name), (opened,))
            clap = pool.apply(methodcaller("clap", name), (opened,))
            np.testing.assert_array_equal(codes, np.load(tmp_path / "enc" / name))
            np.testing.assert_array_equal(clap, np.load(tmp_path / "clap" / name))


def test_make_csv_check_reads_a_packed_store(tmp_path, capsys):
    from data import make_csv

    names = write_tree(tmp_path, 3)
    store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"), progress=False)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("file_path,caption\n" + "".join(f"{n},x\n" for n in names))
    bad.write_text(f"file_path,caption\n{names[0]},x\ntrain/gone.npy,y\n")
    roots = ["--encodec_path", str(tmp_path / "st"), "--clap_path", str(tmp_path / "st")]
    assert make_csv.main(["check", str(good), *roots]) == 0
    assert make_csv.main(["check", str(bad), *roots]) == 1
    err = capsys.readouterr().err
    assert "train/gone.npy in the packed store" in err and names[0] not in err


def test_preprocessed_evaluation_reads_a_packed_store(tmp_path, tiny_ckpt):
    """evaluate.py --from_preprocessed goes through EnClap.caption_preprocessed: same captions from either layout."""
    from captioning.pipeline import EnClap

    names = write_tree(tmp_path, 4, seed=7, max_frames=40)
    store_cli.pack_trees(str(tmp_path / "enc"), str(tmp_path / "clap"), str(tmp_path / "st"), progress=False)
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("file_path,caption_1\n" + "".join(f"{n},x\n" for n in names))
    pipeline = EnClap(tiny_ckpt, device="cpu")
    from_files = pipeline.caption_preprocessed(str(csv_path), str(tmp_path / "enc"), str(tmp_path / "clap"))
    from_store = pipeline.caption_preprocessed(str(csv_path), str(tmp_path / "st"), str(tmp_path / "st"))
    assert from_store == from_files and len(set(from_files)) > 1
