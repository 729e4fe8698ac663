"""Checkpoints saved under one transformers major load under the other with the same results (design §10).

The test's own process runs one major; a subprocess runs the other: under 5.x (``make
test-transformers5``) the 4.57 side is this interpreter without the transformers 5 overlay on
PYTHONPATH, under 4.57 the 5.x side is the overlay at ``.cache/transformers5``. Each side saves
a tiny random-weight model as a ``save_pretrained`` folder and as an authors'-style ``.bin``
state dict, and records what :func:`modeling.load_pretrained` makes of both its own and the
other side's checkpoints (:mod:`tests.modeling.checkpoint_worker`). A checkpoint loaded by the
other major must give what it gives under the major that saved it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from modeling import GenerationOptions, compat
from tests.helpers import TEST_THREADS, user_env
from tests.modeling.checkpoint_worker import SAVED_NUM_BEAMS, record, save_checkpoints

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / ".cache" / "transformers5"

pytestmark = pytest.mark.numerics


def _provides_transformers(entry: str) -> bool:
    return os.path.isfile(os.path.join(entry, "transformers", "__init__.py"))


def _other_major() -> tuple[int, str]:
    """The other major and the PYTHONPATH that gives it to ``sys.executable``."""
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if compat.TRANSFORMERS_5:  # 4.57 is the venv's own: drop the overlay
        return 4, os.pathsep.join(entry for entry in entries if not _provides_transformers(entry))
    if not _provides_transformers(str(OVERLAY)):
        pytest.skip("no transformers 5 overlay at .cache/transformers5: `make test-transformers5` builds it "
                    "and runs this test under 5.x, loading 4.57's checkpoints and 5.x's both ways")
    return 5, os.pathsep.join([str(OVERLAY), *entries])


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """``{"here" | "there": {checkpoint root: records}}`` with both sides' checkpoints in each."""
    major, pythonpath = _other_major()
    root = tmp_path_factory.mktemp("across_majors")
    here, there, out = root / "here", root / "there", root / "there.pt"
    save_checkpoints(here)
    env = user_env(PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(TEST_THREADS), MKL_NUM_THREADS=str(TEST_THREADS))
    command = [sys.executable, "-m", "tests.modeling.checkpoint_worker", str(major), str(out), str(there), str(here)]
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    assert f"transformers {major}." in process.stdout, process.stdout
    other = torch.load(out, weights_only=False)
    # Two majors really ran: the subprocess checked its own, this is the test's.
    assert int(other["version"].split(".")[0]) == major != int(transformers.__version__.split(".")[0])
    return {"here": {str(here): record(here), str(there): record(there)}, "there": other["records"],
            "roots": {"here": str(here), "there": str(there)}}


@pytest.mark.parametrize("fmt", ["folder", "bin"])
@pytest.mark.parametrize("saved_by, loaded_by", [("here", "there"), ("there", "here")])
def test_a_checkpoint_gives_the_same_results_under_the_other_major(sides, saved_by, loaded_by, fmt):
    checkpoint = sides["roots"][saved_by]
    want = sides[saved_by][checkpoint][fmt]  # loaded by the major that saved it
    got = sides[loaded_by][checkpoint][fmt]
    assert torch.equal(got["caption_ids"], want["caption_ids"])  # the tokenizer
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)
    assert torch.equal(got["ids"], want["ids"])
    assert got["captions"] == want["captions"]
    # The folder's generation config; the bin checkpoint has none (the design §7 defaults).
    saved_beams = SAVED_NUM_BEAMS if fmt == "folder" else GenerationOptions().num_beams
    assert got["num_beams"] == want["num_beams"] == saved_beams
    assert torch.equal(got["saved_config_ids"], want["saved_config_ids"])
    for kind in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        torch.testing.assert_close(got[kind], want[kind], rtol=1e-4, atol=1e-6)
