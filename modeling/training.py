"""Helpers of ``train.py``: the recipe schema, optimizer groups, LR schedules, batching and checkpoints.

Everything here is plain Python / PyTorch and takes plain arguments, so the training loop in
``train.py`` stays one readable function and each detail can be tested on its own:

* :func:`load_config` -- an OmegaConf recipe (YAML + ``key=value`` overrides) checked against
  the structured schema :class:`TrainConfig`; user mistakes raise :class:`ConfigError` with a
  one-line message.
* :func:`param_groups` -- AdamW groups with the no-decay rule of design §6.
* :func:`lr_factor` / :func:`build_scheduler` -- ``inverse_sqrt`` (warmup + time-scale),
  ``linear``, ``cosine`` and ``constant`` schedules.
* :class:`GlobalBatchSampler` -- deterministic per-epoch global batches split across
  processes (``split_batches`` semantics), optionally grouped by length, resumable mid-epoch.
* :class:`CheckpointManager` -- atomic checkpoint directories, resume discovery, best-K
  rotation and the ``best/`` model folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.io import atomic_write_text

# --------------------------------------------------------------------------------------------
# Config schema
# --------------------------------------------------------------------------------------------

#: Parameters whose names contain one of these get no weight decay (design §6). Note that
#: BART's ``layernorm_embedding.weight`` matches none of them and IS decayed, as in the original.
NO_DECAY_PATTERNS = ("bias", "LayerNorm.weight", "layer_norm.weight")

SCHEDULERS = ("inverse_sqrt", "linear", "cosine", "constant")
MODEL_INITS = ("bart", "enclap", "scratch")


class ConfigError(Exception):
    """A recipe or command-line mistake a user can fix; the message is one line."""


@dataclass
class ModelConfig:
    """How the model is initialised.

    Args:
        init: ``bart`` (``from_bart(name_or_path)``: a BART hub id or folder, new EnCLAP
            modules randomly initialised), ``enclap`` (``from_pretrained(name_or_path)``: an
            EnCLAP checkpoint, e.g. AudioCaps-trained for Clotho fine-tuning) or ``scratch``
            (random weights with the sizes below and a BPE tokenizer trained from the training
            captions -- the tiny CPU recipe).
        name_or_path: hub id or local folder for ``bart`` / ``enclap``.
        tokenizer: tokenizer hub id or folder; None means ``name_or_path`` (for ``enclap``
            checkpoints without tokenizer files, ``facebook/bart-base``).
        mcm_loss_scale: weight of the MCM loss in the total loss (0.7).
        label_smoothing: label smoothing of the caption loss (0.2).
        dropout: overrides the BART dropout when set.
        efficient_training: the model's training shortcuts (``set_efficient_training``); false
            runs stock BART layers, with the same results up to float rounding, slower and
            with more memory.
        vocab_size: ``scratch`` only: BPE vocabulary size to train.
        d_model, encoder_layers, decoder_layers, attention_heads, ffn_dim,
        max_position_embeddings: ``scratch`` only: model sizes.
    """

    init: str = "bart"
    name_or_path: str = "facebook/bart-base"
    tokenizer: Optional[str] = None
    mcm_loss_scale: float = 0.7
    label_smoothing: float = 0.2
    dropout: Optional[float] = None
    efficient_training: bool = True
    vocab_size: int = 1000
    d_model: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 2
    attention_heads: int = 4
    ffn_dim: int = 128
    max_position_embeddings: int = 1024


@dataclass
class DataConfig:
    """Split files, feature roots and loading.

    Args:
        train_csv: training CSV (``file_path, caption``).
        val_csv: validation CSV (``file_path, caption_1 .. caption_5``).
        encodec_base_path: root of the EnCodec code files (T, 16) int64.
        clap_base_path: root of the CLAP embedding files (512,) float32.
        max_frames: crop length; None = what the model's positions allow (1021 for BART).
        max_target_length: caption tokens kept, ``<s>`` and ``</s>`` included.
        encodec_masking_prob: MCM masking probability (0 turns MCM off).
        encodec_masking_span: MCM span length in frames.
        static_masks: one fixed crop and mask per example for the whole run (the original's).
        num_workers: DataLoader worker processes per training process.
        pin_memory: pinned host memory for faster copies to the GPU.
        group_by_length: batch examples of similar length together (less padding).
    """

    train_csv: str = "csv/audiocaps/train.csv"
    val_csv: str = "csv/audiocaps/valid.csv"
    encodec_base_path: str = "data/audiocaps/encodec"
    clap_base_path: str = "data/audiocaps/clap"
    max_frames: Optional[int] = None
    max_target_length: int = 64
    encodec_masking_prob: float = 0.15
    encodec_masking_span: int = 10
    static_masks: bool = False
    num_workers: int = 4
    pin_memory: bool = True
    group_by_length: bool = False


@dataclass
class OptimConfig:
    """Optimisation (design §6).

    Args:
        batch_size: GLOBAL batch of one forward pass, split across processes (``split_batches``).
        gradient_accumulation_steps: forward passes per optimizer step.
        epochs: training epochs.
        lr: peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and layer-norm weights).
        adam_beta1, adam_beta2, adam_epsilon: AdamW constants.
        max_grad_norm: gradient-norm clip (0 or None disables it).
        lr_scheduler: ``inverse_sqrt``, ``linear``, ``cosine`` or ``constant``.
        warmup_steps: linear warmup steps (optimizer steps).
        time_scale: ``inverse_sqrt`` time-scale tau; None = ``warmup_steps``.
        mixed_precision: ``no``, ``fp16``, ``bf16``; None = what ``accelerate config`` says.
    """

    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    epochs: int = 15
    lr: float = 6.5e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler: str = "inverse_sqrt"
    warmup_steps: int = 2000
    time_scale: Optional[int] = None
    mixed_precision: Optional[str] = None


@dataclass
class EvalConfig:
    """Validation and checkpointing.

    Args:
        every_steps: validate + checkpoint every N optimizer steps; None = every epoch.
        batch_size: validation clips per generate call on each process.
        metrics: corpus metrics (aac-metrics names); SPICE/SPIDEr are dropped with a warning
            when SPICE cannot run on this machine.
        select_metric: metric that picks the best checkpoints (higher is better); falls back to
            ``cider_d`` with a warning when it is unavailable.
        keep_best: how many best checkpoints to keep (the newest is always kept for resume).
        max_samples: validate on the first N clips only (None = all).
    """

    every_steps: Optional[int] = None
    batch_size: int = 32
    metrics: list = field(default_factory=lambda: ["meteor", "cider_d", "spice", "spider"])
    select_metric: str = "spider"
    keep_best: int = 3
    max_samples: Optional[int] = None


@dataclass
class LogConfig:
    """Logging.

    Args:
        every_steps: log losses, lr and examples/s every N optimizer steps.
        trackers: Accelerate trackers by name (``tensorboard``, ``wandb``, ...); [] for none.
        project_name: tracker project / run name.
    """

    every_steps: int = 10
    trackers: list = field(default_factory=lambda: ["tensorboard"])
    project_name: str = "enclap"


@dataclass
class TrainConfig:
    """A whole recipe: ``cfg/*.yaml`` files fill (part of) this schema.

    Args:
        output_dir: run folder: merged config, log, TensorBoard, predictions, checkpoints.
        seed: global seed (1115 in every paper recipe).
        model, data, optim, eval, log: the groups above.
    """

    output_dir: str = "runs/enclap"
    seed: int = 1115
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _valid_keys(schema: DictConfig, prefix: str = "") -> list[str]:
    """Dotted names of every leaf key of a structured config."""
    keys = []
    for name in schema.keys():
        value = schema._get_node(name)
        if isinstance(value, DictConfig):
            keys.extend(_valid_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key_error(error: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    """Turns OmegaConf's multi-line message into one line listing the valid keys of that group."""
    full_key = getattr(error, "full_key", None) or str(error).splitlines()[0]
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    group = OmegaConf.select(schema, parent) if parent else schema
    valid = _valid_keys(group, f"{parent}." if parent else "") if isinstance(group, DictConfig) else []
    return ConfigError(f"unknown config key '{full_key}' in {source}; valid keys: {', '.join(valid)}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    """Merges ``other`` into the structured ``base`` turning schema violations into ConfigError."""
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        if "not in struct" in message or "Key '" in message and "not" in message:
            raise _unknown_key_error(error, source, base) from None
        key = getattr(error, "full_key", None)
        raise ConfigError(f"bad value for config key '{key}' in {source}: {message}") from None


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Loads a recipe: the schema defaults, then the YAML file, then ``key=value`` overrides.

    Args:
        path: YAML recipe file (None: schema defaults only).
        overrides: dotted ``key=value`` strings from the command line (``optim.lr=1e-4``).

    Returns:
        The merged, validated config (a structured ``DictConfig``: unknown keys are errors).

    Raises:
        ConfigError: missing/unreadable recipe, unknown key, bad value (one line).
    """
    schema = OmegaConf.structured(TrainConfig)
    cfg = schema
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path} (pass one of the recipes in cfg/, e.g. cfg/tiny.yaml)")
        try:
            loaded = OmegaConf.load(path)
        except Exception as error:  # yaml errors come in several classes
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"cannot parse config file {path}: {first}") from None
        cfg = _merge(cfg, loaded, path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=1e-4)")
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as error:
            raise ConfigError(f"cannot parse override '{item}': {str(error).splitlines()[0]}") from None
        cfg = _merge(cfg, dotlist, f"override '{item}'")
    validate_config(cfg)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Checks value ranges and choices that the schema's types cannot express.

    Raises:
        ConfigError: naming the key, the bad value and the allowed values.
    """
    def need(condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ConfigError(f"config key '{key}' = {OmegaConf.select(cfg, key)!r} is invalid: expected {expected}")

    need(cfg.model.init in MODEL_INITS, "model.init", f"one of {', '.join(MODEL_INITS)}")
    need(cfg.optim.lr_scheduler in SCHEDULERS, "optim.lr_scheduler", f"one of {', '.join(SCHEDULERS)}")
    need(cfg.optim.batch_size >= 1, "optim.batch_size", "a positive integer")
    need(cfg.optim.gradient_accumulation_steps >= 1, "optim.gradient_accumulation_steps", "a positive integer")
    need(cfg.optim.epochs >= 1, "optim.epochs", "a positive integer")
    need(cfg.optim.lr > 0, "optim.lr", "a positive number")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0")
    need(cfg.optim.time_scale is None or cfg.optim.time_scale > 0, "optim.time_scale", "a positive integer or null")
    need(not (cfg.optim.lr_scheduler == "inverse_sqrt" and cfg.optim.warmup_steps == 0 and cfg.optim.time_scale is None),
         "optim.time_scale", "a positive integer when optim.warmup_steps is 0 with inverse_sqrt")
    need(cfg.optim.mixed_precision in (None, "no", "fp16", "bf16", "fp8"), "optim.mixed_precision",
         "null, no, fp16, bf16 or fp8")
    need(0 <= cfg.data.encodec_masking_prob <= 1, "data.encodec_masking_prob", "a number in [0, 1]")
    need(cfg.data.encodec_masking_span >= 1, "data.encodec_masking_span", "a positive integer")
    need(cfg.data.max_target_length >= 3, "data.max_target_length", "an integer >= 3 (<s>, a token, </s>)")
    need(cfg.data.max_frames is None or cfg.data.max_frames >= 1, "data.max_frames", "a positive integer or null")
    need(cfg.data.num_workers >= 0, "data.num_workers", "an integer >= 0")
    need(cfg.eval.every_steps is None or cfg.eval.every_steps >= 1, "eval.every_steps", "a positive integer or null")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "a positive integer")
    need(cfg.eval.keep_best >= 1, "eval.keep_best", "a positive integer")
    need(len(cfg.eval.metrics) >= 1, "eval.metrics", "a non-empty list of metric names")
    need(cfg.log.every_steps >= 1, "log.every_steps", "a positive integer")


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as ``{"optim.lr": 6.5e-5, ...}`` with scalar values (for tracker hparams)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            name = prefix[:-1]
            out[name] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


# --------------------------------------------------------------------------------------------
# Optimizer and schedules
# --------------------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float,
                 no_decay: Sequence[str] = NO_DECAY_PATTERNS) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: decayed, and not decayed (design §6).

    Tied parameters appear once (``named_parameters`` de-duplicates them), and frozen ones
    (``requires_grad=False``) are left out.

    Args:
        model: the model.
        weight_decay: decay of the first group.
        no_decay: a parameter whose name contains any of these substrings gets no decay.

    Returns:
        ``[{"params": [...], "weight_decay": wd, "names": [...]}, {"params": [...], "weight_decay": 0.0, "names": [...]}]``
    """
    decay, decay_names, rest, rest_names = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(pattern in name for pattern in no_decay):
            rest.append(param)
            rest_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": rest, "weight_decay": 0.0, "names": rest_names},
    ]


def build_optimizer(model: torch.nn.Module, optim: DictConfig | Any) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the recipe's betas, eps and decay."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, optim.weight_decay)]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2), eps=optim.adam_epsilon)


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int,
              time_scale: Optional[int] = None) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    * ``inverse_sqrt``: ``s / W`` for ``s < W``, else ``1 / sqrt((s + tau - W) / tau)`` with
      ``tau = time_scale`` or ``W`` (design §6).
    * ``linear``: warmup then linear decay to 0 at ``total_steps``.
    * ``cosine``: warmup then half a cosine down to 0 at ``total_steps``.
    * ``constant``: warmup then 1.

    Args:
        step: optimizer steps taken so far.
        schedule: one of :data:`SCHEDULERS`.
        warmup_steps: W.
        total_steps: optimizer steps of the whole run (linear / cosine).
        time_scale: tau of ``inverse_sqrt``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "inverse_sqrt":
        tau = time_scale if time_scale is not None else warmup_steps
        if not tau:
            raise ValueError("inverse_sqrt needs time_scale > 0 when warmup_steps is 0")
        return 1.0 / math.sqrt((step + tau - warmup_steps) / tau)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULERS)}")


class _LrFactor:
    """Picklable ``LambdaLR`` function (the scheduler state must survive ``save_state``)."""

    def __init__(self, schedule: str, warmup_steps: int, total_steps: int, time_scale: Optional[int]):
        self.args = (schedule, warmup_steps, total_steps, time_scale)

    def __call__(self, step: int) -> float:
        return lr_factor(step, *self.args)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int,
                    time_scale: Optional[int] = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``step()`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LrFactor(schedule, warmup_steps, total_steps, time_scale))


def step_seed(seed: int, process_index: int, step: int) -> int:
    """Seed of the torch RNG (dropout) for one optimizer step on one process.

    Re-seeding every step from (seed, process, step) makes a resumed run draw exactly the
    dropout masks of an uninterrupted one, whatever else consumed random numbers in between.
    """
    low, high = np.random.SeedSequence([seed, process_index, step]).generate_state(2)  # two uint32
    return (int(high) & 0x7FFFFFFF) << 32 | int(low)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's share of each global batch, deterministically per epoch.

    ``split_batches`` semantics: ``batch_size`` is the GLOBAL batch; process ``p`` of ``P``
    gets items ``p::P`` of every global batch. The last global batch is filled up with the
    first items of the epoch's order so that every process runs the same number of equal
    batches (as Accelerate's ``even_batches``). The order depends only on (seed, epoch), so
    a resumed run sees the same batches; :meth:`set_start` skips the batches already done.

    Args:
        num_examples: dataset size.
        batch_size: global batch size (a multiple of ``num_processes``).
        num_processes, process_index: data-parallel layout.
        seed: base seed of the shuffling.
        shuffle: shuffle each epoch (else dataset order).
        lengths: example lengths for length-grouped batching (None: plain shuffling).
        group_size: with ``lengths``, examples are sorted by length inside chunks of
            ``group_size`` global batches; the batches are then shuffled.
    """

    def __init__(self, num_examples: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, shuffle: bool = True, lengths: Optional[Sequence[int]] = None,
                 group_size: int = 50):
        if batch_size % num_processes:
            raise ConfigError(f"the global batch size {batch_size} must be a multiple of the number of "
                              f"processes ({num_processes}); change optim.batch_size")
        if num_examples < 1:
            raise ValueError("empty dataset")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order is served."""
        self.epoch = epoch

    def set_start(self, num_batches: int) -> None:
        """Skips the first ``num_batches`` batches of the epoch (resume mid-epoch)."""
        self.start = num_batches

    def global_batches(self) -> list[np.ndarray]:
        """All global batches of the current epoch, each an index array of ``batch_size``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_examples) if self.shuffle else np.arange(self.num_examples)
        if self.lengths is not None:
            chunk = self.batch_size * self.group_size
            order = np.concatenate([
                part[np.argsort(-self.lengths[part], kind="stable")] for part in np.array_split(
                    order, max(1, math.ceil(len(order) / chunk)))
            ])
        pad = -len(order) % self.batch_size
        if pad:
            order = np.concatenate([order, np.resize(order, pad)])
        batches = list(order.reshape(-1, self.batch_size))
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start:]:
            yield batch[self.process_index::self.num_processes].tolist()
        self.start = 0


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
                keep the earlier checkpoint).

        Returns:
            The deleted folders.
        """
        found = self.complete()
        if not found:
            return []
        scored = []
        for step, folder in found:
            value = self.read_state(folder).get("scores", {}).get(metric)
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
