"""Generic helpers for work spread over several processes and machines, for any package: a
plain gloo group for tools that are not Accelerate training (collection captioning), broadcast
and gather of small Python values, the check that every rank sees the same folder, and the
``--shard i/N`` share of a file list (preprocessing). docs/cluster.md has the user's side.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from typing import Any, List, Optional, Sequence, Tuple

from common.device import launcher_rank
from common.errors import UsageError, UserError
from common.io import atomic_write_text


class DistributedError(UserError):
    """A multi-process or multi-node set-up that cannot work as given; one line with the fix."""


def active_group():
    """``torch.distributed`` when a group of more than one process is running, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def broadcast(value: Any) -> Any:
    """``value`` of rank 0 on every rank (identity without a process group)."""
    dist = active_group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list:
    """Every rank's ``value``, in rank order (``[value]`` without a process group)."""
    dist = active_group()
    if dist is None:
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def check_shared_folder(folder: str, what: str, agree_on: Any = None) -> None:
    """Refuses to go on unless every rank sees the same ``folder`` (and the same ``agree_on``).

    Multi-node runs share files through this folder (the scratch tokenizer written by the main
    process, checkpoints found at resume, the parts of a caption collection). On node-local disks
    each machine would see its own folder and go wrong silently; here rank 0 writes a token file
    that every rank must read back. Call it on every rank, after rank 0 made ``folder``.

    Args:
        folder: the folder the ranks share.
        what: how the user calls it (``output_dir``, ``--output``), for the message.
        agree_on: a value every rank worked out from the folder on its own (e.g. the
            checkpoint to resume from), which must be the same everywhere.

    Raises:
        DistributedError: on every rank, naming the ranks and hosts that see another folder.
    """
    dist = active_group()
    if dist is None:
        return
    token = broadcast(uuid.uuid4().hex)
    probe = os.path.join(folder, f".shared-check-{token}")
    if dist.get_rank() == 0:
        atomic_write_text(probe, token)
    dist.barrier()
    try:
        with open(probe, encoding="utf-8") as handle:
            seen = handle.read() == token
    except OSError:
        seen = False
    views = all_gather((socket.gethostname(), seen, agree_on))
    if dist.get_rank() == 0:
        os.unlink(probe)
    blind = [f"{rank} ({host})" for rank, (host, ok, _) in enumerate(views) if not ok]
    if blind:
        raise DistributedError(f"{what} {os.path.abspath(folder)} is not one shared folder: rank(s) {', '.join(blind)} "
                               f"do not see a file rank 0 ({views[0][0]}) wrote there; put it on a file system every "
                               "machine mounts (docs/cluster.md)")
    differ = [f"{rank} ({host}): {value}" for rank, (host, _, value) in enumerate(views) if value != views[0][2]]
    if differ:
        raise DistributedError(f"ranks disagree about {what} {os.path.abspath(folder)}: rank 0 found {views[0][2]}, "
                               f"rank {'; '.join(differ)}; a machine sees a stale copy (docs/cluster.md)")


def init_gloo_group(timeout_minutes: float = 30.0) -> bool:
    """Joins the process group a launcher describes (``WORLD_SIZE`` > 1), over gloo.

    For tools that only need a few small collectives and no GPU communication (collection
    captioning). ``accelerate launch`` and ``torchrun`` export ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``.

    Returns:
        True when a group was started here (the caller ends it with :func:`end_group`).
    """
    import torch.distributed as dist

    if launcher_rank()[1] <= 1 or dist.is_initialized():
        return False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start "
                               "the processes with accelerate launch or torchrun (docs/cluster.md)")
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def end_group(started: bool) -> None:
    """Leaves a group started by :func:`init_gloo_group`."""
    import torch.distributed as dist

    if started and dist.is_initialized():
        dist.destroy_process_group()


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """Parses ``--shard i/N``; without it, takes RANK/WORLD_SIZE from ``accelerate launch``.

    Args:
        text: ``"i/N"`` with 0 <= i < N, or None.

    Returns:
        ``(index, count)``; ``(0, 1)`` when not sharded.
    """
    if text is None:
        index, count = launcher_rank()
    else:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise UsageError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise UsageError(f"--shard {index}/{count}: need 0 <= i < N")
    return index, count


def select_shard(items: Sequence[str], index: int, count: int) -> List[str]:
    """Every ``count``-th item starting at ``index``: shards are disjoint and cover all items."""
    return list(items[index::count])
