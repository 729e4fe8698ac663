"""The one device resolver: names, CUDA where there is none, and LOCAL_RANK under a launcher."""

from __future__ import annotations

import pytest
import torch

from common.device import DeviceError, resolve_device
from common.errors import UserError


def test_auto_and_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_name_is_a_one_line_user_error():
    with pytest.raises(UserError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("cuda", "cuda:0", "auto"):
        if name == "auto":
            assert resolve_device(name).type == "cpu"  # auto never asks for what is not there
            continue
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device(name)


def test_local_rank_picks_this_process_gpu(monkeypatch):
    # What a launcher does on a machine with two GPUs, with torch's CUDA queries stood in.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(DeviceError, match="LOCAL_RANK=3 asks for GPU 3, but only 2"):
        resolve_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda", 0)
