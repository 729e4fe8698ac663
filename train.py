"""Train EnCLAP: ``accelerate launch train.py CFG.yaml [key=value ...]`` (or ``sh train.sh``).

One readable loop: batch -> loss -> backward -> (accumulate) -> clip -> step -> log ->
validate -> checkpoint. Device placement, data parallelism and mixed precision come from
Accelerate (``accelerate config``); the recipe (``cfg/*.yaml``, schema in
:mod:`modeling.training`) holds everything else. The configured batch is the GLOBAL batch
of one forward pass, split across processes.

Rerunning the same command resumes from the newest complete checkpoint in
``<output_dir>/checkpoints`` at the same optimizer step, schedule, RNG and data position.

Run folder layout::

    <output_dir>/config.yaml            merged recipe of the last start
    <output_dir>/train.log              plain-text log
    <output_dir>/<project_name>/        TensorBoard events
    <output_dir>/predictions/step_N.csv validation captions (file_path, prediction, caption_1..5)
    <output_dir>/checkpoints/step_N/    state/ (resume), model/ (evaluate.py --ckpt), trainer_state.json
    <output_dir>/best/                  model folder of the best validation score
    <output_dir>/summary.json           best step/epoch and its scores
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

USAGE = """usage: accelerate launch train.py [CFG.yaml] [key=value ...]
       python train.py [CFG.yaml] [key=value ...]       (one process)

CFG.yaml   a recipe from cfg/ (default: schema defaults); see README "Training"
key=value  dotted overrides, e.g. optim.lr=1e-4 data.num_workers=0 output_dir=runs/x
"""

logger = logging.getLogger("train")


def _setup_logging(output_dir: str, is_main: bool) -> None:
    """Logs to stderr and ``<output_dir>/train.log`` on the main process; warnings elsewhere."""
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
    # Library warnings (e.g. the dataset's crop notice) go to the same places.
    for name in ("data", "modeling"):
        lib = logging.getLogger(name)
        lib.handlers = list(logger.handlers)
        lib.setLevel(logger.level)
        lib.propagate = False


def _load_tokenizer(name_or_path: str):
    """A BART tokenizer from a hub id or folder, with a one-line error when unavailable."""
    from transformers import BartTokenizerFast

    from modeling.training import ConfigError

    try:
        return BartTokenizerFast.from_pretrained(name_or_path)
    except (OSError, TypeError, ValueError) as error:
        raise ConfigError(f"cannot load the tokenizer from {name_or_path!r} ({type(error).__name__}); download it "
                          "(e.g. `huggingface-cli download facebook/bart-base`) or set model.tokenizer to a local "
                          "folder") from None


def build_model_and_tokenizer(cfg, accelerator, train_captions: Sequence[str], resume_dir: Optional[str]):
    """The model and tokenizer the recipe asks for (or those of the checkpoint being resumed).

    Args:
        cfg: the merged recipe.
        accelerator: for main-process-only work (tokenizer training).
        train_captions: captions for the ``scratch`` tokenizer.
        resume_dir: checkpoint folder to resume from (its ``model/`` gives config + tokenizer).
    """
    import torch

    from modeling import EnClapBartConfig, EnClapBartForConditionalGeneration
    from modeling.tokenizer import train_tokenizer

    m = cfg.model
    fields = dict(mcm_loss_scale=m.mcm_loss_scale, label_smoothing=m.label_smoothing)
    if m.dropout is not None:
        fields["dropout"] = m.dropout
    if resume_dir is not None:
        # Weights, optimizer etc. come from the Accelerate state right after; the model folder
        # gives the exact architecture and tokenizer (also for a scratch tokenizer).
        folder = os.path.join(resume_dir, "model")
        return EnClapBartForConditionalGeneration.from_pretrained(folder, **fields), _load_tokenizer(folder)
    if m.init == "bart":
        tokenizer = _load_tokenizer(m.tokenizer or m.name_or_path)
        return EnClapBartForConditionalGeneration.from_bart(m.name_or_path, **fields), tokenizer
    if m.init == "enclap":
        model = EnClapBartForConditionalGeneration.from_pretrained(m.name_or_path, **fields)
        # Our checkpoints carry their tokenizer; the released ones do not (they use BART's).
        own = os.path.isfile(os.path.join(str(m.name_or_path), "tokenizer_config.json"))
        return model, _load_tokenizer(m.tokenizer or (m.name_or_path if own else "facebook/bart-base"))
    # scratch: a tokenizer trained from the training captions on the main process, then shared.
    tok_dir = os.path.join(cfg.output_dir, "tokenizer")
    if accelerator.is_main_process:
        train_tokenizer(train_captions, vocab_size=m.vocab_size).save_pretrained(tok_dir)
    accelerator.wait_for_everyone()
    tokenizer = _load_tokenizer(tok_dir)
    config = EnClapBartConfig(
        vocab_size=len(tokenizer), d_model=m.d_model, encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers, encoder_attention_heads=m.attention_heads,
        decoder_attention_heads=m.attention_heads, encoder_ffn_dim=m.ffn_dim, decoder_ffn_dim=m.ffn_dim,
        max_position_embeddings=m.max_position_embeddings, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, **fields,
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    return EnClapBartForConditionalGeneration(config), tokenizer


def clip_lengths(dataset, max_frames: int) -> list[int]:
    """Frames per example (after cropping), read from the ``.npy`` headers (for length grouping)."""
    import numpy as np

    cache: dict[str, int] = {}
    for file_path in dataset.file_paths:
        if file_path not in cache:
            codes_path, _ = dataset.feature_paths(file_path)
            cache[file_path] = min(np.load(codes_path, mmap_mode="r").shape[0], max_frames)
    return [cache[p] for p in dataset.file_paths]


def val_references(dataset) -> tuple[list[list[str]], list[str]]:
    """(references, file_path) of every validation clip, read from the CSV (no feature loading)."""
    from torch.utils.data import Subset

    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) \
        else (dataset, range(len(dataset)))
    return [list(base.references[i]) for i in indices], [base.file_paths[i] for i in indices]


def generate_validation(model, dataset, collator, tokenizer, accelerator, batch_size: int, generation_config):
    """Captions every validation clip exactly once across processes.

    Process ``p`` of ``P`` captions clips ``p, p+P, ...`` (no padding, so no duplicates);
    ``(index, caption)`` pairs are gathered and sorted on every process.

    Returns:
        The list of predictions in dataset order (on every process).
    """
    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader, Subset

    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collator)
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    local, position = [], 0
    with torch.no_grad(), accelerator.autocast():
        for batch in loader:
            inputs = {k: batch[k].to(accelerator.device) for k in
                      ("input_ids", "encodec_mask", "attention_mask", "clap_embedding")}
            ids = unwrapped.generate(**inputs, generation_config=generation_config)  # (b, S)
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            local.extend((indices[position + i], text.strip()) for i, text in enumerate(texts))
            position += len(texts)
    unwrapped.train(was_training)
    pairs = dict(gather_object(local)) if accelerator.num_processes > 1 else dict(local)
    if sorted(pairs) != list(range(len(dataset))):
        raise RuntimeError(f"validation gathered {len(pairs)} of {len(dataset)} clips")
    return [pairs[i] for i in range(len(dataset))]


def train(cfg) -> int:
    """Runs (or resumes) the recipe ``cfg``; returns the exit status."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, broadcast_object_list
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from data.collator import EnClapCollator
    from data.dataset import CaptionDataset
    from modeling.generation import GenerationOptions
    from modeling.metrics import available_metrics, compute_scores, format_scores, normalize_metrics
    from data.io import atomic_write_text, write_predictions_csv
    from modeling.training import (CheckpointManager, ConfigError, GlobalBatchSampler, build_optimizer,
                                   build_scheduler, flat_config, step_seed)

    # User-fixable problems are found before anything heavy starts.
    try:
        wanted = normalize_metrics(list(cfg.eval.metrics))
        select_metric = normalize_metrics([cfg.eval.select_metric])[0]
    except ValueError as error:
        raise ConfigError(f"eval.metrics / eval.select_metric: {error}") from None
    for key in ("train_csv", "val_csv"):
        if not os.path.isfile(cfg.data[key]):
            raise ConfigError(f"data.{key} file not found: {cfg.data[key]} (set data.{key}=PATH)")
    for key in ("encodec_base_path", "clap_base_path"):
        if not os.path.isdir(cfg.data[key]):
            raise ConfigError(f"data.{key} folder not found: {cfg.data[key]} (set data.{key}=PATH)")
    roots = (cfg.data.encodec_base_path, cfg.data.clap_base_path)
    probe = CaptionDataset(cfg.data.train_csv, *roots, train=True)  # checks every feature file exists
    CaptionDataset(cfg.data.val_csv, *roots, train=False)

    accelerator = Accelerator(
        mixed_precision=cfg.optim.mixed_precision,
        # split_batches: the configured batch is global, and a prepared scheduler steps once
        # per optimizer step whatever the number of processes.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # A batch whose clips are too short for an MCM span leaves that codebook's head
        # without a target (it is skipped, design §3): DDP must tolerate unused parameters.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=list(cfg.log.trackers) or None,
        project_dir=cfg.output_dir,
    )
    is_main = accelerator.is_main_process
    if is_main:
        os.makedirs(cfg.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    _setup_logging(cfg.output_dir, is_main)
    config_yaml = OmegaConf.to_yaml(cfg)
    if is_main:
        old = os.path.join(cfg.output_dir, "config.yaml")
        if os.path.isfile(old) and open(old, encoding="utf-8").read() != config_yaml:
            logger.warning("the recipe differs from the one saved in %s; it is replaced", old)
        atomic_write_text(old, config_yaml)

    manager = CheckpointManager(cfg.output_dir, keep_best=cfg.eval.keep_best)
    resume_dir = manager.latest()

    # ---------------------------------------------------------------- model and data
    model, tokenizer = build_model_and_tokenizer(cfg, accelerator, probe.captions, resume_dir)
    model.set_efficient_training(cfg.model.efficient_training)
    mconf = model.config
    max_frames = cfg.data.max_frames or mconf.max_frames
    if max_frames > mconf.max_frames:
        raise ConfigError(f"data.max_frames={max_frames} exceeds what the model's {mconf.max_position_embeddings} "
                          f"positions allow ({mconf.max_frames}); lower data.max_frames")
    common = dict(max_frames=max_frames, seed=cfg.seed, num_rvq=mconf.num_rvq,
                  codebook_size=mconf.encodec_vocab_size, clap_dim=mconf.d_clap)
    train_set = CaptionDataset(cfg.data.train_csv, *roots, train=True,
                               masking_prob=cfg.data.encodec_masking_prob, mask_span=cfg.data.encodec_masking_span,
                               static_masks=cfg.data.static_masks, check_files=False, **common)
    val_set = CaptionDataset(cfg.data.val_csv, *roots, train=False, check_files=False, **common)
    if cfg.eval.max_samples is not None:
        val_set = Subset(val_set, range(min(cfg.eval.max_samples, len(val_set))))
    collator = EnClapCollator(tokenizer, max_target_length=cfg.data.max_target_length, num_rvq=mconf.num_rvq,
                              encodec_pad_token_id=mconf.encodec_pad_token_id,
                              bos_token_id=mconf.bos_token_id, eos_token_id=mconf.eos_token_id)
    sampler = GlobalBatchSampler(
        len(train_set), cfg.optim.batch_size, accelerator.num_processes, accelerator.process_index, seed=cfg.seed,
        lengths=clip_lengths(train_set, max_frames) if cfg.data.group_by_length else None)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and accelerator.device.type == "cuda")
    batches_per_epoch = len(sampler)
    accum = cfg.optim.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.optim.epochs

    # ---------------------------------------------------------------- metrics
    metrics = available_metrics(wanted)
    if not metrics:
        from modeling.metrics import preflight
        preflight(wanted)  # raises the one-line reason and fix
    if set(wanted) - set(metrics):
        logger.warning("metrics %s cannot run on this machine and are skipped (run `python -m modeling.metrics "
                       "check` for the reason)", ", ".join(m for m in wanted if m not in metrics))
    if select_metric not in metrics:
        fallback = "cider_d" if "cider_d" in metrics else metrics[0]
        logger.warning("selection metric %s is unavailable here; selecting checkpoints by %s instead",
                       select_metric, fallback)
        select_metric = fallback
    generation_config = GenerationOptions().to_generation_config(mconf)

    # ---------------------------------------------------------------- optimisation
    if cfg.data.encodec_masking_prob == 0:
        model.mcm_heads.requires_grad_(False)  # MCM off: the heads never get a gradient
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim.lr_scheduler, cfg.optim.warmup_steps, total_steps,
                                cfg.optim.time_scale)
    model.train()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if cfg.log.trackers:
        accelerator.init_trackers(cfg.log.project_name, config=flat_config(cfg))

    global_step, start_epoch, start_batch, history = 0, 0, 0, []
    if resume_dir is not None:
        accelerator.load_state(os.path.join(resume_dir, "state"))
        state = manager.read_state(resume_dir)
        global_step, start_epoch, start_batch = state["global_step"], state["epoch"], state["batch_in_epoch"]
        history = state["history"]
        logger.info("resuming from %s (step %d, epoch %d, batch %d)", resume_dir, global_step, start_epoch,
                    start_batch)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("model: %.1f M parameters; %d training examples, %d validation clips; %d processes on %s; "
                "global batch %d x %d accumulation; %d optimizer steps (%d per epoch); metrics %s, selecting by %s; "
                "training shortcuts %s", n_params / 1e6, len(train_set), len(val_set), accelerator.num_processes,
                accelerator.device, cfg.optim.batch_size, accum, total_steps, steps_per_epoch, ", ".join(metrics),
                select_metric, "on" if cfg.model.efficient_training else "off (stock BART layers)")

    def best_entry() -> Optional[dict]:
        scored = [h for h in history if h["scores"].get(select_metric) is not None]
        return max(scored, key=lambda h: (h["scores"][select_metric], -h["step"])) if scored else None

    def validate_and_checkpoint(epoch: int, batch_in_epoch: int) -> None:
        """Validation (all processes generate, main scores once) then an atomic checkpoint."""
        if batch_in_epoch >= batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        predictions = generate_validation(model, val_set, collator, tokenizer, accelerator, cfg.eval.batch_size,
                                          generation_config)
        box = [None]
        if is_main:
            refs, files = val_references(val_set)
            write_predictions_csv(os.path.join(cfg.output_dir, "predictions", f"step_{global_step:08d}.csv"),
                                  files, predictions, refs)
            box[0] = compute_scores(predictions, refs, metrics)
        scores = broadcast_object_list(box)[0]
        logger.info("validation at step %d (epoch %.2f):\n%s", global_step, epoch + batch_in_epoch /
                    batches_per_epoch, format_scores(scores))
        accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=global_step)
        history.append({"step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "scores": scores})

        if is_main:
            manager.tmp_path(global_step)  # created empty by the main process only
        accelerator.wait_for_everyone()
        tmp = manager.tmp_path(global_step, create=False)
        accelerator.save_state(os.path.join(tmp, "state"))
        accelerator.wait_for_everyone()
        if is_main:
            model_dir = os.path.join(tmp, "model")
            accelerator.unwrap_model(model).save_pretrained(model_dir, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
            best = best_entry()
            final = manager.commit(tmp, global_step, {
                "global_step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "scores": scores, "select_metric": select_metric, "history": history,
            })
            if best is not None and best["step"] == global_step:
                manager.update_best(os.path.join(final, "model"))
                logger.info("new best %s %.4f at step %d -> %s", select_metric, scores[select_metric], global_step,
                            manager.best_dir)
            manager.rotate(select_metric)
        accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- the loop
    every = cfg.eval.every_steps
    bar = tqdm(total=total_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    sums = torch.zeros(4, device=accelerator.device)  # loss, lm_loss, mcm_loss, micro-batches
    window_start, window_examples = time.perf_counter(), 0
    for epoch in range(start_epoch, cfg.optim.epochs):
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        first = start_batch if epoch == start_epoch else 0
        sampler.set_start(first)
        model.train()
        for batch_index, batch in enumerate(loader, start=first):
            group_start = batch_index - batch_index % accum
            group_size = min(accum, batches_per_epoch - group_start)
            is_step = batch_index + 1 == group_start + group_size
            if batch_index == group_start:
                # Dropout depends only on (seed, process, step): a resumed run is exact.
                torch.manual_seed(step_seed(cfg.seed, accelerator.process_index, global_step))
            inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()
                      if isinstance(v, torch.Tensor)}
            with contextlib.nullcontext() if is_step else accelerator.no_sync(model):
                out = model(**inputs)
                accelerator.backward(out.loss / group_size)
            sums += torch.stack([out.loss.detach().float(), out.lm_loss.detach().float(),
                                 (out.mcm_loss.detach().float() if out.mcm_loss is not None
                                  else torch.zeros((), device=accelerator.device)),
                                 torch.ones((), device=accelerator.device)])
            window_examples += cfg.optim.batch_size
            if not is_step:
                continue
            if cfg.optim.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            bar.update(1)

            if global_step % cfg.log.every_steps == 0:
                total = accelerator.reduce(sums, reduction="mean")  # averaged over processes
                n = total[3].item()
                elapsed = time.perf_counter() - window_start
                record = {"train/loss": total[0].item() / n, "train/caption_loss": total[1].item() / n,
                          "train/mcm_loss": total[2].item() / n, "train/lr": scheduler.get_last_lr()[0],
                          "train/examples_per_s": window_examples / elapsed, "train/epoch": epoch}
                accelerator.log(record, step=global_step)
                bar.set_postfix(loss=f"{record['train/loss']:.3f}", lr=f"{record['train/lr']:.2e}")
                logger.info("step %d epoch %d loss %.4f caption %.4f mcm %.4f lr %.3e %.1f examples/s", global_step,
                            epoch, record["train/loss"], record["train/caption_loss"], record["train/mcm_loss"],
                            record["train/lr"], record["train/examples_per_s"])
                sums.zero_()
                window_start, window_examples = time.perf_counter(), 0
            if every is not None and global_step % every == 0:
                validate_and_checkpoint(epoch, batch_index + 1)
        if every is None:
            validate_and_checkpoint(epoch, batches_per_epoch)
    bar.close()
    if every is not None and (not history or history[-1]["step"] != global_step):
        validate_and_checkpoint(cfg.optim.epochs - 1, batches_per_epoch)

    best = best_entry()
    if is_main and best is not None:
        summary = {"best_step": best["step"], "best_epoch": best["epoch"], "select_metric": select_metric,
                   "best_scores": best["scores"], "best_dir": manager.best_dir, "final_step": global_step,
                   "history": history}
        atomic_write_text(os.path.join(cfg.output_dir, "summary.json"), json.dumps(summary, indent=2))
        logger.info("done: best %s %.4f at step %d (after epoch %d); model folder %s\n%s", select_metric,
                    best["scores"][select_metric], best["step"], best["epoch"], manager.best_dir,
                    format_scores(best["scores"]))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parses ``[CFG.yaml] [key=value ...]``; user errors become one stderr line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from modeling.training import ConfigError, load_config

    path = argv.pop(0) if argv and "=" not in argv[0] else None
    try:
        cfg = load_config(path, argv)
        from data.dataset import DataError
        from modeling.metrics import MetricsUnavailable
        from modeling.modeling_enclap import CheckpointError

        try:
            return train(cfg)
        except (DataError, CheckpointError, MetricsUnavailable) as error:
            raise ConfigError(str(error)) from None
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
