"""The page's API, driven by gradio's own Python client against a server on 127.0.0.1.

``/caption`` answers in plain text (the page keeps its styled boxes), names an unreadable upload
by its file name, batches queued requests into one pipeline call, and serves as many calls at
once as ``--concurrency`` says. One server for the whole module.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

import gradio_app
from captioning import page
from captioning.pipeline import EnClap
from modeling.generation import GenerationOptions

SR = 16000


def tone_file(path, seconds, freq):
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.4 * np.sin(2 * np.pi * freq * t), SR, subtype="PCM_16")
    return str(path)


class GatedPipeline(EnClap):
    """The real pipeline, which records how many inputs each call gets and can be held at the door."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def run(self, sources, *args, **kwargs):
        self.calls.append(len(sources))
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        return super().run(sources, *args, **kwargs)


@pytest.fixture(scope="module")
def pipeline(tiny_ckpt):
    return GatedPipeline(tiny_ckpt, device="cpu", random_encoders=True, batch_size=4)


@pytest.fixture(scope="module")
def client(pipeline):
    from gradio_client import Client

    from tests.helpers import free_port

    port = free_port()
    demo = gradio_app.build_demo(pipeline)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
    demo.close()


def _caption(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(path), api_name="/caption")


def _queue_size(client) -> int:
    """Requests waiting in the server's queue (gradio's /queue/status route)."""
    with urllib.request.urlopen(client.src.rstrip("/") + "/gradio_api/queue/status", timeout=10) as answer:
        return json.load(answer)["queue_size"]


def test_a_client_gets_the_pipelines_caption_as_plain_text(client, pipeline, tmp_path):
    path = tone_file(tmp_path / "beep.wav", 0.6, 660.0)
    caption, message, timing = _caption(client, path)
    assert caption == page.readable(pipeline.caption(path)[0])[0] and caption
    assert "<" not in message and " s on cpu for 0.6 s of audio" in timing
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/caption"]
    assert [p["parameter_name"] for p in endpoints["/caption"]["parameters"]][:3] == ["audio", "num_beams", "max_length"]


def test_options_go_by_name(client, pipeline, tmp_path):
    from gradio_client import handle_file

    path = tone_file(tmp_path / "named.wav", 0.5, 900.0)
    caption, _, _ = client.predict(handle_file(path), num_beams=2, max_length=12, api_name="/caption")
    expected = pipeline.caption(path, options=GenerationOptions(num_beams=2, max_length=12))[0]
    assert caption == page.readable(expected)[0]


@pytest.mark.parametrize("name, content, expected", [
    ("broken_upload.wav", b"not really a wav file", "broken_upload.wav could not be read as audio ("),
    ("silence_0b.wav", b"", "silence_0b.wav is empty (0 bytes)"),
])
def test_an_unreadable_upload_is_named_in_plain_text(client, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    caption, message, timing = _caption(client, str(path))
    assert caption == "" and timing == ""
    assert message.startswith(expected), message
    assert "<" not in message and "''" not in message and "/" not in message  # no HTML, no empty name, no folder


def test_a_warning_reaches_the_client_as_plain_text(client, tmp_path):
    caption, message, _ = _caption(client, tone_file(tmp_path / "blip.wav", 0.05, 440.0))
    assert caption and message.startswith("too short to describe (0.05 s < 0.1 s): this caption is a guess.")


def test_the_page_keeps_its_styled_boxes(pipeline, tmp_path):
    bad = tmp_path / "upload.wav"
    bad.write_bytes(b"not really a wav file")
    caption, message, _ = page.run_request(pipeline, str(bad), GenerationOptions(), None)
    assert caption == "" and 'class="enclap-error" style=' in message and "upload.wav could not be read" in message


def test_queued_requests_are_batched_into_one_pipeline_call(client, pipeline, tmp_path):
    from gradio_client import handle_file

    paths = [tone_file(tmp_path / f"clip{i}.wav", 0.3 + 0.1 * i, 200.0 + 150 * i) for i in range(4)]
    (tmp_path / "bad.wav").write_bytes(b"junk")
    paths.append(str(tmp_path / "bad.wav"))
    expected = [page.readable(caption)[0] for caption in pipeline.caption(paths[:4])]
    pipeline.calls.clear()
    pipeline.gate.clear()
    try:
        first = client.submit(handle_file(paths[0]), api_name="/caption")
        deadline = time.monotonic() + 60
        while not pipeline.calls and time.monotonic() < deadline:  # the first request holds the model
            time.sleep(0.05)
        queued = [client.submit(handle_file(path), api_name="/caption") for path in paths[1:]]
        while _queue_size(client) < len(queued) and time.monotonic() < deadline:  # all wait behind it
            time.sleep(0.05)
    finally:
        pipeline.gate.set()
    answers = [first.result(timeout=120)] + [job.result(timeout=120) for job in queued]
    assert pipeline.calls == [1, 4], "the queued requests (the batch size is 4) should share one call"
    assert [caption for caption, _, _ in answers[:4]] == expected
    assert answers[2][2].endswith("(a batch of 4 requests)")
    assert answers[4][0] == "" and answers[4][1].startswith("bad.wav could not be read as audio")


def test_concurrency_flag_sets_the_limit_of_page_and_api(tiny_ckpt, pipeline, monkeypatch):
    built = {}

    class Launched:
        def queue(self):
            return self

        def launch(self, **kwargs):
            built["launch"] = kwargs

    monkeypatch.setattr(gradio_app, "build_demo", lambda pipe, defaults, concurrency: built.update(
        concurrency=concurrency) or Launched())
    assert gradio_app.main(["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu",
                            "--concurrency", "3"]) == 0
    assert built["concurrency"] == 3 and built["launch"]["server_name"] == "127.0.0.1"
    assert gradio_app.main(["--ckpt", str(tiny_ckpt), "--concurrency", "0"]) == 2

    demo = page.build_demo(pipeline, concurrency=3)
    served = {fn.api_name: fn for fn in demo.fns.values()}
    assert served["caption"].concurrency_limit == 3 and served["caption_page"].concurrency_limit == 3
    assert served["caption"].concurrency_id == served["caption_page"].concurrency_id
    assert served["caption"].batch and served["caption"].max_batch_size == pipeline.batch_size
