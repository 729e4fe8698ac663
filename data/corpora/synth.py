"""A generated, captioned sound corpus: the quick start's offline stand-in for AudioCaps.

``python -m data.corpora.synth --out DIR`` writes a few hundred short clips of synthesized sound
events -- beeps, chirps, noise bursts, clicks, sirens, hums, steady static -- each with five
captions from a small grammar ("a high pitched beep repeats three times", "static noise fades
in, followed by a low hum"), in the layout the rest of the project reads::

    DIR/audio/{train,valid,test}/clip_00042.wav   16-bit PCM, mono, --sample_rate
    DIR/csv/train.csv                              file_path, caption (one row per caption)
    DIR/csv/{valid,test}.csv                       file_path, caption_1 .. caption_5
    DIR/metadata.jsonl                             the parameters of every clip
    DIR/corpus.json                                the settings that made the corpus

``file_path`` is ``split/clip_NNNNN.npy`` (design §5), so ``data/preprocess.py --data_path
DIR/audio`` writes the feature files that the CSVs name.

Everything is a function of ``(seed, clip index)``: the same settings always give
byte-identical files, whatever was generated before. A clip holds one or two events in
sequence; what varies is the event kind, pitch (beeps, sirens), sweep direction (chirps),
loudness, repetition count, fades (sustained sounds) and order. The captions only say what
the parameters say, so a caption can be checked against the clip's metadata.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf

from common.io import atomic_write_bytes, csv_text
from common.errors import UserError
from data.corpora.synth_captions import NUM_CAPTIONS, captions_for

#: Event kinds. Repeated ones come ``count`` times; sustained ones last and may fade.
REPEATED_KINDS = ("beep", "chirp", "burst", "click")
SUSTAINED_KINDS = ("siren", "hum", "static")
KINDS = REPEATED_KINDS + SUSTAINED_KINDS

SPLITS = ("train", "valid", "test")
MAX_DURATION = 3.0  # seconds; 225 EnCodec frames, inside the tiny recipe's 253-frame limit

# Peak amplitude ranges per loudness level (the quiet ones are about 20 dB down).
_LOUD_GAIN = {"loud": (0.5, 0.8), "quiet": (0.04, 0.08)}


class SynthError(UserError):
    """A user mistake with the corpus settings or output folder; the message is one line."""


@dataclass
class Event:
    """One sound event of a clip.

    Args:
        kind: one of :data:`KINDS`.
        loudness: ``loud`` or ``quiet``.
        count: repetitions (1-4) for repeated kinds; 1 for sustained kinds.
        pitch: ``high`` / ``low`` for beeps and sirens; ``low`` for hums; None otherwise.
        direction: ``rising`` / ``falling`` for chirps; None otherwise.
        fade: ``in`` / ``out`` / None for sustained kinds; None for repeated kinds.
        start: onset in seconds within the clip.
        end: offset in seconds within the clip.
        frequency: tone frequency in Hz (beep, siren centre, hum fundamental; chirp start).
        gain: peak amplitude.
    """

    kind: str
    loudness: str
    count: int = 1
    pitch: Optional[str] = None
    direction: Optional[str] = None
    fade: Optional[str] = None
    start: float = 0.0
    end: float = 0.0
    frequency: float = 0.0
    gain: float = 0.5


@dataclass
class Clip:
    """A generated clip: its events in order, its captions and where it lives.

    Args:
        name: file stem, ``clip_NNNNN``.
        split: ``train``, ``valid`` or ``test``.
        duration: seconds.
        events: one or two :class:`Event` in temporal order.
        captions: :data:`NUM_CAPTIONS` distinct captions.
    """

    name: str
    split: str
    duration: float
    events: List[Event] = field(default_factory=list)
    captions: List[str] = field(default_factory=list)

    @property
    def file_path(self) -> str:
        """The design §5 ``file_path`` of this clip (``split/name.npy``)."""
        return f"{self.split}/{self.name}.npy"


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _rng(seed: int, index: int) -> np.random.Generator:
    # One generator per clip, so a clip never depends on how many clips came before it.
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


#: (length of one repetition, silence between repetitions) in seconds, per repeated kind.
PIECES = {"beep": (0.22, 0.15), "chirp": (0.32, 0.12), "burst": (0.25, 0.18), "click": (0.02, 0.25)}
_MIN_SUSTAINED, _MAX_SUSTAINED = 0.8, 1.3  # seconds of a siren, hum or static


def _repeated_length(kind: str, count: int) -> float:
    """Seconds a repeated event occupies (all repetitions and the gaps between them)."""
    piece, gap = PIECES[kind]
    return count * piece + (count - 1) * gap


def _draw_event(kind: str, rng: np.random.Generator) -> Event:
    loudness = "loud" if rng.random() < 0.6 else "quiet"
    event = Event(kind=kind, loudness=loudness, gain=float(rng.uniform(*_LOUD_GAIN[loudness])))
    if kind in REPEATED_KINDS:
        event.count = int(rng.integers(2, 5)) if kind == "click" else int(rng.integers(1, 5))
    else:
        event.fade = (None, "in", "out")[int(rng.integers(0, 3))]
    if kind == "beep":
        event.pitch = "high" if rng.random() < 0.5 else "low"
        event.frequency = float(rng.uniform(1400, 2400) if event.pitch == "high" else rng.uniform(250, 450))
    elif kind == "siren":
        event.pitch = "high" if rng.random() < 0.5 else "low"
        event.frequency = float(rng.uniform(1500, 1900) if event.pitch == "high" else rng.uniform(400, 600))
    elif kind == "chirp":
        event.direction = "rising" if rng.random() < 0.5 else "falling"
        event.frequency = float(rng.uniform(300, 600) if event.direction == "rising" else rng.uniform(2500, 3500))
    elif kind == "hum":
        event.pitch = "low"
        event.frequency = float(rng.uniform(55, 120))
    return event


def draw_events(rng: np.random.Generator) -> List[Event]:
    """Draws the events of one clip: one or two of different kinds, laid out in order within 3 s."""
    num_events = 1 if rng.random() < 0.4 else 2
    kinds = [str(k) for k in rng.choice(KINDS, size=num_events, replace=False)]
    gap = float(rng.uniform(0.15, 0.35))
    lead = float(rng.uniform(0.05, 0.25))
    while True:  # redraw until the events fit (two long repeated events may not)
        events = [_draw_event(kind, rng) for kind in kinds]
        fixed = sum(_repeated_length(e.kind, e.count) for e in events if e.kind in REPEATED_KINDS)
        flexible = [e for e in events if e.kind in SUSTAINED_KINDS]
        room = MAX_DURATION - 0.1 - lead - gap * (num_events - 1) - fixed
        if room >= _MIN_SUSTAINED * len(flexible):
            break
    t = lead
    for event in events:
        if event.kind in REPEATED_KINDS:
            length = _repeated_length(event.kind, event.count)
        else:
            length = min(float(rng.uniform(1.0, _MAX_SUSTAINED)), room / len(flexible))
        event.start, event.end = round(t, 4), round(t + length, 4)
        t = event.end + gap
    return events


# --------------------------------------------------------------------------------------------
# Sound
# --------------------------------------------------------------------------------------------


def _ramp(n: int, sr: int, seconds: float = 0.01) -> np.ndarray:
    """A raised-cosine on/off envelope of ``n`` samples (no clicks at the edges)."""
    env = np.ones(n)
    k = min(n // 2, max(1, int(seconds * sr)))
    edge = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
    env[:k] = edge
    env[n - k:] = edge[::-1]
    return env


def _harmonics(phase: np.ndarray, top_hz: float, sr: int, odd: bool = False, max_harmonics: int = 8) -> np.ndarray:
    """A harmonic tone on ``phase`` (radians of the fundamental) with 1/k amplitudes.

    Real beeps, sirens and hums are rarely pure sines, and the harmonics spread each event over
    more of the spectrum, which makes the kinds easier to tell apart. Harmonics whose highest
    frequency (``k * top_hz``) would pass 0.45 * ``sr`` are left out (no aliasing).
    """
    out = np.zeros_like(phase)
    for k in range(1, max_harmonics + 1):
        if (odd and k % 2 == 0) or (k > 1 and k * top_hz > 0.45 * sr):
            continue
        out += np.sin(k * phase) / k
    return out


def _render_event(event: Event, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The samples of one event, peak ``event.gain``, starting at its own time 0."""
    total = int(round((event.end - event.start) * sr))
    out = np.zeros(total)

    def place(piece: np.ndarray, at: float) -> None:
        i = int(round(at * sr))
        j = min(total, i + len(piece))
        out[i:j] += piece[: j - i]

    if event.kind in REPEATED_KINDS:
        piece, gap = PIECES[event.kind]
        n = int(piece * sr)
        t = np.arange(n) / sr
        if event.kind == "chirp":
            # Exponential sweep from f0 to f1 = 5 f0 (rising) or f0 / 5 (falling).
            rate = np.log(5.0 if event.direction == "rising" else 0.2) / piece
            phase = 2 * np.pi * event.frequency * (np.exp(rate * t) - 1) / rate
            top_hz = event.frequency * (5.0 if event.direction == "rising" else 1.0)
        for k in range(event.count):
            if event.kind == "beep":
                sound = _harmonics(2 * np.pi * event.frequency * t, event.frequency, sr, odd=True) * _ramp(n, sr)
            elif event.kind == "chirp":
                sound = _harmonics(phase, top_hz, sr) * _ramp(n, sr)
            elif event.kind == "burst":
                sound = rng.standard_normal(n) * _ramp(n, sr, 0.005)
            else:  # click: a 2 ms decaying noise impulse
                sound = rng.standard_normal(n) * np.exp(-t / 0.002)
            place(sound, k * (piece + gap))
    else:
        t = np.arange(total) / sr
        if event.kind == "siren":
            # A wail: the frequency swings +-25 % about its centre twice a second.
            inst = event.frequency * (1.0 + 0.25 * np.sin(2 * np.pi * 2.0 * t))
            sound = _harmonics(2 * np.pi * np.cumsum(inst) / sr, 1.25 * event.frequency, sr)
        elif event.kind == "hum":
            f = event.frequency
            sound = _harmonics(2 * np.pi * f * t, f, sr, max_harmonics=16)  # a buzzing mains hum
        else:  # static
            sound = rng.standard_normal(total) * 0.3
        env = _ramp(total, sr, 0.02)
        if event.fade == "in":
            env = env * np.linspace(0.0, 1.0, total) ** 2
        elif event.fade == "out":
            env = env * np.linspace(1.0, 0.0, total) ** 2
        out = sound * env
    peak = float(np.max(np.abs(out))) or 1.0
    return out * (event.gain / peak)


def render_clip(clip: Clip, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The clip's waveform: float32 (N,) in [-1, 1], its events placed at their onsets.

    A faint noise floor (-60 dB) keeps the gaps from being digital silence, as in recordings.
    """
    n = int(round(clip.duration * sample_rate))
    wav = rng.standard_normal(n) * 1e-3
    for event in clip.events:
        piece = _render_event(event, sample_rate, rng)
        i = int(round(event.start * sample_rate))
        wav[i:i + len(piece)] += piece[: max(0, n - i)]
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


@dataclass
class CorpusSettings:
    """Everything that determines the corpus (saved as ``corpus.json``).

    Args:
        num_clips: clips in all splits together.
        seed: the corpus seed.
        sample_rate: sample rate of the wav files.
        valid_fraction: share of clips in the validation split.
        test_fraction: share of clips in the test split.
    """

    num_clips: int = 400
    seed: int = 0
    sample_rate: int = 24000
    valid_fraction: float = 0.1
    test_fraction: float = 0.1

    def validate(self) -> None:
        """Raises SynthError naming the bad setting."""
        if self.num_clips < 10:
            raise SynthError(f"--num_clips must be at least 10, got {self.num_clips}")
        if not 8000 <= self.sample_rate <= 96000:
            raise SynthError(f"--sample_rate must be within 8000..96000 Hz, got {self.sample_rate}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise SynthError(f"--{name} must be in (0, 0.5), got {value}")


def _every(index: int, fraction: float) -> bool:
    # True for an evenly spread `fraction` of all indices, decided by the index alone.
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def split_of(index: int, settings: CorpusSettings) -> str:
    """Split of clip ``index``, a function of the index and the fractions only.

    Test and validation clips are spread evenly (with the default 0.1 / 0.1: indices ending
    in 9 are test, in 4 valid), so a bigger corpus keeps every clip of a smaller one where it
    was, and its features can be reused.
    """
    if _every(index, settings.test_fraction):
        return "test"
    if _every(index, settings.test_fraction + settings.valid_fraction):
        return "valid"
    return "train"


def make_clip(index: int, settings: CorpusSettings) -> tuple[Clip, np.ndarray]:
    """Clip ``index`` of the corpus and its waveform (a pure function of settings and index)."""
    rng = _rng(settings.seed, index)
    events = draw_events(rng)
    duration = min(MAX_DURATION, round(events[-1].end + float(rng.uniform(0.1, 0.3)), 4))
    clip = Clip(name=f"clip_{index:05d}", split=split_of(index, settings), duration=duration, events=events)
    clip.captions = captions_for(events, rng)
    return clip, render_clip(clip, settings.sample_rate, rng)


def _write_if_changed(path: Path, data: bytes) -> None:
    # Leaves identical files untouched (mtimes too), so a rerun is cheap and tools keyed on
    # file times see nothing new.
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def generate(out: os.PathLike, settings: CorpusSettings, progress: bool = True) -> Dict[str, List[Clip]]:
    """Writes the corpus under ``out`` (see the module docstring for the layout).

    Args:
        out: output folder (created if needed).
        settings: corpus settings.
        progress: show a tqdm progress bar.

    Returns:
        The clips of each split, ``{"train": [...], "valid": [...], "test": [...]}``.

    Raises:
        SynthError: invalid settings, or ``out`` already holds a corpus made with other
            settings (its feature files would no longer match).
    """
    from tqdm.auto import tqdm

    settings.validate()
    out = Path(out)
    manifest = out / "corpus.json"
    wanted = json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n"
    if manifest.is_file():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        # Clip i depends on (seed, rate, fractions, i) only: another num_clips reuses the clips.
        changed = [k for k, v in asdict(settings).items() if k != "num_clips" and old.get(k) != v]
        if changed:
            raise SynthError(f"{out} holds a corpus made with other settings ({', '.join(changed)} differ, see "
                             f"{manifest}); pass another --out or delete that folder first")
        for index in range(settings.num_clips, int(old.get("num_clips", 0))):  # a smaller corpus: drop the rest
            wav = out / "audio" / split_of(index, settings) / f"clip_{index:05d}.wav"
            if wav.is_file():
                wav.unlink()
    clips: Dict[str, List[Clip]] = {split: [] for split in SPLITS}
    metadata = []
    for index in tqdm(range(settings.num_clips), desc="synthesizing clips", unit="clip", disable=not progress):
        clip, wav = make_clip(index, settings)
        _write_if_changed(out / "audio" / clip.split / f"{clip.name}.wav", _wav_bytes(wav, settings.sample_rate))
        clips[clip.split].append(clip)
        metadata.append(json.dumps({**asdict(clip), "file_path": clip.file_path}, sort_keys=True))
    _write_if_changed(out / "csv" / "train.csv", csv_text(
        ("file_path", "caption"), [(c.file_path, text) for c in clips["train"] for text in c.captions], "\n").encode())
    for split in ("valid", "test"):
        _write_if_changed(out / "csv" / f"{split}.csv", csv_text(
            ("file_path",) + tuple(f"caption_{i + 1}" for i in range(NUM_CAPTIONS)),
            [(c.file_path, *c.captions) for c in clips[split]], "\n").encode())
    _write_if_changed(out / "metadata.jsonl", ("\n".join(metadata) + "\n").encode("utf-8"))
    _write_if_changed(manifest, wanted.encode("utf-8"))
    return clips


def load_metadata(folder: os.PathLike) -> List[Clip]:
    """Reads ``metadata.jsonl`` of a generated corpus back into :class:`Clip` objects."""
    clips = []
    with open(Path(folder) / "metadata.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            row.pop("file_path", None)
            row["events"] = [Event(**e) for e in row["events"]]
            clips.append(Clip(**row))
    return clips


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m data.corpora.synth``."""
    defaults = CorpusSettings()
    p = argparse.ArgumentParser(
        prog="python -m data.corpora.synth",
        description="Generate the quick start's captioned sound corpus (wavs + design §5 CSVs). "
                    "Deterministic: the same settings give byte-identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (audio/, csv/, metadata.jsonl, corpus.json)")
    p.add_argument("--num_clips", type=int, default=defaults.num_clips, help="clips in all splits together")
    p.add_argument("--seed", type=int, default=defaults.seed, help="corpus seed")
    p.add_argument("--sample_rate", type=int, default=defaults.sample_rate, help="sample rate of the wav files (Hz)")
    p.add_argument("--valid_fraction", type=float, default=defaults.valid_fraction, help="share of validation clips")
    p.add_argument("--test_fraction", type=float, default=defaults.test_fraction, help="share of test clips")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; a settings or folder mistake is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    settings = CorpusSettings(num_clips=args.num_clips, seed=args.seed, sample_rate=args.sample_rate,
                              valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
    try:
        clips = generate(args.out, settings, progress=not args.quiet)
    except SynthError as error:
        print(f"data.corpora.synth: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"data.corpora.synth: error: cannot write under {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{split} {len(clips[split])}" for split in SPLITS)
    print(f"corpus in {args.out}: {settings.num_clips} clips ({counts}), {NUM_CAPTIONS} captions each, "
          f"seed {settings.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
