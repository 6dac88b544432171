"""The hidden battery of chapter 5: splitting into heads, merging them, multi-head attention.

Every check draws its sizes and values from the generator it is given (``kit.inputs``), so
that the inputs depend on the run's secret seed. Within one call the batch, the lengths, the
number of heads and the head size all differ, so that a reshape that mixes two of them
shows. The weights of ``multi_head_attention`` are (D, D) with D = heads * head size, its
biases are drawn (never zero), and its masks come in every shape the contract allows, with
rows that allow nothing where the check says so.
"""

from __future__ import annotations

from functools import partial

import torch

from autograder.batteries.ch04_masking import random_mask
from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference, public_error
from autograder.kit.standard import HALF_POINT_PER_DTYPE, standard_checks
from autograder.mutants.ch05_multihead import MUTANTS
from autograder.runtime.executor import RETURNED, Call

LEAK_MARKER = "LEAK-MARKER-autograder-ch05-6a4c91e2"
ASSIGNMENT = ASSIGNMENTS["ch05_multihead"]

SPLIT = "split_heads"
MERGE = "merge_heads"
MHA = "multi_head_attention"

F32 = TOLERANCES[torch.float32]
EXACT = dict(rtol=0.0, atol=0.0)  # a reshape moves numbers, it computes none
SOFTMAX_HINT = "Let torch.softmax do the normalisation, with the mask applied to the scores."
EMPTY_HINT = (
    "A query row with nothing allowed must give zero weights and a zero attention output (so"
    " its out is b_o), with finite gradients."
)


# --- split_heads ---


def _split_calls(generator, count=3, heads=None, head_size=None, **options) -> list[Call]:
    """``count`` calls split_heads(x (B, T, h*d), h); ``heads`` / ``head_size`` pin h / d."""
    calls = []
    for _ in range(count):
        B, T, h, d = inputs.sizes(generator, 4)
        h, d = heads or h, head_size or d
        x = inputs.randn(generator, B, T, h * d)
        calls.append(Call(SPLIT, (x, h), seed=inputs.seed(generator), **options))
    return calls


def _indivisible_calls(generator) -> list[Call]:
    """D = h * d + r with 0 < r < h: no whole number of features per head."""
    calls = []
    for _ in range(2):
        B, T, h, d = inputs.sizes(generator, 4, low=3)
        r = int(torch.randint(1, h, (1,), generator=generator))
        calls.append(Call(SPLIT, (inputs.randn(generator, B, T, h * d + r), h)))
    return calls


def raises_value_error(calls, actual, expected):
    """A judge: every call raised a ValueError (the reference's results are not read)."""
    for number, result in enumerate(actual, start=1):
        if not result.error:
            return f"call {number}: it returned {result.structure}, expected a ValueError"
        if result.error.startswith(RETURNED):
            return f"call {number}: {result.error}"
        if not result.error.startswith("ValueError"):
            return f"call {number}: it raised {public_error(result.error)}, not a ValueError"
    return None


# --- merge_heads ---


def _merge_calls(generator, count=3, heads=None, head_size=None, **options) -> list[Call]:
    """``count`` calls merge_heads(x (B, h, T, d)); ``heads`` / ``head_size`` pin h / d."""
    calls = []
    for _ in range(count):
        B, h, T, d = inputs.sizes(generator, 4)
        h, d = heads or h, head_size or d
        x = inputs.randn(generator, B, h, T, d)
        calls.append(Call(MERGE, (x,), seed=inputs.seed(generator), **options))
    return calls


# --- multi_head_attention ---


def _mha_parameters(generator, D) -> list[torch.Tensor]:
    """W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o: weights ~ N(0, 1/D), biases ~ N(0, 1)."""
    return [
        tensor
        for _ in range(4)
        for tensor in (inputs.weights(generator, D, D), inputs.randn(generator, D))
    ]


def _mha_mask(generator, kind, B, h, Tq, Tk, empty_rows):
    if kind is None:
        return None
    shapes = {
        "2d": (Tq, Tk),
        "3d": (B, Tq, Tk),
        "keys": (B, 1, 1, Tk),
        "heads": (B, h, Tq, Tk),
    }
    return random_mask(generator, *shapes[kind], empty_rows=empty_rows)


def _mha_calls(
    generator, masks=(None,), cross=True, heads=None, empty_rows=0, **options
) -> list[Call]:
    """One call per entry of ``masks`` (a mask kind, or None).

    query (B, Tq, D) and key, value (B, Tk, D) with D = h * d; ``cross=False`` passes the
    same sequence as query, key and value (Tq = Tk); ``heads`` pins h.
    """
    calls = []
    for kind in masks:
        B, Tq, Tk, h, d = inputs.sizes(generator, 5)
        h = heads or h
        D = h * d
        query = inputs.randn(generator, B, Tq, D)
        if cross:
            key, value = inputs.randn(generator, B, Tk, D), inputs.randn(generator, B, Tk, D)
        else:
            Tk, key, value = Tq, query, query
        args = (query, key, value, *_mha_parameters(generator, D), h)
        mask = _mha_mask(generator, kind, B, h, Tq, Tk, empty_rows)
        if mask is not None:
            args = (*args, mask)
        calls.append(Call(MHA, args, seed=inputs.seed(generator), **options))
    return calls


# --- the checks ---

SPLIT_CHECKS = (
    Check(
        "split_values",
        SPLIT,
        4.0,
        _split_calls,
        "split_heads is wrong: x (B, T, D) becomes (B, h, T, D/h), head i holding the"
        " features i*d to (i+1)*d - 1 of every position (reshape to (B, T, h, d), then"
        " transpose(1, 2)).",
        match_reference(**EXACT),
    ),
    Check(
        "split_one_head",
        SPLIT,
        0.5,
        partial(_split_calls, count=2, heads=1),
        "split_heads is wrong with num_heads = 1: the result is x with a head dim of size 1,"
        " (B, 1, T, D).",
        match_reference(**EXACT),
    ),
    Check(
        "split_width_one",
        SPLIT,
        0.5,
        partial(_split_calls, count=2, head_size=1),
        "split_heads is wrong when every head has a single feature (num_heads = D).",
        match_reference(**EXACT),
    ),
    Check(
        "split_indivisible",
        SPLIT,
        1.5,
        _indivisible_calls,
        "split_heads must raise a ValueError when D is not divisible by num_heads.",
        raises_value_error,
        gated=True,
    ),
    *standard_checks(
        SPLIT,
        partial(_split_calls, count=2),
        prefix="split",
        points={"gradients": 1.0, "float16": 0.5, "meta": 1.0, "accelerator": 1.0},
    ),
)

MERGE_CHECKS = (
    Check(
        "merge_values",
        MERGE,
        4.5,
        _merge_calls,
        "merge_heads is wrong: x (B, h, T, d) becomes (B, T, h*d), the heads side by side,"
        " head 0's features first (transpose(1, 2), then reshape).",
        match_reference(**EXACT),
    ),
    Check(
        "merge_one_head",
        MERGE,
        0.5,
        partial(_merge_calls, count=2, heads=1),
        "merge_heads is wrong with a single head, x (B, 1, T, d).",
        match_reference(**EXACT),
    ),
    Check(
        "merge_width_one",
        MERGE,
        0.5,
        partial(_merge_calls, count=2, head_size=1),
        "merge_heads is wrong when every head has a single feature, x (B, h, T, 1).",
        match_reference(**EXACT),
    ),
    *standard_checks(
        MERGE,
        partial(_merge_calls, count=2),
        prefix="merge",
        points={
            "gradients": 1.0,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
    ),
)

MHA_CHECKS = (
    Check(
        "mha_self_attention",
        MHA,
        1.5,
        partial(_mha_calls, masks=(None, None), cross=False),
        "multi_head_attention is wrong for self-attention (query, key and value the same"
        " (B, T, D) sequence) without a mask: project with x @ W.T + b, split into heads,"
        " attend in each head with scores divided by sqrt(D / num_heads), merge, then apply"
        " W_o and b_o.",
        match_reference(**F32),
    ),
    Check(
        "mha_cross_attention",
        MHA,
        1.0,
        partial(_mha_calls, masks=(None, None)),
        "multi_head_attention is wrong for cross-attention: queries come from query (B, Tq, D),"
        " keys and values from key and value (B, Tk, D), with Tq != Tk.",
        match_reference(**F32),
    ),
    Check(
        "mha_shared_mask",
        MHA,
        1.0,
        partial(_mha_calls, masks=("2d", "2d")),
        "multi_head_attention is wrong with a (Tq, Tk) mask (True = may attend), shared by the"
        " batch and the heads.",
        match_reference(**F32),
    ),
    Check(
        "mha_batch_mask",
        MHA,
        1.0,
        partial(_mha_calls, masks=("3d", "3d")),
        "multi_head_attention is wrong with a (B, Tq, Tk) mask: each sequence has its own mask,"
        " the same for every head (give it a head dim with unsqueeze(1)).",
        match_reference(**F32),
    ),
    Check(
        "mha_broadcast_mask",
        MHA,
        1.0,
        partial(_mha_calls, masks=("keys", "heads")),
        "multi_head_attention is wrong with a mask of shape (B, 1, 1, Tk) or (B, h, Tq, Tk),"
        " which broadcast to the weights (B, h, Tq, Tk).",
        match_reference(**F32),
    ),
    Check(
        "mha_empty_rows",
        MHA,
        1.0,
        partial(_mha_calls, masks=("3d", "2d"), empty_rows=2),
        "multi_head_attention is wrong when some query rows allow no key. " + EMPTY_HINT,
        match_reference(**F32),
    ),
    Check(
        "mha_one_head",
        MHA,
        0.5,
        partial(_mha_calls, masks=(None, "3d"), heads=1),
        "multi_head_attention is wrong with num_heads = 1 (one head of size D).",
        match_reference(**F32),
    ),
    *standard_checks(
        MHA,
        partial(_mha_calls, masks=("3d",), empty_rows=1),
        prefix="mha",
        points={
            "gradients": 1.0,
            "float64": 0.5,
            "float16": 0.5,
            "meta": 0.5,
            "accelerator": 0.5,
        },
        hints={"gradients": EMPTY_HINT, "float16": SOFTMAX_HINT},
    ),
)

BATTERY = Battery.for_assignment(ASSIGNMENT, (*SPLIT_CHECKS, *MERGE_CHECKS, *MHA_CHECKS), MUTANTS)
