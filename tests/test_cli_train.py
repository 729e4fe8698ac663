"""End-to-end tests of ``train.py`` / ``train.sh`` on CPU with a tiny from-scratch model.

Every test writes its own random features (codes (T, 16), CLAP (512,)) and CSVs, and runs the
real entry point in a subprocess: overfitting 8 captions, a 2-process data-parallel run whose
validation equals a single-process evaluation, SIGKILL + resume equal to an uninterrupted run,
and one-line configuration errors.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import CAPTIONS as ALL_CAPTIONS
from tests.helpers import free_port, user_env

REPO = Path(__file__).resolve().parents[1]

CAPTIONS = ALL_CAPTIONS[:8]


def _env() -> dict:
    # PYTHONPATH: runner scripts written to a temporary folder import tests.*; the runs of the
    # entry points exactly as a user types them are in tests/test_own_data.py (tests.helpers.user_env).
    return user_env(PYTHONPATH=str(REPO))


def write_split(root: Path, n_train: int, n_val: int, seed: int = 0) -> list[str]:
    """Random features for max(n_train, n_val) clips; clip i is captioned CAPTIONS[i % 8].

    Returns:
        The overrides pointing a recipe at these files.
    """
    rng = np.random.default_rng(seed)
    (root / "enc" / "clips").mkdir(parents=True)
    (root / "clap" / "clips").mkdir(parents=True)
    for i in range(max(n_train, n_val)):
        frames = int(rng.integers(15, 60))
        np.save(root / "enc" / "clips" / f"{i}.npy", rng.integers(0, 1024, (frames, 16)).astype(np.int64))
        embedding = rng.standard_normal(512).astype(np.float32)
        np.save(root / "clap" / "clips" / f"{i}.npy", embedding / np.linalg.norm(embedding))
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "caption"])
        for i in range(n_train):
            writer.writerow([f"clips/{i}.npy", CAPTIONS[i % len(CAPTIONS)]])
    with open(root / "val.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path"] + [f"caption_{k}" for k in range(1, 6)])
        for i in range(n_val):
            caption = CAPTIONS[i % len(CAPTIONS)]
            writer.writerow([f"clips/{i}.npy", caption, caption.replace("a ", "the ", 1), caption, caption, caption])
    return [f"data.train_csv={root / 'train.csv'}", f"data.val_csv={root / 'val.csv'}",
            f"data.encodec_base_path={root / 'enc'}", f"data.clap_base_path={root / 'clap'}"]


# A small, fast variant of cfg/tiny.yaml (the recipe file itself is used, these override it).
TINY = ["model.d_model=32", "model.ffn_dim=64", "model.max_position_embeddings=64", "eval.metrics=[cider_d]",
        "log.trackers=[]", "data.num_workers=0"]


def run_train(args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable, "train.py"]) + ["cfg/tiny.yaml"] + TINY + args
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


IN_ONE_PROCESS = textwrap.dedent("""
    # Runs train.main() once per (arguments, name) of the JSON list in sys.argv[1], one after the
    # other in this process; run <name> writes its stderr to <name>.stderr and its exit status to
    # <name>.status.
    import json, sys
    from tests.helpers_train_runner import run_and_record
    for args, name in json.load(open(sys.argv[1])):
        run_and_record(args, name)
""")


def run_train_in_one_process(folder: Path, runs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Like ``run_train`` for each argument list, but all runs in ONE fresh process, one after the
    other: one interpreter start (torch, transformers) for all of them.

    Returns:
        Per run, its exit status and stderr (see ``run_result``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec = [(["cfg/tiny.yaml"] + TINY + args, str(folder / f"run_{k}")) for k, args in enumerate(runs)]
    (folder / "runs.json").write_text(json.dumps(spec))
    (folder / "runner.py").write_text(IN_ONE_PROCESS)
    process = subprocess.run([sys.executable, str(folder / "runner.py"), str(folder / "runs.json")], cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=300 * len(runs))
    return [run_result(process, args, name) for args, name in spec]


def run_result(process: subprocess.CompletedProcess, args: list[str], name: str) -> subprocess.CompletedProcess:
    """The exit status and stderr that a runner process wrote for its run ``name``; the process's
    own where it never got to write them (it died before or during that run)."""
    status, stderr = Path(f"{name}.status"), Path(f"{name}.stderr")
    return subprocess.CompletedProcess(args, int(status.read_text()) if status.exists() else process.returncode or 1,
                                       "", stderr.read_text() if stderr.exists() else process.stderr)


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_overfit_eight_captions_then_generate_them(tmp_path):
    data = write_split(tmp_path / "data", 8, 8)
    out = tmp_path / "run"
    result = run_train(data + [f"output_dir={out}", "optim.epochs=80", "optim.lr=5e-3", "model.dropout=0.0",
                               "eval.every_steps=1000", "log.every_steps=20", "log.trackers=[tensorboard]"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_predictions(next((out / "predictions").glob("*.csv")))
    assert [r["file_path"] for r in rows] == [f"clips/{i}.npy" for i in range(8)]
    assert [r["prediction"] for r in rows] == CAPTIONS
    assert [r["caption_1"] for r in rows] == CAPTIONS
    # The run folder holds what users look for.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_step"] == 80 and summary["best_scores"]["cider_d"] > 5
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / "best" / name).is_file(), name
    assert "caption" in (out / "train.log").read_text()
    assert "optim:" in (out / "config.yaml").read_text()
    assert list((out / "enclap").rglob("events.out.tfevents.*")), "no TensorBoard events"


def _evaluate_single_process(model_dir: Path, val_csv: Path, enc: Path, clap: Path) -> tuple[list[str], dict]:
    """A plain one-process evaluation: one clip at a time, no Accelerate, scored once."""
    from transformers import BartTokenizerFast

    from data.training.collator import EnClapCollator
    from data.training.dataset import CaptionDataset
    from modeling import EnClapBartForConditionalGeneration
    from scoring import compute_scores

    model = EnClapBartForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    tokenizer = BartTokenizerFast.from_pretrained(str(model_dir))
    dataset = CaptionDataset(str(val_csv), str(enc), str(clap), train=False, max_frames=61)
    collator = EnClapCollator()
    predictions = []
    for i in range(len(dataset)):
        batch = collator([dataset[i]])
        ids = model.generate(**{k: batch[k] for k in ("input_ids", "encodec_mask", "attention_mask", "clap_embedding")})
        predictions.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return predictions, compute_scores(predictions, dataset.references, ["cider_d"])


def test_two_process_data_parallel_validation_equals_single_process(tmp_path, tiny_ckpt):
    data = write_split(tmp_path / "data", 8, 9)  # 9 clips: shards of 5 and 4
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "train.py"]  # a fixed port lets two test runs collide
    # Fine-tuned from the tests' random checkpoint (large random weights: its captions differ from
    # clip to clip) at a tiny learning rate, so the captions compared below are long and differ;
    # trained from scratch for 6 steps they would all be empty and the comparison would say little.
    result = run_train(data + [f"output_dir={out}", "optim.epochs=3", "optim.batch_size=4", "optim.lr=1e-6",
                               "model.init=enclap", f"model.name_or_path={tiny_ckpt}",
                               "eval.batch_size=1", "eval.every_steps=4", "data.group_by_length=true"],
                       launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in (out / "train.log").read_text()
    ckpt = out / "checkpoints" / "step_00000006"  # 3 epochs x 2 global batches of 4
    state = json.loads((ckpt / "trainer_state.json").read_text())
    predictions, scores = _evaluate_single_process(ckpt / "model", tmp_path / "data" / "val.csv",
                                                   tmp_path / "data" / "enc", tmp_path / "data" / "clap")
    rows = read_predictions(out / "predictions" / "step_00000006.csv")
    assert [r["file_path"] for r in rows] == [f"clips/{i}.npy" for i in range(9)]  # each clip once, in order
    assert [r["prediction"] for r in rows] == predictions
    assert len(set(predictions)) > 1 and all(predictions), predictions
    assert state["scores"]["cider_d"] == pytest.approx(scores["cider_d"], abs=1e-9)


KILLER = textwrap.dedent("""
    # Runs train.main() and SIGKILLs this process right after optimizer step {kill_at}.
    import os, signal, sys, torch
    calls = [0]
    original = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    torch.optim.AdamW.step = step
    import train
    sys.exit(train.main(sys.argv[1:]))
""")


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    data = write_split(tmp_path / "data", 12, 3)
    # 12 examples / (batch 2 x accumulation 2) = 3 optimizer steps per epoch; checkpoints every
    # 2 steps fall mid-epoch; dropout, MCM masking and a loader worker on.
    common = data + ["optim.epochs=2", "optim.batch_size=2", "optim.gradient_accumulation_steps=2",
                     "model.dropout=0.1", "eval.every_steps=2", "eval.keep_best=1", "data.num_workers=1"]
    killed_dir = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(kill_at=3))
    killed = run_train(common + [f"output_dir={killed_dir}"], launcher=[sys.executable, str(script)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    done = sorted(p.name for p in (killed_dir / "checkpoints").glob("step_*"))
    assert done[-1] == "step_00000002"  # killed between the checkpoints of steps 2 and 4

    # The rerun starts a fresh process, as after a crash; the uninterrupted run follows in that process.
    resumed, full = run_train_in_one_process(tmp_path / "rerun", [common + [f"output_dir={killed_dir}"],
                                                                   common + [f"output_dir={tmp_path / 'full'}"]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert full.returncode == 0, full.stderr[-3000:]
    assert "resuming from" not in full.stderr
    final = "checkpoints/step_00000006/model/model.safetensors"
    expected, actual = load_file(tmp_path / "full" / final), load_file(killed_dir / final)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
    # Same validation history (scores of every checkpoint) as the uninterrupted run.
    full_state = json.loads((tmp_path / "full" / "checkpoints/step_00000006/trainer_state.json").read_text())
    resumed_state = json.loads((killed_dir / "checkpoints/step_00000006/trainer_state.json").read_text())
    assert resumed_state["history"] == full_state["history"]


def test_training_shortcuts_off_gives_the_same_weights(tmp_path):
    data = write_split(tmp_path / "data", 8, 3)
    # MCM on, dropout off: with dropout the shortcuts draw their masks from their own, cheaper
    # generator (modeling/attention.py; tested there), so only without it are the steps equal.
    common = data + ["optim.epochs=2", "optim.batch_size=4", "model.dropout=0.0", "eval.every_steps=4"]
    flags = ("false", "true")  # stock layers first, in a fresh process; the switch is per model, nothing global
    results = run_train_in_one_process(tmp_path, [common + [f"output_dir={tmp_path / f'efficient_{flag}'}",
                                                            f"model.efficient_training={flag}"] for flag in flags])
    runs = {}
    for flag, result in zip(flags, results):
        out = tmp_path / f"efficient_{flag}"
        assert result.returncode == 0, result.stderr[-3000:]
        said = "training shortcuts on" if flag == "true" else "training shortcuts off (stock BART layers)"
        assert said in (out / "train.log").read_text()
        runs[flag] = load_file(out / "checkpoints/step_00000004/model/model.safetensors")
    for key, stock in runs["false"].items():
        torch.testing.assert_close(runs["true"][key], stock, rtol=1e-4, atol=1e-5, msg=key)
    # ... and the two runs really took different paths: on CPU, a rerun of the same code is bit for
    # bit the same, while the shortcuts round differently (model.efficient_training reaches the model).
    assert any(not torch.equal(runs["true"][key], stock) for key, stock in runs["false"].items())


@pytest.mark.parametrize("case", ["unknown_key", "bad_value", "unknown_metric", "missing_csv", "missing_feature"])
def test_config_errors_are_one_line(tmp_path, case, capsys):
    import train

    data = write_split(tmp_path / "data", 4, 3)
    args = ["cfg/tiny.yaml"] + data + [f"output_dir={tmp_path / 'run'}"]
    if case == "unknown_key":
        args.append("optim.learning_rate=1e-4")
        expected = ["optim.learning_rate", "optim.lr,"]  # names the bad key and lists the valid ones
    elif case == "bad_value":
        args.append("optim.lr_scheduler=exponential")
        expected = ["optim.lr_scheduler", "exponential", "inverse_sqrt"]
    elif case == "unknown_metric":
        args.append("eval.metrics=[cider_d,bleurt]")
        expected = ["eval.metrics", "bleurt", "meteor"]
    elif case == "missing_csv":
        args.append(f"data.val_csv={tmp_path / 'nope.csv'}")
        expected = ["data.val_csv", "nope.csv"]
    else:
        (tmp_path / "data" / "clap" / "clips" / "2.npy").unlink()
        expected = [str(Path("clap") / "clips" / "2.npy")]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        status = train.main(args)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_train_sh_reports_unknown_key_without_launcher_traceback(tmp_path):
    result = subprocess.run(["sh", "train.sh", "cfg/tiny.yaml", "optim.nope=1", f"output_dir={tmp_path}"], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "unknown config key 'optim.nope'" in result.stderr


def test_previous_layout_checkpoint_loads_and_resumes(tmp_path):
    """A run folder written before the packages moved resumes exactly where an uninterrupted run goes."""
    import shutil

    small = ["optim.epochs=2", "optim.batch_size=4", "log.every_steps=1", "model.d_model=8", "model.ffn_dim=16",
             "model.attention_heads=2", "model.vocab_size=120", "model.encoder_layers=1", "model.decoder_layers=1",
             "model.dropout=0.0"]
    data = write_split(tmp_path / "data", 8, 4)  # the data the fixture was trained on (same seed)
    old_run = tmp_path / "old_run"
    shutil.copytree(REPO / "tests" / "fixtures" / "previous_layout_run", old_run)
    # The resumed run starts a fresh process; the uninterrupted run follows in that process.
    resumed, fresh = run_train_in_one_process(tmp_path / "runs", [data + small + [f"output_dir={old_run}"],
                                                                  data + small + [f"output_dir={tmp_path / 'fresh'}"]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "step 2" in resumed.stderr
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming from" not in fresh.stderr
    final = "checkpoints/step_00000004"
    old_state = json.loads((old_run / final / "trainer_state.json").read_text())
    new_state = json.loads((tmp_path / "fresh" / final / "trainer_state.json").read_text())
    def scores(state):
        return [(h["step"], h["epoch"], h["scores"]) for h in state["history"]]

    assert scores(old_state) == scores(new_state)
    old_weights = load_file(old_run / final / "model" / "model.safetensors")
    new_weights = load_file(tmp_path / "fresh" / final / "model" / "model.safetensors")
    assert old_weights.keys() == new_weights.keys()
    for key in old_weights:
        torch.testing.assert_close(old_weights[key], new_weights[key], rtol=1e-5, atol=1e-6)
