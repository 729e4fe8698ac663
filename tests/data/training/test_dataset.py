"""Tests of data/training/dataset.py on tiny split files and feature trees written by the test."""

import csv
import logging

import numpy as np
import pytest
import torch

from data.training.dataset import CaptionDataset, DataError

CLIPS = {"train/a.npy": 30, "train/b.npy": 12, "train/sub/c.npy": 5}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def split(tmp_path):
    """Feature trees with three clips whose codes/embeddings are known to the test."""
    rng = np.random.default_rng(0)
    features = {}
    for rel, frames in CLIPS.items():
        codes = rng.integers(0, 1024, size=(frames, 16), dtype=np.int64)  # (T, 16)
        clap = rng.standard_normal(512).astype(np.float32)               # (512,)
        for root, array in (("codes", codes), ("clap", clap)):
            target = tmp_path / root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, array)
        features[rel] = (codes, clap)
    train_csv = write_csv(tmp_path / "train.csv", ["file_path", "caption"], [
        ["train/a.npy", "a dog barks"], ["train/b.npy", "rain falls"],
        ["train/a.npy", "a dog is barking loudly"], ["train/sub/c.npy", "a man speaks"]])
    eval_csv = write_csv(tmp_path / "eval.csv", ["file_path"] + [f"caption_{k}" for k in range(1, 6)], [
        ["train/a.npy"] + [f"dog {k}" for k in range(1, 6)],
        ["train/sub/c.npy"] + [f"man {k}" for k in range(1, 6)]])
    return dict(root=tmp_path, codes=str(tmp_path / "codes"), clap=str(tmp_path / "clap"),
                train_csv=train_csv, eval_csv=eval_csv, features=features)


def test_training_split_gives_one_example_per_caption(split):
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True, masking_prob=0.0)
    assert len(data) == 4
    item = data[2]
    assert item["file_path"] == "train/a.npy" and item["caption"] == "a dog is barking loudly"
    codes, clap = split["features"]["train/a.npy"]
    assert item["codes"].dtype == np.int64 and np.array_equal(item["codes"], codes)
    assert item["clap_embedding"].dtype == np.float32 and np.array_equal(item["clap_embedding"], clap)
    assert item["mcm_mask"] is None
    assert "references" not in item


def test_evaluation_split_gives_one_example_per_clip_with_references(split):
    data = CaptionDataset(split["eval_csv"], split["codes"], split["clap"], train=False)
    assert len(data) == 2
    item = data[1]
    assert item["file_path"] == "train/sub/c.npy"
    assert item["references"] == [f"man {k}" for k in range(1, 6)]
    assert item["mcm_mask"] is None and "caption" not in item
    assert np.array_equal(item["codes"], split["features"]["train/sub/c.npy"][0])


def test_layouts_convert_between_modes(split):
    expanded = CaptionDataset(split["eval_csv"], split["codes"], split["clap"], train=True)
    assert len(expanded) == 10 and expanded[6]["caption"] == "man 2"
    grouped = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=False)
    assert grouped.file_paths == ["train/a.npy", "train/b.npy", "train/sub/c.npy"]
    assert grouped[0]["references"] == ["a dog barks", "a dog is barking loudly"]


def test_training_masks_and_crops(split):
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True,
                          max_frames=20, seed=3)
    codes = split["features"]["train/a.npy"][0]  # 30 frames > 20
    windows, masks = set(), []
    for epoch in range(6):
        data.set_epoch(epoch)
        item = data[0]
        assert item["codes"].shape == (20, 16) and item["mcm_mask"].shape == (20, 16)
        start = next(s for s in range(11) if np.array_equal(codes[s:s + 20], item["codes"]))
        windows.add(start)
        masks.append(item["mcm_mask"])
    assert len(windows) > 1  # a fresh random window each epoch
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])
    data.set_epoch(2)
    assert np.array_equal(data[0]["mcm_mask"], masks[2])  # same epoch, same draw
    assert data[3]["codes"].shape == (5, 16) and not data[3]["mcm_mask"].any()  # short clip


def test_static_masks_repeat_every_epoch(split):
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True,
                          max_frames=20, static_masks=True)
    data.set_epoch(0)
    first = data[0]
    for epoch in (1, 5):
        data.set_epoch(epoch)
        item = data[0]
        assert np.array_equal(item["mcm_mask"], first["mcm_mask"])
        assert np.array_equal(item["codes"], first["codes"])


def test_evaluation_keeps_the_first_frames_and_warns(split, caplog):
    data = CaptionDataset(split["eval_csv"], split["codes"], split["clap"], train=False, max_frames=20)
    with caplog.at_level(logging.WARNING, logger="data.training.dataset"):
        item = data[0]
    assert np.array_equal(item["codes"], split["features"]["train/a.npy"][0][:20])
    assert "train/a.npy" in caplog.text and "first 20" in caplog.text


def _collect(loader):
    return {item["index"]: item["mask"] for batch in loader for item in batch}


def _as_list(items):
    return items


class _Indexed(torch.utils.data.Dataset):
    """Wraps the dataset to return (index, mask) so a DataLoader can carry them."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return {"index": index, "mask": torch.from_numpy(self.data[index]["mcm_mask"].copy())}


def test_masks_do_not_depend_on_workers_and_follow_set_epoch_in_persistent_workers(split):
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True, max_frames=20,
                          masking_prob=0.5)
    wrapped = _Indexed(data)
    serial = _collect(torch.utils.data.DataLoader(wrapped, batch_size=2, num_workers=0, collate_fn=_as_list))
    loader = torch.utils.data.DataLoader(wrapped, batch_size=2, num_workers=2, persistent_workers=True,
                                         collate_fn=_as_list, shuffle=True, generator=torch.Generator().manual_seed(0))
    parallel = _collect(loader)
    assert all(torch.equal(serial[i], parallel[i]) for i in serial)
    data.set_epoch(4)
    next_epoch = _collect(loader)  # same worker processes, new epoch
    expected = {i: torch.from_numpy(data[i]["mcm_mask"]) for i in range(len(data))}
    assert all(torch.equal(expected[i], next_epoch[i]) for i in expected)
    assert any(not torch.equal(next_epoch[i], serial[i]) for i in serial)


def test_masking_probability_zero_and_evaluation_have_no_masks(split):
    off = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True, masking_prob=0)
    assert all(off[i]["mcm_mask"] is None for i in range(len(off)))


def test_missing_feature_files_are_listed_before_training(split):
    (split["root"] / "codes" / "train" / "b.npy").unlink()
    (split["root"] / "clap" / "train" / "sub" / "c.npy").unlink()
    with pytest.raises(DataError) as error:
        CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("2 feature file(s)")
    assert "b.npy" in message and "c.npy" in message


def test_missing_split_file_and_columns(split, tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        CaptionDataset(str(tmp_path / "nope.csv"), split["codes"], split["clap"], train=True)
    bad = write_csv(tmp_path / "bad.csv", ["path", "text"], [["train/a.npy", "x"]])
    with pytest.raises(DataError, match="file_path"):
        CaptionDataset(bad, split["codes"], split["clap"], train=True)
    no_caption = write_csv(tmp_path / "nocap.csv", ["file_path", "text"], [["train/a.npy", "x"]])
    with pytest.raises(DataError, match="caption"):
        CaptionDataset(no_caption, split["codes"], split["clap"], train=True)


def test_wrong_shapes_name_the_file(split):
    np.save(split["root"] / "codes" / "train" / "b.npy", np.zeros((16, 12), np.int64))  # (16, T)
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True)
    with pytest.raises(DataError, match=r"b\.npy.*\(T, 16\)"):
        data[1]
    np.save(split["root"] / "clap" / "train" / "a.npy", np.zeros(256, np.float32))
    with pytest.raises(DataError, match=r"a\.npy.*\(512,\)"):
        data[0]
    np.save(split["root"] / "codes" / "train" / "sub" / "c.npy", np.full((5, 16), 1024, np.int64))
    with pytest.raises(DataError, match=r"c\.npy"):
        data[3]


def test_errors_raised_in_loader_workers_stay_one_line(split):
    np.save(split["root"] / "codes" / "train" / "b.npy", np.zeros((16, 12), np.int64))
    data = CaptionDataset(split["train_csv"], split["codes"], split["clap"], train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1, collate_fn=_as_list)
    with pytest.raises(DataError) as error:
        next(iter(loader))
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("codes in ") and "b.npy" in str(error.value)


def test_feature_fn_replaces_the_feature_trees(split):
    calls = []

    def feature_fn(file_path):
        calls.append(file_path)
        return np.full((7, 16), 3, np.int64), np.ones(512, np.float32)

    data = CaptionDataset(split["train_csv"], None, None, train=True, feature_fn=feature_fn)
    item = data[1]
    assert calls == ["train/b.npy"]
    assert item["codes"].shape == (7, 16) and item["mcm_mask"].shape == (7, 16)
