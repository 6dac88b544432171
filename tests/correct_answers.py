"""Other correct answers of every chapter, as data: each variant must score full marks.

``CORRECT[assignment_id]`` maps a variant's name to the functions (or classes) it replaces in
the reference's namespace; tests/test_batteries.py grades every variant on several seeds.
Each answer computes its contract another way than the reference (other operations, another
order, other masking), so that the battery is seen to accept what is right and not only
what the reference wrote.
"""

import math

import torch
import torch.nn.functional as F

from solutions.ch06_transformer import DecoderLayer, EncoderLayer
from solutions.ch07_vit import PatchEmbedding, ViT

# --- ch01_seq2seq ---


def rnn_cell_linear(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(F.linear(x_t, W_ih) + F.linear(h_prev, W_hh, b))


def rnn_encode_gather(x, h0, W_ih, W_hh, b, lengths=None):
    """Runs over the padding too, then zeroes it and picks each last real state."""
    B, T, _ = x.shape
    states, h = [], h0
    for t in range(T):
        h = rnn_cell_linear(x[:, t], h, W_ih, W_hh, b)
        states.append(h)
    states = torch.stack(states, dim=1)  # (B, T, H)
    if lengths is None:
        return states, h
    lengths = lengths.to(x.device)
    real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # (B, T)
    last = states[torch.arange(B, device=x.device), lengths - 1]  # (B, H)
    return states * real[..., None].to(x.dtype), last


def rnn_encode_float_mask(x, h0, W_ih, W_hh, b, lengths=None):
    """Blends with a float mask instead of torch.where."""
    B, T, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), T)
    lengths = lengths.to(x.device)
    h, outputs = h0, []
    for t in range(T):
        keep = (t < lengths).to(x.dtype)[:, None]  # (B, 1)
        h_new = torch.tanh(x[:, t] @ W_ih.T + h @ W_hh.T + b)
        h = keep * h_new + (1 - keep) * h
        outputs.append(keep * h_new)
    return torch.stack(outputs, dim=1), h


def shift_right_pad(targets, bos_id):
    return F.pad(targets[:, :-1], (1, 0), value=bos_id)


def sequence_cross_entropy_logsumexp(logits, targets, pad_id):
    real = targets != pad_id
    picked = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
    nll = torch.logsumexp(logits, dim=-1) - picked
    return nll[real].mean()


def greedy_decode_lists(step, h0, bos_id, eos_id, max_len):
    prev = torch.full((h0.shape[0],), bos_id, device=h0.device)
    done = torch.zeros(h0.shape[0], dtype=torch.bool, device=h0.device)
    columns, h = [], h0
    while len(columns) < max_len and not done.all():
        logits, h = step(prev, h)
        prev = logits.argmax(-1).masked_fill(done, eos_id)
        columns.append(prev)
        done = done | (prev == eos_id)
    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    tokens[:, : len(columns)] = torch.stack(columns, dim=1)
    return tokens


# --- ch02_attention ---


def dot_scores_bmm(query, keys):
    return torch.bmm(keys, query.unsqueeze(2)).squeeze(2)


def additive_scores_einsum(query, keys, W_q, W_k, v):
    energies = torch.tanh(F.linear(query, W_q).unsqueeze(1) + F.linear(keys, W_k))
    return torch.einsum("bta,a->bt", energies, v)


def lengths_to_mask_expand(lengths, T):
    positions = torch.arange(T, device=lengths.device).expand(len(lengths), T)
    return positions < lengths.unsqueeze(1)


def masked_softmax_fill_lowest(scores, mask):
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def masked_softmax_by_hand(scores, mask):
    """Subtracts the maximum of the allowed scores; a zero total gives zeros."""
    lowest = torch.finfo(scores.dtype).min
    filled = torch.where(mask, scores, lowest)
    shifted = filled - filled.amax(dim=-1, keepdim=True).detach()
    exp = torch.where(mask, shifted.exp(), 0.0)
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, 1.0)


def attend_bmm(query, keys, values, mask, W_q, W_k, v):
    scores = additive_scores_einsum(query, keys, W_q, W_k, v)
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    weights = masked_softmax_fill_lowest(scores, mask)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


# --- ch03_self_attention ---


def sdpa_by_hand(q, k, v):
    scores = (q / math.sqrt(q.shape[-1])) @ k.mT
    weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v, weights


def self_attention_einsum(x, W_q, W_k, W_v):
    q, k = F.linear(x, W_q), torch.einsum("btd,kd->btk", x, W_k)
    scores = torch.einsum("bqd,bkd->bqk", q, k) * q.shape[-1] ** -0.5
    weights = F.softmax(scores, dim=-1)
    return weights @ F.linear(x, W_v), weights


def pe_by_slices(T, D, base=10000.0, dtype=torch.float32, device=None):
    pe = torch.zeros(T, D, device=device)
    position = torch.arange(T, device=device).float().unsqueeze(1)
    frequency = torch.exp(torch.arange(0, D, 2, device=device).float() * (-math.log(base) / D))
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency)[:, : D // 2]
    return pe.to(dtype)


# --- ch04_masking ---


def causal_by_comparison(T, device=None):
    positions = torch.arange(T, device=device)
    return positions[None, :] <= positions[:, None]


def padding_by_counting(lengths, T, device=None):
    device = lengths.device if device is None else device
    counts = torch.ones(len(lengths), T, dtype=torch.long, device=device).cumsum(dim=1)
    return counts <= lengths.to(device)[:, None]  # position t is count t + 1


def masked_with_minus_infinity(q, k, v, mask=None):
    """-inf fill, then the NaN of empty rows replaced before the weights reach v."""
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights


def causal_self_by_hand(x, W_q, W_k, W_v, lengths=None):
    T = x.shape[1]
    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None]  # (1, T, T)
    if lengths is not None:
        real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        allowed = allowed & real[:, None, :] & real[:, :, None]
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    scores = (q @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~allowed, -1e4)
    weights = torch.softmax(scores, dim=-1) * allowed
    return weights @ v, weights


# --- ch05_multihead ---


def split_by_chunks(x, num_heads):
    if x.shape[-1] % num_heads:
        raise ValueError("D must be a multiple of num_heads")
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def merge_by_concatenation(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


def mha_head_by_head(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    """One head at a time, with F.linear and -inf fills, the NaN removed before v."""
    d = query.shape[-1] // num_heads
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    outputs, maps = [], []
    for i in range(num_heads):
        rows = slice(i * d, (i + 1) * d)
        q = F.linear(query, W_q[rows], b_q[rows])
        k = F.linear(key, W_k[rows], b_k[rows])
        v = F.linear(value, W_v[rows], b_v[rows])
        scores = q @ k.mT / math.sqrt(d)  # (B, Tq, Tk)
        if mask is not None:
            head_mask = mask.expand(-1, num_heads, -1, -1)[:, i] if mask.dim() == 4 else mask
            scores = scores.masked_fill(~head_mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        outputs.append(weights @ v)
        maps.append(weights)
    return F.linear(torch.cat(outputs, dim=-1), W_o, b_o), torch.stack(maps, dim=1)


# --- ch06_transformer ---


def layer_norm_var_mean(x, gamma, beta, eps=1e-5):
    variance, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)  # (..., 1) each
    return (x - mean) / torch.sqrt(variance + eps) * gamma + beta


def feed_forward_linear(x, W1, b1, W2, b2):
    return F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)


def _additive_mask(mask, num_heads, dtype):
    """A course mask (True = may attend; (T, S) or (B, T, S)) as a float attn_mask of
    nn.MultiheadAttention: 0 where allowed, -inf elsewhere; (T, S) or (B*h, T, S)."""
    if mask is None:
        return None
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    additive = additive.masked_fill(~mask, float("-inf"))
    if mask.dim() == 3:
        B, T, S = mask.shape
        additive = additive[:, None].expand(B, num_heads, T, S).reshape(B * num_heads, T, S)
    return additive


class EncoderLayerOfModules(EncoderLayer):
    """The norms and linear maps called as modules, the mask made additive."""

    def forward(self, x, mask=None):
        attn_mask = _additive_mask(mask, self.self_attn.num_heads, x.dtype)

        def attend(h):  # (B, T, D)
            return self.self_attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]

        def ffn(h):  # (B, T, D)
            return self.linear2(F.relu(self.linear1(h)))

        if self.norm_first:
            x = x + attend(self.norm1(x))
            return x + ffn(self.norm2(x))
        x = self.norm1(x + attend(x))
        return self.norm2(x + ffn(x))


class DecoderLayerOfModules(DecoderLayer):
    """The norms and linear maps called as modules, the masks made additive."""

    def forward(self, y, memory, tgt_mask=None, memory_mask=None):
        h = self.self_attn.num_heads
        self_mask = _additive_mask(tgt_mask, h, y.dtype)
        cross_mask = _additive_mask(memory_mask, h, y.dtype)

        def attend_self(z):  # (B, Tq, D)
            return self.self_attn(z, z, z, attn_mask=self_mask, need_weights=False)[0]

        def attend_memory(z):  # (B, Tq, D)
            cross = self.multihead_attn
            return cross(z, memory, memory, attn_mask=cross_mask, need_weights=False)[0]

        def ffn(z):  # (B, Tq, D)
            return self.linear2(F.relu(self.linear1(z)))

        if self.norm_first:
            y = y + attend_self(self.norm1(y))
            y = y + attend_memory(self.norm2(y))
            return y + ffn(self.norm3(y))
        y = self.norm1(y + attend_self(y))
        y = self.norm2(y + attend_memory(y))
        return self.norm3(y + ffn(y))


# --- ch07_vit ---


def patchify_einsum(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"{H}x{W} images do not split into {p}x{p} patches")
    grid = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("bcipjq->bijcpq", grid).reshape(B, -1, C * p * p)  # (B, N, C*p*p)


class PatchEmbeddingPositionsApart(PatchEmbedding):
    """Projects by hand; the class token and the patches get their positions apart."""

    def forward(self, images):
        patches = patchify_einsum(images, self.patch_size)  # (B, N, C*p*p)
        tokens = patches @ self.proj.weight.T + self.proj.bias  # (B, N, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(len(images), -1, -1)  # (B, 1, D)
        return torch.cat((cls, tokens + self.pos_embed[:, 1:]), dim=1)  # (B, N+1, D)


class ViTNormOfClassToken(ViT):
    """Normalises the class token alone: the norm acts on each token by itself."""

    def forward(self, images):
        x = self.patch_embed(images)  # (B, N+1, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))  # (B, num_classes)


CORRECT = {
    "ch01_seq2seq": {
        "linear, gather, pad, logsumexp, lists": {
            "rnn_cell": rnn_cell_linear,
            "rnn_encode": rnn_encode_gather,
            "shift_right": shift_right_pad,
            "sequence_cross_entropy": sequence_cross_entropy_logsumexp,
            "greedy_decode": greedy_decode_lists,
        },
        # The encoder runs in the student's namespace, where rnn_cell is the reference's.
        "float mask": {"rnn_encode": rnn_encode_float_mask},
    },
    "ch02_attention": {
        "bmm, einsum, expand, fill": {
            "dot_scores": dot_scores_bmm,
            "additive_scores": additive_scores_einsum,
            "lengths_to_mask": lengths_to_mask_expand,
            "masked_softmax": masked_softmax_fill_lowest,
            "attend": attend_bmm,
        },
        "softmax by hand": {"masked_softmax": masked_softmax_by_hand},
    },
    "ch03_self_attention": {
        "by hand, einsum, slices": {
            "scaled_dot_product_attention": sdpa_by_hand,
            "self_attention": self_attention_einsum,
            "sinusoidal_positional_encoding": pe_by_slices,
        },
    },
    "ch04_masking": {
        "comparison, counting, -inf, by hand": {
            "causal_mask": causal_by_comparison,
            "padding_mask": padding_by_counting,
            "masked_attention": masked_with_minus_infinity,
            "causal_self_attention": causal_self_by_hand,
        },
    },
    "ch05_multihead": {
        "chunks, concatenation, head by head": {
            "split_heads": split_by_chunks,
            "merge_heads": merge_by_concatenation,
            "multi_head_attention": mha_head_by_head,
        },
    },
    "ch06_transformer": {
        "var_mean, F.linear, modules": {
            "layer_norm": layer_norm_var_mean,
            "feed_forward": feed_forward_linear,
            "EncoderLayer": EncoderLayerOfModules,
            "DecoderLayer": DecoderLayerOfModules,
        },
    },
    "ch07_vit": {
        "einsum, positions apart, class token norm": {
            "patchify": patchify_einsum,
            "PatchEmbedding": PatchEmbeddingPositionsApart,
            "ViT": ViTNormOfClassToken,
        },
    },
}
