"""The demo page in a real headless browser (Debian chromium + chromedriver, via selenium).

The page is served in-process on a free port of 127.0.0.1; the browser uploads a stereo 44.1 kHz
WAV, presses Caption and reads the caption, which must equal the pipeline's own caption of
that file. chromium comes from `make browser` (mk/browser.mk).
"""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
import soundfile as sf

import gradio_app
from modeling.generation import GenerationOptions
from captioning.pipeline import EnClap

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
BROWSER_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]


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


def _caption_on_page(browser, url, upload=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input input[type=file]"))
    if upload is not None:
        browser.find_element(By.CSS_SELECTOR, "#audio-input input[type=file]").send_keys(str(upload))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input audio"))
    browser.find_element(By.CSS_SELECTOR, "#caption-button").click()
    output = "#caption-output textarea"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, output).get_property("value"))
    timing = browser.find_element(By.CSS_SELECTOR, "#caption-timing textarea").get_property("value")
    return browser.find_element(By.CSS_SELECTOR, output).get_property("value"), timing


def test_upload_a_stereo_wav_and_read_the_caption(server, browser, pipeline, tmp_path):
    t = np.arange(int(0.6 * 44100)) / 44100
    left = 0.4 * np.sin(2 * np.pi * 660 * t)
    clip = tmp_path / "stereo_44k.wav"
    sf.write(clip, np.stack([left, 0.2 * np.sin(2 * np.pi * 220 * t)], axis=1), 44100, subtype="PCM_16")
    caption, timing = _caption_on_page(browser, server, upload=clip)
    assert caption == pipeline.caption(str(clip))[0]
    assert " s on cpu" in timing


def test_pressing_caption_without_audio_explains_what_to_do(server, browser):
    caption, _ = _caption_on_page(browser, server)
    assert caption == gradio_app.EMPTY_MESSAGE


def test_unreadable_audio_gives_a_message_not_a_traceback(pipeline, tmp_path):
    bad = tmp_path / "upload.wav"
    bad.write_bytes(b"not really a wav file")
    text, timing = gradio_app.caption_file(pipeline, str(bad), GenerationOptions(), None)
    assert text.startswith("Could not read this audio:") and "upload.wav" in text
    assert "Traceback" not in text and timing == ""


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
