"""Decoding workers are sized per process: the processes a launcher starts on one machine share
its cores instead of each taking ``min(8, cores)``."""

from __future__ import annotations

import os

import pytest

from data import preprocess


@pytest.mark.parametrize("local_processes, expected", [(None, 8), ("1", 8), ("4", 4), ("8", 2), ("32", 1)])
def test_gpu_workers_are_this_process_share_of_the_cores(monkeypatch, local_processes, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert preprocess.default_workers("cuda") == expected
    assert preprocess.default_workers("cpu") == 0  # on CPU the encoders already use every core


def test_a_small_machine_still_gets_a_worker(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert preprocess.default_workers("cuda") == 1
