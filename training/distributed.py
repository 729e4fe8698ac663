"""Training runs past one process: the Accelerate set-up of a training run (data parallelism,
mixed precision, trackers, the process-group timeout), the start-of-run cluster check, and the
ranks' heartbeats (a dead rank named in one line; the main process's validation scores waited
for without a collective timeout). The generic helpers (broadcast, gather, the shared-folder
check, a plain gloo group) are :mod:`common.distributed`. docs/cluster.md has the user's side.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import threading
import time
from typing import Any, Optional

from omegaconf import DictConfig

from common.device import launcher_rank
from common.distributed import active_group as _dist
from common.distributed import DistributedError, broadcast, check_shared_folder

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

    # How long a collective may wait: NCCL finds a dead peer only by this timeout. The other ranks
    # do not wait in a collective while the main process scores validation (share_from_main), so
    # it need not cover SPICE on a full split.
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
    resume from the same checkpoint (else one line and stop), every rank starts its heartbeat
    (:func:`start_heartbeat`), and the log says how long a rank may wait in a collective.

    Call on every rank after the main process made ``output_dir`` and before anything is shared
    through it (the scratch tokenizer, checkpoints).
    """
    if _dist() is None:
        return
    check_shared_folder(cfg.output_dir, "output_dir", agree_on=resume_dir)
    start_heartbeat()
    timeout = process_group_timeout()
    minutes = timeout.total_seconds() / 60 if timeout is not None else cfg.distributed.timeout_minutes
    machines = launcher_rank()[1] // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    log.info("%d processes on %d machine(s) share %s; process-group timeout %g min (distributed.timeout_minutes): "
             "a collective waits up to that long for a rank that hangs; the other ranks wait for validation "
             "scoring as long as the main process is alive", _dist().get_world_size(), machines,
             os.path.abspath(cfg.output_dir), minutes)


# --------------------------------------------------------------------------------------------
# Liveness: a rank that died ends the others in one line naming it
# --------------------------------------------------------------------------------------------

HEARTBEAT_S = 5.0  # a rank counts as dead after MISSED_BEATS beats without a heartbeat
MISSED_BEATS = 3
_KEY = "enclap/"
_heart: dict[str, Any] = {}


class RankLost(DistributedError):
    """Another rank died (its process, or its machine) or cannot be reached."""


def _store():
    return _dist().distributed_c10d._get_default_store()


def start_heartbeat(interval: float = HEARTBEAT_S) -> bool:
    """Starts this rank's heartbeat: a daemon thread that counts up ``enclap/beat/<rank>`` in the
    process group's store every ``interval`` seconds, so other ranks can tell a rank that is
    busy (scoring, saving) from one that died. Returns whether it started one (no group: no)."""
    dist = _dist()
    if dist is None or _heart.get("thread") is not None:
        return False
    store, key = _store(), f"{_KEY}beat/{dist.get_rank()}"
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                store.add(key, 1)
            except Exception:  # the store went away (its host died, or the run ended): nothing to say here
                return
            stop.wait(interval)

    store.add(key, 1)
    thread = threading.Thread(target=beat, name="enclap-heartbeat", daemon=True)
    thread.start()
    _heart.update(thread=thread, stop=stop, interval=interval, world=dist.get_world_size(), store=store)
    return True


def stop_heartbeat() -> None:
    """Stops this rank's heartbeat (before the process group ends)."""
    if _heart.get("stop") is not None:
        _heart["stop"].set()
        _heart["thread"].join()
    _heart.clear()


def _beats(ranks) -> dict[int, int]:
    return {rank: int(_heart["store"].add(f"{_KEY}beat/{rank}", 0)) for rank in ranks}


def _lost(ranks: list[int]) -> RankLost:
    named = ", ".join(f"rank {r}" + (" (the main process)" if r == 0 else "") for r in ranks)
    return RankLost(f"{named} stopped: no heartbeat for {MISSED_BEATS * _heart['interval']:g} s (its process died "
                    "or its machine is unreachable; its own log or the launcher's says why); this rank stops too. "
                    "Rerun the same command (a requeue) to resume from the last checkpoint (docs/cluster.md)")


def lost_ranks() -> Optional[RankLost]:
    """After a failed collective: which other ranks stopped beating (waits :data:`MISSED_BEATS`
    beats to be sure), as an error to report; None when every rank is alive or there is no
    heartbeat here (the failure has another cause)."""
    if _heart.get("store") is None:
        return None
    others = [r for r in range(_heart["world"]) if r != _dist_rank()]
    try:
        before = _beats(others)
        time.sleep(MISSED_BEATS * _heart["interval"])
        after = _beats(others)
    except Exception:  # the store lives with rank 0 (or its machine's launcher): it is gone
        return _lost([0])
    dead = [r for r in others if after[r] == before[r]]
    return _lost(dead) if dead else None


def _dist_rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def share_from_main(value: Any) -> Any:
    """``value`` of the main process on every rank, waiting for it as long as the main process
    is alive, however long that is (e.g. SPICE scoring), instead of in a collective with a timeout.

    The main process puts ``value`` in the process group's store; the others poll for it and
    check the main process's heartbeat. Call on every rank, in the same order; without a process
    group (or without :func:`start_heartbeat`) it is a plain broadcast.

    Raises:
        RankLost: on a waiting rank, when the main process stops beating.
    """
    if _heart.get("store") is None:
        return broadcast(value)
    store = _heart["store"]
    _heart["shared"] = number = _heart.get("shared", 0) + 1
    key = f"{_KEY}shared/{number}"
    if _dist_rank() == 0:
        store.set(key, pickle.dumps(value))
        return value
    interval = _heart["interval"]
    try:
        last, last_change = _beats([0])[0], time.monotonic()
        while not store.check([key]):
            time.sleep(min(1.0, interval / 2))
            beat = _beats([0])[0]
            if beat != last:
                last, last_change = beat, time.monotonic()
            elif time.monotonic() - last_change > MISSED_BEATS * interval:
                raise _lost([0])
        return pickle.loads(store.get(key))
    except RankLost:
        raise
    except Exception:  # the store (hosted with rank 0) is unreachable
        raise _lost([0]) from None

