"""The training shortcuts (modeling/layers.py and set_efficient_training) against stock BART.

Each shortcut must give stock BART's loss and gradients: compared on a whole tiny model without
dropout, and by finite differences (gradcheck, float64) with dropout, where the two paths draw
different masks and cannot be compared directly.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from modeling import EnClapBartForConditionalGeneration
from modeling.layers import EnClapBartEncoderLayer, EnClapCrossAttention, _FeedForward
from modeling.compat import encoder_layer_hidden_states as hidden_states  # a tuple under 4.x
from tests.helpers import make_batch, make_tiny_config, random_clips, saved_tensor_bytes


def _training_batch():
    codes, clap = random_clips(3, [20, 13, 7], seed=3)
    batch = make_batch(codes, clap)
    batch["labels"] = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, -100], [0, 11, 2, -100, -100]])
    mcm = torch.full(batch["input_ids"].shape, -100)
    mcm[:, 3:9, :5] = batch["input_ids"][:, 3:9, :5]
    batch["mcm_labels"] = mcm
    return batch


def _loss_and_grads(model, batch, efficient: bool):
    model.set_efficient_training(efficient)
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.numerics
def test_efficient_training_matches_stock_bart():
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(make_tiny_config(100)).train()
    batch = _training_batch()
    stock_loss, stock = _loss_and_grads(model, batch, efficient=False)
    loss, grads = _loss_and_grads(model, batch, efficient=True)
    assert loss == pytest.approx(stock_loss, rel=1e-6)
    for name, grad in grads.items():
        # Every parameter gets a gradient (DDP runs without find_unused_parameters), the MCM
        # heads of codebooks without a masked row in this batch an exact zero.
        assert grad is not None and stock[name] is not None, f"{name}: no gradient"
        assert not grad.is_sparse, f"{name}: the optimizer must see a dense gradient"
        scale = stock[name].abs().max().item()
        if name.startswith("mcm_heads.") and int(name.split(".")[1]) >= 5:  # codebooks 5.. have no target
            assert scale == 0 and grad.abs().max().item() == 0, name
            continue
        if name.endswith("k_proj.bias"):  # softmax ignores it: its true gradient is 0
            assert grad.abs().max().item() < 1e-5 and scale < 1e-5, name
            continue
        assert scale > 0, name
        torch.testing.assert_close(grad, stock[name], rtol=0, atol=1e-5 * scale, msg=name)


def test_shortcuts_store_less():
    torch.manual_seed(0)
    config = make_tiny_config(100, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=64)
    config._attn_implementation = "sdpa"
    layer = EnClapBartEncoderLayer(config, layer_idx=0).train()
    x = torch.randn(2, 40, 16, requires_grad=True)
    stored = {}
    for efficient in (False, True):
        layer.efficient_training = efficient
        stored[efficient] = saved_tensor_bytes(module=layer, run=lambda: layer(x, None, None))
    # Stock keeps ~15 (B, L, d) tensors (the two (B, L, 4d) ones around the activation among
    # them); the efficient layer drops the activation output and the layer-norm output.
    assert stored[True] < 0.75 * stored[False], stored

    attn = _cross_attention(0.0)
    hidden = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(2, 60, 8, dtype=torch.float64, requires_grad=True)
    for efficient in (False, True):
        attn.efficient_training = efficient
        stored[efficient] = saved_tensor_bytes(module=attn, run=lambda: attn(hidden, key_value_states=enc))
    assert stored[True] < 0.75 * stored[False], stored  # no (B, L, D) keys and values


def test_evaluation_runs_stock_bart():
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(make_tiny_config(100)).eval()
    assert all(isinstance(layer, EnClapBartEncoderLayer) for layer in model.model.encoder.layers)
    assert all(isinstance(layer.encoder_attn, EnClapCrossAttention) for layer in model.model.decoder.layers)
    batch = _training_batch()
    logits = {}
    for efficient in (False, True):
        model.set_efficient_training(efficient)
        with torch.no_grad():
            logits[efficient] = model(**batch).logits
    assert torch.equal(logits[True], logits[False])


def _seeded(fn):
    """Runs ``fn`` with the same RNG state every call, so dropout draws the same masks."""

    def run(*args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            return fn(*args)

    return run


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "linear"])  # exact GELU has its own backward
def test_feedforward_gradients_with_dropout(activation):
    config = make_tiny_config(100, d_model=8, encoder_attention_heads=2, encoder_ffn_dim=16, dropout=0.3,
                              activation_dropout=0.4, activation_function=activation)
    config._attn_implementation = "sdpa"
    layer = EnClapBartEncoderLayer(config, layer_idx=0).double().train()
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "self_attn_layer_norm.weight",
             "self_attn_layer_norm.bias", "final_layer_norm.weight"]
    named = dict(layer.named_parameters())
    params = {n: named[n].detach().clone().requires_grad_() for n in names}
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return hidden_states(functional_call(layer, dict(zip(names, values)), (x, None, None)))

    f = _seeded(f)
    out = f(x, *params.values())
    assert (out != 0).all()
    assert torch.autograd.gradcheck(f, (x, *params.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["activation_dropout", "dropout"])
def test_feedforward_dropout_keeps_one_minus_p_and_scales_by_its_inverse(which):
    """Each of the feed-forward's two dropouts zeroes a fraction p of its elements and scales the
    rest by 1 / (1 - p) (gradcheck cannot see either: it only checks backward against forward)."""
    p, width = 0.3, 64
    config = make_tiny_config(100, d_model=width, encoder_attention_heads=2, encoder_ffn_dim=width, **{which: p})
    layer = EnClapBartEncoderLayer(config, layer_idx=0).double().train()
    with torch.no_grad():  # fc2 = identity: each output element shows one activation element
        layer.fc2.weight.copy_(torch.eye(width))
        layer.fc2.bias.zero_()
    ln = layer.self_attn_layer_norm
    torch.manual_seed(0)
    h1 = torch.randn(8, 250, width, dtype=torch.float64)
    ln1 = torch.nn.functional.layer_norm(h1, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def branch():  # the feed-forward's output without its residual: drop(fc2(drop(act(fc1(ln1)))))
        out = _FeedForward.apply(h1, ln.weight, ln.bias, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight,
                                 layer.fc2.bias, layer)
        return (out - ln1).detach()

    dropped = branch()
    setattr(layer, which, 0.0)
    clean = branch()
    usable = clean.abs() > 1e-6
    ratio = dropped[usable] / clean[usable]
    kept = ratio != 0
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)))
    n = ratio.numel()
    assert abs(int(kept.sum()) - n * (1 - p)) <= 5 * (n * p * (1 - p)) ** 0.5, kept.double().mean().item()


def test_feedforward_matches_stock_under_bf16_autocast():
    torch.manual_seed(0)
    config = make_tiny_config(100, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=32)
    config._attn_implementation = "sdpa"
    layer = EnClapBartEncoderLayer(config, layer_idx=0).train()
    x = torch.randn(2, 6, 16)
    results = []
    for efficient in (False, True):
        layer.efficient_training = efficient
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = hidden_states(layer(xi, None, None))
        out.float().square().sum().backward()
        results.append((out.detach().float(), xi.grad, layer.fc1.weight.grad, layer.self_attn_layer_norm.weight.grad))
    for stock, ours in zip(*results):
        assert ours.dtype == stock.dtype
        torch.testing.assert_close(ours, stock, rtol=2e-2, atol=2e-2 * stock.abs().max().item())


def test_bf16_autocast_training_step_equals_fp32_within_tolerance():
    """One training step of a whole tiny model through the efficient layers (feed-forward, blocked
    attention with dropout, cross-attention shortcut, MCM loss), under CPU bf16 autocast as the GPU
    recipes train, against fp32 with the same dropout masks.

    Tolerance: bf16 keeps 8 significant bits (relative rounding 2**-9 per value); over the tiny
    model's layers that measured a 1.5e-4 relative loss error, at most 3% relative L2 error in any
    one parameter's gradient and 1.6% over all gradients. Allowed: 1e-2, 10% and 5%.
    """
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(
        make_tiny_config(100, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)).train()
    assert model.model.encoder.layers[0].efficient_training
    batch = _training_batch()

    def step(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)  # the same dropout masks in both steps
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    loss32, grads32 = step(False)
    loss16, grads16 = step(True)
    assert loss16 != loss32  # bf16 really ran
    assert abs(loss16 - loss32) <= 1e-2 * abs(loss32)
    for name, grad in grads32.items():
        if name.endswith("k_proj.bias"):  # softmax ignores it: its true gradient is 0, all rounding
            continue
        assert grads16[name].dtype == torch.float32, name  # gradients reach the optimizer in fp32
        assert (grads16[name] - grad).norm() <= 0.1 * grad.norm(), name
    every = [name for name in grads32 if not name.endswith("k_proj.bias")]
    flat32 = torch.cat([grads32[name].flatten() for name in every])
    flat16 = torch.cat([grads16[name].flatten() for name in every])
    assert (flat16 - flat32).norm() <= 0.05 * flat32.norm()


def _cross_attention(dropout: float, implementation: str = "sdpa"):
    config = make_tiny_config(100, d_model=8, decoder_attention_heads=2, attention_dropout=dropout)
    config._attn_implementation = implementation
    return EnClapCrossAttention(8, 2, dropout=dropout, is_decoder=True, config=config, layer_idx=0).double().train()


def _padding_mask(batch: int, queries: int, lengths):
    keys = max(lengths)
    keep = torch.arange(keys)[None, :] < torch.tensor(lengths)[:, None]
    mask = torch.zeros(batch, 1, queries, keys, dtype=torch.float64)
    return mask.masked_fill(~keep[:, None, None, :], torch.finfo(torch.float64).min)


@pytest.mark.numerics
def test_cross_attention_matches_stock_with_padding():
    torch.manual_seed(0)
    attn = _cross_attention(0.0)
    hidden = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = _padding_mask(2, 3, [5, 3])
    results = []
    for efficient in (False, True):
        attn.efficient_training = efficient
        attn.zero_grad(set_to_none=True)
        hidden.grad = enc.grad = None
        out = attn(hidden, key_value_states=enc, attention_mask=mask)[0]
        out.pow(3).sum().backward()
        results.append([out.detach(), hidden.grad, enc.grad] + [p.grad for p in attn.parameters()])
    for stock, ours in zip(*results):
        torch.testing.assert_close(ours, stock, rtol=1e-9, atol=1e-12)
    assert results[1][2][1, 3:].abs().max() == 0  # padded encoder rows get no gradient
    # A (B, L) keep-mask, as flash-attention configurations pass it, gives the same result.
    attn.efficient_training = True
    flat = attn(hidden, key_value_states=enc, attention_mask=(mask[:, 0, 0] == 0).long())[0]
    torch.testing.assert_close(flat, results[1][0])


def test_cross_attention_gradients_with_dropout():
    torch.manual_seed(0)
    attn = _cross_attention(0.3)
    names = [n for n, _ in attn.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in attn.parameters()]
    hidden = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = _padding_mask(2, 3, [5, 4])

    def f(hidden, enc, *values):
        return functional_call(attn, dict(zip(names, values)), (hidden,),
                               {"key_value_states": enc, "attention_mask": mask})[0]

    assert torch.autograd.gradcheck(_seeded(f), (hidden, enc, *params), eps=1e-6, atol=1e-6)


def test_stock_path_when_a_cache_or_weights_are_requested():
    torch.manual_seed(0)
    attn = _cross_attention(0.0, implementation="eager")
    hidden = torch.randn(2, 3, 8, dtype=torch.float64)
    enc = torch.randn(2, 5, 8, dtype=torch.float64)
    out, weights = attn(hidden, key_value_states=enc, output_attentions=True)[:2]
    assert weights is not None and weights.shape == (2, 2, 3, 5)
    attn.efficient_training = False
    torch.testing.assert_close(attn(hidden, key_value_states=enc)[0], out)


@pytest.mark.numerics
def test_feedforward_with_frozen_parameters_matches_stock():
    torch.manual_seed(0)
    config = make_tiny_config(100, d_model=8, encoder_attention_heads=2, encoder_ffn_dim=16)
    config._attn_implementation = "sdpa"
    layer = EnClapBartEncoderLayer(config, layer_idx=0).double().train()
    for p in (layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias, layer.fc1.bias):
        p.requires_grad_(False)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for efficient in (False, True):
        layer.efficient_training = efficient
        layer.zero_grad(set_to_none=True)
        x.grad = None
        hidden_states(layer(x, None, None)).pow(3).sum().backward()
        results.append([x.grad] + [p.grad for p in layer.parameters()])
    for stock, ours in zip(*results):
        assert (stock is None) == (ours is None)
        if stock is not None:
            torch.testing.assert_close(ours, stock, rtol=1e-10, atol=1e-12)
    assert layer.fc1.bias.grad is None and layer.fc1.weight.grad is not None


def _dense_mcm_loss(model, hidden, mcm_labels):
    """The original's MCM loss: every head at every encoder position, -100 ignored (a codebook
    without targets adds 0 rather than the original's 0/0)."""
    total = 0.0
    for j, head in enumerate(model.mcm_heads):
        if (mcm_labels[..., j] == -100).all():
            continue
        logits = head(hidden).reshape(-1, head.out_features).float()
        total = total + torch.nn.functional.cross_entropy(logits, mcm_labels[..., j].reshape(-1),
                                                          ignore_index=-100) / 2 ** (j + 1)
    return total


@pytest.mark.numerics
def test_mcm_loss_and_gradients_match_every_head_everywhere():
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(make_tiny_config(100)).train()
    hidden = torch.randn(3, 23, 32, requires_grad=True)
    mcm_labels = torch.full((3, 23, 16), -100)
    generator = torch.Generator().manual_seed(1)
    masked = torch.rand(3, 23, 16, generator=generator) < 0.3
    masked[..., 7] = False  # a codebook without any target
    mcm_labels[masked] = torch.randint(0, 1024, (int(masked.sum()),), generator=generator)
    results = []
    for compute in (lambda: _dense_mcm_loss(model, hidden, mcm_labels),
                    lambda: model.masked_codec_loss(hidden, mcm_labels),
                    lambda: model.masked_codec_loss(hidden, mcm_labels, max_rows=23 * 3)):  # a loose bound
        model.zero_grad(set_to_none=True)
        hidden.grad = None
        loss = compute()
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), {n: p.grad for n, p in model.mcm_heads.named_parameters()}))
    dense = results[0]
    for loss, grad_hidden, grads in results[1:]:
        torch.testing.assert_close(loss, dense[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(grad_hidden, dense[1], rtol=1e-5, atol=1e-7)
        for name, grad in grads.items():
            if name.startswith("7."):  # no target: an exact zero, where the dense loss has none
                assert dense[2][name] is None and grad is not None and grad.abs().max() == 0, name
            else:
                torch.testing.assert_close(grad, dense[2][name], rtol=1e-5, atol=1e-7, msg=name)


def test_mcm_loss_never_reads_device_values():
    """With ``max_rows`` from the host nothing reads tensor values back (on meta tensors any
    ``nonzero``, ``item`` or ``tolist`` would raise): no device synchronisation on a GPU."""
    from modeling.modeling_enclap import mcm_max_rows

    model = EnClapBartForConditionalGeneration(make_tiny_config(100)).train()
    mcm_labels = torch.full((2, 9, 16), -100)
    mcm_labels[0, 2:5, :3] = 7
    mcm_labels[1, 4, 0] = 8
    assert mcm_max_rows(mcm_labels) == 4  # codebook 0: three rows in clip 0, one in clip 1
    meta_model = model.to("meta")
    hidden = torch.empty(2, 9, 32, device="meta", requires_grad=True)
    loss = meta_model.masked_codec_loss(hidden, mcm_labels.to("meta"), max_rows=4)
    assert loss.device.type == "meta" and loss.shape == ()
    with pytest.raises(Exception):  # without the host-side count, it must be read from the device
        meta_model.masked_codec_loss(hidden, mcm_labels.to("meta"))


@pytest.mark.parametrize("attention_dropout, training, blocked", [(0.1, True, True), (0.0, True, False),
                                                                   (0.1, False, False)])
def test_cpu_encoder_self_attention_is_blocked_only_with_attention_dropout(monkeypatch, attention_dropout, training,
                                                                           blocked):
    # Speed rule: SDPA has no CPU kernel for attention dropout (it would materialise the whole
    # attention matrix and its mask); without dropout its flash kernel is the faster one.
    from modeling import attention as blocked_attention
    from modeling import layers

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return blocked_attention.attention(*args, **kwargs)

    monkeypatch.setattr(layers, "attention", spy)
    torch.manual_seed(0)
    model = EnClapBartForConditionalGeneration(make_tiny_config(100, attention_dropout=attention_dropout))
    model.train(training)
    batch = _training_batch()
    with torch.set_grad_enabled(training):
        model(**batch).loss
    assert len(calls) == (model.config.encoder_layers if blocked else 0)
