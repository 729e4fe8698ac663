"""The demo page's logic (gradio Blocks): what it shows, how it words problems, and how a request runs.

``gradio_app.py`` is the door (flags, launch); everything the page does lives here:

* a notice, visible from the start, when the encoders have random weights;
* on upload, what will happen to the clip (its length, and for a long clip which span will be
  captioned), or why it cannot be captioned (an empty or unreadable file is cleared from the
  player rather than shown as a playable 0:00 clip);
* the Caption button disabled while a request runs, and a status line that follows the real
  steps (decode, encode, generate) as the pipeline reports them;
* the caption in its own box; errors and warnings in a separate box, worded for a web page;
* one line of help per option; options that have no effect under the current settings greyed out;
* for API clients, ``/caption``: the same answers as plain text, queued requests batched
  (:func:`serve_batch`).
"""

from __future__ import annotations

import html
import os
import queue
import threading
import time
import warnings

from captioning.pieces import MIN_SECONDS, decode_input
from data.extraction.audio import AudioError
from data.extraction.batching import probe_duration

EXAMPLE_CLIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "example.wav")
EMPTY_MESSAGE = "No audio yet: upload a file or record with the microphone, then press Caption."
RANDOM_NOTICE = (
    "<b>Random-weight encoders.</b> This page runs EnCodec and CLAP with random weights "
    "(<code>--random_encoders</code>), so the captions are meaningless: the page works, the words "
    "do not. Start it without <code>--random_encoders</code> and with <code>--clap_ckpt</code> for real captions."
)
STAGES = {"decode": (0.0, 0.1, "1/3 decoding the audio"), "encode": (0.1, 0.45, "2/3 encoding (EnCodec + CLAP)"),
          "generate": (0.45, 1.0, "3/3 generating the caption")}
HELP = {
    "num_beams": "Captions searched in parallel; more can find a likelier caption, and take longer.",
    "max_length": "Longest caption, in tokens (a word is one or two).",
    "no_repeat_ngram_size": "Forbid repeating any run of this many tokens (0: allow repeats).",
    "length_penalty": "Beam search only: above 1 favours longer captions, below 1 shorter ones.",
    "do_sample": "Draw words at random from the model's distribution instead of beam search.",
    "top_p": "Sampling only: draw from the smallest set of words holding this much probability.",
    "temperature": "Sampling only: above 1 flattens the distribution (more varied), below 1 sharpens it.",
    "seed": "Sampling only: the same seed gives the same sampled captions.",
    "rerank": "Generate several candidates and keep the one CLAP finds closest to the audio.",
    "candidates": "Re-ranking only: how many candidates to choose from.",
    "clap_weight": "Re-ranking only: weight of the audio-text similarity in CLAP's space.",
    "lm_weight": "Re-ranking only: weight of the caption model's own average token log-probability.",
}



def quiet_known_warnings() -> None:
    """Ignore the StarletteDeprecationWarning gradio's routes raise on every request.

    gradio still names a status constant Starlette renamed; the warning is about gradio's code,
    not this page's, and nothing a user of the page can act on.
    """
    try:
        from starlette.exceptions import StarletteDeprecationWarning
    except ImportError:  # an older Starlette has neither the warning nor the rename
        return
    warnings.filterwarnings("ignore", message=".*HTTP_422_UNPROCESSABLE_ENTITY", category=StarletteDeprecationWarning)


def box(kind: str, text: str) -> str:
    """An error / warning / info box as HTML (inline styles: no page CSS needed)."""
    if not text:
        return ""
    colours = {"error": ("#fdecea", "#b3261e", "Error"), "warning": ("#fff4e5", "#8a5300", "Warning"),
               "info": ("#e8f1fb", "#174ea6", "Note")}
    background, colour, title = colours[kind]
    return (f'<div class="enclap-{kind}" style="background:{background};color:{colour};border-left:4px solid '
            f'{colour};padding:8px 12px;border-radius:4px"><b>{title}:</b> {text}</div>')


def web_error(error: str, path: str | None = None) -> str:
    """A pipeline error (written for a terminal) reworded for the page and API clients, as plain text.

    No folders and no command-line advice: the upload is named by its file name (an uploaded or
    recorded file keeps its name in gradio's upload folder), or "this file" without a path.
    """
    name = os.path.basename(str(path)) if path else ""
    text = error.replace(f"{path}: ", "").replace(str(path), name) if path else error
    subject = name or "this file"
    if "empty file" in text:
        return f"{subject} is empty (0 bytes). Choose another file."
    if "no audio samples" in text:
        return f"{subject} holds no audio samples (0 s). Choose another recording."
    if "cannot decode audio" in text:
        reason = text.split("(", 1)[1].rsplit(")", 1)[0] if "(" in text else "unknown format"
        return f"{subject} could not be read as audio ({reason}). Upload a WAV, FLAC, OGG, MP3 or Opus file."
    if "NaN or infinite" in text:
        return f"{subject} contains invalid (NaN or infinite) samples. Export it again and upload the new file."
    return text.split(";")[0]


def readable(caption: str) -> tuple[str, bool]:
    """``(caption with non-printable characters shown as U+FFFD, whether any were there)``.

    A byte-level tokenizer can emit byte pieces that are not text (random weights do); the page
    shows them as � rather than as invisible control characters.
    """
    shown = "".join(ch if ch.isprintable() or ch == " " else "\ufffd" for ch in caption)
    return shown, ("\ufffd" in shown)


def describe_upload(pipeline, path: str | None) -> tuple[bool, str]:
    """``(usable, HTML note)`` about an uploaded file, before any captioning work.

    The duration comes from the file header when it has one; otherwise the file is decoded.
    """
    if not path:
        return False, ""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return False, box("error", html.escape(web_error("empty file", path)))
    seconds = probe_duration(path)
    if seconds <= 0:
        try:
            mono, sr = decode_input(path)
        except AudioError as exc:
            return False, box("error", html.escape(web_error(str(exc), path)))
        seconds = len(mono) / sr
    window = pipeline.window_seconds
    if seconds < MIN_SECONDS:
        return True, box("warning", f"this clip is {seconds:.2f} s long, too short to describe (< {MIN_SECONDS} s): "
                                    "EnCodec's frames need about 0.1 s of sound around them.")
    if seconds > window and pipeline.long_audio == "truncate":
        return True, box("info", f"this clip is {seconds:.1f} s long. The model reads {window:.1f} s of audio, so "
                                 f"the caption will describe 0.0-{window:.1f} s (CLAP still listens to the whole clip).")
    if seconds > window:
        count = -int(-seconds // window)
        return True, box("info", f"this clip is {seconds:.1f} s long: it will be captioned in {count} windows of "
                                 f"{window:.1f} s, one caption each.")
    return True, box("info", f"{seconds:.1f} s clip, ready to caption.")


def reply(pipeline, audio_path, result, seconds: float) -> tuple[str, str, str, str]:
    """What a request gets back, as plain text: ``(caption, kind, message, timing)``.

    ``kind`` is ``"error"`` or ``"warning"`` (the page's box colour); ``message`` is empty when
    there is nothing to say. The page shows the message in a styled box, API clients get it as is.

    Args:
        pipeline: the :class:`captioning.pipeline.EnClap` that made ``result``.
        audio_path: the uploaded file.
        result: its :class:`captioning.pipeline.CaptionResult`.
        seconds: the time the request took.
    """
    if result.error is not None:
        return "", "error", web_error(result.error, audio_path), ""
    caption, garbled = readable(result.caption)
    notes = []
    if result.warning:
        notes.append(result.warning.replace("the caption is unreliable", "this caption is a guess") + ".")
    if result.truncated:
        notes.append(f"only {result.start:.1f}-{result.end:.1f} s of this {result.duration:.1f} s clip was captioned.")
    if garbled:
        notes.append("the caption contains bytes that are not text (shown as \ufffd): the model produced no "
                     "readable words" + (" (random-weight encoders)" if pipeline.random_encoders else "") + ".")
    timing = f"{seconds:.2f} s on {pipeline.device.type} for {result.duration:.1f} s of audio"
    return caption, "warning", " ".join(notes), timing


def run_request(pipeline, audio_path, options, rerank, report=None):
    """Caption one file for the page; returns ``(caption, message HTML, timing)`` and never raises for bad audio.

    Args:
        pipeline: a :class:`captioning.pipeline.EnClap`.
        audio_path: the uploaded or recorded file (None when nothing was uploaded).
        options: :class:`modeling.generation.GenerationOptions`.
        rerank: :class:`captioning.rerank.RerankOptions` or None.
        report: ``report(stage, done, total)`` progress callback (the pipeline's ``on_step``).
    """
    if not audio_path:
        return "", box("warning", EMPTY_MESSAGE), ""
    start = time.perf_counter()
    (result,) = pipeline.run([audio_path], options=options, rerank=rerank, on_step=report)
    caption, kind, message, timing = reply(pipeline, audio_path, result, time.perf_counter() - start)
    return caption, box(kind, html.escape(message)), timing


def request_options(defaults, num_beams, max_length, no_repeat, length_penalty, do_sample, top_p, temperature,
                    rerank_on, candidates, clap_weight, lm_weight, seed):
    """The generation and re-ranking options of one request's option values (page or API).

    Raises:
        ValueError: options that do not go together (from :class:`GenerationOptions`).
    """
    from captioning.rerank import RerankOptions
    from modeling.generation import GenerationOptions

    options = GenerationOptions(
        num_beams=int(num_beams), max_length=int(max_length), no_repeat_ngram_size=int(no_repeat),
        length_penalty=float(length_penalty), early_stopping=defaults.early_stopping,
        do_sample=bool(do_sample), top_p=float(top_p), temperature=float(temperature))
    rerank = RerankOptions(enabled=bool(rerank_on), num_candidates=int(candidates), clap_weight=float(clap_weight),
                           lm_weight=float(lm_weight), seed=int(seed or 0))
    return options, rerank


def serve_batch(pipeline, defaults, audio_paths, *option_lists):
    """The API's ``/caption`` for a batch of queued requests (gradio ``batch=True``); plain text.

    Requests with the same options are captioned in one pipeline call, so that a GPU gets
    batches of clips; a bad file or bad options fail their own request only.

    Args:
        pipeline: a :class:`captioning.pipeline.EnClap`.
        defaults: :class:`GenerationOptions` whose ``early_stopping`` the requests use.
        audio_paths: one uploaded file per request.
        *option_lists: one list per option input of the page, in :func:`request_options` order.

    Returns:
        ``(captions, messages, timings)``: one list each, one entry per request.
    """
    count = len(audio_paths)
    captions, messages, timings = [""] * count, [""] * count, [""] * count
    groups: dict = {}
    for i, path in enumerate(audio_paths):
        if not path:
            messages[i] = EMPTY_MESSAGE
            continue
        try:
            options, rerank = request_options(defaults, *(values[i] for values in option_lists))
        except ValueError as exc:
            messages[i] = f"these options do not go together: {exc}"
            continue
        groups.setdefault(repr((options, rerank)), (options, rerank, []))[2].append(i)
    for options, rerank, members in groups.values():
        start = time.perf_counter()
        results = pipeline.run([audio_paths[i] for i in members], options=options, rerank=rerank)
        seconds = time.perf_counter() - start
        for i, result in zip(members, results):
            caption, _, message, timing = reply(pipeline, audio_paths[i], result, seconds)
            suffix = f" (a batch of {len(members)} requests)" if len(members) > 1 and timing else ""
            captions[i], messages[i], timings[i] = caption, message, timing + suffix
    return captions, messages, timings


def stream_request(pipeline, audio_path, options, rerank, progress=None):
    """Runs :func:`run_request` in a thread and yields ``("status", text)`` per step, then ``("done", result)``."""
    events: queue.Queue = queue.Queue()
    output: dict = {}

    def work():
        try:
            output["result"] = run_request(pipeline, audio_path, options, rerank,
                                           report=lambda stage, done, total: events.put((stage, done, total)))
        finally:
            events.put(None)

    threading.Thread(target=work, daemon=True).start()
    start = time.perf_counter()
    while True:
        event = events.get()
        if event is None:
            break
        stage, done, total = event
        low, high, label = STAGES[stage]
        fraction = low + (high - low) * (done / total if total else 1.0)
        if progress is not None:
            progress(fraction, desc=label)
        yield "status", f"{label} · {time.perf_counter() - start:.1f} s"
    yield "done", output["result"]


def build_demo(pipeline, defaults=None, concurrency: int = 1):
    """The Blocks page around ``pipeline``, and its API endpoint ``/caption``.

    The page's button streams progress and shows styled boxes; ``/caption`` (for
    ``gradio_client`` and other API clients) answers in plain text and batches queued requests,
    up to the pipeline's ``batch_size`` per model call (:func:`serve_batch`). Both share one
    concurrency group: at most ``concurrency`` page or API calls run the model at once.

    Args:
        pipeline: a :class:`captioning.pipeline.EnClap`.
        defaults: :class:`modeling.generation.GenerationOptions` shown in the accordion
            (default: the paper's).
        concurrency: model calls served at once (gradio's ``concurrency_limit``).

    Returns:
        A ``gradio.Blocks`` (not launched).
    """
    import gradio as gr

    from captioning.rerank import RerankOptions
    from modeling.generation import GenerationOptions

    defaults = defaults or GenerationOptions()
    quiet_known_warnings()

    def on_upload(path):
        usable, note = describe_upload(pipeline, path)
        return (path if usable or not path else None), note

    def caption(audio_path, *option_values, progress=gr.Progress()):
        idle = gr.update(interactive=True, value="Caption")
        try:
            options, rerank = request_options(defaults, *option_values)
        except ValueError as exc:
            yield "", box("error", f"these options do not go together: {html.escape(str(exc))}"), "", "", idle
            return
        yield "", "", "", "starting", gr.update(interactive=False, value="Captioning…")
        for kind, value in stream_request(pipeline, audio_path, options, rerank, progress):
            if kind == "status":
                yield gr.update(), gr.update(), gr.update(), value, gr.update()
            else:
                text, message, timing = value
                yield text, message, timing, "done" if text else "stopped: see the message below", idle

    with gr.Blocks(title="EnCLAP audio captioning") as demo:
        gr.Markdown(
            "# EnCLAP audio captioning\nUpload a clip or record one, then press **Caption**. The model reads "
            f"up to {pipeline.window_seconds:.1f} s of audio; longer clips are "
            + ("captioned from their start." if pipeline.long_audio == "truncate" else "captioned window by window.")
        )
        gr.HTML(box("warning", RANDOM_NOTICE) if pipeline.random_encoders else "", elem_id="random-notice",
                visible=pipeline.random_encoders)
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio-input")
        clip_note = gr.HTML("", elem_id="clip-note")
        with gr.Accordion("Generation options", open=False, elem_id="options"):
            with gr.Row():
                num_beams = gr.Slider(1, 10, value=defaults.num_beams, step=1, label="beams", info=HELP["num_beams"])
                max_length = gr.Slider(5, 100, value=defaults.max_length, step=1, label="max length (tokens)",
                                       info=HELP["max_length"])
                no_repeat = gr.Slider(0, 5, value=defaults.no_repeat_ngram_size, step=1, label="no-repeat n-gram",
                                      info=HELP["no_repeat_ngram_size"])
                length_penalty = gr.Slider(0.0, 3.0, value=defaults.length_penalty, step=0.1, label="length penalty",
                                           elem_id="opt-length-penalty",
                                           info=HELP["length_penalty"], interactive=defaults.num_beams > 1)
            with gr.Row():
                do_sample = gr.Checkbox(value=defaults.do_sample, label="sample instead of beam search",
                                        elem_id="opt-sample",
                                        info=HELP["do_sample"])
                top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="top-p", info=HELP["top_p"],
                                  elem_id="opt-top-p",
                                  interactive=defaults.do_sample)
                temperature = gr.Slider(0.1, 2.0, value=defaults.temperature, step=0.05, label="temperature",
                                        info=HELP["temperature"], interactive=defaults.do_sample)
                seed = gr.Number(value=0, precision=0, label="seed", info=HELP["seed"], interactive=defaults.do_sample)
            with gr.Row():
                rerank_on = gr.Checkbox(value=False, label="CLAP re-ranking", info=HELP["rerank"], elem_id="opt-rerank")
                candidates = gr.Slider(2, 10, value=max(2, defaults.num_beams), step=1, label="candidates",
                                       elem_id="opt-candidates",
                                       info=HELP["candidates"], interactive=False)
                clap_weight = gr.Slider(0.0, 5.0, value=RerankOptions.clap_weight, step=0.1, label="CLAP weight",
                                        info=HELP["clap_weight"], interactive=False)
                lm_weight = gr.Slider(0.0, 5.0, value=RerankOptions.lm_weight, step=0.1, label="LM weight",
                                      info=HELP["lm_weight"], interactive=False)
        button = gr.Button("Caption", variant="primary", elem_id="caption-button")
        status = gr.Textbox(label="Progress", interactive=False, elem_id="caption-status")
        output = gr.Textbox(label="Caption", lines=2, interactive=False, elem_id="caption-output")
        message = gr.HTML("", elem_id="caption-message")
        timing = gr.Textbox(label="Time taken", interactive=False, elem_id="caption-timing")
        if os.path.isfile(EXAMPLE_CLIP):
            gr.Examples([[EXAMPLE_CLIP]], inputs=[audio], label="Example (generated by assets/make_example.py)")

        # The page's own events; API clients get /caption only.
        ui = {"api_visibility": "undocumented"}
        audio.upload(on_upload, inputs=[audio], outputs=[audio, clip_note], **ui)
        audio.clear(lambda: "", outputs=[clip_note], **ui)
        do_sample.change(lambda on: [gr.update(interactive=bool(on))] * 3, inputs=[do_sample],
                         outputs=[top_p, temperature, seed], **ui)
        rerank_on.change(lambda on: [gr.update(interactive=bool(on))] * 3, inputs=[rerank_on],
                         outputs=[candidates, clap_weight, lm_weight], **ui)
        num_beams.change(lambda beams: gr.update(interactive=int(beams) > 1), inputs=[num_beams],
                         outputs=[length_penalty], **ui)
        inputs = [audio, num_beams, max_length, no_repeat, length_penalty, do_sample, top_p, temperature,
                  rerank_on, candidates, clap_weight, lm_weight, seed]
        served = {"concurrency_limit": concurrency, "concurrency_id": "model"}
        button.click(
            caption, inputs=inputs, outputs=[output, message, timing, status, button],
            api_name="caption_page", show_progress="minimal",  # the status line shows the real steps
            **served, **ui,
        )
        # /caption: plain text, batched. Its hidden trigger and outputs exist for the API only.
        plain = [gr.Textbox(visible=False, label=label) for label in ("caption", "message", "timing")]
        def api_caption(audio, num_beams, max_length, no_repeat_ngram_size, length_penalty, do_sample, top_p,
                        temperature, rerank, rerank_candidates, clap_weight, lm_weight, seed):
            # Named parameters: API clients may pass the options by these names.
            return serve_batch(pipeline, defaults, audio, num_beams, max_length, no_repeat_ngram_size,
                               length_penalty, do_sample, top_p, temperature, rerank, rerank_candidates,
                               clap_weight, lm_weight, seed)

        gr.Button(visible=False).click(
            api_caption, inputs=inputs, outputs=plain,
            api_name="caption", batch=True, max_batch_size=pipeline.batch_size, **served,
        )
    return demo

