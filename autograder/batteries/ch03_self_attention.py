"""The hidden battery of chapter 3: scaled dot-product attention, self-attention, positions.

Every check draws its sizes and values from the generator it is given (``kit.inputs``), so
that the inputs depend on the run's secret seed. Sizes within one call are distinct (batch,
queries, keys, key size and value size all differ), so that a swapped axis or a wrong size
shows. The gradient, dtype, meta and accelerator checks come from ``kit.standard``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference
from autograder.kit.properties import permutation_equivariant
from autograder.kit.standard import HALF_POINT_PER_DTYPE, device_argument_checks, standard_checks
from autograder.mutants.ch03_self_attention import MUTANTS
from autograder.runtime.executor import CALL_DEVICE, Call

LEAK_MARKER = "LEAK-MARKER-autograder-ch03-cbb3146e"
ASSIGNMENT = ASSIGNMENTS["ch03_self_attention"]

SDPA = "scaled_dot_product_attention"
SELF = "self_attention"
PE = "sinusoidal_positional_encoding"

F32 = TOLERANCES[torch.float32]
# Scores around 1000 carry float32 rounding errors around 1e-4.
LARGE = dict(rtol=1e-3, atol=1e-3)
# A float32 result of another correct formula cast to a low-precision dtype may round to the
# neighbouring value: one unit in the last place, at most eps for |x| <= 1.
PE_CAST = {
    dtype: dict(rtol=0.0, atol=torch.finfo(dtype).eps) for dtype in (torch.float16, torch.bfloat16)
}
# The contract asks for at least float32, so float64 is judged at float32 accuracy.
PE_F32 = dict(rtol=1e-4, atol=5e-5)
SOFTMAX_HINT = "Let torch.softmax do the normalisation."


# --- scaled_dot_product_attention ---


def _sdpa_calls(generator, leading=(1,), lengths=None, **options) -> list[Call]:
    """One call per entry of ``leading`` (its number of leading dims).

    q (*lead, Tq, d_k), k (*lead, Tk, d_k), v (*lead, Tk, d_v); ``lengths`` can pin
    (Tq, Tk) per call (None keeps the drawn size).
    """
    calls = []
    for index, count in enumerate(leading):
        *lead, Tq, Tk, d_k, d_v = inputs.sizes(generator, count + 4)
        if lengths is not None:
            Tq = lengths[index][0] or Tq
            Tk = lengths[index][1] or Tk
        q = inputs.randn(generator, *lead, Tq, d_k)
        k = inputs.randn(generator, *lead, Tk, d_k)
        v = inputs.randn(generator, *lead, Tk, d_v)
        calls.append(Call(SDPA, (q, k, v), seed=inputs.seed(generator), **options))
    return calls


def _sdpa_large_logit_calls(generator) -> list[Call]:
    """Scores of +1000 and of -1000 plus a spread of order 1 over the keys."""
    calls = []
    for offset in (1000.0, -1000.0):
        q, k, v = inputs.large_attention(generator, offset)
        calls.append(Call(SDPA, (q, k, v), seed=inputs.seed(generator)))
    return calls


# --- self_attention ---


def _self_inputs(generator, B, T, D, d_k, d_v) -> tuple[torch.Tensor, ...]:
    """x (B, T, D) and W_q (d_k, D), W_k (d_k, D), W_v (d_v, D), weights ~ N(0, 1/D)."""
    x = inputs.randn(generator, B, T, D)
    return (x, *(inputs.weights(generator, d, D) for d in (d_k, d_k, d_v)))


def _self_calls(generator, count=2, length=None, square=False, **options):
    """``count`` calls; ``length`` pins T; ``square`` makes D = d_k = d_v."""
    calls = []
    for _ in range(count):
        B, T, D, d_k, d_v = inputs.sizes(generator, 5)
        T = length or T
        if square:
            d_k = d_v = D
        args = _self_inputs(generator, B, T, D, d_k, d_v)
        calls.append(Call(SELF, args, seed=inputs.seed(generator), **options))
    return calls


def _self_large_calls(generator) -> list[Call]:
    """Scores around +-1000 with a spread of order 1 over the keys.

    x = n + s * e, where W_q e = 0 (d_k < D leaves W_q a null space): the large part of the
    scores, s (W_q n_i).(W_k e) / sqrt(d_k), is the same for every key of query i, so the
    softmax stays far from one-hot while exp() of the raw scores overflows (or underflows).
    """
    calls = []
    for _ in range(2):
        B, T, d_k, D, d_v = inputs.sizes(generator, 5, low=3)
        d_k, D = min(d_k, D), max(d_k, D)
        n, W_q, W_k, W_v = _self_inputs(generator, B, T, D, d_k, d_v)
        r = inputs.randn(generator, D).double()
        e = r - torch.linalg.pinv(W_q.double()) @ (W_q.double() @ r)
        e = (e / e.norm()).float()
        offsets = (n @ W_q.T) @ (W_k @ e) / math.sqrt(d_k)  # (B, T), per unit of s
        s = 1000.0 / offsets.abs().mean()
        calls.append(Call(SELF, (n + s * e, W_q, W_k, W_v), seed=inputs.seed(generator)))
    return calls


def _permuted_calls(generator) -> list[Call]:
    """The same weights on x and on x with its tokens permuted (never the identity)."""
    B, T, D, d_k, d_v = inputs.sizes(generator, 5, low=3)
    x, *weights = _self_inputs(generator, B, T, D, d_k, d_v)
    perm = torch.randperm(T, generator=generator)
    if torch.equal(perm, torch.arange(T)):
        perm = perm.roll(1)
    return [Call(SELF, (x, *weights)), Call(SELF, (x[:, perm], *weights))]


# --- sinusoidal_positional_encoding ---


def _pe_calls(generator, count=2, odd=False, length=None, low=5, high=64, kwargs=None, min_dim=4):
    """``count`` calls (T, D, **kwargs): T in [low, high] (or ``length``), D even or ``odd``,
    D at least ``min_dim``."""
    calls = []
    for _ in range(count):
        T, half = inputs.integers(generator, 2, low, high)
        D = 2 * (half % 16) + (5 if odd else 4)  # 4..34 even, 5..35 odd
        D = max(D, min_dim + (D - min_dim) % 2)  # keeps D's parity
        if T == D:  # never square
            T += 1
        calls.append(Call(PE, (length or T, D), dict(kwargs or {})))
    return calls


def _pe_base_calls(generator) -> list[Call]:
    bases = (100.0, 500.0 + 1000.0 * float(torch.rand((), generator=generator)))
    calls = _pe_calls(generator, odd=True)
    return [Call(PE, call.args, {"base": base}) for base, call in zip(bases, calls, strict=True)]


def _pe_device_calls(generator, device) -> list[Call]:
    """Calls with ``device`` given as an argument: the result must be created there."""
    calls = _pe_calls(generator, odd=True)
    return [
        Call(PE, call.args, {"dtype": dtype, "device": CALL_DEVICE}, device=device)
        for dtype, call in zip((torch.float32, torch.float64), calls, strict=True)
    ]


def _pe_dtype(dtype: torch.dtype, points: float, tolerances: dict) -> Check:
    """The positions asked for in ``dtype``; T >= 64 and D >= 12, where angles computed in
    float16 or bfloat16 go wrong for every draw (with D = 4 they never do)."""
    label = str(dtype).removeprefix("torch.")
    return Check(
        f"pe_{label}",
        PE,
        points,
        partial(_pe_calls, low=64, high=100, kwargs={"dtype": dtype}, min_dim=12),
        f"sinusoidal_positional_encoding is wrong for dtype={label}: compute the angles in"
        " float32 (or better) and cast the result to dtype at the end.",
        match_reference(**tolerances),
    )


SDPA_CHECKS = (
    Check(
        "sdpa_batched",
        SDPA,
        1.5,
        partial(_sdpa_calls, leading=(1, 1, 1, 1)),
        "scaled_dot_product_attention is wrong on batched inputs q (B, Tq, d_k), k (B, Tk, d_k),"
        " v (B, Tk, d_v) with Tq != Tk and d_k != d_v.",
        match_reference(**F32),
    ),
    Check(
        "sdpa_unbatched",
        SDPA,
        0.5,
        partial(_sdpa_calls, leading=(0, 0)),
        "scaled_dot_product_attention is wrong on inputs with no leading dimension,"
        " q (Tq, d_k), k (Tk, d_k), v (Tk, d_v).",
        match_reference(**F32),
    ),
    Check(
        "sdpa_many_leading_dims",
        SDPA,
        1.0,
        partial(_sdpa_calls, leading=(2, 3)),
        "scaled_dot_product_attention is wrong with two or three leading dimensions, like"
        " (B, heads, Tq, d_k): transpose the last two axes only, with k.transpose(-2, -1).",
        match_reference(**F32),
    ),
    Check(
        "sdpa_length_one",
        SDPA,
        1.0,
        partial(_sdpa_calls, leading=(1, 1, 2), lengths=((1, None), (None, 1), (1, 1))),
        "scaled_dot_product_attention is wrong when there is a single query or a single key.",
        match_reference(**F32),
    ),
    Check(
        "sdpa_large_logits",
        SDPA,
        1.0,
        _sdpa_large_logit_calls,
        "scaled_dot_product_attention is wrong or not finite when the scores are around"
        " +1000 or -1000: the softmax must subtract each row's maximum (torch.softmax does).",
        match_reference(**LARGE, grads=False),
    ),
    *standard_checks(
        SDPA,
        partial(_sdpa_calls, leading=(1, 2)),
        prefix="sdpa",
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
        hints={"float16": SOFTMAX_HINT, "bfloat16": SOFTMAX_HINT},
    ),
)

SELF_CHECKS = (
    Check(
        "self_attention_values",
        SELF,
        2.0,
        partial(_self_calls, count=3),
        "self_attention is wrong for x (B, T, D) with projections W_q, W_k (d_k, D) and"
        " W_v (d_v, D), applied as x @ W.T.",
        match_reference(**F32),
    ),
    Check(
        "self_attention_single_token",
        SELF,
        0.5,
        partial(_self_calls, length=1),
        "self_attention is wrong for a sequence of one token (T = 1).",
        match_reference(**F32),
    ),
    Check(
        "self_attention_square_projections",
        SELF,
        1.0,
        partial(_self_calls, square=True),
        "self_attention is wrong when D = d_k = d_v, where every projection is square.",
        match_reference(**F32),
    ),
    Check(
        "self_attention_large_inputs",
        SELF,
        1.0,
        _self_large_calls,
        "self_attention is wrong or not finite when the scores are around +1000 or -1000:"
        " the softmax must subtract each row's maximum (torch.softmax does).",
        match_reference(**LARGE, grads=False),
    ),
    Check(
        "self_attention_permutation",
        SELF,
        1.0,
        _permuted_calls,
        "self_attention is not permutation-equivariant: permuting the tokens of x must"
        " permute the output rows and the rows and columns of the weights the same way.",
        permutation_equivariant(weights_output=1),
        gated=True,
    ),
    *standard_checks(
        SELF,
        _self_calls,
        points={"gradients": 1.5, "float16": 0.5, "bfloat16": 0.5, "meta": 1.0, "accelerator": 1.0},
        hints={"float16": SOFTMAX_HINT, "bfloat16": SOFTMAX_HINT},
    ),
)

PE_CHECKS = (
    Check(
        "pe_values",
        PE,
        2.0,
        partial(_pe_calls, count=3),
        "sinusoidal_positional_encoding is wrong for even D: PE[p, 2i] = sin(p / base^(2i/D))"
        " and PE[p, 2i+1] = cos(p / base^(2i/D)), interleaved, positions from 0.",
        match_reference(**PE_F32),
    ),
    Check(
        "pe_odd_dim",
        PE,
        1.5,
        partial(_pe_calls, odd=True),
        "sinusoidal_positional_encoding is wrong for odd D, where the last column is a sine.",
        match_reference(**PE_F32),
    ),
    Check(
        "pe_first_position",
        PE,
        1.0,
        partial(_pe_calls, length=1),
        "sinusoidal_positional_encoding is wrong for T = 1: the only row is position 0,"
        " so it reads sin 0, cos 0, sin 0, ...",
        match_reference(**PE_F32),
    ),
    Check(
        "pe_base",
        PE,
        1.0,
        _pe_base_calls,
        "sinusoidal_positional_encoding ignores or misuses its base argument.",
        match_reference(**PE_F32),
    ),
    _pe_dtype(torch.float16, 1.0, PE_CAST[torch.float16]),
    _pe_dtype(torch.bfloat16, 0.5, PE_CAST[torch.bfloat16]),
    _pe_dtype(torch.float64, 0.5, PE_F32),
    *device_argument_checks(
        PE,
        _pe_device_calls,
        prefix="pe",
        points={"meta": 1.5, "accelerator": 1.0},
        creates="every tensor",
        judge=match_reference(**PE_F32),
    ),
)

BATTERY = Battery.for_assignment(ASSIGNMENT, (*SDPA_CHECKS, *SELF_CHECKS, *PE_CHECKS), MUTANTS)
