"""benchmarks/gpu_check.sh on a CPU: argument handling, the no-GPU error, and its summary, computed
from what a stand-in interpreter prints: the training step's lines in their format, and a real
run of the inference benchmark at a small size on the CPU (so a change of its output is caught)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args, env=None):
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=env)


def test_help_and_dry_run():
    run = _run("--help")
    assert run.returncode == 0 and "--dry-run" in run.stdout and "real-time factor" in run.stdout
    run = _run("--dry-run", "--batch", "8", "--steps", "3", "--clips", "4", "--python", "py")
    assert run.returncode == 0, run.stderr
    train, infer = run.stdout.strip().splitlines()
    assert train.startswith("py benchmarks/train_step.py ") and "--device cuda" in train
    assert "--size bart-base" in train and "--batch 8" in train and "--steps 3" in train and "--precision bf16" in train
    assert infer.startswith("py benchmarks/inference.py ") and "--device cuda" in infer and "--clips 4" in infer


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument: --bogus"),
    (["--steps", "x"], "--steps must be a positive integer"),
    (["--budget", "0"], "--budget must be a positive integer"),
    (["--clips"], "--clips needs a value"),
])
def test_bad_arguments(args, message):
    run = _run(*args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_without_a_gpu_it_says_so():
    run = _run()
    assert run.returncode == 3 and "no CUDA device" in run.stderr


FAKE_PYTHON = """#!/bin/sh
# Stands in for python: a "GPU", and benchmark outputs in the scripts' formats.
case "$1" in
    -c) echo "Fake GPU 80GB"; exit 0;;
    benchmarks/train_step.py)
        echo "machine: GPU Fake GPU 80GB"
        echo "dropout 0.1  original  40.000 examples/s (  0.40 s/step) peak GPU memory  30.00 GiB first-step loss 15.1"
        echo "dropout 0.1  ours      90.000 examples/s (  0.18 s/step) peak GPU memory  12.50 GiB first-step loss 15.2"
        echo "dropout 0.1  (the recipes' dropout): ours / original x2.25 examples per wall-second, 58% less"
        echo "dropout 0    original  50.000 examples/s (  0.32 s/step) peak GPU memory  29.00 GiB first-step loss 15.0"
        echo "dropout 0    ours     100.000 examples/s (  0.16 s/step) peak GPU memory  12.00 GiB first-step loss 15.0"
        echo "speedup: 2.25";;
    benchmarks/inference.py)  # the real benchmark, small and on the CPU
        exec "{python}" benchmarks/inference.py --size small --clips 2 --batch_size 2 --repeats 1 \
            --long_seconds 14 --max_length 6;;
    *) exit 9;;
esac
"""


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_summary_from_the_benchmarks_outputs(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    fake.chmod(0o755)
    run = _run("--python", str(fake), "--batch", "16", "--clips", "2", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "GPU: Fake GPU 80GB" in out
    assert re.search(r"dropout 0\.1, ours +90\.000 examples/s, peak GPU memory 12\.50 GiB", out), out
    assert re.search(r"dropout 0\.1, original +40\.000 examples/s, peak GPU memory 30\.00 GiB", out), out
    assert "train step (dropout 0.1) speedup: 2.25" in out
    # The inference summary repeats the benchmark's own figures (printed above it).
    one = re.search(r"one clip: stock ([0-9.]+) s/clip, shared [0-9.]+, ours ([0-9.]+); stock/ours ([0-9.]+)x", out)
    batch = re.search(r"batch of 2: stock [0-9.]+ s/clip, shared [0-9.]+, ours ([0-9.]+);", out)
    assert one and batch, out
    stock, ours, ratio = one.groups()
    assert f"one 10 s clip from features: ours {ours} s, stock generate {stock} s (x{ratio})" in out
    rtf = float(re.search(r"2 clips of 10 s in batches of 2: ([0-9.]+) s per clip, real-time factor ([0-9.]+)", out)[2])
    assert rtf == pytest.approx(float(batch[1]) / 10, abs=1e-4)


def test_a_failing_benchmark_fails_the_check(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace('benchmarks/inference.py)', 'benchmarks/inference.py) exit 1;;\n    x)'))
    fake.chmod(0o755)
    run = _run("--python", str(fake))
    assert run.returncode == 4 and "inference failed" in run.stderr
