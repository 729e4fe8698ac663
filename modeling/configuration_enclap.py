"""Configuration of the EnCLAP model: a BART configuration plus the six EnCLAP fields."""

from __future__ import annotations

from transformers import BartConfig

from common.constants import LABEL_SMOOTHING, MCM_LOSS_SCALE, frame_limit


class EnClapBartConfig(BartConfig):
    """Configuration for :class:`~modeling.EnClapBartForConditionalGeneration`.

    Every :class:`transformers.BartConfig` argument is accepted unchanged; ``model_type`` stays
    ``"bart"`` so that the authors' released ``config.json`` files (which may say
    ``"architectures": ["BartModel"]`` and lack the fields below) load as they are.

    Args:
        d_clap (int, defaults to 512): size of the LAION-CLAP audio embedding fed to the encoder.
        num_rvq (int, defaults to 16): number of EnCodec codebooks (residual quantisers) per frame.
        encodec_vocab_size (int, defaults to 1024): number of codes in each codebook.
        encodec_pad_token_id (int, defaults to 1024): id used for padding and for masked codes;
            must be ``>= encodec_vocab_size`` so it never collides with a real code.
        mcm_loss_scale (float, defaults to 0.7): weight of the masked-codec-modelling loss in the
            total loss.
        label_smoothing (float, defaults to 0.2): label smoothing of the caption cross-entropy.
    """

    model_type = "bart"

    def __init__(
        self,
        d_clap: int = 512,
        num_rvq: int = 16,
        encodec_vocab_size: int = 1024,
        encodec_pad_token_id: int = 1024,
        mcm_loss_scale: float = MCM_LOSS_SCALE,
        label_smoothing: float = LABEL_SMOOTHING,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("d_clap", d_clap), ("num_rvq", num_rvq), ("encodec_vocab_size", encodec_vocab_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(encodec_pad_token_id, int) or encodec_pad_token_id < encodec_vocab_size:
            raise ValueError(
                f"encodec_pad_token_id must be an integer >= encodec_vocab_size ({encodec_vocab_size}), "
                f"got {encodec_pad_token_id!r}"
            )
        if not mcm_loss_scale >= 0:
            raise ValueError(f"mcm_loss_scale must be >= 0, got {mcm_loss_scale!r}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if self.max_position_embeddings < 4:
            raise ValueError(f"max_position_embeddings must be >= 4, got {self.max_position_embeddings!r}")
        self.d_clap = d_clap
        self.num_rvq = num_rvq
        self.encodec_vocab_size = encodec_vocab_size
        self.encodec_pad_token_id = encodec_pad_token_id
        self.mcm_loss_scale = float(mcm_loss_scale)
        self.label_smoothing = float(label_smoothing)

    def validate(self) -> None:
        """transformers 5's checks (run when saving), without its special-token range check for
        ``encodec_pad_token_id``: that id indexes the codec tables, not the text vocabulary, and
        ``__init__`` checks it. transformers 4.x has no such method and never calls it."""
        codec_pad = self.__dict__.pop("encodec_pad_token_id", None)
        try:
            super().validate()
        finally:
            if codec_pad is not None:
                self.encodec_pad_token_id = codec_pad

    @property
    def encodec_table_size(self) -> int:
        """Rows of each codec embedding table: codes + pad id, rounded up to a multiple of 64."""
        return -(-(self.encodec_pad_token_id + 1) // 64) * 64

    @property
    def max_frames(self) -> int:
        """Most EnCodec frames one clip can hold: positions minus the CLAP slot, ``<s>`` and ``</s>``."""
        return frame_limit(self.max_position_embeddings)
