"""Tests of the generated demo corpus (data/corpora/synth.py): determinism, CSV format, and captions
and audio that agree with each clip's parameters.

The checks here do not reuse the generator's code: captions are parsed with their own small
rules, and the audio is analysed (envelope, spectrum) to recover the parameters.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.corpora import synth

NUM_CLIPS = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synth.generate(out, synth.CorpusSettings(num_clips=NUM_CLIPS, seed=3), progress=False)
    return out


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files(corpus, tmp_path):
    again = tmp_path / "again"
    synth.generate(again, synth.CorpusSettings(num_clips=NUM_CLIPS, seed=3), progress=False)
    first, second = _files(corpus), _files(again)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first)
    assert sum(name.endswith(".wav") for name in first) == NUM_CLIPS


def test_other_seed_gives_other_corpus(corpus, tmp_path):
    other = tmp_path / "other"
    synth.generate(other, synth.CorpusSettings(num_clips=NUM_CLIPS, seed=4), progress=False)
    a, b = _files(corpus), _files(other)
    assert a["csv/train.csv"] != b["csv/train.csv"]
    assert a["audio/train/clip_00000.wav"] != b["audio/train/clip_00000.wav"]


def test_clip_does_not_depend_on_corpus_size():
    # Clip i is a function of (seed, i) only: a bigger corpus starts with the same clips.
    small, big = synth.CorpusSettings(num_clips=20, seed=1), synth.CorpusSettings(num_clips=200, seed=1)
    clip_a, wav_a = synth.make_clip(5, small)
    clip_b, wav_b = synth.make_clip(5, big)
    assert clip_a.captions == clip_b.captions and clip_a.split == clip_b.split
    np.testing.assert_array_equal(wav_a, wav_b)


def test_rerun_in_place_is_a_no_op_and_other_settings_are_refused(corpus, capsys):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    assert synth.main(["--out", str(corpus), "--num_clips", str(NUM_CLIPS), "--seed", "3", "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == before
    capsys.readouterr()
    assert synth.main(["--out", str(corpus), "--num_clips", str(NUM_CLIPS), "--seed", "9", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and str(corpus) in err


def test_growing_then_shrinking_the_corpus_keeps_the_clips(tmp_path):
    folder = tmp_path / "c"
    synth.generate(folder, synth.CorpusSettings(num_clips=20, seed=2), progress=False)
    small = _files(folder)
    synth.generate(folder, synth.CorpusSettings(num_clips=30, seed=2), progress=False)
    big = _files(folder)
    wavs = [name for name in small if name.endswith(".wav")]
    assert len(wavs) == 20 and all(big[name] == small[name] for name in wavs)
    assert sum(name.endswith(".wav") for name in big) == 30
    synth.generate(folder, synth.CorpusSettings(num_clips=20, seed=2), progress=False)
    assert _files(folder) == small


def test_splits_are_spread_evenly():
    settings = synth.CorpusSettings(num_clips=10)
    assert [synth.split_of(i, settings) for i in range(10)] == ["train"] * 4 + ["valid"] + ["train"] * 4 + ["test"]
    splits = [synth.split_of(i, synth.CorpusSettings(num_clips=300)) for i in range(300)]
    assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (240, 30, 30)


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path / "x"), "--num_clips", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--num_clips" in err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- CSV format (design §5)


def test_csv_format(corpus):
    train = _read_csv(corpus / "csv" / "train.csv")
    assert train[0] == ["file_path", "caption"]
    clips = synth.load_metadata(corpus)
    by_split = {s: [c for c in clips if c.split == s] for s in synth.SPLITS}
    assert len(train) - 1 == 5 * len(by_split["train"])
    assert {row[0] for row in train[1:]} == {f"train/{c.name}.npy" for c in by_split["train"]}
    for split in ("valid", "test"):
        rows = _read_csv(corpus / "csv" / f"{split}.csv")
        assert rows[0] == ["file_path", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
        assert len(rows) - 1 == len(by_split[split]) >= 1
        for row in rows[1:]:
            assert len(row) == 6 and all(text.strip() for text in row[1:])
            assert len(set(row[1:])) == 5  # five different captions
    for split in synth.SPLITS:
        rows = _read_csv(corpus / "csv" / f"{split}.csv")[1:]
        for row in rows:
            rel = row[0]
            assert rel.startswith(f"{split}/") and rel.endswith(".npy")
            wav = corpus / "audio" / (rel[: -len(".npy")] + ".wav")
            info = sf.info(str(wav))
            assert info.samplerate == synth.CorpusSettings().sample_rate and info.channels == 1 and info.subtype == "PCM_16"
            assert 0.5 <= info.duration <= 3.0
    # No clip is in two splits.
    names = [c.name for c in clips]
    assert len(names) == len(set(names)) == NUM_CLIPS


# ----------------------------------------------------------------------------- captions


KIND_WORDS = {
    "beep": ("beep",), "chirp": ("chirp", "sweeps"), "burst": ("burst",), "click": ("click",),
    "siren": ("siren",), "hum": ("hum", "drone"), "static": ("static noise",),
}
NUMBER_WORDS = {"one": 1, "once": 1, "two": 2, "twice": 2, "three": 3, "four": 4}
PLURAL_NOUNS = ("pitched beeps", "chirps", "bursts of", "clicks")  # "static bursts once" is a verb


def split_caption(text: str, events) -> list:
    """The caption's parts in the events' temporal order."""
    if len(events) == 1:
        return [text]
    for connector in (", followed by ", " and then ", ", then "):
        if connector in text:
            first, second = text.split(connector)
            return [first, second]
    assert " after " in text, text
    second, first = text.split(" after ")  # "B after A": A happened first
    return [first, second]


def check_part(part: str, event) -> None:
    words = re.findall(r"[a-z]+", part)
    found = [k for k, keys in KIND_WORDS.items() if any(key in part for key in keys)]
    # "static" alone is also how bursts are described ("static bursts twice").
    assert found == [event.kind], (part, event)
    numbers = {NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS}
    if event.kind in synth.REPEATED_KINDS:
        if event.count == 1:
            assert numbers <= {1} and not any(noun in part for noun in PLURAL_NOUNS), (part, event)
        else:
            assert numbers == {event.count}, (part, event)
    else:
        assert not numbers, (part, event)
    if event.kind in ("beep", "siren"):
        other = "low" if event.pitch == "high" else "high"
        assert event.pitch in words and other not in words, (part, event)
    if event.kind == "hum":
        assert "low" in words
    if event.kind == "chirp":
        right, wrong = (("rising", "up"), ("falling", "down"))[::1 if event.direction == "rising" else -1]
        assert any(w in words for w in right) and not any(w in words for w in wrong), (part, event)
    if event.fade is None:
        assert "fades" not in words and "fading" not in words, (part, event)
    else:
        assert re.search(rf"\bfad(es|ing) {event.fade}\b", part), (part, event)
    if event.loudness == "loud":
        assert not {"quiet", "faint", "soft"} & set(words), (part, event)
    else:
        assert "loud" not in words, (part, event)


def test_captions_agree_with_parameters(corpus):
    clips = synth.load_metadata(corpus)
    seen_kinds, seen_counts, seen_two = set(), set(), 0
    for clip in clips:
        assert len(clip.captions) == 5 and len(set(clip.captions)) == 5
        seen_two += len(clip.events) == 2
        for text in clip.captions:
            assert text == text.strip() and "  " not in text
            for part, event in zip(split_caption(text, clip.events), clip.events):
                check_part(part, event)
        for event in clip.events:
            seen_kinds.add(event.kind)
            seen_counts.add(event.count)
    # The corpus varies what it should vary.
    assert seen_kinds == set(synth.KINDS)
    assert {1, 2, 3, 4} <= seen_counts
    assert 0 < seen_two < len(clips)


# ----------------------------------------------------------------------------- audio


def _bursts(x: np.ndarray, sr: int) -> int:
    """Number of separate sound bursts in ``x``: runs of 5 ms frames above a third of the peak."""
    hop = sr // 200
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    level = np.abs(frames).max(axis=1)
    active = level > level.max() / 3
    return int(np.sum(active[1:] & ~active[:-1]) + active[0])


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def test_audio_agrees_with_parameters(corpus):
    clips = synth.load_metadata(corpus)
    checked = 0
    for clip in clips:
        wav, sr = sf.read(str(corpus / "audio" / clip.split / f"{clip.name}.wav"), dtype="float32")
        assert abs(len(wav) / sr - clip.duration) < 1e-3
        assert np.abs(wav).max() <= 1.0
        for i, event in enumerate(clip.events):
            assert 0 <= event.start < event.end <= clip.duration + 1e-6
            if i:
                assert event.start > clip.events[i - 1].end  # in order, with a gap
            seg = wav[int(event.start * sr): int(event.end * sr)]
            peak = np.abs(seg).max()
            if event.loudness == "loud":
                assert peak > 0.4, (clip.name, event)
            else:
                assert peak < 0.1, (clip.name, event)
            if event.kind in synth.REPEATED_KINDS:
                assert _bursts(seg, sr) == event.count, (clip.name, event)
            if event.kind == "beep":
                hz = _peak_hz(seg, sr)
                assert (hz > 1000) if event.pitch == "high" else (hz < 600), (clip.name, event, hz)
            if event.kind == "chirp":
                one = seg[: int(synth.PIECES["chirp"][0] * sr)]  # the first chirp
                early, late = _peak_hz(one[: len(one) // 4], sr), _peak_hz(one[-len(one) // 4:], sr)
                assert (late > 2 * early) if event.direction == "rising" else (early > 2 * late), (clip.name, event)
            if event.kind == "siren":
                hz = _peak_hz(seg, sr)
                assert (hz > 1000) if event.pitch == "high" else (hz < 800), (clip.name, event, hz)
            if event.kind == "hum":
                assert _peak_hz(seg, sr) < 400
            if event.kind in synth.SUSTAINED_KINDS and event.fade is not None:
                quarter = len(seg) // 4
                head, tail = np.sqrt(np.mean(seg[:quarter] ** 2)), np.sqrt(np.mean(seg[-quarter:] ** 2))
                assert (tail > 3 * head) if event.fade == "in" else (head > 3 * tail), (clip.name, event)
            checked += 1
    assert checked >= NUM_CLIPS
