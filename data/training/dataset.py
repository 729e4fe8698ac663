"""Caption datasets over preprocessed EnCodec / CLAP features (design §5).

A split is a CSV file plus two feature roots holding one ``.npy`` per clip under the same
relative name: ``encodec_root/<file_path>`` with codes (T, 16) int64 and
``clap_root/<file_path>`` with the CLAP embedding (512,) float32. Either root may instead be a
packed store (a few shard files and an index, :mod:`data.extraction.store`); the dataset reads both
layouts through :class:`data.extraction.store.FeatureStore` and serves identical items from them. Training rows
(``file_path, caption``) give one example per (clip, caption); evaluation rows
(``file_path, caption_1 .. caption_5``) give one example per clip with all its references.

Training examples are cropped to a random ``max_frames`` window and carry a fresh MCM mask
every epoch, both drawn from (seed, epoch, example index) -- see :mod:`data.training.masking`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.extraction.audio import ENCODEC_FRAME_RATE
from common.errors import UserError
from common.constants import DEFAULT_SEED, MASK_PROB, MASK_SPAN, MAX_FRAMES
from data.training.masking import (CROP_STREAM, MASK_STREAM, crop_codes,
                          example_rng, span_mask)
from data.extraction.store import FeatureStore, StoreError

logger = logging.getLogger(__name__)

#: ``feature_fn(file_path) -> (codes (T, 16) int, clap_embedding (512,) float)``.
FeatureFn = Callable[[str], tuple]

_CAPTION_COLUMN = re.compile(r"^caption_(\d+)$")


class DataError(UserError):
    """A split file or feature file that a user supplied is missing or malformed.

    The message is one line naming the file and the fix; entry points print it and exit.

    Args:
        message: The one-line message.
    """

    def __init__(self, message: str):
        # A DataLoader worker re-raises this in the main process as DataError("Caught
        # DataError in DataLoader worker process N.\nOriginal Traceback ...
        # data.training.dataset.DataError: <message>"); keep only the user's one line.
        if "\n" in message and "DataError: " in message:
            message = message.rsplit("DataError: ", 1)[1].strip()
        super().__init__(message)


def _read_csv(csv_path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Reads a split CSV into its header and rows, raising :class:`DataError` on problems."""
    if not os.path.isfile(csv_path):
        raise DataError(f"split file not found: {csv_path} (check the csv path in the config)")
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read split file {csv_path}: {error}") from error
    if "file_path" not in header:
        raise DataError(f"{csv_path} has no 'file_path' column (columns: {', '.join(header) or 'none'}); "
                        "expected 'file_path, caption' or 'file_path, caption_1 .. caption_5'")
    return header, rows


def _caption_columns(header: Sequence[str], csv_path: str) -> tuple[str | None, list[str]]:
    """Returns (the single ``caption`` column or None, the numbered ``caption_N`` columns)."""
    numbered = sorted((c for c in header if _CAPTION_COLUMN.match(c)),
                      key=lambda c: int(_CAPTION_COLUMN.match(c).group(1)))
    single = "caption" if "caption" in header else None
    if single is None and not numbered:
        raise DataError(f"{csv_path} has no caption column (columns: {', '.join(header)}); "
                        "expected 'caption' (training) or 'caption_1' .. 'caption_5' (evaluation)")
    return single, numbered


@dataclass
class Split:
    """The rows of a split CSV: clip paths and their reference captions, in file order.

    Args:
        file_paths: relative feature paths (``split/name.npy``), one per clip (or per caption).
        references: the captions of each entry (one for per-caption rows).
    """

    file_paths: list[str]
    references: list[list[str]]


def read_split(csv_path: str, per_caption: bool = False) -> Split:
    """Read a split CSV in either layout (design §5) without touching any feature file.

    Args:
        csv_path: ``file_path, caption`` or ``file_path, caption_1 .. caption_N``.
        per_caption: one entry per non-empty caption (training examples); else one entry per
            clip with all its references (rows sharing a ``file_path`` are grouped, in
            first-appearance order).

    Raises:
        DataError: a missing or malformed file, an empty ``file_path``, no examples.
    """
    header, rows = _read_csv(csv_path)
    single, numbered = _caption_columns(header, csv_path)
    grouped: dict[str, list[str]] = {}
    file_paths: list[str] = []
    references: list[list[str]] = []
    for line, row in enumerate(rows, start=2):
        path = (row.get("file_path") or "").strip()
        if not path:
            raise DataError(f"{csv_path} line {line}: empty file_path")
        texts = [t.strip() for t in ([row[single]] if single else [row[c] for c in numbered]) if t and t.strip()]
        if per_caption:
            file_paths.extend(path for _ in texts)
            references.extend([t] for t in texts)
        else:
            grouped.setdefault(path, []).extend(texts)
    if not per_caption:
        file_paths, references = list(grouped), list(grouped.values())
    if not file_paths:
        raise DataError(f"{csv_path} has no examples (no rows with a file_path and a caption)")
    return Split(file_paths=file_paths, references=references)


class CaptionDataset(Dataset):
    """Examples of one split, read lazily from the feature trees.

    Items are dicts with ``file_path`` (the CSV's relative path), ``codes`` (T', 16) int64
    after cropping, ``mcm_mask`` (T', 16) bool or ``None``, ``clap_embedding`` (512,)
    float32, and ``caption`` (training) or ``references`` (evaluation, a list of str).
    The codes are returned unmasked: :class:`data.training.collator.EnClapCollator` replaces the
    masked ones by the pad id and builds the MCM labels.

    Either CSV layout works in either mode: in training, ``caption_1 .. caption_N`` rows are
    expanded to one example per non-empty caption; in evaluation, ``caption`` rows sharing a
    ``file_path`` are grouped into one clip (first-appearance order).

    Args:
        csv_path: Split file (design §5).
        encodec_root: Folder holding ``<file_path>`` code arrays (T, 16) int64, or a packed store.
        clap_root: Folder holding ``<file_path>`` CLAP embeddings (512,) float32 (a stored
            (1, 512) array is accepted), or a packed store (may be the same one).
        train: Training mode (random crop, MCM masks, one example per caption) or
            evaluation mode (first ``max_frames`` frames, no masks, one example per clip).
        max_frames: Crop length; 1021 fits the released models (1024 positions).
        masking_prob: MCM masking probability (0.15); 0 turns MCM off (``mcm_mask`` None).
        mask_span: MCM span length in frames (10).
        seed: Seed of the crops and masks (the recipe's seed).
        static_masks: Restore the original's behaviour of one fixed crop window and one
            fixed mask per example for the whole run (draws keyed on epoch 0).
        num_rvq: Codebooks per frame (16).
        codebook_size: Codes must lie in ``[0, codebook_size)`` (1024).
        clap_dim: CLAP embedding size (512).
        feature_fn: Optional ``feature_fn(file_path) -> (codes, clap_embedding)`` used instead
            of the feature trees (e.g. features computed from audio on the fly by
            ``data.extraction.encoders.FeatureExtractor``); the roots are then not read.
        check_files: Check that every feature file exists when the dataset is built (see
            :meth:`validate`); ignored with ``feature_fn``.
        layout: ``auto`` (a root with ``index.json`` or ``shards/`` is a packed store),
            ``files`` or ``packed`` (see :mod:`data.extraction.store`).
    """

    def __init__(self, csv_path: str, encodec_root: str | None, clap_root: str | None, train: bool,
                 max_frames: int = MAX_FRAMES, masking_prob: float = MASK_PROB,
                 mask_span: int = MASK_SPAN, seed: int = DEFAULT_SEED, static_masks: bool = False,
                 num_rvq: int = 16, codebook_size: int = 1024, clap_dim: int = 512,
                 feature_fn: FeatureFn | None = None, check_files: bool = True, layout: str = "auto"):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0.0 <= masking_prob <= 1.0:
            raise ValueError(f"masking_prob must be in [0, 1], got {masking_prob}")
        if feature_fn is None and (encodec_root is None or clap_root is None):
            raise ValueError("encodec_root and clap_root are required unless feature_fn is given")
        self.csv_path = csv_path
        self.encodec_root = encodec_root
        self.clap_root = clap_root
        self.train = train
        self.max_frames = max_frames
        self.masking_prob = masking_prob if train else 0.0
        self.mask_span = mask_span
        self.seed = seed
        self.static_masks = static_masks
        self.num_rvq = num_rvq
        self.codebook_size = codebook_size
        self.clap_dim = clap_dim
        self.feature_fn = feature_fn
        try:
            self.store = None if feature_fn is not None else FeatureStore(encodec_root, clap_root, layout)
        except StoreError as error:
            raise DataError(str(error)) from None
        # The epoch lives in shared memory so that set_epoch() also reaches the copies of
        # this dataset held by persistent DataLoader workers (fork or spawn).
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self._warned_crop = False

        split = read_split(csv_path, per_caption=train)
        self.file_paths: list[str] = split.file_paths
        self.captions: list[str] = [refs[0] for refs in split.references] if train else []  # one per example
        self.references: list[list[str]] = [] if train else split.references  # evaluation: all of a clip's
        if check_files and feature_fn is None:
            self.validate()

    def __len__(self) -> int:
        return len(self.file_paths)

    @property
    def epoch(self) -> int:
        """The epoch that seeds the crops and masks."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose crops and masks are served (call before each epoch).

        Args:
            epoch: Epoch number (>= 0); the same epoch always gives the same draws.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def clip_frames(self, known: dict[str, int] | None = None) -> list[int]:
        """Frames per example after cropping, from the ``.npy`` headers or the store's index (for length grouping).

        Args:
            known: frames already read per ``file_path`` (e.g. by the recipe checks); only the
                clips missing from it are read again.
        """
        known = known or {}
        cache: dict[str, int] = {}
        try:
            for file_path in self.file_paths:
                if file_path not in cache:
                    frames = known[file_path] if file_path in known else self.store.frames(file_path)
                    cache[file_path] = min(frames, self.max_frames)
        except StoreError as error:
            raise DataError(str(error)) from None
        return [cache[p] for p in self.file_paths]

    def validate(self) -> None:
        """Checks that every feature file of the split exists, before any training starts.

        Raises:
            DataError: One line with the number of missing files and the first few of them.
        """
        missing = self.store.missing(self.file_paths)
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            hint = "" if ".npy" in missing[0] else "; file_path must name the .npy feature file"
            raise DataError(f"{len(missing)} feature file(s) of {self.csv_path} missing: {shown} "
                            f"(run data/preprocess.py for this split, or fix encodec_root/clap_root{hint})")

    def load_features(self, file_path: str) -> tuple[np.ndarray, np.ndarray, str, str]:
        """Returns (codes, clap_embedding, codes source, clap source) of one clip, unchecked."""
        if self.feature_fn is not None:
            codes, clap_embedding = self.feature_fn(file_path)
            return np.asarray(codes), np.asarray(clap_embedding), file_path, file_path
        try:  # memory-mapped in either layout: only the cropped frames are read from disk
            return self.store.load(file_path)
        except StoreError as error:
            raise DataError(str(error)) from None

    def _check_codes(self, codes: np.ndarray, source: str) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.num_rvq or codes.shape[0] < 1:
            hint = (f"; it looks like ({self.num_rvq}, T): store codes time-major as (T, {self.num_rvq})"
                    if codes.ndim == 2 and codes.shape[0] == self.num_rvq else "")
            raise DataError(f"codes in {source} have shape {tuple(codes.shape)}, expected "
                            f"(T, {self.num_rvq}) with T >= 1{hint} (re-run data/preprocess.py)")
        if not np.issubdtype(codes.dtype, np.integer):
            raise DataError(f"codes in {source} have dtype {codes.dtype}, expected int64 "
                            "(re-run data/preprocess.py)")

    def _check_clap(self, clap_embedding: np.ndarray, source: str) -> np.ndarray:
        if clap_embedding.shape == (1, self.clap_dim):
            clap_embedding = clap_embedding[0]
        if clap_embedding.shape != (self.clap_dim,):
            raise DataError(f"CLAP embedding in {source} has shape {tuple(clap_embedding.shape)}, "
                            f"expected ({self.clap_dim},) (re-run data/preprocess.py)")
        return clap_embedding

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        file_path = self.file_paths[index]
        codes, clap_embedding, codes_source, clap_source = self.load_features(file_path)
        self._check_codes(codes, codes_source)
        clap_embedding = self._check_clap(clap_embedding, clap_source)
        draw_epoch = 0 if self.static_masks else self.epoch

        if self.train:
            crop_rng = example_rng(self.seed, draw_epoch, index, CROP_STREAM)
            codes = crop_codes(codes, self.max_frames, crop_rng)
        else:
            if codes.shape[0] > self.max_frames and not self._warned_crop:
                self._warned_crop = True
                logger.warning("%s has %d frames; evaluating on its first %d (%.1f s at %d frames/s). "
                               "Longer clips of this split are cropped the same way.",
                               codes_source, codes.shape[0], self.max_frames, self.max_frames / ENCODEC_FRAME_RATE,
                               ENCODEC_FRAME_RATE)
            codes = crop_codes(codes, self.max_frames, None)
        codes = np.array(codes, dtype=np.int64)  # (T', 16), copied out of the memory map
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise DataError(f"codes in {codes_source} lie outside [0, {self.codebook_size}) "
                            f"(min {codes.min()}, max {codes.max()}); re-run data/preprocess.py")

        mcm_mask = None
        if self.masking_prob > 0:
            mask_rng = example_rng(self.seed, draw_epoch, index, MASK_STREAM)
            mcm_mask = span_mask(codes.shape[0], mask_rng, self.num_rvq, self.masking_prob, self.mask_span)

        item = {
            "file_path": file_path,
            "codes": codes,                                                  # (T', 16) int64
            "mcm_mask": mcm_mask,                                            # (T', 16) bool | None
            "clap_embedding": np.array(clap_embedding, dtype=np.float32),    # (512,)
        }
        if self.train:
            item["caption"] = self.captions[index]
        else:
            item["references"] = list(self.references[index])
        return item
