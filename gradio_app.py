"""A web page that captions an uploaded or recorded clip (gradio Blocks).

    python gradio_app.py --ckpt CKPT --clap_ckpt 630k-audioset-fusion-best.pt --device cpu
    # -> http://127.0.0.1:7860

The page listens on 127.0.0.1 only; ``--host 0.0.0.0`` (your network) and ``--share`` (a public
gradio.live tunnel) are explicit opt-ins. Any format and sample rate the front end reads works,
stereo included (channels are averaged, as in preprocessing). Generation options sit in an
accordion; their defaults are the paper's, or the ones given on the command line. What the page
shows and how it words problems: :mod:`captioning.page`.

API clients call ``/caption`` (plain-text answers, queued requests batched), e.g.::

    from gradio_client import Client, handle_file
    caption, message, timing = Client("http://127.0.0.1:7860/").predict(handle_file("dog.wav"), api_name="/caption")
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from captioning.page import EMPTY_MESSAGE, EXAMPLE_CLIP, build_demo  # noqa: E402

__all__ = ["EMPTY_MESSAGE", "EXAMPLE_CLIP", "build_demo", "build_parser", "launch_kwargs", "main"]


def build_parser() -> argparse.ArgumentParser:
    from captioning.cli import add_generation_args, add_pipeline_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link (default: off)")
    server.add_argument("--concurrency", type=int, default=1,
                        help="model calls served at once, page and API together (gradio's concurrency limit); "
                        "the API's /caption also batches up to --batch_size queued requests per call (default: 1)")
    add_pipeline_args(parser)
    add_generation_args(parser)
    return parser


def launch_kwargs(args) -> dict:
    """``Blocks.launch`` arguments from the parsed flags (private by default)."""
    return {"server_name": args.host, "server_port": args.port, "share": bool(args.share)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from captioning.cli import generation_from_args, pipeline_from_args
    from common.errors import UserError, one_line

    if args.concurrency < 1:
        print(f"error: --concurrency must be >= 1, got {args.concurrency}", file=sys.stderr)
        return 2
    try:
        defaults = generation_from_args(args)
        pipeline = pipeline_from_args(args)
        pipeline.features  # load the encoders now, not on the first request
    except (UserError, ValueError) as exc:  # ValueError: a bad generation option
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    # allowed_paths: the example clip may be served whatever the working directory is.
    build_demo(pipeline, defaults, concurrency=args.concurrency).queue().launch(**launch_kwargs(args), allowed_paths=[os.path.dirname(EXAMPLE_CLIP)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
