"""Raw audio for the encoders in batches: length-aware batch plans with a cap on padded audio,
header-only durations and decoding in DataLoader workers (used by preprocessing); each
process's share of the files and its device are :mod:`common.distributed` and :mod:`common.device`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence

import soundfile as sf
import torch
from torch.utils.data import Dataset

from data.extraction.audio import ENCODEC_SAMPLE_RATE, AudioError
from data.extraction.encoders import decode, prepare_branches

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

    def __init__(self, paths: Sequence[Path], codec_rate: int = ENCODEC_SAMPLE_RATE):
        """Args:
            paths: audio files, in the order the batch sampler's indices refer to.
            codec_rate: the codec's sample rate (``FeatureExtractor.codec_rate``).
        """
        self.paths = list(paths)
        self.codec_rate = int(codec_rate)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            mono, sr = decode(str(self.paths[index]))  # (N,)
            return index, prepare_branches(mono, sr, self.codec_rate), None  # (wav24 (N24,), wav48 (N48,))
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
