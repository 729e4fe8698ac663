"""The recipe schema (cfg/*.yaml) and its loading: YAML + ``key=value`` overrides checked against
:class:`TrainConfig`; user mistakes raise :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.constants import DEFAULT_SEED, LABEL_SMOOTHING, MASK_PROB, MASK_SPAN, MCM_LOSS_SCALE
from common.errors import UserError

# --------------------------------------------------------------------------------------------
# Config schema
# --------------------------------------------------------------------------------------------

#: Parameters whose names contain one of these get no weight decay (design §6). Note that
#: BART's ``layernorm_embedding.weight`` matches none of them and IS decayed, as in the original.
NO_DECAY_PATTERNS = ("bias", "LayerNorm.weight", "layer_norm.weight")

SCHEDULERS = ("inverse_sqrt", "linear", "cosine", "constant")
MODEL_INITS = ("bart", "enclap", "scratch")


class ConfigError(UserError):
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
    mcm_loss_scale: float = MCM_LOSS_SCALE
    label_smoothing: float = LABEL_SMOOTHING
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
        num_workers: DataLoader worker processes per training process; None = what the machine
            has: one per CPU core left over for each local process, at most 4 (see
            :func:`default_num_workers`).
        pin_memory: pinned host memory for faster copies to the GPU.
        group_by_length: batch examples of similar length together (less padding).
        feature_layout: ``auto`` (a feature root with ``index.json`` or ``shards/`` is a packed
            store, see docs/data.md), ``files`` (one ``.npy`` per clip) or ``packed``.
        codec: the codec the features were made with (preprocessing's ``--codec``): None for
            EnCodec, or ``package.module:Class`` of another (design §10); a scratch model takes
            its codebooks from it, and the checkpoint records it for captioning.
    """

    train_csv: str = "csv/audiocaps/train.csv"
    val_csv: str = "csv/audiocaps/valid.csv"
    encodec_base_path: str = "data/audiocaps/encodec"
    clap_base_path: str = "data/audiocaps/clap"
    max_frames: Optional[int] = None
    max_target_length: int = 64
    encodec_masking_prob: float = MASK_PROB
    encodec_masking_span: int = MASK_SPAN
    static_masks: bool = False
    num_workers: Optional[int] = None
    pin_memory: bool = True
    group_by_length: bool = False
    feature_layout: str = "auto"
    codec: Optional[str] = None


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
        select_metric: metric that picks the best checkpoints (higher is better): any metric
            name (FENSE, SPIDEr-FL, Vocab, ...), added to ``metrics`` when missing; falls back
            to ``cider_d`` with a warning when it is unavailable.
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
class DistributedConfig:
    """Several processes or machines (docs/cluster.md).

    Args:
        timeout_minutes: how long a collective may wait before the run is stopped; on NCCL, a rank
            that died is only found this way. Validation scoring does not count: the other ranks
            wait for the main process's scores as long as its heartbeat goes on
            (:func:`training.distributed.share_from_main`), so SPICE on a full split needs no more.
    """

    timeout_minutes: float = 10.0


@dataclass
class TrainConfig:
    """A whole recipe: ``cfg/*.yaml`` files fill (part of) this schema.

    Args:
        output_dir: run folder: merged config, log, TensorBoard, predictions, checkpoints.
        seed: global seed (1115 in every paper recipe).
        model, data, optim, eval, log, distributed: the groups above.
    """

    output_dir: str = "runs/enclap"
    seed: int = DEFAULT_SEED
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


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


#: Recipe keys holding file or folder paths (design §6, "Relative paths").
PATH_KEYS = ("output_dir", "data.train_csv", "data.val_csv", "data.encodec_base_path", "data.clap_base_path")
#: Recipe keys that hold a local path or a Hugging Face Hub id.
MODEL_KEYS = ("model.name_or_path", "model.tokenizer")
#: The repository root: shipped recipes (``cfg/...``) are also found from other folders.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def looks_like_local_path(text: str) -> bool:
    """True when ``text`` cannot be a Hub id (``org/name``) and so must name a local file or folder."""
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return True
    # A Hub id has exactly one "/" and no weights-file suffix.
    return text.count("/") > 1 or text.endswith((".bin", ".safetensors", ".pt", ".pth"))


def resolve_paths(cfg: DictConfig, base: Optional[str] = None) -> DictConfig:
    """Makes the recipe's relative paths absolute against ``base`` (the caller's working directory).

    :data:`PATH_KEYS` always resolve; :data:`MODEL_KEYS` resolve when they name something that
    exists there or cannot be a Hub id, so ``facebook/bart-base`` stays a Hub id.

    Args:
        cfg: the merged recipe (modified in place).
        base: folder to resolve against (default: ``os.getcwd()``).

    Returns:
        ``cfg``.
    """
    base = os.getcwd() if base is None else base
    for key in PATH_KEYS + MODEL_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is None or os.path.isabs(os.path.expanduser(str(value))):
            if value is not None:
                OmegaConf.update(cfg, key, os.path.expanduser(str(value)))
            continue
        candidate = os.path.normpath(os.path.join(base, os.path.expanduser(str(value))))
        if key in PATH_KEYS or os.path.exists(candidate) or looks_like_local_path(str(value)):
            OmegaConf.update(cfg, key, candidate)
    return cfg


def find_recipe(path: str) -> str:
    """The recipe file ``path`` names: relative to the working directory, else to the repository.

    Raises:
        ConfigError: neither exists; names the absolute paths tried and the shipped recipes.
    """
    here = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(here):
        return here
    shipped = os.path.join(REPO_ROOT, path)
    if not os.path.isabs(path) and os.path.isfile(shipped):
        return shipped
    raise ConfigError(f"config file not found: {here} (nor {shipped}); pass a recipe such as "
                      f"{os.path.join(REPO_ROOT, 'cfg', 'tiny.yaml')}")


def default_num_workers() -> int:
    """Loader workers per process when ``data.num_workers`` is null: the cores this process may
    use, shared among the node's processes, minus one for the process itself, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(4, cores // local_processes - 1))


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Loads a recipe: the schema defaults, then the YAML file, then ``key=value`` overrides.

    Relative paths, in the YAML and in overrides alike, are made absolute against the working
    directory (:func:`resolve_paths`); a null ``data.num_workers`` becomes
    :func:`default_num_workers`.

    Args:
        path: YAML recipe file, relative to the working directory or to the repository
            (``cfg/tiny.yaml`` works from any folder); None: schema defaults only.
        overrides: dotted ``key=value`` strings from the command line (``optim.lr=1e-4``).

    Returns:
        The merged, validated config (a structured ``DictConfig``: unknown keys are errors).

    Raises:
        ConfigError: missing/unreadable recipe, unknown key, bad value (one line).
    """
    schema = OmegaConf.structured(TrainConfig)
    cfg = schema
    if path is not None:
        path = find_recipe(path)
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
    if cfg.data.num_workers is None:
        cfg.data.num_workers = default_num_workers()
    return resolve_paths(cfg)


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
    if cfg.optim.mixed_precision in ("False", "false"):  # YAML reads `no` as a boolean: `mixed_precision=no`
        cfg.optim.mixed_precision = "no"
    need(cfg.optim.mixed_precision in (None, "no", "fp16", "bf16", "fp8"), "optim.mixed_precision",
         "null, no, fp16, bf16 or fp8")
    need(0 <= cfg.data.encodec_masking_prob <= 1, "data.encodec_masking_prob", "a number in [0, 1]")
    need(cfg.data.encodec_masking_span >= 1, "data.encodec_masking_span", "a positive integer")
    need(cfg.data.max_target_length >= 3, "data.max_target_length", "an integer >= 3 (<s>, a token, </s>)")
    need(cfg.data.max_frames is None or cfg.data.max_frames >= 1, "data.max_frames", "a positive integer or null")
    need(cfg.data.num_workers is None or cfg.data.num_workers >= 0, "data.num_workers", "an integer >= 0 or null")
    need(cfg.eval.every_steps is None or cfg.eval.every_steps >= 1, "eval.every_steps", "a positive integer or null")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "a positive integer")
    need(cfg.eval.keep_best >= 1, "eval.keep_best", "a positive integer")
    need(len(cfg.eval.metrics) >= 1, "eval.metrics", "a non-empty list of metric names")
    need(cfg.log.every_steps >= 1, "log.every_steps", "a positive integer")
    need(cfg.distributed.timeout_minutes > 0, "distributed.timeout_minutes", "a positive number of minutes")
    need(cfg.data.feature_layout in ("auto", "files", "packed"), "data.feature_layout", "auto, files or packed")


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
