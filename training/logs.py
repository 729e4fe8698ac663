"""Logging of a training run: the console and ``<output_dir>/train.log`` on the main process."""

from __future__ import annotations

import logging
import os
import sys
import time

import torch
from omegaconf import DictConfig, OmegaConf

from common.io import atomic_write_text


def setup_logging(logger: logging.Logger, output_dir: str, is_main: bool) -> None:
    """Log to stderr and ``<output_dir>/train.log`` on the main process; warnings elsewhere.

    The packages' own loggers (a dataset's crop notice, a checkpoint warning) go to the same
    places.
    """
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    for name in ("data", "modeling", "training", "scoring"):
        lib = logging.getLogger(name)
        lib.handlers = list(logger.handlers)
        lib.setLevel(logger.level)
        lib.propagate = False


def open_run_folder(cfg: DictConfig, accelerator, logger: logging.Logger) -> None:
    """Create the run folder, start logging, and save the merged recipe as ``config.yaml``."""
    if accelerator.is_main_process:
        os.makedirs(cfg.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    setup_logging(logger, cfg.output_dir, accelerator.is_main_process)
    config_yaml = OmegaConf.to_yaml(cfg)
    if accelerator.is_main_process:
        saved = os.path.join(cfg.output_dir, "config.yaml")
        if os.path.isfile(saved) and open(saved, encoding="utf-8").read() != config_yaml:
            logger.warning("the recipe differs from the one saved in %s; it is replaced", saved)
        atomic_write_text(saved, config_yaml)


class LossLog:
    """Running sums of the losses between two log lines, averaged over processes when logged.

    Args:
        accelerator: for the device and the cross-process mean.
        batch_size: the global batch (examples per micro-batch, all processes together).
    """

    def __init__(self, accelerator, batch_size: int):
        self.accelerator = accelerator
        self.batch_size = batch_size
        self.sums = torch.zeros(4, device=accelerator.device)  # loss, lm_loss, mcm_loss, micro-batches
        self.start, self.examples = time.perf_counter(), 0

    def add(self, out) -> None:
        """Add one micro-batch's model output (no host synchronisation)."""
        zero = torch.zeros((), device=self.accelerator.device)
        mcm = out.mcm_loss.detach().float() if out.mcm_loss is not None else zero
        self.sums += torch.stack([out.loss.detach().float(), out.lm_loss.detach().float(), mcm, zero + 1])
        self.examples += self.batch_size

    def record(self, lr: float, epoch: int) -> dict[str, float]:
        """The averages since the last record (a collective: every process calls it), then reset."""
        total = self.accelerator.reduce(self.sums, reduction="mean")
        n = total[3].item()
        record = {"train/loss": total[0].item() / n, "train/caption_loss": total[1].item() / n,
                  "train/mcm_loss": total[2].item() / n, "train/lr": lr,
                  "train/examples_per_s": self.examples / (time.perf_counter() - self.start), "train/epoch": epoch}
        self.sums.zero_()
        self.start, self.examples = time.perf_counter(), 0
        return record
