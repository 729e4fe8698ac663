"""Tests of training/preflight.py: what the recipe checks refuse, and what they warn about."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import scoring.java
from training.config import ConfigError, load_config
from training.preflight import check_recipe, limit_warnings

REPO = Path(__file__).resolve().parents[2]


def _split(root: Path, frames: dict[str, int]) -> list[str]:
    """Features of the given lengths, every clip in train and valid; relative overrides for ``root``'s parent."""
    for sub in ("enc", "clap"):
        (root / sub).mkdir(parents=True)
    for name, t in frames.items():
        np.save(root / "enc" / name, np.zeros((t, 16), np.int64))
        np.save(root / "clap" / name, np.ones(512, np.float32))
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file_path", "caption"]] + [[n, f"caption {n}"] for n in frames])
    with open(root / "valid.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file_path", "caption_1"]] + [[n, f"caption {n}"] for n in frames])
    name = root.name
    return [f"data.train_csv={name}/train.csv", f"data.val_csv={name}/valid.csv",
            f"data.encodec_base_path={name}/enc", f"data.clap_base_path={name}/clap", "eval.metrics=[cider_d]"]


def test_clips_over_the_limit_and_one_frame_clips_are_counted_and_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lengths = {"short.npy": 1, "ok.npy": 100, "long_a.npy": 254, "long_b.npy": 900}
    overrides = _split(tmp_path / "d", lengths)
    plan = check_recipe(load_config("cfg/tiny.yaml", overrides))  # 256 positions: 253 frames, 3.4 s
    long_line = next(w for w in plan.warnings if "longer than" in w)
    assert "2 of 4 training clips; 2 of 4 validation clips are longer than the limit of 253 frames (3.4 s" in long_line
    assert "long_a.npy, long_b.npy" in long_line and "ok.npy" not in long_line
    short_line = next(w for w in plan.warnings if "single EnCodec frame" in w)
    assert short_line.startswith("1 clip(s)") and "short.npy" in short_line
    plan = check_recipe(load_config("cfg/tiny.yaml", overrides + ["data.max_frames=100"]))
    assert "2 of 4 training clips" in next(w for w in plan.warnings if "longer than" in w)
    assert "(1.3 s, data.max_frames)" in next(w for w in plan.warnings if "longer than" in w)


def test_limit_warning_names_a_few_and_counts_the_rest():
    frames = {"training": {f"c{i}.npy": 80 for i in range(8)}, "validation": {"v.npy": 10}}
    (line,) = limit_warnings(frames, 75, "data.max_frames", shown=3)
    assert line.startswith("8 of 8 training clips; 0 of 1 validation clips are longer than the limit of 75 frames "
                           "(1.0 s, data.max_frames)")
    assert line.endswith("c0.npy, c1.npy, c2.npy, ... (5 more)")
    assert limit_warnings(frames, 80, "x") == []


def test_missing_files_are_named_with_the_absolute_path_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = _split(tmp_path / "d", {"a.npy": 10})
    with pytest.raises(ConfigError, match=f"data.val_csv file not found: {tmp_path / 'elsewhere' / 'v.csv'} "):
        check_recipe(load_config("cfg/tiny.yaml", overrides + ["data.val_csv=elsewhere/v.csv"]))
    with pytest.raises(ConfigError, match=f"model.name_or_path not found: {tmp_path / 'runs' / 'a' / 'best'} "):
        check_recipe(load_config("cfg/tiny.yaml", overrides + ["model.init=enclap",
                                                              "model.name_or_path=runs/a/best"]))


def test_unavailable_selection_metric_falls_back_to_cider_d(tmp_path, monkeypatch):
    real = scoring.java.check_requirements

    def no_spice(metrics=None, cache_dir=None, java_path=None):
        reasons = real(metrics, cache_dir, java_path)
        reasons.update({m: "Stanford CoreNLP missing; fix: make setup" for m in ("spice", "spider")
                        if m in scoring.java.normalize_metrics(metrics)})
        return reasons

    monkeypatch.setattr(scoring.java, "check_requirements", no_spice)
    monkeypatch.chdir(tmp_path)
    overrides = _split(tmp_path / "d", {"a.npy": 10})
    plan = check_recipe(load_config("cfg/tiny.yaml", overrides + ["eval.metrics=[cider_d,spice,spider]",
                                                                  "eval.select_metric=spider"]))
    assert plan.metrics == ("cider_d",) and plan.skipped_metrics == ("spice", "spider")
    assert plan.select_metric == "cider_d"
    assert plan.warnings[0].startswith("eval.metrics: skipped on this machine, scoring cider_d only: cannot compute "
                                       "SPICE, SPIDEr: Stanford CoreNLP missing; fix: make setup")
    assert plan.warnings[1] == "selection metric spider is unavailable here; selecting checkpoints by cider_d instead"
    with pytest.raises(ConfigError, match="eval.metrics: cannot compute SPICE"):
        check_recipe(load_config("cfg/tiny.yaml", overrides + ["eval.metrics=[spice]"]))


def test_selection_metric_is_scored_even_when_not_in_eval_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = _split(tmp_path / "d", {"a.npy": 10})
    plan = check_recipe(load_config("cfg/tiny.yaml", overrides + ["eval.metrics=[cider_d]",
                                                                  "eval.select_metric=Vocab"]))
    assert plan.metrics == ("cider_d", "vocab") and plan.select_metric == "vocab"
