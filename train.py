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
import logging
import os
import sys
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
    from tqdm.auto import tqdm

    from modeling import GenerationOptions
    from modeling.modeling_enclap import mcm_max_rows
    from scoring import format_scores
    from training.checkpoints import CheckpointManager, best_entry, resume_position, save_checkpoint, write_summary
    from training.config import flat_config
    from training.data import build_data
    from training.distributed import allow_unused_parameters, check_cluster, make_accelerator, stop_heartbeat
    from training.logs import LossLog, open_run_folder
    from training.model import build_model_and_tokenizer
    from training.optim import build_optimizer, build_scheduler
    from training.preflight import check_launch, check_recipe
    from training.sampler import step_seed
    from training.validation import predictions_path, undertrained_hint, validate, validation_loader

    manager = CheckpointManager(cfg.output_dir, keep_best=cfg.eval.keep_best)
    resume_dir = manager.latest()
    # User mistakes surface before anything heavy: first the launch layout (the environment only),
    # then the recipe's files; the shared-folder check needs the process group (check_cluster).
    launch_warnings = check_launch(cfg, resume_dir)
    plan = check_recipe(cfg, check_model=resume_dir is None)
    plan.warnings[:0] = launch_warnings
    accelerator = make_accelerator(cfg)
    open_run_folder(cfg, accelerator, logger)
    check_cluster(cfg, resume_dir, logger)  # all ranks share output_dir (tokenizer, checkpoints); timeout logged
    plan.log(logger)  # skipped metrics, the selection fallback, clips over the frame limit
    select_metric, metrics = plan.select_metric, plan.metrics

    # ---------------------------------------------------------------- model, data, optimisation
    model, tokenizer = build_model_and_tokenizer(cfg, accelerator, plan.train_captions, resume_dir)
    model.set_efficient_training(cfg.model.efficient_training)
    data = build_data(cfg, model.config, tokenizer, accelerator, plan.train_frames)  # lengths read once
    accum, batches_per_epoch = cfg.optim.gradient_accumulation_steps, data.batches_per_epoch
    total_steps = data.steps_per_epoch * cfg.optim.epochs
    generation_config = GenerationOptions().to_generation_config(model.config)
    if cfg.data.encodec_masking_prob == 0:
        model.mcm_heads.requires_grad_(False)  # MCM off: the heads never get a gradient
    allow_unused_parameters(accelerator, model)
    model.to(accelerator.device)  # before the optimizer: AdamW runs fused when the parameters are on CUDA
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim.lr_scheduler, cfg.optim.warmup_steps, total_steps,
                                cfg.optim.time_scale)
    model.train()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # Built once: its workers (as many as the training loader's) persist between validations.
    val_loader = validation_loader(data.val_set, data.collator, accelerator, cfg.eval.batch_size,
                                   data.loader.num_workers)
    if cfg.log.trackers:
        accelerator.init_trackers(cfg.log.project_name, config=flat_config(cfg))

    global_step, start_epoch, start_batch, history = resume_position(manager, accelerator, resume_dir, logger)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("model: %.1f M parameters; %d training examples, %d validation clips; %d processes on %s; "
                "global batch %d x %d accumulation; %d optimizer steps (%d per epoch); metrics %s, selecting by %s; "
                "training shortcuts %s", n_params / 1e6, len(data.train_set), len(data.val_set),
                accelerator.num_processes, accelerator.device, cfg.optim.batch_size, accum, total_steps,
                data.steps_per_epoch, ", ".join(metrics), select_metric,
                "on" if cfg.model.efficient_training else "off (stock BART layers)")

    def validate_and_checkpoint(epoch: int, batch_in_epoch: int) -> None:
        if batch_in_epoch >= batches_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        result = validate(model, data.val_set, data.collator, tokenizer, accelerator, generation_config, metrics,
                          cfg.eval.batch_size, predictions_path(cfg.output_dir, global_step),
                          hint=undertrained_hint(global_step, len(data.train_set), cfg.optim.epochs, cfg.optim.lr),
                          loader=val_loader)
        scores = result.scores
        logger.info("validation at step %d (epoch %.2f):\n%s", global_step,
                    epoch + batch_in_epoch / batches_per_epoch, format_scores(scores))
        accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=global_step)
        history.append({"step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "scores": scores,
                        "all_empty": result.stats.all_empty, "distinct_captions": result.stats.distinct})
        best = best_entry(history, select_metric)
        is_best = best is not None and best["step"] == global_step
        save_checkpoint(manager, accelerator, model, tokenizer, global_step, {
            "global_step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "scores": scores,
            "all_empty": result.stats.all_empty, "select_metric": select_metric, "history": history,
            # What the data position means, checked at resume (training.preflight.check_launch).
            "layout": {"batch_size": cfg.optim.batch_size, "gradient_accumulation_steps": accum,
                       "processes": accelerator.num_processes}}, is_best)
        if is_best:
            logger.info("new best %s %.4f at step %d -> %s", select_metric, scores[select_metric], global_step,
                        manager.best_dir)

    # ---------------------------------------------------------------- the loop
    every = cfg.eval.every_steps
    losses = LossLog(accelerator, cfg.optim.batch_size)
    # closed on the way out of an error too, so a one-line error starts on its own line
    with tqdm(total=total_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process,
              dynamic_ncols=True) as bar:
        for epoch in range(start_epoch, cfg.optim.epochs):
            data.train_set.set_epoch(epoch)
            data.sampler.set_epoch(epoch)
            first = start_batch if epoch == start_epoch else 0
            data.sampler.set_start(first)
            model.train()
            for batch_index, batch in enumerate(data.loader, start=first):
                group_start = batch_index - batch_index % accum
                group_size = min(accum, batches_per_epoch - group_start)
                is_step = batch_index + 1 == group_start + group_size
                if batch_index == group_start:
                    # Dropout depends only on (seed, process, step): a resumed run is exact.
                    torch.manual_seed(step_seed(cfg.seed, accelerator.process_index, global_step))
                inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()
                          if isinstance(v, torch.Tensor)}
                if "mcm_labels" in batch:  # counted on the host: the MCM loss then never waits for the GPU
                    inputs["mcm_max_rows"] = mcm_max_rows(batch["mcm_labels"])
                with contextlib.nullcontext() if is_step else accelerator.no_sync(model):
                    out = model(**inputs)
                    accelerator.backward(out.loss / group_size)
                losses.add(out)
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
                    record = losses.record(scheduler.get_last_lr()[0], epoch)
                    accelerator.log(record, step=global_step)
                    bar.set_postfix(loss=f"{record['train/loss']:.3f}", lr=f"{record['train/lr']:.2e}")
                    logger.info("step %d epoch %d loss %.4f caption %.4f mcm %.4f lr %.3e %.1f examples/s", global_step,
                                epoch, record["train/loss"], record["train/caption_loss"], record["train/mcm_loss"],
                                record["train/lr"], record["train/examples_per_s"])
                if every is not None and global_step % every == 0:
                    validate_and_checkpoint(epoch, batch_index + 1)
            if every is None:
                validate_and_checkpoint(epoch, batches_per_epoch)
    if every is not None and (not history or history[-1]["step"] != global_step):
        validate_and_checkpoint(cfg.optim.epochs - 1, batches_per_epoch)

    if accelerator.is_main_process:
        best = write_summary(manager, history, select_metric, global_step)
        if best is not None:
            logger.info("done: best %s %.4f at step %d (after epoch %d); model folder %s\n%s", select_metric,
                        best["scores"][select_metric], best["step"], best["epoch"], manager.best_dir,
                        format_scores(best["scores"]))
        else:
            logger.warning("done, but no validation pass wrote a non-empty caption, so there is no best/ folder; %s",
                           undertrained_hint(global_step, len(data.train_set), cfg.optim.epochs, cfg.optim.lr))
    accelerator.wait_for_everyone()
    stop_heartbeat()
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
    from training.distributed import lost_ranks

    path = argv.pop(0) if argv and "=" not in argv[0] else None
    try:
        return train(load_config(path, argv))
    except UserError as error:
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a failed collective (DistBackendError, gloo's): did another rank die?
        lost = lost_ranks()
        if lost is None:
            raise
        print(f"train.py: error: {one_line(lost)} [{type(error).__name__}: {str(error).splitlines()[0][:200]}]",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
