"""The demo page in a real headless browser (Debian chromium + chromedriver, via selenium).

The page is served in-process on a free port of 127.0.0.1. The browser uploads clips, presses
Caption and reads what the page shows: the caption (equal to the pipeline's own caption of that
file, and different for a different file), the random-encoder notice, the note shown on upload
(length, the span a long clip will have captioned, an empty or unreadable file), errors and
warnings in their own box, the button disabled while a request runs, the status line's steps,
greyed-out options and their help lines. chromium comes from `make browser` (mk/browser.mk).

``ENCLAP_SCREENSHOT=assets/demo_page.png`` makes the first test save its screenshot there (the
README's picture of the page).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import warnings

import numpy as np
import pytest
import soundfile as sf

import gradio_app
from captioning import page
from captioning.pipeline import EnClap
from captioning.rerank import RerankOptions
from modeling.generation import GenerationOptions

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
BROWSER_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1100,1500",
]


def tone_file(path, seconds, sr=44100, freq=660.0, channels=2):
    t = np.arange(int(seconds * sr)) / sr
    wav = np.stack([0.4 * np.sin(2 * np.pi * freq * t), 0.2 * np.sin(2 * np.pi * freq / 3 * t)][:channels], axis=1)
    sf.write(path, wav, sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_ckpt):
    return EnClap(tiny_ckpt, device="cpu", random_encoders=True)


@pytest.fixture(scope="module")
def server(pipeline):
    with socket.socket() as sock:  # a free port: other test runs may hold 7860
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = gradio_app.build_demo(pipeline)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        f"chromium/chromedriver not found ({CHROMIUM}, {CHROMEDRIVER}): run `make browser`"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def _wait(browser, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: condition())


def _value(browser, selector):
    found = _css(browser, selector)
    return found[0].get_property("value") if found else ""


def _open(browser, url):
    browser.get(url)
    _wait(browser, lambda: _css(browser, "#audio-input input[type=file]"))


def _upload(browser, path, playable=True):
    _css(browser, "#audio-input input[type=file]")[0].send_keys(str(path))
    # The note's box, not gradio's timer ("0.3s") shown in the output while the event is pending.
    _wait(browser, lambda: _css(browser, "#clip-note div[class^=enclap-]"))
    if playable:
        _wait(browser, lambda: _css(browser, "#audio-input audio"))
    return _css(browser, "#clip-note")[0].text


def _caption(browser):
    _css(browser, "#caption-button")[0].click()
    _wait(browser, lambda: _value(browser, "#caption-status textarea") in ("done", "stopped: see the message below"))
    _wait(browser, lambda: _css(browser, "#caption-button")[0].is_enabled())
    return (_value(browser, "#caption-output textarea"), _css(browser, "#caption-message")[0].text,
            _value(browser, "#caption-timing textarea"))


def test_upload_caption_and_screenshot(server, browser, pipeline, tmp_path):
    _open(browser, server)
    notice = _css(browser, "#random-notice")[0].text
    assert "Random-weight encoders" in notice and "meaningless" in notice
    first = tone_file(tmp_path / "stereo_44k.wav", 0.6)
    note = _upload(browser, first)
    assert "0.6 s clip" in note
    caption, message, timing = _caption(browser)
    assert caption == page.readable(pipeline.caption(str(first))[0])[0]
    assert " s on cpu" in timing
    path = tmp_path / "page.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("ENCLAP_SCREENSHOT"):
        shutil.copyfile(path, os.environ["ENCLAP_SCREENSHOT"])
    # Another file, another caption: the page does not show a stale or input-independent one.
    second = tone_file(tmp_path / "other.wav", 0.4, sr=16000, freq=180.0, channels=1)
    _open(browser, server)
    _upload(browser, second)
    other, _, _ = _caption(browser)
    assert other == page.readable(pipeline.caption(str(second))[0])[0] and other != caption


def test_long_clip_is_announced_on_upload_and_the_span_reported(server, browser, pipeline, tmp_path):
    _open(browser, server)
    long_clip = tone_file(tmp_path / "long.wav", 2.0, sr=16000, channels=1)
    window = pipeline.window_seconds  # 61 frames = 0.81 s for the tiny model
    note = _upload(browser, long_clip)
    assert "2.0 s long" in note and f"0.0-{window:.1f} s" in note  # said before any work starts
    caption, message, _ = _caption(browser)
    assert caption and f"only 0.0-{window:.1f} s of this 2.0 s clip" in message


@pytest.mark.parametrize("name,content,expected", [
    ("empty.wav", b"", "empty (0 bytes)"),
    ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)), "could not be read as audio"),
])
def test_bad_files_are_refused_on_upload_with_a_web_worded_error(server, browser, tmp_path, name, content, expected):
    _open(browser, server)
    bad = tmp_path / name
    bad.write_bytes(content)
    _css(browser, "#audio-input input[type=file]")[0].send_keys(str(bad))
    _wait(browser, lambda: expected in _css(browser, "#clip-note")[0].text)
    note_box = _css(browser, "#clip-note .enclap-error")
    assert note_box, "an error box, not a caption"
    text = note_box[0].text
    assert str(tmp_path) not in text and "remove it" not in text and "Traceback" not in text
    time.sleep(0.5)
    assert not _css(browser, "#audio-input audio"), "a refused file must not stay in the player as a 0:00 clip"
    caption, message, _ = _caption(browser)
    assert caption == "" and page.EMPTY_MESSAGE in message


def test_too_short_clip_is_captioned_with_a_warning(server, browser, tmp_path):
    _open(browser, server)
    short = tone_file(tmp_path / "short.wav", 0.02, sr=8000, channels=1)
    note = _upload(browser, short)
    assert "too short to describe" in note and f"< {page.MIN_SECONDS} s" in note
    caption, message, _ = _caption(browser)
    assert caption and "too short to describe" in message
    assert _css(browser, "#caption-message .enclap-warning")


def test_button_is_disabled_and_status_follows_the_steps_while_a_request_runs(server, browser, pipeline, tmp_path,
                                                                             monkeypatch):
    run = pipeline.run

    def slow_run(*args, on_step=None, **kwargs):
        def step(stage, done, total):
            time.sleep(0.4)  # slow enough for the browser to see every stage
            on_step(stage, done, total)
        return run(*args, on_step=step, **kwargs)

    monkeypatch.setattr(pipeline, "run", slow_run)
    _open(browser, server)
    _upload(browser, tone_file(tmp_path / "clip.wav", 0.5))
    _css(browser, "#caption-button")[0].click()
    _wait(browser, lambda: not _css(browser, "#caption-button")[0].is_enabled(), timeout=10)
    seen = set()

    def finished():
        status = _value(browser, "#caption-status textarea")
        seen.add(status.split(" · ")[0])
        return status == "done"

    _wait(browser, finished)
    assert {label for _, _, label in page.STAGES.values()} <= seen, seen
    _wait(browser, lambda: _css(browser, "#caption-button")[0].is_enabled(), timeout=10)


def test_options_have_help_and_inactive_ones_are_greyed_out(server, browser):
    _open(browser, server)
    _css(browser, "#options button, #options .label-wrap")[0].click()
    _wait(browser, lambda: _css(browser, "#opt-top-p input[type=range]"))
    body = _css(browser, "body")[0].text
    for help_line in page.HELP.values():
        assert help_line in body
    assert not _css(browser, "#opt-top-p input[type=range]")[0].is_enabled()
    assert not _css(browser, "#opt-candidates input[type=range]")[0].is_enabled()
    _css(browser, "#opt-sample input[type=checkbox]")[0].click()
    _wait(browser, lambda: _css(browser, "#opt-top-p input[type=range]")[0].is_enabled())
    _css(browser, "#opt-rerank input[type=checkbox]")[0].click()
    _wait(browser, lambda: _css(browser, "#opt-candidates input[type=range]")[0].is_enabled())


def _request(server, clip, *options):
    """One request to the page's API as gradio's own Python client sends it: the clip, then the
    options in the order of the accordion (all of them, or none: the page's defaults)."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=False)
    try:
        return client.predict(handle_file(str(clip)), *options, api_name="/caption")
    finally:
        client.close()


def test_requests_log_no_deprecation_warning(server, pipeline, tmp_path):
    with warnings.catch_warnings(record=True) as seen:  # records warnings of the server's threads too
        # pytest resets warning filters around each test (and pytest.ini hides this warning from the
        # suite's summary): start from "show all", then build the page again, which installs its filter.
        warnings.simplefilter("always")
        gradio_app.build_demo(pipeline)
        _request(server, tone_file(tmp_path / "w.wav", 0.3))
    # The warning gradio's routes raise per request (captioning.page.quiet_known_warnings); other
    # libraries' import-time warnings may land here too when this test runs first.
    raised = [f"{w.category.__name__}: {w.message}" for w in seen if "HTTP_422" in str(w.message)]
    assert not raised, raised


def test_every_option_reaches_generation(server, pipeline, tmp_path, monkeypatch):
    """Each option of the accordion, set away from its default (all different values), arrives where
    generation and re-ranking read it: a swapped or dropped input of the button would not."""
    seen = []
    run = pipeline.run

    def recording(sources, *args, options=None, rerank=None, **kwargs):
        seen.append((options, rerank))
        return run(sources, *args, options=options, rerank=rerank, **kwargs)

    monkeypatch.setattr(pipeline, "run", recording)
    sent = {"num_beams": 3, "max_length": 17, "no_repeat_ngram_size": 2, "length_penalty": 1.7, "do_sample": True,
            "top_p": 0.65, "temperature": 1.35, "enabled": True, "num_candidates": 5, "clap_weight": 2.3,
            "lm_weight": 0.4, "seed": 7}
    defaults = {**vars(GenerationOptions()), **vars(RerankOptions())}
    assert all(sent[name] != defaults[name] for name in sent)
    caption, *_ = _request(server, tone_file(tmp_path / "o.wav", 0.4), *sent.values())
    (options, rerank), = seen
    got = {**vars(options), **vars(rerank)}
    assert {name: got[name] for name in sent} == pytest.approx(sent)
    assert caption  # the options work together


def test_request_level_messages_are_web_worded(pipeline, tmp_path):
    bad = tmp_path / "upload.wav"
    bad.write_bytes(b"not really a wav file")
    caption, message, timing = page.run_request(pipeline, str(bad), GenerationOptions(), None)
    assert caption == "" and timing == "" and "enclap-error" in message
    assert "could not be read as audio" in message and str(tmp_path) not in message
    assert page.readable("a\x1db \ufffd") == ("a\ufffdb \ufffd", True)
    assert page.readable("a dog barks") == ("a dog barks", False)


def test_gradio_app_serves_the_page_as_a_user_starts_it(tiny_ckpt, tmp_path):
    """``python .../gradio_app.py`` typed in the user's own folder (no PYTHONPATH) serves the page
    and captions through its API."""
    import subprocess
    import sys
    import urllib.request

    from tests.helpers import free_port, user_env

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(gradio_app.__file__), "gradio_app.py"),
                            "--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--port", str(port)],
                           cwd=tmp_path, env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while True:
            assert app.poll() is None, app.stderr.read()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert "EnCLAP audio captioning" in response.read().decode()
                break
            except OSError:
                assert time.time() < deadline, "the page did not answer within 3 minutes"
                time.sleep(0.5)
        caption, *_ = _request(url, tone_file(tmp_path / "c.wav", 0.4))
        assert caption
    finally:
        app.terminate()
        app.wait(timeout=60)


def test_binds_localhost_unless_asked(tiny_ckpt):
    parse = gradio_app.build_parser().parse_args
    assert gradio_app.launch_kwargs(parse(["--ckpt", str(tiny_ckpt)])) == {
        "server_name": "127.0.0.1", "server_port": 7860, "share": False,
    }
    opened = gradio_app.launch_kwargs(parse(["--ckpt", "x", "--host", "0.0.0.0", "--share", "--port", "8000"]))
    assert opened == {"server_name": "0.0.0.0", "server_port": 8000, "share": True}


def test_example_clip_is_shipped_and_reproducible(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", gradio_app.EXAMPLE_CLIP.replace("example.wav", "make_example.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped, sr = sf.read(gradio_app.EXAMPLE_CLIP, dtype="int16")
    assert sr == module.SAMPLE_RATE
    regenerated = tmp_path / "example.wav"
    sf.write(regenerated, module.make_example(), module.SAMPLE_RATE, subtype="PCM_16")
    assert np.array_equal(sf.read(regenerated, dtype="int16")[0], shipped)
