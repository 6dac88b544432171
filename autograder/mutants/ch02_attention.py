"""Known mistakes of chapter 2: dot and additive scores, masks, masked softmax, attention.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error. They are tried in this order.

The classic Bahdanau-attention mistakes of the research notes (content anchors, section
3.2) that these five functions can hold: weights computed without the encoder states
(13: ``attend_scores_from_values``); softmax over the wrong axis (14:
``attend_softmax_over_batch``, ``masked_softmax_over_batch``); padded positions not
masked (15: ``attend_ignores_mask``); missing tanh or v (17: ``additive_no_tanh``,
``additive_sum_instead_of_v``, ``attend_no_tanh``); a broadcast that mixes the batch
with the time steps (18: ``additive_query_not_unsqueezed``); a mean instead of a weighted
sum, or weights applied to the keys (19: ``attend_mean_of_values``,
``attend_weights_times_keys``). The query used (16) and the decoder's input (20) belong
to the decoder, outside these functions.
"""

import math

import torch

from autograder.kit.mistakes import KnownMistakes

LEAK_MARKER = "LEAK-MARKER-autograder-ch02-0ab1755e"

DOT = "dot_scores"
ADDITIVE = "additive_scores"
MASK = "lengths_to_mask"
SOFTMAX = "masked_softmax"
ATTEND = "attend"

mistake = KnownMistakes()


# --- dot_scores(query (B, D), keys (B, T, D)) -> (B, T) ---


@mistake(
    DOT,
    "the scores are divided by sqrt(D): that is the scaled dot product of chapter 3, not the"
    " plain dot product asked here.",
)
def dot_scaled(query, keys):
    return (keys * query[:, None, :]).sum(dim=-1) / math.sqrt(query.shape[-1])


@mistake(DOT, "the products are summed over the time steps (dim 1) instead of over D (dim -1).")
def dot_sum_over_time(query, keys):
    return (keys * query[:, None, :]).sum(dim=1)


@mistake(DOT, "the products q * k_t are not summed over D: a score is one number per step.")
def dot_products_not_summed(query, keys):
    return keys * query[:, None, :]


@mistake(
    DOT,
    "keys @ query.T scores every query against every sequence, (B, T, B): multiply each "
    "sequence's keys by its own query, keys @ query[:, :, None].",
)
def dot_every_query(query, keys):
    return keys @ query.T


@mistake(
    DOT,
    "query @ keys.transpose(1, 2) broadcasts the queries over the batch, (B, B, T): make the "
    "query (B, 1, D) first.",
)
def dot_query_broadcast_over_batch(query, keys):
    return query @ keys.transpose(1, 2)


@mistake(DOT, "the result keeps a singleton axis, (B, T, 1): remove it to return (B, T).")
def dot_keeps_singleton(query, keys):
    return keys @ query[:, :, None]


@mistake(
    DOT,
    "each query is scored against the keys of every sequence of the batch, summed: the einsum "
    "indices must tie the batch of the query to the batch of the keys ('bd,btd->bt').",
)
def dot_einsum_sums_batch(query, keys):
    return torch.einsum("bd,ctd->bt", query, keys)


@mistake(DOT, "a softmax is applied: dot_scores returns the raw scores, not the weights.")
def dot_returns_softmax(query, keys):
    return torch.softmax((keys * query[:, None, :]).sum(dim=-1), dim=-1)


@mistake(DOT, "the query and keys are normalised (cosine similarity): use the plain dot product.")
def dot_cosine(query, keys):
    return torch.cosine_similarity(keys, query[:, None, :], dim=-1)


# --- additive_scores(query (B, Dq), keys (B, T, Dk), W_q (A, Dq), W_k (A, Dk), v (A,)) ---


def _projections(query, keys, W_q, W_k):
    """(B, 1, A) projected query and (B, T, A) projected keys."""
    return (query @ W_q.T)[:, None, :], keys @ W_k.T


@mistake(ADDITIVE, "the tanh is missing: the scores are tanh(q W_q^T + k_t W_k^T) v.")
def additive_no_tanh(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return (q + k) @ v


@mistake(
    ADDITIVE,
    "the energies are summed over A instead of multiplied by v: the score is tanh(...) @ v.",
)
def additive_sum_instead_of_v(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return torch.tanh(q + k).sum(dim=-1)


@mistake(
    ADDITIVE,
    "the projected query (B, A) is added to the projected keys (B, T, A) without an axis for "
    "the time steps, so it broadcasts over the wrong axis: use q[:, None, :].",
)
def additive_query_not_unsqueezed(query, keys, W_q, W_k, v):
    return torch.tanh(query @ W_q.T + keys @ W_k.T) @ v


@mistake(ADDITIVE, "W_q and W_k are swapped: W_q projects the query, W_k the keys.")
def additive_swapped_weights(query, keys, W_q, W_k, v):
    return torch.tanh((query @ W_k.T)[:, None, :] + keys @ W_q.T) @ v


@mistake(
    ADDITIVE,
    "the projections are computed as x @ W instead of x @ W.T (weights are stored as "
    "(out_features, in_features)).",
)
def additive_untransposed_weights(query, keys, W_q, W_k, v):
    return torch.tanh((query @ W_q)[:, None, :] + keys @ W_k) @ v


@mistake(ADDITIVE, "a ReLU is used where Bahdanau's score uses tanh.")
def additive_relu(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return torch.relu(q + k) @ v


@mistake(
    ADDITIVE,
    "the tanh is applied to each projection separately: it applies to their sum, "
    "tanh(q W_q^T + k_t W_k^T).",
)
def additive_tanh_of_each(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return (torch.tanh(q) + torch.tanh(k)) @ v


@mistake(ADDITIVE, "v is applied inside the tanh: the score is tanh(...) @ v, not tanh((...) @ v).")
def additive_v_inside_tanh(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return torch.tanh((q + k) @ v)


@mistake(
    ADDITIVE,
    "the projected query and keys are multiplied (a bilinear score): Bahdanau's score adds "
    "them, then applies tanh and v.",
)
def additive_multiplicative(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return (q * k).sum(dim=-1)


@mistake(ADDITIVE, "the result keeps a singleton axis, (B, T, 1): multiply by v of shape (A,).")
def additive_keeps_singleton(query, keys, W_q, W_k, v):
    q, k = _projections(query, keys, W_q, W_k)
    return torch.tanh(q + k) @ v[:, None]


# --- lengths_to_mask(lengths (B,), T) -> (B, T) bool ---


def _positions(lengths, T, start=0):
    return torch.arange(start, start + T, device=lengths.device)


@mistake(MASK, "the mask is inverted: True must mark the real tokens (position < length).")
def mask_inverted(lengths, T):
    return _positions(lengths, T)[None, :] >= lengths[:, None]


@mistake(MASK, "one position too many is real: use position < length, not position <= length.")
def mask_inclusive(lengths, T):
    return _positions(lengths, T)[None, :] <= lengths[:, None]


@mistake(MASK, "positions are counted from 1 (arange(1, T + 1)): the first position is 0.")
def mask_positions_from_one(lengths, T):
    return _positions(lengths, T, start=1)[None, :] < lengths[:, None]


@mistake(
    MASK,
    "the width is the longest length instead of T: the mask is (B, T) even when every "
    "sequence is shorter than T.",
)
def mask_width_from_lengths(lengths, T):
    return _positions(lengths, int(lengths.max()))[None, :] < lengths[:, None]


@mistake(MASK, "the mask is a float tensor: return booleans (position < length is already bool).")
def mask_float(lengths, T):
    return (_positions(lengths, T)[None, :] < lengths[:, None]).float()


@mistake(
    MASK,
    "the mask is (T, B): compare positions[None, :] with lengths[:, None] to get (B, T).",
)
def mask_transposed(lengths, T):
    return _positions(lengths, T)[:, None] < lengths[None, :]


@mistake(
    MASK,
    "the last `length` positions are marked (left padding): the real tokens come first.",
)
def mask_left_padded(lengths, T):
    return _positions(lengths, T)[None, :] >= T - lengths[:, None]


@mistake(MASK, "every position is marked real: the lengths are not used.")
def mask_all_true(lengths, T):
    return torch.ones(lengths.shape[0], T, dtype=torch.bool, device=lengths.device)


@mistake(
    MASK,
    "the mask is returned as (B, 1, T): lengths_to_mask returns (B, T); add axes where the "
    "mask is used.",
)
def mask_unsqueezed(lengths, T):
    return (_positions(lengths, T)[None, :] < lengths[:, None])[:, None, :]


@mistake(
    MASK,
    "arange(T) < lengths compares position i with the length of sequence i: give lengths an "
    "axis, lengths[:, None].",
)
def mask_no_broadcast(lengths, T):
    return _positions(lengths, T) < lengths


# --- masked_softmax(scores (..., T), mask broadcastable) -> weights (..., T) ---


@mistake(
    SOFTMAX,
    "the softmax runs over every score and the masked weights are then set to 0, so the "
    "allowed weights no longer sum to 1: mask the scores before the softmax.",
)
def masked_softmax_zeroed_after(scores, mask):
    return torch.softmax(scores, dim=-1) * mask


@mistake(
    SOFTMAX,
    "the softmax of all the scores is masked and renormalised: the allowed weights underflow "
    "to 0 when masked scores are much larger, and a fully masked row divides 0 by 0 (NaN).",
)
def masked_softmax_renormalised(scores, mask):
    weights = torch.softmax(scores, dim=-1) * mask
    return weights / weights.sum(dim=-1, keepdim=True)


@mistake(
    SOFTMAX,
    "a row with nothing allowed gives NaN (the softmax of a row of -inf): it must be all zeros.",
)
def masked_softmax_nan_rows(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


@mistake(
    SOFTMAX,
    "masked scores are set to 0 instead of -inf, so masked positions still get weight.",
)
def masked_softmax_fill_zero(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, 0.0), dim=-1)


@mistake(SOFTMAX, "the mask is inverted: True means may attend.")
def masked_softmax_inverted(scores, mask):
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(torch.where(mask, lowest, scores), dim=-1)
    return torch.where(mask, 0.0, weights)


@mistake(
    SOFTMAX,
    "masked scores are set to a large negative number and nothing else, so a row with "
    "nothing allowed gets uniform weights instead of zeros.",
)
def masked_softmax_uniform_rows(scores, mask):
    return torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)


@mistake(SOFTMAX, "the softmax runs over the batch (dim=0) instead of the last dim.")
def masked_softmax_over_batch(scores, mask):
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(torch.where(mask, scores, lowest), dim=0)
    return torch.where(mask, weights, 0.0)


@mistake(
    SOFTMAX,
    "the softmax is computed as exp(s) / sum(exp(s)) without subtracting the row maximum, "
    "which overflows for large scores (let torch.softmax do it).",
)
def masked_softmax_exp_by_hand(scores, mask):
    exp = torch.where(mask, scores.exp(), 0.0)
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, 1.0)


@mistake(
    SOFTMAX,
    "the mask gets an extra axis (mask.unsqueeze(1)) whatever its shape: it is already "
    "broadcastable to the scores, use it as it is.",
)
def masked_softmax_mask_unsqueezed(scores, mask):
    mask = mask.unsqueeze(1)
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(torch.where(mask, scores, lowest), dim=-1)
    return torch.where(mask, weights, 0.0)


# --- attend(query, keys, values, mask, W_q, W_k, v) -> (context (B, Dv), weights (B, T)) ---


def _additive(query, keys, W_q, W_k, v, squash=torch.tanh):
    """(B, T) additive scores."""
    return squash((query @ W_q.T)[:, None, :] + keys @ W_k.T) @ v


def _softmax(scores, mask, dim=-1):
    """The masked softmax done right (on any dim); mask None allows everything."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(torch.where(mask, scores, lowest), dim=dim)
    return torch.where(mask, weights, 0.0)


def _weighted_sum(weights, values):
    return (weights[:, None, :] @ values)[:, 0, :]  # (B, Dv)


@mistake(
    ATTEND,
    "the context is the plain mean of the values: it is their sum weighted by the attention "
    "weights.",
)
def attend_mean_of_values(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), mask)
    return values.mean(dim=1), weights


@mistake(ATTEND, "the weights are applied to the keys instead of the values.")
def attend_weights_times_keys(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), mask)
    return _weighted_sum(weights, keys), weights


@mistake(
    ATTEND,
    "the softmax runs over the batch (dim=0): each query's weights sum to 1 over the source "
    "positions (dim=-1).",
)
def attend_softmax_over_batch(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), mask, dim=0)
    return _weighted_sum(weights, values), weights


@mistake(ATTEND, "the mask is ignored: padded source positions must get zero weight.")
def attend_ignores_mask(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), None)
    return _weighted_sum(weights, values), weights


@mistake(ATTEND, "the mask is inverted: True means may attend.")
def attend_inverted_mask(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), None if mask is None else ~mask)
    return _weighted_sum(weights, values), weights


@mistake(ATTEND, "the scores have no tanh: they are tanh(q W_q^T + k_t W_k^T) v.")
def attend_no_tanh(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v, squash=lambda x: x), mask)
    return _weighted_sum(weights, values), weights


@mistake(
    ATTEND,
    "the scores are computed from the values instead of the keys (the encoder states that "
    "are compared with the query).",
)
def attend_scores_from_values(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, values, W_q, W_k, v), mask)
    return _weighted_sum(weights, values), weights


@mistake(
    ATTEND,
    "weights @ values broadcasts the (B, T) weights over the batch, (B, B, Dv): make them "
    "(B, 1, T) first.",
)
def attend_weights_broadcast(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax(_additive(query, keys, W_q, W_k, v), mask)
    return weights @ values, weights


@mistake(
    ATTEND,
    "a query with nothing allowed gives NaN: its weights and its context must be zeros.",
)
def attend_nan_rows(query, keys, values, mask, W_q, W_k, v):
    scores = _additive(query, keys, W_q, W_k, v)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return _weighted_sum(weights, values), weights


@mistake(
    ATTEND,
    "the weights are zeroed at masked positions after the softmax, so they no longer sum to "
    "1: mask the scores before the softmax.",
)
def attend_zeroed_after_softmax(query, keys, values, mask, W_q, W_k, v):
    weights = torch.softmax(_additive(query, keys, W_q, W_k, v), dim=-1)
    if mask is not None:
        weights = weights * mask
    return _weighted_sum(weights, values), weights


@mistake(
    ATTEND,
    "the scores are dot products of the query and the keys: attend uses the additive scores "
    "with W_q, W_k and v.",
)
def attend_dot_scores(query, keys, values, mask, W_q, W_k, v):
    weights = _softmax((keys @ query[:, :, None])[:, :, 0], mask)
    return _weighted_sum(weights, values), weights


MUTANTS = mistake.mutants
