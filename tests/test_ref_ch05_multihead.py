"""The chapter 5 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, assert_close, randn
from torch import nn

from solutions.ch05_multihead import merge_heads, multi_head_attention, split_heads

# Distinct sizes: batch 2, Tq 5, Tk 7, heads 3, head dim 4, model dim 12.
B, TQ, TK, H, DH = 2, 5, 7, 3, 4
D = H * DH

MASK_KINDS = ["none", "tq_tk", "batch", "per_head", "key_padding"]


def mask_shape(kind, tq, tk):
    """The shape of each kind of mask the contract allows."""
    return {
        "none": None,
        "tq_tk": (tq, tk),
        "batch": (B, tq, tk),
        "per_head": (B, H, tq, tk),
        "key_padding": (B, 1, 1, tk),
    }[kind]


def random_mask(kind, tq, tk, generator, empty_rows=False):
    """A random mask of ``kind``; every row keeps an allowed key unless ``empty_rows``."""
    shape = mask_shape(kind, tq, tk)
    if shape is None:
        return None
    mask = torch.rand(*shape, generator=generator) < 0.5
    if not empty_rows:
        keep = torch.randint(shape[-1], shape[:-1], generator=generator)
        mask |= F.one_hot(keep, shape[-1]).bool()
    return mask


def pytorch_attn_mask(mask, tq, tk):
    """The course mask (True = may attend) as ``nn.MultiheadAttention``'s attn_mask."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return ~mask  # (Tq, Tk)
    if mask.dim() == 3:
        return (~mask).repeat_interleave(H, dim=0)  # (B*h, Tq, Tk)
    return (~mask).expand(B, H, tq, tk).reshape(B * H, tq, tk)  # (B*h, Tq, Tk)


def allowed_rows(mask, tq, tk):
    """(B, h, Tq) bool: which query rows of which head have at least one allowed key."""
    if mask is None:
        return torch.ones(B, H, tq, dtype=torch.bool)
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)  # (B, 1, Tq, Tk)
    return mask.expand(B, H, tq, tk).any(dim=-1)  # (B, h, Tq)


def pytorch_mha(params):
    """An ``nn.MultiheadAttention`` holding the weights in ``params``."""
    W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o = params
    mha = nn.MultiheadAttention(D, H, batch_first=True, dropout=0.0, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat((W_q, W_k, W_v)))
        mha.in_proj_bias.copy_(torch.cat((b_q, b_k, b_v)))
        mha.out_proj.weight.copy_(W_o)
        mha.out_proj.bias.copy_(b_o)
    return mha


def run_pytorch(mha, query, key, value, mask):
    tq, tk = query.shape[1], key.shape[1]
    return mha(
        query,
        key,
        value,
        attn_mask=pytorch_attn_mask(mask, tq, tk),
        need_weights=True,
        average_attn_weights=False,
    )


@pytest.fixture
def params(gen):
    """W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o."""
    return [
        randn(*shape, generator=gen) / (DH if len(shape) == 2 else 1)
        for shape in [(D, D), (D,)] * 4
    ]


def inputs(gen, cross):
    """(query, key, value): cross-attention has Tk != Tq; self-attention passes x thrice."""
    query = randn(B, TQ, D, generator=gen)
    if not cross:
        return query, query, query
    return query, randn(B, TK, D, generator=gen), randn(B, TK, D, generator=gen)


@pytest.fixture
def qkv(gen):
    return inputs(gen, cross=True)


# split_heads and merge_heads


def test_split_heads_matches_per_head_slices(gen):
    x = randn(B, TK, D, generator=gen)
    heads = split_heads(x, H)
    expected = torch.stack([x[:, :, i * DH : (i + 1) * DH] for i in range(H)], dim=1)
    assert heads.shape == (B, H, TK, DH)
    assert_close(heads, expected)


def test_merge_heads_matches_concatenation(gen):
    heads = randn(B, H, TK, DH, generator=gen)
    merged = merge_heads(heads)
    assert merged.shape == (B, TK, D)
    assert_close(merged, torch.cat([heads[:, i] for i in range(H)], dim=-1))


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 6, 12])
def test_split_then_merge_round_trip(gen, num_heads):
    x = randn(B, TQ, D, generator=gen)
    heads = split_heads(x, num_heads)
    assert heads.shape == (B, num_heads, TQ, D // num_heads)
    assert_close(merge_heads(heads), x)
    assert_close(split_heads(merge_heads(heads), num_heads), heads)


def test_split_and_merge_accept_non_contiguous_input(gen):
    x = randn(B, D, TQ, generator=gen).transpose(1, 2)  # (B, Tq, D), not contiguous
    heads = randn(B, TQ, H, DH, generator=gen).transpose(1, 2)  # (B, h, Tq, d), not contiguous
    assert_close(split_heads(x, H), split_heads(x.contiguous(), H))
    assert_close(merge_heads(heads), merge_heads(heads.contiguous()))


@pytest.mark.parametrize("num_heads", [5, 7, 8])
def test_split_heads_rejects_indivisible_dim(gen, num_heads):
    with pytest.raises(ValueError):
        split_heads(randn(B, TQ, D, generator=gen), num_heads)


def test_split_and_merge_gradients_pass_through(gen):
    x = randn(B, TQ, D, generator=gen, requires_grad=True)
    upstream = randn(B, TQ, D, generator=gen)
    (merge_heads(split_heads(x, H)) * upstream).sum().backward()
    assert_close(x.grad, upstream)


# multi_head_attention


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_mha_matches_pytorch(gen, params, kind, cross):
    query, key, value = inputs(gen, cross)
    tk = key.shape[1]
    mask = random_mask(kind, TQ, tk, gen, empty_rows=True)
    out, weights = multi_head_attention(query, key, value, *params, H, mask)
    expected_out, expected_weights = run_pytorch(pytorch_mha(params), query, key, value, mask)
    assert out.shape == (B, TQ, D) and weights.shape == (B, H, TQ, tk)
    rows = allowed_rows(mask, TQ, tk)  # (B, h, Tq)
    assert_close(weights[rows], expected_weights[rows])
    full_rows = rows.all(dim=1)  # (B, Tq): allowed in every head
    assert full_rows.any()
    assert_close(out[full_rows], expected_out[full_rows])


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mha_gradients_match_pytorch(gen, params, qkv, kind):
    mask = random_mask(kind, TQ, TK, gen)
    ours = [t.clone().requires_grad_() for t in (*qkv, *params)]
    theirs = [t.clone().requires_grad_() for t in qkv]
    mha = pytorch_mha(params)
    upstream_out = randn(B, TQ, D, generator=gen)
    upstream_weights = randn(B, H, TQ, TK, generator=gen)

    def loss(out, weights):
        return (out * upstream_out).sum() + (weights * upstream_weights).sum()

    loss(*multi_head_attention(*ours[:3], *ours[3:], H, mask)).backward()
    loss(*run_pytorch(mha, *theirs, mask)).backward()
    for mine, reference in zip(ours[:3], theirs, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad, **F64)
    W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o = ours[3:]
    in_weight_grad = torch.cat((W_q.grad, W_k.grad, W_v.grad))
    in_bias_grad = torch.cat((b_q.grad, b_k.grad, b_v.grad))
    torch.testing.assert_close(in_weight_grad, mha.in_proj_weight.grad, **F64)
    torch.testing.assert_close(in_bias_grad, mha.in_proj_bias.grad, **F64)
    torch.testing.assert_close(W_o.grad, mha.out_proj.weight.grad, **F64)
    torch.testing.assert_close(b_o.grad, mha.out_proj.bias.grad, **F64)


def test_mha_fully_masked_rows_give_bias_and_finite_gradients(gen, params, qkv):
    mask = random_mask("batch", TQ, TK, gen)
    mask[0, 1] = False  # query 1 of sequence 0 sees nothing
    mask[1, 3:] = False  # queries 3.. of sequence 1 see nothing
    empty = ~mask.any(dim=-1)  # (B, Tq)
    ours = [t.clone().requires_grad_() for t in (*qkv, *params)]
    out, weights = multi_head_attention(*ours[:3], *ours[3:], H, mask)
    b_o = params[-1]
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert_close(out[empty], b_o.expand(int(empty.sum()), D))
    assert (weights.permute(0, 2, 1, 3)[empty] == 0).all()
    expected_out, expected_weights = run_pytorch(pytorch_mha(params), *qkv, mask)
    assert_close(out[~empty], expected_out[~empty])
    by_row, expected_by_row = weights.permute(0, 2, 1, 3), expected_weights.permute(0, 2, 1, 3)
    assert_close(by_row[~empty], expected_by_row[~empty])
    (out.square().sum() + weights.square().sum()).backward()
    for tensor in ours:
        assert torch.isfinite(tensor.grad).all()


def test_mha_key_padding_hiding_everything(gen, params, qkv):
    mask = torch.zeros(B, 1, 1, TK, dtype=torch.bool)
    out, weights = multi_head_attention(*qkv, *params, H, mask)
    assert (weights == 0).all()
    assert_close(out, params[-1].expand(B, TQ, D))


def test_mha_large_logits_stay_finite(gen, params, qkv):
    query, key, value = qkv
    mask = random_mask("per_head", TQ, TK, gen)
    out, weights = multi_head_attention(query * 1e3, key * 1e3, value, *params, H, mask)
    expected_out, expected_weights = run_pytorch(
        pytorch_mha(params), query * 1e3, key * 1e3, value, mask
    )
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert_close(out, expected_out, rtol=1e-7, atol=1e-7)
    assert_close(weights, expected_weights, rtol=1e-7, atol=1e-7)


def test_mha_rejects_indivisible_heads(params, qkv):
    with pytest.raises(ValueError):
        multi_head_attention(*qkv, *params, 5)


def test_mha_passes_gradcheck(gen):
    d, h = 4, 2
    query = randn(2, 3, d, generator=gen, requires_grad=True)
    memory = randn(2, 4, d, generator=gen, requires_grad=True)
    W = [randn(d, d, generator=gen, requires_grad=True) for _ in range(4)]
    b = [randn(d, generator=gen, requires_grad=True) for _ in range(4)]
    mask = torch.tensor([[True, False, True, False], [False, False, False, False], [1, 1, 1, 1]])
    mask = mask.bool()

    def fn(q, m, *weights):
        interleaved = [t for pair in zip(weights[:4], weights[4:], strict=True) for t in pair]
        return multi_head_attention(q, m, m, *interleaved, h, mask)

    assert torch.autograd.gradcheck(fn, (query, memory, *W, *b))
