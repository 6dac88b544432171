"""The hidden battery of chapter 6: layer norm, the feed-forward block, encoder and decoder layers.

Every check draws its sizes and values from the generator it is given (``kit.inputs``). The
two layers are graded as classes: the student's class is built with the given ``__init__``,
then gets weights drawn as a ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
state_dict (so that every weight, norm scale and bias differs from its default), and its
``forward`` runs at norm_first False and True, with masks of shape (Tq, Tk) and (B, Tq, Tk)
(True = may attend). Every mask lets each query see at least one key (fully masked rows are
unspecified in this chapter) and hides at least one key of the first query, so that a mask
that is ignored always shows; the per-example masks of one batch differ, so that masks given
to the wrong heads show.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference
from autograder.kit.standard import HALF_POINT_PER_DTYPE, standard_checks
from autograder.mutants.ch06_transformer import MUTANTS
from autograder.runtime.executor import Call, Module

LEAK_MARKER = "LEAK-MARKER-autograder-ch06-93d4a1f6"
ASSIGNMENT = ASSIGNMENTS["ch06_transformer"]

LN = "layer_norm"
FFN = "feed_forward"
ENC = "EncoderLayer"
DEC = "DecoderLayer"

F32 = TOLERANCES[torch.float32]
# Inputs of standard deviation 5e-4 to 2e-3: their variance is below eps = 1e-5.
TINY = 1.25e-4
# Small widths, where the unbiased variance differs from the biased one by 8 % or more.
NORM_WIDTHS = (2, 3, 5, 6, 7)


# --- layer_norm ---


def _ln_args(generator, *shape, scale=1.0):
    """x (*shape), gamma (D,) ~ 1, beta (D,) ~ 0.5.

    Each vector of x has a mean of order 3 * scale and a standard deviation between 4 * scale
    and 16 * scale, never less: at scale 1 the default eps changes the result by far less than
    the tolerance (so that where eps goes does not matter there), at scale TINY the variance
    is below eps (so that it does).
    """
    D = shape[-1]
    noise = inputs.randn(generator, *shape)
    noise = noise - noise.mean(dim=-1, keepdim=True)
    noise = noise / noise.square().mean(dim=-1, keepdim=True).sqrt()  # std 1 per vector
    spread = scale * 4.0 ** (1 + torch.rand(*shape[:-1], 1, generator=generator))
    x = noise * spread + inputs.randn(generator, *shape[:-1], 1, scale=3.0 * scale)
    gamma = 1.0 + inputs.randn(generator, D, scale=0.5)
    beta = inputs.randn(generator, D, scale=0.5)
    return x, gamma, beta


def _ln_calls(generator, count=2, scale=1.0, eps=None, **options):
    """``count`` calls on x (B, T, D), D small; ``eps`` given as an argument when not None."""
    calls = []
    for _ in range(count):
        B, T = inputs.sizes(generator, 2, low=3)
        D = inputs.choice(generator, NORM_WIDTHS)
        args = _ln_args(generator, B, T, D, scale=scale)
        kwargs = {} if eps is None else {"eps": eps}
        calls.append(Call(LN, args, kwargs, seed=inputs.seed(generator), **options))
    return calls


def _ln_eps_calls(generator):
    """eps = 0.5 on a variance of order 1 to 16, eps = 1e-4 on a variance below 1e-5."""
    return [
        *_ln_calls(generator, count=1, scale=0.25, eps=0.5),
        *_ln_calls(generator, count=1, scale=TINY, eps=1e-4),
    ]


def _ln_leading_calls(generator):
    """x (D,) and x (A, B, T, D)."""
    A, B, T = inputs.sizes(generator, 3)
    D, D4 = (inputs.choice(generator, NORM_WIDTHS) for _ in range(2))
    return [
        Call(LN, _ln_args(generator, D)),
        Call(LN, _ln_args(generator, A, B, T, D4), seed=inputs.seed(generator)),
    ]


# --- feed_forward ---


def _ffn_args(generator, *lead, D, F):
    x = inputs.randn(generator, *lead, D)
    W1, W2 = inputs.weights(generator, F, D), inputs.weights(generator, D, F)
    b1, b2 = inputs.randn(generator, F, scale=0.5), inputs.randn(generator, D, scale=0.5)
    return x, W1, b1, W2, b2


def _ffn_calls(generator, count=2, square=False, **options):
    """``count`` calls on x (B, T, D) with D_ff != D (or D_ff = D with ``square``)."""
    calls = []
    for _ in range(count):
        B, T, D, F = inputs.sizes(generator, 4)
        args = _ffn_args(generator, B, T, D=D, F=D if square else F)
        calls.append(Call(FFN, args, seed=inputs.seed(generator), **options))
    return calls


def _ffn_leading_calls(generator):
    A, B, T, D, F = inputs.sizes(generator, 5)
    return [
        Call(FFN, _ffn_args(generator, D=D, F=F)),
        Call(FFN, _ffn_args(generator, A, B, T, D=F, F=D), seed=inputs.seed(generator)),
    ]


# --- masks (True = may attend) ---


def _self_mask(generator, *lead, T):
    """(*lead, T, T): random, the diagonal allowed, key T-1 hidden from query 0; per-example
    masks differ."""
    mask = torch.rand(*lead, T, T, generator=generator) < 0.5
    mask |= torch.eye(T, dtype=torch.bool)
    mask[..., 0, T - 1] = False
    if lead and torch.equal(mask[0], mask[1]):
        mask[1, T - 1, 0] = ~mask[1, T - 1, 0]
    return mask


def _causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def _batch_causal(generator, B, T):
    """(B, T, T): causal, and each example also hides some other key (never the diagonal)."""
    mask = _self_mask(generator, B, T=T) & _causal(T)
    mask |= torch.eye(T, dtype=torch.bool)
    if torch.equal(mask[0], mask[1]):
        mask[1, T - 1, 0] = ~mask[1, T - 1, 0]
    return mask


def _memory_mask(generator, *lead, Tq, Tk):
    """(*lead, Tq, Tk): random, key 0 allowed to every query, key Tk-1 hidden from query 0;
    per-example masks differ."""
    mask = torch.rand(*lead, Tq, Tk, generator=generator) < 0.5
    mask[..., 0] = True
    mask[..., 0, Tk - 1] = False
    if lead and torch.equal(mask[0], mask[1]):
        mask[1, Tq - 1, Tk - 1] = ~mask[1, Tq - 1, Tk - 1]
    return mask


# --- the layers ---


def _layer_sizes(generator, count):
    """``count`` distinct sizes >= 2 (batch, lengths, D_ff), and heads h, D = h * d_head."""
    sizes = inputs.sizes(generator, count)
    heads = inputs.choice(generator, (2, 3))
    d_head = inputs.choice(generator, (2, 3, 5))
    return sizes, heads, heads * d_head


def _layer_module(generator, factory, D, heads, d_ff, norm_first):
    build = partial(factory, D, heads, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    state = inputs.state_dict(generator, build)
    return Module((D, heads, d_ff), {"norm_first": norm_first}, state)


def _encoder_call(generator, norm_first, mask=None, length=None, **options):
    """x (B, T, D) with a (T, T) mask ("2d"), a (B, T, T) mask ("3d") or none."""
    (B, T, d_ff), heads, D = _layer_sizes(generator, 3)
    T = length or T
    module = _layer_module(generator, nn.TransformerEncoderLayer, D, heads, d_ff, norm_first)
    x = inputs.randn(generator, B, T, D)
    kwargs = {}
    if mask == "2d":
        kwargs["mask"] = _self_mask(generator, T=T)
    elif mask == "3d":
        kwargs["mask"] = _self_mask(generator, B, T=T)
    return Call(ENC, (x,), kwargs, module=module, seed=inputs.seed(generator), **options)


def _encoder_calls(generator, cases, **options):
    """One call per (norm_first, mask, length) of ``cases``."""
    return [
        _encoder_call(generator, norm_first, mask, length, **options)
        for norm_first, mask, length in cases
    ]


def _decoder_call(generator, norm_first, masks=None, length=None, **options):
    """y (B, Tq, D), memory (B, Tk, D), Tq != Tk; ``masks``: "2d" (a causal (Tq, Tq) and a
    (Tq, Tk) mask), "3d" ((B, Tq, Tq) causal and (B, Tq, Tk)) or none."""
    (B, Tq, Tk, d_ff), heads, D = _layer_sizes(generator, 4)
    Tq = length or Tq
    module = _layer_module(generator, nn.TransformerDecoderLayer, D, heads, d_ff, norm_first)
    y, memory = inputs.randn(generator, B, Tq, D), inputs.randn(generator, B, Tk, D)
    kwargs = {}
    if masks == "2d":
        kwargs = {
            "tgt_mask": _causal(Tq),
            "memory_mask": _memory_mask(generator, Tq=Tq, Tk=Tk),
        }
    elif masks == "3d":
        kwargs = {
            "tgt_mask": _batch_causal(generator, B, Tq),
            "memory_mask": _memory_mask(generator, B, Tq=Tq, Tk=Tk),
        }
    return Call(DEC, (y, memory), kwargs, module=module, seed=inputs.seed(generator), **options)


def _decoder_calls(generator, cases, **options):
    return [
        _decoder_call(generator, norm_first, masks, length, **options)
        for norm_first, masks, length in cases
    ]


STANDARD_CASES = ((False, "2d", None), (True, "3d", None))


def _layer_checks(function, calls, prefix, what):
    """The value checks of one layer; ``what`` names its masks in the messages."""
    return (
        Check(
            f"{prefix}_post_norm",
            function,
            2.0,
            partial(calls, cases=((False, None, None), (False, None, 1))),
            f"{function} is wrong with norm_first=False (post-norm): each sublayer is"
            " norm(x + sublayer(x)).",
            match_reference(**F32),
        ),
        Check(
            f"{prefix}_pre_norm",
            function,
            2.0,
            partial(calls, cases=((True, None, None), (True, None, 1))),
            f"{function} is wrong with norm_first=True (pre-norm): each sublayer is"
            " x + sublayer(norm(x)).",
            match_reference(**F32),
        ),
        Check(
            f"{prefix}_masks",
            function,
            1.5,
            partial(calls, cases=((False, "2d", None), (True, "2d", None))),
            f"{function} is wrong with {what} shaped (Tq, Tk), True = may attend:"
            " nn.MultiheadAttention's attn_mask means the opposite.",
            match_reference(**F32),
        ),
        Check(
            f"{prefix}_batch_masks",
            function,
            1.5,
            partial(calls, cases=((False, "3d", None), (True, "3d", None))),
            f"{function} is wrong with {what} shaped (B, Tq, Tk), one per example:"
            " nn.MultiheadAttention wants (B * heads, Tq, Tk), the heads of each example"
            " together.",
            match_reference(**F32),
        ),
        *standard_checks(
            function,
            partial(calls, cases=STANDARD_CASES),
            prefix=prefix,
            points={"gradients": 1.0, "float64": 0.5, "meta": 0.5, "accelerator": 1.0},
        ),
    )


LN_CHECKS = (
    Check(
        "layer_norm_values",
        LN,
        2.5,
        _ln_calls,
        "layer_norm is wrong on x (B, T, D): normalise each vector over its last dimension"
        " with its mean and biased variance, (x - mean) / sqrt(var + eps) * gamma + beta.",
        match_reference(**F32),
    ),
    Check(
        "layer_norm_tiny_variance",
        LN,
        1.5,
        partial(_ln_calls, scale=TINY),
        "layer_norm is wrong on vectors whose variance is smaller than eps: eps goes under"
        " the square root, sqrt(var + eps).",
        match_reference(**F32),
    ),
    Check(
        "layer_norm_eps",
        LN,
        1.0,
        _ln_eps_calls,
        "layer_norm is wrong when eps is given (0.5 or 1e-4): use the eps argument.",
        match_reference(**F32),
    ),
    Check(
        "layer_norm_leading_dims",
        LN,
        1.0,
        _ln_leading_calls,
        "layer_norm is wrong on x (D,) or x (A, B, T, D): normalise over the last dimension"
        " only, whatever the number of leading dimensions.",
        match_reference(**F32),
    ),
    *standard_checks(
        LN,
        partial(_ln_calls, count=2),
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 0.5,
            "accelerator": 0.5,
        },
        # float64 keeps the dtype; where eps goes shows in layer_norm_tiny_variance, not here
        tolerances={"float64": F32},
    ),
)

FFN_CHECKS = (
    Check(
        "feed_forward_values",
        FFN,
        2.5,
        _ffn_calls,
        "feed_forward is wrong on x (B, T, D) with W1 (D_ff, D), W2 (D, D_ff): it is"
        " relu(x @ W1.T + b1) @ W2.T + b2.",
        match_reference(**F32),
    ),
    Check(
        "feed_forward_square",
        FFN,
        1.0,
        partial(_ffn_calls, square=True),
        "feed_forward is wrong when D_ff = D, where W1 and W2 are square: apply them as"
        " x @ W.T and keep b1 with W1, b2 with W2.",
        match_reference(**F32),
    ),
    Check(
        "feed_forward_leading_dims",
        FFN,
        1.0,
        _ffn_leading_calls,
        "feed_forward is wrong on x (D,) or x (A, B, T, D): it acts on the last dimension only.",
        match_reference(**F32),
    ),
    *standard_checks(
        FFN,
        _ffn_calls,
        points={
            "gradients": 2.0,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
    ),
)

ENC_CHECKS = _layer_checks(ENC, _encoder_calls, "encoder", "a mask")
DEC_CHECKS = _layer_checks(DEC, _decoder_calls, "decoder", "tgt_mask and memory_mask")

BATTERY = Battery.for_assignment(
    ASSIGNMENT, (*LN_CHECKS, *FFN_CHECKS, *ENC_CHECKS, *DEC_CHECKS), MUTANTS
)
