"""Score an EnCLAP checkpoint on a test split (METEOR, CIDEr-D, SPICE, SPIDEr, SPIDEr-FL, FENSE, Vocab).

    # from preprocessed features (data/preprocess.py output)
    python evaluate.py --ckpt CKPT --test_csv csv/clotho/test.csv --from_preprocessed \
        --encodec_path data/clotho/encodec --clap_path data/clotho/clap --save_path preds.csv
    # from the audio files (features computed on the fly by the same front end)
    python evaluate.py --ckpt CKPT --clap_ckpt 630k-audioset-fusion-best.pt \
        --test_csv csv/clotho/test.csv --audio_path data/clotho/audio --save_path preds.csv

Order of work: the metrics' requirements are checked (Java, jars) and every file the CSV names
is checked to exist BEFORE the model generates anything, so a missing jar or clip fails in
seconds, not after an hour. With the default metrics, those this machine cannot run (SPICE,
SPIDEr and SPIDEr-FL without Stanford CoreNLP, FENSE and SPIDEr-FL without their models) are
skipped with one warning, as in training; metrics named with ``--metrics`` must all run.
Relative paths are taken from the current folder. Scores are computed once over the whole split
and printed as a table with 95 % bootstrap intervals (``--bootstrap``); with ``--save_path`` the
predictions and references are written to that CSV and the scores to
``<save_path without .csv>_scores.json`` beside it; ``--per_clip`` writes each clip's scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def scores_path(save_path: str) -> str:
    """Where the scores JSON of ``--save_path`` goes: beside it, ``<stem>_scores.json``."""
    stem = save_path[:-4] if save_path.lower().endswith(".csv") else save_path
    return stem + "_scores.json"


def write_per_clip(path: str, file_paths, predictions, references, per_clip: dict) -> None:
    """One row per clip: ``file_path, prediction, caption_1 .. caption_N`` then each per-clip score.

    ``fluency_error`` is 1 where FENSE's checker flagged the caption; the rest are scores.
    """
    from common.io import write_csv

    width = max(len(refs) for refs in references)
    header = ["file_path", "prediction", *[f"caption_{i + 1}" for i in range(width)], *per_clip]
    rows = []
    for i, (path_i, prediction, refs) in enumerate(zip(file_paths, predictions, references)):
        values = [f"{per_clip[name][i]:.0f}" if name == "fluency_error" else f"{per_clip[name][i]:.6g}"
                  for name in per_clip]
        rows.append([path_i, prediction, *refs, *[""] * (width - len(refs)), *values])
    write_csv(path, header, rows, lineterminator="\n")


def build_parser() -> argparse.ArgumentParser:
    from captioning.cli import add_generation_args, add_pipeline_args
    from scoring import DEFAULT_METRICS
    from scoring.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--test_csv", required=True, help="split file: file_path, caption_1 .. caption_5")
    data.add_argument(
        "--from_preprocessed", action="store_true", help="read features from --encodec_path/--clap_path (default: off)"
    )
    data.add_argument("--encodec_path", default=None, help="root of the EnCodec code .npy files (preprocessed mode)")
    data.add_argument("--clap_path", default=None, help="root of the CLAP embedding .npy files (preprocessed mode)")
    data.add_argument(
        "--audio_path",
        default=None,
        help="root of the audio files (raw mode): file_path 'split/x.npy' is read from 'split/x.<wav|flac|...>'",
    )
    data.add_argument("--save_path", default=None, help="write predictions + references to this CSV (and scores JSON)")
    data.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help=f"metrics (default: {' '.join(DEFAULT_METRICS)}, less those this machine cannot run; "
        "also bleu_1..4, rouge_l)",
    )
    data.add_argument("--per_clip", default=None,
                      help="write one row per clip to this CSV: file_path, prediction, references and "
                      "each per-clip score (CIDEr-D, SPICE, SPIDEr, FENSE, SBERT-sim, fluency error, ...)")
    data.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES,
                      help=f"resamples of the clips for 95%% intervals (default: {DEFAULT_RESAMPLES}, seed "
                      f"{DEFAULT_SEED}; 0: none)")
    data.add_argument("--num_workers", type=int, default=0, help="feature-loading workers (default: 0)")
    add_pipeline_args(parser, long_audio=False)
    add_generation_args(parser)
    return parser


def evaluate(args: argparse.Namespace) -> int:
    """Check everything, generate, score once; returns the exit status."""
    from captioning.cli import generation_from_args, pipeline_from_args, rerank_from_args
    from common.io import atomic_write_text, write_predictions_csv
    from data.extraction.audio import audio_for_feature_path
    from data.training.dataset import DataError, read_split
    from scoring import DEFAULT_METRICS, format_scores, preflight, usable_metrics
    from scoring.names import DISPLAY_NAMES
    from scoring.bootstrap import DEFAULT_SEED, LEVEL, intervals
    from scoring.metrics import score_clips
    from scoring.diversity import checkpoint_hint, degenerate_warning

    log = logging.getLogger("evaluate")
    for name in ("test_csv", "encodec_path", "clap_path", "audio_path", "save_path", "per_clip"):
        if getattr(args, name):  # messages then name the absolute path that was tried
            setattr(args, name, os.path.abspath(os.path.expanduser(getattr(args, name))))
    if args.from_preprocessed:
        if not (args.encodec_path and args.clap_path):
            raise DataError("--from_preprocessed needs --encodec_path and --clap_path")
    elif not args.audio_path:
        raise DataError("give --audio_path WAVS, or --from_preprocessed with --encodec_path and --clap_path")
    if args.bootstrap < 0:
        raise DataError(f"--bootstrap must be 0 (no intervals) or a number of resamples, not {args.bootstrap}")
    options = generation_from_args(args)
    # 1. Metrics first: a missing jar must not surface after the whole generation.
    skipped = None
    if args.metrics is None:  # the defaults: score what this machine can, say what it cannot
        metrics, skipped = usable_metrics(None)
        if skipped:
            log.warning("%s", skipped)
    else:
        metrics = preflight(args.metrics)
    # 2. The whole split, every file, before any work.
    split = read_split(args.test_csv)
    if not args.from_preprocessed:
        audio_files = [audio_for_feature_path(args.audio_path, path) for path in split.file_paths]
        missing = [path for path, found in zip(split.file_paths, audio_files) if found is None]
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            raise DataError(f"{len(missing)} of {len(split.file_paths)} clips of {args.test_csv} have no audio file "
                            f"under {args.audio_path}: {shown} (fix --audio_path or the CSV)")
    # 3. Generate.
    pipeline = pipeline_from_args(args, long_audio="truncate")
    pipeline.truncate_hint = "evaluation always captions a clip's start"
    rerank = rerank_from_args(args)
    kwargs = dict(batch_size=args.batch_size, options=options, rerank=rerank, progress=True)
    start = time.perf_counter()
    if args.from_preprocessed:
        predictions = pipeline.caption_preprocessed(args.test_csv, args.encodec_path, args.clap_path,
                                                    num_workers=args.num_workers, **kwargs)
    else:
        results = pipeline.run(audio_files, **kwargs)
        failed = [res.error for res in results if res.error is not None]
        if failed:
            for message in failed:
                print(f"error: {message}", file=sys.stderr)
            raise DataError(f"{len(failed)} clip(s) could not be read; scores need every clip (fix or remove them)")
        truncated = sum(res.truncated for res in results)
        if truncated:
            log.warning("%d clip(s) longer than %.1f s were captioned from their start", truncated,
                        pipeline.window_seconds)
        predictions = [res.caption for res in results]
    seconds = time.perf_counter() - start
    warning = degenerate_warning(predictions, checkpoint_hint(args.ckpt), "test clips")
    if warning:
        log.warning("%s", warning)
    # 4. Score once, on the whole split.
    clip_scores = score_clips(predictions, split.references, metrics, device=str(pipeline.device))  # FENSE's models
    scores = clip_scores.corpus
    spread = intervals(clip_scores, args.bootstrap) if args.bootstrap else None

    print(format_scores(scores, title=f"{args.test_csv}: {len(predictions)} clips, {seconds:.1f} s of generation",
                        intervals=spread))
    if skipped:
        print(f"not scored here: {', '.join(DISPLAY_NAMES[m] for m in DEFAULT_METRICS if m not in metrics)} "
              "(the warning above says why)")
    if args.per_clip:
        write_per_clip(args.per_clip, split.file_paths, predictions, split.references, clip_scores.per_clip)
        print(f"wrote {args.per_clip}", file=sys.stderr)
    if args.save_path:
        write_predictions_csv(args.save_path, split.file_paths, predictions, split.references)
        report = {
            "scores": scores,
            "intervals": spread and {name: list(bounds) for name, bounds in spread.items()},
            "bootstrap": args.bootstrap and {"resamples": args.bootstrap, "seed": DEFAULT_SEED, "level": LEVEL},
            "skipped_metrics": skipped,
            "num_clips": len(predictions),
            "test_csv": args.test_csv,
            "ckpt": str(args.ckpt),
            "mode": "preprocessed" if args.from_preprocessed else "audio",
            "generation": vars(options),
            "rerank": vars(rerank),
            "generation_seconds": round(seconds, 2),
        }
        atomic_write_text(scores_path(args.save_path), json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.save_path} and {scores_path(args.save_path)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from common.errors import UserError, one_line

    try:
        return evaluate(args)
    except (UserError, ValueError) as exc:  # ValueError: a bad generation option
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
