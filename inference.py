"""Caption audio files with an EnCLAP checkpoint.

    python inference.py --ckpt CKPT --clap_ckpt 630k-audioset-fusion-best.pt --input a.wav
    python inference.py --ckpt CKPT --input clips/ "more/*.flac" --output captions.csv

Inputs are files, folders (searched recursively for audio files) or glob patterns. Captions are
printed one per line as ``path<TAB>caption``; ``--output`` also writes them to a ``.csv`` or
``.jsonl`` file (atomically). A file that cannot be read is reported on stderr and the others are
still captioned; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import sys

from data.audio import AUDIO_EXTENSIONS


def expand_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """Turn files, folders and globs into a list of files, in the order given.

    Args:
        patterns: command-line ``--input`` values.

    Returns:
        ``(files, problems)``: the files to caption (explicit files are kept whatever their
        extension; folders and globs contribute files with an audio extension) and one-line
        messages for inputs that matched nothing.
    """
    extensions = {ext.lower().lstrip(".") for ext in AUDIO_EXTENSIONS}

    def is_audio(path: str) -> bool:
        return os.path.isfile(path) and os.path.splitext(path)[1].lower().lstrip(".") in extensions

    files: list[str] = []
    problems: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names
            )
            found = [path for path in found if is_audio(path)]
            if not found:
                problems.append(f"{pattern}: folder holds no audio files ({', '.join(sorted(extensions))})")
        elif os.path.isfile(pattern):
            found = [pattern]
        elif glob.has_magic(pattern):
            found = sorted(path for path in glob.glob(pattern, recursive=True) if is_audio(path))
            if not found:
                problems.append(f"{pattern}: the pattern matches no audio file")
        else:
            problems.append(f"{pattern}: no such file or folder")
            found = []
        files.extend(found)
    return list(dict.fromkeys(files)), problems


def format_output(results, path: str) -> str:
    """Render results as CSV (one row per caption or window) or JSON lines, chosen by extension.

    Args:
        results: :class:`modeling.pipeline.CaptionResult` objects.
        path: the output file name (``.csv`` or ``.jsonl``).
    """
    if path.lower().endswith(".jsonl"):
        lines = []
        for res in results:
            record = {"file_path": res.source, "caption": res.caption, "duration": round(res.duration, 3)}
            if res.segments:
                record["segments"] = [
                    {"start": round(s.start, 3), "end": round(s.end, 3), "caption": s.caption} for s in res.segments
                ]
            record["truncated"] = res.truncated
            record["error"] = res.error
            lines.append(json.dumps(record, ensure_ascii=False))
        return "\n".join(lines) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_path", "start", "end", "caption", "error"])
    for res in results:
        if res.segments:
            for seg in res.segments:
                writer.writerow([res.source, f"{seg.start:.3f}", f"{seg.end:.3f}", seg.caption, ""])
        else:
            end = f"{res.duration:.3f}" if res.error is None else ""
            writer.writerow([res.source, "0.000" if res.error is None else "", end, res.caption or "", res.error or ""])
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    from modeling.generation import add_generation_args
    from modeling.pipeline import add_pipeline_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="audio files, folders or glob patterns")
    parser.add_argument("--output", default=None, help="also write the captions to this .csv or .jsonl file")
    add_pipeline_args(parser)
    add_generation_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.output and not args.output.lower().endswith((".csv", ".jsonl")):
        print(f"error: --output {args.output}: use a name ending in .csv or .jsonl", file=sys.stderr)
        return 2

    from data.audio import AudioError
    from modeling.generation import GenerationOptions
    from data.io import atomic_write_text
    from modeling.pipeline import PipelineError, pipeline_from_args, rerank_from_args

    files, problems = expand_inputs(args.input)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        print("error: nothing to caption (check --input)", file=sys.stderr)
        return 2
    try:
        options = GenerationOptions.from_args(args)
        pipeline = pipeline_from_args(args)
        results = pipeline.run(
            files, batch_size=args.batch_size, options=options, rerank=rerank_from_args(args), progress=True
        )
    except (PipelineError, AudioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    failed = 0
    for res in results:
        if res.error is not None:
            failed += 1
            print(f"error: {res.error}", file=sys.stderr)
        elif res.segments:
            for seg in res.segments:
                print(f"{res.source} [{seg.start:.2f}-{seg.end:.2f} s]\t{seg.caption}")
        else:
            print(f"{res.source}\t{res.caption}")
    if args.output:
        atomic_write_text(args.output, format_output(results, args.output))
        print(f"wrote {args.output}", file=sys.stderr)
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed, {len(results) - failed} captioned", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
