"""Chapter 5 reference: splitting into heads, merging them, multi-head attention.

``multi_head_attention`` masks its scores as chapter 4's ``masked_attention`` does, written
out in its own body: the exercise notebook of chapter 5 then needs nothing of chapter 4.
"""

import math

import torch

LEAK_MARKER = "LEAK-MARKER-solutions-ch05-43cadc5d"


def split_heads(x, num_heads):
    """Cut the feature dim into ``num_heads`` heads and move the head dim forward.

    Head i holds features i*d .. (i+1)*d - 1, with d = D / num_heads.

    Args:
        x: (B, T, D) projected sequence.
        num_heads: h, a divisor of D.

    Returns:
        (B, h, T, D/h) one sequence per head.

    Raises:
        ValueError: when D is not divisible by ``num_heads``.
    """
    B, T, D = x.shape
    if D % num_heads != 0:
        raise ValueError(f"the feature dim {D} is not divisible by num_heads={num_heads}")
    d_head = D // num_heads
    heads = x.reshape(B, T, num_heads, d_head)  # (B, T, h, d)
    return heads.transpose(1, 2)  # (B, h, T, d)


def merge_heads(x):
    """Undo ``split_heads``: put the heads side by side again in the feature dim.

    Args:
        x: (B, h, T, d) one sequence per head.

    Returns:
        (B, T, h*d) the heads concatenated, head 0 first.
    """
    B, h, T, d = x.shape
    heads_last = x.transpose(1, 2)  # (B, T, h, d)
    return heads_last.reshape(B, T, h * d)  # (B, T, h*d)


def multi_head_attention(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    """Multi-head attention, as ``nn.MultiheadAttention(batch_first=True)`` computes it.

    Each head attends with its own slice of the projected queries, keys and values;
    the heads are concatenated and mixed by the output projection. A query row with
    no allowed key gets zero weights and a zero attention output, so its ``out`` is b_o.

    Args:
        query: (B, Tq, D) queries.
        key: (B, Tk, D) keys.
        value: (B, Tk, D) values.
        W_q, W_k, W_v, W_o: (D, D) projections, applied as x @ W.T + b.
        b_q, b_k, b_v, b_o: (D,) biases.
        num_heads: h, a divisor of D.
        mask: bool, True = may attend; (Tq, Tk), (B, Tq, Tk) (the same for every head),
            anything else broadcastable to (B, h, Tq, Tk), or None (all allowed).

    Returns:
        out: (B, Tq, D) attention output after the output projection.
        weights: (B, h, Tq, Tk) attention weights of every head.
    """
    q = split_heads(query @ W_q.T + b_q, num_heads)  # (B, h, Tq, d)
    k = split_heads(key @ W_k.T + b_k, num_heads)  # (B, h, Tk, d)
    v = split_heads(value @ W_v.T + b_v, num_heads)  # (B, h, Tk, d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, Tq, Tk)
    if mask is not None:
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, 1, Tq, Tk): the same mask for every head
        # As in chapter 4: the lowest finite score keeps a fully masked row finite, and the
        # second where() gives it zero weights.
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, h, Tq, Tk)
    if mask is not None:
        weights = torch.where(mask, weights, 0.0)
    heads = weights @ v  # (B, h, Tq, d)
    out = merge_heads(heads) @ W_o.T + b_o  # (B, Tq, D)
    return out, weights
