"""Caption audio files with an EnCLAP checkpoint.

    python inference.py --ckpt CKPT --clap_ckpt 630k-audioset-fusion-best.pt --input a.wav
    python inference.py --ckpt CKPT --input clips/ "more/*.flac" --output captions.csv

Inputs are files, folders (searched recursively for audio files) or glob patterns. Captions are
printed one per line as ``path<TAB>caption``; ``--output`` also writes them to a ``.csv`` or
``.jsonl`` file (atomically). A file that cannot be read is reported on stderr and the others are
still captioned; the exit status is then 1.

With ``--output``, a collection is captioned in chunks kept in ``OUTPUT.parts/``: a rerun of the
same command skips what is done, and ``accelerate launch`` / ``torchrun`` spread the inputs over
every process and machine (captioning/collection.py, docs/cluster.md)::

    accelerate launch --multi_gpu --num_processes 8 inference.py --ckpt CKPT --input clips/ --output caps.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from captioning.cli import add_generation_args, add_pipeline_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="audio files, folders or glob patterns")
    parser.add_argument("--output", default=None, help="also write the captions to this .csv or .jsonl file "
                        "(resumable: finished chunks are kept in OUTPUT.parts/; required with several processes)")
    parser.add_argument("--chunk_size", type=int, default=64,
                        help="with --output: clips per part file, the most a crash can lose per process")
    parser.add_argument("--compare_fp32", action="store_true",
                        help="with --dtype bf16/fp16: caption the inputs again in float32 and report on stderr "
                        "how many captions and tokens agree (default: off)")
    add_pipeline_args(parser)
    add_generation_args(parser)
    return parser


def report_agreement(pipeline, args, results, options, rerank) -> None:
    """Caption the readable inputs again in float32 and log how far the captions agree."""
    import torch

    from captioning.cli import pipeline_from_args
    from captioning.pipeline import caption_agreement

    if pipeline.dtype == torch.float32:
        logging.getLogger("inference").warning("--compare_fp32: the model already runs in float32, nothing to compare")
        return
    done = [res for res in results if res.error is None]
    reference = pipeline_from_args(args, dtype="fp32", encodec=pipeline.encodec, clap=pipeline.clap)
    theirs = reference.run([res.source for res in done], batch_size=args.batch_size, options=options, rerank=rerank)
    captions, tokens = caption_agreement([res.caption for res in done], [res.caption for res in theirs],
                                         pipeline.tokenizer)
    print(f"{args.dtype} vs fp32 on {len(done)} input(s): {captions:.1%} of captions identical, "
          f"{tokens:.1%} of tokens agree", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from captioning.cli import generation_from_args, pipeline_from_args, rerank_from_args
    from captioning.collection import caption_collection, collection_settings
    from captioning.records import OUTPUT_SUFFIXES
    from common.device import launcher_rank
    from common.errors import UserError, one_line
    from data.extraction.audio import expand_audio_inputs
    from scoring.diversity import checkpoint_hint, degenerate_warning

    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        print(f"error: --output {args.output}: use a name ending in .csv or .jsonl", file=sys.stderr)
        return 2
    rank, world = launcher_rank()
    if world > 1 and not args.output:
        print("error: several processes need --output FILE.csv|.jsonl to merge their captions into", file=sys.stderr)
        return 2
    files, problems = expand_audio_inputs(args.input)
    for problem in problems if rank == 0 else []:  # said once, not once per rank
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        print("error: nothing to caption (check --input)", file=sys.stderr)
        return 2
    try:
        options = generation_from_args(args)
        pipeline, rerank = pipeline_from_args(args), rerank_from_args(args)
        if args.output:
            run = caption_collection(pipeline, files, args.output, collection_settings(args, options, rerank),
                                     args.batch_size, options, rerank, chunk_size=args.chunk_size)
            if not run.is_main:
                return run.status  # the main process prints and reports for every rank
            results = run.results
            if run.captioned:
                print(f"captioned {run.captioned} input(s) in {run.seconds:.1f} s on {run.world} process(es): "
                      f"{run.captioned / max(run.seconds, 1e-9):.2f} clips/s", file=sys.stderr)
        else:
            results = pipeline.run(files, batch_size=args.batch_size, options=options, rerank=rerank, progress=True)
    except (UserError, ValueError) as exc:  # ValueError: a bad generation option
        print(f"error: {one_line(exc)}", file=sys.stderr)
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
    captions = [text for res in results if res.error is None
                for text in ([seg.caption for seg in res.segments] if res.segments else [res.caption])]
    warning = degenerate_warning(captions, checkpoint_hint(args.ckpt), "inputs")
    if warning:
        logging.getLogger("inference").warning("%s", warning)
    if args.compare_fp32:
        report_agreement(pipeline, args, results, options, rerank)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed, {len(results) - failed} captioned", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
