"""benchmarks/gpu_check.sh on a CPU: argument handling, the missing-package lines (a real python whose
packages are hidden or broken), ``--install``, the no-GPU error, and its summary, computed from what a
stand-in interpreter prints: the training step's lines in their format, the sync-debug pass's
record, and a real run of the inference benchmark at a small size on the CPU (so a change of its
output is caught)."""

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
    run = _run("--dry-run", "--batch", "8,32", "--steps", "3", "--clips", "4", "--python", "py")
    assert run.returncode == 0, run.stderr
    train_8, train_32, sync, infer = run.stdout.strip().splitlines()
    for train, batch in ((train_8, 8), (train_32, 32)):
        assert train.startswith("py benchmarks/train_step.py ") and "--device cuda" in train
        assert "--size bart-base" in train and f"--batch {batch} " in train and "--steps 3 " in train
        assert "--precision bf16" in train and "--pipelines original,ours" in train
    assert "ENCLAP_SYNC_LOG=" in sync and "--batch 8 --steps 3 --warmup 0" in sync
    assert infer.startswith("py benchmarks/inference.py ") and "--device cuda" in infer and "--clips 4" in infer


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument: --bogus"),
    (["--steps", "x"], "--steps must be a positive integer"),
    (["--budget", "0"], "--budget must be a positive integer"),
    (["--clips"], "--clips needs a value"),
    (["--batch", "16,x"], "--batch must be positive integers separated by commas, got 'x'"),
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
    benchmarks/gpu_packages.py) exit 0;;
    benchmarks/train_step.py)
        if [ -n "${ENCLAP_SYNC_LOG:-}" ]; then  # the sync-debug pass: what sitecustomize.py records
            case "$PYTHONPATH" in */benchmarks/sync_debug*) ;; *) exit 8;; esac
            printf 'ours\tmodeling/losses.py:40\nours\tbenchmarks/train_step.py:230\nours\tmodeling/losses.py:40\n' >> "$ENCLAP_SYNC_LOG"
            printf 'original\tbenchmarks/train_step.py:230\n' >> "$ENCLAP_SYNC_LOG"
            exit 0
        fi
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
    run = _run("--python", str(fake), "--batch", "16,64", "--clips", "2", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "GPU: Fake GPU 80GB" in out
    for batch in (16, 64):
        assert re.search(rf"batch {batch} x 750 frames, ours +180\.0 ms/step, 90\.000 examples/s, peak GPU memory "
                         r"12\.50 GiB", out), out
        assert re.search(rf"batch {batch} x 750 frames, stock +400\.0 ms/step, 40\.000 examples/s, peak GPU memory "
                         r"30\.00 GiB", out), out
        assert f"train step, batch {batch}: ours / stock examples per second x2.25" in out
    assert ("sync-debug, ours, 3 training steps at batch 16: 3 synchronizing CUDA call(s): modeling/losses.py:40 x2, "
            "benchmarks/train_step.py:230 x1") in out
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


# Hides a package from a real python: a module of that name first on PYTHONPATH that fails to
# import as the missing package (or a broken CUDA build) would.
MISSING = 'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'
BROKEN = 'raise OSError("libcudart.so.12: cannot open shared object file: No such file or directory")\n'


@pytest.mark.parametrize("hidden, expected", [
    ({"transformers": MISSING, "omegaconf": MISSING},
     ["gpu_check.sh: missing package: transformers (ModuleNotFoundError: No module named 'transformers'); "
      "pip install 'transformers==4.57.6' (or: sh benchmarks/gpu_check.sh --install)",
      "gpu_check.sh: missing package: omegaconf (ModuleNotFoundError: No module named 'omegaconf'); "
      "pip install 'omegaconf==2.4.0' (or: sh benchmarks/gpu_check.sh --install)"]),
    ({"torch": BROKEN},
     ["gpu_check.sh: missing package: torch (OSError: libcudart.so.12: cannot open shared object file: No such file "
      "or directory); install a CUDA build of torch (https://pytorch.org/get-started/locally/)"]),
    ({"torchaudio": MISSING},
     ["gpu_check.sh: missing package: torchaudio (ModuleNotFoundError: No module named 'torchaudio'); install the "
      "torchaudio build that matches torch "]),
])
def test_missing_packages_are_named_one_line_each(tmp_path, hidden, expected):
    for name, text in hidden.items():
        (tmp_path / f"{name}.py").write_text(text.format(name=name))
    run = _run("--python", sys.executable, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 5, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == len(expected) + 1 and "install what is missing (above), then rerun" in lines[-1], lines
    for line, start in zip(lines, expected):
        assert line.startswith(start), line
    assert "Traceback" not in run.stderr


def test_install_adds_the_gpu_requirements_and_holds_torch(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\n'
                    'case "$1" in\n'
                    '    -c) echo "torch==2.9.0+cu128";;\n'
                    '    -m) echo "pip: $*"; cat "$7" | sed "s/^/held: /"; exit 1;;\n'
                    'esac\n')
    fake.chmod(0o755)
    run = _run("--python", str(fake), "--install")
    assert run.returncode == 5 and "pip install -r benchmarks/requirements-gpu.txt failed" in run.stderr
    assert run.stdout.splitlines() == ["pip: -m pip install -r benchmarks/requirements-gpu.txt -c " +
                                       run.stdout.split(" -c ")[1].splitlines()[0], "held: torch==2.9.0+cu128"]
    required = (REPO / "benchmarks" / "requirements-gpu.txt").read_text()
    assert not re.search(r"^torch", required, re.M)  # torch, torchaudio, torchvision: the machine's own builds
