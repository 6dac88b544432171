"""Known mistakes of chapter 4: causal and padding masks, masked attention.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error. They are tried in this order.
"""

import math

import torch

from autograder.kit.mistakes import KnownMistakes

LEAK_MARKER = "LEAK-MARKER-autograder-ch04-9d2e64c7"

CAUSAL = "causal_mask"
PADDING = "padding_mask"
MASKED = "masked_attention"
CAUSAL_SELF = "causal_self_attention"

# A mask built once for a maximum length, as a module would keep it in a buffer.
MAX_LEN = 32

mistake = KnownMistakes()


def masked_softmax_attention(q, k, v, mask=None, empty="zero", scale=None):
    """Masked attention with the knobs the mistakes turn (chapter 5's mistakes use it too).

    ``empty`` is what a query row with nothing allowed gets: "zero" (the convention),
    "nan" (-inf fill, nothing done about it) or "uniform" (a finite fill, no zeroing).
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (..., Tq, Tk)
    if mask is None:
        weights = torch.softmax(scores, dim=-1)
        return weights @ v, weights
    if empty == "nan":
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    else:
        weights = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)
        if empty == "zero":
            weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


# --- causal_mask(T, device=None) -> (T, T) bool ---


@mistake(CAUSAL, "the mask is upper-triangular (triu): each query may attend the future keys.")
def causal_upper(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).triu()


@mistake(
    CAUSAL,
    "the diagonal is excluded (tril(diagonal=-1)): a query must be allowed to attend its own key, "
    "and the first query is left with nothing to attend.",
)
def causal_strictly_lower(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(diagonal=-1)


@mistake(
    CAUSAL,
    "the polarity is inverted: True marks the forbidden (future) keys, but in this course True "
    "means may attend.",
)
def causal_inverted(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(diagonal=1)


@mistake(CAUSAL, "the mask lets each query see one key into the future (tril(diagonal=1)).")
def causal_one_ahead(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(diagonal=1)


@mistake(
    CAUSAL,
    "the mask has extra leading dims, (1, 1, T, T); causal_mask returns (T, T), and broadcasting "
    "does the rest.",
)
def causal_four_dims(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]


@mistake(
    CAUSAL,
    "the mask is an additive float mask (0 where allowed, -inf where not), as "
    "nn.Transformer.generate_square_subsequent_mask makes; this course's masks are bool, "
    "True = may attend.",
)
def causal_additive(T, device=None):
    allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return torch.zeros(T, T, device=device).masked_fill(~allowed, float("-inf"))


@mistake(CAUSAL, "the mask holds integers (0 and 1, int64); it must be a bool tensor.")
def causal_integer(T, device=None):
    return torch.ones(T, T, dtype=torch.long, device=device).tril()


@mistake(
    CAUSAL,
    "the mask is cut from one built for a fixed maximum length, so it has the wrong size when T "
    "is longer: build it for T.",
)
def causal_fixed_maximum(T, device=None):
    full = torch.ones(32, 32, dtype=torch.bool, device=device).tril()  # 32 = MAX_LEN
    return full[:T, :T]


@mistake(
    CAUSAL,
    "the mask is created without device=device, so it is not on the requested device.",
)
def causal_ignores_device(T, device=None):
    return torch.ones(T, T, dtype=torch.bool).tril()


# --- padding_mask(lengths, T, device=None) -> (B, T) bool ---


def _positions(lengths, T, device):
    lengths = lengths.to(device) if device is not None else lengths  # (B,)
    return torch.arange(T, device=lengths.device), lengths  # (T,), (B,)


@mistake(
    PADDING,
    "position t is marked real when t <= length; the real positions are t < length (positions "
    "count from 0).",
)
def padding_less_or_equal(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return positions[None, :] <= lengths[:, None]


@mistake(
    PADDING,
    "the positions are counted from 1, so the last real token of each sequence is marked as "
    "padding.",
)
def padding_positions_from_one(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return (positions[None, :] + 1) < lengths[:, None]


@mistake(
    PADDING,
    "the polarity is inverted: True marks the padding, but in this course True means a real token.",
)
def padding_inverted(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return positions[None, :] >= lengths[:, None]


@mistake(PADDING, "the mask is transposed: (T, B) instead of (B, T).")
def padding_transposed(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return positions[:, None] < lengths[None, :]


@mistake(
    PADDING,
    "the mask is as wide as the longest length instead of T: a batch can be padded beyond its "
    "longest sequence.",
)
def padding_longest_width(lengths, T, device=None):
    positions, lengths = _positions(lengths, int(lengths.max()), device)
    return positions[None, :] < lengths[:, None]


@mistake(
    PADDING,
    "the padding is put at the start of each sequence (left padding); the real tokens come "
    "first, at positions 0 to length - 1.",
)
def padding_left(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return positions[None, :] >= (T - lengths)[:, None]


@mistake(PADDING, "the mask holds 0.0 and 1.0 floats; it must be a bool tensor.")
def padding_float(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return (positions[None, :] < lengths[:, None]).float()


@mistake(PADDING, "the mask holds integers (0 and 1, int64); it must be a bool tensor.")
def padding_integer(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return (positions[None, :] < lengths[:, None]).long()


@mistake(
    PADDING,
    "the mask is returned with an extra query axis, (B, 1, T); padding_mask returns (B, T), and "
    "the attention code adds the axis.",
)
def padding_key_axis_added(lengths, T, device=None):
    positions, lengths = _positions(lengths, T, device)
    return (positions[None, :] < lengths[:, None])[:, None, :]


# --- masked_attention(q, k, v, mask=None) -> (out, weights) ---


@mistake(
    MASKED,
    "the mask is applied to the weights after the softmax, so the allowed weights no longer sum "
    "to 1: set the forbidden scores to -inf (or a very negative number) before the softmax.",
)
def masked_after_softmax(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights


@mistake(
    MASKED,
    "the forbidden scores are filled with 0 instead of -inf: a score of 0 still gets a share of "
    "the softmax.",
)
def masked_fill_zero(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


@mistake(
    MASKED,
    "the mask polarity is inverted (masked_fill(mask, ...)): in this course True means may "
    "attend, so the keys where the mask is False are the ones to hide.",
)
def masked_inverted(q, k, v, mask=None):
    return masked_softmax_attention(q, k, v, None if mask is None else ~mask)


@mistake(
    MASKED,
    "a query row with nothing allowed gives NaN (the softmax of a row of -inf): it must get zero "
    "weights and a zero output.",
)
def masked_empty_rows_nan(q, k, v, mask=None):
    return masked_softmax_attention(q, k, v, mask, empty="nan")


@mistake(
    MASKED,
    "a query row with nothing allowed gets uniform weights over all keys (a finite fill value "
    "and nothing more): it must get zero weights and a zero output.",
)
def masked_empty_rows_uniform(q, k, v, mask=None):
    return masked_softmax_attention(q, k, v, mask, empty="uniform")


@mistake(
    MASKED,
    "the NaN of fully masked rows is replaced at the end (nan_to_num or masked_fill on the "
    "results), but the gradients still flow through the NaN weights and come out NaN: keep NaN "
    "from ever appearing.",
)
def masked_nan_patched_after(q, k, v, mask=None):
    out, weights = masked_softmax_attention(q, k, v, mask, empty="nan")
    return torch.nan_to_num(out, nan=0.0), torch.nan_to_num(weights, nan=0.0)


@mistake(
    MASKED,
    "the boolean mask is added to the scores (True counts as +1) instead of selecting the keys: "
    "fill the forbidden scores with -inf.",
)
def masked_added_to_scores(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


@mistake(MASKED, "the mask argument is never applied.")
def masked_ignores_mask(q, k, v, mask=None):
    return masked_softmax_attention(q, k, v, None)


@mistake(MASKED, "the scores q k^T are not divided by sqrt(d).")
def masked_no_scaling(q, k, v, mask=None):
    return masked_softmax_attention(q, k, v, mask, scale=1.0)


@mistake(
    MASKED,
    "the softmax runs over the queries (dim=-2); each query's weights are a softmax over the keys "
    "(dim=-1).",
)
def masked_softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-2)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


# --- causal_self_attention(x, W_q, W_k, W_v, lengths=None) -> (out, weights) ---


def _projections(x, W_q, W_k, W_v):
    return x @ W_q.T, x @ W_k.T, x @ W_v.T  # (B, T, d_k), (B, T, d_k), (B, T, d_v)


def _self_attention(x, W_q, W_k, W_v, mask, **options):
    """Masked attention of x (B, T, D) with itself (options: ``masked_softmax_attention``'s)."""
    return masked_softmax_attention(*_projections(x, W_q, W_k, W_v), mask, **options)


def _lower(T, device, diagonal=0):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(diagonal)  # (T, T)


def _real(lengths, T, device):
    return torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]  # (B, T)


def _both_real(mask, lengths, T, device):
    if lengths is None:
        return mask
    real = _real(lengths, T, device)  # (B, T)
    return mask & real[:, :, None] & real[:, None, :]  # (B, T, T)


@mistake(CAUSAL_SELF, "there is no causal mask: each query may attend the later keys.")
def causal_self_no_causal_mask(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device)
    return _self_attention(x, W_q, W_k, W_v, _both_real(mask, lengths, T, x.device))


@mistake(
    CAUSAL_SELF,
    "the causal mask is upper-triangular: each query attends the later keys instead of the "
    "earlier ones.",
)
def causal_self_upper(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu()
    return _self_attention(x, W_q, W_k, W_v, _both_real(mask, lengths, T, x.device))


@mistake(
    CAUSAL_SELF,
    "the causal mask excludes the diagonal: query i may attend key j for j <= i, itself included.",
)
def causal_self_excludes_itself(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _lower(T, x.device, diagonal=-1)
    return _self_attention(x, W_q, W_k, W_v, _both_real(mask, lengths, T, x.device))


@mistake(CAUSAL_SELF, "the lengths are ignored: padded keys are attended and padded rows kept.")
def causal_self_ignores_lengths(x, W_q, W_k, W_v, lengths=None):
    return _self_attention(x, W_q, W_k, W_v, _lower(x.shape[1], x.device))


@mistake(
    CAUSAL_SELF,
    "only the padded keys are hidden: the padded queries must be masked too, so that their rows "
    "are all zeros.",
)
def causal_self_padded_queries_kept(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _lower(T, x.device)
    if lengths is not None:
        mask = mask & _real(lengths, T, x.device)[:, None, :]  # (B, T, T)
    return _self_attention(x, W_q, W_k, W_v, mask)


@mistake(
    CAUSAL_SELF,
    "the padded query rows give NaN (the softmax of a row of -inf): a row with nothing allowed "
    "must get zero weights and a zero output.",
)
def causal_self_padded_rows_nan(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _both_real(_lower(T, x.device), lengths, T, x.device)
    return _self_attention(x, W_q, W_k, W_v, mask, empty="nan")


@mistake(
    CAUSAL_SELF,
    "the padded query rows get uniform weights over all keys: a row with nothing allowed must get "
    "zero weights and a zero output.",
)
def causal_self_padded_rows_uniform(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _both_real(_lower(T, x.device), lengths, T, x.device)
    return _self_attention(x, W_q, W_k, W_v, mask, empty="uniform")


@mistake(
    CAUSAL_SELF,
    "the causal and the padding masks are combined with | (or) instead of & (and): a key must "
    "be both earlier (or the same) and real.",
)
def causal_self_masks_or(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _lower(T, x.device)
    if lengths is not None:
        mask = mask | _real(lengths, T, x.device)[:, None, :]  # (B, T, T)
    return _self_attention(x, W_q, W_k, W_v, mask)


@mistake(
    CAUSAL_SELF,
    "the padding mask marks one position too many as real (t <= length instead of t < length).",
)
def causal_self_lengths_off_by_one(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _both_real(_lower(T, x.device), None if lengths is None else lengths + 1, T, x.device)
    return _self_attention(x, W_q, W_k, W_v, mask)


@mistake(
    CAUSAL_SELF,
    "the scores are divided by the square root of the model size D instead of the query/key size "
    "d_k.",
)
def causal_self_scale_by_model_dim(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    mask = _both_real(_lower(T, x.device), lengths, T, x.device)
    return _self_attention(x, W_q, W_k, W_v, mask, scale=1 / math.sqrt(x.shape[-1]))


MUTANTS = mistake.mutants
