"""Tests of data/make_csv.py on tiny made-up AudioCaps / Clotho metadata."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from data import make_csv

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _read(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _audiocaps_metadata(root: Path) -> Path:
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    _write(root / "train.csv", header, [
        ["1", "abc", "30", "A dog barks"],
        ["2", "def", "0", "Rain falls, softly"],
    ])
    val = [[str(10 + i), "vvv", "20", f"val caption {i}"] for i in range(5)]
    val += [[str(20 + i), "www", "10", f"other {i}"] for i in range(5)]
    _write(root / "val.csv", header, val)
    _write(root / "test.csv", header, [[str(30 + i), "ttt", "5", f"test {i}"] for i in range(5)])
    return root


def _clotho_metadata(root: Path) -> Path:
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    _write(root / "clotho_captions_development.csv", header,
           [["Birds, morning.wav"] + [f"birds {i}" for i in range(5)],
            ["rain.wav"] + [f"rain {i}" for i in range(5)]])
    _write(root / "clotho_captions_validation.csv", header, [["v1.wav"] + [f"v {i}" for i in range(5)]])
    _write(root / "clotho_captions_evaluation.csv", header, [["e1.wav"] + [f"e {i}" for i in range(5)]])
    return root


def test_audiocaps_layout(tmp_path):
    meta = _audiocaps_metadata(tmp_path / "meta")
    out = tmp_path / "csv"
    assert make_csv.main(["audiocaps", "--metadata_dir", str(meta), "--out_dir", str(out)]) == 0
    assert _read(out / "train.csv") == [
        ["file_path", "caption"],
        ["train/abc_30.npy", "A dog barks"],
        ["train/def_0.npy", "Rain falls, softly"],
    ]
    valid = _read(out / "valid.csv")
    assert valid[0] == ["file_path", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
    assert valid[1] == ["val/vvv_20.npy"] + [f"val caption {i}" for i in range(5)]
    assert valid[2] == ["val/www_10.npy"] + [f"other {i}" for i in range(5)]
    assert len(valid) == 3
    assert _read(out / "test.csv")[1:] == [["test/ttt_5.npy"] + [f"test {i}" for i in range(5)]]


def test_audiocaps_original_naming(tmp_path):
    meta = _audiocaps_metadata(tmp_path / "meta")
    out = tmp_path / "csv"
    argv = ["audiocaps", "--metadata_dir", str(meta), "--out_dir", str(out),
            "--split_dirs", "train,valid,test", "--file_format", "{split_dir}/Y{youtube_id}.npy"]
    assert make_csv.main(argv) == 0
    assert _read(out / "train.csv")[1][0] == "train/Yabc.npy"
    assert _read(out / "valid.csv")[1][0] == "valid/Yvvv.npy"


def test_clotho_layout(tmp_path):
    meta = _clotho_metadata(tmp_path / "meta")
    out = tmp_path / "csv"
    assert make_csv.main(["clotho", "--metadata_dir", str(meta), "--out_dir", str(out)]) == 0
    train = _read(out / "train.csv")
    assert train[0] == ["file_path", "caption"]
    assert len(train) == 1 + 10  # 5 rows per clip
    assert train[1] == ["development/Birds, morning.npy", "birds 0"]
    assert train[10] == ["development/rain.npy", "rain 4"]
    assert _read(out / "valid.csv")[1] == ["validation/v1.npy"] + [f"v {i}" for i in range(5)]
    assert _read(out / "test.csv")[1] == ["evaluation/e1.npy"] + [f"e {i}" for i in range(5)]


def test_missing_metadata_is_one_line_error(tmp_path, capsys):
    assert make_csv.main(["clotho", "--metadata_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clotho_captions_development.csv" in err[0]


def test_check_and_drop_missing(tmp_path, capsys):
    meta = _clotho_metadata(tmp_path / "meta")
    enc, clap = tmp_path / "enc", tmp_path / "clap"
    # Features for every clip except the CLAP file of rain.npy.
    for rel in ["development/Birds, morning.npy", "development/rain.npy", "validation/v1.npy", "evaluation/e1.npy"]:
        for root in (enc, clap):
            if root is clap and rel.endswith("rain.npy"):
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, np.zeros(3))
    out = tmp_path / "csv"
    base = ["clotho", "--metadata_dir", str(meta), "--out_dir", str(out),
            "--encodec_path", str(enc), "--clap_path", str(clap)]
    assert make_csv.main(base + ["--check"]) == 1
    err = capsys.readouterr().err
    assert f"missing: {clap / 'development/rain.npy'}" in err
    assert "1 feature file(s) missing" in err

    assert make_csv.main(base + ["--drop_missing"]) == 0
    train = _read(out / "train.csv")
    assert len(train) == 1 + 5 and all(r[0] == "development/Birds, morning.npy" for r in train[1:])
    assert make_csv.main(["check", str(out / "train.csv"), str(out / "valid.csv"),
                          "--encodec_path", str(enc), "--clap_path", str(clap)]) == 0


def test_shipped_example_csvs_have_spec_format():
    for dataset in ("audiocaps", "clotho"):
        for split in ("train", "valid", "test"):
            rows = _read(REPO / "csv" / dataset / f"{split}.csv")
            header = rows[0]
            if split == "train":
                assert header == ["file_path", "caption"]
            else:
                assert header == ["file_path"] + [f"caption_{i}" for i in range(1, 6)]
            assert len(rows) > 1
            for row in rows[1:]:
                assert len(row) == len(header)
                assert row[0].endswith(".npy") and not row[0].startswith("/")
                assert all(cell.strip() for cell in row)


def test_cli_script_runs_from_repo_root(tmp_path):
    meta = _clotho_metadata(tmp_path / "meta")
    proc = subprocess.run([sys.executable, "data/make_csv.py", "clotho", "--metadata_dir", str(meta),
                           "--out_dir", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "valid.csv").is_file()
