"""train.py says when a run has not learned, and scores what the machine can.

Runs the real entry point in a subprocess, from a folder outside the repository with relative
paths, through a small wrapper that replaces one function: the captioning routine (to make
validation write empty captions, then one caption for every clip) or the metric requirements
check (to make SPICE unavailable whatever this machine has).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.test_cli_train import REPO, TINY, _env, write_split

FAKE_CAPTIONS = textwrap.dedent("""
    # Validation pass k (one generate call per pass: eval.batch_size covers the split) writes
    # the captions {passes}[k] for every clip; the last entry repeats.
    import sys
    sys.path.insert(0, {repo!r})
    import training.validation as validation
    passes, calls = {passes}, [0]
    def fake(model, tokenizer, inputs, generation_config):
        text = passes[min(calls[0], len(passes) - 1)]
        calls[0] += 1
        return [text] * inputs["input_ids"].shape[0]
    validation.generate_captions = fake
    import train
    sys.exit(train.main(sys.argv[1:]))
""")

NO_SPICE = textwrap.dedent("""
    # SPICE and SPIDEr cannot run: the requirements check says CoreNLP is missing.
    import sys
    sys.path.insert(0, {repo!r})
    import scoring.java
    from tests.helpers import without_spice
    scoring.java.check_requirements = without_spice(scoring.java.check_requirements)
    import train
    sys.exit(train.main(sys.argv[1:]))
""")


def _run(tmp_path: Path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Writes a split under tmp_path/data and runs the wrapper from tmp_path with relative paths."""
    write_split(tmp_path / "data", 8, 4)
    data = ["data.train_csv=data/train.csv", "data.val_csv=data/val.csv", "data.encodec_base_path=data/enc",
            "data.clap_base_path=data/clap"]
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(script)
    return subprocess.run([sys.executable, str(wrapper), "cfg/tiny.yaml"] + TINY + data + args, cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)


def test_empty_captions_warn_and_never_become_best(tmp_path):
    # Pass 1 writes nothing (CIDEr-D 0), pass 2 one unrelated caption for all clips (also 0): the tie would
    # go to the earlier pass, but an all-empty pass never qualifies.
    script = FAKE_CAPTIONS.format(repo=str(REPO), passes=repr(["", "zebra xylophone"]))
    result = _run(tmp_path, script, ["output_dir=run", "optim.epochs=2", "eval.batch_size=16"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "4 of 4 captions for validation clips are empty (0 distinct captions); the model is under-trained " \
           "after 1 optimizer steps on 8 training captions: raise optim.epochs (now 2), optim.lr" in log
    assert "4 of 4 validation clips got the same caption 'zebra xylophone' (1 distinct caption)" in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_step"] == 2 and summary["best_scores"]["cider_d"] == 0
    assert [h["all_empty"] for h in summary["history"]] == [True, False]
    assert (tmp_path / "run" / "best" / "config.json").is_file()


def test_a_run_that_never_captions_has_no_best_and_says_so(tmp_path):
    script = FAKE_CAPTIONS.format(repo=str(REPO), passes=repr([""]))
    result = _run(tmp_path, script, ["output_dir=run", "optim.epochs=2", "eval.batch_size=16"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no validation pass wrote a non-empty caption, so there is no best/ folder" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_step"] is None and summary["best_dir"] is None and summary["final_step"] == 2
    assert not (tmp_path / "run" / "best").exists()
    assert len(list((tmp_path / "run" / "checkpoints").glob("step_*"))) >= 1  # the run itself is kept


def test_spice_unavailable_selects_checkpoints_by_cider_d(tmp_path):
    script = NO_SPICE.format(repo=str(REPO))
    result = _run(tmp_path, script, ["output_dir=run", "optim.epochs=1", "eval.metrics=[cider_d,spice,spider]",
                                     "eval.select_metric=spider"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("cannot compute SPICE, SPIDEr: Stanford CoreNLP 3.6.0 jars missing; fix: make setup") == 1
    assert "selection metric spider is unavailable here; selecting checkpoints by cider_d instead" in log
    assert "metrics cider_d, selecting by cider_d" in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["select_metric"] == "cider_d" and set(summary["best_scores"]) == {"cider_d"}
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    assert state["select_metric"] == "cider_d"
    assert (tmp_path / "run" / "best").is_dir()  # paths were typed relative to tmp_path, and landed there
    assert "Removed shared tensor" not in result.stderr and "tied token embeddings" in log
