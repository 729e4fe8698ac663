"""The paper's numbers, each defined once (design §3.4, §4, §6) and read everywhere else; the
recipes in cfg/ repeat some of them as data."""

from __future__ import annotations

#: Positions of BART-base/large and of the released models.
MAX_POSITIONS = 1024
#: Positions that hold no codec frame: the CLAP slot, ``<s>`` and ``</s>`` (design §3.4).
NON_FRAME_POSITIONS = 3


def frame_limit(positions: int) -> int:
    """Most codec frames one clip can hold in a model with ``positions`` positions."""
    return positions - NON_FRAME_POSITIONS


#: The frame limit of BART's 1024 positions: 1021 frames (13.6 s of EnCodec at 75 frames/s).
MAX_FRAMES = frame_limit(MAX_POSITIONS)

#: Masked codec modelling (design §4): share of frames masked, span length in frames.
MASK_PROB = 0.15
MASK_SPAN = 10

#: The losses (design §3.6): weight of the MCM loss, label smoothing of the caption loss.
MCM_LOSS_SCALE = 0.7
LABEL_SMOOTHING = 0.2

#: The seed of every paper recipe.
DEFAULT_SEED = 1115
