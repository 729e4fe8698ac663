"""Offline feature extraction: audio tree -> EnCodec codes tree + CLAP embedding tree.

    python data/preprocess.py --data_path WAVS --encodec_path OUT/encodec \\
        --clap_path OUT/clap --clap_ckpt 630k-audioset-fusion-best.pt

Every audio file under ``--data_path`` (recursively) gives ``OUT/encodec/<rel>.npy`` with the
codes (T, 16) int64 and ``OUT/clap/<rel>.npy`` with the CLAP embedding (512,) float32, where
``<rel>`` is the file's path relative to ``--data_path`` without its extension (design §1, §2).

How it works (one place per concern):

* decoding and resampling (``data.extraction.encoders.decode`` + ``prepare_branches``) run in
  DataLoader worker processes while the main process encodes the previous batch;
* features come from ``data.extraction.encoders.FeatureExtractor`` -- the same front end that
  evaluation, inference and the demo use -- in batches of clips of similar length;
* outputs are written to ``NAME.npy.partial`` then renamed, so a killed run never leaves a
  truncated ``.npy``; a rerun skips every clip whose outputs all exist (resume);
* a clip that fails (undecodable, not audio, ...) is written to the failures file as
  ``path<TAB>reason``; all other clips are still processed and the exit status is 1;
* ``--shard i/N`` (or ``accelerate launch``/``torchrun``: RANK and WORLD_SIZE) gives each
  process a disjoint share of the sorted file list, and its own GPU (:func:`pick_device`);
* ``--pack STORE`` writes a packed store instead of the two trees (:mod:`data.extraction.store`): each
  share appends its clips to its own shards, each committed whole (a killed run redoes at most
  the shard in flight), and the share that finishes last writes the store's index.

Codes are stored whole; the model crops to 1021 frames (13.6 s) at load time (design §3). The
summary line says how many clips are longer than that.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a file: import from the repository root, not data/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.extraction.audio import AUDIO_EXTENSIONS, ENCODEC_FRAME_RATE, find_audio_files
from data.extraction.batching import (DEFAULT_MAX_BATCH_SECONDS, DecodeDataset, collate_list, plan_batches,
                                    probe_duration, worker_init)
from data.extraction.clap_encoder import CLAP_CHECKPOINT_URL
from data.extraction.encoders import DEFAULT_CODEC, build_feature_extractor, codec_class
from common.constants import MAX_FRAMES
from common.device import cpu_workers_per_process, pick_device
from common.distributed import parse_shard, select_shard
from common.errors import UsageError, UserError, one_line
from common.io import atomic_open, atomic_write_text
from data.extraction import store

logger = logging.getLogger("preprocess")


# Defaults per device, chosen by measurement (README, "Benchmarks"): on CPU, EnCodec is
# slower per clip in batches than one at a time (2-core CPU, 10 s clips: 0.63 s alone vs
# 1.00 s in batches of 8), so CPU encodes clip by clip; on a GPU batching makes it fast.
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 32}
# On CPU the encoders already use every core; decoding + resampling a 10 s clip (~0.1 s, a few
# per cent of its cost) inline was as fast as or faster than a worker process competing for
# the same cores (5 of 6 paired rounds on the 2-core test machine). Workers pay off on a GPU.
DEFAULT_CPU_WORKERS = 0


def default_workers(kind: str) -> int:
    """Decoding workers when ``--num_workers`` is not given: none on CPU; on a GPU this
    process's share of the machine's cores (8 GPU processes on 16 cores get 2 each, not 8)."""
    return DEFAULT_CPU_WORKERS if kind == "cpu" else cpu_workers_per_process()


# --------------------------------------------------------------------------- planning


def normalize_extensions(extensions: Sequence[str]) -> Tuple[str, ...]:
    """Lower-cases extensions and adds the leading dot (``WAV`` -> ``.wav``)."""
    out = []
    for ext in extensions:
        for part in str(ext).split(","):
            part = part.strip().lower()
            if part:
                out.append(part if part.startswith(".") else "." + part)
    if not out:
        raise UsageError("--extensions is empty; give e.g. --extensions wav flac")
    return tuple(dict.fromkeys(out))


def discover(data_path: Path, extensions: Sequence[str]) -> List[str]:
    """Audio files under ``data_path`` (see :func:`data.extraction.audio.find_audio_files`), or the one file given."""
    if data_path.is_file():
        return [data_path.name]
    if not data_path.is_dir():
        raise UsageError(f"--data_path not found: {data_path.absolute()}")
    return find_audio_files(data_path, extensions)


def output_path(root: Path, rel: str) -> Path:
    """The ``.npy`` path of an input under an output root, refusing any that escapes it.

    Args:
        root: output root (``--encodec_path`` or ``--clap_path``).
        rel: input path relative to ``--data_path``.

    Returns:
        ``root / rel`` with the extension replaced by ``.npy``.

    Raises:
        UsageError: the path would land outside ``root`` (``..`` components, an absolute
            name, or a symbolic link inside the output tree pointing elsewhere).
    """
    out = root / Path(rel).with_suffix(".npy")
    real_root = os.path.realpath(root)
    real_out = os.path.realpath(out)
    if Path(rel).is_absolute() or ".." in Path(rel).parts or os.path.commonpath([real_root, real_out]) != real_root:
        raise UsageError(f"refusing to write {out}: it resolves to {real_out}, outside the output root "
                         f"{real_root} (remove the symbolic link or choose another output folder)")
    return out


# --------------------------------------------------------------------------- writing


def atomic_save(path: Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` (.npy) via a ``.partial`` file and an atomic rename.

    A process killed mid-write leaves only the ``.partial`` file, which a resume ignores and
    overwrites. No fsync: this protects against killed processes, not power loss, and an
    fsync per file would dominate the cost of small embeddings.

    Raises:
        UsageError: the file cannot be written (one line, with the fix).
    """
    try:
        with atomic_open(path, "wb", stable_temp=True) as f:
            np.save(f, array)
    except OSError as err:  # full disk, read-only or foreign folder: every later write fails too
        raise UsageError(f"cannot write {path}: {err.strerror or err}; check free space and permissions "
                         "(finished clips are kept: rerun to resume)") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_failures(path: Path, failures: List[Tuple[str, str]]) -> None:
    """Writes ``path<TAB>reason`` lines atomically; removes a stale file when nothing failed."""
    if not failures:
        if path.exists():
            path.unlink()
        return
    atomic_write_text(path, "".join(f"{clip}\t{_one_line(reason)}\n" for clip, reason in failures))


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Summary:
    """Counts of one run (this shard)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    long_clips: int = 0  # clips with more than max_frames EnCodec frames (done + skipped)
    audio_seconds: float = 0.0  # audio encoded in this run
    failures_file: Optional[Path] = None
    indexed: Optional[int] = None  # --pack: clips in the index this run wrote (None: no index written)
    max_frames: int = MAX_FRAMES  # --max_frames: the frame limit of the recipe to train with
    frame_rate: float = ENCODEC_FRAME_RATE  # the codec's (--codec), for the limit in seconds
    long_names: List[str] = dataclasses.field(default_factory=list)  # the long clips, first few named
    short_names: List[str] = dataclasses.field(default_factory=list)  # clips shorter than one EnCodec frame

    def line(self) -> str:
        """The final one-line summary."""
        text = f"done {self.done}, skipped {self.skipped} (already present), failed {self.failed}"
        if self.failed:
            text += f" (listed in {self.failures_file})"
        text += (f"; {self.long_clips} clip(s) exceed {self.max_frames} EnCodec frames "
                 f"({self.max_frames / self.frame_rate:.1f} s): stored whole, cropped at load time")
        if self.indexed is not None:
            text += f"; packed store indexed: {self.indexed} clip(s)"
        return text

    def warnings(self, shown: int = 5) -> List[str]:
        """The clips the user should hear about: over the frame limit, or shorter than one frame."""
        what = (f"are longer than {self.max_frames} frames ({self.max_frames / self.frame_rate:.1f} s, "
                "--max_frames): the model reads only that much of each", "hold less sound than one EnCodec frame "
                f"({1000 / self.frame_rate:.1f} ms) and became a single frame")
        return [f"{len(names)} clip(s) {text}: {', '.join(names[:shown])}{', ...' if len(names) > shown else ''}"
                for names, text in zip((self.long_names, self.short_names), what) if names]


def check_weights_args(args: argparse.Namespace) -> Optional[str]:
    """Validates the weight flags before any model is built; returns the CLAP checkpoint path.

    Raises:
        UsageError: no ``--clap_ckpt`` (and no ``--random_weights``), or the file is missing.
    """
    if args.skip_clap or args.random_weights:
        return None
    if args.clap_ckpt is None:
        raise UsageError(f"--clap_ckpt is required: download 630k-audioset-fusion-best.pt from {CLAP_CHECKPOINT_URL} "
                         "(or pass --random_weights for a test run)")
    if not Path(args.clap_ckpt).is_file():
        raise UsageError(f"--clap_ckpt not found: {Path(args.clap_ckpt).absolute()} "
                         f"(download it from {CLAP_CHECKPOINT_URL})")
    return str(args.clap_ckpt)


def build_extractor(args: argparse.Namespace, device):
    """Builds the shared FeatureExtractor (one builder, seeded), turning weight problems into UsageErrors."""
    ckpt = check_weights_args(args)
    try:
        return build_feature_extractor(device, random_weights=args.random_weights, seed=args.seed, clap_ckpt=ckpt,
                                       encodec=not args.skip_encodec, clap=not args.skip_clap, codec=args.codec)
    except OSError as err:  # weights unreadable: one line, no traceback
        raise UsageError(_one_line(err)) from None


def _encode(extractor, prepared: list) -> list:
    """``extract_prepared``, or the one encoder left when a branch is skipped (None)."""
    if extractor.encodec is not None and extractor.clap is not None:
        return extractor.extract_prepared(prepared)
    if extractor.encodec is not None:
        return [(codes, None) for codes in extractor.encodec.encode([wav24 for wav24, _ in prepared])]
    return [(None, emb) for emb in extractor.clap.encode([wav48 for _, wav48 in prepared])]


def _extract_batch(extractor, clips: List[Tuple[int, tuple]]) -> dict:
    """Encodes a batch; if it fails, retries clip by clip so that one bad clip fails alone.

    Args:
        extractor: the FeatureExtractor.
        clips: ``(index, prepare_branches output)`` pairs.

    Returns:
        ``{index: (codes, clap_embedding) or a one-line error string}``.
    """
    try:
        feats = _encode(extractor, [prepared for _, prepared in clips])
        return {index: feat for (index, _), feat in zip(clips, feats)}
    except Exception as err:  # noqa: BLE001 -- isolate the culprit below
        if len(clips) == 1:
            return {clips[0][0]: f"{type(err).__name__}: {err}"}
        out = {}
        for clip in clips:
            out.update(_extract_batch(extractor, [clip]))
        return out


class _TreeSink:
    """The per-file layout: one ``.npy`` per clip under each root (design §5), each written atomically."""

    def __init__(self, roots: Dict[str, Path], files: Sequence[str]):
        self.outputs: Dict[str, Dict[str, Path]] = {}
        owner: Dict[Path, str] = {}
        for rel in files:
            self.outputs[rel] = {}
            for name, root in roots.items():
                out = output_path(root, rel)
                if out in owner:
                    raise UsageError(f"{owner[out]} and {rel} would both write {out}; rename one or limit --extensions")
                owner[out] = rel
                self.outputs[rel][name] = out

    def done_frames(self, rel: str) -> Optional[int]:
        """None when the clip still needs work, else its frames (0 when codes are skipped or unreadable)."""
        outs = self.outputs[rel]
        if not all(p.is_file() for p in outs.values()):
            return None
        try:
            return int(np.load(outs["encodec"], mmap_mode="r").shape[0]) if "encodec" in outs else 0
        except Exception:  # noqa: BLE001 -- a foreign file there is not ours to judge
            return 0

    def add(self, rel: str, codes, clap_embedding) -> None:
        outs = self.outputs[rel]
        if "encodec" in outs:
            atomic_save(outs["encodec"], np.asarray(codes, dtype=np.int64))  # (T, 16)
        if "clap" in outs:
            atomic_save(outs["clap"], np.asarray(clap_embedding, dtype=np.float32))  # (512,)

    def close(self) -> Optional[int]:
        return None


class _PackedSink:
    """The packed layout (:mod:`data.extraction.store`): this share's own shards; the last share to finish indexes them."""

    def __init__(self, root: Path, kinds: Sequence[str], files: Sequence[str], index: int, count: int,
                 shard_clips: int):
        self.root, self.index, self.count = root, index, count
        self.names: Dict[str, str] = {}
        owner: Dict[str, str] = {}
        for rel in files:
            name = Path(rel).with_suffix(".npy").as_posix()  # the CSV's file_path, as in the per-file layout
            if name in owner:
                raise UsageError(f"{owner[name]} and {rel} would both be stored as {name} in {root}; rename one "
                                 "or limit --extensions")
            owner[name] = rel
            self.names[rel] = name
        try:
            self.done = store.done_files(root) if root.is_dir() else {}
            store.start_share(root, index, count)
            self.writer = store.PackedWriter(root, f"r{index:05d}-of-{count:05d}", kinds, shard_clips)
        except (store.StoreError, OSError) as err:
            raise UsageError(f"cannot use {root.absolute()} as a packed store: {_one_line(err)}") from None

    def done_frames(self, rel: str) -> Optional[int]:
        return self.done.get(self.names[rel])

    def add(self, rel: str, codes, clap_embedding) -> None:
        self.writer.add(self.names[rel], codes, clap_embedding)

    def close(self) -> Optional[int]:
        """Commits the last shard; returns the clips indexed, or None while other shares still run."""
        self.writer.flush()
        return store.finish_share(self.root, self.index, self.count)


def run(args: argparse.Namespace, extractor=None) -> Summary:
    """Runs preprocessing for the parsed command line; see :func:`build_parser`.

    Args:
        args: parsed flags.
        extractor: an already built ``FeatureExtractor`` to use instead of building one from
            the flags (benchmarks reuse one across runs); None builds it when needed.

    Raises:
        UsageError: bad arguments, an output escaping its root, clashing outputs, missing
            weights. Raised before any clip is encoded.
    """
    data_path = Path(args.data_path)
    if args.skip_encodec and args.skip_clap:
        raise UsageError("--skip_encodec and --skip_clap together leave nothing to do")
    pack = Path(args.pack) if args.pack else None
    if pack is not None and (args.encodec_path or args.clap_path):
        raise UsageError("--pack STORE writes codes and embeddings into one store: drop --encodec_path/--clap_path")
    roots: Dict[str, Path] = {}
    if pack is None and not args.skip_encodec:
        if args.encodec_path is None:
            raise UsageError("--encodec_path is required (or pass --skip_encodec, or --pack STORE)")
        roots["encodec"] = Path(args.encodec_path)
    if pack is None and not args.skip_clap:
        if args.clap_path is None:
            raise UsageError("--clap_path is required (or pass --skip_clap, or --pack STORE)")
        roots["clap"] = Path(args.clap_path)

    extensions = normalize_extensions(args.extensions)
    if ".npy" in extensions:
        raise UsageError("--extensions must not include .npy (that is what this writes)")
    shard_index, shard_count = parse_shard(args.shard)
    check_weights_args(args)
    all_files = discover(data_path, extensions)
    files = select_shard(all_files, shard_index, shard_count)
    shard_tag = f" (shard {shard_index}/{shard_count})" if shard_count > 1 else ""
    first_root = pack if pack is not None else next(iter(roots.values()))
    failures_file = Path(args.failures) if args.failures else first_root / (
        "preprocess_failures.tsv" if shard_count == 1 else f"preprocess_failures.{shard_index}-of-{shard_count}.tsv")

    # Check every output before touching a model: escapes and clashes are refused whole.
    kinds = [kind for kind, skip in (("codes", args.skip_encodec), ("clap", args.skip_clap)) if not skip]
    sink = _PackedSink(pack, kinds, files, shard_index, shard_count, args.pack_shard_clips) if pack is not None \
        else _TreeSink(roots, files)
    codec = extractor.encodec if extractor is not None and extractor.encodec is not None else codec_class(args.codec)
    summary = Summary(failures_file=failures_file, max_frames=args.max_frames, frame_rate=codec.frame_rate)
    pending = []
    for rel in files:
        frames = sink.done_frames(rel)
        if frames is None:
            pending.append(rel)
        else:
            summary.skipped += 1
            summary.long_clips += int(frames > summary.max_frames)
            summary.long_names += [rel] if frames > summary.max_frames else []
    print(f"{len(all_files)} audio file(s) under {data_path}{shard_tag}: {len(files)} in this share, "
          f"{summary.skipped} already done, {len(pending)} to process", file=sys.stderr)

    failures: List[Tuple[str, str]] = []
    if pending:
        device = pick_device(args.device, shard_index, shard_count, sharded_by_flag=args.shard is not None)
        kind = "cuda" if device.type == "cuda" else "cpu"
        batch_size = args.batch_size or DEFAULT_BATCH_SIZE[kind]
        num_workers = args.num_workers if args.num_workers is not None else default_workers(kind)
        if args.random_weights:
            logger.warning("using RANDOM-WEIGHT encoders (--random_weights): the features are meaningless, "
                           "for tests and demos only")
        if extractor is None:
            extractor = build_extractor(args, device)

        paths = [data_path / rel if data_path.is_dir() else data_path for rel in pending]
        durations = [probe_duration(p) for p in tqdm(paths, desc="reading headers", unit="file",
                                                     disable=len(paths) < 1000 or args.quiet)]
        batches = plan_batches(durations, batch_size, args.max_batch_seconds)
        loader = DataLoader(DecodeDataset(paths, extractor.codec_rate), batch_sampler=batches, num_workers=num_workers,
                            collate_fn=collate_list, worker_init_fn=worker_init if num_workers else None,
                            prefetch_factor=2 if num_workers else None)
        progress = tqdm(total=len(pending), desc=f"preprocess{shard_tag}", unit="clip", dynamic_ncols=True,
                        disable=args.quiet)
        for batch in loader:
            clips = []
            for index, prepared, error in batch:
                if error is not None:
                    failures.append((str(paths[index]), error))
                else:
                    clips.append((index, prepared))
            results = _extract_batch(extractor, clips) if clips else {}
            for index, (wav24, _) in clips:
                result = results[index]
                if isinstance(result, str):
                    failures.append((str(paths[index]), result))
                    continue
                codes, clap_embedding = result
                sink.add(pending[index], codes, clap_embedding)
                if codes is not None and codes.shape[0] > summary.max_frames:
                    summary.long_clips += 1
                    summary.long_names.append(pending[index])
                # One EnCodec frame is a hop of 320 samples at 24 kHz; less sound still gives a frame.
                if len(wav24) < extractor.codec_rate / summary.frame_rate:
                    summary.short_names.append(pending[index])
                summary.done += 1
                summary.audio_seconds += len(wav24) / extractor.codec_rate
            progress.update(len(batch))
            progress.set_postfix(failed=len(failures), refresh=False)
        progress.close()

    summary.failed = len(failures)
    summary.indexed = sink.close()
    write_failures(failures_file, failures)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``data/preprocess.py``."""
    p = argparse.ArgumentParser(
        description="Extract EnCodec codes (T, 16) and CLAP embeddings (512,) for every audio file under "
                    "--data_path, mirroring its tree as .npy files. Resumable; see docs/data.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_path", required=True, help="folder of audio files (searched recursively), or one file")
    p.add_argument("--encodec_path", help="output root of the EnCodec codes tree")
    p.add_argument("--clap_path", help="output root of the CLAP embeddings tree")
    p.add_argument("--pack", default=None, metavar="STORE",
                   help="write a packed store (a few shard files + index.json, see docs/data.md) instead of the "
                        "two .npy trees; point both data.encodec_base_path and data.clap_base_path at STORE")
    p.add_argument("--pack_shard_clips", type=int, default=store.DEFAULT_SHARD_CLIPS,
                   help="--pack: clips per shard (a killed run redoes at most this many per process)")
    p.add_argument("--clap_ckpt", help="LAION-CLAP checkpoint 630k-audioset-fusion-best.pt")
    p.add_argument("--extensions", nargs="+", default=list(AUDIO_EXTENSIONS),
                   help="audio file extensions to include (case-insensitive)")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"clips per batch; default by device: {DEFAULT_BATCH_SIZE}")
    p.add_argument("--max_batch_seconds", type=float, default=DEFAULT_MAX_BATCH_SECONDS,
                   help="cap on a batch's padded audio (clips x longest clip, in seconds)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="decoding worker processes; default 0 (inline) on CPU; on GPU min(8, cores / "
                        "processes on this machine (LOCAL_WORLD_SIZE))")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--shard", default=None,
                   help="i/N: process only the i-th of N disjoint shares (default under accelerate launch "
                        "or torchrun: RANK/WORLD_SIZE)")
    p.add_argument("--failures", default=None,
                   help="failures file (path<TAB>reason); default preprocess_failures.tsv in the first output root")
    p.add_argument("--random_weights", action="store_true",
                   help="use random-weight encoders (no downloads, meaningless features): tests and demos only")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random-weight encoders and of CLAP's chunk choice for clips over 10 s")
    p.add_argument("--codec", default=DEFAULT_CODEC,
                   help="the codec: encodec, or package.module:Class of another (design §10); train with the "
                        "same name in the recipe's data.codec")
    p.add_argument("--skip_encodec", action="store_true", help="do not compute EnCodec codes")
    p.add_argument("--skip_clap", action="store_true", help="do not compute CLAP embeddings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max_frames", type=int, default=MAX_FRAMES, help="frame limit of the recipe you will train "
                   "with (cfg/tiny.yaml: 253 = 3.4 s); longer clips are counted and named")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns 0 when every clip has its features, 1 when some failed, 2 on usage errors."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        print("error: --batch_size must be >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = run(args)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished clips are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - start
    print(summary.line())
    for message in summary.warnings():
        print(f"warning: {message}", file=sys.stderr)
    if summary.audio_seconds:
        print(f"{summary.audio_seconds:.1f} s of audio in {elapsed:.1f} s "
              f"({summary.audio_seconds / elapsed:.1f} audio-seconds per second)", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
