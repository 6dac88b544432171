"""Chapter 6 reference: layer normalisation, the feed-forward block, encoder and decoder layers."""

import torch
from torch import nn

LEAK_MARKER = "LEAK-MARKER-solutions-ch06-4648759b"


def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalise every vector over its last dim, then scale and shift it.

    Uses the biased variance (divide by D), as ``nn.LayerNorm`` does.

    Args:
        x: (..., D) input.
        gamma: (D,) scale.
        beta: (D,) shift.
        eps: added to the variance before the square root.

    Returns:
        (..., D) normalised input.
    """
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    centred = x - mean  # (..., D)
    variance = centred.square().mean(dim=-1, keepdim=True)  # (..., 1)
    normalised = centred * torch.rsqrt(variance + eps)  # (..., D)
    return normalised * gamma + beta  # (..., D)


def feed_forward(x, W1, b1, W2, b2):
    """Position-wise feed-forward block: a linear map, ReLU, a linear map.

    Args:
        x: (..., D) input.
        W1: (D_ff, D), b1: (D_ff,) first linear map, applied as x @ W1.T + b1.
        W2: (D, D_ff), b2: (D,) second linear map.

    Returns:
        (..., D) output.
    """
    hidden = torch.relu(x @ W1.T + b1)  # (..., D_ff)
    return hidden @ W2.T + b2  # (..., D)


def pytorch_attn_mask(mask, num_heads):
    """Turn a course mask into the ``attn_mask`` that ``nn.MultiheadAttention`` expects.

    Args:
        mask: bool, True = may attend; (Tq, Tk), (B, Tq, Tk) or None.
        num_heads: h of the attention module.

    Returns:
        bool, True = may NOT attend; (Tq, Tk), (B*h, Tq, Tk) (batch-major, as PyTorch
        lays out its heads) or None.
    """
    if mask is None:
        return None
    forbidden = ~mask  # (Tq, Tk) or (B, Tq, Tk)
    if forbidden.dim() == 3:
        forbidden = forbidden.repeat_interleave(num_heads, dim=0)  # (B*h, Tq, Tk)
    return forbidden


def residual(x, sublayer, norm, norm_first):
    """A sublayer with its residual connection and its layer norm.

    Post-norm (``norm_first=False``): norm(x + sublayer(x)).
    Pre-norm (``norm_first=True``): x + sublayer(norm(x)).

    Args:
        x: (B, T, D) input.
        sublayer: maps (B, T, D) to (B, T, D).
        norm: an ``nn.LayerNorm(D)`` whose weight, bias and eps are used.
        norm_first: where the norm goes.

    Returns:
        (B, T, D) output.
    """
    if norm_first:
        return x + sublayer(layer_norm(x, norm.weight, norm.bias, norm.eps))  # (B, T, D)
    return layer_norm(x + sublayer(x), norm.weight, norm.bias, norm.eps)  # (B, T, D)


class EncoderLayer(nn.Module):
    """One Transformer encoder layer: self-attention, then a feed-forward block.

    Same submodules and state_dict keys as ``nn.TransformerEncoderLayer(batch_first=True)``
    with dropout 0 and ReLU, so the weights of one load into the other.
    """

    def __init__(self, d_model, num_heads, d_ff, norm_first=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm_first = norm_first

    def forward(self, x, mask=None):
        """Encode a sequence.

        Args:
            x: (B, T, D) input sequence.
            mask: bool, True = may attend; (T, T), (B, T, T) or None (all allowed).

        Returns:
            (B, T, D) encoded sequence.
        """
        attn_mask = None if mask is None else ~mask  # nn.MultiheadAttention: True = may NOT
        if attn_mask is not None and attn_mask.dim() == 3:  # the heads of one example together
            attn_mask = attn_mask.repeat_interleave(self.self_attn.num_heads, dim=0)

        def attend(h):  # (B, T, D) -> (B, T, D)
            out, _ = self.self_attn(h, h, h, attn_mask=attn_mask, need_weights=False)
            return out

        def ffn(h):  # (B, T, D) -> (B, T, D)
            l1, l2 = self.linear1, self.linear2
            return feed_forward(h, l1.weight, l1.bias, l2.weight, l2.bias)

        def add_norm(h, sublayer, norm):  # (B, T, D) -> (B, T, D)
            if self.norm_first:  # pre-norm: h + sublayer(norm(h))
                return h + sublayer(layer_norm(h, norm.weight, norm.bias, norm.eps))
            return layer_norm(h + sublayer(h), norm.weight, norm.bias, norm.eps)  # post-norm

        x = add_norm(x, attend, self.norm1)  # (B, T, D)
        return add_norm(x, ffn, self.norm2)  # (B, T, D)


class DecoderLayer(nn.Module):
    """One Transformer decoder layer: self-attention, cross-attention, feed-forward.

    Same submodules and state_dict keys as ``nn.TransformerDecoderLayer(batch_first=True)``
    with dropout 0 and ReLU, so the weights of one load into the other.
    """

    def __init__(self, d_model, num_heads, d_ff, norm_first=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm_first = norm_first

    def forward(self, y, memory, tgt_mask=None, memory_mask=None):
        """Decode a target sequence while attending to the encoder's output.

        Args:
            y: (B, Tq, D) target sequence.
            memory: (B, Tk, D) encoder output.
            tgt_mask: bool, True = may attend; (Tq, Tq), (B, Tq, Tq) or None.
            memory_mask: bool, True = may attend; (Tq, Tk), (B, Tq, Tk) or None.

        Returns:
            (B, Tq, D) decoded sequence.
        """
        num_heads = self.self_attn.num_heads

        def attn_mask(mask):  # nn.MultiheadAttention's: True = may NOT attend
            if mask is None:
                return None
            if mask.dim() == 3:  # (B*h, Tq, Tk): the heads of one example together
                return ~mask.repeat_interleave(num_heads, dim=0)
            return ~mask

        self_mask, cross_mask = attn_mask(tgt_mask), attn_mask(memory_mask)

        def attend_self(h):  # (B, Tq, D) -> (B, Tq, D)
            out, _ = self.self_attn(h, h, h, attn_mask=self_mask, need_weights=False)
            return out

        def attend_memory(h):  # (B, Tq, D) -> (B, Tq, D), keys and values from memory
            cross = self.multihead_attn
            out, _ = cross(h, memory, memory, attn_mask=cross_mask, need_weights=False)
            return out

        def ffn(h):  # (B, Tq, D) -> (B, Tq, D)
            l1, l2 = self.linear1, self.linear2
            return feed_forward(h, l1.weight, l1.bias, l2.weight, l2.bias)

        def add_norm(h, sublayer, norm):  # (B, Tq, D) -> (B, Tq, D)
            if self.norm_first:  # pre-norm: h + sublayer(norm(h))
                return h + sublayer(layer_norm(h, norm.weight, norm.bias, norm.eps))
            return layer_norm(h + sublayer(h), norm.weight, norm.bias, norm.eps)  # post-norm

        y = add_norm(y, attend_self, self.norm1)  # (B, Tq, D)
        y = add_norm(y, attend_memory, self.norm2)  # (B, Tq, D)
        return add_norm(y, ffn, self.norm3)  # (B, Tq, D)
