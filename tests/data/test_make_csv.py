"""Tests of data/make_csv.py on tiny made-up AudioCaps / Clotho metadata."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from data import make_csv
from tests.helpers import user_env

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


def test_drop_missing_reads_a_packed_store(tmp_path, capsys):
    from data.extraction.store_cli import pack_trees

    meta = _clotho_metadata(tmp_path / "meta")
    enc, clap = tmp_path / "enc", tmp_path / "clap"
    for rel in ["development/Birds, morning.npy", "validation/v1.npy", "evaluation/e1.npy"]:  # no rain.npy
        for root, array in ((enc, np.zeros((4, 16), dtype=np.int64)), (clap, np.ones(512, dtype=np.float32))):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, array)
    store = tmp_path / "store"
    pack_trees(str(enc), str(clap), str(store), progress=False)
    out = tmp_path / "csv"
    args = ["clotho", "--metadata_dir", str(meta), "--out_dir", str(out), "--encodec_path", str(store),
            "--clap_path", str(store)]
    assert make_csv.main(args + ["--drop_missing"]) == 0
    assert "train: dropped 1 clip(s) without feature files" in capsys.readouterr().err
    train = _read(out / "train.csv")
    assert len(train) == 1 + 5 and all(r[0] == "development/Birds, morning.npy" for r in train[1:])
    assert len(_read(out / "valid.csv")) == 2 and len(_read(out / "test.csv")) == 2  # kept: in the store


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
                           "--out_dir", str(tmp_path / "o")], cwd=REPO, env=user_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "valid.csv").is_file()


# ------------------------------------------------------------------------------ own data


def _own_audio(root: Path, names) -> Path:
    """Tiny real audio files (the splitter checks that they exist; it never decodes them)."""
    import soundfile as sf

    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.zeros(160, np.float32), 16000)
    return root


def test_own_split_by_ratio_is_seeded_and_keeps_clips_whole(tmp_path, capsys):
    names = [f"rec/clip{i}.wav" for i in range(10)] + ["loose.flac"]
    audio = _own_audio(tmp_path / "audio", names + ["uncaptioned.wav"])
    rows = [[n, f"caption of {n}"] for n in names] + [["rec/clip3.wav", "second caption of rec/clip3.wav"],
                                                      ["rec/clip4.wav", ""]]
    _write(tmp_path / "caps.csv", ["file", "caption"], rows)
    args = ["own", "--audio_dir", str(audio), "--captions", str(tmp_path / "caps.csv"), "--split", "0.6,0.2,0.2"]
    assert make_csv.main(args + ["--out_dir", str(tmp_path / "a")]) == 0
    assert make_csv.main(args + ["--out_dir", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "uncaptioned.wav" in err and "1 row(s)" in err  # left-out audio and the empty caption are said
    for split in ("train", "valid", "test"):  # same seed, same split
        assert _read(tmp_path / "a" / f"{split}.csv") == _read(tmp_path / "b" / f"{split}.csv")
    train = _read(tmp_path / "a" / "train.csv")
    valid, test = _read(tmp_path / "a" / "valid.csv"), _read(tmp_path / "a" / "test.csv")
    assert train[0] == ["file_path", "caption"] and valid[0] == ["file_path", "caption_1"]
    clips = {"train": {r[0] for r in train[1:]}, "valid": {r[0] for r in valid[1:]}, "test": {r[0] for r in test[1:]}}
    # 11 clips at 0.6/0.2/0.2: 2 + 2 held out, the rest trains; no clip in two splits.
    assert (len(clips["valid"]), len(clips["test"]), len(clips["train"])) == (2, 2, 7)
    assert not (clips["train"] & clips["valid"] or clips["train"] & clips["test"] or clips["valid"] & clips["test"])
    expected = {n[: -len(Path(n).suffix)] + ".npy" for n in names}
    assert clips["train"] | clips["valid"] | clips["test"] == expected
    # Both captions of clip3 stay together, wherever it went.
    both = [r for r in train[1:] if r[0] == "rec/clip3.npy"]
    if both:
        assert sorted(r[1] for r in both) == ["caption of rec/clip3.wav", "second caption of rec/clip3.wav"]
    else:
        row = next(r for r in valid[1:] + test[1:] if r[0] == "rec/clip3.npy")
        assert row[1:] == ["caption of rec/clip3.wav", "second caption of rec/clip3.wav"]
    other_seed = tmp_path / "c"
    assert make_csv.main(args + ["--out_dir", str(other_seed), "--seed", "7"]) == 0
    assert _read(other_seed / "valid.csv") != _read(tmp_path / "a" / "valid.csv")


def test_own_split_by_column_and_read_back_with_one_reference(tmp_path):
    from data.training.dataset import read_split

    audio = _own_audio(tmp_path / "audio", ["a.wav", "b.wav", "c.wav", "d.ogg"])
    _write(tmp_path / "caps.csv", ["name", "text", "set"], [
        ["a.wav", "a dog barks", "train"], ["b.wav", "rain falls", "Training"], ["b.wav", "rain on a roof", "train"],
        ["c.wav", "a bell rings", "val"], ["d.ogg", "a car passes", "evaluation"]])
    assert make_csv.main(["own", "--audio_dir", str(audio), "--captions", str(tmp_path / "caps.csv"),
                          "--out_dir", str(tmp_path / "out"), "--file_column", "name", "--caption_column", "text",
                          "--split_column", "set"]) == 0
    train = read_split(str(tmp_path / "out" / "train.csv"), per_caption=True)
    assert train.file_paths == ["a.npy", "b.npy", "b.npy"]
    valid = read_split(str(tmp_path / "out" / "valid.csv"))
    assert (valid.file_paths, valid.references) == (["c.npy"], [["a bell rings"]])
    test = read_split(str(tmp_path / "out" / "test.csv"))
    assert (test.file_paths, test.references) == (["d.npy"], [["a car passes"]])


def test_own_split_errors_are_one_line_with_absolute_paths(tmp_path, capsys, monkeypatch):
    audio = _own_audio(tmp_path / "audio", ["a.wav"])
    _write(tmp_path / "caps.csv", ["file", "caption"], [["a.wav", "x"], ["gone.wav", "y"]])
    monkeypatch.chdir(tmp_path)
    base = ["own", "--audio_dir", "audio", "--out_dir", "out"]
    assert make_csv.main(base + ["--captions", "caps.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "audio" / "gone.wav") in err
    assert make_csv.main(base + ["--captions", "nope.csv"]) == 2
    assert str(tmp_path / "nope.csv") in capsys.readouterr().err
    _write(tmp_path / "bad.csv", ["file", "caption", "split"], [["a.wav", "x", "holdout"]])
    assert make_csv.main(base + ["--captions", "bad.csv", "--split_column", "split"]) == 2
    assert "holdout" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_own_split_with_feature_check(tmp_path, capsys):
    audio = _own_audio(tmp_path / "audio", ["a.wav", "b.wav", "c.wav"])
    _write(tmp_path / "caps.csv", ["file", "caption"], [["a.wav", "x"], ["b.wav", "y"], ["c.wav", "z"]])
    for root in ("enc", "clap"):
        for stem in ("a", "b"):
            (tmp_path / root).mkdir(exist_ok=True)
            np.save(tmp_path / root / f"{stem}.npy", np.zeros(3))
    args = ["own", "--audio_dir", str(audio), "--captions", str(tmp_path / "caps.csv"), "--out_dir",
            str(tmp_path / "out"), "--encodec_path", str(tmp_path / "enc"), "--clap_path", str(tmp_path / "clap")]
    assert make_csv.main(args + ["--check"]) == 1
    assert str(tmp_path / "enc" / "c.npy") in capsys.readouterr().err
