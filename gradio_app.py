"""A web page that captions an uploaded or recorded clip (gradio Blocks).

    python gradio_app.py --ckpt CKPT --clap_ckpt 630k-audioset-fusion-best.pt --device cpu
    # -> http://127.0.0.1:7860

The page listens on 127.0.0.1 only; ``--host 0.0.0.0`` (your network) and ``--share`` (a public
gradio.live tunnel) are explicit opt-ins. Any format and sample rate the front end reads works,
stereo included (channels are averaged, as in preprocessing). Generation options sit in an
accordion; their defaults are the paper's, or the ones given on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

EXAMPLE_CLIP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "example.wav")
EMPTY_MESSAGE = "No audio yet: upload a file or record with the microphone, then press Caption."


def caption_file(pipeline, audio_path, options, rerank) -> tuple[str, str]:
    """Caption one file for the page; every failure becomes a readable message, never a traceback.

    Args:
        pipeline: a :class:`captioning.pipeline.EnClap`.
        audio_path: the uploaded/recorded file (``None`` when the user pressed the button first).
        options: :class:`modeling.generation.GenerationOptions`.
        rerank: :class:`captioning.pipeline.RerankOptions`.

    Returns:
        ``(caption or message, timing text)``.
    """
    if not audio_path:
        return EMPTY_MESSAGE, ""
    start = time.perf_counter()
    (result,) = pipeline.run([audio_path], options=options, rerank=rerank)
    seconds = time.perf_counter() - start
    if result.error is not None:
        reason = result.error.replace(str(audio_path), os.path.basename(str(audio_path)))
        return f"Could not read this audio: {reason}", ""
    timing = f"{seconds:.2f} s on {pipeline.device.type} for {result.duration:.1f} s of audio"
    if result.truncated:
        timing += f" (only the first {pipeline.window_seconds:.1f} s were captioned)"
    return result.caption, timing


def build_demo(pipeline, defaults=None):
    """The Blocks page around ``pipeline``.

    Args:
        pipeline: a :class:`captioning.pipeline.EnClap`.
        defaults: :class:`modeling.generation.GenerationOptions` shown in the accordion
            (default: the paper's).

    Returns:
        A ``gradio.Blocks`` (not launched).
    """
    import gradio as gr

    from modeling.generation import GenerationOptions
    from captioning.rerank import RerankOptions

    defaults = defaults or GenerationOptions()

    def caption(audio_path, num_beams, max_length, no_repeat_ngram_size, length_penalty, do_sample, top_p,
                temperature, rerank_on, candidates, clap_weight, lm_weight, seed):
        try:
            options = GenerationOptions(
                num_beams=int(num_beams),
                max_length=int(max_length),
                no_repeat_ngram_size=int(no_repeat_ngram_size),
                length_penalty=float(length_penalty),
                early_stopping=defaults.early_stopping,
                do_sample=bool(do_sample),
                top_p=float(top_p),
                temperature=float(temperature),
            )
        except ValueError as exc:
            return f"Invalid generation options: {exc}", ""
        rerank = RerankOptions(
            enabled=bool(rerank_on),
            num_candidates=int(candidates),
            clap_weight=float(clap_weight),
            lm_weight=float(lm_weight),
            seed=int(seed),
        )
        return caption_file(pipeline, audio_path, options, rerank)

    with gr.Blocks(title="EnCLAP audio captioning") as demo:
        gr.Markdown(
            "# EnCLAP audio captioning\nUpload a clip or record one, then press **Caption**. "
            f"Clips longer than {pipeline.window_seconds:.1f} s are handled by the `{pipeline.long_audio}` policy."
        )
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio-input")
        with gr.Accordion("Generation options", open=False):
            with gr.Row():
                num_beams = gr.Slider(1, 10, value=defaults.num_beams, step=1, label="beams")
                max_length = gr.Slider(5, 100, value=defaults.max_length, step=1, label="max length (tokens)")
                no_repeat = gr.Slider(0, 5, value=defaults.no_repeat_ngram_size, step=1, label="no-repeat n-gram")
                length_penalty = gr.Slider(0.0, 3.0, value=defaults.length_penalty, step=0.1, label="length penalty")
            with gr.Row():
                do_sample = gr.Checkbox(value=defaults.do_sample, label="sample instead of beam search")
                top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="top-p")
                temperature = gr.Slider(0.1, 2.0, value=defaults.temperature, step=0.05, label="temperature")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                rerank_on = gr.Checkbox(value=False, label="CLAP re-ranking")
                candidates = gr.Slider(2, 10, value=max(2, defaults.num_beams), step=1, label="candidates")
                clap_weight = gr.Slider(0.0, 5.0, value=RerankOptions.clap_weight, step=0.1, label="CLAP weight")
                lm_weight = gr.Slider(0.0, 5.0, value=RerankOptions.lm_weight, step=0.1, label="LM weight")
        button = gr.Button("Caption", variant="primary", elem_id="caption-button")
        output = gr.Textbox(label="Caption", lines=2, interactive=False, elem_id="caption-output")
        timing = gr.Textbox(label="Time taken", interactive=False, elem_id="caption-timing")
        if os.path.isfile(EXAMPLE_CLIP):
            gr.Examples([[EXAMPLE_CLIP]], inputs=[audio], label="Example (generated by assets/make_example.py)")
        button.click(
            caption,
            inputs=[audio, num_beams, max_length, no_repeat, length_penalty, do_sample, top_p, temperature,
                    rerank_on, candidates, clap_weight, lm_weight, seed],
            outputs=[output, timing],
            api_name="caption",
        )
    return demo


def build_parser() -> argparse.ArgumentParser:
    from captioning.cli import add_generation_args, add_pipeline_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link (default: off)")
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

    try:
        defaults = generation_from_args(args)
        pipeline = pipeline_from_args(args)
        pipeline.features  # load the encoders now, not on the first request
    except (UserError, ValueError) as exc:  # ValueError: a bad generation option
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    # allowed_paths: the example clip may be served whatever the working directory is.
    build_demo(pipeline, defaults).queue().launch(**launch_kwargs(args), allowed_paths=[os.path.dirname(EXAMPLE_CLIP)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
