"""Preprocessing throughput: data/preprocess.py vs a one-file-at-a-time loop.

    python benchmarks/preprocess.py

Generates 10 s stereo 44.1 kHz WAV clips, builds the random-weight EnCodec and CLAP encoders
once (cost does not depend on weight values), and times two ways of turning the clips into
the two ``.npy`` trees with those same encoders:

* baseline: the original's way of working -- for each file in turn, decode, resample, encode
  with EnCodec, embed with CLAP, save (``FeatureExtractor.extract([path])`` + ``np.save``);
* ours: ``data.preprocess.run`` with its defaults for the device (decoding in a DataLoader
  worker while the main process encodes; on a GPU, batches of similar length).

Each is run ``--rounds`` times, alternating which goes first, on fresh output folders, and
the best time of each counts (the least disturbed by other load on the machine). The codes of both must be
identical (asserted). Prints audio-seconds per second of both and, last, ``speedup: N.NN``
(ours / baseline).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from common.cpu import describe_cpu  # noqa: E402


def make_clips(folder: Path, count: int, seconds: float, sr: int = 44100) -> list:
    """Writes ``count`` stereo 16-bit WAV clips of noise plus tones; returns their paths."""
    rng = np.random.default_rng(0)
    paths = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(count):
        tone = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 4000, size=3))
        wav = np.stack([tone + 0.05 * rng.standard_normal(t.shape) for _ in range(2)], axis=1)  # (N, 2)
        path = folder / f"clip{i:03d}.wav"
        sf.write(str(path), wav.astype(np.float32), sr, subtype="PCM_16")
        paths.append(path)
    return paths


def baseline(extractor, paths, data_root: Path, enc_root: Path, clap_root: Path) -> float:
    """One file at a time through the same front end and encoders; returns seconds."""
    start = time.perf_counter()
    for path in paths:
        codes, clap_embedding = extractor.extract([str(path)])[0]
        rel = path.relative_to(data_root).with_suffix(".npy")
        for root, array in ((enc_root, codes), (clap_root, clap_embedding)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, array)
    return time.perf_counter() - start


def ours(extractor, data_root: Path, enc_root: Path, clap_root: Path, device: str, extra: list) -> float:
    """data.preprocess.run with its defaults (the extractor built once, as for the baseline)."""
    from data import preprocess

    args = preprocess.build_parser().parse_args(
        ["--data_path", str(data_root), "--encodec_path", str(enc_root), "--clap_path", str(clap_root),
         "--random_weights", "--quiet", "--device", str(device), *extra])
    start = time.perf_counter()
    summary = preprocess.run(args, extractor=extractor)
    elapsed = time.perf_counter() - start
    assert summary.failed == 0 and summary.skipped == 0, summary.line()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=5, help="number of clips")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per method")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further data/preprocess.py flags for 'ours' (e.g. --batch_size 4)")
    args = parser.parse_args()

    from common.device import resolve_device
    from data.extraction.encoders import build_feature_extractor

    device = resolve_device(args.device)
    extractor = build_feature_extractor(device, random_weights=True, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_root = tmp / "wavs"
        data_root.mkdir()
        paths = make_clips(data_root, args.clips, args.seconds)
        audio_seconds = args.clips * args.seconds
        extractor.extract([str(paths[0])])  # warm-up: first-call allocations, resampler kernels

        times = {"baseline": [], "ours": []}
        for r in range(args.rounds):
            runs = {
                "baseline": lambda: baseline(extractor, paths, data_root, tmp / f"b{r}/enc", tmp / f"b{r}/clap"),
                "ours": lambda: ours(extractor, data_root, tmp / f"o{r}/enc", tmp / f"o{r}/clap", device, args.extra),
            }
            # Alternate which goes first, so neither always runs right after the other.
            for name in (("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")):
                times[name].append(runs[name]())
            print(f"round {r}: baseline {times['baseline'][-1]:.2f} s, ours {times['ours'][-1]:.2f} s", flush=True)

        for path in paths:  # same front end, same encoders: the same codes
            rel = path.relative_to(data_root).with_suffix(".npy")
            assert np.array_equal(np.load(tmp / "b0/enc" / rel), np.load(tmp / "o0/enc" / rel)), rel
            assert np.allclose(np.load(tmp / "b0/clap" / rel), np.load(tmp / "o0/clap" / rel), atol=1e-6), rel

    best = {name: min(values) for name, values in times.items()}
    kind = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({kind}); {args.clips} clips x {args.seconds:.0f} s stereo 44.1 kHz WAV; "
          f"random-weight EnCodec 24 kHz (12 kbps) + CLAP HTSAT-tiny fusion")
    print(describe_cpu())
    for name in ("baseline", "ours"):
        print(f"{name:8s}: {best[name]:7.2f} s  {audio_seconds / best[name]:7.2f} audio-s/s  "
              f"{best[name] / args.clips:.3f} s/clip")
    print(f"speedup: {best['baseline'] / best['ours']:.2f}")


if __name__ == "__main__":
    main()
