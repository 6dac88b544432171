"""Chapter 2 reference: dot and additive (Bahdanau) scores, masked softmax, attention."""

import torch

LEAK_MARKER = "LEAK-MARKER-solutions-ch02-9f6dee71"


def dot_scores(query, keys):
    """How well one query matches every key: the dot product q . k_t.

    Args:
        query: (B, D) one query per sequence.
        keys: (B, T, D) keys.

    Returns:
        (B, T) scores.
    """
    return (keys @ query[:, :, None])[:, :, 0]  # (B, T, 1) -> (B, T)


def additive_scores(query, keys, W_q, W_k, v):
    """Bahdanau's additive scores: tanh(q W_q^T + k_t W_k^T) v.

    Args:
        query: (B, Dq) one query per sequence.
        keys: (B, T, Dk) keys.
        W_q: (A, Dq) query projection.
        W_k: (A, Dk) key projection.
        v: (A,) scoring vector.

    Returns:
        (B, T) scores.
    """
    projected_query = query @ W_q.T  # (B, A)
    projected_keys = keys @ W_k.T  # (B, T, A)
    energies = torch.tanh(projected_query[:, None, :] + projected_keys)  # (B, T, A)
    return energies @ v  # (B, T)


def lengths_to_mask(lengths, T):
    """Which positions of each padded sequence are real tokens.

    Args:
        lengths: (B,) integer lengths.
        T: padded length.

    Returns:
        (B, T) bool on ``lengths``'s device, True = real token (position < length).
    """
    lengths = torch.as_tensor(lengths)  # (B,)
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return positions[None, :] < lengths[:, None]  # (B, T)


def masked_softmax(scores, mask):
    """Softmax over the last dim restricted to the positions that ``mask`` allows.

    Masked positions get exactly 0; a row with nothing allowed is all zeros (not NaN,
    in the values and in the gradients).

    Args:
        scores: (..., T) scores.
        mask: bool, broadcastable to ``scores``, True = allowed; None = all allowed.

    Returns:
        (..., T) weights; each row with an allowed position sums to 1.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)  # (..., T)
    # The lowest finite value, not -inf: a fully masked row then gives a uniform softmax
    # (finite, with finite gradients) that the second where() turns into zeros.
    lowest = torch.finfo(scores.dtype).min
    scores = torch.where(mask, scores, lowest)  # (..., T)
    return torch.where(mask, torch.softmax(scores, dim=-1), 0.0)  # (..., T)


def attend(query, keys, values, mask, W_q, W_k, v):
    """Additive attention of one query over a sequence: scores, masked softmax, weighted sum.

    Args:
        query: (B, Dq) one query per sequence (the decoder state).
        keys: (B, T, Dk) keys (the encoder outputs).
        values: (B, T, Dv) values.
        mask: (B, T) bool, True = may attend; None = all allowed.
        W_q: (A, Dq), W_k: (A, Dk), v: (A,) the additive scorer's parameters.

    Returns:
        context: (B, Dv) weighted sum of the values (zero where nothing is allowed).
        weights: (B, T) attention weights.
    """
    scores = additive_scores(query, keys, W_q, W_k, v)  # (B, T)
    weights = masked_softmax(scores, mask)  # (B, T)
    context = (weights[:, None, :] @ values)[:, 0, :]  # (B, 1, Dv) -> (B, Dv)
    return context, weights
