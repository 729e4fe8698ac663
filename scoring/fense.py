"""FENSE's two models: the sentence-embedding model and the fluency-error checker (design §8).

FENSE (and SPIDEr-FL, which uses only the checker) follow aac-metrics 0.6.0: the sentence model
is ``sentence-transformers/paraphrase-TinyBERT-L6-v2`` from the Hugging Face hub, the checker is
``echecker_clotho_audiocaps_base.ckpt`` (a fine-tuned ``bert-base-uncased``) from the FENSE
authors' GitHub release, kept in ``$FENSE_DATA`` (default ``torch.hub.get_dir()/fense_data``).
``download()`` fetches them through aac-metrics' own loaders (which check the checker's SHA-256)
and reports each file's size and checksum; ``load()`` loads them once per device.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

# aac-metrics' defaults (functional/sbert_sim.py DEFAULT_SBERT_SIM_MODEL, functional/fer.py
# DEFAULT_FER_MODEL and the checker's model_type); also listed by scoring.java's preflight.
SBERT_REPO = "sentence-transformers/paraphrase-TinyBERT-L6-v2"
CHECKER_NAME = "echecker_clotho_audiocaps_base"
CHECKER_BASE_REPO = "bert-base-uncased"


@dataclasses.dataclass(frozen=True)
class FenseModels:
    """The models FENSE and SPIDEr-FL run on (tests pass small ones of their own).

    Attributes:
        sbert: a ``sentence_transformers.SentenceTransformer`` (FENSE's similarity part).
        checker: an aac-metrics ``BERTFlatClassifier`` whose last output is the error logit.
        tokenizer: the checker's tokenizer.
    """

    sbert: Any
    checker: Any
    tokenizer: Any


_LOADED: dict[str, FenseModels] = {}


def load(device: str = "cpu") -> FenseModels:
    """aac-metrics' default FENSE models on ``device``, loaded once per process (validation repeats)."""
    if device not in _LOADED:
        from aac_metrics.functional.fense import _load_models_and_tokenizer

        sbert, checker, tokenizer = _load_models_and_tokenizer(
            sbert_model=SBERT_REPO, echecker=CHECKER_NAME, device=device)
        _LOADED[device] = FenseModels(sbert, checker, tokenizer)
    return _LOADED[device]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def describe_downloaded() -> list[str]:
    """One line per FENSE model present here: where, its size and its checksum (or hub revision)."""
    import torch
    from aac_metrics.functional.fer import _PRETRAIN_ECHECKERS_DICT
    from huggingface_hub import CacheNotFound, scan_cache_dir

    lines = []
    data_home = os.path.expanduser(os.getenv("FENSE_DATA", os.path.join(torch.hub.get_dir(), "fense_data")))
    ckpt = os.path.join(data_home, f"{CHECKER_NAME}.ckpt")
    if os.path.isfile(ckpt):
        actual, expected = _sha256(ckpt), _PRETRAIN_ECHECKERS_DICT[CHECKER_NAME][1]
        verdict = "matches aac-metrics'" if actual == expected else f"DIFFERS from aac-metrics' {expected}"
        lines.append(f"fluency checker {ckpt}: {_megabytes(os.path.getsize(ckpt))}, sha256 {actual} ({verdict})")
    try:
        repos = {repo.repo_id: repo for repo in scan_cache_dir().repos}
    except CacheNotFound:  # no hub cache yet
        repos = {}
    for repo_id in (SBERT_REPO, CHECKER_BASE_REPO):
        if repo_id in repos:
            repo = repos[repo_id]
            revisions = ", ".join(sorted(rev.commit_hash for rev in repo.revisions))
            lines.append(f"hub model {repo_id}: {_megabytes(repo.size_on_disk)}, revision {revisions}")
    return lines


def download(log: Callable[[str], None] = print) -> bool:
    """Fetches FENSE's models with aac-metrics' loaders, then logs size and checksum of each.

    Returns:
        True on success; a failure (offline, a bad checksum) is logged in one line, not raised.
    """
    log("metrics setup: downloading FENSE's sentence model and fluency checker (~1 GB, once)...")
    try:
        load("cpu")
    except Exception as err:  # network errors come in many types; report, never crash setup
        from common.errors import one_line

        log(f"metrics setup: FENSE download failed ({type(err).__name__}: {one_line(err)})")
        return False
    for line in describe_downloaded():
        log(f"metrics setup: {line}")
    return True
