"""Cropping and masked-codec-modelling (MCM) span masks for EnCodec code matrices.

Everything here works on one example's ``codes`` array of shape (T, num_rvq) and is driven
by an explicit ``numpy.random.Generator``. :func:`example_rng` derives that generator from
``(seed, epoch, example index, stream)`` so that a crop window or a mask depends only on
those numbers -- not on the number of DataLoader workers, the number of processes, or the
order in which examples are served -- which makes masks exact across a resume (design §4).
"""

from __future__ import annotations

import numpy as np

from common.constants import MASK_PROB, MASK_SPAN, MAX_FRAMES

# Independent random streams of one example, so that turning masking on or off never
# changes the crop window an example gets (and vice versa).
CROP_STREAM = 0
MASK_STREAM = 1


def example_rng(seed: int, epoch: int, index: int, stream: int = MASK_STREAM) -> np.random.Generator:
    """Returns the generator of one example's crop or mask draw.

    Args:
        seed: Run seed (the recipe's ``seed``).
        epoch: Training epoch; pass a constant to get the same draw every epoch.
        index: Index of the example in its dataset.
        stream: :data:`CROP_STREAM` or :data:`MASK_STREAM`.

    Returns:
        A PCG64 generator seeded by ``SeedSequence([seed, epoch, index, stream])``.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index), ("stream", stream)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 to seed a generator, got {value}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index), int(stream)]))


def crop_codes(codes: np.ndarray, max_frames: int = MAX_FRAMES,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Crops a code matrix to at most ``max_frames`` frames.

    Training takes a random window (pass ``rng``); evaluation and inference take the first
    ``max_frames`` frames (``rng=None``). Callers that crop at evaluation or inference time
    must tell the user, since the end of the clip is not captioned (design §3).

    Args:
        codes: (T, num_rvq) array (numpy array or memory map).
        max_frames: Largest number of frames kept; 1021 for the released models.
        rng: Generator for the window start; ``None`` keeps the first frames.

    Returns:
        A (min(T, max_frames), num_rvq) view of ``codes`` (no copy).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    num_frames = codes.shape[0]
    if num_frames <= max_frames:
        return codes
    start = 0 if rng is None else int(rng.integers(0, num_frames - max_frames + 1))
    return codes[start:start + max_frames]


def num_masked_spans(num_frames: int, mask_prob: float, span: int, epsilon: float) -> int:
    """Number of spans masked in one codebook row (wav2vec2's rule, made safe for short clips).

    ``int(mask_prob * T / span + epsilon)``, capped so that the spans fit (at most
    ``T // span`` of them) and that enough distinct starts exist in ``[0, T - span]``;
    a clip shorter than a span gets none instead of crashing as the original did.

    Args:
        num_frames: T, frames in the (cropped) clip.
        mask_prob: Share of frames chosen as span starts times ``span`` (0.15).
        span: Span length in frames (10).
        epsilon: The example's U(0, 1) draw, shared by all its codebooks.

    Returns:
        The number of span starts to draw, >= 0.
    """
    if num_frames < span:
        return 0
    count = int(mask_prob * num_frames / span + epsilon)
    count = min(count, num_frames // span)
    return max(min(count, num_frames - span + 1), 0)


def span_mask(num_frames: int, rng: np.random.Generator, num_rvq: int = 16,
              mask_prob: float = MASK_PROB, span: int = MASK_SPAN) -> np.ndarray | None:
    """Draws one example's MCM mask (design §4).

    Per codebook, ``num_masked_spans`` starts are drawn uniformly without replacement from
    ``[0, T - span]`` and the ``span`` frames from each start are masked; spans may overlap,
    so about 14 % of the codes end up masked at the default settings. The epsilon of the
    span count is drawn once and shared by the ``num_rvq`` rows, as in the original.

    Args:
        num_frames: T, frames in the (cropped) clip.
        rng: The example's generator (see :func:`example_rng`).
        num_rvq: Number of codebooks (rows masked independently).
        mask_prob: Masking probability; ``0`` disables MCM.
        span: Span length in frames.

    Returns:
        A (T, num_rvq) bool array, True where the code is hidden, or ``None`` when
        ``mask_prob`` is 0 (MCM off). A clip too short for any span gives an all-False mask.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    if mask_prob == 0.0:
        return None
    mask = np.zeros((num_rvq, num_frames), dtype=bool)  # (16, T): rows are codebooks
    epsilon = rng.random()
    count = num_masked_spans(num_frames, mask_prob, span, epsilon)
    if count == 0:
        return mask.T.copy()
    num_starts = num_frames - span + 1
    # Uniform choice without replacement, all rows at once: the first `count` columns of a
    # random permutation per row (argsort of i.i.d. uniforms) are `count` distinct starts.
    starts = np.argsort(rng.random((num_rvq, num_starts)), axis=1)[:, :count]  # (16, count)
    frames = (starts[:, :, None] + np.arange(span)).reshape(num_rvq, -1)        # (16, count*span)
    np.put_along_axis(mask, frames, True, axis=1)
    return mask.T.copy()  # (T, 16)
