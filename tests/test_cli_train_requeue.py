"""A requeue on another number of processes (docs/cluster.md): a run checkpointed by 2 processes
resumes with 1, and one checkpointed by 1 resumes with 2. At resume every process holds the
checkpoint's weights and optimizer state, and from there the processes together take exactly
the global batches that the uninterrupted 2-process run took, each process its share.

The runs go through a runner that records what each process did: every batch its sampler served
(process, processes, epoch, example indices) and, right after resuming, whether its model and
optimizer equal the checkpoint's files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from tests.helpers import free_port
from tests.test_cli_train import REPO, TINY, _env, write_split

RUNNER = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import load_file
    import training.checkpoints as checkpoints
    from training.sampler import GlobalBatchSampler

    def record(entry):
        with open(os.environ["RECORD"], "a") as handle:
            handle.write(json.dumps(entry) + "\\n")

    served = GlobalBatchSampler.__iter__
    def serve(self):
        for batch in served(self):
            record({"process": self.process_index, "processes": self.num_processes, "epoch": self.epoch,
                    "batch": batch})
            yield batch
    GlobalBatchSampler.__iter__ = serve

    resume = checkpoints.resume_position
    def resume_and_compare(manager, accelerator, resume_dir, logger):
        position = resume(manager, accelerator, resume_dir, logger)
        if resume_dir is not None:
            saved = load_file(os.path.join(resume_dir, "model", "model.safetensors"))
            model = accelerator.unwrap_model(accelerator._models[0]).state_dict()
            optimizer = accelerator._optimizers[0].state_dict()["state"]
            saved_optimizer = torch.load(os.path.join(resume_dir, "state", "optimizer.bin"), weights_only=False)["state"]
            record({"process": accelerator.process_index, "resumed_from": os.path.basename(resume_dir),
                    "weights_equal": all(torch.equal(model[k], v) for k, v in saved.items()),
                    "optimizer_equal": sorted(optimizer) == sorted(saved_optimizer) and all(
                        torch.equal(optimizer[i][n], saved_optimizer[i][n]) for i in saved_optimizer
                        for n in saved_optimizer[i])})
        return position
    checkpoints.resume_position = resume_and_compare

    import train
    sys.exit(train.main(sys.argv[1:]))
""")


def _train(tmp_path, name: str, processes: int, overrides: list[str]) -> list[dict]:
    """Runs (or resumes) ``output_dir=tmp_path/name`` with ``processes`` processes; what they recorded."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes",
        str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port())]
    record = tmp_path / f"{name}.jsonl"
    run = subprocess.run(launcher + [str(runner), "cfg/tiny.yaml"] + TINY + overrides +
                         [f"output_dir={tmp_path / name}"], cwd=REPO, env={**_env(), "RECORD": str(record)},
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in record.read_text().splitlines()]


def _requeue(tmp_path, source: str, target: str, keep_until: int) -> None:
    """``target``: a copy of the run folder ``source`` as a job killed after its checkpoint of step
    ``keep_until`` left it (the later checkpoints never written)."""
    shutil.copytree(tmp_path / source, tmp_path / target)
    for folder in (tmp_path / target / "checkpoints").glob("step_*"):
        if int(folder.name.split("_")[1]) > keep_until:
            shutil.rmtree(folder)


def _global_batches(record: list[dict]) -> list[tuple[int, list[int]]]:
    """``(epoch, global batch)`` in training order from the batches each process served: process
    ``p`` of ``P`` holds items ``p::P`` of each global batch."""
    served = [r for r in record if "batch" in r]
    if not served:
        return []
    processes = served[0]["processes"]
    assert all(r["processes"] == processes for r in served)
    shares = [[r for r in served if r["process"] == p] for p in range(processes)]
    assert len({len(share) for share in shares}) == 1  # every process took a share of every batch
    batches = []
    for parts in zip(*shares):
        assert len({part["epoch"] for part in parts}) == 1
        merged = [None] * sum(len(part["batch"]) for part in parts)
        for p, part in enumerate(parts):
            merged[p::processes] = part["batch"]
        batches.append((parts[0]["epoch"], merged))
    return batches


def test_resume_with_fewer_then_more_processes_takes_the_uninterrupted_runs_batches(tmp_path):
    data = write_split(tmp_path / "data", 8, 3)
    # 8 examples in global batches of 2 (one per process with 2): 4 steps per epoch, 8 in all;
    # checkpoints at steps 3 (epoch 0, batch 3) and 6 (epoch 1, batch 2) fall mid-epoch.
    common = data + ["optim.epochs=2", "optim.batch_size=2", "eval.every_steps=3", "eval.keep_best=5"]
    full = _global_batches(_train(tmp_path, "full", 2, common))
    assert len(full) == 8 and len({tuple(batch) for _, batch in full}) > 1

    _requeue(tmp_path, "full", "fewer", keep_until=3)  # 2 processes -> 1
    fewer = _train(tmp_path, "fewer", 1, common)
    _requeue(tmp_path, "fewer", "more", keep_until=6)  # step 6, written by 1 process -> 2
    more = _train(tmp_path, "more", 2, common)

    for name, record, step, position, before, processes in (("fewer", fewer, 3, "epoch 0, batch 3", 2, 1),
                                                            ("more", more, 6, "epoch 1, batch 2", 1, 2)):
        # Every process starts from the checkpoint's weights and optimizer state ...
        assert sorted((r for r in record if "resumed_from" in r), key=lambda r: r["process"]) == [
            {"process": p, "resumed_from": f"step_0000000{step}", "weights_equal": True, "optimizer_equal": True}
            for p in range(processes)], name
        log = (tmp_path / name / "train.log").read_text()
        assert f"(step {step}, {position})" in log
        assert f"written by {before} process(es), this run has {processes}" in log
        # ... and together they take the global batches the uninterrupted run took after that step.
        assert _global_batches(record) == full[step:], name
