"""data/preprocess.py says the limits: clips over ``--max_frames`` and clips shorter than one EnCodec frame."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from data import preprocess


def test_long_and_short_clips_are_counted_and_named(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    rng = np.random.default_rng(0)
    sf.write(str(wavs / "six.wav"), np.array([0.1, -0.2, 0.3, 0.0, 0.5, -1.0], np.float32), 16000)  # 0.4 ms
    sf.write(str(wavs / "half.wav"), 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)  # 0.5 s: 38 frames
    sf.write(str(wavs / "long.flac"), 0.1 * rng.standard_normal(19200).astype(np.float32), 16000)  # 1.2 s: 90
    args = ["--data_path", str(wavs), "--encodec_path", str(tmp_path / "enc"), "--clap_path", str(tmp_path / "clap"),
            "--random_weights", "--quiet", "--max_frames", "50"]
    assert preprocess.main(args) == 0
    captured = capsys.readouterr()
    assert "1 clip(s) exceed 50 EnCodec frames (0.7 s)" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: 1 clip(s) are longer than 50 frames (0.7 s, --max_frames): the model reads only that much of "
        "each: long.flac",
        "warning: 1 clip(s) hold less sound than one EnCodec frame (13.3 ms) and became a single frame: six.wav"]
    # A rerun finds every clip done and still names the long one (read from the stored codes).
    assert preprocess.main(args[:-1] + ["40"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 clip(s) are longer than 40 frames" in err and "long.flac" in err
    assert preprocess.main(args[:-2]) == 0  # the default limit, 1021 frames: nothing to say
    assert "warning:" not in capsys.readouterr().err
