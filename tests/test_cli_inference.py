"""inference.py end to end on a tiny checkpoint with random-weight encoders.

A folder of mixed formats (int16 stereo WAV, 24-bit FLAC, Ogg Vorbis, 8-bit WAV, one corrupt
file, one non-audio file), globs, CSV/JSONL output, window mode and the exit status.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

import inference
from captioning.pipeline import EnClap

SR = 16000


def tone(seed: int, seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.4 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "a_stereo.wav", tone(0, 0.5, 44100, channels=2), 44100, subtype="PCM_16")
    sf.write(folder / "b_24bit.flac", tone(1, 0.3, 22050), 22050, subtype="PCM_24")
    sf.write(folder / "c_vorbis.ogg", tone(2, 0.6, 48000), 48000, format="OGG", subtype="VORBIS")
    sub = folder / "sub"
    sub.mkdir()
    sf.write(sub / "d_8bit.wav", tone(3, 0.4, 8000), 8000, subtype="PCM_U8")
    (folder / "e_corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + b"\x00" * 40)
    (folder / "notes.txt").write_text("not audio\n")
    return folder


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    return EnClap(tiny_ckpt, device="cpu", random_encoders=True)


def args(ckpt, *extra):
    return ["--ckpt", str(ckpt), "--random_encoders", "--device", "cpu", *map(str, extra)]


def test_folder_of_mixed_formats_with_a_corrupt_file(tiny_ckpt, clips, reference, tmp_path, capsys):
    out = tmp_path / "captions.csv"
    status = inference.main(args(tiny_ckpt, "--input", clips, "--output", out))
    captured = capsys.readouterr()
    assert status == 1  # one file failed, the others were captioned
    assert "e_corrupt.wav" in captured.err and "Traceback" not in captured.err
    rows = list(csv.DictReader(out.open()))
    by_name = {row["file_path"].split("/")[-1]: row for row in rows}
    assert sorted(by_name) == ["a_stereo.wav", "b_24bit.flac", "c_vorbis.ogg", "d_8bit.wav", "e_corrupt.wav"]
    assert by_name["e_corrupt.wav"]["caption"] == "" and by_name["e_corrupt.wav"]["error"]
    for name in ("a_stereo.wav", "b_24bit.flac", "c_vorbis.ogg", "d_8bit.wav"):
        row = by_name[name]
        assert row["error"] == ""
        assert row["caption"] == reference.caption(row["file_path"])[0]
        assert f"{row['file_path']}\t{row['caption']}" in captured.out
        assert float(row["start"]) == 0.0 and row["truncated"] == "false"
    captions = [by_name[n]["caption"] for n in ("a_stereo.wav", "b_24bit.flac", "c_vorbis.ogg", "d_8bit.wav")]
    assert len(set(captions)) == 4, "different files must get different captions"


def test_glob_and_jsonl_output(tiny_ckpt, clips, reference, tmp_path, capsys):
    out = tmp_path / "out" / "captions.jsonl"
    status = inference.main(args(tiny_ckpt, "--input", f"{clips}/*.flac", f"{clips}/sub/*.wav", "--output", out))
    assert status == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file_path"].split("/")[-1] for r in records] == ["b_24bit.flac", "d_8bit.wav"]
    assert all(r["error"] is None for r in records)
    assert records[0]["caption"] == reference.caption(str(clips / "b_24bit.flac"))[0]
    # common.io.atomic_open writes beside the output under a hidden ``.<name>.*.partial`` name.
    leftovers = [p.name for p in out.parent.rglob("*") if p.name.startswith(".") or p.name.endswith(".partial")]
    assert not leftovers, "atomic writes leave no temporary file"


def test_window_mode_writes_one_row_per_window(tiny_ckpt, tmp_path, capsys):
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, tone(4, 2.0, SR), SR)
    out = tmp_path / "windows.csv"
    assert inference.main(args(tiny_ckpt, "--input", long_clip, "--long_audio", "window", "--output", out)) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3  # 2.0 s in windows of 61 frames (0.813 s)
    assert float(rows[0]["start"]) == 0.0 and float(rows[-1]["end"]) == pytest.approx(2.0)
    assert float(rows[1]["start"]) == pytest.approx(61 / 75, abs=1e-3)
    assert "[0.00-0.81 s]" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tiny_ckpt, tmp_path, capsys):
    assert inference.main(args(tiny_ckpt, "--input", tmp_path / "missing.wav")) == 2
    err = capsys.readouterr().err
    assert "missing.wav" in err and "Traceback" not in err
    clip = tmp_path / "x.wav"
    sf.write(clip, tone(5, 0.2, SR), SR)
    assert inference.main(["--ckpt", str(tmp_path / "nope"), "--device", "cpu", "--input", str(clip)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
    assert inference.main(args(tiny_ckpt, "--input", clip, "--num_beams", "2", "--num_return_sequences", "3")) == 2
    assert "num_return_sequences" in capsys.readouterr().err


def test_truncated_clip_reports_the_captioned_span(tiny_ckpt, tmp_path, capsys):
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, tone(6, 2.0, SR), SR)
    out = tmp_path / "spans.csv"
    assert inference.main(args(tiny_ckpt, "--input", long_clip, "--output", out)) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["truncated"] == "true"
    assert float(row["start"]) == 0.0 and float(row["end"]) == pytest.approx(61 / 75, abs=1e-3)  # not 2.0
    jsonl = tmp_path / "spans.jsonl"
    assert inference.main(args(tiny_ckpt, "--input", long_clip, "--output", jsonl)) == 0
    record = json.loads(jsonl.read_text())
    assert record["truncated"] is True and record["duration"] == pytest.approx(2.0)
    assert record["end"] == pytest.approx(61 / 75, abs=1e-3)


def test_every_generation_and_rerank_flag_reaches_the_pipeline(tiny_ckpt, clips, monkeypatch):
    """Each flag, set off its default (all values different), arrives in the options the pipeline
    generates and re-ranks with."""
    from captioning.rerank import RerankOptions
    from modeling.generation import GenerationOptions

    seen = []
    run = EnClap.run

    def recording(self, sources, *rest, options=None, rerank=None, **kwargs):
        seen.append((options, rerank))
        return run(self, sources, *rest, options=options, rerank=rerank, **kwargs)

    monkeypatch.setattr(EnClap, "run", recording)
    generation = {"num_beams": 3, "max_length": 17, "no_repeat_ngram_size": 2, "length_penalty": 1.7,
                  "early_stopping": False, "do_sample": True, "top_p": 0.65, "temperature": 1.35,
                  "num_return_sequences": 2}
    rerank = {"num_candidates": 5, "clap_weight": 2.3, "lm_weight": 0.4, "seed": 7}
    defaults = {**vars(GenerationOptions()), **vars(RerankOptions())}
    assert set(generation) == set(vars(GenerationOptions())) and not any(
        defaults[name] == value for name, value in {**generation, **rerank}.items())
    flags = [f"--{name}={value}" for name, value in generation.items() if not isinstance(value, bool)]
    flags += ["--no-early_stopping", "--do_sample", "--rerank", "--rerank_candidates", "5", "--rerank_clap_weight",
              "2.3", "--rerank_lm_weight", "0.4", "--seed", "7"]
    assert inference.main(args(tiny_ckpt, "--input", clips / "b_24bit.flac", *flags)) == 0
    (options, reranking), = seen
    assert vars(options) == pytest.approx(generation)
    assert {name: getattr(reranking, name) for name in rerank} == pytest.approx(rerank) and reranking.enabled
