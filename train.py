"""Train EnCLAP: ``accelerate launch train.py CFG.yaml [key=value ...]`` (or ``sh train.sh``).

The loop: batch -> loss -> backward -> (accumulate) -> clip -> step -> log -> validate ->
checkpoint. Device placement, data parallelism and mixed precision come from Accelerate
(``accelerate config``); the recipe (``cfg/*.yaml``, schema in :mod:`training.config`) holds
everything else, and :func:`training.preflight.check_recipe` checks all of it first. The
configured batch is the GLOBAL batch of one forward pass, split across processes.

Rerunning the same command resumes from the newest complete checkpoint in
``<output_dir>/checkpoints`` at the same optimizer step, schedule, RNG and data position.
The run folder's layout is described in docs/training.md.
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

CFG.yaml   a recipe from cfg/ (default: schema defaults); see docs/training.md
key=value  dotted overrides, e.g. optim.lr=1e-4 data.num_workers=0 output_dir=runs/x
"""

logger = logging.getLogger("train")


def train(cfg) -> int:
    """Runs (or resumes) the recipe ``cfg``; returns the exit status."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from common.io import atomic_write_text
    from data.collator import EnClapCollator
    from data.dataset import CaptionDataset
    from modeling import GenerationOptions
    from scoring import format_scores
    from training.checkpoints import CheckpointManager, save_checkpoint
    from training.config import ConfigError, flat_config
    from training.logs import setup_logging
    from training.model import build_model_and_tokenizer
    from training.optim import build_optimizer, build_scheduler
    from training.preflight import check_recipe
    from training.sampler import GlobalBatchSampler, step_seed
    from training.validation import predictions_path, validate

    manager = CheckpointManager(cfg.output_dir, keep_best=cfg.eval.keep_best)
    resume_dir = manager.latest()
    plan = check_recipe(cfg, check_model=resume_dir is None)  # user mistakes surface before anything heavy

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
    setup_logging(logger, cfg.output_dir, is_main)
    config_yaml = OmegaConf.to_yaml(cfg)
    if is_main:
        old = os.path.join(cfg.output_dir, "config.yaml")
        if os.path.isfile(old) and open(old, encoding="utf-8").read() != config_yaml:
            logger.warning("the recipe differs from the one saved in %s; it is replaced", old)
        atomic_write_text(old, config_yaml)
    if plan.skipped_metrics:
        logger.warning("metrics %s cannot run on this machine and are skipped (run `python -m scoring "
                       "check` for the reason)", ", ".join(plan.skipped_metrics))
    if plan.select_metric != cfg.eval.select_metric:
        logger.warning("selection metric %s is unavailable here; selecting checkpoints by %s instead",
                       cfg.eval.select_metric, plan.select_metric)
    select_metric, metrics = plan.select_metric, plan.metrics

    # ---------------------------------------------------------------- model and data
    model, tokenizer = build_model_and_tokenizer(cfg, accelerator, plan.train_captions, resume_dir)
    model.set_efficient_training(cfg.model.efficient_training)
    mconf = model.config
    max_frames = cfg.data.max_frames or mconf.max_frames
    if max_frames > mconf.max_frames:
        raise ConfigError(f"data.max_frames={max_frames} exceeds what the model's {mconf.max_position_embeddings} "
                          f"positions allow ({mconf.max_frames}); lower data.max_frames")
    roots = (cfg.data.encodec_base_path, cfg.data.clap_base_path)
    common = dict(max_frames=max_frames, seed=cfg.seed, num_rvq=mconf.num_rvq,
                  codebook_size=mconf.encodec_vocab_size, clap_dim=mconf.d_clap, check_files=False)
    train_set = CaptionDataset(cfg.data.train_csv, *roots, train=True, masking_prob=cfg.data.encodec_masking_prob,
                               mask_span=cfg.data.encodec_masking_span, static_masks=cfg.data.static_masks, **common)
    val_set = CaptionDataset(cfg.data.val_csv, *roots, train=False, **common)
    if cfg.eval.max_samples is not None:
        val_set = Subset(val_set, range(min(cfg.eval.max_samples, len(val_set))))
    collator = EnClapCollator(tokenizer, max_target_length=cfg.data.max_target_length, num_rvq=mconf.num_rvq,
                              encodec_pad_token_id=mconf.encodec_pad_token_id,
                              bos_token_id=mconf.bos_token_id, eos_token_id=mconf.eos_token_id)
    sampler = GlobalBatchSampler(len(train_set), cfg.optim.batch_size, accelerator.num_processes,
                                 accelerator.process_index, seed=cfg.seed,
                                 lengths=train_set.clip_frames() if cfg.data.group_by_length else None)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.data.num_workers,
                        pin_memory=cfg.data.pin_memory and accelerator.device.type == "cuda")
    batches_per_epoch = len(sampler)
    accum = cfg.optim.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.optim.epochs
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
        if batch_in_epoch >= batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        scores = validate(model, val_set, collator, tokenizer, accelerator, generation_config, metrics,
                          cfg.eval.batch_size, predictions_path(cfg.output_dir, global_step))
        logger.info("validation at step %d (epoch %.2f):\n%s", global_step,
                    epoch + batch_in_epoch / batches_per_epoch, format_scores(scores))
        accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=global_step)
        history.append({"step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "scores": scores})
        best = best_entry()
        is_best = best is not None and best["step"] == global_step
        save_checkpoint(manager, accelerator, model, tokenizer, global_step, {
            "global_step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "scores": scores,
            "select_metric": select_metric, "history": history}, is_best)
        if is_best:
            logger.info("new best %s %.4f at step %d -> %s", select_metric, scores[select_metric], global_step,
                        manager.best_dir)

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
            zero = torch.zeros((), device=accelerator.device)
            sums += torch.stack([out.loss.detach().float(), out.lm_loss.detach().float(),
                                 out.mcm_loss.detach().float() if out.mcm_loss is not None else zero, zero + 1])
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
                record = {"train/loss": total[0].item() / n, "train/caption_loss": total[1].item() / n,
                          "train/mcm_loss": total[2].item() / n, "train/lr": scheduler.get_last_lr()[0],
                          "train/examples_per_s": window_examples / (time.perf_counter() - window_start),
                          "train/epoch": epoch}
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
    from common.errors import UserError, one_line
    from training.config import load_config

    path = argv.pop(0) if argv and "=" not in argv[0] else None
    try:
        return train(load_config(path, argv))
    except UserError as error:
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
