"""The hidden battery of chapter 3: scaled dot-product attention, self-attention, positions.

Every check draws its sizes and values from the generator it is given, so that the
inputs depend on the run's secret seed. Sizes within one call are distinct (batch,
queries, keys, key size and value size all differ), so that a swapped axis or a
wrong size shows. Tensors are drawn in float32 on the CPU; ``Call.dtype`` and
``Call.device`` move them where a check needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch

from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference, tensor_problem
from autograder.mutants.ch03_self_attention import MUTANTS
from autograder.runtime.executor import ACCELERATOR, CALL_DEVICE, Call, Result

LEAK_MARKER = "LEAK-MARKER-autograder-ch03-cbb3146e"

SDPA = "scaled_dot_product_attention"
SELF = "self_attention"
PE = "sinusoidal_positional_encoding"

FORBIDDEN = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.MultiheadAttention",
    "torch.nn.functional.multi_head_attention_forward",
    # The same built-in as F.scaled_dot_product_attention, under its internal name.
    "torch._C._nn.scaled_dot_product_attention",
)

F32 = TOLERANCES[torch.float32]
# Scores around 1000 carry float32 rounding errors around 1e-4.
LARGE = dict(rtol=1e-3, atol=1e-3)
# A float32 result of another correct formula cast to a low-precision dtype may round
# to the neighbouring value: one unit in the last place, at most eps for |x| <= 1.
PE_CAST = {
    dtype: dict(rtol=0.0, atol=torch.finfo(dtype).eps) for dtype in (torch.float16, torch.bfloat16)
}
# The contract asks for at least float32, so float64 is judged at float32 accuracy.
PE_F32 = dict(rtol=1e-4, atol=5e-5)


# Sizes never include a square of another (4, 9), so that dividing the scores by the
# square root of one size never equals dividing by another: the known mistakes stay
# tellable apart.
SIZES = (2, 3, 5, 6, 7, 8, 10, 11, 12, 13)


def _sizes(generator: torch.Generator, count: int, low: int = 2) -> list[int]:
    """``count`` distinct sizes from ``SIZES`` (at least ``low``), in random order."""
    pool = torch.tensor([size for size in SIZES if size >= low])
    return pool[torch.randperm(len(pool), generator=generator)[:count]].tolist()


def _integers(generator: torch.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in [low, high], in random order."""
    return (torch.randperm(high - low + 1, generator=generator)[:count] + low).tolist()


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * scale


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


# --- scaled_dot_product_attention ---


def _sdpa_calls(generator, leading=(1,), lengths=None, **options) -> list[Call]:
    """One call per entry of ``leading`` (its number of leading dims).

    q (*lead, Tq, d_k), k (*lead, Tk, d_k), v (*lead, Tk, d_v); ``lengths`` can pin
    (Tq, Tk) per call (None keeps the drawn size).
    """
    calls = []
    for index, count in enumerate(leading):
        *lead, Tq, Tk, d_k, d_v = _sizes(generator, count + 4)
        if lengths is not None:
            Tq = lengths[index][0] or Tq
            Tk = lengths[index][1] or Tk
        q = _randn(generator, *lead, Tq, d_k)
        k = _randn(generator, *lead, Tk, d_k)
        v = _randn(generator, *lead, Tk, d_v)
        calls.append(Call(SDPA, (q, k, v), seed=_seed(generator), **options))
    return calls


def _sdpa_large_logit_calls(generator) -> list[Call]:
    """Scores of +1000 and of -1000 plus a spread of order 1 over the keys.

    Every key carries ``offset * sqrt(d) * u`` and every query exactly one unit of
    ``u`` (the rest of the query is orthogonal to it), so q.k / sqrt(d) = offset + O(1):
    the softmax is far from one-hot, and exp() of the raw scores overflows (or
    underflows to 0 / 0).
    """
    calls = []
    for offset in (1000.0, -1000.0):
        B, Tq, Tk, d, d_v = _sizes(generator, 5, low=3)
        u = _randn(generator, d)
        u = u / u.norm()
        q = _randn(generator, B, Tq, d)
        q = q - (q @ u)[..., None] * u + u
        k = _randn(generator, B, Tk, d) + offset * math.sqrt(d) * u
        v = _randn(generator, B, Tk, d_v)
        calls.append(Call(SDPA, (q, k, v), seed=_seed(generator)))
    return calls


# --- self_attention ---


def _self_inputs(generator, B, T, D, d_k, d_v) -> tuple[torch.Tensor, ...]:
    """x (B, T, D) and W_q (d_k, D), W_k (d_k, D), W_v (d_v, D), weights ~ N(0, 1/D)."""
    x = _randn(generator, B, T, D)
    return (x, *(_randn(generator, d, D, scale=D**-0.5) for d in (d_k, d_k, d_v)))


def _self_calls(generator, count=2, length=None, square=False, **options):
    """``count`` calls; ``length`` pins T; ``square`` makes D = d_k = d_v."""
    calls = []
    for _ in range(count):
        B, T, D, d_k, d_v = _sizes(generator, 5)
        T = length or T
        if square:
            d_k = d_v = D
        args = _self_inputs(generator, B, T, D, d_k, d_v)
        calls.append(Call(SELF, args, seed=_seed(generator), **options))
    return calls


def _self_large_calls(generator) -> list[Call]:
    """Scores around +-1000 with a spread of order 1 over the keys.

    x = n + s * e, where W_q e = 0 (d_k < D leaves W_q a null space): the large part
    of the scores, s (W_q n_i).(W_k e) / sqrt(d_k), is the same for every key of query
    i, so the softmax stays far from one-hot while exp() of the raw scores overflows
    (or underflows to 0 / 0).
    """
    calls = []
    for _ in range(2):
        B, T, d_k, D, d_v = _sizes(generator, 5, low=3)
        d_k, D = min(d_k, D), max(d_k, D)
        n, W_q, W_k, W_v = _self_inputs(generator, B, T, D, d_k, d_v)
        r = _randn(generator, D).double()
        e = r - torch.linalg.pinv(W_q.double()) @ (W_q.double() @ r)
        e = (e / e.norm()).float()
        offsets = (n @ W_q.T) @ (W_k @ e) / math.sqrt(d_k)  # (B, T), per unit of s
        s = 1000.0 / offsets.abs().mean()
        calls.append(Call(SELF, (n + s * e, W_q, W_k, W_v), seed=_seed(generator)))
    return calls


def _permuted_calls(generator) -> list[Call]:
    """The same weights on x and on x with its tokens permuted (never the identity)."""
    B, T, D, d_k, d_v = _sizes(generator, 5, low=3)
    x, *weights = _self_inputs(generator, B, T, D, d_k, d_v)
    perm = torch.randperm(T, generator=generator)
    if torch.equal(perm, torch.arange(T)):
        perm = perm.roll(1)
    return [Call(SELF, (x, *weights)), Call(SELF, (x[:, perm], *weights))]


def _permutation(x: torch.Tensor, x_permuted: torch.Tensor) -> torch.Tensor:
    """perm with x_permuted = x[:, perm], found by matching the tokens of batch 0."""
    same = (x_permuted[0][:, None, :] == x[0][None, :, :]).all(dim=-1)  # (T, T)
    return same.int().argmax(dim=1)


def permutation_equivariant(calls: Sequence[Call], actual: Sequence[Result], expected):
    """A judge on the student's own results: f(x[:, perm]) is f(x) with tokens permuted.

    ``expected`` only gives the structure and shapes of the result, never values.
    """
    for result in actual:
        if result.error:
            return f"it raised {result.error}"
        if result.structure != expected[0].structure:
            return f"it returned {result.structure}, expected {expected[0].structure}"
    (out, weights), (out_p, weights_p) = actual[0].outputs, actual[1].outputs
    shapes = [tuple(tensor.shape) for tensor in expected[0].outputs]  # (B, T, d_v), (B, T, T)
    for name, tensor, shape in (
        ("the output", out, shapes[0]),
        ("the weights", weights, shapes[1]),
    ):
        if type(tensor) is not torch.Tensor:
            return f"{name} is a {type(tensor).__name__}, not a plain torch.Tensor"
        if tuple(tensor.shape) != shape:
            return f"{name} has shape {tuple(tensor.shape)}, expected {shape}"
    perm = _permutation(calls[0].args[0], calls[1].args[0])
    return tensor_problem(
        "the output for the permuted tokens", out_p, out[:, perm], **F32
    ) or tensor_problem(
        "the weights for the permuted tokens", weights_p, weights[:, perm][:, :, perm], **F32
    )


# --- sinusoidal_positional_encoding ---


def _pe_calls(generator, count=2, odd=False, length=None, low=5, high=64, kwargs=None, min_dim=4):
    """``count`` calls (T, D, **kwargs): T in [low, high] (or ``length``), D even or ``odd``,
    D at least ``min_dim``."""
    calls = []
    for _ in range(count):
        T, half = _integers(generator, 2, low, high)
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
    """The positions asked for in ``dtype``; T >= 64 and D >= 12, where angles computed
    in float16 or bfloat16 go wrong for every draw (with D = 4 they never do)."""
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


def _low_precision(dtype: torch.dtype, name: str) -> Check:
    """The sdpa / self-attention check in ``dtype``, with that dtype's tolerance."""
    label = str(dtype).removeprefix("torch.")
    if name == SDPA:
        calls = partial(_sdpa_calls, leading=(1, 2), dtype=dtype)
        prefix = "sdpa"
    else:
        calls = partial(_self_calls, dtype=dtype)
        prefix = "self_attention"
    return Check(
        f"{prefix}_{label}",
        name,
        0.5,
        calls,
        f"{name} is wrong in {label}: keep the inputs' dtype (create no tensor with a fixed"
        " dtype) and let torch.softmax do the normalisation.",
        match_reference(**TOLERANCES[dtype]),
    )


CHECKS = (
    # scaled_dot_product_attention: 10 points
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
    Check(
        "sdpa_gradients",
        SDPA,
        1.5,
        partial(_sdpa_calls, leading=(1, 2), grad=True),
        "the gradients of scaled_dot_product_attention with respect to q, k and v are wrong:"
        " keep every step differentiable (no .detach(), .data, .numpy() or in-place edits).",
        match_reference(**F32),
    ),
    Check(
        "sdpa_float64",
        SDPA,
        0.5,
        partial(_sdpa_calls, leading=(1, 0), dtype=torch.float64),
        "scaled_dot_product_attention is wrong in float64: keep the inputs' dtype and"
        " create no tensor with a fixed dtype.",
        match_reference(**TOLERANCES[torch.float64]),
    ),
    _low_precision(torch.float16, SDPA),
    _low_precision(torch.bfloat16, SDPA),
    Check(
        "sdpa_meta",
        SDPA,
        1.0,
        partial(_sdpa_calls, leading=(1, 2), device="meta"),
        "scaled_dot_product_attention fails on the meta device (shapes, no values): a tensor"
        " is created on a fixed device, or the result has the wrong shape or dtype.",
        match_reference(**F32),
    ),
    Check(
        "sdpa_accelerator",
        SDPA,
        1.0,
        partial(_sdpa_calls, leading=(1, 2), device=ACCELERATOR, grad=True),
        "scaled_dot_product_attention is wrong on the grading machine's accelerator (a GPU"
        " when there is one), gradients included; if it passes on the CPU, look for a tensor"
        " created on a fixed device.",
        match_reference(**F32),
    ),
    # self_attention: 10 points
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
        "self_attention_gradients",
        SELF,
        1.5,
        partial(_self_calls, grad=True),
        "the gradients of self_attention with respect to x, W_q, W_k and W_v are wrong:"
        " keep every step differentiable (no .detach(), .data, .numpy() or in-place edits).",
        match_reference(**F32),
    ),
    Check(
        "self_attention_permutation",
        SELF,
        1.0,
        _permuted_calls,
        "self_attention is not permutation-equivariant: permuting the tokens of x must"
        " permute the output rows and the rows and columns of the weights the same way.",
        permutation_equivariant,
    ),
    _low_precision(torch.float16, SELF),
    _low_precision(torch.bfloat16, SELF),
    Check(
        "self_attention_meta",
        SELF,
        1.0,
        partial(_self_calls, device="meta"),
        "self_attention fails on the meta device (shapes, no values): a tensor is created"
        " on a fixed device, or the result has the wrong shape or dtype.",
        match_reference(**F32),
    ),
    Check(
        "self_attention_accelerator",
        SELF,
        1.0,
        partial(_self_calls, device=ACCELERATOR, grad=True),
        "self_attention is wrong on the grading machine's accelerator (a GPU when there is"
        " one), gradients included; if it passes on the CPU, look for a tensor created on a"
        " fixed device.",
        match_reference(**F32),
    ),
    # sinusoidal_positional_encoding: 10 points
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
    Check(
        "pe_meta",
        PE,
        1.5,
        partial(_pe_device_calls, device="meta"),
        "sinusoidal_positional_encoding ignores its device argument: create every tensor"
        " with device=device (the check asks for the meta device).",
        match_reference(**PE_F32),
    ),
    Check(
        "pe_accelerator",
        PE,
        1.0,
        partial(_pe_device_calls, device=ACCELERATOR),
        "sinusoidal_positional_encoding is wrong when asked for the grading machine's"
        " accelerator (a GPU when there is one): create every tensor with device=device.",
        match_reference(**PE_F32),
    ),
)

BATTERY = Battery(
    assignment="ch03_self_attention",
    reference="solutions.ch03_self_attention",
    checks=CHECKS,
    forbidden={name: FORBIDDEN for name in (SDPA, SELF, PE)},
    mutants=MUTANTS,
)
