"""inference.py warns when its captions are degenerate (empty, or one caption for every input)."""

from __future__ import annotations

import logging

import numpy as np
import soundfile as sf

import inference
from captioning.pipeline import CaptionResult, EnClap


def _fake_run(captions):
    def run(self, files, **kwargs):
        return [CaptionResult(source=str(f), caption=c, duration=0.2, end=0.2) for f, c in zip(files, captions)]
    return run


def test_identical_or_empty_captions_are_warned_about(tiny_ckpt, tmp_path, monkeypatch, capsys, caplog):
    for i in range(3):
        sf.write(str(tmp_path / f"c{i}.wav"), np.full(3200, 0.1 * (i + 1), np.float32), 16000)
    args = ["--ckpt", str(tiny_ckpt), "--random_encoders", "--device", "cpu", "--input", str(tmp_path)]
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(EnClap, "run", _fake_run(["a dog barks"] * 3))
    assert inference.main(args) == 0
    assert f"3 of 3 inputs got the same caption 'a dog barks' (1 distinct caption); the checkpoint {tiny_ckpt} " \
           "looks under-trained" in caplog.text
    caplog.clear()
    monkeypatch.setattr(EnClap, "run", _fake_run(["a dog barks", "", "rain"]))
    assert inference.main(args) == 0
    assert "1 of 3 captions for inputs are empty (2 distinct captions)" in caplog.text
    caplog.clear()
    monkeypatch.setattr(EnClap, "run", _fake_run(["a dog barks", "wind", "rain"]))
    assert inference.main(args) == 0
    assert "under-trained" not in caplog.text
    assert capsys.readouterr().out.count("\t") == 9  # every caption still printed, path<TAB>caption
