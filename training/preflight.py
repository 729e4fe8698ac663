"""Every recipe check in one place, run before anything heavy (no model, no accelerator yet).

:func:`check_recipe` is the one validation function of ``train.py``: schema keys and values
(already checked by :func:`training.config.load_config`), the CSV files and feature folders,
every feature file the CSVs name, the metric names and which of them can run here, and the
frame limit against the model's positions. Each problem raises a :class:`ConfigError` whose
message is one line naming the key and the fix. What the run should hear about but may go on
with (metrics skipped here, clips over the frame limit, one-frame clips) comes back as warnings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig
from tqdm.auto import tqdm

from data.extraction.audio import ENCODEC_FRAME_RATE
from data.extraction.encoders import codec_class
from data.training.dataset import CaptionDataset
from common.constants import MAX_FRAMES, frame_limit
from data.extraction.store import StoreError
from scoring import normalize_metrics, usable_metrics
from scoring.java import MetricsUnavailable
from common.device import launcher_rank
from training.checkpoints import CheckpointManager
from training.config import ConfigError, looks_like_local_path
from training.sampler import check_global_batch

logger = logging.getLogger(__name__)


@dataclass
class RecipePlan:
    """What the checks found out, for the run to use.

    Args:
        metrics: the requested metrics that can run here.
        select_metric: the metric that picks ``best/`` (the recipe's, or CIDEr-D when that
            one cannot run here).
        skipped_metrics: requested metrics that cannot run here.
        train_captions: the training captions (for a scratch tokenizer).
        train_frames: frames per training clip when the checks read them (fresh runs), so
            that length grouping does not read every header again.
        warnings: one-line messages for the run's log (skipped metrics, the selection
            metric's fallback, clips over the frame limit, one-frame clips).
    """

    metrics: tuple[str, ...]
    select_metric: str
    skipped_metrics: tuple[str, ...]
    train_captions: list[str]
    warnings: list[str] = field(default_factory=list)
    train_frames: dict[str, int] = field(default_factory=dict)

    def log(self, log: logging.Logger) -> None:
        """Logs :attr:`warnings` (call once the run's log file is open)."""
        for message in self.warnings:
            log.warning("%s", message)


def model_positions(cfg: DictConfig) -> int:
    """``max_position_embeddings`` of the model the recipe builds, read from a config file only."""
    if cfg.model.init == "scratch":
        return int(cfg.model.max_position_embeddings)
    from modeling import EnClapBartConfig  # reads BART's and EnCLAP's config.json alike

    try:
        return int(EnClapBartConfig.from_pretrained(str(cfg.model.name_or_path)).max_position_embeddings)
    except (OSError, TypeError, ValueError) as error:
        raise ConfigError(f"model.name_or_path: cannot read the config of {cfg.model.name_or_path!r} "
                          f"({type(error).__name__}); download it or set a local folder") from None


def frame_counts(dataset: CaptionDataset) -> dict[str, int]:
    """EnCodec frames of every distinct clip of ``dataset``, from the ``.npy`` headers or the store's index."""
    paths = list(dict.fromkeys(dataset.file_paths))
    counts = {}
    try:
        for file_path in tqdm(paths, desc="reading clip lengths", unit="clip", disable=len(paths) < 2000):
            counts[file_path] = int(dataset.store.frames(file_path))
    except (StoreError, OSError, ValueError, IndexError) as error:
        raise ConfigError(f"cannot read the length of {file_path} under {dataset.encodec_root}: {error} "
                          "(re-run data/preprocess.py)") from None
    return counts


def limit_warnings(frames: dict[str, dict[str, int]], max_frames: int, source: str, shown: int = 5,
                   frame_rate: float = ENCODEC_FRAME_RATE) -> list[str]:
    """Messages about clips over the frame limit and clips of a single frame, once per run.

    Args:
        frames: ``{split name: {file_path: frames}}``.
        max_frames: the run's limit in frames.
        source: where the limit comes from, for the message (a recipe key).
        shown: clips named per message.
        frame_rate: the codec's frames per second (``Codec.frame_rate``).

    Returns:
        One line per kind of problem found (possibly none).
    """
    def named(paths: list[str]) -> str:
        return ", ".join(paths[:shown]) + (f", ... ({len(paths) - shown} more)" if len(paths) > shown else "")

    seconds = max_frames / frame_rate
    messages = []
    longer = {split: [p for p, t in counts.items() if t > max_frames] for split, counts in frames.items()}
    if any(longer.values()):
        counted = "; ".join(f"{len(paths)} of {len(frames[split])} {split} clips" for split, paths in longer.items())
        everyone = [p for paths in longer.values() for p in dict.fromkeys(paths)]
        messages.append(f"{counted} are longer than the limit of {max_frames} frames ({seconds:.1f} s, {source}): "
                        f"training reads a random {seconds:.1f} s window of each, validation its first "
                        f"{seconds:.1f} s: {named(list(dict.fromkeys(everyone)))}")
    single = list(dict.fromkeys(p for counts in frames.values() for p, t in counts.items() if t <= 1))
    if single:
        messages.append(f"{len(single)} clip(s) have a single EnCodec frame ({1000 / frame_rate:.0f} ms or "
                        f"less of sound), too short to describe: {named(single)}")
    return messages


def check_model_path(cfg: DictConfig) -> None:
    """A ``model.name_or_path`` that must be local (not a Hub id) has to exist.

    Raises:
        ConfigError: naming the absolute path tried.
    """
    for key in ("name_or_path", "tokenizer"):
        value = cfg.model[key]
        if cfg.model.init != "scratch" and value and looks_like_local_path(str(value)) \
                and not os.path.exists(str(value)):
            raise ConfigError(f"model.{key} not found: {os.path.abspath(str(value))} (set model.{key}=PATH to a "
                              "checkpoint folder, or a Hugging Face Hub id)")


# Below this many examples per GPU and forward pass, a GPU mostly waits (kernel launches, the
# all-reduce); the paper's recipes keep 16 or more per GPU.
MIN_GPU_BATCH = 8


def check_launch(cfg: DictConfig, resume_dir: Optional[str], on_gpu: Optional[bool] = None) -> list[str]:
    """The checks of the recipe against the launch layout, from the launcher's environment only.

    Runs before the process group, the model or any data: a layout that cannot work stops every
    rank at once in one line, instead of after each has loaded BART and read its data.

    Args:
        cfg: the recipe.
        resume_dir: the checkpoint the run would resume from (None for a fresh run).
        on_gpu: whether the processes train on GPUs (default: CUDA is visible and Accelerate
            is not told to use the CPU).

    Returns:
        Warnings for the run's log (a per-GPU batch below :data:`MIN_GPU_BATCH`).

    Raises:
        ConfigError: a global batch that does not split over the processes; a resume
            checkpoint that is unreadable or was trained with another global batch or
            accumulation (its data position would mean other examples).
    """
    processes = launcher_rank()[1]
    per_process = check_global_batch(cfg.optim.batch_size, processes)
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
    warnings = []
    if on_gpu and processes > 1 and per_process < MIN_GPU_BATCH:
        warnings.append(f"optim.batch_size={cfg.optim.batch_size} over {processes} GPUs leaves {per_process} "
                        f"examples per GPU, too few to keep a GPU busy: raise optim.batch_size to "
                        f"{MIN_GPU_BATCH * processes} or more (with a matching optim.lr) or run on at most "
                        f"{max(1, cfg.optim.batch_size // MIN_GPU_BATCH)} GPU(s)")
    if resume_dir is not None:
        try:
            state = CheckpointManager.read_state(resume_dir)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the resume checkpoint {resume_dir} ({type(error).__name__}); delete "
                              "that folder to resume from the one before") from None
        for key, name in (("batch_size", "optim.batch_size"),
                          ("gradient_accumulation_steps", "optim.gradient_accumulation_steps")):
            saved, now = state.get("layout", {}).get(key), cfg.optim[key]
            if saved is not None and saved != now:
                raise ConfigError(f"{name}={now}, but the run in {cfg.output_dir} was trained with {saved} (its data "
                                  f"position counts those batches): resume with {name}={saved}, or start a new "
                                  "output_dir")
    return warnings


def check_recipe(cfg: DictConfig, check_model: bool = True) -> RecipePlan:
    """Run every check of the recipe ``cfg``; returns what the run needs to know.

    Args:
        cfg: a recipe from :func:`training.config.load_config` (paths already absolute).
        check_model: also read the model's config for the frame limit (off when resuming,
            where the checkpoint's own config decides).
    """
    try:
        wanted = normalize_metrics(list(cfg.eval.metrics))
        select_metric = normalize_metrics([cfg.eval.select_metric])[0]
    except ValueError as error:
        raise ConfigError(f"eval.metrics / eval.select_metric: {error}") from None
    if select_metric not in wanted:  # selecting by a metric means computing it at each validation
        wanted += (select_metric,)
    for key in ("train_csv", "val_csv"):
        if not os.path.isfile(cfg.data[key]):
            raise ConfigError(f"data.{key} file not found: {os.path.abspath(cfg.data[key])} (set data.{key}=PATH)")
    for key in ("encodec_base_path", "clap_base_path"):
        if not os.path.isdir(cfg.data[key]):
            raise ConfigError(f"data.{key} folder not found: {os.path.abspath(cfg.data[key])} (set data.{key}=PATH)")
    if check_model:
        check_model_path(cfg)
    roots = (cfg.data.encodec_base_path, cfg.data.clap_base_path)
    layout = cfg.data.feature_layout  # per-file trees or packed stores (docs/data.md)
    train_probe = CaptionDataset(cfg.data.train_csv, *roots, train=True, layout=layout)  # every feature must exist
    val_probe = CaptionDataset(cfg.data.val_csv, *roots, train=False, layout=layout)
    warnings: list[str] = []
    limit: Optional[int] = cfg.data.max_frames
    positions = model_positions(cfg) if check_model and (limit is not None or cfg.model.init == "scratch") else None
    if positions is not None and limit is not None and limit > frame_limit(positions):
        raise ConfigError(f"data.max_frames={limit} exceeds what the model's {positions} positions "
                          f"allow ({frame_limit(positions)}); lower data.max_frames")
    if limit is None and positions is not None:
        limit, source = frame_limit(positions), "model.max_position_embeddings - 3"
    elif limit is None:
        limit, source = MAX_FRAMES, "BART's 1024 positions - 3"  # bart-base/large and the released models
    else:
        source = "data.max_frames"
    frames: dict[str, dict[str, int]] = {}
    if check_model:  # a resumed run has said it already
        frames = {"training": frame_counts(train_probe), "validation": frame_counts(val_probe)}
        warnings += limit_warnings(frames, limit, source, frame_rate=codec_class(cfg.data.codec).frame_rate)

    try:
        metrics, skipped_warning = usable_metrics(wanted)
    except MetricsUnavailable as error:
        raise ConfigError(f"eval.metrics: {error}") from None
    skipped = tuple(m for m in wanted if m not in metrics)
    if skipped_warning:
        warnings.insert(0, f"eval.metrics: {skipped_warning}")
    if select_metric not in metrics:
        fallback = "cider_d" if "cider_d" in metrics else metrics[0]
        warnings.insert(1 if skipped_warning else 0, f"selection metric {select_metric} is unavailable here; "
                        f"selecting checkpoints by {fallback} instead")
        select_metric = fallback
    return RecipePlan(metrics=metrics, select_metric=select_metric, skipped_metrics=skipped,
                      train_captions=list(train_probe.captions), warnings=warnings,
                      train_frames=frames.get("training", {}))
