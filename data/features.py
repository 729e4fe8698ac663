"""Feature encoders: EnCodec codes and LAION-CLAP embeddings, and the one FeatureExtractor.

``FeatureExtractor.extract`` is THE single place raw audio becomes EnCLAP features; the
preprocessing CLI, the captioning pipeline, evaluation's raw-audio mode and the demo all
call it (or ``extract_prepared`` after decoding and resampling in DataLoader workers with
``prepare_branches``), so a clip gets identical features whichever way it comes in.

Both encoders sit behind the same small interface (``sample_rate``, ``encode(batch)``) and
both encode batches with results equal to encoding each clip alone:

* ``EncodecEncoder``: the ``encodec`` package's causal 24 kHz model at 12 kbps -> codes
  ``(T, 16)`` int64, T = ceil(samples_24k / 320). EnCodec pads the END of each clip by
  reflection inside every strided convolution, so zero-padding clips to a common length
  would change their last frame. The batched encoder therefore runs the SEANet encoder
  layer by layer and pads every clip exactly as encodec's ``SConv1d`` pads it alone (with
  encodec's own ``pad1d``), then cuts each result to its own length.
* ``ClapEncoder``: LAION-CLAP HTSAT-tiny with fusion (``aff_2d``), built from
  laion_clap's ``clap_module`` files without importing the ``laion_clap`` package (its
  ``__init__`` fetches three hub tokenizers and fails offline). Input preparation follows
  laion_clap's ``get_audio_embedding_from_data`` numpy path (int16 round trip, repeat-pad
  to 10 s, fusion mel) with the random fusion chunks drawn from a per-clip generator seeded
  with ``seed``, so the same clip always gives the same embedding, alone or in a batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import types
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.audio import (
    CLAP_SAMPLE_RATE,
    ENCODEC_SAMPLE_RATE,
    AudioError,
    clap_quantize,
    load_audio,
    resample_for_clap,
    resample_for_encodec,
    to_mono,
)

logger = logging.getLogger(__name__)

ENCODEC_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + ENCODEC_CHECKPOINT
CLAP_CHECKPOINT_NAME = "630k-audioset-fusion-best.pt"
CLAP_CHECKPOINT_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/" + CLAP_CHECKPOINT_NAME


class ModelLoadError(RuntimeError):
    """Encoder weights that cannot be found or loaded; the message is one line with the fix."""


# --------------------------------------------------------------------------------------------
# EnCodec
# --------------------------------------------------------------------------------------------


class EncodecEncoder:
    """EnCodec 24 kHz at a fixed bandwidth, encoding batches exactly as clips alone.

    Args:
        device: torch device to run on ("cpu", "cuda", "cuda:1", ...).
        pretrained: load Meta's released weights (downloaded to torch hub's cache on first
            use); False builds random weights (tests, benchmarks).
        bandwidth: target bandwidth in kbps; 12.0 gives the 16 codebooks EnCLAP uses.
        repository: optional local folder holding ``encodec_24khz-d7cc33bc.th`` (offline use).
    """

    def __init__(self, device: Union[str, torch.device] = "cpu", pretrained: bool = True,
                 bandwidth: float = 12.0, repository: Optional[str] = None):
        from encodec import EncodecModel
        from encodec.modules import conv as encodec_conv

        self._pad1d = encodec_conv.pad1d
        self._extra_padding = encodec_conv.get_extra_padding_for_conv1d
        self._sconv = encodec_conv.SConv1d
        try:
            model = EncodecModel.encodec_model_24khz(
                pretrained=pretrained,
                repository=None if repository is None else __import__("pathlib").Path(repository))
        except (OSError, ValueError, RuntimeError) as err:  # URLError is an OSError
            reason = " ".join(str(err).split())[:200]
            raise ModelLoadError(
                f"cannot load the EnCodec 24 kHz weights ({reason}); download {ENCODEC_URL} "
                f"once with network access (torch hub caches it in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}) or pass its folder as "
                f"repository") from None
        model.set_target_bandwidth(bandwidth)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.bandwidth = float(bandwidth)
        self.sample_rate = int(model.sample_rate)  # 24000
        self.frame_rate = int(model.frame_rate)  # 75
        self.hop_length = int(np.prod(model.encoder.ratios))  # 320
        self.num_codebooks = int(
            model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, bandwidth))  # 16

    def num_frames(self, num_samples: int) -> int:
        """Frames EnCodec produces for a 24 kHz clip: ceil(samples / 320)."""
        return int(math.ceil(num_samples / self.hop_length))

    # The encoder is causal: output frame t never sees input after t except through the
    # end padding, so garbage beyond a clip's valid length cannot leak into its valid
    # outputs as long as every strided/padded conv sees the clip padded as if alone.
    def _sconv1d(self, layer, x: torch.Tensor, lengths: List[int]):
        conv = layer.conv.conv
        kernel_size, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        padding_total = (kernel_size - 1) * dilation - (stride - 1)
        if not layer.causal:
            raise NotImplementedError("batched encoding is written for the causal 24 kHz model")
        padded = []
        for i, length in enumerate(lengths):
            xi = x[i:i + 1, :, :length]  # (1, C, l_i)
            extra = self._extra_padding(xi, kernel_size, stride, padding_total)
            padded.append(self._pad1d(xi, (padding_total, extra), mode=layer.pad_mode))
        width = max(p.shape[-1] for p in padded)
        batch = torch.cat([F.pad(p, (0, width - p.shape[-1])) for p in padded])  # (B, C, W)
        out = layer.conv(batch)
        return out, [int(math.ceil(length / stride)) for length in lengths]

    def _forward(self, module: nn.Module, x: torch.Tensor, lengths: List[int]):
        from encodec.modules.seanet import SEANetResnetBlock
        if isinstance(module, self._sconv):
            return self._sconv1d(module, x, lengths)
        if isinstance(module, nn.Sequential):
            for child in module:
                x, lengths = self._forward(child, x, lengths)
            return x, lengths
        if isinstance(module, SEANetResnetBlock):
            y, _ = self._forward(module.block, x, lengths)
            skip, _ = self._forward(module.shortcut, x, lengths)
            return skip + y, lengths
        # ELU, Identity and the unidirectional LSTM work time step by time step.
        return module(x), lengths

    @torch.inference_mode()
    def encode(self, wavs: Sequence[Union[torch.Tensor, np.ndarray]]) -> List[np.ndarray]:
        """Encodes 24 kHz mono clips into codes, one batch.

        Args:
            wavs: 1-D float tensors/arrays at 24 kHz (see ``data.audio.resample_for_encodec``),
                any lengths >= 1.

        Returns:
            One np.int64 array of shape (T_i, 16) per clip, T_i = ceil(len_i / 320),
            identical to encoding that clip alone.
        """
        if len(wavs) == 0:
            return []
        tensors = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in wavs]
        lengths = [int(t.shape[0]) for t in tensors]
        if min(lengths) == 0:
            raise AudioError("<array>: an empty clip cannot be encoded")
        width = max(lengths)
        x = torch.stack([F.pad(t, (0, width - t.shape[0])) for t in tensors])  # (B, N)
        x = x[:, None, :].to(self.device)  # (B, 1, N)
        emb, frames = self._forward(self.model.encoder.model, x, lengths)  # (B, 128, T)
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.bandwidth)  # (K, B, T)
        codes = codes.transpose(0, 1).cpu().numpy()  # (B, K, T)
        return [np.ascontiguousarray(codes[i, :, :t].T).astype(np.int64)  # (T_i, K)
                for i, t in enumerate(frames)]
