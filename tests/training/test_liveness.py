"""A rank that dies ends the others in one line naming it (training.distributed's heartbeat), and
the ranks wait for the main process's validation scores for longer than the collective timeout.

Three processes joined in a gloo group (as a launcher starts them: RANK, WORLD_SIZE, MASTER_*),
half-second heartbeats and a 3 s collective timeout. The test SIGKILLs rank 2 while the others
are in a collective, then rank 0 while rank 1 waits for its scores, each when it says "ready".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]

RANKS = textwrap.dedent("""
    import sys, time
    import torch.distributed as dist
    from common.errors import one_line
    from common.distributed import init_gloo_group
    from training import distributed as d
    init_gloo_group(timeout_minutes=0.05)  # collectives give up after 3 s
    d.start_heartbeat(interval=0.5)
    rank = dist.get_rank()

    def say(*words):
        print(*words, flush=True)

    # 1. "Scoring" on the main process for longer than the collective timeout: the others still get it.
    if rank == 0:
        time.sleep(4)
    say("shared", d.share_from_main({"cider_d": 0.5} if rank == 0 else None))
    # 2. Rank 2 is killed while the others are in a collective.
    if rank == 2:
        say("ready")
        time.sleep(600)
    time.sleep(0.5)
    try:
        dist.barrier()
        say("barrier passed")
    except RuntimeError:
        say("error:", one_line(d.lost_ranks() or RuntimeError("no rank lost")))
    # 3. Rank 0 is killed while rank 1 waits for its scores.
    if rank == 0:
        say("ready")
        time.sleep(600)
    try:
        d.share_from_main(None)
        say("scores came")
    except d.RankLost as error:
        say("error:", one_line(error))
""")


def test_a_dead_rank_is_named_by_the_others_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "3",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", RANKS], cwd=REPO, env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(3)]
    lines: dict[int, list[str]] = {rank: [] for rank in range(3)}

    def read_until(rank: int, done) -> None:
        while not done(lines[rank]):
            line = procs[rank].stdout.readline()
            assert line, (lines, procs[rank].stderr.read()[-2000:])
            lines[rank].append(line.strip())

    try:
        read_until(2, lambda seen: seen[-1:] == ["ready"])
        procs[2].send_signal(signal.SIGKILL)
        read_until(0, lambda seen: seen[-1:] == ["ready"])
        read_until(1, lambda seen: len(seen) == 2)  # rank 1 has named rank 2 before rank 0 dies too
        procs[0].send_signal(signal.SIGKILL)
        out, err = procs[1].communicate(timeout=120)  # a guard against a hang, not a measurement
        lines[1] += out.strip().splitlines()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    shared = "shared {'cider_d': 0.5}"
    assert lines[0][0] == lines[1][0] == lines[2][0] == shared, (lines, err[-2000:])
    # Step 2: both survivors name rank 2 after 3 missed half-second beats.
    for rank in (0, 1):
        assert lines[rank][1].startswith("error: rank 2 stopped: no heartbeat for 1.5 s (its process died"), lines
        assert "resume from the last checkpoint" in lines[rank][1]
    # Step 3: rank 1 names the main process.
    assert lines[1][2:] == [lines[1][2]] and lines[1][2].startswith("error: rank 0 (the main process) stopped: "), \
        (lines, err[-2000:])
