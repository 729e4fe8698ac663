"""GPU-readiness of training, checked on CPU: bf16 autocast through Accelerate, fused AdamW (on
CPU too), DDP without find_unused_parameters, TF32 only on CUDA, the recipes' mixed precision,
and a validation loader built once with persistent workers."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training.config import load_config
from training.distributed import allow_tf32_matmuls, allow_unused_parameters
from training.optim import build_optimizer, fused_adamw_applies
from training.validation import validation_loader

REPO = Path(__file__).resolve().parents[2]
GPU_RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "cfg").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipes_train_in_bf16_unless_overridden(recipe):
    assert load_config(str(REPO / recipe)).optim.mixed_precision == "bf16"
    for value in ("no", "fp16"):
        assert load_config(str(REPO / recipe), [f"optim.mixed_precision={value}"]).optim.mixed_precision == value
    assert load_config(str(REPO / "cfg/tiny.yaml")).optim.mixed_precision is None  # CPU recipe: fp32


OPTIM = SimpleNamespace(weight_decay=0.01, lr=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)


def test_adamw_is_fused_on_cpu_and_cuda():
    model = torch.nn.Linear(3, 2)
    assert fused_adamw_applies(list(model.parameters()))
    assert not fused_adamw_applies([])
    assert not fused_adamw_applies([torch.empty(2, device="meta")])
    assert not fused_adamw_applies([torch.empty(2), torch.empty(2, device="meta")])  # one device type only
    assert not fused_adamw_applies([torch.empty(2, dtype=torch.int64)])
    assert build_optimizer(model, OPTIM).defaults["fused"]
    assert not build_optimizer(model, OPTIM, fused=False).defaults.get("fused")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        assert build_optimizer(model.cuda(), OPTIM).defaults["fused"]


@pytest.mark.numerics
def test_fused_adamw_steps_like_the_default_one():
    # Both parameter groups (decayed and not), several steps: the same update up to rounding.
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))]
    models.append(copy.deepcopy(models[0]))
    initial = copy.deepcopy(models[0])
    optimizers = [build_optimizer(models[0], OPTIM), build_optimizer(models[1], OPTIM, fused=False)]
    assert [bool(o.defaults.get("fused")) for o in optimizers] == [True, False]
    for step in range(5):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        for model, optimizer in zip(models, optimizers):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for fused, default, before in zip(models[0].parameters(), models[1].parameters(), initial.parameters()):
        torch.testing.assert_close(fused, default, rtol=1e-5, atol=1e-7)
        assert not torch.equal(fused, before)  # the steps moved every parameter


def test_tf32_is_allowed_for_training_on_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert not allow_tf32_matmuls(torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert allow_tf32_matmuls(torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_unused_parameters_only_with_layer_drop():
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = SimpleNamespace(ddp_handler=DistributedDataParallelKwargs(find_unused_parameters=False))
    plain = SimpleNamespace(config=SimpleNamespace(encoder_layerdrop=0.0, decoder_layerdrop=0.0))
    assert not allow_unused_parameters(accelerator, plain)
    assert accelerator.ddp_handler.find_unused_parameters is False
    dropping = SimpleNamespace(config=SimpleNamespace(encoder_layerdrop=0.1, decoder_layerdrop=0.0))
    assert allow_unused_parameters(accelerator, dropping)
    assert accelerator.ddp_handler.find_unused_parameters is True


def test_validation_loader_is_this_process_share_with_persistent_workers():
    dataset = list(range(7))
    accelerator = SimpleNamespace(process_index=1, num_processes=3, device=torch.device("cpu"))
    loader = validation_loader(dataset, lambda items: items, accelerator, batch_size=2, num_workers=1)
    assert list(loader.dataset.indices) == [1, 4]
    assert loader.persistent_workers and loader.num_workers == 1
    assert [batch for _ in range(2) for batch in loader] == [[1, 4], [1, 4]]  # iterated twice, same workers
    assert not validation_loader(dataset, None, accelerator, 2, 0).persistent_workers


# Runs train.main(sys.argv[2:]) with a hook on every module that records the dtype of what each
# Linear layer returns during training forwards, then writes those dtypes to sys.argv[1].
RECORD_DTYPES = """
import json, sys, torch
seen = set()
def record(module, args, output):
    if module.training and isinstance(module, torch.nn.Linear):
        seen.add(str(output.dtype).replace("torch.", ""))
torch.nn.modules.module.register_module_forward_hook(record)
import train
status = train.main(sys.argv[2:])
json.dump(sorted(seen), open(sys.argv[1], "w"))
sys.exit(status)
"""


def test_the_recipes_mixed_precision_reaches_the_model_as_bf16_autocast(tmp_path):
    """The tiny model trained with the GPU recipes' own ``optim.mixed_precision`` (through train.py,
    Accelerate, autocast on CPU): the model's layers compute in bf16, the losses stay finite and a
    best checkpoint is written."""
    import json

    from tests.test_cli_train import TINY, _env, write_split

    (precision,) = {load_config(str(REPO / recipe)).optim.mixed_precision for recipe in GPU_RECIPES}
    data = write_split(tmp_path / "data", 8, 4)
    out = tmp_path / "run"
    (tmp_path / "runner.py").write_text(RECORD_DTYPES)
    command = [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "dtypes.json"), "cfg/tiny.yaml", *TINY,
               *data, f"output_dir={out}", "optim.epochs=2", f"optim.mixed_precision={precision}",
               "log.every_steps=1", "model.dropout=0.1"]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "dtypes.json").read_text()) == ["bfloat16"]
    log = (out / "train.log").read_text()
    losses = [float(x) for x in re.findall(r"step \d+ epoch \d+ loss ([0-9.naif]+)", log)]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses), log[-2000:]
    assert (out / "best" / "model.safetensors").is_file()
