"""benchmarks/train_step.py at a tiny size: its lines, its assertions and its argument handling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.cpu import cpu_model
from tests.benchmarks._load import load_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "train_step.py"
train_step = load_benchmark("train_step")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_tiny_run_reports_both_dropout_settings_and_the_dropout_ratio_last(capsys):
    # The script's main() runs in this process (saving one interpreter start); each of its four
    # measurements still runs in a fresh process of its own, as users run it.
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # unlike --threads 1: the CPU line must name the measurements' count
    try:
        status = train_step.main(["--size", "tiny", "--batch", "3", "--frames", "40", "--steps", "1", "--warmup",
                                  "1", "--threads", "1"])
    finally:
        torch.set_num_threads(saved)
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = {}
    for line in lines:
        match = re.match(r"dropout (\S+) +(original|ours) +([0-9.]+) examples/s .* peak RSS +([0-9.]+) GiB "
                         r"first-step loss ([0-9.]+)", line)
        if match:
            figures[float(match[1]), match[2]] = (float(match[3]), float(match[4]), float(match[5]))
    assert set(figures) == {(0.1, "original"), (0.1, "ours"), (0.0, "original"), (0.0, "ours")}, lines
    # Without dropout both pipelines compute the same loss; with it they draw different masks.
    assert figures[0.0, "ours"][2] == pytest.approx(figures[0.0, "original"][2], rel=1e-5)
    assert any("the recipes' dropout" in line for line in lines)
    assert any("same batch, same loss (asserted)" in line for line in lines)
    # The CPU the figures belong to, with the thread count the measurements ran with.
    assert any(line.startswith(f"CPU: {cpu_model()}, ") and line.endswith("; 1 threads") for line in lines), lines
    ratio = float(re.fullmatch(r"speedup: ([0-9.]+)", lines[-1])[1])
    assert ratio == pytest.approx(figures[0.1, "ours"][0] / figures[0.1, "original"][0], rel=0.01, abs=0.006)
    for speed, peak, _ in figures.values():
        assert speed > 0 and 0.1 < peak < 64  # a whole process's peak RSS, not a difference


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--pipelines", "ours,original"], "the first one is the baseline"),
    (["--pipelines", "original,sdpa"], "--pipelines needs 'ours'"),
    (["--dropout", "1.0"], "--dropout values must be in"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--frames", "5000"], "--frames in"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    run = _run(*args, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_says_so(capsys):
    assert train_step.main(["--device", "cuda", "--size", "tiny"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cuda_defaults_time_more_steps_per_wall_second():
    cpu, cuda = train_step.parse_args([]), train_step.parse_args(["--device", "cuda"])
    assert (cpu.steps, cpu.warmup, cpu.dropout) == (2, 1, [0.1, 0.0])
    assert cuda.steps > cpu.steps and cuda.warmup > cpu.warmup
