"""Checkpoint folders: atomic ``step_N/`` directories, resume discovery, best-K rotation and the
``best/`` model folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from typing import Any, Optional

from common.io import atomic_write_text

# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

_CKPT_NAME = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


class CheckpointManager:
    """Checkpoint folders under ``<output_dir>/checkpoints`` plus ``<output_dir>/best``.

    A checkpoint ``step_<N>/`` holds ``state/`` (Accelerate state: weights, optimizer,
    scheduler, RNG), ``model/`` (a ``save_pretrained`` folder with tokenizer and generation
    config, ready for ``evaluate.py --ckpt``) and ``trainer_state.json``. It is written as
    ``.tmp-step_<N>/`` and renamed when complete, so :meth:`latest` never returns a
    half-written one. :meth:`rotate` keeps the newest (for resume) and the best ``keep_best``.

    Args:
        output_dir: the run folder.
        keep_best: number of best checkpoints to keep.
    """

    def __init__(self, output_dir: str, keep_best: int = 3):
        self.output_dir = output_dir
        self.root = os.path.join(output_dir, "checkpoints")
        self.best_dir = os.path.join(output_dir, "best")
        self.keep_best = keep_best

    def path(self, step: int) -> str:
        """Final folder of the checkpoint at optimizer step ``step``."""
        return os.path.join(self.root, f"step_{step:08d}")

    def tmp_path(self, step: int, create: bool = True) -> str:
        """Folder a checkpoint is written into before :meth:`commit`.

        Args:
            step: optimizer step of the checkpoint.
            create: (re)create it empty; False only returns the name (non-main processes).
        """
        tmp = os.path.join(self.root, f".tmp-step_{step:08d}")
        if create:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        return tmp

    def commit(self, tmp: str, step: int, trainer_state: dict) -> str:
        """Writes ``trainer_state.json`` last and renames ``tmp`` to its final name."""
        atomic_write_text(os.path.join(tmp, TRAINER_STATE), json.dumps(trainer_state, indent=2))
        final = self.path(step)
        if os.path.exists(final):  # re-validation of the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def complete(self) -> list[tuple[int, str]]:
        """``(step, folder)`` of every complete checkpoint, oldest first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _CKPT_NAME.match(name)
            folder = os.path.join(self.root, name)
            if match and os.path.isfile(os.path.join(folder, TRAINER_STATE)):
                found.append((int(match.group(1)), folder))
        return sorted(found)

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint folder, or None."""
        found = self.complete()
        return found[-1][1] if found else None

    @staticmethod
    def read_state(folder: str) -> dict:
        """The ``trainer_state.json`` of a checkpoint."""
        with open(os.path.join(folder, TRAINER_STATE), encoding="utf-8") as handle:
            return json.load(handle)

    def rotate(self, metric: str) -> list[str]:
        """Deletes checkpoints that are neither the newest nor among the best ``keep_best``.

        Args:
            metric: key of ``trainer_state["scores"]`` to rank by (higher is better; ties
                keep the earlier checkpoint). A pass that cannot be selected
                (:func:`selection_score`: no score, or all captions empty) ranks last.

        Returns:
            The deleted folders.
        """
        found = self.complete()
        if not found:
            return []
        scored = []
        for step, folder in found:
            value = selection_score(self.read_state(folder), metric)
            scored.append((-(value if value is not None else -math.inf), step, folder))
        keep = {folder for _, _, folder in sorted(scored)[: self.keep_best]} | {found[-1][1]}
        removed = []
        for _, folder in found:
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        # Leftovers of a killed run (never complete) are garbage.
        for name in os.listdir(self.root):
            if name.startswith(".tmp-step_"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        return removed

    def update_best(self, model_dir: str) -> None:
        """Replaces ``best/`` by a copy of ``model_dir`` (copy to a temp folder, then swap)."""
        tmp = self.best_dir + ".tmp"
        old = self.best_dir + ".old"
        for leftover in (tmp, old):
            if os.path.exists(leftover):
                shutil.rmtree(leftover)
        shutil.copytree(model_dir, tmp)
        if os.path.exists(self.best_dir):
            os.replace(self.best_dir, old)
        os.replace(tmp, self.best_dir)
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(manager: CheckpointManager, accelerator, model, tokenizer, step: int,
                    trainer_state: dict[str, Any], is_best: bool) -> None:
    """Write the checkpoint of ``step`` on all processes, atomically, then rotate old ones.

    Every process writes its part of the Accelerate state into the temporary folder; the main
    process adds the ``model/`` folder (weights, config, tokenizer), renames the folder into
    place, refreshes ``best/`` when ``is_best`` and removes checkpoints no longer kept.
    """
    if accelerator.is_main_process:
        manager.tmp_path(step)  # created empty by the main process only
    accelerator.wait_for_everyone()
    tmp = manager.tmp_path(step, create=False)
    accelerator.save_state(os.path.join(tmp, "state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model_dir = os.path.join(tmp, "model")
        accelerator.unwrap_model(model).save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        final = manager.commit(tmp, step, trainer_state)
        if is_best:
            manager.update_best(os.path.join(final, "model"))
        manager.rotate(trainer_state["select_metric"])
    accelerator.wait_for_everyone()


def selection_score(entry: dict, select_metric: str) -> Optional[float]:
    """The score a validation pass (a history entry or a checkpoint's trainer state) is selected by.

    None when it cannot be selected: no such score, or captions that were all empty
    (``"all_empty": true``: it scores ~0 and its model writes nothing).
    """
    if entry.get("all_empty", False):
        return None
    return entry.get("scores", {}).get(select_metric)


def best_entry(history: list[dict], select_metric: str) -> Optional[dict]:
    """The validation entry with the best :func:`selection_score` (the earliest among equals), or None."""
    scored = [h for h in history if selection_score(h, select_metric) is not None]
    return max(scored, key=lambda h: (h["scores"][select_metric], -h["step"])) if scored else None


def write_summary(manager: CheckpointManager, history: list[dict], select_metric: str, final_step: int) -> Optional[dict]:
    """Write ``<output_dir>/summary.json`` (best step, epoch and scores; the history); returns the best entry."""
    best = best_entry(history, select_metric)
    # Written even without a best pass, so a run that never captioned anything says so on disk.
    summary = {"best_step": best and best["step"], "best_epoch": best and best["epoch"],
               "select_metric": select_metric, "best_scores": best and best["scores"],
               "best_dir": manager.best_dir if best else None, "final_step": final_step, "history": history}
    atomic_write_text(os.path.join(manager.output_dir, "summary.json"), json.dumps(summary, indent=2))
    return best


def resume_position(manager: CheckpointManager, accelerator, resume_dir: Optional[str],
                    logger) -> tuple[int, int, int, list[dict]]:
    """Load the Accelerate state of ``resume_dir`` (weights, optimizer, schedule, RNG) when given.

    Returns:
        ``(global_step, epoch, batch_in_epoch, history)`` to continue from; zeros and an empty
        history for a fresh run.
    """
    if resume_dir is None:
        return 0, 0, 0, []
    accelerator.load_state(os.path.join(resume_dir, "state"))
    state = manager.read_state(resume_dir)
    logger.info("resuming from %s (step %d, epoch %d, batch %d)", resume_dir, state["global_step"], state["epoch"],
                state["batch_in_epoch"])
    saved = state.get("layout", {}).get("processes")
    if saved is not None and saved != accelerator.num_processes:
        # docs/cluster.md, "Requeue on another number of machines".
        logger.info("the checkpoint was written by %d process(es), this run has %d: the weights, optimizer, "
                    "schedule, global batch and data position carry over; each process draws its own dropout "
                    "masks, so these differ from an uninterrupted run", saved, accelerator.num_processes)
    return state["global_step"], state["epoch"], state["batch_in_epoch"], state["history"]
