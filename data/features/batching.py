"""Raw audio for the encoders in batches: length-aware batch plans with a cap on padded audio,
header-only durations, decoding in DataLoader workers, and each process's share of the files
and its device (used by preprocessing)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import soundfile as sf
import torch
from torch.utils.data import Dataset

from common.device import launcher_rank, resolve_device
from common.errors import UserError
from data.features.audio import AudioError
from data.features.encoders import decode, prepare_branches

logger = logging.getLogger(__name__)

#: Default cap on a batch's padded audio (clips x longest clip, seconds): bounds GPU memory.
DEFAULT_MAX_BATCH_SECONDS = 320.0


def plan_batches(durations: Sequence[float], batch_size: int, max_batch_seconds: float) -> List[List[int]]:
    """Groups clip indices into batches of similar length, longest first.

    Sorting by duration keeps padding small; longest first makes an out-of-memory batch show
    up at the start rather than hours in. A batch closes when it has ``batch_size`` clips or
    when its padded length (clips x longest clip) would exceed ``max_batch_seconds``; a clip
    longer than that forms a batch by itself.

    Args:
        durations: seconds per clip (0 when unknown).
        batch_size: maximum clips per batch.
        max_batch_seconds: maximum padded audio seconds per batch.

    Returns:
        Lists of indices into ``durations``.
    """
    order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    batches: List[List[int]] = []
    current: List[int] = []
    for i in order:
        longest = durations[current[0]] if current else durations[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * longest > max_batch_seconds):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def probe_duration(path: Path) -> float:
    """Duration in seconds from the file header (no decoding); 0.0 when the header is unreadable.

    An unreadable header is not reported here: the clip then fails in decoding, which writes
    the reason to the failures file.
    """
    try:
        info = sf.info(str(path))
        return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 -- any header problem is reported later by decode
        return 0.0


class DecodeDataset(Dataset):
    """Decodes and resamples clips in DataLoader workers; errors become values, not exceptions.

    Uses the front end's ``decode`` (libsndfile, mean downmix) and ``prepare_branches``
    (24 kHz for EnCodec, 48 kHz for CLAP), so the main process only runs the encoders. An
    exception raised inside a worker would stop the whole DataLoader, so a failing clip is
    returned as ``(index, None, reason)`` and recorded by the main process.
    """

    def __init__(self, paths: Sequence[Path]):
        """Args:
            paths: audio files, in the order the batch sampler's indices refer to.
        """
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            mono, sr = decode(str(self.paths[index]))  # (N,)
            return index, prepare_branches(mono, sr), None  # (wav24 (N24,), wav48 (N48,))
        except AudioError as err:
            return index, None, str(err)
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop a 50 000-clip run
            return index, None, f"{self.paths[index]}: {type(err).__name__}: {err}"


def collate_list(items):
    """A DataLoader collate function that keeps the items as they are."""
    return items


def worker_init(_worker_id: int) -> None:
    # Decoding is single-threaded; keep workers from competing with the encoders' threads.
    torch.set_num_threads(1)


class UsageError(UserError):
    """A problem with preprocessing's command line or trees that the user must fix; one line."""


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """Parses ``--shard i/N``; without it, takes RANK/WORLD_SIZE from ``accelerate launch``.

    Args:
        text: ``"i/N"`` with 0 <= i < N, or None.

    Returns:
        ``(index, count)``; ``(0, 1)`` when not sharded.
    """
    if text is None:
        index, count = launcher_rank()
    else:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise UsageError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise UsageError(f"--shard {index}/{count}: need 0 <= i < N")
    return index, count


def select_shard(items: Sequence[str], index: int, count: int) -> List[str]:
    """Every ``count``-th item starting at ``index``: shards are disjoint and cover all items."""
    return list(items[index::count])


def pick_device(device: str, shard_index: int, shard_count: int, sharded_by_flag: bool):
    """The device of this share: ``common.device.resolve_device``, plus one GPU per ``--shard`` run.

    Under a launcher, ``auto`` and a bare ``cuda`` become ``cuda:LOCAL_RANK``. Separate
    ``--shard i/N`` runs have no ``LOCAL_RANK``; they take GPU ``i % (visible GPUs)`` so that N
    runs on one machine do not all land on GPU 0 (``cuda:K`` or ``CUDA_VISIBLE_DEVICES`` choose
    otherwise).
    """
    text = str(device or "auto")
    bare = text == "cuda" or (text == "auto" and torch.cuda.is_available())
    if bare and sharded_by_flag and shard_count > 1 and "LOCAL_RANK" not in os.environ and torch.cuda.is_available():
        text = f"cuda:{shard_index % torch.cuda.device_count()}"
        logger.info("--shard %d/%d runs on %s", shard_index, shard_count, text)
    return resolve_device(text)
