"""The chapter 2 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, assert_close, assert_gradients_match, randn
from torch import nn
from torch.func import functional_call

from solutions.ch02_attention import (
    additive_scores,
    attend,
    dot_scores,
    lengths_to_mask,
    masked_softmax,
)

# Distinct sizes: batch 3, keys 7, query dim 4, key dim 5, attention dim 6, value dim 8,
# extra query dim 2 (for masked_softmax on (B, Q, T) scores).
B, T, DQ, DK, A, DV, Q = 3, 7, 4, 5, 6, 8, 2
LENGTHS = [7, 1, 4]


def linear(weight):
    """``nn.Linear`` without bias, run with ``weight`` (out, in) as its weight.

    ``functional_call`` keeps the result differentiable with respect to ``weight``.
    """
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    return lambda x: functional_call(layer, {"weight": weight}, (x,))


def torch_additive_scores(query, keys, W_q, W_k, v):
    """tanh(Linear(q) + Linear(k_t)) . v, one key position at a time."""
    query_layer, key_layer = linear(W_q), linear(W_k)
    columns = [torch.tanh(query_layer(query) + key_layer(keys[:, t])) @ v for t in range(T)]
    return torch.stack(columns, dim=1)  # (B, T)


def torch_attend(query, keys, values, mask, W_q, W_k, v):
    """Additive attention composed from torch ops; -inf masking (rows must allow a key)."""
    scores = torch_additive_scores(query, keys, W_q, W_k, v)  # (B, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)  # (B, T)
    return torch.einsum("bt,btd->bd", weights, values), weights


@pytest.fixture
def lengths():
    return torch.tensor(LENGTHS)


@pytest.fixture
def mask(lengths):
    return torch.arange(T)[None, :] < lengths[:, None]  # (B, T)


@pytest.fixture
def dot_inputs(gen):
    return randn(B, DQ, generator=gen), randn(B, T, DQ, generator=gen)


@pytest.fixture
def additive_inputs(gen):
    """query (B, Dq), keys (B, T, Dk), W_q (A, Dq), W_k (A, Dk), v (A,)."""
    return (
        randn(B, DQ, generator=gen),
        randn(B, T, DK, generator=gen),
        randn(A, DQ, generator=gen),
        randn(A, DK, generator=gen),
        randn(A, generator=gen),
    )


@pytest.fixture
def attend_inputs(additive_inputs, gen, mask):
    """query, keys, values (B, T, Dv), mask (B, T), W_q, W_k, v."""
    query, keys, W_q, W_k, v = additive_inputs
    return query, keys, randn(B, T, DV, generator=gen), mask, W_q, W_k, v


def test_dot_scores_matches_pytorch(dot_inputs):
    query, keys = dot_inputs
    scores = dot_scores(query, keys)
    assert scores.shape == (B, T)
    assert_close(scores, torch.einsum("bd,btd->bt", query, keys))
    assert_close(scores, torch.bmm(keys, query.unsqueeze(2)).squeeze(2))


def test_dot_scores_gradients_pass_gradcheck(gen):
    query, keys = randn(2, 3, generator=gen, requires_grad=True), randn(2, 4, 3, generator=gen)
    assert torch.autograd.gradcheck(dot_scores, (query, keys.requires_grad_()))


def test_additive_scores_matches_linear_layers(additive_inputs):
    scores = additive_scores(*additive_inputs)
    assert scores.shape == (B, T)
    assert_close(scores, torch_additive_scores(*additive_inputs))


def test_additive_scores_gradients_match_pytorch(additive_inputs):
    assert_gradients_match(additive_scores, torch_additive_scores, *additive_inputs)


def test_lengths_to_mask_values(lengths):
    expected = torch.tensor(
        [
            [True, True, True, True, True, True, True],
            [True, False, False, False, False, False, False],
            [True, True, True, True, False, False, False],
        ]
    )
    mask = lengths_to_mask(lengths, T)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_lengths_to_mask_longer_padding():
    mask = lengths_to_mask(torch.tensor([2, 3]), 5)
    assert torch.equal(mask.sum(dim=1), torch.tensor([2, 3]))
    assert torch.equal(mask, torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).bool())


def softmax_with_inf(scores, mask):
    """PyTorch's softmax over -inf-filled scores (rows must allow a key)."""
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def random_mask(gen, *shape):
    """A random (..., T) mask in which every row allows at least one key."""
    mask = torch.rand(*shape, generator=gen) < 0.5
    first = torch.zeros(shape[-1], dtype=torch.bool)
    first[0] = True
    return mask | first


@pytest.mark.parametrize(
    "scores_shape, mask_shape",
    [
        ((B, T), (B, T)),
        ((B, Q, T), (B, 1, T)),
        ((B, Q, T), (Q, T)),
        ((B, Q, T), (1, T)),
        ((B, Q, T), (B, Q, T)),
    ],
)
def test_masked_softmax_matches_pytorch(gen, scores_shape, mask_shape):
    scores = randn(*scores_shape, generator=gen) * 3
    mask = random_mask(gen, *mask_shape)
    weights = masked_softmax(scores, mask)
    assert weights.shape == scores_shape
    expected = softmax_with_inf(scores, mask)
    assert_close(weights, expected)
    assert (weights[~mask.expand(scores_shape)] == 0).all(), "masked weights must be exactly 0"


def test_masked_softmax_without_mask_is_softmax(gen):
    scores = randn(B, Q, T, generator=gen)
    assert_close(masked_softmax(scores, None), F.softmax(scores, dim=-1))


def test_masked_softmax_fully_masked_rows_are_zero(gen, mask):
    scores = randn(B, T, generator=gen).requires_grad_()
    mask = mask.clone()
    mask[1] = False  # nothing allowed in row 1
    weights = masked_softmax(scores, mask)
    (weights * randn(B, T, generator=gen)).sum().backward()
    assert (weights[1] == 0).all()
    assert torch.isfinite(weights).all() and torch.isfinite(scores.grad).all()
    assert (scores.grad[1] == 0).all()
    assert_close(weights[[0, 2]], softmax_with_inf(scores.detach(), mask)[[0, 2]])


def test_masked_softmax_gradients_match_pytorch(gen):
    scores = randn(B, Q, T, generator=gen)
    mask = random_mask(gen, B, 1, T)
    upstream = randn(B, Q, T, generator=gen)
    mine, reference = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    (masked_softmax(mine, mask) * upstream).sum().backward()
    (softmax_with_inf(reference, mask) * upstream).sum().backward()
    torch.testing.assert_close(mine.grad, reference.grad, **F64)
    assert (mine.grad[~mask.expand(B, Q, T)] == 0).all()


def test_masked_softmax_ignores_masked_scores_and_large_scores(gen, mask):
    scores = randn(B, T, generator=gen) * 1e4
    changed = torch.where(mask, scores, randn(B, T, generator=gen) * 1e300)
    weights = masked_softmax(changed, mask)
    assert torch.isfinite(weights).all()
    assert_close(weights, masked_softmax(scores, mask))
    assert_close(weights, softmax_with_inf(scores, mask))


def test_masked_softmax_passes_gradcheck(gen):
    scores = randn(2, 3, 4, generator=gen, requires_grad=True)
    mask = torch.rand(2, 3, 4, generator=gen) < 0.6
    mask[0, 1] = False  # a fully masked row
    assert torch.autograd.gradcheck(lambda s: masked_softmax(s, mask), (scores,))


def test_attend_matches_pytorch_composition(attend_inputs):
    context, weights = attend(*attend_inputs)
    assert context.shape == (B, DV) and weights.shape == (B, T)
    assert_close((context, weights), torch_attend(*attend_inputs))
    mask = attend_inputs[3]
    assert (weights[~mask] == 0).all()


def test_attend_without_mask_allows_everything(attend_inputs):
    query, keys, values, _, W_q, W_k, v = attend_inputs
    all_allowed = torch.ones(B, T, dtype=torch.bool)
    unmasked = attend(query, keys, values, None, W_q, W_k, v)
    assert_close(unmasked, torch_attend(query, keys, values, None, W_q, W_k, v))
    assert_close(unmasked, attend(query, keys, values, all_allowed, W_q, W_k, v))


def test_attend_gradients_match_pytorch(attend_inputs, gen):
    ours = [t.clone().requires_grad_() if t.is_floating_point() else t for t in attend_inputs]
    theirs = [t.clone().requires_grad_() if t.is_floating_point() else t for t in attend_inputs]
    upstream = randn(B, DV, generator=gen)
    (attend(*ours)[0] * upstream).sum().backward()
    (torch_attend(*theirs)[0] * upstream).sum().backward()
    for mine, reference in zip(ours, theirs, strict=True):
        if mine.is_floating_point():
            torch.testing.assert_close(mine.grad, reference.grad, **F64)


def test_attend_fully_masked_row_is_zero(attend_inputs):
    query, keys, values, mask, W_q, W_k, v = attend_inputs
    mask = mask.clone()
    mask[2] = False
    params = [t.clone().requires_grad_() for t in (query, keys, values, W_q, W_k, v)]
    context, weights = attend(*params[:3], mask, *params[3:])
    context.square().sum().backward()
    assert (context[2] == 0).all() and (weights[2] == 0).all()
    for param in params:
        assert torch.isfinite(param.grad).all()
    expected = torch_attend(query[:2], keys[:2], values[:2], mask[:2], W_q, W_k, v)
    assert_close((context[:2], weights[:2]), expected)


def test_attend_passes_gradcheck(gen):
    args = [
        randn(2, 3, generator=gen, requires_grad=True),
        randn(2, 4, 2, generator=gen, requires_grad=True),
        randn(2, 4, 5, generator=gen, requires_grad=True),
    ]
    weights = [randn(*s, generator=gen, requires_grad=True) for s in [(6, 3), (6, 2), (6,)]]
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    assert torch.autograd.gradcheck(
        lambda q, k, val, W_q, W_k, v: attend(q, k, val, mask, W_q, W_k, v), (*args, *weights)
    )
