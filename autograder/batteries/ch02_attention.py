"""The hidden battery of chapter 2: dot and additive scores, masks, masked softmax, attention.

Every check draws its sizes and values from the generator it is given (``kit.inputs``), so
that the inputs depend on the run's secret seed. Sizes within one call are distinct (batch,
source length, query, key, value and attention sizes), so that a swapped axis or a wrong
size shows; a few checks make two sizes equal on purpose, where a mistake that crashes on
distinct sizes runs and gives wrong values. Masks hide padded positions and, where the
check says so, whole rows.
"""

from __future__ import annotations

from functools import partial

import torch

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference
from autograder.kit.standard import HALF_POINT_PER_DTYPE, standard_checks
from autograder.mutants.ch02_attention import MUTANTS
from autograder.runtime.executor import Call

LEAK_MARKER = "LEAK-MARKER-autograder-ch02-48c16a4f"
ASSIGNMENT = ASSIGNMENTS["ch02_attention"]

DOT = "dot_scores"
ADDITIVE = "additive_scores"
MASK = "lengths_to_mask"
SOFTMAX = "masked_softmax"
ATTEND = "attend"

F32 = TOLERANCES[torch.float32]
EXACT = match_reference(grads=False)  # masks are compared exactly
# Scores around 1000 carry float32 rounding errors around 1e-4.
LARGE = dict(rtol=1e-3, atol=1e-3)
SOFTMAX_HINT = "Let torch.softmax do the normalisation."


def _padded_lengths(generator, batch: int, longest: int, full=True) -> torch.Tensor:
    """(batch,) lengths in [1, longest] for batch >= 2: one of length 1, one strictly between
    1 and the top (when there is room) and, if ``full``, one of ``longest`` (else all are
    shorter)."""
    top = longest if full else longest - 1
    lengths = inputs.lengths(generator, batch, top)
    rows = torch.randperm(batch, generator=generator).tolist()
    if batch >= 3 and top >= 3:
        lengths[rows[2]] = int(torch.randint(2, top, (1,), generator=generator))
    lengths[rows[0]], lengths[rows[1]] = top, 1
    return lengths


def _mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T)[None, :] < lengths[:, None]  # (B, T)


# --- dot_scores ---


def _dot_calls(generator, count=3, length=None, **options) -> list[Call]:
    """``count`` calls (query (B, D), keys (B, T, D)) with distinct B, T, D."""
    calls = []
    for _ in range(count):
        B, T, D = inputs.sizes(generator, 3)
        T = length or T
        query, keys = inputs.randn(generator, B, D), inputs.randn(generator, B, T, D)
        calls.append(Call(DOT, (query, keys), seed=inputs.seed(generator), **options))
    return calls


DOT_CHECKS = (
    Check(
        "dot_scores_values",
        DOT,
        3.0,
        _dot_calls,
        "dot_scores is wrong for query (B, D) and keys (B, T, D): scores[b, t] is the dot"
        " product of query[b] and keys[b, t], a (B, T) tensor.",
        match_reference(**F32),
    ),
    Check(
        "dot_scores_length_one",
        DOT,
        1.5,
        partial(_dot_calls, count=2, length=1),
        "dot_scores is wrong for a single key per sequence (T = 1): the result is (B, 1).",
        match_reference(**F32),
    ),
    *standard_checks(
        DOT,
        partial(_dot_calls, count=2),
        prefix="dot_scores",
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.5,
        },
    ),
)


# --- additive_scores ---


def _additive_calls(
    generator, count=3, length=None, square=False, batch_is_length=False, **options
) -> list[Call]:
    """``count`` calls (query, keys, W_q, W_k, v) with distinct B, T, Dq, Dk, A.

    ``square`` makes Dq = Dk = A; ``batch_is_length`` makes B = T; ``length`` pins T.
    """
    calls = []
    for _ in range(count):
        B, T, Dq, Dk, A = inputs.sizes(generator, 5)
        T = B if batch_is_length else length or T
        if square:
            Dq = Dk = A
        query, keys = inputs.randn(generator, B, Dq), inputs.randn(generator, B, T, Dk)
        W_q, W_k = inputs.weights(generator, A, Dq), inputs.weights(generator, A, Dk)
        v = inputs.randn(generator, A)
        args = (query, keys, W_q, W_k, v)
        calls.append(Call(ADDITIVE, args, seed=inputs.seed(generator), **options))
    return calls


ADDITIVE_CHECKS = (
    Check(
        "additive_scores_values",
        ADDITIVE,
        3.0,
        _additive_calls,
        "additive_scores is wrong for query (B, Dq), keys (B, T, Dk), W_q (A, Dq), W_k (A, Dk)"
        " and v (A,): scores[b, t] = tanh(query[b] @ W_q.T + keys[b, t] @ W_k.T) @ v.",
        match_reference(**F32),
    ),
    Check(
        "additive_scores_square_weights",
        ADDITIVE,
        1.0,
        partial(_additive_calls, count=2, square=True),
        "additive_scores is wrong when Dq = Dk = A, where W_q and W_k have the same shape:"
        " W_q projects the query and W_k the keys, each transposed.",
        match_reference(**F32),
    ),
    Check(
        "additive_scores_batch_equals_length",
        ADDITIVE,
        1.0,
        partial(_additive_calls, count=2, batch_is_length=True),
        "additive_scores is wrong when B = T: the projected query must be added to the keys"
        " of its own sequence, at every time step.",
        match_reference(**F32),
    ),
    Check(
        "additive_scores_length_one",
        ADDITIVE,
        0.5,
        partial(_additive_calls, count=2, length=1),
        "additive_scores is wrong for a single key per sequence (T = 1): the result is (B, 1).",
        match_reference(**F32),
    ),
    *standard_checks(
        ADDITIVE,
        partial(_additive_calls, count=2),
        prefix="additive_scores",
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 0.5,
        },
    ),
)


# --- lengths_to_mask ---


def _mask_calls(generator, count=3, full=True, batch_is_length=False, **options) -> list[Call]:
    """``count`` calls (lengths (B,), T) with B != T, T >= 3; one length is 1; one is T
    when ``full``, else every length is below T; ``batch_is_length`` makes B = T."""
    calls = []
    for _ in range(count):
        B, T = inputs.sizes(generator, 2, low=3)
        if batch_is_length:
            B = T
        lengths = _padded_lengths(generator, B, T, full=full)
        calls.append(Call(MASK, (lengths, T), **options))
    return calls


MASK_CHECKS = (
    Check(
        "lengths_to_mask_values",
        MASK,
        3.5,
        _mask_calls,
        "lengths_to_mask is wrong: mask[b, t] is True exactly when t < lengths[b], a (B, T)"
        " bool tensor.",
        EXACT,
    ),
    Check(
        "lengths_to_mask_all_padded",
        MASK,
        2.0,
        partial(_mask_calls, count=2, full=False),
        "lengths_to_mask is wrong when every sequence is shorter than T: the mask still has T"
        " columns.",
        EXACT,
    ),
    Check(
        "lengths_to_mask_batch_equals_length",
        MASK,
        1.0,
        partial(_mask_calls, count=2, batch_is_length=True),
        "lengths_to_mask is wrong when B = T: compare every position with the length of its"
        " own row, positions[None, :] < lengths[:, None].",
        EXACT,
    ),
    *standard_checks(
        MASK,
        partial(_mask_calls, count=2),
        prefix="lengths_to_mask",
        points={"meta": 1.0, "accelerator": 2.5},
        hints={"meta": "Build the positions with device=lengths.device and T columns."},
        grads=False,
    ),
)


# --- masked_softmax ---


def _softmax_mask(generator, shape, empty_rows=False) -> torch.Tensor:
    """A random bool mask of ``shape`` (..., T) with at least one True per row; with
    ``empty_rows`` one row in three (and at least one) is all False."""
    mask = torch.rand(shape, generator=generator) < 0.6
    rows = mask.reshape(-1, shape[-1])  # a view: edits reach mask
    rows[torch.arange(len(rows)), torch.randint(shape[-1], (len(rows),), generator=generator)] = (
        True
    )
    if empty_rows:
        empty = torch.rand(len(rows), generator=generator) < 1 / 3
        empty[int(torch.randint(len(rows), (1,), generator=generator))] = True
        rows[empty] = False
    return mask


def _softmax_calls(
    generator, count=2, leading=1, empty_rows=False, far=False, offset=0.0, **options
) -> list[Call]:
    """``count`` calls (scores (*lead, T), mask of the same shape), ``leading`` leading
    dims with distinct sizes. ``empty_rows`` hides whole rows; ``far`` puts the masked
    scores 1000 above the others (a softmax of all the scores then underflows at the
    allowed ones); ``offset`` is added to every score."""
    calls = []
    for _ in range(count):
        *lead, T = inputs.sizes(generator, leading + 1, low=3)
        scores = inputs.randn(generator, *lead, T, scale=2.0) + offset
        mask = _softmax_mask(generator, (*lead, T), empty_rows)
        if far:
            scores = torch.where(mask, scores, scores + 1000.0)
        calls.append(Call(SOFTMAX, (scores, mask), seed=inputs.seed(generator), **options))
    return calls


def _softmax_broadcast_calls(generator) -> list[Call]:
    """Masks that broadcast: (B, 1, T) on (B, Tq, T) scores, (T,) on (B, T) scores and
    (B, 1, 1, T) on (B, h, Tq, T) scores."""
    calls = []
    for mask_shape in ("b1t", "t", "b11t"):
        B, h, Tq, T = inputs.sizes(generator, 4, low=3)
        shape = {"b1t": (B, Tq, T), "t": (B, T), "b11t": (B, h, Tq, T)}[mask_shape]
        broadcast = {"b1t": (B, 1, T), "t": (T,), "b11t": (B, 1, 1, T)}[mask_shape]
        scores = inputs.randn(generator, *shape, scale=2.0)
        mask = _softmax_mask(generator, broadcast)
        calls.append(Call(SOFTMAX, (scores, mask), seed=inputs.seed(generator)))
    return calls


def _softmax_large_calls(generator) -> list[Call]:
    """Scores around +1000, then around -1000, with a spread of order one."""
    return [
        *_softmax_calls(generator, count=1, offset=1000.0),
        *_softmax_calls(generator, count=1, offset=-1000.0),
    ]


SOFTMAX_CHECKS = (
    Check(
        "masked_softmax_values",
        SOFTMAX,
        2.5,
        partial(_softmax_calls, count=3, leading=1),
        "masked_softmax is wrong: over the last dim, the allowed positions (mask True) get"
        " softmax weights that sum to 1 and the masked positions get exactly 0.",
        match_reference(**F32),
    ),
    Check(
        "masked_softmax_broadcast_mask",
        SOFTMAX,
        1.5,
        _softmax_broadcast_calls,
        "masked_softmax is wrong when the mask broadcasts to the scores, like a (B, 1, T) mask"
        " on (B, Tq, T) scores or a (T,) mask on (B, T) scores: use the mask as it is"
        " (torch.where broadcasts).",
        match_reference(**F32),
    ),
    Check(
        "masked_softmax_fully_masked_rows",
        SOFTMAX,
        1.5,
        partial(_softmax_calls, leading=2, empty_rows=True, far=True),
        "masked_softmax is wrong on rows where nothing is allowed (they must be all zeros,"
        " not NaN and not uniform) or where the masked scores are far larger than the allowed"
        " ones.",
        match_reference(**F32),
    ),
    Check(
        "masked_softmax_large_scores",
        SOFTMAX,
        1.0,
        _softmax_large_calls,
        "masked_softmax is wrong or not finite when the scores are around +1000 or -1000:"
        " subtract each row's maximum (torch.softmax does).",
        match_reference(**LARGE, grads=False),
    ),
    *standard_checks(
        SOFTMAX,
        partial(_softmax_calls, leading=2, empty_rows=True, far=True),
        prefix="masked_softmax",
        points={
            "gradients": 1.5,
            "float64": 0.5,
            "float16": 0.5,
            "meta": 0.5,
            "accelerator": 0.5,
        },
        hints={
            "gradients": "A row with nothing allowed must not give NaN gradients either:"
            " the NaN of a softmax over a row of -inf must not flow back to the scores.",
            "float16": SOFTMAX_HINT,
        },
    ),
)


# --- attend ---


def _attend_calls(
    generator,
    count=2,
    masked=True,
    empty_rows=False,
    same_sizes=False,
    length=None,
    **options,
) -> list[Call]:
    """``count`` calls (query, keys, values, mask, W_q, W_k, v) with distinct B, T, Dq, Dk,
    Dv, A. ``masked`` passes a padding mask (one full row, one of length 1), else None;
    ``empty_rows`` hides every position of the rows of length 1; ``same_sizes`` makes
    Dq = Dk = Dv;
    ``length`` pins T."""
    calls = []
    for _ in range(count):
        B, T, Dq, Dk, Dv, A = inputs.sizes(generator, 6, low=3)
        T = length or T
        if same_sizes:
            Dk = Dv = Dq
        query, keys = inputs.randn(generator, B, Dq), inputs.randn(generator, B, T, Dk)
        values = inputs.randn(generator, B, T, Dv)
        W_q, W_k = inputs.weights(generator, A, Dq), inputs.weights(generator, A, Dk)
        v = inputs.randn(generator, A, scale=2.0)
        mask = None
        if masked:
            lengths = _padded_lengths(generator, B, T)
            if empty_rows:
                lengths[lengths == 1] = 0  # the one-token sequences become empty
            mask = _mask(lengths, T)
        args = (query, keys, values, mask, W_q, W_k, v)
        calls.append(Call(ATTEND, args, seed=inputs.seed(generator), **options))
    return calls


ATTEND_CHECKS = (
    Check(
        "attend_values",
        ATTEND,
        2.5,
        partial(_attend_calls, count=3),
        "attend is wrong with a padding mask: the weights are the masked softmax of the"
        " additive scores of the keys, and the context is the sum of the values weighted by"
        " them, (B, Dv).",
        match_reference(**F32),
    ),
    Check(
        "attend_without_mask",
        ATTEND,
        1.0,
        partial(_attend_calls, masked=False),
        "attend is wrong when mask is None: every position is then allowed.",
        match_reference(**F32),
    ),
    Check(
        "attend_fully_masked_row",
        ATTEND,
        1.0,
        partial(_attend_calls, empty_rows=True),
        "attend is wrong when a sequence has nothing allowed: its weights and its context"
        " must be zeros, not NaN.",
        match_reference(**F32),
    ),
    Check(
        "attend_same_sizes",
        ATTEND,
        1.0,
        partial(_attend_calls, same_sizes=True),
        "attend is wrong when the query, keys and values have the same size: the scores"
        " compare the query with the keys (through W_q, W_k and v), and the weights mix the"
        " values.",
        match_reference(**F32),
    ),
    Check(
        "attend_length_one",
        ATTEND,
        0.5,
        partial(_attend_calls, length=1),
        "attend is wrong for a single source position (T = 1): its weight is 1 and the"
        " context is its value.",
        match_reference(**F32),
    ),
    *standard_checks(
        ATTEND,
        partial(_attend_calls, empty_rows=True),
        prefix="attend",
        points={"gradients": 1.5, "float64": 0.5, "float16": 0.5, "meta": 0.5, "accelerator": 1},
        hints={
            "gradients": "A sequence with nothing allowed must not give NaN gradients either.",
            "float16": SOFTMAX_HINT,
        },
    ),
)

BATTERY = Battery.for_assignment(
    ASSIGNMENT,
    (*DOT_CHECKS, *ADDITIVE_CHECKS, *MASK_CHECKS, *SOFTMAX_CHECKS, *ATTEND_CHECKS),
    MUTANTS,
)
