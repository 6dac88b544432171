"""Known mistakes of chapter 3: scaled dot-product attention, self-attention, positions.

Each mutant is the whole function as a student might write it with one mistake, and a
sentence, addressed to the student, that names that mistake.
"""

import math

import torch

from autograder.kit.battery import Mutant

LEAK_MARKER = "LEAK-MARKER-autograder-ch03-71ce070a"

SDPA = "scaled_dot_product_attention"
SELF = "self_attention"
PE = "sinusoidal_positional_encoding"


# --- scaled_dot_product_attention(q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv)) ---


def _attend(q, k, v, scale):
    """Correct attention with a given score scale: softmax(q k^T * scale) v."""
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    return weights @ v, weights


def sdpa_no_scaling(q, k, v):
    return _attend(q, k, v, 1.0)


def sdpa_scale_by_d(q, k, v):
    return _attend(q, k, v, 1 / q.shape[-1])


def sdpa_scale_by_sqrt_dv(q, k, v):
    return _attend(q, k, v, 1 / math.sqrt(v.shape[-1]))


def sdpa_scale_by_sqrt_keys(q, k, v):
    return _attend(q, k, v, 1 / math.sqrt(k.shape[-2]))


def sdpa_multiply_by_sqrt_d(q, k, v):
    return _attend(q, k, v, math.sqrt(q.shape[-1]))


def sdpa_softmax_over_queries(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-2)
    return weights @ v, weights


def sdpa_reshape_keys(q, k, v):
    k_t = k.reshape(*k.shape[:-2], k.shape[-1], k.shape[-2])  # a reshape is not a transpose
    weights = torch.softmax(q @ k_t / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


def sdpa_weights_times_keys(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ k, weights


def sdpa_weights_transposed(q, k, v):
    out, weights = _attend(q, k, v, 1 / math.sqrt(q.shape[-1]))
    return out, weights.transpose(-2, -1)


def sdpa_no_max_subtraction(q, k, v):
    exp = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    weights = exp / exp.sum(dim=-1, keepdim=True)
    return weights @ v, weights


def sdpa_log_softmax(q, k, v):
    weights = torch.log_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v, weights


def sdpa_scale_after_softmax(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1) / math.sqrt(q.shape[-1])
    return weights @ v, weights


# --- self_attention(x (B, T, D), W_q (d_k, D), W_k (d_k, D), W_v (d_v, D)) ---


def _sdpa(q, k, v, scale):
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    return weights @ v, weights


def self_w_q_for_keys(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return _sdpa(q, x @ W_q.T, x @ W_v.T, 1 / math.sqrt(q.shape[-1]))


def self_w_k_for_queries(x, W_q, W_k, W_v):
    k = x @ W_k.T
    return _sdpa(x @ W_k.T, k, x @ W_v.T, 1 / math.sqrt(k.shape[-1]))


def self_untransposed_weights(x, W_q, W_k, W_v):
    q, k, v = x @ W_q, x @ W_k, x @ W_v
    return _sdpa(q, k, v, 1 / math.sqrt(q.shape[-1]))


def self_values_not_projected(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return _sdpa(q, x @ W_k.T, x, 1 / math.sqrt(q.shape[-1]))


def self_queries_not_projected(x, W_q, W_k, W_v):
    k = x @ W_k.T
    return _sdpa(x, k, x @ W_v.T, 1 / math.sqrt(k.shape[-1]))


def self_w_q_for_values(x, W_q, W_k, W_v):
    q = x @ W_q.T
    return _sdpa(q, x @ W_k.T, x @ W_q.T, 1 / math.sqrt(q.shape[-1]))


def self_scale_by_model_dim(x, W_q, W_k, W_v):
    return _sdpa(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1 / math.sqrt(x.shape[-1]))


def self_scale_by_sqrt_dv(x, W_q, W_k, W_v):
    return _sdpa(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1 / math.sqrt(W_v.shape[0]))


def self_no_scaling(x, W_q, W_k, W_v):
    return _sdpa(x @ W_q.T, x @ W_k.T, x @ W_v.T, 1.0)


def self_softmax_over_queries(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
    return weights @ v, weights


def self_swapped_queries_and_keys(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    return _sdpa(k, q, v, 1 / math.sqrt(q.shape[-1]))


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


def pe_concatenated(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    pe = torch.cat((angles.sin(), angles.cos()[:, : D // 2]), dim=-1)
    return pe.to(dtype)


def pe_sin_cos_swapped(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    return _interleave(angles.cos(), angles.sin(), D).to(dtype)


def pe_exponent_i_over_d(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: (two_i / 2) / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


def pe_positions_from_one(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D, first=1)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


def pe_integer_division(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i // D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


def pe_multiplied(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: -two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


def pe_column_exponent(T, D, base=10000.0, dtype=torch.float32, device=None):
    positions = torch.arange(T, dtype=torch.float32, device=device)
    columns = torch.arange(D, dtype=torch.float32, device=device)
    angles = positions[:, None] / base ** (columns / D)[None, :]  # cosines use (2i+1)/D
    pe = torch.where(columns.remainder(2) == 0, angles.sin(), angles.cos())
    return pe.to(dtype)


def pe_odd_drops_last_sine(T, D, base=10000.0, dtype=torch.float32, device=None):
    positions = torch.arange(T, dtype=torch.float32, device=device)
    two_i = 2 * torch.arange(D // 2, dtype=torch.float32, device=device)
    angles = positions[:, None] / base ** (two_i / D)[None, :]
    pe = torch.zeros(T, D, dtype=torch.float32, device=device)
    pe[:, 0 : 2 * (D // 2) : 2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.to(dtype)


def pe_in_target_dtype(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D, compute_dtype=dtype)
    return _interleave(angles.sin(), angles.cos(), D)


def pe_ignores_dtype(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, device, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D)


def pe_ignores_base(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, 10000.0, device, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


def pe_ignores_device(T, D, base=10000.0, dtype=torch.float32, device=None):
    angles = _angles(T, D, base, None, lambda two_i: two_i / D)
    return _interleave(angles.sin(), angles.cos(), D).to(dtype)


MUTANTS = (
    Mutant(SDPA, "no_scaling", "the scores q k^T are not divided by sqrt(d_k).", sdpa_no_scaling),
    Mutant(
        SDPA, "scale_by_d", "the scores are divided by d_k instead of sqrt(d_k).", sdpa_scale_by_d
    ),
    Mutant(
        SDPA,
        "scale_by_sqrt_dv",
        "the scores are divided by the square root of the value size d_v, not of the key size d_k.",
        sdpa_scale_by_sqrt_dv,
    ),
    Mutant(
        SDPA,
        "scale_by_sqrt_keys",
        "the scores are divided by the square root of the number of keys, not of d_k.",
        sdpa_scale_by_sqrt_keys,
    ),
    Mutant(
        SDPA,
        "multiply_by_sqrt_d",
        "the scores are multiplied by sqrt(d_k) instead of divided by it.",
        sdpa_multiply_by_sqrt_d,
    ),
    Mutant(
        SDPA,
        "softmax_over_queries",
        "the softmax runs over the queries (dim=-2); each query's weights must sum to 1 over"
        " the keys (dim=-1).",
        sdpa_softmax_over_queries,
    ),
    Mutant(
        SDPA,
        "reshape_keys",
        "k is reshaped (or viewed) to (..., d, Tk) instead of transposed: use k.transpose(-2, -1).",
        sdpa_reshape_keys,
    ),
    Mutant(
        SDPA,
        "weights_times_keys",
        "the weights are multiplied with the keys instead of the values.",
        sdpa_weights_times_keys,
    ),
    Mutant(
        SDPA,
        "weights_transposed",
        "the weights are returned transposed, as (..., Tk, Tq) instead of (..., Tq, Tk).",
        sdpa_weights_transposed,
    ),
    Mutant(
        SDPA,
        "no_max_subtraction",
        "the softmax is computed as exp(s) / sum(exp(s)) without subtracting the row maximum,"
        " which overflows for large scores (use torch.softmax).",
        sdpa_no_max_subtraction,
    ),
    Mutant(
        SDPA,
        "log_softmax",
        "the weights come from log_softmax instead of softmax.",
        sdpa_log_softmax,
    ),
    Mutant(
        SDPA,
        "scale_after_softmax",
        "the division by sqrt(d_k) is applied to the weights after the softmax, not to the"
        " scores before it.",
        sdpa_scale_after_softmax,
    ),
    Mutant(
        SELF,
        "w_q_for_keys",
        "the keys are projected with W_q instead of W_k.",
        self_w_q_for_keys,
    ),
    Mutant(
        SELF,
        "w_k_for_queries",
        "the queries are projected with W_k instead of W_q.",
        self_w_k_for_queries,
    ),
    Mutant(
        SELF,
        "untransposed_weights",
        "the projections are computed as x @ W instead of x @ W.T (weights are stored"
        " as (out_features, in_features)).",
        self_untransposed_weights,
    ),
    Mutant(
        SELF,
        "values_not_projected",
        "x itself is used as the values instead of x @ W_v.T.",
        self_values_not_projected,
    ),
    Mutant(
        SELF,
        "queries_not_projected",
        "x itself is used as the queries instead of x @ W_q.T.",
        self_queries_not_projected,
    ),
    Mutant(
        SELF,
        "w_q_for_values",
        "the values are projected with W_q instead of W_v.",
        self_w_q_for_values,
    ),
    Mutant(
        SELF,
        "scale_by_model_dim",
        "the scores are divided by the square root of the model size D instead of the"
        " query/key size d_k.",
        self_scale_by_model_dim,
    ),
    Mutant(
        SELF,
        "scale_by_sqrt_dv",
        "the scores are divided by the square root of the value size d_v instead of d_k.",
        self_scale_by_sqrt_dv,
    ),
    Mutant(SELF, "no_scaling", "the scores are not divided by sqrt(d_k).", self_no_scaling),
    Mutant(
        SELF,
        "softmax_over_queries",
        "the softmax runs over the queries (dim=-2) instead of over the keys (dim=-1).",
        self_softmax_over_queries,
    ),
    Mutant(
        SELF,
        "swapped_queries_and_keys",
        "the queries and keys are swapped: the scores are k q^T instead of q k^T.",
        self_swapped_queries_and_keys,
    ),
    Mutant(
        SELF,
        "no_max_subtraction",
        "the softmax is computed as exp(s) / sum(exp(s)) without subtracting the row maximum,"
        " which overflows for large scores (use torch.softmax).",
        self_no_max_subtraction,
    ),
    Mutant(
        PE,
        "concatenated",
        "the sines and cosines are concatenated (all sines, then all cosines) instead of"
        " interleaved (sine in even columns, cosine in odd columns).",
        pe_concatenated,
    ),
    Mutant(
        PE,
        "sin_cos_swapped",
        "sine and cosine are swapped: even columns take the sine, odd columns the cosine.",
        pe_sin_cos_swapped,
    ),
    Mutant(
        PE,
        "exponent_i_over_d",
        "the exponent is i/D instead of 2i/D (i counts the sine/cosine pairs).",
        pe_exponent_i_over_d,
    ),
    Mutant(
        PE,
        "positions_from_one",
        "positions are counted from 1 instead of 0 (the first row must be sin 0, cos 0, ...).",
        pe_positions_from_one,
    ),
    Mutant(
        PE,
        "integer_division",
        "the exponent 2i/D is computed with integer division (//), so every frequency is 1.",
        pe_integer_division,
    ),
    Mutant(
        PE,
        "multiplied",
        "the positions are multiplied by base^(2i/D) instead of divided by it.",
        pe_multiplied,
    ),
    Mutant(
        PE,
        "column_exponent",
        "the cosine in column 2i+1 uses the exponent (2i+1)/D; both columns of a pair use 2i/D.",
        pe_column_exponent,
    ),
    Mutant(
        PE,
        "odd_drops_last_sine",
        "for odd D the last column (a sine) is left at zero.",
        pe_odd_drops_last_sine,
    ),
    Mutant(
        PE,
        "in_target_dtype",
        "the angles are computed in the requested low-precision dtype; compute them in"
        " float32 and cast the result at the end.",
        pe_in_target_dtype,
    ),
    Mutant(
        PE,
        "ignores_dtype",
        "the result is not cast to the requested dtype.",
        pe_ignores_dtype,
    ),
    Mutant(
        PE, "ignores_base", "the base argument is ignored (10000 is hard-coded).", pe_ignores_base
    ),
    Mutant(
        PE,
        "ignores_device",
        "the tensors are created without device=device, so the result is not on the"
        " requested device.",
        pe_ignores_device,
    ),
)
