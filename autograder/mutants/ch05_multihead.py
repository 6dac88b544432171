"""Known mistakes of chapter 5: splitting into heads, merging them, multi-head attention.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error. They are tried in this order.
"""

import math

import torch

from autograder.kit.mistakes import KnownMistakes
from autograder.mutants.ch04_masking import masked_softmax_attention

LEAK_MARKER = "LEAK-MARKER-autograder-ch05-b8e05d13"

SPLIT = "split_heads"
MERGE = "merge_heads"
MHA = "multi_head_attention"

mistake = KnownMistakes()


def _check_divisible(D, num_heads):
    if D % num_heads != 0:
        raise ValueError(f"{D} features cannot be cut into {num_heads} heads")


def _head_sizes(x, num_heads):
    """B, T, h, d of x (B, T, D) cut into h heads of d = D/h features (ValueError if not)."""
    B, T, D = x.shape
    _check_divisible(D, num_heads)
    return B, T, num_heads, D // num_heads


# --- split_heads(x (B, T, D), num_heads) -> (B, h, T, D/h) ---


@mistake(
    SPLIT,
    "x is reshaped straight to (B, h, T, d) without a transpose: each head then holds whole "
    "positions instead of its own features. Reshape to (B, T, h, d), then transpose(1, 2).",
)
def split_without_transpose(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, h, T, d)


@mistake(
    SPLIT,
    "the feature dim is cut as (d, h) instead of (h, d), so head i gets every h-th feature; head "
    "i holds the consecutive features i*d to (i+1)*d - 1.",
)
def split_interleaved(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, T, d, h).permute(0, 3, 1, 2)


@mistake(
    SPLIT,
    "the result is (B, T, h, d): the head dim must come before the positions, (B, h, T, d) "
    "(transpose(1, 2)).",
)
def split_heads_after_positions(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, T, h, d)


@mistake(
    SPLIT,
    "the heads are folded into the batch dim, (B*h, T, d); split_heads returns (B, h, T, d).",
)
def split_into_batch(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    heads = x.reshape(B, T, h, d).transpose(1, 2)
    return heads.reshape(B * h, T, d)


@mistake(
    SPLIT,
    "the last two dims are transposed instead of dims 1 and 2, giving (B, T, d, h): use "
    "transpose(1, 2).",
)
def split_transposes_last_dims(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, T, h, d).transpose(-2, -1)


@mistake(
    SPLIT,
    "the result is (B, h, d, T), with the positions last; split_heads returns (B, h, T, d).",
)
def split_positions_last(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, T, h, d).permute(0, 2, 3, 1)


@mistake(
    SPLIT,
    "the number of heads and the head size are swapped: x is cut into D/h pieces of size h "
    "instead of h pieces of size D/h.",
)
def split_sizes_swapped(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.reshape(B, T, d, h).transpose(1, 2)


@mistake(
    SPLIT,
    "the result is detached from x (.detach(), .data or a new tensor filled with its values), so "
    "no gradient flows back through the heads.",
)
def split_detached(x, num_heads):
    B, T, h, d = _head_sizes(x, num_heads)
    return x.detach().reshape(B, T, h, d).transpose(1, 2)


# --- merge_heads(x (B, h, T, d)) -> (B, T, h*d) ---


@mistake(
    MERGE,
    "x is reshaped straight to (B, T, h*d) without moving the head dim back first: transpose(1, "
    "2) to (B, T, h, d), then reshape.",
)
def merge_without_transpose(x):
    B, h, T, d = x.shape
    return x.reshape(B, T, h * d)


@mistake(
    MERGE,
    "the heads are interleaved feature by feature (order (d, h)); they are put side by side, "
    "head 0's d features first.",
)
def merge_interleaved(x):
    B, h, T, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, d * h)


@mistake(
    MERGE,
    "the result is (B, T, h, d): the heads must also be flattened into one feature dim of size "
    "h*d.",
)
def merge_not_flattened(x):
    return x.transpose(1, 2)


@mistake(MERGE, "the heads are averaged instead of concatenated side by side.")
def merge_averaged(x):
    return x.mean(dim=1)


@mistake(
    MERGE,
    "the head dim is swapped with the feature dim (transpose(1, 3)); it is swapped with the "
    "positions, transpose(1, 2), before the reshape.",
)
def merge_swaps_heads_and_features(x):
    B, h, T, d = x.shape
    return x.transpose(1, 3).reshape(B, T, h * d)


@mistake(
    MERGE,
    "the dims of x are unpacked in the wrong order: x is (B, h, T, d), heads before positions.",
)
def merge_unpacked_wrongly(x):
    B, T, h, d = x.shape  # the mistake: x is (B, h, T, d)
    return x.transpose(1, 2).reshape(B, T, h * d)


@mistake(
    MERGE,
    "the result is detached from x (.detach(), .data or a new tensor filled with its values), so "
    "no gradient flows back through the merge.",
)
def merge_detached(x):
    B, h, T, d = x.shape
    return x.detach().transpose(1, 2).reshape(B, T, h * d)


@mistake(
    MERGE,
    "the heads are concatenated along the positions (dim 1 of the result) instead of the "
    "features (the last dim).",
)
def merge_along_positions(x):
    return torch.cat(x.unbind(dim=1), dim=1)


# --- multi_head_attention(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads,
#     mask=None) -> (out (B, Tq, D), weights (B, h, Tq, Tk)) ---


def _split(x, h):
    B, T, h, d = _head_sizes(x, h)
    return x.reshape(B, T, h, d).transpose(1, 2)  # (B, h, T, d)


def _merge(x):
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)  # (B, T, h*d)


def _per_head(mask):
    """A (B, Tq, Tk) mask as (B, 1, Tq, Tk): the same for every head."""
    return mask.unsqueeze(1) if mask is not None and mask.dim() == 3 else mask


def _heads_attention(q, k, v, mask, empty="zero", scale=None):
    """(B, h, Tq, d), (B, h, Tk, d), (B, h, Tk, d) with the contract's mask."""
    return masked_softmax_attention(q, k, v, _per_head(mask), empty=empty, scale=scale)


def _mha(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, h, mask, **knobs):
    """Multi-head attention with the knobs below turned (the right one with none)."""
    split = knobs.get("split", _split)
    merge = knobs.get("merge", _merge)
    q = split(query @ W_q.T + b_q, h)  # (B, h, Tq, d)
    k = split(key @ W_k.T + b_k, h)  # (B, h, Tk, d)
    v = split(value @ W_v.T + b_v, h)  # (B, h, Tk, d)
    heads, weights = _heads_attention(
        q, k, v, mask, empty=knobs.get("empty", "zero"), scale=knobs.get("scale")
    )
    return merge(heads) @ W_o.T + b_o, weights


@mistake(
    MHA,
    "the projected queries, keys and values are split into heads with a reshape to (B, h, T, d) "
    "and no transpose, so a head holds positions instead of features.",
)
def mha_split_without_transpose(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    def split(x, h):
        B, T, D = x.shape
        return x.reshape(B, h, T, D // h)

    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    return _mha(*args, split=split)


@mistake(
    MHA,
    "the heads are merged with a reshape to (B, T, h*d) without transposing (B, h, T, d) back to "
    "(B, T, h, d) first.",
)
def mha_merge_without_transpose(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    def merge(x):
        B, h, T, d = x.shape
        return x.reshape(B, T, h * d)

    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    return _mha(*args, merge=merge)


@mistake(
    MHA,
    "the output projection is missing: the merged heads must go through x @ W_o.T + b_o.",
)
def mha_no_output_projection(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    q = _split(query @ W_q.T + b_q, num_heads)
    k = _split(key @ W_k.T + b_k, num_heads)
    v = _split(value @ W_v.T + b_v, num_heads)
    heads, weights = _heads_attention(q, k, v, mask)
    return _merge(heads), weights


@mistake(
    MHA,
    "the scores are divided by sqrt(D), the model size, instead of sqrt(D / num_heads), the size "
    "of one head.",
)
def mha_scale_by_model_dim(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    return _mha(*args, scale=1 / math.sqrt(query.shape[-1]))


@mistake(
    MHA,
    "the weights are averaged over the heads, (B, Tq, Tk); return every head's weights, "
    "(B, h, Tq, Tk).",
)
def mha_weights_averaged(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    out, weights = _mha(*args)
    return out, weights.mean(dim=1)


@mistake(
    MHA,
    "with the heads folded into the batch (batch-major, b*h + i), the (B, Tq, Tk) mask is "
    "repeated head-major with mask.repeat(h, 1, 1), so each head gets another sequence's mask: "
    "use repeat_interleave, or keep a head dim and unsqueeze(1).",
)
def mha_mask_repeated_in_wrong_order(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    B, Tq, D = query.shape
    Tk, h, d = key.shape[1], num_heads, D // num_heads
    q = _split(query @ W_q.T + b_q, h).reshape(B * h, Tq, d)  # batch-major
    k = _split(key @ W_k.T + b_k, h).reshape(B * h, Tk, d)
    v = _split(value @ W_v.T + b_v, h).reshape(B * h, Tk, d)
    if mask is not None and mask.dim() == 3:
        mask = mask.repeat(h, 1, 1)  # head-major: the mistake
    elif mask is not None and mask.dim() == 4:
        mask = mask.expand(B, h, Tq, Tk).reshape(B * h, Tq, Tk)
    heads, weights = masked_softmax_attention(q, k, v, mask)  # (B*h, Tq, d), (B*h, Tq, Tk)
    out = _merge(heads.reshape(B, h, Tq, d)) @ W_o.T + b_o
    return out, weights.reshape(B, h, Tq, Tk)


@mistake(MHA, "the keys are projected with W_v, b_v and the values with W_k, b_k: swap them back.")
def mha_key_value_projections_swapped(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    args = (query, key, value, W_q, b_q, W_v, b_v, W_k, b_k, W_o, b_o, num_heads, mask)
    return _mha(*args)


@mistake(MHA, "the biases b_q, b_k and b_v of the projections are left out.")
def mha_no_input_biases(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    zeros = torch.zeros_like(b_q)
    args = (query, key, value, W_q, zeros, W_k, zeros, W_v, zeros, W_o, b_o, num_heads, mask)
    return _mha(*args)


@mistake(
    MHA,
    "the keys and values are computed from query instead of from key and value: in "
    "cross-attention they come from the other sequence.",
)
def mha_keys_values_from_query(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    args = (query, query, query, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    return _mha(*args)


@mistake(
    MHA,
    "the mask polarity is inverted (PyTorch's nn.MultiheadAttention convention, True = "
    "forbidden): in this course True means may attend.",
)
def mha_mask_inverted(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    inverted = None if mask is None else ~mask
    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, inverted)
    return _mha(*args)


@mistake(
    MHA,
    "a query row with nothing allowed gives NaN (a softmax over a row of -inf); its weights and "
    "attention output must be zero, so its out is b_o.",
)
def mha_empty_rows_nan(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    args = (query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask)
    return _mha(*args, empty="nan")


@mistake(
    MHA,
    "the output projection is applied as x @ W_o instead of x @ W_o.T (weights are stored as "
    "(out_features, in_features)).",
)
def mha_output_weights_untransposed(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    q = _split(query @ W_q.T + b_q, num_heads)
    k = _split(key @ W_k.T + b_k, num_heads)
    v = _split(value @ W_v.T + b_v, num_heads)
    heads, weights = _heads_attention(q, k, v, mask)
    return _merge(heads) @ W_o + b_o, weights


MUTANTS = mistake.mutants
