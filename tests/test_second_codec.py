"""The codec seam (design §10): a second codec, defined in tests/toy_codec.py and named only by
preprocessing's ``--codec`` and the recipe key ``data.codec``, goes through preprocessing, a tiny
training run and captioning; nothing else in the repository names it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from captioning.pipeline import EnClap
from data import preprocess
from tests.test_cli_train import run_train
from tests.toy_codec import ToyCodec

TOY_CODEC = "tests.toy_codec:ToyCodec"
CLIPS = [("dog", 0.5, 300), ("rain", 0.9, 900), ("bell", 0.3, 1500), ("man", 0.6, 200), ("tap", 0.4, 700)]
CAPTIONS = ["a dog barks", "rain falls on a roof", "a bell rings", "a man speaks", "water runs from a tap"]


def _write_clips(root: Path, rate: int = 22050) -> None:
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    for name, seconds, tone in CLIPS:
        t = np.arange(int(seconds * rate)) / rate
        sf.write(str(root / "audio" / f"{name}.wav"), 0.3 * np.sin(2 * np.pi * tone * t)
                 + 0.05 * rng.standard_normal(t.size), rate)
    for split, header in (("train", ["file_path", "caption"]),
                          ("val", ["file_path"] + [f"caption_{k}" for k in range(1, 6)])):
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for (name, *_), caption in zip(CLIPS, CAPTIONS):
                writer.writerow([f"{name}.npy"] + [caption] * (len(header) - 1))


def test_a_second_codec_through_preprocessing_training_and_captioning(tmp_path):
    _write_clips(tmp_path)

    # 1. Preprocessing with --codec: the toy codec's codes, 4 codebooks of 64 at 50 frames/s.
    status = preprocess.main(["--data_path", str(tmp_path / "audio"), "--encodec_path", str(tmp_path / "enc"),
                              "--clap_path", str(tmp_path / "clap"), "--codec", TOY_CODEC, "--random_weights", "--quiet",
                              "--device", "cpu"])
    assert status == 0
    for name, seconds, _ in CLIPS:
        codes = np.load(tmp_path / "enc" / f"{name}.npy")
        assert codes.shape == (math.ceil(int(seconds * 22050) * 16000 / 22050 / 320), 4)
        assert codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < 64

    # 2. A tiny training run whose recipe names the codec: the scratch model takes its codebooks.
    run = tmp_path / "run"
    result = run_train([f"data.train_csv={tmp_path / 'train.csv'}", f"data.val_csv={tmp_path / 'val.csv'}",
                        f"data.encodec_base_path={tmp_path / 'enc'}", f"data.clap_base_path={tmp_path / 'clap'}",
                        f"data.codec={TOY_CODEC}", f"output_dir={run}", "optim.epochs=1", "optim.batch_size=5"])
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = run / "checkpoints" / "step_00000001" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["codec"], config["num_rvq"], config["encodec_vocab_size"]) == (TOY_CODEC, 4, 64)

    # 3. Captioning raw audio with that checkpoint builds the toy codec from the checkpoint alone,
    #    and its features are the ones preprocessing stored.
    pipeline = EnClap(model_dir, device="cpu", random_encoders=True)
    clip = tmp_path / "audio" / "rain.wav"
    (caption,) = pipeline.caption([str(clip)])
    assert isinstance(pipeline.encodec, ToyCodec) and isinstance(caption, str) and caption
    codes, _ = pipeline.features.extract([str(clip)])[0]
    np.testing.assert_array_equal(codes, np.load(tmp_path / "enc" / "rain.npy"))
