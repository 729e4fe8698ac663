"""A rank of a 2-process training run (two machines: one process each, gloo) is SIGKILLed mid-run:
the other ends in one line naming it, with exit status 3, instead of a traceback or a wait."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.helpers import free_port
from tests.test_cli_train import REPO, TINY, _env, write_split


def test_the_survivor_names_the_dead_rank_in_one_line(tmp_path):
    data = write_split(tmp_path / "data", 8, 3)
    out = tmp_path / "run"
    # Long enough to still be training when rank 1 dies after the first checkpoint.
    args = ["cfg/tiny.yaml"] + TINY + data + ["optim.epochs=200", "optim.batch_size=2", "eval.every_steps=2",
                                              "eval.max_samples=2", f"output_dir={out}"]
    env = {**_env(), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # two machines of one process each, as their launchers export it
    ranks = [subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env={**env, "RANK": str(rank)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        deadline = time.time() + 300  # a guard against a hang, not a measurement
        while not (out / "checkpoints" / "step_00000002").is_dir() and time.time() < deadline:
            assert all(rank.poll() is None for rank in ranks), ranks[0].stderr.read()[-3000:]
            time.sleep(0.2)
        ranks[1].kill()
        _, err = ranks[0].communicate(timeout=300)
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
            rank.wait()
    assert ranks[0].returncode == 3, err[-3000:]
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: rank 1 stopped: no heartbeat for 15 s"), \
        err[-3000:]
    assert "Traceback" not in err
