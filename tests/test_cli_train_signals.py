"""train.py says when a run has not learned, and scores what the machine can.

Runs the real entry point in a subprocess, from a folder outside the repository with relative
paths, through a small wrapper that replaces one function per run: the captioning routine (to
make validation write empty captions, then one caption for every clip) or the metric
requirements check (to make SPICE unavailable whatever this machine has). The three runs share
one process, one after the other: one interpreter start instead of three.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_cli_train import REPO, TINY, _env, run_result, write_split

RUNNER = textwrap.dedent("""
    # Runs train.main() once per entry of the JSON list in sys.argv[1], one after the other in this
    # process: (name, arguments, captions, no_spice). With captions, validation pass k writes
    # captions[k] for every clip (one generate call per pass: eval.batch_size covers the split; the
    # last entry repeats); with no_spice, the requirements check says CoreNLP is missing, so SPICE and
    # SPIDEr cannot run. Run <name>'s stderr goes to <name>.stderr, its exit status to <name>.status.
    import json, sys
    sys.path.insert(0, {repo!r})
    import scoring.java
    import training.validation as validation
    from tests.helpers import without_spice
    from tests.helpers_train_runner import run_and_record
    real_generate, real_check = validation.generate_captions, scoring.java.check_requirements

    def fake_generate(passes):
        calls = [0]
        def fake(model, tokenizer, inputs, generation_config):
            text = passes[min(calls[0], len(passes) - 1)]
            calls[0] += 1
            return [text] * inputs["input_ids"].shape[0]
        return fake

    for name, args, captions, no_spice in json.load(open(sys.argv[1])):
        validation.generate_captions = real_generate if captions is None else fake_generate(captions)
        scoring.java.check_requirements = without_spice(real_check) if no_spice else real_check
        run_and_record(args, name)
""")

# name: (overrides, captions of the validation passes or None for the model's own, SPICE unavailable).
RUNS = {
    # First in its fresh process: Accelerate's tied-weights notice must be quiet from a process's first run on.
    "no_spice": (["optim.epochs=1", "eval.metrics=[cider_d,spice,spider]", "eval.select_metric=spider"], None, True),
    # Pass 1 writes nothing (CIDEr-D 0), pass 2 one unrelated caption for all clips (also 0): the tie
    # would go to the earlier pass, but an all-empty pass never qualifies.
    "empty_then_unrelated": (["optim.epochs=2", "eval.batch_size=16"], ["", "zebra xylophone"], False),
    "never_captions": (["optim.epochs=2", "eval.batch_size=16"], [""], False),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """All runs of RUNS in one fresh process (one interpreter start), from a folder outside the
    repository with relative paths; per run, its exit status and stderr, and its run folder."""
    folder = tmp_path_factory.mktemp("signals")
    write_split(folder / "data", 8, 4)
    data = ["data.train_csv=data/train.csv", "data.val_csv=data/val.csv", "data.encodec_base_path=data/enc",
            "data.clap_base_path=data/clap"]
    spec = [(name, ["cfg/tiny.yaml"] + TINY + data + [f"output_dir={name}"] + args, captions, no_spice)
            for name, (args, captions, no_spice) in RUNS.items()]
    (folder / "runs.json").write_text(json.dumps(spec))
    (folder / "runner.py").write_text(RUNNER.format(repo=str(REPO)))
    process = subprocess.run([sys.executable, "runner.py", "runs.json"], cwd=folder, env=_env(), capture_output=True,
                             text=True, timeout=600)
    return {name: (run_result(process, args, str(folder / name)), folder / name) for name, args, _, _ in spec}


def test_empty_captions_warn_and_never_become_best(runs):
    result, run = runs["empty_then_unrelated"]
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "4 of 4 captions for validation clips are empty (0 distinct captions); the model is under-trained " \
           "after 1 optimizer steps on 8 training captions: raise optim.epochs (now 2), optim.lr" in log
    assert "4 of 4 validation clips got the same caption 'zebra xylophone' (1 distinct caption)" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == 2 and summary["best_scores"]["cider_d"] == 0
    assert [h["all_empty"] for h in summary["history"]] == [True, False]
    assert (run / "best" / "config.json").is_file()


def test_a_run_that_never_captions_has_no_best_and_says_so(runs):
    result, run = runs["never_captions"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no validation pass wrote a non-empty caption, so there is no best/ folder" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] is None and summary["best_dir"] is None and summary["final_step"] == 2
    assert not (run / "best").exists()
    assert len(list((run / "checkpoints").glob("step_*"))) >= 1  # the run itself is kept


def test_spice_unavailable_selects_checkpoints_by_cider_d(runs):
    result, run = runs["no_spice"]
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log.count("cannot compute SPICE, SPIDEr: Stanford CoreNLP 3.6.0 jars missing; fix: make setup") == 1
    assert "selection metric spider is unavailable here; selecting checkpoints by cider_d instead" in log
    assert "metrics cider_d, selecting by cider_d" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["select_metric"] == "cider_d" and set(summary["best_scores"]) == {"cider_d"}
    state = json.loads(next((run / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    assert state["select_metric"] == "cider_d"
    assert (run / "best").is_dir()  # paths were typed relative to the run's folder, and landed there
    assert "Removed shared tensor" not in result.stderr and "tied token embeddings" in log
