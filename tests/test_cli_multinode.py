"""Training as two machines on this host (two ``accelerate launch --num_machines 2`` commands, one
CPU process each, gloo), reading a packed store, gives the predictions and scores of two
processes on one machine reading the per-file trees; the recipe's process-group timeout reaches
the group; ranks that do not share a folder are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from data.extraction import store_cli
from tests.helpers import free_port
from tests.test_cli_train import REPO, TINY, _env, read_predictions, write_split

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def _train_command(launcher: list[str], overrides: list[str]) -> list[str]:
    return launcher + ["train.py", "cfg/tiny.yaml"] + TINY + overrides


def test_two_machines_equal_two_processes_on_one(tmp_path):
    data = write_split(tmp_path / "data", 8, 9)
    common = data + ["optim.epochs=2", "optim.batch_size=4", "optim.lr=5e-3", "eval.batch_size=2",
                     "eval.every_steps=2", "distributed.timeout_minutes=7"]
    one = subprocess.run(_train_command(LAUNCH + ["--num_machines", "1", "--main_process_port", str(free_port())],
                                        common + [f"output_dir={tmp_path / 'one'}"]),
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]

    # The two machines start as a cluster job starts them (docs/cluster.md): train.sh on each,
    # the launcher's machine options in ENCLAP_LAUNCH_ARGS.
    # ... and read the same clips from a packed store (with a loader worker): the batches, so the
    # predictions, must not change with the layout either.
    store_cli.pack_trees(str(tmp_path / "data" / "enc"), str(tmp_path / "data" / "clap"), str(tmp_path / "packed"),
                     shard_clips=4, progress=False)
    packed = [f"data.encodec_base_path={tmp_path / 'packed'}", f"data.clap_base_path={tmp_path / 'packed'}",
              "data.feature_layout=packed", "data.num_workers=1"]
    port = str(free_port())
    machines = [subprocess.Popen(
        ["sh", "train.sh", "cfg/tiny.yaml"] + TINY + common + packed + [f"output_dir={tmp_path / 'two'}"], cwd=REPO,
        env={**_env(), "ENCLAP_LAUNCH_ARGS": " ".join(LAUNCH[4:] + [
            "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port])},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [machine.communicate(timeout=400) for machine in machines]
    for machine, (_, err) in zip(machines, outputs):
        assert machine.returncode == 0, err[-3000:]

    log = (tmp_path / "two" / "train.log").read_text()
    # The recipe's timeout, read back from the process group itself.
    assert "2 processes on 2 machine(s)" in log and "process-group timeout 7 min" in log
    assert "2 processes on 1 machine(s)" in (tmp_path / "one" / "train.log").read_text()
    for step in ("step_00000002", "step_00000004"):
        rows_one = read_predictions(tmp_path / "one" / "predictions" / f"{step}.csv")
        rows_two = read_predictions(tmp_path / "two" / "predictions" / f"{step}.csv")
        assert [r["file_path"] for r in rows_two] == [f"clips/{i}.npy" for i in range(9)]
        assert rows_two == rows_one
        scores = [json.loads((tmp_path / run / "checkpoints" / step / "trainer_state.json").read_text())["scores"]
                  for run in ("one", "two")]
        assert scores[1] == scores[0]


# Each rank checks the folders given as (folder, resume) pairs in turn, in one process group:
# a refusal is raised on every rank, so the ranks stay in step for the next check.
SHARED_CHECK = textwrap.dedent("""
    import sys
    from common.errors import one_line
    from common.distributed import DistributedError, check_shared_folder, end_group, init_gloo_group
    started = init_gloo_group(timeout_minutes=1)
    try:
        for folder, resume in zip(sys.argv[1::2], sys.argv[2::2]):
            try:
                check_shared_folder(folder, "output_dir", agree_on=resume)
                print("shared", flush=True)
            except DistributedError as err:
                print("refused:", one_line(err), flush=True)
    finally:
        end_group(started)
""")

CASES = ["shared", "node_local", "stale_resume"]


@pytest.fixture(scope="module")
def shared_check_lines(tmp_path_factory):
    """What each rank printed for each case: one launch of two processes checks all three cases
    (the checks are cheap, starting the processes is not)."""
    root = tmp_path_factory.mktemp("ranks")
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        args = []
        for case in CASES:
            # Node-local disks are simulated by giving each rank its own folder under the same name.
            folder = root / case / (f"node{rank}" if case == "node_local" else "shared") / "run"
            folder.mkdir(parents=True, exist_ok=True)
            args += [str(folder), "step_1" if case == "stale_resume" and rank == 1 else "step_2"]
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-c", SHARED_CHECK, *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    per_rank = [out.strip().splitlines() for out, _ in results]
    assert all(len(lines) == len(CASES) for lines in per_rank), per_rank
    return root, {case: [lines[i] for lines in per_rank] for i, case in enumerate(CASES)}


@pytest.mark.parametrize("case", CASES)
def test_ranks_must_share_the_output_folder(shared_check_lines, case):
    root, lines = shared_check_lines
    lines = lines[case]
    if case == "shared":
        assert lines == ["shared", "shared"]
        assert not [p for p in (root / case / "shared" / "run").iterdir()]  # the probe file is cleaned up
    elif case == "node_local":
        for line in lines:
            assert line.startswith("refused: output_dir ") and "not one shared folder: rank(s) 1 (" in line
    else:
        for line in lines:
            assert line.startswith("refused: ranks disagree about output_dir") and "step_1" in line
