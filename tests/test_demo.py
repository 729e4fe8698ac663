"""The quick-start driver (scripts/demo.py): its summary helpers, and one reduced end-to-end run.

The end-to-end run uses the real entry points (corpus, preprocessing with random-weight
encoders, ``sh train.sh`` with the tiny recipe, evaluate.py, inference.py) on a 20-clip corpus
and one training epoch, so it checks the wiring, not the learning (the full ``make demo`` does
that: it exits 1 unless the model beats the trivial system).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_demo():
    spec = importlib.util.spec_from_file_location("enclap_demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _write(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_most_frequent_caption_counts_rows_and_breaks_ties_by_file_order(tmp_path):
    train = _write(tmp_path / "train.csv", ["file_path", "caption"], [
        ["a.npy", "a siren wails"], ["b.npy", "two clicks"], ["c.npy", "two clicks"],
        ["d.npy", "a siren wails"], ["e.npy", "a low hum"],
    ])
    assert demo.most_frequent_caption(train) == ("a siren wails", 2)
    _write(train, ["file_path", "caption"], [["a.npy", "x"], ["b.npy", "y"], ["c.npy", "y"]])
    assert demo.most_frequent_caption(train) == ("y", 2)


def test_read_references_keeps_file_order_and_all_five(tmp_path):
    header = ["file_path"] + [f"caption_{i}" for i in range(1, 6)]
    test = _write(tmp_path / "test.csv", header, [
        ["t/b.npy", "b1", "b2", "b3", "b4", "b5"], ["t/a.npy", "a1", "a2", "a3", "a4", "a5"],
    ])
    assert demo.read_references(test) == [["b1", "b2", "b3", "b4", "b5"], ["a1", "a2", "a3", "a4", "a5"]]


def test_score_line_puts_cider_first():
    line = demo.score_line("model:", {"meteor": 0.25, "cider_d": 1.5}, "note")
    assert line.startswith("model:") and line.index("CIDEr-D 1.500") < line.index("METEOR 0.250")
    assert line.endswith("(note)")


def test_describe_features_reports_constant_codes(tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "clap").mkdir()
    rows = []
    for i in range(3):
        np.save(tmp_path / "enc" / f"c{i}.npy", np.full((5 + i, 16), 7, dtype=np.int64))
        vec = np.zeros(512, dtype=np.float32)
        vec[i] = 1.0  # orthogonal unit vectors: every pairwise cosine is 0
        np.save(tmp_path / "clap" / f"c{i}.npy", vec)
        rows.append([f"c{i}.npy", "x"])
    train = _write(tmp_path / "train.csv", ["file_path", "caption"], rows + rows)
    line = demo.describe_features(tmp_path / "enc", tmp_path / "clap", train)
    assert "3 training clips" in line and "1 distinct value" in line
    assert "0.000 .. 0.000" in line


def test_count_distinct_predictions(tmp_path):
    preds = _write(tmp_path / "p.csv", ["file_path", "prediction", "caption_1"], [
        ["a.npy", "a siren wails", "r"], ["b.npy", "two clicks", "r"], ["c.npy", "a siren wails", "r"],
    ])
    assert demo.count_distinct(preds) == 2


def test_training_stamp_needs_same_overrides_and_a_model(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    overrides = ["optim.epochs=3", "output_dir=x"]
    assert not demo.training_done(run, overrides)
    demo.mark_training_done(run, overrides)
    assert not demo.training_done(run, overrides)  # no model folder yet
    (run / "best" / "config.json").write_text("{}")
    assert demo.training_done(run, overrides)
    assert not demo.training_done(run, ["optim.epochs=4", "output_dir=x"])


def test_too_small_corpus_is_refused(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "d"), "--num_clips", "10"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--num_clips" in err
    assert not (tmp_path / "d").exists()


def test_missing_clap_checkpoint_is_one_line(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "d"), "--clap_ckpt", str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err and "CLAP" in err


def test_reduced_end_to_end_run(tmp_path):
    """20 clips (16 train, 2 valid, 2 test), one epoch: every step runs; the summary names real scores and files."""
    out = tmp_path / "demo"
    # One thread per process: the steps' own torch threads only fight each other on a shared CPU.
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--num_clips", "20",
           "--metrics", "cider_d", "--require_gain", "0",
           "optim.epochs=1", "optim.batch_size=8", "eval.batch_size=8", "log.trackers=[]"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    model = re.search(r"^model:\s+CIDEr-D (\d+\.\d+)", text, re.M)
    trivial = re.search(r"^trivial:\s+CIDEr-D (\d+\.\d+)\s+\(always \"(.+)\"\)", text, re.M)
    assert model and trivial, text[-3000:]
    # The trivial line names the most frequent training caption of the generated corpus.
    with open(out / "corpus" / "csv" / "train.csv", newline="", encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    assert captions.count(trivial.group(2)) == max(captions.count(c) for c in captions)
    # Random-weight encoders are stated on screen.
    assert "RANDOM-WEIGHT encoders" in text
    # Where things land.
    assert (out / "run_random" / "best" / "config.json").is_file()
    with open(out / "test_predictions_random.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(out / "corpus" / "csv" / "test.csv", newline="", encoding="utf-8") as f:
        assert len(rows) == len(list(csv.DictReader(f))) >= 1
    scores = json.loads((out / "test_predictions_random_scores.json").read_text())["scores"]
    assert f"CIDEr-D {scores['cider_d']:.3f}" in text
    distinct = len({row["prediction"] for row in rows})
    assert f"wrote {distinct} different captions for the {len(rows)} test clips" in text
    assert "gradio_app.py --ckpt" in text and "--random_encoders" in text
    assert demo.training_done(out / "run_random", demo.TRAIN_OVERRIDES) is False  # stamp holds the full list
    stamp = json.loads((out / "run_random" / "demo_train_args.json").read_text())
    assert "optim.epochs=1" in stamp
