"""The hidden battery of chapter 4: causal and padding masks, masked attention.

Every check draws its sizes and values from the generator it is given (``kit.inputs``), so
that the inputs depend on the run's secret seed. Sizes within one call are distinct (batch,
queries, keys, key size and value size all differ), so that a swapped axis shows. Every
mask of a check that has masks holds a partly masked row, and the checks that are about
rows with nothing allowed hold such a row in every call, next to ordinary rows: the known
mistakes then fail the same checks whatever the seed. The masks take their device from
their ``device`` argument; the attention functions from their inputs.
"""

from __future__ import annotations

from functools import partial

import torch

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference, tensor_problem
from autograder.kit.properties import F32
from autograder.kit.standard import HALF_POINT_PER_DTYPE, device_argument_checks, standard_checks
from autograder.mutants.ch04_masking import MAX_LEN, MUTANTS
from autograder.runtime.executor import CALL_DEVICE, Call

LEAK_MARKER = "LEAK-MARKER-autograder-ch04-3f71b0a8"
ASSIGNMENT = ASSIGNMENTS["ch04_masking"]

CAUSAL = "causal_mask"
PADDING = "padding_mask"
MASKED = "masked_attention"
CAUSAL_SELF = "causal_self_attention"

EXACT = dict(rtol=0.0, atol=0.0)  # masks are compared entry by entry anyway
# Scores around 1000 carry float32 rounding errors around 1e-4.
LARGE = dict(rtol=1e-3, atol=1e-3)
SOFTMAX_HINT = "Let torch.softmax do the normalisation, with the mask applied to the scores."
EMPTY_HINT = (
    "A query row with nothing allowed must give zero weights and a zero output, with finite"
    " gradients: a softmax over a row of -inf is 0/0."
)
DEVICE_HINT = "Create the mask with device=device."


# --- masks as inputs ---


def random_mask(generator, *shape: int, empty_rows: int = 0) -> torch.Tensor:
    """A bool mask (*lead, Tq, Tk), True = may attend, Tk >= 2.

    Every row allows at least one key and every call holds a row with a forbidden key, except
    ``empty_rows`` rows (drawn among all rows) that allow nothing.
    """
    Tk = shape[-1]
    mask = torch.rand(shape, generator=generator) < 0.6  # (*lead, Tq, Tk)
    rows = mask.view(-1, Tk)  # (rows, Tk), a view: writing rows writes mask
    keep = torch.randint(Tk, (rows.shape[0],), generator=generator)
    rows[torch.arange(rows.shape[0]), keep] = True  # one allowed key per row
    hidden = (keep + 1) % Tk
    rows[0, hidden[0]] = False  # row 0 hides a key: the mask is never all True
    if empty_rows:
        chosen = torch.randperm(rows.shape[0] - 1, generator=generator)[:empty_rows] + 1
        rows[chosen] = False
    return mask


# --- causal_mask ---


def _causal_calls(generator, count=3, lengths=None, **options) -> list[Call]:
    """``count`` calls with T drawn from the sizes (or from ``lengths``)."""
    sizes = lengths or inputs.sizes(generator, count)
    return [Call(CAUSAL, (T,), **options) for T in sizes]


def _causal_device_calls(generator, device) -> list[Call]:
    """T passed with device=<the call's device>: the mask must be created there."""
    return [
        Call(CAUSAL, (T,), {"device": CALL_DEVICE}, device=device)
        for T in inputs.sizes(generator, 2)
    ]


# --- padding_mask ---


def _lengths_below(generator, batch: int, T: int, full: bool) -> torch.Tensor:
    """(batch,) lengths in [1, T], at least one shorter than T, one equal to T if ``full``."""
    drawn = torch.randint(1, T + 1, (batch,), generator=generator)
    short, longest = torch.randperm(batch, generator=generator)[:2].tolist()
    drawn[short] = int(torch.randint(1, T, (1,), generator=generator))
    if full:
        drawn[longest] = T
    return drawn


def _padding_calls(generator, count=2, full=True, length=None, **options) -> list[Call]:
    """``count`` calls (lengths (B,), T); ``full``: one sequence fills T; else all are
    shorter (a batch padded beyond its longest sequence). ``length`` pins T."""
    calls = []
    for _ in range(count):
        B, T = inputs.sizes(generator, 2)
        T = length or T
        if length == 1:
            lengths = torch.ones(B, dtype=torch.long)
        elif full:
            lengths = _lengths_below(generator, B, T, full=True)
        else:
            lengths = _lengths_below(generator, B, T, full=False).clamp(max=T - 1)
        calls.append(Call(PADDING, (lengths, T), **options))
    return calls


def _padding_device_calls(generator, device) -> list[Call]:
    return [
        Call(PADDING, call.args, {"device": CALL_DEVICE}, device=device)
        for call in _padding_calls(generator)
    ]


# --- masked_attention ---


def _masked_calls(
    generator,
    lead=(1,),
    mask_shape="full",
    empty_rows=0,
    queries=None,
    keys=None,
    **options,
) -> list[Call]:
    """One call per entry of ``lead`` (its number of leading dims).

    q (*L, Tq, d), k (*L, Tk, d), v (*L, Tk, dv). ``mask_shape``: "full" (*L, Tq, Tk),
    "shared" (Tq, Tk), "keys" (*L, 1, Tk), "heads" (L0, 1, Tq, Tk) for two leading dims, or
    None. ``queries`` / ``keys`` pin Tq / Tk.
    """
    calls = []
    for count in lead:
        *L, Tq, Tk, d, dv = inputs.sizes(generator, count + 4)
        Tq, Tk = queries or Tq, keys or Tk
        q = inputs.randn(generator, *L, Tq, d)
        k = inputs.randn(generator, *L, Tk, d)
        v = inputs.randn(generator, *L, Tk, dv)
        mask = _mask_of_shape(generator, mask_shape, L, Tq, Tk, empty_rows)
        args = (q, k, v) if mask is None else (q, k, v, mask)
        calls.append(Call(MASKED, args, seed=inputs.seed(generator), **options))
    return calls


def _mask_of_shape(generator, mask_shape, L, Tq, Tk, empty_rows):
    if mask_shape is None:
        return None
    if mask_shape == "full":
        return random_mask(generator, *L, Tq, Tk, empty_rows=empty_rows)
    if mask_shape == "shared":
        return random_mask(generator, Tq, Tk, empty_rows=empty_rows)
    if mask_shape == "keys":
        return random_mask(generator, *L, 1, Tk, empty_rows=empty_rows)
    if mask_shape == "heads":
        return random_mask(generator, L[0], 1, Tq, Tk, empty_rows=empty_rows)
    raise ValueError(mask_shape)


def _masked_large_calls(generator) -> list[Call]:
    """Scores of +1000 and of -1000 plus a spread of order 1, with masks."""
    calls = []
    for offset in (1000.0, -1000.0):
        q, k, v = inputs.large_attention(generator, offset)  # (B, Tq, d), (B, Tk, d), (B, Tk, dv)
        mask = random_mask(generator, *q.shape[:2], k.shape[1])  # (B, Tq, Tk)
        calls.append(Call(MASKED, (q, k, v, mask), seed=inputs.seed(generator)))
    return calls


def _masked_single_calls(generator) -> list[Call]:
    """One query (Tq = 1) and one key (Tk = 1, allowed or not)."""
    B, Tk, d, dv = inputs.sizes(generator, 4)
    one_query = Call(
        MASKED,
        (
            inputs.randn(generator, B, 1, d),
            inputs.randn(generator, B, Tk, d),
            inputs.randn(generator, B, Tk, dv),
            random_mask(generator, B, 1, Tk),
        ),
        seed=inputs.seed(generator),
    )
    B, Tq, d, dv = inputs.sizes(generator, 4)
    allowed = torch.ones(B, Tq, 1, dtype=torch.bool)
    allowed[int(torch.randint(B, (1,), generator=generator)), 0] = False  # an empty row
    one_key = Call(
        MASKED,
        (
            inputs.randn(generator, B, Tq, d),
            inputs.randn(generator, B, 1, d),
            inputs.randn(generator, B, 1, dv),
            allowed,
        ),
        seed=inputs.seed(generator),
    )
    return [one_query, one_key]


# --- causal_self_attention ---


def _self_inputs(generator, B, T, D, d_k, d_v) -> tuple[torch.Tensor, ...]:
    """x (B, T, D) and W_q (d_k, D), W_k (d_k, D), W_v (d_v, D), weights ~ N(0, 1/D)."""
    x = inputs.randn(generator, B, T, D)
    return (x, *(inputs.weights(generator, d, D) for d in (d_k, d_k, d_v)))


def _self_sizes(generator, low=2) -> tuple[int, ...]:
    """B, T, D, d_k, d_v, distinct, with d_k the smallest and D the largest: dividing the
    scores by sqrt(D) instead of sqrt(d_k) then shows in every dtype."""
    smallest, *middle, largest = sorted(inputs.sizes(generator, 5, low=low))
    B, T, d_v = (middle[i] for i in torch.randperm(3, generator=generator).tolist())
    return B, T, largest, smallest, d_v


def _causal_self_calls(generator, count=2, padded=False, length=None, **options):
    """``count`` calls; ``padded`` adds lengths (one full, one shorter); ``length`` pins T."""
    calls = []
    for _ in range(count):
        B, T, D, d_k, d_v = _self_sizes(generator, low=3 if padded else 2)
        T = length or T
        args = _self_inputs(generator, B, T, D, d_k, d_v)
        if padded:
            args = (*args, _lengths_below(generator, B, T, full=True))
        calls.append(Call(CAUSAL_SELF, args, seed=inputs.seed(generator), **options))
    return calls


def _changed_after_calls(generator) -> list[Call]:
    """x, then x with every position from t on replaced (0 < t < T)."""
    B, T, D, d_k, d_v = _self_sizes(generator, low=3)
    x, *weights = _self_inputs(generator, B, T, D, d_k, d_v)
    t = int(torch.randint(1, T, (1,), generator=generator))
    changed = x.clone()
    changed[:, t:] = inputs.randn(generator, B, T - t, D)
    return [Call(CAUSAL_SELF, (x, *weights)), Call(CAUSAL_SELF, (changed, *weights))]


def _changed_padding_calls(generator) -> list[Call]:
    """x with lengths, then x with every padded position replaced."""
    B, T, D, d_k, d_v = _self_sizes(generator, low=3)
    x, *weights = _self_inputs(generator, B, T, D, d_k, d_v)
    lengths = _lengths_below(generator, B, T, full=True)
    padded = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T)
    changed = torch.where(padded[..., None], inputs.randn(generator, B, T, D), x)
    return [
        Call(CAUSAL_SELF, (x, *weights, lengths)),
        Call(CAUSAL_SELF, (changed, *weights, lengths)),
    ]


def _first_changed_position(calls) -> int:
    x, changed = calls[0].args[0], calls[1].args[0]
    return int((x != changed).any(dim=(0, 2)).nonzero()[0])


def _same_outputs(name: str, actual, rows: slice):
    """The problem with the two calls' outputs differing on ``rows`` (dim 1), or None."""
    for index, label in ((0, "the output"), (1, "the weights")):
        first, second = actual[0].outputs[index], actual[1].outputs[index]
        problem = tensor_problem(f"{label} {name}", second[:, rows], first[:, rows], **F32)
        if problem:
            return problem
    return None


def _shape_problem(actual, expected):
    for result in actual:
        if result.error:
            return f"it raised {result.error}"
        if result.structure != expected[0].structure:
            return f"it returned {result.structure}, expected {expected[0].structure}"
        for tensor, reference in zip(result.outputs, expected[0].outputs, strict=True):
            if type(tensor) is not torch.Tensor:
                return f"it returned a {type(tensor).__name__}, not a plain torch.Tensor"
            if tensor.shape != reference.shape:
                return f"it returned shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}"
    return None


def earlier_outputs_unchanged(calls, actual, expected):
    """A property judge: the outputs (and weight rows) before the first changed position are
    the same for both calls."""
    problem = _shape_problem(actual, expected)
    if problem:
        return problem
    t = _first_changed_position(calls)
    return _same_outputs("of the positions before the change", actual, slice(0, t))


def outputs_unchanged(calls, actual, expected):
    """A property judge: every output and weight is the same for both calls."""
    return _shape_problem(actual, expected) or _same_outputs(
        "when only padded inputs change", actual, slice(None)
    )


# --- the checks ---

CAUSAL_CHECKS = (
    Check(
        "causal_values",
        CAUSAL,
        5.0,
        lambda generator: _causal_calls(generator, lengths=[1, *inputs.sizes(generator, 3)]),
        "causal_mask(T) is wrong: it is a (T, T) bool tensor, True where query i may attend key"
        " j, that is where j <= i (the lower triangle, diagonal included; causal_mask(1) is"
        " [[True]]).",
        match_reference(**EXACT),
    ),
    Check(
        "causal_long",
        CAUSAL,
        1.0,
        lambda generator: _causal_calls(
            generator, lengths=inputs.integers(generator, 2, MAX_LEN + 8, 2 * MAX_LEN)
        ),
        "causal_mask is wrong for long sequences (T around 50): build the mask for the T asked.",
        match_reference(**EXACT),
    ),
    *device_argument_checks(
        CAUSAL,
        _causal_device_calls,
        prefix="causal",
        points={"meta": 2.0, "accelerator": 2.0},
        creates="the mask",
        judge=match_reference(**EXACT),
    ),
)

PADDING_CHECKS = (
    Check(
        "padding_values",
        PADDING,
        4.0,
        lambda generator: [
            *_padding_calls(generator),
            *_padding_calls(generator, count=1, length=1),
        ],
        "padding_mask(lengths, T) is wrong: it is a (B, T) bool tensor, True at the real"
        " positions t < lengths[b] of each sequence (with T = 1 and every length 1, all True).",
        match_reference(**EXACT),
    ),
    Check(
        "padding_beyond_longest",
        PADDING,
        2.0,
        partial(_padding_calls, full=False),
        "padding_mask is wrong when T is larger than every length (a batch padded beyond its"
        " longest sequence): the mask is (B, T) whatever the lengths.",
        match_reference(**EXACT),
    ),
    Check(
        "padding_lengths_device",
        PADDING,
        1.0,
        partial(_padding_calls, device="meta"),
        "padding_mask with device=None must create the mask on the device of lengths (the"
        " check puts lengths on the meta device): use lengths.device.",
        match_reference(**EXACT),
        gated=True,
    ),
    *device_argument_checks(
        PADDING,
        _padding_device_calls,
        prefix="padding",
        points={"meta": 1.0, "accelerator": 2.0},
        creates="the mask",
        judge=match_reference(**EXACT),
    ),
)

F32_TOLERANCE = TOLERANCES[torch.float32]

MASKED_CHECKS = (
    Check(
        "masked_values",
        MASKED,
        1.5,
        partial(_masked_calls, lead=(1, 1, 1)),
        "masked_attention is wrong for q (B, Tq, d), k (B, Tk, d), v (B, Tk, dv) and a mask"
        " (B, Tq, Tk), True = may attend: fill the forbidden scores with -inf (or the dtype's"
        " lowest value) before the softmax.",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_no_mask",
        MASKED,
        0.5,
        partial(_masked_calls, lead=(1, 1), mask_shape=None),
        "masked_attention without a mask (mask=None) must be plain scaled dot-product attention.",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_shared_mask",
        MASKED,
        0.5,
        partial(_masked_calls, lead=(1, 2), mask_shape="shared"),
        "masked_attention is wrong with a (Tq, Tk) mask shared by the whole batch: the mask"
        " broadcasts against the scores (..., Tq, Tk).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_key_mask",
        MASKED,
        0.5,
        partial(_masked_calls, lead=(1, 1), mask_shape="keys"),
        "masked_attention is wrong with a key mask (B, 1, Tk), the same for every query: the"
        " mask broadcasts against the scores (B, Tq, Tk).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_leading_dims",
        MASKED,
        0.5,
        partial(_masked_calls, lead=(2, 2), mask_shape="heads"),
        "masked_attention is wrong with two leading dimensions, q (B, h, Tq, d), and a mask"
        " (B, 1, Tq, Tk): transpose the last two axes of k only, and let the mask broadcast.",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_unbatched",
        MASKED,
        0.5,
        partial(_masked_calls, lead=(0, 0)),
        "masked_attention is wrong on inputs with no leading dimension, q (Tq, d) and a mask"
        " (Tq, Tk).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_empty_rows",
        MASKED,
        1.5,
        partial(_masked_calls, lead=(1, 1, 2), empty_rows=2),
        "masked_attention is wrong when some query rows allow no key at all. " + EMPTY_HINT,
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_single_query_or_key",
        MASKED,
        0.5,
        _masked_single_calls,
        "masked_attention is wrong with a single query (Tq = 1) or a single key (Tk = 1, allowed"
        " or not).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "masked_large_logits",
        MASKED,
        0.5,
        _masked_large_calls,
        "masked_attention is wrong or not finite when the scores are around +1000 or -1000. "
        + SOFTMAX_HINT,
        match_reference(**LARGE, grads=False),
    ),
    *standard_checks(
        MASKED,
        partial(_masked_calls, lead=(1, 2), empty_rows=1),
        prefix="masked",
        points={
            "gradients": 1.0,
            **HALF_POINT_PER_DTYPE,
            "meta": 0.5,
            "accelerator": 0.5,
        },
        hints={
            "gradients": EMPTY_HINT,
            "float16": SOFTMAX_HINT,
            "bfloat16": SOFTMAX_HINT,
        },
    ),
)

CAUSAL_SELF_CHECKS = (
    Check(
        "causal_self_values",
        CAUSAL_SELF,
        2.0,
        partial(_causal_self_calls, count=3),
        "causal_self_attention is wrong for x (B, T, D) without lengths: query i may attend"
        " key j iff j <= i, with projections x @ W.T and scores divided by sqrt(d_k).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "causal_self_padded",
        CAUSAL_SELF,
        2.0,
        partial(_causal_self_calls, count=3, padded=True),
        "causal_self_attention is wrong with lengths: query i may attend key j iff j <= i and"
        " both are real tokens (t < length), so the rows of padded queries are all zeros.",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "causal_self_single_token",
        CAUSAL_SELF,
        0.5,
        partial(_causal_self_calls, length=1),
        "causal_self_attention is wrong for a sequence of one token (T = 1).",
        match_reference(**F32_TOLERANCE),
    ),
    Check(
        "causal_self_future",
        CAUSAL_SELF,
        1.0,
        _changed_after_calls,
        "causal_self_attention lets an output depend on a later input: changing the tokens"
        " from position t on must leave the outputs and weights of positions before t as they"
        " were.",
        earlier_outputs_unchanged,
        gated=True,
    ),
    Check(
        "causal_self_padding_ignored",
        CAUSAL_SELF,
        0.5,
        _changed_padding_calls,
        "causal_self_attention lets an output depend on a padded input: changing the padded"
        " tokens must change nothing.",
        outputs_unchanged,
        gated=True,
    ),
    *standard_checks(
        CAUSAL_SELF,
        partial(_causal_self_calls, padded=True),
        prefix="causal_self",
        points={"gradients": 1.5, "float16": 0.5, "bfloat16": 0.5, "meta": 1.0, "accelerator": 0.5},
        hints={
            "gradients": EMPTY_HINT,
            "float16": SOFTMAX_HINT,
            "bfloat16": SOFTMAX_HINT,
        },
    ),
)

BATTERY = Battery.for_assignment(
    ASSIGNMENT, (*CAUSAL_CHECKS, *PADDING_CHECKS, *MASKED_CHECKS, *CAUSAL_SELF_CHECKS), MUTANTS
)
