"""Training runs past one process: the Accelerate set-up of a training run (data parallelism,
mixed precision, trackers, the process-group timeout) and the start-of-run cluster check. The
generic helpers (broadcast, gather, the shared-folder check, a plain gloo group) are
:mod:`common.distributed`. docs/cluster.md has the user's side.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Optional

from omegaconf import DictConfig

from common.device import launcher_rank
from common.distributed import active_group as _dist
from common.distributed import check_shared_folder

logger = logging.getLogger(__name__)


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
