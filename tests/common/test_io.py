"""Atomic writes and the predictions CSV."""

from __future__ import annotations

import csv

import pytest

from common.io import atomic_open, atomic_write_text, write_predictions_csv


def test_predictions_csv(tmp_path):
    path = tmp_path / "p" / "preds.csv"
    write_predictions_csv(path, ["a.npy", "b.npy"], ["x, y", "z"], [["r1", "r2"], ["s1"]])
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["file_path", "prediction", "caption_1", "caption_2"], ["a.npy", "x, y", "r1", "r2"],
                    ["b.npy", "z", "s1", ""]]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_relative_path_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("preds.csv", "x\n")
    assert (tmp_path / "preds.csv").read_text() == "x\n"


def test_numbered_files_and_the_next_number_per_writer(tmp_path):
    import re

    from common.io import next_number, numbered_files

    pattern = re.compile(r"(?P<prefix>[a-z]+)\.(?P<seq>\d{3})\.json")
    for name in ["b.000.json", "a.001.json", "a.000.json", "a.004.json.partial", "notes.txt"]:
        (tmp_path / name).write_text("")
    assert [name for name, _ in numbered_files(tmp_path, pattern)] == ["a.000.json", "a.001.json", "b.000.json"]
    assert next_number(tmp_path, pattern, "a") == 2  # the unfinished .partial does not count
    assert next_number(tmp_path, pattern, "b") == 1 and next_number(tmp_path, pattern, "c") == 0
    assert numbered_files(tmp_path / "missing", pattern) == [] and next_number(tmp_path / "missing", pattern, "a") == 0
