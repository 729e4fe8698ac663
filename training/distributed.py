"""Runs past one process: the Accelerate set-up of a training run (data parallelism, mixed
precision, trackers, the process-group timeout), the check that every rank sees the same
folder, and a plain gloo group for tools that are not Accelerate training (collection
captioning). docs/cluster.md has the user's side.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import uuid
from typing import Any, Optional

from omegaconf import DictConfig

from common.device import launcher_rank
from common.errors import UserError
from common.io import atomic_write_text

logger = logging.getLogger(__name__)


class DistributedError(UserError):
    """A multi-process or multi-node set-up that cannot work as given; one line with the fix."""


def make_accelerator(cfg: DictConfig):
    """The ``Accelerator`` of the recipe ``cfg``.

    ``split_batches``: the configured batch is global, and a prepared scheduler steps once per
    optimizer step whatever the number of processes. DDP runs without
    ``find_unused_parameters`` (which costs a graph traversal per step): every trainable
    parameter gets a gradient every step, the MCM heads of codebooks without a masked row an
    exact zero (``masked_codec_loss``), the heads none when MCM is off because they are frozen
    then; :func:`allow_unused_parameters` covers a model with layer drop. On CUDA, float32
    matmuls may use TF32 (:func:`allow_tf32_matmuls`).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs

    # Validation is scored on the main process while the other ranks wait in a collective; with
    # NCCL's default of 600 s, SPICE on a full split kills the run. The recipe sets the wait.
    timeout = datetime.timedelta(minutes=cfg.distributed.timeout_minutes)
    accelerator = Accelerator(
        mixed_precision=cfg.optim.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False),
                         InitProcessGroupKwargs(timeout=timeout)],
        log_with=list(cfg.log.trackers) or None,
        project_dir=cfg.output_dir,
    )
    allow_tf32_matmuls(accelerator.device)
    return accelerator


def allow_tf32_matmuls(device) -> bool:
    """Lets CUDA float32 matmuls of training use TF32 tensor cores (returns whether it did).

    Training only: with bf16 autocast most matmuls are bf16 anyway, and what stays float32
    (losses, fp32 runs) gains without a visible change in training. Feature extraction keeps
    PyTorch's defaults off, so that EnCodec codes do not depend on the device.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    return True


def allow_unused_parameters(accelerator, model) -> bool:
    """Turns DDP's ``find_unused_parameters`` on for a model whose layers may be skipped (layer
    drop); call before ``accelerator.prepare``. Returns whether it did."""
    config = model.config
    if not (getattr(config, "encoder_layerdrop", 0) or getattr(config, "decoder_layerdrop", 0)):
        return False
    if accelerator.ddp_handler is not None:
        accelerator.ddp_handler.find_unused_parameters = True
    else:
        from accelerate.utils import DistributedDataParallelKwargs

        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    return True


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def process_group_timeout() -> Optional[datetime.timedelta]:
    """The timeout of the default process group as it was set up (None without one)."""
    import torch

    dist = _dist()
    if dist is None:
        return None
    group = dist.distributed_c10d._get_default_group()
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    try:
        return group._get_backend(device).options._timeout
    except (AttributeError, RuntimeError):  # another torch: report what was asked for instead
        return None


def broadcast(value: Any) -> Any:
    """``value`` of rank 0 on every rank (identity without a process group)."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list:
    """Every rank's ``value``, in rank order (``[value]`` without a process group)."""
    dist = _dist()
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
    dist = _dist()
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


def check_cluster(cfg: DictConfig, resume_dir: Optional[str], log: logging.Logger) -> None:
    """The start of a run on several processes: every rank must see the same ``output_dir`` and
    resume from the same checkpoint (else one line and stop), and the log says how long a rank
    may wait in a collective.

    Call on every rank after the main process made ``output_dir`` and before anything is shared
    through it (the scratch tokenizer, checkpoints).
    """
    if _dist() is None:
        return
    check_shared_folder(cfg.output_dir, "output_dir", agree_on=resume_dir)
    timeout = process_group_timeout()
    minutes = timeout.total_seconds() / 60 if timeout is not None else cfg.distributed.timeout_minutes
    machines = launcher_rank()[1] // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    log.info("%d processes on %d machine(s) share %s; process-group timeout %g min (distributed.timeout_minutes): "
             "the other ranks wait up to that long, e.g. while the main process scores validation",
             _dist().get_world_size(), machines, os.path.abspath(cfg.output_dir), minutes)


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
