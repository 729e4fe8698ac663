"""Where this process runs: the one device resolver (preprocessing, the captioning pipeline, the
benchmarks), its rank under a launcher, and the GPU of each share of a sharded job."""

from __future__ import annotations

import logging
import os

import torch

from common.errors import UserError

logger = logging.getLogger(__name__)


class DeviceError(UserError):
    """A device that does not exist here; the message says which ones do."""


def launcher_rank() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as ``accelerate launch`` and ``torchrun`` export them for every
    process; ``(0, 1)`` when started without a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def cpu_workers_per_process(cap: int = 8) -> int:
    """Worker processes this process may start without crowding the others on its machine.

    The CPU cores this process may use, shared among the ``LOCAL_WORLD_SIZE`` processes that
    ``accelerate launch`` / ``torchrun`` start per machine (one without a launcher), at most
    ``cap`` and at least 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (macOS, Windows)
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(cap, cores // local))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a :class:`torch.device`.

    ``"auto"`` (or empty) means CUDA when available, else the CPU. Under a launcher
    (``accelerate launch``, ``torchrun``, which set ``LOCAL_RANK``), ``"auto"`` and a bare
    ``"cuda"`` pick this process's GPU, ``cuda:LOCAL_RANK``, so that the ranks of one machine do
    not all land on GPU 0; ``"cuda:N"`` is taken as given.

    Raises:
        DeviceError: an unknown name, CUDA asked for where there is none, or a GPU index
            (explicit or from ``LOCAL_RANK``) beyond the visible devices.
    """
    text = str(device or "auto")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {text!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} requested but CUDA is not available here: use --device cpu")
    index = dev.index
    source = f"device {text!r}"
    if index is None:
        local_rank = os.environ.get("LOCAL_RANK")
        index, source = (int(local_rank), f"LOCAL_RANK={local_rank}") if local_rank is not None else (0, source)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{source} asks for GPU {index}, but only {count} GPU(s) are visible "
                          "(check CUDA_VISIBLE_DEVICES and the number of processes per machine)")
    return torch.device("cuda", index)


def pick_device(device: str, shard_index: int, shard_count: int, sharded_by_flag: bool):
    """The device of this share: ``common.device.resolve_device``, plus one GPU per ``--shard`` run.

    Under a launcher, ``auto`` and a bare ``cuda`` become ``cuda:LOCAL_RANK``. Separate
    ``--shard i/N`` runs have no ``LOCAL_RANK``; they take GPU ``i % (visible GPUs)`` so that N
    runs on one machine do not all land on GPU 0 (``cuda:K`` or ``CUDA_VISIBLE_DEVICES`` choose
    otherwise).
    """
    text = str(device or "auto")
    bare = text == "cuda" or (text == "auto" and torch.cuda.is_available())
    if bare and sharded_by_flag and shard_count > 1 and "LOCAL_RANK" not in os.environ and torch.cuda.is_available():
        text = f"cuda:{shard_index % torch.cuda.device_count()}"
        logger.info("--shard %d/%d runs on %s", shard_index, shard_count, text)
    return resolve_device(text)
