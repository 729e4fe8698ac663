"""Collection captioning (captioning/collection.py through inference.py): part files, resume,
settings guard, and 2 processes vs 1 byte for byte, on a tiny checkpoint with random encoders."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import inference
from captioning.collection import caption_collection, parts_folder
from captioning.pipeline import EnClap
from captioning.records import format_records, part_files
from captioning.rerank import RerankOptions
from data.extraction.audio import expand_audio_inputs
from modeling.generation import GenerationOptions
from tests.helpers import free_port, sigkill_when, user_env

REPO = Path(__file__).resolve().parents[2]


def write_clips(folder: Path, n: int, long_every: int = 0) -> list[str]:
    """``n`` different noisy tones (every ``long_every``-th one 2 s long, for window mode) and one corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        seconds = 2.0 if long_every and i % long_every == 0 else 0.3 + 0.03 * i  # short: under one 0.81 s window
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.4 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.1 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:02d}.wav"
        sf.write(path, wav, 16000)
        paths.append(str(path))
    (folder / "clip_99_corrupt.wav").write_bytes(b"RIFF....WAVEfmt " + b"\x00" * 40)
    return paths + [str(folder / "clip_99_corrupt.wav")]


@pytest.fixture(scope="module")
def pipeline(tiny_ckpt):
    return EnClap(tiny_ckpt, device="cpu", random_encoders=True)


SETTINGS = {"ckpt": "tiny", "num_beams": 4}


def test_chunks_resume_and_settings_guard(pipeline, tmp_path, monkeypatch, capsys):
    sources = write_clips(tmp_path / "clips", 7)
    direct = pipeline.run(sources)
    assert len({r.caption for r in direct if r.error is None}) > 1  # different inputs, different captions
    reference = format_records(direct, "ref.jsonl")

    # A crash after two chunks (of 3 clips) ...
    out = tmp_path / "caps.jsonl"
    calls = []
    original = pipeline.run

    def crashing(chunk, **kwargs):
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.append(list(chunk))
        return original(chunk, **kwargs)

    monkeypatch.setattr(pipeline, "run", crashing)
    with pytest.raises(RuntimeError):
        caption_collection(pipeline, sources, str(out), SETTINGS, batch_size=2, chunk_size=3, progress=False)
    assert not out.exists() and len(part_files(parts_folder(str(out)))) == 2

    # ... then the rerun captions only the rest and ends with the same file as one go.
    calls.clear()
    monkeypatch.setattr(pipeline, "run", lambda chunk, **kw: calls.append(list(chunk)) or original(chunk, **kw))
    run = caption_collection(pipeline, sources, str(out), SETTINGS, batch_size=2, chunk_size=3, progress=False)
    assert [s for chunk in calls for s in chunk] == sources[6:]
    assert run.skipped == 6 and run.captioned == 2 and run.status == 1  # the corrupt file failed
    assert out.read_text() == reference
    assert "skipped 6 input(s) already captioned" in capsys.readouterr().err

    # The failed input is tried again on a rerun; nothing else is.
    calls.clear()
    assert caption_collection(pipeline, sources, str(out), SETTINGS, 2, chunk_size=3, progress=False).skipped == 7
    assert calls == [[sources[-1]]]
    assert out.read_text() == reference

    # Other settings are refused in one line naming what changed.
    with pytest.raises(Exception) as err:
        caption_collection(pipeline, sources, str(out), {**SETTINGS, "num_beams": 2}, 2, progress=False)
    assert "num_beams" in str(err.value) and "\n" not in str(err.value)


def test_window_mode_and_reranking_through_collections(pipeline, tiny_ckpt, tmp_path):
    sources = write_clips(tmp_path / "clips", 2, long_every=2)[:-1]  # a 2 s clip, then a short one
    windowed = EnClap(tiny_ckpt, device="cpu", random_encoders=True, long_audio="window",
                      encodec=pipeline.encodec, clap=pipeline.clap)  # the same seeded encoders, built once
    options, rerank = GenerationOptions(num_beams=3), RerankOptions(enabled=True, num_candidates=3)
    expected = format_records(windowed.run(sources, options=options, rerank=rerank), "x.csv")
    out = tmp_path / "w.csv"
    run = caption_collection(windowed, sources, str(out), SETTINGS, 2, options, rerank, chunk_size=1, progress=False)
    assert run.status == 0 and out.read_text() == expected
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert len(rows) == 1 + 3 + 1  # header, 3 windows of the 2 s clip, the short clip


def _env() -> dict:
    """As a user's shell has it (no PYTHONPATH), with one torch thread per CLI process like this
    test process (tests/conftest.py): the same float rounding."""
    return user_env()


def _inference_args(ckpt, clips, out, extra=()) -> list[str]:
    return ["--ckpt", str(ckpt), "--random_encoders", "--device", "cpu", "--input", str(clips), "--output", str(out),
            "--long_audio", "window", "--batch_size", "2", *extra]


def test_a_killed_run_resumes_and_two_processes_equal_one_byte_for_byte(tiny_ckpt, tmp_path, capsys):
    clips = tmp_path / "clips"
    write_clips(clips, 10, long_every=5)

    # One process, SIGKILLed after two chunks of 2, then rerun: only the rest is captioned.
    one = tmp_path / "one.csv"
    args = _inference_args(tiny_ckpt, clips, one, extra=["--chunk_size", "2"])
    sigkill_when([sys.executable, "inference.py", *args],
                 lambda: len(part_files(parts_folder(str(one)))) >= 2, REPO, _env())
    done = sum(n for *_, n in part_files(parts_folder(str(one))))
    assert 4 <= done < 11 and not one.exists()
    # The rerun of the same command, in this process (resuming reads only the part files).
    capsys.readouterr()
    assert inference.main(args) == 1  # the corrupt file
    err = capsys.readouterr().err
    skipped = int(err.split("skipped ")[1].split()[0])
    assert skipped == done  # the corrupt file comes last: never in a finished chunk here
    assert f"captioned {11 - skipped} input(s)" in err
    rows = list(csv.reader(io.StringIO(one.read_text())))
    assert len(rows) == 1 + 8 + 2 * 3 + 1  # 8 short clips, 2 long ones in 3 windows, the corrupt file
    assert len({row[3] for row in rows[1:-1]}) > 1
    # (that a resumed file equals one made in one go is checked in-process above)

    # Two processes (accelerate launch): the same file, byte for byte.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    two = subprocess.run([*launcher, "inference.py", *_inference_args(tiny_ckpt, clips, tmp_path / "two.csv")],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode != 0 and "1 input(s) failed, 10 captioned" in two.stderr, two.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == one.read_bytes()
    # Each rank captioned its own half of the 11 inputs (inputs r, r + 2, ...), not all of them
    # (the merge would hide duplicates).
    parts = parts_folder(str(tmp_path / "two.csv"))
    by_rank = {}
    for name, prefix, _, _ in part_files(parts):
        with open(os.path.join(parts, name), encoding="utf-8") as handle:
            by_rank.setdefault(prefix, []).extend(json.loads(line)["source"] for line in handle)
    inputs = expand_audio_inputs([str(clips)])[0]  # the input list every rank reads, in order
    assert len(inputs) == 11
    assert by_rank == {"r00000-of-00002": inputs[0::2], "r00001-of-00002": inputs[1::2]}
    assert "on 2 process(es)" in two.stderr and "clip_99_corrupt.wav" in two.stderr


def test_settings_file_records_what_changes_captions(tiny_ckpt, tmp_path, capsys):
    clip = write_clips(tmp_path / "clips", 1)[0]
    out = tmp_path / "c.jsonl"
    args = ["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--input", clip, "--output", str(out)]
    assert inference.main(args) == 0
    settings = json.loads((Path(parts_folder(str(out))) / "settings.json").read_text())
    assert settings["generation"]["num_beams"] == 4 and settings["long_audio"] == "truncate"
    assert inference.main(args + ["--num_beams", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "generation" in err and "delete that folder" in err
