"""Tests of the preprocessing CLI (data/preprocess.py) and its two original-style wrappers.

Random-weight encoders (``--random_weights``) and a few short generated clips keep these
fast on CPU. In-process runs share one set of encoders (building them costs more than encoding
the clips); the kill/resume test runs the CLI as a subprocess and SIGKILLs it mid-run.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data import infer_clap, infer_encodec, preprocess
from tests.helpers import TEST_THREADS, assert_codes_agree, sigkill_when

REPO = Path(__file__).resolve().parents[2]
# The CLI processes get this test process's torch thread count (tests/conftest.py): another
# count rounds floats differently, which can flip residual codes (design §12).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
       "OMP_NUM_THREADS": str(TEST_THREADS), "MKL_NUM_THREADS": str(TEST_THREADS)}


def _write_clip(path: Path, seconds: float, sr: int, channels: int = 1, seed: int = 0, fmt: str = None):
    """Writes a noisy chord so that every clip differs."""
    rng = np.random.default_rng(seed)
    t = np.arange(max(1, int(seconds * sr))) / sr
    tone = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, size=3))
    wav = np.stack([tone + 0.05 * rng.standard_normal(t.shape) for _ in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.astype(np.float32), sr, format=fmt)


def _npy_tree(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def _run(extractor, *args) -> preprocess.Summary:
    """``data/preprocess.py ARGS`` in this process, with already built encoders."""
    return preprocess.run(preprocess.build_parser().parse_args([str(a) for a in args]), extractor=extractor)


@pytest.fixture(scope="module")
def extractor():
    """The seeded random-weight encoders that ``--random_weights`` (seed 0) builds, built once."""
    from data.extraction.encoders import build_feature_extractor

    return build_feature_extractor("cpu", random_weights=True, seed=0)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """Five clips of different lengths, rates, channel counts and formats, in two folders."""
    root = tmp_path_factory.mktemp("wavs")
    _write_clip(root / "train" / "a.wav", 1.0, 44100, channels=2, seed=1)
    _write_clip(root / "train" / "b.flac", 0.4, 16000, seed=2)
    _write_clip(root / "train" / "sub" / "c.WAV", 1.3, 22050, seed=3)
    _write_clip(root / "test" / "d.ogg", 0.7, 48000, seed=4, fmt="OGG")
    _write_clip(root / "test" / "e.wav", 0.02, 8000, seed=5)  # 0.02 s: fewer frames than a CLAP window
    (root / "notes.txt").write_text("not audio, not an audio extension: ignored")
    return root


EXPECTED = ["test/d.npy", "test/e.npy", "train/a.npy", "train/b.npy", "train/sub/c.npy"]


@pytest.fixture(scope="module")
def one_process(small_tree, extractor, tmp_path_factory):
    """``small_tree`` preprocessed by one process, one clip at a time, decoded in a worker: the
    per-file trees ``enc/`` and ``clap/``, and the packed store ``store/``."""
    out = tmp_path_factory.mktemp("one")
    base = ["--data_path", small_tree, "--random_weights", "--quiet", "--batch_size", 1, "--num_workers", 1]
    summary = _run(extractor, *base, "--encodec_path", out / "enc", "--clap_path", out / "clap")
    assert (summary.done, summary.failed) == (5, 0)
    summary = _run(extractor, *base, "--pack", out / "store")
    assert (summary.done, summary.failed, summary.indexed) == (5, 0, 5)
    return out


@pytest.mark.numerics
def test_outputs_match_front_end_and_are_batch_invariant(small_tree, one_process, extractor, tmp_path, monkeypatch):
    """One clip at a time and batches of five agree, and equal FeatureExtractor on each file alone."""
    bs5 = tmp_path / "bs5"
    with monkeypatch.context() as patch:
        # On CPU the encoders default to one clip per forward pass, which would make this
        # "batched" run encode clip by clip: make them take the whole batch, and check they did.
        passes = []
        for encoder in (extractor.encodec, extractor.clap):
            patch.setattr(encoder, "max_batch_size", 5)
            encode = encoder.encode
            patch.setattr(encoder, "encode", lambda wavs, encode=encode: passes.append(len(wavs)) or encode(wavs))
        summary = _run(extractor, "--data_path", small_tree, "--encodec_path", bs5 / "enc", "--clap_path",
                       bs5 / "clap", "--random_weights", "--batch_size", 5, "--num_workers", 0, "--quiet")
    assert max(passes) == 5, f"encoder passes of {passes} clips: the run did not batch"
    assert (summary.done, summary.failed) == (5, 0)
    outs = {}
    for batch_size, out in ((1, one_process), (5, bs5)):
        outs[batch_size] = (_npy_tree(out / "enc"), _npy_tree(out / "clap"))
        assert sorted(outs[batch_size][0]) == EXPECTED and sorted(outs[batch_size][1]) == EXPECTED
        assert not list(out.rglob("*.partial"))
    # A batch rounds floats otherwise than a clip alone (other matrix kernels, design §12): codes
    # agree but for a rare one near a codeword boundary, CLAP embeddings within 1e-6.
    for rel in EXPECTED:
        assert_codes_agree(np.load(bs5 / "enc" / rel), np.load(one_process / "enc" / rel))
        alone = np.load(one_process / "clap" / rel)
        batched = np.load(bs5 / "clap" / rel)
        np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)

    # The same features as the shared front end gives for each file on its own (the path that
    # inference and the demo take), with the shapes and dtypes of design §2.
    src = {"test/d.npy": "test/d.ogg", "test/e.npy": "test/e.wav", "train/a.npy": "train/a.wav",
           "train/b.npy": "train/b.flac", "train/sub/c.npy": "train/sub/c.WAV"}
    out = one_process
    for rel, audio in src.items():
        codes, clap = extractor.extract([str(small_tree / audio)])[0]
        saved_codes = np.load(out / "enc" / rel)
        saved_clap = np.load(out / "clap" / rel)
        assert saved_codes.dtype == np.int64 and saved_codes.shape[1] == 16
        info = sf.info(str(small_tree / audio))
        assert saved_codes.shape[0] == int(np.ceil(np.ceil(info.frames * 24000 / info.samplerate) / 320))
        assert saved_clap.dtype == np.float32 and saved_clap.shape == (512,)
        assert abs(float(np.linalg.norm(saved_clap)) - 1.0) < 1e-4
        np.testing.assert_array_equal(saved_codes, codes)
        np.testing.assert_array_equal(saved_clap, clap)


def _assert_same_trees(got: Path, want: Path):
    """The same .npy files with the same bytes (the count of differing values on failure)."""
    got_tree, want_tree = _npy_tree(got), _npy_tree(want)
    assert sorted(got_tree) == sorted(want_tree)
    for rel in want_tree:
        if got_tree[rel] != want_tree[rel]:
            a, b = np.load(got / rel), np.load(want / rel)
            diff = (a != b).sum() if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"
            raise AssertionError(f"{rel} differs: {diff} of {b.size} values")


def test_kill_then_resume_equals_uninterrupted_run(extractor, tmp_path):
    """SIGKILL mid-run, rerun: every output complete and byte-identical to an uninterrupted run."""
    wavs = tmp_path / "wavs"
    for i in range(7):
        _write_clip(wavs / f"part{i % 2}" / f"clip{i}.wav", 0.2 + 0.1 * i, (16000, 44100, 32000)[i % 3],
                    channels=1 + i % 2, seed=i)
    # Longer than 10 s: CLAP takes random fusion chunks, which must not depend on run order.
    _write_clip(wavs / "long.wav", 10.5, 8000, seed=99)
    expected = 8

    # The uninterrupted reference run, in this process (as many torch threads as the CLI processes: see ENV).
    ref = tmp_path / "ref"
    summary = _run(extractor, "--data_path", wavs, "--encodec_path", ref / "enc", "--clap_path", ref / "clap",
                   "--random_weights", "--quiet")
    assert (summary.done, summary.failed) == (expected, 0)
    assert len(_npy_tree(ref / "enc")) == expected and len(_npy_tree(ref / "clap")) == expected

    out = tmp_path / "out"
    args = [sys.executable, "data/preprocess.py", "--data_path", str(wavs), "--encodec_path", str(out / "enc"),
            "--clap_path", str(out / "clap"), "--random_weights", "--quiet"]
    sigkill_when(args, lambda: len(list((out / "clap").rglob("*.npy"))) >= 2, REPO, ENV)
    done_before = len(list((out / "clap").rglob("*.npy")))
    assert 2 <= done_before < expected

    # A truncated temporary file, as a kill during a write leaves it, must not count as output.
    pending = next(p for p in sorted((ref / "enc").rglob("*.npy"))
                   if not (out / "clap" / p.relative_to(ref / "enc")).exists())
    stale = out / "enc" / (pending.relative_to(ref / "enc").as_posix() + ".partial")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(pending.read_bytes()[:40])

    # The rerun of the same command (here in this process: resuming reads only the output trees).
    summary = _run(extractor, *args[2:])
    assert summary.failed == 0 and summary.done + summary.skipped == expected
    assert summary.skipped >= done_before - 1  # a clip killed between its two writes is redone
    _assert_same_trees(out / "enc", ref / "enc")
    _assert_same_trees(out / "clap", ref / "clap")
    assert not list(out.rglob("*.partial"))
    assert "0 clip(s) exceed 1021 EnCodec frames" in summary.line()  # 10.5 s = 788 frames


def test_bad_files_are_listed_and_the_rest_is_done(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    _write_clip(wavs / "good1.wav", 0.5, 16000, seed=1)
    _write_clip(wavs / "dir" / "good2.flac", 0.3, 22050, channels=2, seed=2)
    _write_clip(wavs / "corrupt.wav", 0.5, 16000, seed=3)
    data = (wavs / "corrupt.wav").read_bytes()
    (wavs / "corrupt.wav").write_bytes(data[:12] + b"\x00garbage" * 8)  # RIFF header, then junk
    (wavs / "text.wav").write_text("this is a text file with a .wav name\n")
    # Edge cases that are valid audio and must be processed: 6 samples, digital silence.
    sf.write(str(wavs / "six.wav"), np.array([0.1, -0.2, 0.3, 0.0, 0.5, -1.0], np.float32), 16000)
    sf.write(str(wavs / "silence.wav"), np.zeros(8000, np.float32), 8000)
    good = ["dir/good2.npy", "good1.npy", "silence.npy", "six.npy"]
    out = tmp_path / "out"
    rc = preprocess.main(["--data_path", str(wavs), "--encodec_path", str(out / "enc"), "--clap_path",
                          str(out / "clap"), "--random_weights", "--quiet", "--num_workers", "1"])
    assert rc == 1
    stdout = capsys.readouterr().out
    assert "done 4, skipped 0 (already present), failed 2" in stdout
    assert sorted(_npy_tree(out / "enc")) == good and sorted(_npy_tree(out / "clap")) == good
    assert np.load(out / "enc" / "six.npy").shape == (1, 16)  # ceil(ceil(6 * 24000 / 16000) / 320)
    lines = (out / "enc" / "preprocess_failures.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == [str(wavs / "corrupt.wav"), str(wavs / "text.wav")]
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1].strip() for line in lines)

    # Fixing the bad files and rerunning processes only them and removes the stale failures file.
    _write_clip(wavs / "corrupt.wav", 0.5, 16000, seed=3)
    _write_clip(wavs / "text.wav", 0.2, 16000, seed=4)
    rc = preprocess.main(["--data_path", str(wavs), "--encodec_path", str(out / "enc"), "--clap_path",
                          str(out / "clap"), "--random_weights", "--quiet"])
    assert rc == 0
    assert "done 2, skipped 4 (already present), failed 0" in capsys.readouterr().out
    assert not (out / "enc" / "preprocess_failures.tsv").exists()


def test_output_escaping_the_root_is_refused(tmp_path, capsys):
    wavs, outside, out = tmp_path / "wavs", tmp_path / "outside", tmp_path / "out"
    _write_clip(wavs / "train" / "a.wav", 0.2, 16000)
    outside.mkdir()
    (out / "enc").mkdir(parents=True)
    (out / "enc" / "train").symlink_to(outside, target_is_directory=True)
    rc = preprocess.main(["--data_path", str(wavs), "--encodec_path", str(out / "enc"), "--clap_path",
                          str(out / "clap"), "--random_weights", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the output root" in err[0] and "train/a.npy" in err[0]
    assert list(outside.iterdir()) == [] and not (out / "clap").exists()
    with pytest.raises(preprocess.UsageError):
        preprocess.output_path(out / "clap", "../escape.wav")


def test_two_inputs_with_one_output_are_refused(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    _write_clip(wavs / "x.wav", 0.2, 16000)
    _write_clip(wavs / "x.flac", 0.2, 16000)
    rc = preprocess.main(["--data_path", str(wavs), "--encodec_path", str(tmp_path / "e"), "--clap_path",
                          str(tmp_path / "c"), "--random_weights"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.flac" in err[0] and "x.wav" in err[0]


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    _write_clip(wavs / "x.wav", 0.2, 16000)
    args = ["--data_path", str(wavs), "--encodec_path", str(tmp_path / "e"), "--clap_path", str(tmp_path / "c")]
    assert preprocess.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--clap_ckpt is required" in err[0]
    assert preprocess.main(args + ["--clap_ckpt", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0]


def test_shards_are_disjoint_and_cover_everything(tmp_path, monkeypatch):
    names = [f"f{i:02d}.wav" for i in range(10)]
    shares = [preprocess.select_shard(names, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == names
    assert all(not set(a) & set(b) for a in shares for b in shares if a is not b)

    assert preprocess.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(preprocess.UsageError):
            preprocess.parse_shard(bad)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as set by `accelerate launch`
    assert preprocess.parse_shard(None) == (1, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert preprocess.parse_shard(None) == (0, 1)

    wavs = tmp_path / "wavs"
    for i in range(5):
        _write_clip(wavs / f"c{i}.wav", 0.2, 16000, seed=i)
    written = []
    for shard in ("0/2", "1/2"):
        enc = tmp_path / "enc"
        before = set(_npy_tree(enc)) if enc.exists() else set()
        rc = preprocess.main(["--data_path", str(wavs), "--encodec_path", str(enc), "--skip_clap",
                              "--random_weights", "--quiet", "--num_workers", "0", "--shard", shard])
        assert rc == 0
        written.append(set(_npy_tree(enc)) - before)
    assert written[0] == {"c0.npy", "c2.npy", "c4.npy"} and written[1] == {"c1.npy", "c3.npy"}


def test_discover_is_recursive_case_insensitive_and_filtered(tmp_path):
    for rel in ["a/b/x.WAV", "a/y.flac", "z.mp3", "a/skip.txt", "a/.hidden.wav"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    exts = preprocess.normalize_extensions([".wav", "FLAC,mp3"])
    assert preprocess.discover(tmp_path, exts) == ["a/b/x.WAV", "a/y.flac", "z.mp3"]
    assert preprocess.discover(tmp_path, preprocess.normalize_extensions(["flac"])) == ["a/y.flac"]


def test_original_wrappers(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    _write_clip(wavs / "s" / "x.wav", 0.3, 16000)
    assert infer_encodec.main(["--data_path", str(wavs), "--save_path", str(tmp_path / "enc"), "--device", "cpu",
                               "--random_weights", "--quiet"]) == 0
    assert sorted(_npy_tree(tmp_path / "enc")) == ["s/x.npy"]
    assert infer_clap.main(["--data_path", str(wavs), "--save_path", str(tmp_path / "clap"),
                            "--enable_fusion", "True", "--random_weights", "--quiet"]) == 0
    assert sorted(_npy_tree(tmp_path / "clap")) == ["s/x.npy"]
    assert np.load(tmp_path / "clap" / "s/x.npy").shape == (512,)
    capsys.readouterr()

    # The original parsed `--enable_fusion False` as True; here it is False, and refused.
    assert infer_clap.parse_bool("False") is False and infer_clap.parse_bool("true") is True
    assert infer_clap.main(["-d", str(wavs), "-s", str(tmp_path / "c2"), "--enable_fusion", "False"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--enable_fusion False is not supported" in err[0]
    assert not (tmp_path / "c2").exists()


def test_seed_reaches_both_random_encoders(tmp_path):
    """--seed picks the random weights of both encoders: same seed, same features; another, others."""
    _write_clip(tmp_path / "wavs" / "x.wav", 1.2, 24000, seed=7)

    def features(seed: int, name: str):
        out = tmp_path / name
        code = preprocess.main(list(map(str, ["--data_path", tmp_path / "wavs", "--encodec_path", out / "enc",
                                              "--clap_path", out / "clap", "--random_weights", "--seed", seed,
                                              "--quiet"])))
        assert code == 0
        return np.load(out / "enc" / "x.npy"), np.load(out / "clap" / "x.npy")

    codes_a, clap_a = features(3, "a")
    codes_b, clap_b = features(3, "b")
    codes_c, clap_c = features(4, "c")
    assert np.array_equal(codes_a, codes_b) and np.array_equal(clap_a, clap_b)
    assert not np.array_equal(codes_a, codes_c)
    assert not np.allclose(clap_a, clap_c)


def test_two_processes_write_the_features_of_one_in_both_layouts(small_tree, one_process, tmp_path):
    """accelerate launch: two processes, each writing its share of the per-file trees (by RANK) and of a
    packed store (by --shard RANK/2), give the features of one process in both layouts."""
    from data.extraction.store import PackedStore
    from tests.helpers import free_port

    one, two = one_process, tmp_path / "two"
    env = {**ENV, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}  # this process's threads (ENV)
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
         str(free_port()), "tests/data/helpers_preprocess_layouts.py", str(small_tree), str(two),
         "--random_weights", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    # Really two shares, in each layout; the share that ended last indexed the whole store.
    assert launched.stderr.count("(shard 0/2)") == launched.stderr.count("(shard 1/2)") == 2, launched.stderr[-3000:]
    assert "packed store indexed: 5 clip(s)" in launched.stdout, launched.stdout

    _assert_same_trees(two / "enc", one / "enc")
    _assert_same_trees(two / "clap", one / "clap")
    packed_one, packed_two = PackedStore(one / "store"), PackedStore(two / "store")
    assert sorted(packed_two.file_paths()) == sorted(packed_one.file_paths()) == EXPECTED
    assert {p.name.split(".")[0] for p in (two / "store" / "shards").glob("*.json")} == {
        "r00000-of-00002", "r00001-of-00002"}
    for rel in EXPECTED:
        codes, clap = np.load(one / "enc" / rel), np.load(one / "clap" / rel)
        for packed in (packed_one, packed_two):
            np.testing.assert_array_equal(packed.codes(rel), codes)
            np.testing.assert_array_equal(packed.clap(rel), clap)
    assert not np.array_equal(packed_two.clap(EXPECTED[0]), packed_two.clap(EXPECTED[1]))


def test_each_process_and_shard_gets_its_own_gpu(monkeypatch, tmp_path, capsys):
    import torch

    from common.device import DeviceError
    from common.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert str(pick_device("cuda", 1, 2, sharded_by_flag=False)) == "cuda:1"  # explicit cuda under a launcher
    assert str(pick_device("auto", 1, 2, sharded_by_flag=False)) == "cuda:1"
    assert str(pick_device("cuda:0", 1, 2, sharded_by_flag=False)) == "cuda:0"  # an index is taken as given
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DeviceError, match="LOCAL_RANK=2 asks for GPU 2, but only 2 GPU"):
        pick_device("cuda", 2, 3, sharded_by_flag=False)
    monkeypatch.delenv("LOCAL_RANK")
    assert [str(pick_device("cuda", i, 4, sharded_by_flag=True)) for i in range(4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # separate --shard i/4 runs spread over the GPUs
    assert str(pick_device("cuda", 3, 4, sharded_by_flag=False)) == "cuda:0"

    # Through the command line: LOCAL_RANK beyond the visible GPUs is one line, exit 2.
    _write_clip(tmp_path / "w" / "a.wav", 0.2, 16000)
    monkeypatch.setenv("LOCAL_RANK", "5")
    rc = preprocess.main(["--data_path", str(tmp_path / "w"), "--pack", str(tmp_path / "st"), "--device", "cuda",
                          "--random_weights", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: LOCAL_RANK=5") and "CUDA_VISIBLE_DEVICES" in err[-1]
