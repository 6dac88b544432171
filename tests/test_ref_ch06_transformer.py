"""The chapter 6 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, assert_close, assert_gradients_match, randn
from torch import nn

from solutions.ch04_masking import padding_mask
from solutions.ch06_transformer import DecoderLayer, EncoderLayer, feed_forward, layer_norm

# Distinct sizes: batch 2, target length 5, memory length 7, heads 3, model dim 12, hidden 20.
B, TQ, TK, H, D, DFF = 2, 5, 7, 3, 12, 20
LENGTHS_Q, LENGTHS_K = torch.tensor([5, 3]), torch.tensor([4, 7])


# layer_norm


@pytest.mark.parametrize("shape", [(B, TQ, 4), (B, TK, 7), (3, 7), (7,)], ids=str)
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["unit", "tiny_variance"])
def test_layer_norm_matches_pytorch(gen, shape, eps, scale):
    x = randn(*shape, generator=gen) * scale + 2.0
    gamma = randn(shape[-1], generator=gen)
    beta = randn(shape[-1], generator=gen)
    out = layer_norm(x, gamma, beta, eps=eps)
    assert out.shape == x.shape
    assert_close(out, F.layer_norm(x, shape[-1:], gamma, beta, eps=eps))


def test_layer_norm_default_eps_is_1e_5(gen):
    x = randn(B, TQ, 7, generator=gen) * 1e-3
    gamma, beta = randn(7, generator=gen), randn(7, generator=gen)
    assert_close(layer_norm(x, gamma, beta), F.layer_norm(x, (7,), gamma, beta, eps=1e-5))


def test_layer_norm_gradients_match_pytorch(gen):
    tensors = (randn(B, TQ, 7, generator=gen), randn(7, generator=gen), randn(7, generator=gen))
    upstream = randn(B, TQ, 7, generator=gen)
    assert_gradients_match(
        layer_norm,
        lambda x, gamma, beta: F.layer_norm(x, (7,), gamma, beta),
        *tensors,
        loss=lambda out: (out * upstream).sum(),
    )


# feed_forward


@pytest.fixture
def ffn_args(gen):
    return (
        randn(B, TQ, D, generator=gen),
        randn(DFF, D, generator=gen) / 3,
        randn(DFF, generator=gen),
        randn(D, DFF, generator=gen) / 4,
        randn(D, generator=gen),
    )


def pytorch_feed_forward(x, W1, b1, W2, b2):
    return F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)


def test_feed_forward_matches_pytorch(ffn_args):
    out = feed_forward(*ffn_args)
    assert out.shape == (B, TQ, D)
    assert_close(out, pytorch_feed_forward(*ffn_args))


def test_feed_forward_works_on_any_leading_dims(ffn_args):
    x, *weights = ffn_args
    assert_close(feed_forward(x[0, 0], *weights), pytorch_feed_forward(x[0, 0], *weights))
    x4 = x.reshape(1, B, TQ, D)
    assert_close(feed_forward(x4, *weights), pytorch_feed_forward(x4, *weights))


def test_feed_forward_gradients_match_pytorch(ffn_args):
    assert_gradients_match(feed_forward, pytorch_feed_forward, *ffn_args)


# EncoderLayer and DecoderLayer


def perturbed(layer, gen):
    """``layer`` in float64 with every parameter moved off its initial value."""
    layer = layer.to(torch.float64)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.2 * randn(*parameter.shape, generator=gen))
    return layer


def pytorch_encoder(gen, norm_first):
    layer = nn.TransformerEncoderLayer(
        D, H, DFF, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    return perturbed(layer, gen)


def pytorch_decoder(gen, norm_first):
    layer = nn.TransformerDecoderLayer(
        D, H, DFF, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    return perturbed(layer, gen)


def copy_of(reference, cls, norm_first):
    """Our layer holding ``reference``'s weights."""
    layer = cls(D, H, DFF, norm_first=norm_first).to(torch.float64)
    layer.load_state_dict(reference.state_dict())
    assert layer.norm_first == norm_first
    return layer


def pytorch_attn_mask(mask):
    """The course mask (True = may attend) in PyTorch's convention, heads repeated."""
    if mask is None:
        return None
    if mask.dim() == 3:
        return (~mask).repeat_interleave(H, dim=0)  # (B*h, Tq, Tk)
    return ~mask  # (Tq, Tk)


def course_mask(kind, tq, tk, lengths_q, lengths_k):
    """None, a causal (Tq, Tk) mask, or a (B, Tq, Tk) padding mask with a causal part."""
    if kind == "none":
        return None
    causal = torch.ones(tq, tk, dtype=torch.bool).tril()  # (Tq, Tk)
    if kind == "causal":
        return causal
    real_q = padding_mask(lengths_q, tq)  # (B, Tq)
    real_k = padding_mask(lengths_k, tk)  # (B, Tk)
    # Padded queries still see key 0, so every row has an allowed key.
    return causal & real_k[:, None, :] | (~real_q[:, :, None] & (torch.arange(tk) == 0))


def assert_parameter_grads_match(ours, theirs):
    mine = dict(ours.named_parameters())
    for name, reference in theirs.named_parameters():
        torch.testing.assert_close(mine[name].grad, reference.grad, **F64, msg=name)


NORM_FIRST = pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])


@NORM_FIRST
def test_encoder_state_dict_keys_match_pytorch(norm_first):
    ours = EncoderLayer(D, H, DFF, norm_first=norm_first)
    theirs = nn.TransformerEncoderLayer(D, H, DFF, batch_first=True, norm_first=norm_first)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key
    assert ours.self_attn.batch_first and ours.self_attn.dropout == 0.0


@NORM_FIRST
def test_decoder_state_dict_keys_match_pytorch(norm_first):
    ours = DecoderLayer(D, H, DFF, norm_first=norm_first)
    theirs = nn.TransformerDecoderLayer(D, H, DFF, batch_first=True, norm_first=norm_first)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key
    assert ours.self_attn.batch_first and ours.multihead_attn.batch_first


@NORM_FIRST
@pytest.mark.parametrize("kind", ["none", "causal", "padding"])
def test_encoder_matches_pytorch(gen, norm_first, kind):
    theirs = pytorch_encoder(gen, norm_first)
    ours = copy_of(theirs, EncoderLayer, norm_first)
    x = randn(B, TQ, D, generator=gen)
    mask = course_mask(kind, TQ, TQ, LENGTHS_Q, LENGTHS_Q)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ours(x_ours, mask)
    expected = theirs(x_theirs, src_mask=pytorch_attn_mask(mask))
    assert out.shape == (B, TQ, D)
    assert_close(out, expected)
    upstream = randn(B, TQ, D, generator=gen)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **F64)
    assert_parameter_grads_match(ours, theirs)


@NORM_FIRST
def test_encoder_matches_pytorch_in_inference(gen, norm_first):
    theirs = pytorch_encoder(gen, norm_first).eval()
    ours = copy_of(theirs, EncoderLayer, norm_first).eval()
    x = randn(B, TQ, D, generator=gen)
    mask = course_mask("padding", TQ, TQ, LENGTHS_Q, LENGTHS_Q)
    with torch.no_grad():
        assert_close(ours(x, mask), theirs(x, src_mask=pytorch_attn_mask(mask)))


@NORM_FIRST
def test_encoder_rows_with_allowed_keys_ignore_an_empty_row(gen, norm_first):
    theirs = pytorch_encoder(gen, norm_first)
    ours = copy_of(theirs, EncoderLayer, norm_first)
    x = randn(B, TQ, D, generator=gen)
    mask = course_mask("padding", TQ, TQ, LENGTHS_Q, LENGTHS_Q)
    mask[1, 2] = False  # query 2 of sequence 1 sees nothing
    rows = mask.any(dim=-1)  # (B, Tq)
    expected = theirs(x, src_mask=pytorch_attn_mask(mask))
    assert_close(ours(x, mask)[rows], expected[rows])


@NORM_FIRST
@pytest.mark.parametrize("tgt_kind", ["none", "causal", "padding"])
@pytest.mark.parametrize("memory_kind", ["none", "causal", "padding"])
def test_decoder_matches_pytorch(gen, norm_first, tgt_kind, memory_kind):
    theirs = pytorch_decoder(gen, norm_first)
    ours = copy_of(theirs, DecoderLayer, norm_first)
    y, memory = randn(B, TQ, D, generator=gen), randn(B, TK, D, generator=gen)
    tgt_mask = course_mask(tgt_kind, TQ, TQ, LENGTHS_Q, LENGTHS_Q)
    memory_mask = course_mask(memory_kind, TQ, TK, LENGTHS_Q, LENGTHS_K)
    ours_in = [t.clone().requires_grad_() for t in (y, memory)]
    theirs_in = [t.clone().requires_grad_() for t in (y, memory)]
    out = ours(*ours_in, tgt_mask=tgt_mask, memory_mask=memory_mask)
    expected = theirs(
        *theirs_in,
        tgt_mask=pytorch_attn_mask(tgt_mask),
        memory_mask=pytorch_attn_mask(memory_mask),
    )
    assert out.shape == (B, TQ, D)
    assert_close(out, expected)
    upstream = randn(B, TQ, D, generator=gen)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for mine, reference in zip(ours_in, theirs_in, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad, **F64)
    assert_parameter_grads_match(ours, theirs)
