"""Test helpers: tiny EnCLAP configs, design §3 batches written from the design document's table, random clips.

Import as ``from tests.helpers import ...`` (pytest.ini puts the repo root on sys.path).
"""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import torch

from modeling import EnClapBartConfig

# Captions for test tokenizers and tiny training runs.
CAPTIONS = [
    "a dog barks while a man speaks",
    "rain falls on a metal roof",
    "a high pitched beep repeats three times",
    "static noise fades in followed by a low hum",
    "birds chirp in the distance as wind blows",
    "a car engine revs and then idles",
    "water runs from a tap into a sink",
    "a siren wails and fades away",
    "people talk and laugh in a crowded room",
    "a door creaks open and slams shut",
]

#: Torch threads of the test process, and of the CLI processes whose files a test compares with
#: its own. ``make test-kernels`` reruns the numerics tests with 2 (design §12).
TEST_THREADS = int(os.environ.get("ENCLAP_TEST_THREADS", "1"))

#: The least share of equal codes, per codebook, between two encodings of the same audio in
#: different batch shapes or lengths: rounding can move a latent across a codeword's boundary
#: (design §12). Measured here: 100 %.
MIN_CODE_AGREEMENT = 0.99


def assert_codes_agree(got, want, min_share: float = MIN_CODE_AGREEMENT) -> None:
    """Same shapes, and at least ``min_share`` equal codes in every codebook.

    Args:
        got, want: one (T, K) code array each, or equal-length lists of them (one per clip).
    """
    got = [got] if isinstance(got, np.ndarray) else list(got)
    want = [want] if isinstance(want, np.ndarray) else list(want)
    assert [g.shape for g in got] == [w.shape for w in want]
    share = (np.concatenate(got) == np.concatenate(want)).mean(axis=0)  # (K,)
    assert share.min() >= min_share, f"share of equal codes per codebook {np.round(share, 3).tolist()}"


def make_tiny_config(vocab_size: int, **overrides) -> EnClapBartConfig:
    """A tiny EnCLAP config: d_model 32, 2 + 2 layers, at most 61 frames per clip."""
    fields = dict(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.2,  # large random weights so outputs depend strongly on the input
    )
    fields.update(overrides)
    return EnClapBartConfig(**fields)


def make_batch(codes_list, clap_embeddings, pad_id: int = 1024):
    """The design §3 encoder batch for clips of (T, 16) codes, written from the design document's table.

    Rows: 0 and 1 BOS, 2..T+1 codes, T+2 EOS, then padding (1024, encodec_mask 1, attention 0).
    """
    length = max(len(c) for c in codes_list) + 3
    batch = len(codes_list)
    input_ids = torch.full((batch, length, 16), pad_id, dtype=torch.long)
    encodec_mask = torch.ones(batch, length, dtype=torch.bool)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, codes in enumerate(codes_list):
        t = len(codes)
        input_ids[i, 0:2] = 0
        input_ids[i, 2 : t + 2] = torch.as_tensor(codes)
        input_ids[i, t + 2] = 2
        encodec_mask[i, [0, 1, t + 2]] = False
        attention_mask[i, : t + 3] = 1
    return {
        "input_ids": input_ids,
        "encodec_mask": encodec_mask,
        "attention_mask": attention_mask,
        "clap_embedding": torch.as_tensor(np.asarray(clap_embeddings), dtype=torch.float32),
    }


def random_clips(n: int, lengths, seed: int = 0):
    """``n`` clips of random codes with the given lengths, and unit-norm CLAP vectors."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 1024, size=(t, 16), dtype=np.int64) for t in lengths]
    clap = rng.standard_normal((n, 512)).astype(np.float32)
    clap /= np.linalg.norm(clap, axis=1, keepdims=True)
    return codes, clap


def lay_out_hub_cache(cache, repo_id: str, folder) -> None:
    """Copy ``folder`` into ``cache`` as huggingface_hub lays out a download of ``repo_id``:
    ``models--org--name/{refs/main, snapshots/<commit>/...}``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def user_env(**extra: str) -> dict:
    """The environment of a user's shell, for running an entry point as it is typed: no PYTHONPATH
    (a script must find the repository's packages by itself), the hub offline, one torch thread
    per process (two cores are shared with the other tests), accelerate on the CPU; then ``extra``."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now, for a launcher's rendezvous (a fixed 29500 lets
    two test runs on one machine collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_spice(check_requirements):
    """Wraps ``scoring.java.check_requirements`` so SPICE and SPIDEr cannot run, whatever this
    machine has (the other metrics keep their real requirements)."""
    from scoring.names import normalize_metrics

    def check(metrics=None, cache_dir=None, java_path=None):
        reasons = check_requirements(metrics, cache_dir, java_path)
        for name in normalize_metrics(metrics):
            if name in ("spice", "spider"):
                reasons[name] = "Stanford CoreNLP 3.6.0 jars missing; fix: make setup"
        return reasons

    return check


def sigkill_when(command, ready, cwd, env, timeout: float = 300) -> None:
    """Run ``command`` and SIGKILL it as soon as ``ready()`` is true (a crash mid-run, for resume tests).

    Raises:
        AssertionError: the process ended (or the timeout passed) before ``ready()`` held.
    """
    import signal
    import subprocess
    import time

    victim = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and victim.poll() is None and not ready():
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def saved_tensor_bytes(run, module=None) -> int:
    """Bytes of the tensors autograd keeps for backward during ``run()`` (``module``'s weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()} if module is not None else set()
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values())
