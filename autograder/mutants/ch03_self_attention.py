"""Known mistakes of chapter 3: scaled dot-product attention, self-attention, positions.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error. They are tried in this order.
"""

import math

import torch

from autograder.kit.mistakes import KnownMistakes, softmax_attention

LEAK_MARKER = "LEAK-MARKER-autograder-ch03-71ce070a"

SDPA = "scaled_dot_product_attention"
SELF = "self_attention"
PE = "sinusoidal_positional_encoding"

mistake = KnownMistakes()


# --- scaled_dot_product_attention(q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv)) ---


@mistake(SDPA, "the scores q k^T are not divided by sqrt(d_k).")
def sdpa_no_scaling(q, k, v):
    return softmax_attention(q, k, v, scale=1.0)


@mistake(SDPA, "the scores are divided by d_k instead of sqrt(d_k).")
def sdpa_scale_by_d(q, k, v):
    return softmax_attention(q, k, v, scale=1 / q.shape[-1])


@mistake(
    SDPA,
    "the scores are divided by the square root of the value size d_v, not of the key size d_k.",
)
def sdpa_scale_by_sqrt_dv(q, k, v):
    return softmax_attention(q, k, v, scale=1 / math.sqrt(v.shape[-1]))


@mistake(SDPA, "the scores are divided by the square root of the number of keys, not of d_k.")
def sdpa_scale_by_sqrt_keys(q, k, v):
    return softmax_attention(q, k, v, scale=1 / math.sqrt(k.shape[-2]))


@mistake(SDPA, "the scores are multiplied by sqrt(d_k) instead of divided by it.")
def sdpa_multiply_by_sqrt_d(q, k, v):
    return softmax_attention(q, k, v, scale=math.sqrt(q.shape[-1]))


@mistake(
    SDPA,
    "the softmax runs over the queries (dim=-2); each query's weights must sum to 1 over the keys "
    "(dim=-1).",
)
def sdpa_softmax_over_queries(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-2)
    return weights @ v, weights


@mistake(
    SDPA,
    "k is reshaped (or viewed) to (..., d, Tk) instead of transposed: use k.transpose(-2, -1).",
)
def sdpa_reshape_keys(q, k, v):
    k_t = k.reshape(*k.shape[:-2], k.shape[-1], k.shape[-2])  # a reshape is not a transpose
    weights = torch.softmax(q @ k_t / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


@mistake(
    SDPA,
    "k is transposed on fixed axes (k.transpose(1, 2)), which is right only with exactly one"
    " leading dimension: use k.transpose(-2, -1).",
)
def sdpa_transpose_fixed_axes(q, k, v):
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


@mistake(SDPA, "the weights are multiplied with the keys instead of the values.")
def sdpa_weights_times_keys(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ k, weights


@mistake(SDPA, "the weights are returned transposed, as (..., Tk, Tq) instead of (..., Tq, Tk).")
def sdpa_weights_transposed(q, k, v):
    out, weights = softmax_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]))
    return out, weights.transpose(-2, -1)


@mistake(
    SDPA,
    "the softmax is computed as exp(s) / sum(exp(s)) without subtracting the row maximum, which "
    "overflows for large scores (use torch.softmax).",
)
def sdpa_no_max_subtraction(q, k, v):
    exp = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    weights = exp / exp.sum(dim=-1, keepdim=True)
    return weights @ v, weights


@mistake(SDPA, "the weights come from log_softmax instead of softmax.")
def sdpa_log_softmax(q, k, v):
    weights = torch.log_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


@mistake(
    SDPA,
    "the division by sqrt(d_k) is applied to the weights after the softmax, not to the scores "
    "before it.",
)
def sdpa_scale_after_softmax(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1) / math.sqrt(q.shape[-1])
    return weights @ v, weights


# --- self_attention(x (B, T, D), W_q (d_k, D), W_k (d_k, D), W_v (d_v, D)) ---


@mistake(SELF, "the keys are projected with W_q instead of W_k.")
def self_w_q_for_keys(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return softmax_attention(q, x @ W_q.T, x @ W_v.T, 1 / math.sqrt(q.shape[-1]))


@mistake(SELF, "the queries are projected with W_k instead of W_q.")
def self_w_k_for_queries(x, W_q, W_k, W_v):
    k = x @ W_k.T
    return softmax_attention(x @ W_k.T, k, x @ W_v.T, 1 / math.sqrt(k.shape[-1]))


@mistake(
    SELF,
    "the projections are computed as x @ W instead of x @ W.T (weights are stored as "
    "(out_features, in_features)).",
)
def self_untransposed_weights(x, W_q, W_k, W_v):
    q, k, v = x @ W_q, x @ W_k, x @ W_v
    return softmax_attention(q, k, v, 1 / math.sqrt(q.shape[-1]))


@mistake(SELF, "x itself is used as the values instead of x @ W_v.T.")
def self_values_not_projected(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return softmax_attention(q, x @ W_k.T, x, 1 / math.sqrt(q.shape[-1]))


@mistake(SELF, "x itself is used as the queries instead of x @ W_q.T.")
def self_queries_not_projected(x, W_q, W_k, W_v):
    k = x @ W_k.T
    return softmax_attention(x, k, x @ W_v.T, 1 / math.sqrt(k.shape[-1]))


@mistake(SELF, "the values are projected with W_q instead of W_v.")
def self_w_q_for_values(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return softmax_attention(q, x @ W_k.T, x @ W_q.T, 1 / math.sqrt(q.shape[-1]))


@mistake(
    SELF,
    "the scores are divided by the square root of the model size D instead of the query/key size "
    "d_k.",
)
def self_scale_by_model_dim(x, W_q, W_k, W_v):
    return softmax_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1 / math.sqrt(x.shape[-1]))


@mistake(SELF, "the scores are divided by the square root of the value size d_v instead of d_k.")
def self_scale_by_sqrt_dv(x, W_q, W_k, W_v):
    return softmax_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1 / math.sqrt(W_v.shape[0]))


@mistake(SELF, "the scores are not divided by sqrt(d_k).")
def self_no_scaling(x, W_q, W_k, W_v):
    return softmax_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1.0)


@mistake(SELF, "the softmax runs over the queries (dim=-2) instead of over the keys (dim=-1).")
def self_softmax_over_queries(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
    return weights @ v, weights


@mistake(SELF, "the queries and keys are swapped: the scores are k q^T instead of q k^T.")
def self_swapped_queries_and_keys(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    return softmax_attention(k, q, v, 1 / math.sqrt(q.shape[-1]))


@mistake(
    SELF,
    "the softmax is computed as exp(s) / sum(exp(s)) without subtracting the row maximum, which "
    "overflows for large scores (use torch.softmax).",
)
def self_no_max_subtraction(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    exp = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    weights = exp / exp.sum(dim=-1, keepdim=True)
    return weights @ v, weights


# --- sinusoidal_positional_encoding(T, D, base, dtype, device) -> (T, D) ---


def _angles(T, D, base, device, exponent_of_pair, compute_dtype=torch.float32, first=0):
    """(T, ceil(D/2)) angles p * frequency, with frequency = base^-exponent_of_pair(2i)."""
    positions = torch.arange(first, first + T, dtype=compute_dtype, device=device)
    two_i = torch.arange(0, D, 2, dtype=compute_dtype, device=device)
    return positions[:, None] * base ** -exponent_of_pair(two_i)[None, :]


def _interleave(sines, cosines, D):
    pe = torch.stack((sines, cosines), dim=-1).flatten(-2)
    return pe[:, :D]


@mistake(
    PE,
    "the sines and cosines are concatenated (all sines, then all cosines) instead of interleaved "
    "(sine in even columns, cosine in odd columns).",
)
def pe_concatenated(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    pe = torch.cat((angles.sin(), angles.cos()[:, : D // 2]), dim=-1)
    return pe.to(dtype)


@mistake(PE, "sine and cosine are swapped: even columns take the sine, odd columns the cosine.")
def pe_sin_cos_swapped(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    return _interleave(angles.cos(), angles.sin(), D).to(dtype)


@mistake(PE, "the exponent is i/D instead of 2i/D (i counts the sine/cosine pairs).")
def pe_exponent_i_over_d(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: (two_i / 2) / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


@mistake(PE, "positions are counted from 1 instead of 0 (the first row must be sin 0, cos 0, ...).")
def pe_positions_from_one(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D, first=1)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


@mistake(PE, "the exponent 2i/D is computed with integer division (//), so every frequency is 1.")
def pe_integer_division(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i // D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


@mistake(PE, "the positions are multiplied by base^(2i/D) instead of divided by it.")
def pe_multiplied(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: -two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


@mistake(
    PE, "the cosine in column 2i+1 uses the exponent (2i+1)/D; both columns of a pair use 2i/D."
)
def pe_column_exponent(T, D, base=10000.0, dtype=torch.float32, device=None):
    positions = torch.arange(T, dtype=torch.float32, device=device)
    columns = torch.arange(D, dtype=torch.float32, device=device)
    angles = positions[:, None] / base ** (columns / D)[None, :]  # cosines use (2i+1)/D
    pe = torch.where(columns.remainder(2) == 0, angles.sin(), angles.cos())
    return pe.to(dtype)


@mistake(PE, "for odd D the last column (a sine) is left at zero.")
def pe_odd_drops_last_sine(T, D, base=10000.0, dtype=torch.float32, device=None):
    positions = torch.arange(T, dtype=torch.float32, device=device)
    two_i = 2 * torch.arange(D // 2, dtype=torch.float32, device=device)
    angles = positions[:, None] / base ** (two_i / D)[None, :]
    pe = torch.zeros(T, D, dtype=torch.float32, device=device)
    pe[:, 0 : 2 * (D // 2) : 2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.to(dtype)


@mistake(
    PE,
    "the angles are computed in the requested low-precision dtype; compute them in float32 and "
    "cast the result at the end.",
)
def pe_in_target_dtype(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D, compute_dtype=dtype)
    return _interleave(angles.sin(), angles.cos(), D)


@mistake(PE, "the result is not cast to the requested dtype.")
def pe_ignores_dtype(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D)


@mistake(PE, "the base argument is ignored (10000 is hard-coded).")
def pe_ignores_base(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, 10000.0, device, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


@mistake(
    PE,
    "the tensors are created without device=device, so the result is not on the requested device.",
)
def pe_ignores_device(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, None, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


MUTANTS = mistake.mutants
