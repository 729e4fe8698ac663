"""Cheap dropout for CPU training: a faster keep-mask generator, and a blocked attention that keeps
neither the attention matrix nor a byte per element of its dropout mask for backward (design §3).

Why: on a CPU, PyTorch's SDPA has no kernel for attention dropout. With ``dropout_p > 0`` it
falls back to materialising the (B, H, L, L) attention matrix and its dropout mask, keeps both
for backward, and draws the mask with ``bernoulli_`` (a Mersenne-Twister draw and a comparison
per element, ~6 ns). At the recipes' L ~ 750 frames that is most of a CPU training step's
dropout cost and the top of its memory peak.

* :class:`MaskStream` / :func:`keep_mask`: Bernoulli keep-masks from numpy's SFC64 generator,
  32 random bits per element compared with a threshold (keep probability ``1 - p`` rounded to
  a multiple of 2**-32), ~10x cheaper than ``bernoulli_``. The same seed gives the same masks.
* :func:`dropout`: inverted dropout with that mask, applied with ``masked_fill`` (kept for
  backward as one byte per element).
* :func:`attention`: ``dropout(softmax(Q K^T * scale + bias)) V`` computed one block of query
  rows at a time, so that a block's scores stay in cache. Forward keeps Q, K, V, the output and
  one log-sum-exp per query row, and the dropout mask packed to one bit per element; backward
  recomputes each block's probabilities (flash-attention style, written with PyTorch ops).
  Batch entries are shared among the intra-op threads, each running its ops single-threaded:
  thousands of small parallel regions would otherwise each wait for every thread, which on a
  machine shared with other jobs costs more than the work.

These are CPU kernels: on CUDA, :func:`dropout` is ``F.dropout`` and the callers leave
attention to SDPA, whose fused kernels do dropout themselves.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np
import torch

_TWO32 = 1 << 32


def keep_threshold(p: float) -> int:
    """``t`` such that ``t / 2**32`` is the keep probability ``1 - p`` rounded to a multiple of 2**-32."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round((1.0 - p) * _TWO32), _TWO32)


class MaskStream:
    """Keep-masks drawn one after another from a seed: the same seed gives the same masks.

    Each element gets 32 random bits (a 64-bit SFC64 draw serves two elements) and is kept when
    they, read as a signed 32-bit number, are below ``t - 2**31``: exactly ``t`` of the ``2**32``
    equally likely values, so ``P(keep) = t / 2**32`` with ``t`` from :func:`keep_threshold`.

    Args:
        seed: an int or a sequence of ints (numpy ``SeedSequence`` entropy).
    """

    def __init__(self, seed):
        self._bits = np.random.SFC64(np.random.SeedSequence(seed))

    def draw(self, shape: Sequence[int], p: float) -> torch.Tensor:
        """A bool tensor of ``shape``, each element independently True with probability ``1 - p``."""
        return self._draw(shape, p, dropped=False)

    def draw_dropped(self, shape: Sequence[int], p: float) -> torch.Tensor:
        """The complement of :meth:`draw` (True = dropped, probability ``p``), from the same bits.

        Dropping is then one ``masked_fill_`` pass, where multiplying by a bool keep-mask first
        converts the mask to floats (~5x the time on a (8, 753, 3072) activation).
        """
        return self._draw(shape, p, dropped=True)

    def _draw(self, shape: Sequence[int], p: float, dropped: bool) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        threshold = keep_threshold(p)
        if threshold == _TWO32:  # nothing dropped; no bits consumed
            return torch.full(shape, not dropped, dtype=torch.bool)
        numel = int(np.prod(shape, dtype=np.int64))
        words = self._bits.random_raw((numel + 1) // 2)  # uint64, two elements each
        bits = torch.from_numpy(words.view(np.int32)[:numel]).view(shape)
        return bits >= threshold - 2**31 if dropped else bits < threshold - 2**31


def new_seed(generator: Optional[torch.Generator] = None) -> int:
    """A seed drawn from torch's generator, so that ``torch.manual_seed`` fixes every mask."""
    return int(torch.randint(0, 2**62, (), generator=generator))


def keep_mask(shape: Sequence[int], p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A bool keep-mask of ``shape`` (True with probability ``1 - p``), seeded from ``generator``."""
    return MaskStream(new_seed(generator)).draw(shape, p)


def drop_mask(like: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """Which elements of ``like`` dropout with probability ``p`` zeroes: a bool tensor (True =
    dropped), or None when ``p == 0``. On CPU drawn with :class:`MaskStream` (seeded from
    ``generator``, default torch's, so ``torch.manual_seed`` fixes it), elsewhere with ``bernoulli_``."""
    if p <= 0.0:
        return None
    if like.device.type == "cpu":
        return MaskStream(new_seed(generator)).draw_dropped(like.shape, p)
    return torch.empty_like(like, dtype=torch.bool).bernoulli_(p)


def apply_drop(x: torch.Tensor, dropped: Optional[torch.Tensor], p: float) -> torch.Tensor:
    """Inverted dropout with a mask from :func:`drop_mask`: ``x`` itself when ``dropped`` is None,
    else a new tensor with the dropped elements zeroed and the others scaled by ``1 / (1 - p)``
    (the same for a gradient in backward)."""
    if dropped is None:
        return x
    return x.masked_fill(dropped, 0.0).mul_(1.0 / (1.0 - p))


class _Dropout(torch.autograd.Function):
    """Inverted dropout that keeps its mask as one byte per element for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float):
        dropped = drop_mask(x, p)
        ctx.p = p
        ctx.save_for_backward(dropped)
        return apply_drop(x, dropped, p)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (dropped,) = ctx.saved_tensors
        return apply_drop(grad, dropped, ctx.p), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with :func:`keep_mask` masks on CPU (``F.dropout`` elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training=True)
    return _Dropout.apply(x, p)


# ------------------------------------------------------------------------------ threads

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _single_threaded() -> None:
    torch.set_num_threads(1)


def _run_shared(tasks: Sequence[Callable[[], None]]) -> None:
    """Runs ``tasks`` spread over ``torch.get_num_threads()`` threads, each op single-threaded.

    The calling thread takes a share; the intra-op thread count is restored afterwards. The
    tasks run without autograd (grad mode is per thread: a pool thread would otherwise record
    a graph for every op on a tensor that requires grad, and keep it alive).
    """
    global _pool
    threads = min(torch.get_num_threads(), len(tasks))
    if threads <= 1:
        with torch.no_grad():
            for task in tasks:
                task()
        return
    saved = torch.get_num_threads()
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, initializer=_single_threaded,
                                       thread_name_prefix="enclap-attention")
        torch.set_num_threads(1)
        try:
            def run(share):
                with torch.no_grad():
                    for task in share:
                        task()

            futures = [_pool.submit(run, tasks[i::threads]) for i in range(1, threads)]
            run(tasks[0::threads])
            for future in futures:
                future.result()
        finally:
            torch.set_num_threads(saved)


# ------------------------------------------------------------------------------ attention

#: Query rows per block: a block's scores are (heads, rows, L) floats, ~1.2 MB at 12 heads, L=750.
BLOCK_ROWS = 32


def _blocks(length: int, rows: int):
    return [(start, min(start + rows, length)) for start in range(0, length, rows)]


def _mask_layout(heads: int, length: int, keys: int, rows: int) -> tuple[list, int]:
    """``[(start, stop, byte offset, elements)]`` of each query block's packed dropout mask, and the bytes of all."""
    layout, offset = [], 0
    for start, stop in _blocks(length, rows):
        count = heads * (stop - start) * keys
        layout.append((start, stop, offset, count))
        offset += (count + 7) // 8
    return layout, offset


def _scores(q_block, key_t, bias_row, scale: float) -> torch.Tensor:
    """(H, r, L) scores ``q k^T * scale + bias`` of one block."""
    if bias_row is None:
        return torch.bmm(q_block, key_t).mul_(scale)
    return torch.baddbmm(bias_row, q_block, key_t, alpha=scale)


class _BlockedAttention(torch.autograd.Function):
    """``dropout(softmax(q k^T * scale + bias)) v`` over (B, H, L, d) tensors, blocked by query rows.

    Batch entry ``b`` draws its masks from ``MaskStream((seed, b))`` block after block, whichever
    thread computes it, and keeps them for backward packed to one bit per element (``np.packbits``:
    B * H * L * L_k / 8 bytes, 6.8 MB per bart-base layer at 8 x 753 frames): unpacking a block
    costs a few percent of drawing it again.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, q, k, v, bias, scale: float, p: float, seed: int, rows: int):
        batch, heads, length, dim = q.shape
        # (B, L, H, d): the layout the output projection reads, so that it saves this very tensor.
        out = q.new_empty(batch, length, heads, dim)
        lse = q.new_empty(batch, heads, length, 1)
        inv_keep = 1.0 / (1.0 - p)
        layout, total = _mask_layout(heads, length, k.shape[2], rows)
        packed = torch.empty(batch, total, dtype=torch.uint8) if p > 0 else None

        def entry(b: int) -> None:
            stream = MaskStream((seed, b)) if p > 0 else None
            key_t = k[b].transpose(-1, -2)  # (H, d, L)
            bias_row = None if bias is None else bias[b].expand(heads, 1, -1)  # (H, 1, L)
            for start, stop, offset, count in layout:
                s = _scores(q[b, :, start:stop], key_t, bias_row, scale)
                m = s.amax(-1, keepdim=True)
                s.sub_(m).exp_()  # unnormalised probabilities
                z = s.sum(-1, keepdim=True)
                lse[b, :, start:stop] = m + z.log()
                if stream is not None:
                    keep = stream.draw(s.shape, p)
                    packed[b, offset:offset + (count + 7) // 8].numpy()[:] = np.packbits(keep.numpy())
                    s.mul_(keep)
                block = torch.bmm(s, v[b])  # (H, r, d)
                out[b, start:stop] = block.mul_(z.reciprocal_().mul_(inv_keep if p > 0 else 1.0)).transpose(0, 1)

        _run_shared([lambda b=b: entry(b) for b in range(batch)])
        ctx.save_for_backward(q, k, v, bias, out, lse, packed)
        ctx.scale, ctx.p, ctx.layout = scale, p, layout
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse, packed = ctx.saved_tensors
        scale, p, layout = ctx.scale, ctx.p, ctx.layout
        batch, heads, length, _ = q.shape
        # (B, L, H, d) like the output -> (B, H, L, d) like q
        grad_out = grad_out.transpose(1, 2).contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # D_i = sum_j dO_ij O_ij = sum_j dP_ij P_ij: the row term of the softmax backward.
        delta = (grad_out * out.transpose(1, 2)).sum(-1, keepdim=True)  # (B, H, L, 1)
        keep_p = 1.0 - p

        def entry(b: int) -> None:
            key_t = k[b].transpose(-1, -2)
            value_t = v[b].transpose(-1, -2)
            bias_row = None if bias is None else bias[b].expand(heads, 1, -1)
            grad_k[b].zero_()
            grad_v[b].zero_()
            for start, stop, offset, count in layout:
                q_block, go_block = q[b, :, start:stop], grad_out[b, :, start:stop]
                probs = _scores(q_block, key_t, bias_row, scale).sub_(lse[b, :, start:stop]).exp_()
                d_drop = torch.bmm(go_block, value_t)  # d loss / d (masked probabilities) * keep_p
                if packed is not None:
                    bits = np.unpackbits(packed[b, offset:offset + (count + 7) // 8].numpy(), count=count)
                    keep = torch.from_numpy(bits).view(probs.shape).to(probs.dtype)  # 0/1, used twice
                    # dS = P * (dZ * M / keep_p - D) = P * (dZ * M - D * keep_p) / keep_p
                    d_scores = d_drop.mul_(keep).sub_(delta[b, :, start:stop] * keep_p).mul_(probs)
                    probs.mul_(keep)
                else:
                    d_scores = d_drop.sub_(delta[b, :, start:stop]).mul_(probs)
                grad_v[b].baddbmm_(probs.transpose(-1, -2), go_block)
                grad_q[b, :, start:stop] = torch.bmm(d_scores, k[b])
                grad_k[b].baddbmm_(d_scores.transpose(-1, -2), q_block)

        _run_shared([lambda b=b: entry(b) for b in range(batch)])
        grad_v.mul_(1.0 / keep_p)
        grad_q.mul_(scale / keep_p)
        grad_k.mul_(scale / keep_p)
        return grad_q, grad_k, grad_v, None, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], scale: float,
              p: float, generator: Optional[torch.Generator] = None, rows: int = BLOCK_ROWS) -> torch.Tensor:
    """Blocked attention with dropout for CPU training (equal to SDPA's result without dropout).

    Args:
        q: (B, H, L, d) queries.
        k, v: (B, H, L_k, d) keys and values.
        bias: additive mask of shape (B, 1, 1, L_k) or (1, 1, 1, L_k) (padding), or None; it gets
            no gradient.
        scale: score scale (``head_dim ** -0.5``).
        p: attention dropout probability (0 for none).
        generator: where the seed of the dropout masks comes from (default: torch's CPU
            generator, so that ``torch.manual_seed`` fixes them).
        rows: query rows per block.

    Returns:
        (B, H, L, d) attention output, in the dtype of ``q``: a transposed view of a contiguous
        (B, L, H, d) tensor, so ``out.transpose(1, 2).reshape(B, L, H * d)`` copies nothing.
        Half-precision inputs (autocast) are computed in float32, as stock attention's softmax is.
    """
    out_dtype = q.dtype
    work = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    q, k, v = (t.to(work).contiguous() for t in (q, k, v))
    if bias is not None:
        bias = bias.detach().to(work).reshape(bias.shape[0], 1, bias.shape[-1])
        bias = bias.expand(q.shape[0], 1, -1)
    seed = new_seed(generator) if p > 0 else 0
    with torch.autocast("cpu", enabled=False):
        out = _BlockedAttention.apply(q, k, v, bias, float(scale), float(p), seed, int(rows))
    return out.to(out_dtype).transpose(1, 2)
