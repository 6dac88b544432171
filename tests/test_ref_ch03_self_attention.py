"""The chapter 3 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, assert_gradients_match, randn

from solutions.ch03_self_attention import (
    scaled_dot_product_attention,
    self_attention,
    sinusoidal_positional_encoding,
)

# Distinct sizes: batch 2, extra leading dim 3, Tq 5, Tk 7, d 4, dv 6, model dim 8.
B, H, TQ, TK, D, DV, DM = 2, 3, 5, 7, 4, 6, 8


def torch_weights(q, k):
    """PyTorch's attention weights: attend over an identity matrix of values."""
    identity = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, identity)


@pytest.fixture
def qkv(gen):
    return (
        randn(B, H, TQ, D, generator=gen),
        randn(B, H, TK, D, generator=gen),
        randn(B, H, TK, DV, generator=gen),
    )


@pytest.mark.parametrize("leading", [(), (B,), (B, H), (2, 1, 3)])
def test_sdpa_matches_pytorch(gen, leading):
    q = randn(*leading, TQ, D, generator=gen)
    k = randn(*leading, TK, D, generator=gen)
    v = randn(*leading, TK, DV, generator=gen)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (*leading, TQ, DV) and weights.shape == (*leading, TQ, TK)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert_close(weights, torch_weights(q, k))


def test_sdpa_large_logits_stay_finite(gen):
    q = randn(B, TQ, D, generator=gen) * 1e3
    k = randn(B, TK, D, generator=gen) * 1e3
    v = randn(B, TK, DV, generator=gen)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_sdpa_gradients_match_pytorch(qkv):
    upstream = torch.randn(B, H, TQ, DV, dtype=torch.float64)
    assert_gradients_match(
        lambda *t: scaled_dot_product_attention(*t)[0],
        F.scaled_dot_product_attention,
        *qkv,
        loss=lambda out: (out * upstream).sum(),
    )


def test_sdpa_passes_gradcheck(gen):
    q, k, v = (
        randn(2, n, m, generator=gen, requires_grad=True) for n, m in [(3, 4), (5, 4), (5, 2)]
    )
    assert torch.autograd.gradcheck(lambda *t: scaled_dot_product_attention(*t), (q, k, v))


@pytest.fixture
def projections(gen):
    x = randn(B, TQ, DM, generator=gen)
    return x, randn(D, DM, generator=gen), randn(D, DM, generator=gen), randn(DV, DM, generator=gen)


def test_self_attention_matches_pytorch(projections):
    x, W_q, W_k, W_v = projections
    out, weights = self_attention(x, W_q, W_k, W_v)
    q, k, v = F.linear(x, W_q), F.linear(x, W_k), F.linear(x, W_v)
    assert out.shape == (B, TQ, DV) and weights.shape == (B, TQ, TQ)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert_close(weights, torch_weights(q, k))


def test_self_attention_is_permutation_equivariant(projections):
    x, W_q, W_k, W_v = projections
    perm = torch.randperm(TQ, generator=torch.Generator().manual_seed(1))
    out, weights = self_attention(x, W_q, W_k, W_v)
    out_p, weights_p = self_attention(x[:, perm], W_q, W_k, W_v)
    assert_close(out_p, out[:, perm])
    assert_close(weights_p, weights[:, perm][:, :, perm])


def test_self_attention_gradients_match_pytorch(projections):
    def torch_self_attention(x, W_q, W_k, W_v):
        return F.scaled_dot_product_attention(F.linear(x, W_q), F.linear(x, W_k), F.linear(x, W_v))

    assert_gradients_match(lambda *t: self_attention(*t)[0], torch_self_attention, *projections)


def closed_form_pe(T, D, base):
    """PE written position by position and column by column, straight from the formula."""
    pe = torch.empty(T, D, dtype=torch.float64)
    for p in range(T):
        for j in range(D):
            angle = p / base ** ((j - j % 2) / D)
            pe[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


@pytest.mark.parametrize(
    "T, D, base", [(1, 4, 10000.0), (9, 6, 10000.0), (7, 5, 10000.0), (12, 9, 100.0)]
)
def test_pe_matches_closed_form(T, D, base):
    pe = sinusoidal_positional_encoding(T, D, base=base, dtype=torch.float64)
    assert pe.shape == (T, D) and pe.dtype == torch.float64
    assert_close(pe, closed_form_pe(T, D, base))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pe_is_computed_in_float32_then_cast(dtype):
    pe = sinusoidal_positional_encoding(50, 16, dtype=dtype)
    assert pe.dtype == dtype
    expected = closed_form_pe(50, 16, 10000.0).to(torch.float32).to(dtype)
    torch.testing.assert_close(pe, expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 0)
