"""The chapter 4 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``; here, only the lengths left on the CPU while the other inputs
are on another device.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, assert_gradients_match, move, randn

from solutions.ch04_masking import (
    causal_mask,
    causal_self_attention,
    masked_attention,
    padding_mask,
)

# Distinct sizes: batch 2, heads 3, Tq 5, Tk 7, d 4, dv 6, model dim 8.
B, H, TQ, TK, D, DV, DM = 2, 3, 5, 7, 4, 6, 8


def torch_attention(q, k, v, mask):
    """PyTorch's output and weights (weights: attend over an identity matrix of values)."""
    identity = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    weights = F.scaled_dot_product_attention(q, k, identity, attn_mask=mask)
    return out, weights


def random_mask(shape, generator, p_allowed=0.6):
    return torch.rand(shape, generator=generator) < p_allowed


def test_causal_mask_values():
    mask = causal_mask(4)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)
    assert torch.equal(causal_mask(1), torch.ones(1, 1, dtype=torch.bool))


def test_causal_mask_equals_pytorch_is_causal(gen):
    q, k, v = (randn(B, TQ, D, generator=gen) for _ in range(3))
    out, _ = masked_attention(q, k, v, causal_mask(TQ))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_padding_mask_values():
    lengths = torch.tensor([3, 1, 5])
    mask = padding_mask(lengths, 5)
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


def test_padding_mask_goes_to_the_requested_device():
    mask = padding_mask(torch.tensor([2, 4]), 6, device="meta")  # CPU lengths
    assert mask.device.type == "meta" and mask.shape == (2, 6) and mask.dtype == torch.bool


@pytest.mark.parametrize(
    "mask_shape",
    [
        None,
        (TQ, TK),
        (H, TQ, TK),
        (B, 1, TQ, TK),
        (B, H, TQ, TK),
        (B, 1, 1, TK),
        (1, TK),
        (H, 1, TK),
    ],
    ids=str,
)
def test_masked_attention_matches_pytorch(gen, mask_shape):
    q, k, v = (
        randn(B, H, TQ, D, generator=gen),
        randn(B, H, TK, D, generator=gen),
        randn(B, H, TK, DV, generator=gen),
    )
    mask = None if mask_shape is None else random_mask(mask_shape, gen)
    if mask is not None:  # PyTorch gives NaN on rows with nothing allowed: keep one key
        mask[..., 0] = True
    out, weights = masked_attention(q, k, v, mask)
    expected_out, expected_weights = torch_attention(q, k, v, mask)
    assert_close(out, expected_out)
    assert_close(weights, expected_weights)


def test_fully_masked_rows_are_zero_without_nan(gen):
    q, k, v = (
        randn(B, t, d, generator=gen, requires_grad=True) for t, d in [(TQ, D), (TK, D), (TK, DV)]
    )
    mask = random_mask((B, TQ, TK), gen)
    mask[:, 0] = False  # query 0 may attend nothing
    mask[:, 1:, 0] = True
    out, weights = masked_attention(q, k, v, mask)
    assert torch.equal(out[:, 0], torch.zeros(B, DV, dtype=torch.float64))
    assert torch.equal(weights[:, 0], torch.zeros(B, TK, dtype=torch.float64))
    assert torch.equal(weights[~mask.expand_as(weights)], torch.zeros_like(weights[~mask]))
    (out.sum() + weights.sum()).backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    assert torch.equal(q.grad[:, 0], torch.zeros(B, D, dtype=torch.float64))
    expected_out, expected_weights = torch_attention(q.detach(), k.detach(), v.detach(), mask)
    assert_close(out[:, 1:], expected_out[:, 1:])
    assert_close(weights[:, 1:], expected_weights[:, 1:])


def test_masked_attention_gradients_match_pytorch(gen):
    inputs = [
        randn(B, TQ, D, generator=gen),
        randn(B, TK, D, generator=gen),
        randn(B, TK, DV, generator=gen),
    ]
    mask = random_mask((B, TQ, TK), gen)
    mask[..., 2] = True
    assert_gradients_match(
        lambda *t: masked_attention(*t, mask)[0],
        lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask),
        *inputs,
    )


@pytest.fixture
def sequence(gen):
    x = randn(B + 1, TK, DM, generator=gen)
    weights = randn(D, DM, generator=gen), randn(D, DM, generator=gen), randn(DV, DM, generator=gen)
    return x, *weights, torch.tensor([TK, 3, 1])


def test_causal_self_attention_matches_pytorch(sequence):
    x, W_q, W_k, W_v, _ = sequence
    q, k, v = F.linear(x, W_q), F.linear(x, W_k), F.linear(x, W_v)
    out, weights = causal_self_attention(x, W_q, W_k, W_v)
    expected_out, expected_weights = torch_attention(q, k, v, torch.ones(TK, TK).bool().tril())
    assert_close(out, expected_out)
    assert_close(weights, expected_weights)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_causal_self_attention_with_padding(sequence):
    x, W_q, W_k, W_v, lengths = sequence
    out, weights = causal_self_attention(x, W_q, W_k, W_v, lengths)
    for b, length in enumerate(lengths.tolist()):  # each sequence alone, unpadded
        alone = causal_self_attention(x[b : b + 1, :length], W_q, W_k, W_v)
        assert_close(out[b, :length], alone[0][0])
        assert_close(weights[b, :length, :length], alone[1][0])
        assert torch.equal(out[b, length:], torch.zeros(TK - length, DV, dtype=torch.float64))
        assert torch.equal(
            weights[b, :, length:], torch.zeros(TK, TK - length, dtype=torch.float64)
        )


def test_no_output_depends_on_a_later_or_padded_input(sequence):
    x, W_q, W_k, W_v, lengths = sequence
    x = x.clone().requires_grad_()
    out, _ = causal_self_attention(x, W_q, W_k, W_v, lengths)
    for b, length in enumerate(lengths.tolist()):
        for t in range(TK):
            (grad,) = torch.autograd.grad(out[b, t].sum(), x, retain_graph=True)
            later_or_padded = torch.arange(TK) > min(t, length - 1)
            assert torch.equal(grad[b, later_or_padded], torch.zeros_like(grad[b, later_or_padded]))
            assert torch.equal(grad[:b], torch.zeros_like(grad[:b]))


def test_causal_self_attention_accepts_cpu_lengths_with_meta_inputs(sequence):
    *tensors, lengths = sequence
    out, weights = causal_self_attention(*move(tensors, "meta"), lengths)
    assert out.device.type == "meta" and out.shape == (B + 1, TK, DV)
    assert weights.device.type == "meta" and weights.shape == (B + 1, TK, TK)
