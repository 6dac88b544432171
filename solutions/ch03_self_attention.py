"""Chapter 3 reference: scaled dot-product attention, self-attention, sinusoidal positions."""

import math

import torch

LEAK_MARKER = "LEAK-MARKER-solutions-ch03-9c41e7d2"


def scaled_dot_product_attention(q, k, v):
    """Attention of every query over every key: softmax(q k^T / sqrt(d)) v.

    Args:
        q: (..., Tq, d) queries; any number of leading dims.
        k: (..., Tk, d) keys.
        v: (..., Tk, dv) values.

    Returns:
        out: (..., Tq, dv) weighted sums of the values.
        weights: (..., Tq, Tk) attention weights; each row sums to 1 over the keys.
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Tq, Tk)
    weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk)
    out = weights @ v  # (..., Tq, dv)
    return out, weights


def self_attention(x, W_q, W_k, W_v):
    """Self-attention of a sequence over itself, with bias-free projections.

    Args:
        x: (B, T, D) input sequence.
        W_q: (d_k, D) query projection, applied as x @ W_q.T.
        W_k: (d_k, D) key projection.
        W_v: (d_v, D) value projection.

    Returns:
        out: (B, T, d_v) attention output.
        weights: (B, T, T) attention weights.
    """
    q = x @ W_q.T  # (B, T, d_k)
    k = x @ W_k.T  # (B, T, d_k)
    v = x @ W_v.T  # (B, T, d_v)
    return scaled_dot_product_attention(q, k, v)


def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    """Fixed sine/cosine position codes of Vaswani et al. (2017).

    PE[p, 2i] = sin(p / base^(2i/D)) and PE[p, 2i+1] = cos(p / base^(2i/D)), positions
    from 0. D may be odd (the last column is then a sine). The angles are computed in
    float32 at least (float64 when asked for), then cast to ``dtype``.

    Returns:
        (T, D) tensor of ``dtype`` on ``device``.
    """
    compute_dtype = torch.promote_types(dtype, torch.float32)
    positions = torch.arange(T, dtype=compute_dtype, device=device)  # (T,)
    even_columns = torch.arange(0, D, 2, dtype=compute_dtype, device=device)  # (ceil(D/2),) = 2i
    frequencies = base ** (-even_columns / D)  # (ceil(D/2),)
    angles = positions[:, None] * frequencies[None, :]  # (T, ceil(D/2))
    pairs = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (T, ceil(D/2), 2)
    pe = pairs.flatten(-2)[:, :D]  # (T, D): sin, cos interleaved; odd D drops the last cos
    return pe.to(dtype)
