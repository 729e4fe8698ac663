"""Caption a collection of audio files across processes and machines, resumably.

``inference.py --output FILE`` runs through :func:`caption_collection`, under ``python`` (one
process), ``accelerate launch`` or ``torchrun`` (any number of processes and machines):

* every rank takes its share of the inputs not yet captioned (inputs ``r, r + W, ...`` of that
  list) and captions it in chunks through the pipeline (so both ``--long_audio`` modes and
  re-ranking work unchanged); each chunk becomes a part file in ``FILE.parts/``, written
  atomically, so a crash loses at most the chunk in flight;
* the main rank waits for every rank's "done" mark, merges the parts into ``FILE`` (CSV or JSON
  lines, in input order), lists every failed input and carries the exit status; the other
  ranks exit 0 once their share is written (a non-zero exit would make the launcher stop the
  main rank while it merges);
* a rerun of the same command skips every input that has a caption in ``FILE.parts/`` (inputs
  that failed are tried again); ``FILE.parts/settings.json`` refuses a rerun with other
  generation settings;
* the main rank's progress bar counts the clips of every rank (from the part-file names) and
  shows clips/s over all of them.

Ranks coordinate through the shared output folder (checked at start, see
docs/cluster.md) and a gloo process group used only for a few small messages at start, so no
rank ever waits in a collective while others caption.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, List, Sequence

from captioning.records import PART_NAME, format_records, merge_results, part_files, read_parts, write_part
from common.device import launcher_rank
from common.errors import UserError
from common.io import atomic_write_text, next_number
from common.distributed import all_gather, broadcast, check_shared_folder, end_group, init_gloo_group

PARTS_SUFFIX = ".parts"
SETTINGS_NAME = "settings.json"
#: Clips per part file: what a crash can lose per process, and how often progress is reported.
DEFAULT_CHUNK_SIZE = 64
POLL_SECONDS = 0.5


class CollectionError(UserError):
    """A collection run that cannot go on as asked (other settings in the parts folder, ranks
    that disagree about the inputs); one line with the fix."""


@dataclass
class CollectionRun:
    """What a collection run did.

    Args:
        results: every input's result in input order (main rank only; empty elsewhere).
        skipped: inputs already captioned by an earlier run.
        captioned: inputs captioned in this run, all ranks together.
        seconds: wall time of the captioning (all ranks done).
        world: number of processes.
        is_main: this is the rank that merged and should print.
        status: 0, or 1 when some input failed (main rank; the others report 0).
    """

    results: list = field(default_factory=list)
    skipped: int = 0
    captioned: int = 0
    seconds: float = 0.0
    world: int = 1
    is_main: bool = True
    status: int = 0


def parts_folder(output: str) -> str:
    """Where the part files of ``output`` live."""
    return os.path.abspath(output) + PARTS_SUFFIX


def _prepare(parts: str, settings: dict, sources: Sequence[str]) -> dict:
    """Main rank: checks and (re)starts the parts folder; returns what every rank needs."""
    os.makedirs(parts, exist_ok=True)
    path = os.path.join(parts, SETTINGS_NAME)
    wanted = json.dumps(settings, sort_keys=True, indent=1)
    settings = json.loads(wanted)  # compared as JSON reads them back (tuples become lists)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise CollectionError(f"{parts} holds captions made with other settings ({', '.join(changed)}); "
                                  "rerun with the same options, delete that folder to start over, or choose "
                                  "another --output")
    else:
        atomic_write_text(path, wanted + "\n")
    for name in os.listdir(parts):  # marks of an earlier run
        if name.startswith("done."):
            os.unlink(os.path.join(parts, name))
    done = read_parts(parts)
    pending = [i for i, source in enumerate(sources) if source not in done or done[source].error is not None]
    return {"pending": pending, "skipped": len(sources) - len(pending), "error": None}


def _captioned_so_far(parts: str, before: set) -> int:
    return sum(clips for name, _, _, clips in part_files(parts) if name not in before)


def _wait_for(paths: Sequence[str], bar, parts: str, before: set) -> None:
    """Polls until every path exists (ranks finish at their own pace; no collective waits)."""
    while not all(os.path.exists(p) for p in paths):
        bar.n = _captioned_so_far(parts, before)
        bar.refresh()
        time.sleep(POLL_SECONDS)


def caption_collection(pipeline, sources: Sequence[str], output: str, settings: dict, batch_size: int,
                       options=None, rerank=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       progress: bool = True) -> CollectionRun:
    """Caption ``sources`` into ``output`` on every rank of the launch (see the module docstring).

    Args:
        pipeline: an :class:`captioning.pipeline.EnClap` (one per process, on its own device).
        sources: the input files, the same list on every rank.
        output: the ``.csv`` or ``.jsonl`` file the main rank writes.
        settings: everything that changes a caption (checkpoint, generation, re-ranking, long
            audio, seed); a rerun with other settings is refused.
        batch_size: clips per generate call.
        options: :class:`modeling.generation.GenerationOptions`.
        rerank: :class:`captioning.rerank.RerankOptions`.
        chunk_size: clips per part file.
        progress: show the main rank's progress bar.

    Raises:
        CollectionError: other settings in the parts folder, or ranks that see other inputs.
        common.distributed.DistributedError: ranks that do not share the output folder.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise CollectionError(f"--chunk_size must be >= 1, got {chunk_size}")
    started = init_gloo_group()
    rank, world = launcher_rank()
    is_main = rank == 0
    parts = parts_folder(output)
    try:
        plan, before = None, set()
        if is_main:
            try:
                plan = _prepare(parts, settings, sources)
                # Listed before any rank may write (they wait for the plan): what this run adds.
                before = {name for name, *_ in part_files(parts)}
            except UserError as err:
                plan = {"error": str(err)}
        plan = broadcast(plan)
        if plan["error"] is not None:
            raise CollectionError(plan["error"])
        check_shared_folder(parts, "--output folder")
        digests = all_gather(hashlib.sha1("\n".join(sources).encode("utf-8")).hexdigest())
        if len(set(digests)) > 1:
            raise CollectionError(f"the {world} ranks found {len(set(digests))} different input lists; give files, "
                                  "folders or globs that every machine sees the same way (a shared file system)")
        pending: List[int] = plan["pending"]
        if is_main and plan["skipped"]:
            print(f"skipped {plan['skipped']} input(s) already captioned in {parts}", file=sys.stderr)

        prefix = f"r{rank:05d}-of-{world:05d}"
        seq = next_number(parts, PART_NAME, prefix)
        share = [sources[i] for i in pending[rank::world]]
        bar = tqdm(total=len(pending), desc=f"captioning ({world} process{'es' if world > 1 else ''})", unit="clip",
                   disable=not (progress and is_main) or not pending, dynamic_ncols=True)
        start = time.perf_counter()
        for first in range(0, len(share), chunk_size):
            results = pipeline.run(share[first:first + chunk_size], batch_size=batch_size, options=options,
                                   rerank=rerank)
            write_part(parts, prefix, seq, results)
            seq += 1
            for res in results:  # reported per rank as they happen; the main rank lists all at the end
                if res.error is not None and world > 1:
                    print(f"error: [rank {rank}] {res.error}", file=sys.stderr)
            if is_main:
                bar.n = _captioned_so_far(parts, before)
                bar.refresh()
        atomic_write_text(os.path.join(parts, f"done.{rank}"), "done\n")

        run = CollectionRun(skipped=plan["skipped"], world=world, is_main=is_main)
        if not is_main:
            return run
        _wait_for([os.path.join(parts, f"done.{r}") for r in range(world)], bar, parts, before)
        run.seconds = time.perf_counter() - start
        run.captioned = _captioned_so_far(parts, before)
        bar.n = run.captioned
        bar.close()
        run.results = merge_results(sources, read_parts(parts))
        atomic_write_text(output, format_records(run.results, output))
        run.status = int(any(res.error is not None for res in run.results))
        return run
    finally:
        end_group(started)


def collection_settings(args: Any, options, rerank) -> dict:
    """The settings a collection's captions depend on, from parsed ``inference.py`` arguments."""
    ckpt = str(args.ckpt)
    return {"ckpt": os.path.abspath(ckpt) if os.path.exists(ckpt) else ckpt, "generation": vars(options),
            "rerank": vars(rerank), "long_audio": args.long_audio, "seed": args.seed,
            "random_encoders": args.random_encoders, "clap_ckpt": args.clap_ckpt, "dtype": args.dtype}
