"""Your own data, end to end, as the README shows it, from a folder outside the repository.

A ``file,caption`` table and a handful of short recordings (written here: several formats,
rates and channel counts, one clip longer than the tiny model's frame limit) go through
``make_csv.py own`` -> ``preprocess.py`` -> ``make_csv.py check`` -> ``train.sh`` ->
``evaluate.py`` -> fine-tuning with ``model.init=enclap`` (``train.py``), every path typed
relative to that folder. Random-weight encoders and a tiny model keep it to about a minute; the
two light ``make_csv.py`` steps run in this process (its working folder moved there), the others
as the user would start them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data import make_csv
from tests.helpers import user_env
from tests.test_cli_train import REPO, TINY

# name, seconds, sample rate, channels, tone (Hz), captions
CLIPS = [
    ("dog.wav", 0.5, 16000, 1, 300, ["a dog barks twice", "barking"]),
    ("rain.flac", 1.0, 44100, 2, 900, ["rain falls on a roof"]),  # 75 frames: over the limit too
    ("bell.ogg", 0.3, 22050, 1, 1500, ["a bell rings"]),
    ("talk/man.wav", 0.6, 48000, 1, 200, ["a man speaks", "a man talks quietly"]),
    ("talk/woman.wav", 0.5, 16000, 2, 450, ["a woman speaks"]),
    ("car.flac", 1.5, 24000, 1, 120, ["a car passes by"]),  # 113 frames: over the tiny model's 61
    ("birds.wav", 0.4, 32000, 1, 3000, ["birds chirp"]),
    ("tap.wav", 0.3, 16000, 1, 700, ["water runs from a tap"]),
]


def _write_own_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, seconds, rate, channels, tone, _ in CLIPS:
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * tone * t) + 0.05 * rng.standard_normal(t.size)
        path = root / "audio" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave, rate)
    with open(root / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows([name, caption] for name, *_, captions in CLIPS for caption in captions)


def _run(cwd: Path, *command: str) -> subprocess.CompletedProcess:
    # user_env: no PYTHONPATH, as typed in the user's shell; the scripts must find the repository themselves.
    result = subprocess.run(list(command), cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _make_csv(capsys, *argv: str) -> str:
    """``make_csv.py`` with ``argv`` in this process (it imports torch, so a process of its own costs
    seconds); returns what it printed."""
    capsys.readouterr()
    status = make_csv.main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, f"{argv}\n{out}\n{err}"
    return out


def test_own_data_from_table_to_fine_tuning(tmp_path, monkeypatch, capsys):
    home = tmp_path / "my project"  # a space, and nowhere near the repository
    home.mkdir()
    _write_own_data(home)
    monkeypatch.chdir(home)  # for the in-process make_csv.py steps; the subprocesses get cwd=home
    python = sys.executable

    # 1. The split: clips (not rows) by ratio, seeded.
    out = _make_csv(capsys, "own", "--audio_dir", "audio", "--captions", "captions.csv", "--out_dir", "splits",
                    "--split", "0.5,0.25,0.25")
    assert f"wrote {home / 'splits' / 'train.csv'}" in out
    train, valid, test = (_rows(home / "splits" / f"{s}.csv") for s in ("train", "valid", "test"))
    clips = {split: {r["file_path"] for r in rows} for split, rows in (("train", train), ("valid", valid),
                                                                        ("test", test))}
    assert (len(clips["train"]), len(clips["valid"]), len(clips["test"])) == (4, 2, 2)
    every = {str(Path(name).with_suffix(".npy")) for name, *_ in CLIPS}
    assert clips["train"] | clips["valid"] | clips["test"] == every

    # 2. Features for every recording (the tiny model's limit said up front), then the check.
    out = _run(home, python, str(REPO / "data" / "preprocess.py"), "--data_path", "audio", "--encodec_path",
               "feats/encodec", "--clap_path", "feats/clap", "--random_weights", "--quiet", "--max_frames", "61")
    assert "done 8, skipped 0 (already present), failed 0" in out.stdout
    assert "2 clip(s) are longer than 61 frames (0.8 s, --max_frames): the model reads only that much of each: " \
           "car.flac, rain.flac" in out.stderr
    codes = {p: np.load(home / "feats" / "encodec" / p) for p in every}
    assert codes["car.npy"].shape == (113, 16)  # 1.5 s at 75 frames/s, rounded up
    assert not np.array_equal(codes["dog.npy"][:20], codes["talk/woman.npy"][:20])  # different sounds, codes
    clap = [np.load(home / "feats" / "clap" / p) for p in sorted(every)]
    assert all(c.shape == (512,) for c in clap) and not np.allclose(clap[0], clap[1])
    out = _make_csv(capsys, "check", "splits/train.csv", "splits/valid.csv", "splits/test.csv", "--encodec_path",
                    "feats/encodec", "--clap_path", "feats/clap")
    assert out.count("all feature files present") == 3

    # 3. Train with the tiny recipe through train.sh, every path relative to this folder.
    data = ["data.train_csv=splits/train.csv", "data.val_csv=splits/valid.csv",
            "data.encodec_base_path=feats/encodec", "data.clap_base_path=feats/clap"]
    _run(home, "sh", str(REPO / "train.sh"), "cfg/tiny.yaml", *TINY, *data, "output_dir=runs/mine", "optim.epochs=2",
         "optim.batch_size=4")
    run = home / "runs" / "mine"
    log = (run / "train.log").read_text()
    saved = (run / "config.yaml").read_text()
    assert f"train_csv: {home / 'splits' / 'train.csv'}" in saved and f"output_dir: {run}" in saved
    # The long clips that went to train or valid (seed 0 sent rain to valid, car to test) are
    # counted and named once, with the limit in seconds.
    assert "rain.npy" in clips["valid"] and "car.npy" in clips["test"]
    long_lines = [line for line in log.splitlines() if "longer than the limit" in line]
    assert len(long_lines) == 1 and long_lines[0].endswith(
        "0 of 4 training clips; 1 of 2 validation clips are longer than the limit of 61 frames (0.8 s, "
        "model.max_position_embeddings - 3): training reads a random 0.8 s window of each, validation its first "
        "0.8 s: rain.npy")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == 4 and len(summary["history"]) == 2  # 5 captions / batch 4: 2 steps an epoch
    predictions = _rows(run / "predictions" / "step_00000004.csv")
    assert [r["file_path"] for r in predictions] == [r["file_path"] for r in valid]
    last = run / "checkpoints" / "step_00000004" / "model"

    # 4. Evaluate the last checkpoint on the test split; the outputs land where the user stands.
    out = _run(home, python, str(REPO / "evaluate.py"), "--ckpt", str(last.relative_to(home)), "--test_csv",
               "splits/test.csv", "--from_preprocessed", "--encodec_path", "feats/encodec", "--clap_path",
               "feats/clap", "--metrics", "cider_d", "--device", "cpu", "--save_path", "eval/test.csv")
    assert "CIDEr-D" in out.stdout
    rows = _rows(home / "eval" / "test.csv")
    assert [r["file_path"] for r in rows] == [r["file_path"] for r in test]
    report = json.loads((home / "eval" / "test_scores.json").read_text())
    assert report["num_clips"] == 2 and set(report["scores"]) == {"cider_d"} and report["skipped_metrics"] is None

    # 5. Fine-tune from that checkpoint (train.py itself this time, no wrapper): the log says
    #    which folder and step it starts from.
    _run(home, python, str(REPO / "train.py"), "cfg/tiny.yaml", *TINY, *data, "output_dir=runs/finetuned",
         "model.init=enclap", f"model.name_or_path={last.relative_to(home)}", "optim.epochs=1", "optim.batch_size=4")
    log = (home / "runs" / "finetuned" / "train.log").read_text()
    assert f"fine-tuning from {last} (step 4 of the run in {last.parent})" in log
    assert json.loads((home / "runs" / "finetuned" / "summary.json").read_text())["final_step"] == 2
