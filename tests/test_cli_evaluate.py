"""evaluate.py end to end on a tiny checkpoint with random-weight encoders.

Both input modes give identical predictions and scores when the preprocessed features were made
from the same audio by the shared FeatureExtractor; ``--save_path`` in the current directory;
missing files listed before any work; metric preflight failing before generation.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

import evaluate
from captioning.pipeline import EnClap
from tests.helpers import without_spice

METRICS = ["cider_d", "rouge_l", "bleu_4"]  # fast ones; SPICE needs CoreNLP jars this machine cannot fetch
REFS = [
    ["a dog barks while a man speaks", "a man talks as a dog barks", "dogs bark", "a man speaks", "barking"],
    ["rain falls on a metal roof", "rain on a roof", "heavy rain", "water falls", "a storm with rain"],
    ["a siren wails and fades away", "a siren", "an ambulance passes", "a siren wails", "sirens"],
    ["birds chirp in the distance", "birds sing", "wind and birds", "chirping birds", "a bird chirps"],
]


@pytest.fixture(scope="module")
def split(tmp_path_factory, tiny_ckpt):
    """Audio files, a test CSV, and features preprocessed from the same audio."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    names = [f"test/clip{i}.npy" for i in range(len(REFS))]
    pipeline = EnClap(tiny_ckpt, device="cpu", random_encoders=True)
    for i, name in enumerate(names):
        stem = name[: -len(".npy")]
        sr = [16000, 44100, 22050, 48000][i]
        seconds = [0.4, 0.7, 1.2, 0.2][i]  # clip 2 is longer than the tiny model's 61 frames
        t = np.arange(int(seconds * sr)) / sr
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.size)
        audio = root / "audio" / (stem + (".flac" if i % 2 else ".wav"))
        audio.parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio, np.stack([wav, 0.5 * wav], axis=1) if i == 1 else wav, sr)
        (codes, clap), = pipeline.features.extract([str(audio)])
        for sub, array in (("encodec", codes), ("clap", clap)):
            path = root / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, array)
    csv_path = root / "test.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_path"] + [f"caption_{k}" for k in range(1, 6)])
        for name, refs in zip(names, REFS):
            writer.writerow([name, *refs])
    return root


def common(ckpt, split):
    return ["--ckpt", str(ckpt), "--random_encoders", "--device", "cpu", "--test_csv", str(split / "test.csv"),
            "--metrics", *METRICS]


def test_both_modes_give_identical_scores_and_save_path_in_cwd(tiny_ckpt, split, tmp_path, monkeypatch, capsys,
                                                               caplog):
    monkeypatch.chdir(tmp_path)
    raw = evaluate.main(common(tiny_ckpt, split) + ["--audio_path", str(split / "audio"), "--save_path", "raw.csv"])
    # clip2 is cut to the model's length; the warning suggests no flag evaluate.py lacks.
    assert "clip2.wav is 1.2 s long" in caplog.text and "evaluation always captions a clip's start" in caplog.text
    assert "--long_audio" not in caplog.text
    pre = evaluate.main(
        common(tiny_ckpt, split)
        + ["--from_preprocessed", "--encodec_path", str(split / "encodec"), "--clap_path", str(split / "clap"),
           "--save_path", "pre.csv", "--per_clip", "clips.csv", "--bootstrap", "200"]
    )
    out = capsys.readouterr().out
    assert raw == 0 and pre == 0
    assert "CIDEr-D" in out and "ROUGE-L" in out
    raw_scores = json.loads((tmp_path / "raw_scores.json").read_text())["scores"]
    pre_scores = json.loads((tmp_path / "pre_scores.json").read_text())["scores"]
    assert set(raw_scores) == set(METRICS)
    assert raw_scores == pre_scores
    raw_rows = list(csv.DictReader((tmp_path / "raw.csv").open()))
    pre_rows = list(csv.DictReader((tmp_path / "pre.csv").open()))
    assert [r["prediction"] for r in raw_rows] == [r["prediction"] for r in pre_rows]
    assert [r["file_path"] for r in raw_rows] == [f"test/clip{i}.npy" for i in range(len(REFS))]
    assert [r["caption_1"] for r in raw_rows] == [refs[0] for refs in REFS]
    assert all(r["prediction"] for r in raw_rows)
    # Intervals: printed, and in the JSON, for CIDEr-D (a per-clip mean), not for BLEU / ROUGE-L.
    report = json.loads((tmp_path / "pre_scores.json").read_text())
    low, high = report["intervals"]["cider_d"]
    assert set(report["intervals"]) == {"cider_d"} and low <= pre_scores["cider_d"] <= high
    assert report["bootstrap"]["resamples"] == 200
    assert f"CIDEr-D  {pre_scores['cider_d']:.3f} [{low:.3f}, {high:.3f}]" in out
    # Per-clip file: one row per clip, its caption and references, and its CIDEr-D.
    clip_rows = list(csv.DictReader((tmp_path / "clips.csv").open()))
    assert list(clip_rows[0]) == ["file_path", "prediction", *[f"caption_{k}" for k in range(1, 6)], "cider_d"]
    assert [r["file_path"] for r in clip_rows] == [r["file_path"] for r in pre_rows]
    assert [r["prediction"] for r in clip_rows] == [r["prediction"] for r in pre_rows]
    assert [r["caption_5"] for r in clip_rows] == [refs[4] for refs in REFS]
    per_clip_cider = [float(r["cider_d"]) for r in clip_rows]
    assert sum(per_clip_cider) / len(per_clip_cider) == pytest.approx(pre_scores["cider_d"], abs=1e-5)


def test_missing_audio_files_are_all_listed_before_any_work(tiny_ckpt, split, tmp_path, capsys):
    partial = tmp_path / "audio"
    partial.mkdir()
    (partial / "test").mkdir()
    os.symlink(split / "audio" / "test" / "clip0.wav", partial / "test" / "clip0.wav")
    args = common(tmp_path / "no_ckpt_needed_yet", split) + ["--audio_path", str(partial)]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "3 of 4 clips" in err
    for name in ("test/clip1.npy", "test/clip2.npy", "test/clip3.npy"):
        assert name in err
    assert "no_ckpt_needed_yet" not in err  # the checkpoint was never touched


def test_metric_preflight_fails_before_generation(tiny_ckpt, split, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AAC_METRICS_CACHE_PATH", str(tmp_path / "empty_cache"))
    args = ["--ckpt", str(tmp_path / "no_ckpt"), "--device", "cpu", "--test_csv", str(split / "test.csv"),
            "--audio_path", str(split / "audio"), "--metrics", "cider_d", "spice"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "make setup" in err and "no_ckpt" not in err


def _no_spice(monkeypatch):
    """SPICE and SPIDEr cannot run, whatever this machine has; the other metrics are untouched."""
    import scoring.java

    monkeypatch.setattr(scoring.java, "check_requirements", without_spice(scoring.java.check_requirements))


def test_default_metrics_without_corenlp_score_what_they_can(tiny_ckpt, split, tmp_path, monkeypatch, capsys,
                                                             caplog):
    _no_spice(monkeypatch)
    monkeypatch.chdir(tmp_path)
    args = ["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--test_csv", str(split / "test.csv"),
            "--from_preprocessed", "--encodec_path", str(split / "encodec"), "--clap_path", str(split / "clap"),
            "--save_path", "preds.csv"]
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "no_fense"))  # FENSE's models absent, as on CI
    assert evaluate.main(args + ["--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert caplog.text.count("cannot compute SPICE, SPIDEr") == 1  # one warning (logged to stderr)
    assert "cannot compute FENSE" in caplog.text and "python -m scoring setup" in caplog.text
    assert "scoring meteor, cider_d, vocab only" in caplog.text
    assert "not scored here: SPICE, SPIDEr, SPIDEr-FL, FENSE" in out
    report = json.loads((tmp_path / "preds_scores.json").read_text())
    assert set(report["scores"]) == {"meteor", "cider_d", "vocab"}
    assert set(report["intervals"]) == {"meteor", "cider_d"}
    assert "cannot compute SPICE, SPIDEr" in report["skipped_metrics"]  # the file says what is missing
    assert "cannot compute FENSE" in report["skipped_metrics"]
    # Asked for by name, SPICE still fails in one line, before any generation, and says what runs.
    assert evaluate.main(args[:-2] + ["--ckpt", str(tmp_path / "no_ckpt"), "--metrics", "cider_d", "spice"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot compute SPICE" in err
    assert "--metrics cider_d" in err and "no_ckpt" not in err


def test_degenerate_captions_and_relative_paths(tiny_ckpt, split, monkeypatch, capsys, caplog):
    monkeypatch.chdir(split)
    monkeypatch.setattr(EnClap, "caption_preprocessed", lambda self, *a, **k: [""] * len(REFS))
    args = ["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--test_csv", "test.csv",
            "--from_preprocessed", "--encodec_path", "encodec", "--clap_path", "clap", "--metrics", "cider_d"]
    assert evaluate.main(args) == 0
    err = caplog.text
    assert f"4 of 4 captions for test clips are empty (0 distinct captions); the checkpoint {tiny_ckpt} looks " \
           "under-trained" in err
    assert evaluate.main(args[:6] + ["missing.csv"] + args[7:]) == 2
    assert f"split file not found: {split / 'missing.csv'}" in capsys.readouterr().err


def test_per_clip_file_holds_each_clips_own_scores(tiny_ckpt, split, tmp_path, monkeypatch):
    captions = [REFS[0][0], "rain", REFS[2][1], "an unrelated noise"]
    monkeypatch.setattr(EnClap, "caption_preprocessed", lambda self, *a, **k: list(captions))
    args = ["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--test_csv", str(split / "test.csv"),
            "--from_preprocessed", "--encodec_path", str(split / "encodec"), "--clap_path", str(split / "clap"),
            "--metrics", "cider_d", "--per_clip", str(tmp_path / "clips.csv"), "--save_path", str(tmp_path / "p.csv")]
    assert evaluate.main(args) == 0
    rows = list(csv.DictReader((tmp_path / "clips.csv").open()))
    assert [r["prediction"] for r in rows] == captions
    cider = [float(r["cider_d"]) for r in rows]
    # A caption equal to one of its references scores far above a one-word one; no shared word scores 0.
    assert cider[0] > 2 * cider[1] > 0 and cider[2] > 2 * cider[1] and cider[3] == 0.0
    corpus = json.loads((tmp_path / "p_scores.json").read_text())["scores"]["cider_d"]
    assert sum(cider) / 4 == pytest.approx(corpus, abs=1e-5)
