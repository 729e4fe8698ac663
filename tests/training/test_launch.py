"""The launch-layout checks (training.preflight.check_launch): they stop a run in one line before the
process group, the model or any data, and warn about per-GPU batches too small to keep a GPU busy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.config import ConfigError, load_config
from training.preflight import check_launch

REPO = Path(__file__).resolve().parents[2]


def _base(tmp_path, *overrides):
    return load_config(str(REPO / "cfg/audiocaps/base.yaml"), [f"output_dir={tmp_path / 'run'}", *overrides])


def test_global_batch_over_too_many_processes_stops_before_model_and_data(tmp_path, monkeypatch, capsys):
    import train
    import training.model
    import training.preflight

    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded before the layout check")

    # The recipe names a Hub id (facebook/bart-base) and data that is not here: reading either
    # would fail differently, so the one line below can only come from the layout check.
    monkeypatch.setattr(training.preflight, "model_positions", must_not_run)
    monkeypatch.setattr(training.preflight, "CaptionDataset", must_not_run)
    monkeypatch.setattr(training.model, "build_model_and_tokenizer", must_not_run)
    monkeypatch.setenv("WORLD_SIZE", "32")  # 4 nodes x 8 GPUs, as the launcher exports it
    monkeypatch.setenv("RANK", "5")
    monkeypatch.chdir(tmp_path)
    status = train.main([str(REPO / "cfg/audiocaps/base.yaml"), f"output_dir={tmp_path / 'run'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: optim.batch_size=16 (the global batch) is not a multiple of the 32 "
                               "processes launched"), lines[0]
    assert "e.g. 32" in lines[0] and "e.g. 16)" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("world, on_gpu, expected", [
    (8, True, "optim.batch_size=16 over 8 GPUs leaves 2 examples per GPU"),
    (2, True, None),  # 8 per GPU
    (8, False, None),  # CPU processes: no GPU to keep busy
    (1, True, None),
])
def test_small_per_gpu_batches_are_warned_with_the_fix(tmp_path, monkeypatch, world, on_gpu, expected):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    warnings = check_launch(_base(tmp_path), None, on_gpu=on_gpu)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(expected), warnings
        assert "raise optim.batch_size to 64 or more" in warnings[0] and "at most 2 GPU(s)" in warnings[0]


def test_resume_checkpoint_of_another_global_batch_or_unreadable_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    state = {"global_step": 10, "layout": {"batch_size": 32, "gradient_accumulation_steps": 1, "processes": 8}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"optim.batch_size=16, but the run in .* was trained with 32"):
        check_launch(_base(tmp_path), str(ckpt), on_gpu=False)
    # Another process count is fine: the global batch and the data position do not depend on it.
    assert check_launch(_base(tmp_path, "optim.batch_size=32"), str(ckpt), on_gpu=False) == []
    with pytest.raises(ConfigError, match="optim.gradient_accumulation_steps=2, but"):
        check_launch(_base(tmp_path, "optim.batch_size=32", "optim.gradient_accumulation_steps=2"), str(ckpt),
                     on_gpu=False)
    (ckpt / "trainer_state.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read the resume checkpoint .*step_00000010 .*delete that folder"):
        check_launch(_base(tmp_path), str(ckpt), on_gpu=False)
