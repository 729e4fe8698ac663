"""EnCodec 24 kHz codes (design §2), padding each clip of a batch as it would be padded alone.

The ``encodec`` package's causal 24 kHz model at 12 kbps gives codes ``(T, 16)`` int64,
T = ceil(samples_24k / 320). EnCodec pads the END of each clip by reflection inside every
strided convolution, so zero-padding clips to a common length would change their last frame.
The batched encoder therefore runs the SEANet encoder layer by layer and pads every clip
exactly as encodec's ``SConv1d`` pads it alone (with encodec's own ``pad1d``), then cuts each
result to its own length.
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.extraction.audio import ENCODEC_FRAME_RATE, ENCODEC_SAMPLE_RATE, AudioError
from data.extraction.contract import ModelLoadError, resolve_batch_size

ENCODEC_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
ENCODEC_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + ENCODEC_CHECKPOINT


# --------------------------------------------------------------------------------------------
# EnCodec
# --------------------------------------------------------------------------------------------


class EncodecEncoder:
    """EnCodec 24 kHz at a fixed bandwidth, padding each clip of a batch as it would be padded alone
    (a :class:`data.extraction.contract.Codec`).

    Args:
        device: torch device to run on ("cpu", "cuda", "cuda:1", ...).
        pretrained: load Meta's released weights (downloaded to torch hub's cache on first
            use); False builds random weights (tests, benchmarks).
        bandwidth: target bandwidth in kbps; 12.0 gives the 16 codebooks EnCLAP uses.
        repository: optional local folder holding ``encodec_24khz-d7cc33bc.th`` (offline use).
        max_batch_size: ``encode`` runs at most this many clips per forward pass. None
            (default) means 1 on CPU, where batching is no faster and one clip per pass makes
            results bit-identical however clips are grouped, and the whole list on a GPU.
            Codes do not depend on it beyond float rounding; only speed and memory do.
        seed: seeds the random weights when ``pretrained`` is False (the global torch
            generator is left untouched), so random-weight runs are reproducible. Encodec's
            fresh codebooks are all zeros (they wait for k-means on training data), which would
            give code 0 everywhere; random-weight encoders therefore fill each codebook with
            latents of a seeded calibration signal (see :meth:`_calibrate_random_codebooks`),
            so codes depend on the audio as they do with trained weights.
    """

    # The codes at the default 12 kbps, before any model is built (an instance reads its own).
    sample_rate = ENCODEC_SAMPLE_RATE
    frame_rate = ENCODEC_FRAME_RATE
    num_codebooks = 16
    codebook_size = 1024

    def __init__(self, device: Union[str, torch.device] = "cpu", pretrained: bool = True,
                 bandwidth: float = 12.0, repository: Optional[str] = None,
                 max_batch_size: Optional[int] = None, seed: int = 0):
        from encodec import EncodecModel
        from encodec.modules import conv as encodec_conv

        self._pad1d = encodec_conv.pad1d
        self._extra_padding = encodec_conv.get_extra_padding_for_conv1d
        self._sconv = encodec_conv.SConv1d
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # encodec uses the deprecated torch weight_norm: a FutureWarning users can't act on.
                warnings.simplefilter("ignore", FutureWarning)
                torch.manual_seed(seed)
                model = EncodecModel.encodec_model_24khz(
                    pretrained=pretrained,
                    repository=None if repository is None else pathlib.Path(repository))
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
        self.max_batch_size = resolve_batch_size(max_batch_size, self.device)
        self.sample_rate = int(model.sample_rate)  # 24000
        self.frame_rate = int(model.frame_rate)  # 75
        self.hop_length = int(np.prod(model.encoder.ratios))  # 320
        self.num_codebooks = int(
            model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, bandwidth))  # 16
        self.codebook_size = int(model.quantizer.bins)  # 1024
        if not pretrained:
            self._calibrate_random_codebooks(seed)

    @torch.inference_mode()
    def _calibrate_random_codebooks(self, seed: int, seconds: float = 4.0) -> None:
        """Fill the random model's codebooks with residual latents of a seeded calibration signal.

        Like encodec's own data-driven codebook initialisation (one k-means step), each
        codebook's entries are residual latent vectors sampled at random (plus a little seeded
        noise, so that no two entries are equal): of a fixed signal of tones, sweeps and noise
        bursts at varied levels, so that any process building the same seed gets the same
        codebooks without seeing any dataset.
        """
        rng = np.random.default_rng(seed)
        part = self.sample_rate // 3
        t = np.arange(part) / self.sample_rate
        pieces = []
        for k in range(int(seconds * 3)):
            level = 10 ** rng.uniform(-2, 0)
            if k % 3 == 0:
                piece = np.sin(2 * np.pi * rng.uniform(50, 8000) * t)
            elif k % 3 == 1:
                f0, f1 = rng.uniform(50, 8000, 2)
                piece = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
            else:
                piece = rng.standard_normal(part)
            pieces.append(level * piece)
        signal = torch.from_numpy(np.concatenate(pieces).astype(np.float32))
        residual = torch.from_numpy(self.latents([signal])[0]).to(self.device)  # (frames, 128)
        generator = torch.Generator().manual_seed(seed)
        for layer in self.model.quantizer.vq.layers:
            codebook = layer._codebook
            rows = torch.randint(0, residual.shape[0], (codebook.embed.shape[0],), generator=generator)
            # Jitter every entry by half the residual's RMS. Exact latents drawn with
            # replacement would leave identical entries (and all-zero residuals for the next
            # codebooks): exact ties, whose winner depends on the CPU's matrix kernels (design §12).
            noise = torch.randn((len(rows), residual.shape[1]), generator=generator).to(self.device)
            scale = 0.5 * residual.pow(2).mean().sqrt()
            codebook.embed.copy_(residual[rows.to(self.device)] + scale * noise)
            codebook.inited.fill_(1)
            residual = residual - codebook.dequantize(codebook.quantize(residual))

    def num_frames(self, num_samples: int) -> int:
        """Frames EnCodec produces for a 24 kHz clip: ceil(samples / 320)."""
        return int(math.ceil(num_samples / self.hop_length))

    #: Frames encoded past the ones kept when encoding only a clip's start (see prefix_samples).
    PREFIX_MARGIN_FRAMES = 1

    def prefix_samples(self, frames: int) -> int:
        """24 kHz samples to encode so that the first ``frames`` frames equal the whole clip's.

        Every layer is causal (see ``_sconv1d``): output frame t reads input samples before
        320 (t + 1) only, so ``frames`` hops would do; one frame more keeps the kept frames clear
        of the reflection padding EnCodec adds at the end of whatever it encodes.
        """
        return (int(frames) + self.PREFIX_MARGIN_FRAMES) * self.hop_length

    # The encoder is causal: output frame t never sees input after t except through the
    # end padding, so garbage beyond a clip's valid length cannot leak into its valid
    # outputs as long as every strided/padded conv sees the clip padded as if alone.
    def _sconv1d(self, layer, x: torch.Tensor, lengths: List[int]):
        conv = layer.conv.conv
        kernel_size, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        padding_total = (kernel_size - 1) * dilation - (stride - 1)
        if not layer.causal:
            raise NotImplementedError("batched encoding is written for the causal 24 kHz model")
        out_lengths = [int(math.ceil(length / stride)) for length in lengths]
        if all(length == x.shape[-1] for length in lengths):
            # Equal lengths (a single clip, or a batch of 10 s clips): padding the whole batch
            # is padding each clip alone, without per-clip copies.
            extra = self._extra_padding(x, kernel_size, stride, padding_total)
            padded = self._pad1d(x, (padding_total, extra), mode=layer.pad_mode)
            return layer.conv(padded), out_lengths
        padded = []
        for i, length in enumerate(lengths):
            xi = x[i:i + 1, :, :length]  # (1, C, l_i)
            extra = self._extra_padding(xi, kernel_size, stride, padding_total)
            padded.append(self._pad1d(xi, (padding_total, extra), mode=layer.pad_mode))
        width = max(p.shape[-1] for p in padded)
        batch = torch.cat([F.pad(p, (0, width - p.shape[-1])) for p in padded])  # (B, C, W)
        return layer.conv(batch), out_lengths

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

    def _embed(self, wavs: Sequence[Union[torch.Tensor, np.ndarray]]):
        tensors = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in wavs]
        lengths = [int(t.shape[0]) for t in tensors]
        if min(lengths) == 0:
            raise AudioError("<array>: an empty clip cannot be encoded")
        width = max(lengths)
        x = torch.stack([F.pad(t, (0, width - t.shape[0])) for t in tensors])  # (B, N)
        x = x[:, None, :].to(self.device)  # (B, 1, N)
        return self._forward(self.model.encoder.model, x, lengths)  # (B, 128, T), [T_i]

    @torch.inference_mode()
    def latents(self, wavs: Sequence[Union[torch.Tensor, np.ndarray]]) -> List[np.ndarray]:
        """The continuous encoder output before quantisation, per clip.

        Args:
            wavs: 1-D float tensors/arrays at 24 kHz.

        Returns:
            One float32 array of shape (T_i, 128) per clip, as encodec's encoder gives for
            the clip alone.
        """
        if len(wavs) == 0:
            return []
        emb, frames = self._embed(wavs)
        emb = emb.float().cpu().numpy()
        return [np.ascontiguousarray(emb[i, :, :t].T) for i, t in enumerate(frames)]

    @torch.inference_mode()
    def encode(self, wavs: Sequence[Union[torch.Tensor, np.ndarray]]) -> List[np.ndarray]:
        """Encodes 24 kHz mono clips into codes, one batch.

        Args:
            wavs: 1-D float tensors/arrays at 24 kHz (see ``data.extraction.audio.resample_for_encodec``),
                any lengths >= 1.

        Returns:
            One np.int64 array of shape (T_i, 16) per clip, T_i = ceil(len_i / 320), as
            encoding that clip alone gives them, up to float rounding (design §12).
        """
        step = self.max_batch_size or max(len(wavs), 1)
        results: List[np.ndarray] = []
        for start in range(0, len(wavs), step):
            emb, frames = self._embed(wavs[start:start + step])  # (B, 128, T)
            codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.bandwidth)
            codes = codes.transpose(0, 1).cpu().numpy()  # (K, B, T) -> (B, K, T)
            results.extend(np.ascontiguousarray(codes[i, :, :t].T).astype(np.int64)  # (T_i, K)
                           for i, t in enumerate(frames))
        return results
