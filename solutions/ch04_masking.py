"""Chapter 4 reference: causal and padding masks, masked attention."""

import math

import torch

LEAK_MARKER = "LEAK-MARKER-solutions-ch04-5b0f8a61"


def causal_mask(T, device=None):
    """Lower-triangular mask: query i may attend key j iff j <= i.

    Returns:
        (T, T) bool, True = may attend.
    """
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(lengths, T, device=None):
    """Which positions of each padded sequence are real tokens.

    Args:
        lengths: (B,) integer lengths, on any device.
        T: padded length.
        device: where the mask goes; defaults to ``lengths``'s device.

    Returns:
        (B, T) bool, True = real token (position < length).
    """
    lengths = torch.as_tensor(lengths, device=device)  # (B,)
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return positions[None, :] < lengths[:, None]  # (B, T)


def masked_attention(q, k, v, mask=None):
    """Scaled dot-product attention restricted to the keys that ``mask`` allows.

    A query row with nothing allowed gets zero weights and a zero output (not NaN,
    in the values and in the gradients).

    Args:
        q: (..., Tq, d) queries.
        k: (..., Tk, d) keys.
        v: (..., Tk, dv) values.
        mask: bool, broadcastable to (..., Tq, Tk), True = may attend; None = all allowed.

    Returns:
        out: (..., Tq, dv) attention output.
        weights: (..., Tq, Tk) attention weights (zero where masked).
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Tq, Tk)
    if mask is None:
        weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk)
        return weights @ v, weights
    # The lowest finite value, not -inf: a fully masked row then gives a uniform softmax
    # (finite, with finite gradients) that the second where() turns into zeros.
    lowest = torch.finfo(scores.dtype).min
    scores = torch.where(mask, scores, lowest)  # (..., Tq, Tk)
    weights = torch.where(mask, torch.softmax(scores, dim=-1), 0.0)  # (..., Tq, Tk)
    out = weights @ v  # (..., Tq, dv)
    return out, weights


def causal_self_attention(x, W_q, W_k, W_v, lengths=None):
    """Causal self-attention over a padded batch, with bias-free projections.

    Query i may attend key j iff j <= i and both are real tokens, so padded query rows
    are all zeros and no output depends on a later or a padded input.

    Args:
        x: (B, T, D) input sequence.
        W_q: (d_k, D), W_k: (d_k, D), W_v: (d_v, D) projections (x @ W.T).
        lengths: (B,) real lengths, or None when nothing is padded.

    Returns:
        out: (B, T, d_v) attention output.
        weights: (B, T, T) attention weights.
    """
    T = x.shape[1]
    mask = causal_mask(T, device=x.device)  # (T, T)
    if lengths is not None:
        real = padding_mask(lengths, T, device=x.device)  # (B, T)
        mask = mask & real[:, :, None] & real[:, None, :]  # (B, T, T)
    q = x @ W_q.T  # (B, T, d_k)
    k = x @ W_k.T  # (B, T, d_k)
    v = x @ W_v.T  # (B, T, d_v)
    return masked_attention(q, k, v, mask)
