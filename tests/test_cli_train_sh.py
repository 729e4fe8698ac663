"""train.sh's choice of launch without an ``accelerate config``: one process per visible GPU, said
in one line, one process on a CPU machine; a config file or ENCLAP_LAUNCH_ARGS decide otherwise.

train.sh runs from a copy in a folder without .venv, so it takes ``python3`` from PATH: a stand-in
that prints the launcher's arguments. A stand-in ``nvidia-smi`` lists the machine's GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = '#!/bin/sh\necho "launch: $*"\n'
FAKE_NVIDIA_SMI = '#!/bin/sh\n[ "$1" = -L ] || exit 9\nfor i in $(seq 0 $((${FAKE_GPUS} - 1))); do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done\n'


def _launch(tmp_path: Path, gpus_listed: int | None, env: dict, config: bool = False) -> subprocess.CompletedProcess:
    repo, bin_dir, home = tmp_path / "repo", tmp_path / "bin", tmp_path / "hf"
    repo.mkdir()
    bin_dir.mkdir()
    shutil.copy(REPO / "train.sh", repo / "train.sh")
    for name, text in [("python3", FAKE_PYTHON)] + ([("nvidia-smi", FAKE_NVIDIA_SMI)] if gpus_listed else []):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    if config:
        (home / "accelerate").mkdir(parents=True)
        (home / "accelerate" / "default_config.yaml").write_text("distributed_type: MULTI_GPU\n")
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HF_HOME": str(home), "FAKE_GPUS": str(gpus_listed or 0), **env}
    return subprocess.run(["sh", str(repo / "train.sh"), "cfg/base.yaml", "optim.lr=1e-4"], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("listed, env, processes", [
    (8, {}, 8),  # an 8-GPU node
    (8, {"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),  # the visible ones count
    (None, {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, 2),  # no nvidia-smi, UUIDs
    (8, {"CUDA_VISIBLE_DEVICES": "1,-1,2"}, 1),  # CUDA stops at the first invalid entry
    (8, {"CUDA_VISIBLE_DEVICES": ""}, 1),
    (1, {}, 1),
    (None, {}, 1),  # a CPU machine
])
def test_without_a_config_every_visible_gpu_gets_a_process(tmp_path, listed, env, processes):
    run = _launch(tmp_path, listed, env)
    assert run.returncode == 0, run.stderr
    launch = run.stdout.strip()
    assert launch.startswith("launch: -m accelerate.commands.launch --quiet ") and launch.endswith(
        "/repo/train.py cfg/base.yaml optim.lr=1e-4"), launch
    assert f"--num_processes {processes} --num_machines 1" in launch
    if processes > 1:
        assert "--multi_gpu" in launch
        assert run.stderr.strip() == (
            f"train.sh: {processes} GPUs visible and no accelerate config: running {processes} processes, one per "
            "GPU; CUDA_VISIBLE_DEVICES=0 runs one, `accelerate config` or ENCLAP_LAUNCH_ARGS another layout "
            "(docs/cluster.md)")
    else:
        assert "--multi_gpu" not in launch and run.stderr == ""


def test_a_config_or_launch_args_decide_the_layout(tmp_path):
    run = _launch(tmp_path, 8, {}, config=True)
    assert run.returncode == 0 and run.stderr == ""
    assert "--num_processes" not in run.stdout  # the config file's layout
    shutil.rmtree(tmp_path / "repo")
    shutil.rmtree(tmp_path / "bin")
    run = _launch(tmp_path, 8, {"ENCLAP_LAUNCH_ARGS": "--num_processes 16 --num_machines 2"})
    assert run.returncode == 0 and run.stderr == ""
    assert "--quiet --num_processes 16 --num_machines 2 " in run.stdout
