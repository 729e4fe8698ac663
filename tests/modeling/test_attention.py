"""modeling/attention.py: the keep-mask generator (statistically), cheap dropout, and the blocked
attention against SDPA (without dropout) and finite differences (with dropout)."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers.models.bart.modeling_bart import BartAttention

from modeling.attention import MaskStream, attention, dropout, keep_mask, keep_threshold
from modeling.layers import EnClapBartEncoderLayer, EnClapCrossAttention
from modeling.compat import encoder_layer_hidden_states as hidden_states  # a tuple under 4.x
from tests.helpers import make_tiny_config, saved_tensor_bytes


def _within_sigmas(count: int, n: int, prob: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * prob) <= sigmas * math.sqrt(n * prob * (1 - prob))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_mask_keeps_with_probability_one_minus_p(p):
    n = 2_000_000
    mask = keep_mask((n,), p, generator=torch.Generator().manual_seed(int(p * 100)))
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert _within_sigmas(int(mask.sum()), n, 1 - p), (p, mask.float().mean().item())
    # Elements of one 64-bit draw (even and odd positions) and neighbours are independent.
    for part in (mask[0::2], mask[1::2]):
        assert _within_sigmas(int(part.sum()), part.numel(), 1 - p)
    both = mask[:-1] & mask[1:]
    assert _within_sigmas(int(both.sum()), n - 1, (1 - p) ** 2, sigmas=6.0)


def test_keep_probability_is_exact_to_32_bits():
    for p in (0.1, 0.2, 1 / 3, 0.05):
        assert abs(keep_threshold(p) / 2**32 - (1 - p)) <= 2**-33
    assert keep_threshold(0.0) == 2**32  # nothing dropped
    with pytest.raises(ValueError):
        keep_threshold(1.0)


def test_masks_repeat_from_a_seed_and_differ_between_seeds():
    first = MaskStream((5, 0))
    again = MaskStream((5, 0))
    a1, a2 = first.draw((3, 40), 0.3), first.draw((7,), 0.3)
    assert torch.equal(a1, again.draw((3, 40), 0.3)) and torch.equal(a2, again.draw((7,), 0.3))
    assert not torch.equal(a1, MaskStream((5, 1)).draw((3, 40), 0.3))


def test_dropped_masks_are_the_complement_of_keep_masks_from_the_same_seed():
    keep, dropped = MaskStream(9).draw((50, 40), 0.3), MaskStream(9).draw_dropped((50, 40), 0.3)
    assert dropped.dtype == torch.bool and torch.equal(dropped, ~keep)
    assert not MaskStream(9).draw_dropped((8,), 0.0).any()


def test_dropout_scales_kept_elements_and_its_gradient_follows_the_mask():
    x = torch.rand(64, 100, dtype=torch.float64) + 1.0
    x.requires_grad_()
    torch.manual_seed(0)
    out = dropout(x, 0.25)
    kept = out != 0
    torch.testing.assert_close(out[kept], (x / 0.75)[kept])
    assert _within_sigmas(int(kept.sum()), kept.numel(), 0.75)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, kept.double() / 0.75)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.25), out)  # torch.manual_seed fixes the mask
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x


def _qkv(batch=2, heads=3, length=37, dim=8, keys=None):
    torch.manual_seed(0)
    shapes = [(batch, heads, length, dim), (batch, heads, keys or length, dim), (batch, heads, keys or length, dim)]
    return [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]


def _padding_bias(lengths, keys):
    bias = torch.zeros(len(lengths), 1, 1, keys, dtype=torch.float64)
    for i, n in enumerate(lengths):
        bias[i, ..., n:] = torch.finfo(torch.float64).min
    return bias


@pytest.mark.parametrize("rows", [5, 16, 64])
@pytest.mark.numerics
def test_attention_without_dropout_matches_sdpa(rows):
    q, k, v = _qkv()
    bias = _padding_bias([37, 30], 37)
    out = attention(q, k, v, bias, 0.3, 0.0, rows=rows)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    stock = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert ours[1][1, :, 30:].abs().max() == 0  # padded keys get no gradient


def test_attention_gradients_with_dropout():
    q, k, v = _qkv(length=11, keys=13)
    bias = _padding_bias([13, 9], 13)

    def f(q, k, v):  # the same masks at every evaluation
        return attention(q, k, v, bias, 0.4, 0.3, generator=torch.Generator().manual_seed(7), rows=4)

    assert not torch.allclose(f(q, k, v), attention(q, k, v, bias, 0.4, 0.0))  # dropout is on
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


def test_attention_dropout_is_unbiased_and_drops():
    q, k, v = _qkv(batch=1, heads=2, length=6, dim=4)
    with torch.no_grad():
        clean = attention(q, k, v, None, 0.5, 0.0)
        draws = torch.stack([attention(q, k, v, None, 0.5, 0.2) for _ in range(4000)])
    assert (draws[0] != clean).any()
    spread = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - clean).abs() <= 5 * spread + 1e-9).all()


@pytest.mark.numerics
def test_attention_does_not_depend_on_the_thread_count():
    q, k, v = _qkv(batch=5, length=40)
    bias = _padding_bias([40, 33, 40, 12, 25], 40)
    results = []
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = attention(q, k, v, bias, 0.3, 0.2, generator=torch.Generator().manual_seed(3), rows=8)
            results.append((out, *torch.autograd.grad(out.pow(2).sum(), (q, k, v))))
            assert torch.get_num_threads() == threads  # restored after the shared section
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _encoder_layer(attention_dropout: float, **fields):
    config = make_tiny_config(100, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=32,
                              attention_dropout=attention_dropout, **fields)
    config._attn_implementation = "sdpa"
    return EnClapBartEncoderLayer(config, layer_idx=0).train()


@pytest.mark.numerics
def test_blocked_self_attention_matches_the_stock_sub_layer():
    torch.manual_seed(0)
    layer = _encoder_layer(0.0).double()
    x = torch.randn(3, 21, 16, dtype=torch.float64, requires_grad=True)
    mask = _padding_bias([21, 15, 8], 21)
    ours = layer._blocked_self_attention(x, mask)
    stock = layer.self_attn(hidden_states=x, attention_mask=mask)[0]
    torch.testing.assert_close(ours, stock, rtol=1e-10, atol=1e-12)
    grads = [torch.autograd.grad(y.pow(3).sum(), [x, *layer.self_attn.parameters()]) for y in (ours, stock)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_encoder_layer_gradients_with_attention_dropout():
    torch.manual_seed(0)
    layer = _encoder_layer(0.3, dropout=0.2, activation_dropout=0.1).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    assert layer._blocked_attention_applies(x, None, None, False)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def f(x, *values):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            return hidden_states(functional_call(layer, dict(zip(names, values)), (x, None, None)))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_blocked_attention_keeps_no_attention_matrix():
    torch.manual_seed(0)
    layer = _encoder_layer(0.1)
    x = torch.randn(2, 300, 16, requires_grad=True)
    stored = {}
    for efficient in (False, True):
        layer.efficient_training = efficient
        stored[efficient] = saved_tensor_bytes(lambda: layer(x, None, None))
    # Stock SDPA with dropout keeps the (B, H, L, L) probabilities and mask: 2*2*300*300*(4+1)
    # bytes = 1.8 MB, against ~40 (B, L, 16) float tensors (~0.8 MB) for the whole layer.
    assert stored[True] < 0.5 * stored[False], stored


def test_blocked_attention_and_cross_attention_shortcut_are_cpu_only():
    layer = _encoder_layer(0.1)
    cpu = torch.randn(1, 5, 16)
    assert layer._blocked_attention_applies(cpu, None, None, False)
    assert not layer._blocked_attention_applies(cpu.to("meta"), None, None, False)  # any other device
    assert not layer._blocked_attention_applies(cpu, None, None, True)  # weights wanted
    assert not _encoder_layer(0.0)._blocked_attention_applies(cpu, None, None, False)  # SDPA's flash kernel

    config = make_tiny_config(100, d_model=8, decoder_attention_heads=2)
    config._attn_implementation = "sdpa"
    attn = EnClapCrossAttention(8, 2, is_decoder=True, config=config, layer_idx=0).train()
    for device, stock_calls in (("cpu", 0), ("meta", 1)):
        attn.to(device)
        with mock.patch.object(BartAttention, "forward", autospec=True,
                               side_effect=lambda self, h, **kw: (h, None)) as stock:
            attn(torch.randn(2, 3, 8, device=device), key_value_states=torch.randn(2, 5, 8, device=device))
        assert stock.call_count == stock_calls, device


def test_encoder_layer_under_bf16_autocast_with_attention_dropout():
    torch.manual_seed(0)
    layer = _encoder_layer(0.0)
    x = torch.randn(2, 30, 16)
    mask = _padding_bias([30, 22], 30).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = layer._blocked_self_attention(x, mask)
        stock = layer.self_attn(hidden_states=x, attention_mask=mask)[0]
    assert ours.dtype == stock.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), stock.float(), rtol=2e-2, atol=2e-2 * stock.abs().max().item())

    layer = _encoder_layer(0.2, dropout=0.1)
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._blocked_attention_applies(xi, mask, None, False)
        out = hidden_states(layer(xi, mask, None))
    out.float().square().sum().backward()
    assert torch.isfinite(xi.grad).all() and xi.grad.abs().max() > 0
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_pool_threads_record_no_graph():
    """Grad mode is per thread: the pool's threads must not build graphs that keep blocks alive."""
    q, k, v = _qkv(batch=4, length=20)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = attention(q, k, v, None, 0.3, 0.2, rows=8)
        node = out.grad_fn.next_functions[0][0]  # out is a transposed view of the function's output
        assert type(node).__name__.startswith("_BlockedAttention")
        out.sum().backward()
    finally:
        torch.set_num_threads(saved)
    for t in (q, k, v):
        assert t.grad is not None and not t.grad.requires_grad and t.grad.grad_fn is None
