"""Known mistakes of chapter 6: layer norm, the feed-forward block, encoder and decoder layers.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error; the mistakes of the two layers are subclasses of the
reference whose ``forward`` carries the error. They are tried in this order.
"""

import torch
import torch.nn.functional as F

from autograder.kit.mistakes import KnownMistakes
from solutions.ch06_transformer import DecoderLayer, EncoderLayer

LEAK_MARKER = "LEAK-MARKER-autograder-ch06-5be1c0d7"

LN = "layer_norm"
FFN = "feed_forward"
ENC = "EncoderLayer"
DEC = "DecoderLayer"

mistake = KnownMistakes()


# --- layer_norm(x (..., D), gamma (D,), beta (D,), eps) ---


def _normalise(x, gamma, beta, eps, dim=-1, unbiased=False):
    """(x - mean) / sqrt(var + eps) * gamma + beta over ``dim`` (a dim or a tuple of dims)."""
    mean = x.mean(dim=dim, keepdim=True)
    variance = x.var(dim=dim, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(variance + eps) * gamma + beta


@mistake(
    LN,
    "the variance is the unbiased one (divided by D - 1, the default of x.var() and x.std()); "
    "layer norm divides by D (unbiased=False).",
)
def ln_unbiased_variance(x, gamma, beta, eps=1e-5):
    return _normalise(x, gamma, beta, eps, unbiased=True)


@mistake(
    LN,
    "eps is added to the standard deviation, (x - mean) / (std + eps), instead of to the "
    "variance under the square root, (x - mean) / sqrt(var + eps).",
)
def ln_eps_outside_sqrt(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = x.var(dim=-1, keepdim=True, unbiased=False).sqrt()
    return (x - mean) / (std + eps) * gamma + beta


@mistake(LN, "eps is left out: divide by sqrt(var + eps), not by sqrt(var).")
def ln_no_eps(x, gamma, beta, eps=1e-5):
    return _normalise(x, gamma, beta, 0.0)


@mistake(LN, "the eps argument is ignored (1e-5 is hard-coded).")
def ln_eps_hard_coded(x, gamma, beta, eps=1e-5):
    return _normalise(x, gamma, beta, 1e-5)


@mistake(
    LN,
    "the mean and variance are taken over the first dimension (the batch), not over the last "
    "dimension (the features of each vector).",
)
def ln_over_first_dim(x, gamma, beta, eps=1e-5):
    return _normalise(x, gamma, beta, eps, dim=0)


@mistake(
    LN,
    "the mean and variance are taken over the whole tensor, not over the last dimension of "
    "each vector.",
)
def ln_over_all_dims(x, gamma, beta, eps=1e-5):
    return _normalise(x, gamma, beta, eps, dim=tuple(range(x.dim())))


@mistake(LN, "gamma and beta are swapped: scale by gamma, then shift by beta.")
def ln_gamma_beta_swapped(x, gamma, beta, eps=1e-5):
    return _normalise(x, beta, gamma, eps)


@mistake(LN, "gamma and beta are not applied: the result must be normalised * gamma + beta.")
def ln_no_affine(x, gamma, beta, eps=1e-5):
    return _normalise(x, 1.0, 0.0, eps)


@mistake(
    LN,
    "the variance is the mean of x squared, without subtracting the mean first; use "
    "((x - mean) ** 2).mean(-1).",
)
def ln_uncentred_variance(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    second_moment = x.square().mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(second_moment + eps) * gamma + beta


@mistake(LN, "the mean is not subtracted: the result must be (x - mean) / sqrt(var + eps).")
def ln_mean_not_subtracted(x, gamma, beta, eps=1e-5):
    variance = x.var(dim=-1, keepdim=True, unbiased=False)
    return x / torch.sqrt(variance + eps) * gamma + beta


# --- feed_forward(x (..., D), W1 (F, D), b1 (F,), W2 (D, F), b2 (D,)) ---


def _ffn(x, W1, b1, W2, b2, activation=torch.relu):
    return activation(x @ W1.T + b1) @ W2.T + b2


@mistake(FFN, "the activation is GELU; this block uses ReLU between the two linear maps.")
def ffn_gelu(x, W1, b1, W2, b2):
    return _ffn(x, W1, b1, W2, b2, F.gelu)


@mistake(FFN, "there is no activation between the two linear maps (ReLU is missing).")
def ffn_no_activation(x, W1, b1, W2, b2):
    return _ffn(x, W1, b1, W2, b2, lambda hidden: hidden)


@mistake(FFN, "the activation is tanh; this block uses ReLU.")
def ffn_tanh(x, W1, b1, W2, b2):
    return _ffn(x, W1, b1, W2, b2, torch.tanh)


@mistake(
    FFN,
    "the weights are applied as x @ W instead of x @ W.T (they are stored as "
    "(out_features, in_features)).",
)
def ffn_untransposed_weights(x, W1, b1, W2, b2):
    return torch.relu(x @ W1 + b1) @ W2 + b2


@mistake(FFN, "a ReLU is also applied after the second linear map; the output has no activation.")
def ffn_relu_on_output(x, W1, b1, W2, b2):
    return torch.relu(_ffn(x, W1, b1, W2, b2))


@mistake(FFN, "b1 is added after the ReLU; it belongs inside it, relu(x @ W1.T + b1).")
def ffn_bias_after_relu(x, W1, b1, W2, b2):
    return (torch.relu(x @ W1.T) + b1) @ W2.T + b2


@mistake(FFN, "the ReLU is applied to the input x before the first linear map, not after it.")
def ffn_relu_on_input(x, W1, b1, W2, b2):
    return (torch.relu(x) @ W1.T + b1) @ W2.T + b2


@mistake(FFN, "the biases b1 and b2 are not added.")
def ffn_no_biases(x, W1, b1, W2, b2):
    return torch.relu(x @ W1.T) @ W2.T


@mistake(
    FFN,
    "the input x is added to the output; the residual connection belongs to the layer that "
    "calls the block, not to the block.",
)
def ffn_with_residual(x, W1, b1, W2, b2):
    return x + _ffn(x, W1, b1, W2, b2)


@mistake(FFN, "b1 and b2 are swapped: b1 (D_ff,) goes with W1, b2 (D,) with W2.")
def ffn_biases_swapped(x, W1, b1, W2, b2):
    return torch.relu(x @ W1.T + b2) @ W2.T + b1


# --- the layers: masks, sublayers and their Add & Norm, with the knobs mistakes turn ---


def _pytorch_mask(mask, num_heads, invert=True, interleave=True):
    """The course mask (True = may attend) as nn.MultiheadAttention's attn_mask."""
    if mask is None:
        return None
    forbidden = ~mask if invert else mask
    if forbidden.dim() == 3:
        if interleave:
            forbidden = forbidden.repeat_interleave(num_heads, dim=0)
        else:  # head-major: batch b's heads get the masks of other batch entries
            forbidden = forbidden.repeat(num_heads, 1, 1)
    return forbidden


def _add_norm(x, sublayer, norm, norm_first, residual=True, style="standard"):
    """One sublayer with its residual and its norm; ``style`` names a wrong wiring."""
    if norm_first:
        h = norm(x)
        out = sublayer(h)
        if not residual:
            return out
        return (h if style == "normed_residual" else x) + out
    out = sublayer(x)
    if not residual:
        return norm(out)
    if style == "norm_then_add":
        return x + norm(out)
    return norm(x + out)


def _ffn_of(layer, activation=torch.relu):
    return lambda h: layer.linear2(activation(layer.linear1(h)))


def _attention(module, source=None, attn_mask=None):
    """h -> module(h, kv, kv) with kv = h, or ``source`` when given."""

    def attend(h):
        kv = h if source is None else source
        out, _ = module(h, kv, kv, attn_mask=attn_mask, need_weights=False)
        return out

    return attend


def _encode(layer, x, mask, flip_norm=False, residuals=(True, True), invert=True,
            interleave=True, use_mask=True, activation=torch.relu, swap_norms=False,
            style="standard"):  # fmt: skip
    norm_first = layer.norm_first != flip_norm
    heads = layer.self_attn.num_heads
    attn_mask = _pytorch_mask(mask if use_mask else None, heads, invert, interleave)
    norms = (layer.norm2, layer.norm1) if swap_norms else (layer.norm1, layer.norm2)
    attend = _attention(layer.self_attn, attn_mask=attn_mask)
    x = _add_norm(x, attend, norms[0], norm_first, residuals[0], style)
    return _add_norm(x, _ffn_of(layer, activation), norms[1], norm_first, residuals[1], style)


def _decode(layer, y, memory, tgt_mask, memory_mask, flip_norm=False,
            residuals=(True, True, True), invert=True, interleave=True, use_tgt_mask=True,
            use_memory_mask=True, cross_module="multihead_attn", cross_on_memory=True,
            cross_first=False, activation=torch.relu, swap_norms=False,
            style="standard"):  # fmt: skip
    norm_first = layer.norm_first != flip_norm
    heads = layer.self_attn.num_heads
    self_mask = _pytorch_mask(tgt_mask if use_tgt_mask else None, heads, invert, interleave)
    cross_mask = _pytorch_mask(memory_mask if use_memory_mask else None, heads, invert, interleave)
    attend_self = _attention(layer.self_attn, attn_mask=self_mask)
    source = memory if cross_on_memory else None
    attend_memory = _attention(getattr(layer, cross_module), source, cross_mask)
    norms = [layer.norm1, layer.norm2, layer.norm3]
    if swap_norms:
        norms[0], norms[1] = norms[1], norms[0]
    first, second = (attend_memory, attend_self) if cross_first else (attend_self, attend_memory)
    y = _add_norm(y, first, norms[0], norm_first, residuals[0], style)
    y = _add_norm(y, second, norms[1], norm_first, residuals[1], style)
    return _add_norm(y, _ffn_of(layer, activation), norms[2], norm_first, residuals[2], style)


# --- EncoderLayer.forward(x (B, T, D), mask=None) ---


@mistake(
    ENC,
    "post-norm and pre-norm are swapped: norm_first=False is norm(x + sublayer(x)), "
    "norm_first=True is x + sublayer(norm(x)).",
)
class EncoderNormFirstSwapped(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, flip_norm=True)


@mistake(ENC, "the residual connection around the self-attention is missing.")
class EncoderNoAttentionResidual(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, residuals=(False, True))


@mistake(ENC, "the residual connection around the feed-forward block is missing.")
class EncoderNoFeedForwardResidual(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, residuals=(True, False))


@mistake(
    ENC,
    "the mask is passed to nn.MultiheadAttention as it is; its attn_mask means True = may NOT "
    "attend, so pass ~mask.",
)
class EncoderMaskNotInverted(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, invert=False)


@mistake(
    ENC,
    "a (B, T, T) mask is repeated with mask.repeat(h, 1, 1); nn.MultiheadAttention wants the "
    "h heads of each batch entry together: mask.repeat_interleave(h, dim=0).",
)
class EncoderMaskHeadMajor(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, interleave=False)


@mistake(ENC, "the mask is ignored: pass it (inverted) to the self-attention as attn_mask.")
class EncoderMaskIgnored(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, use_mask=False)


@mistake(ENC, "the feed-forward block uses GELU; this layer uses ReLU.")
class EncoderGelu(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, activation=F.gelu)


@mistake(
    ENC,
    "the norms are in the wrong order: norm1 goes with the self-attention, norm2 with the "
    "feed-forward block.",
)
class EncoderNormsSwapped(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, swap_norms=True)


@mistake(
    ENC,
    "post-norm adds the residual after the norm, x + norm(sublayer(x)); it is "
    "norm(x + sublayer(x)).",
)
class EncoderAddAfterNorm(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, style="norm_then_add")


@mistake(
    ENC,
    "pre-norm adds the sublayer to the normalised input, norm(x) + sublayer(norm(x)); the "
    "residual carries x itself: x + sublayer(norm(x)).",
)
class EncoderNormalisedResidual(EncoderLayer):
    def forward(self, src, mask=None):
        return _encode(self, src, mask, style="normed_residual")


# --- DecoderLayer.forward(y (B, Tq, D), memory (B, Tk, D), tgt_mask, memory_mask) ---


@mistake(
    DEC,
    "post-norm and pre-norm are swapped: norm_first=False is norm(y + sublayer(y)), "
    "norm_first=True is y + sublayer(norm(y)).",
)
class DecoderNormFirstSwapped(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, flip_norm=True)


@mistake(DEC, "the residual connection around the self-attention is missing.")
class DecoderNoSelfResidual(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, residuals=(False, True, True))


@mistake(DEC, "the residual connection around the cross-attention is missing.")
class DecoderNoCrossResidual(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, residuals=(True, False, True))


@mistake(DEC, "the residual connection around the feed-forward block is missing.")
class DecoderNoFeedForwardResidual(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, residuals=(True, True, False))


@mistake(
    DEC,
    "the masks are passed to nn.MultiheadAttention as they are; its attn_mask means True = may "
    "NOT attend, so pass ~tgt_mask and ~memory_mask.",
)
class DecoderMasksNotInverted(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, invert=False)


@mistake(
    DEC,
    "tgt_mask (the causal mask) is ignored: without it every target position sees the later ones.",
)
class DecoderTgtMaskIgnored(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, use_tgt_mask=False)


@mistake(DEC, "memory_mask is ignored: pass it (inverted) to the cross-attention.")
class DecoderMemoryMaskIgnored(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, use_memory_mask=False)


@mistake(
    DEC,
    "the cross-attention takes its keys and values from the target y; they come from memory "
    "(the encoder's output), the queries from y.",
)
class DecoderCrossOnTarget(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, cross_on_memory=False)


@mistake(
    DEC,
    "the cross-attention uses self.self_attn's weights; it has its own module, "
    "self.multihead_attn.",
)
class DecoderCrossWithSelfWeights(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, cross_module="self_attn")


@mistake(DEC, "the cross-attention comes before the self-attention; self-attention comes first.")
class DecoderCrossFirst(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, cross_first=True)


@mistake(
    DEC,
    "a (B, Tq, T) mask is repeated with mask.repeat(h, 1, 1); nn.MultiheadAttention wants the h "
    "heads of each batch entry together: mask.repeat_interleave(h, dim=0).",
)
class DecoderMaskHeadMajor(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, interleave=False)


@mistake(
    DEC,
    "the norms are in the wrong order: norm1 goes with the self-attention, norm2 with the "
    "cross-attention, norm3 with the feed-forward block.",
)
class DecoderNormsSwapped(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, swap_norms=True)


@mistake(
    DEC,
    "post-norm adds the residual after the norm, y + norm(sublayer(y)); it is "
    "norm(y + sublayer(y)).",
)
class DecoderAddAfterNorm(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, style="norm_then_add")


@mistake(DEC, "the feed-forward block uses GELU; this layer uses ReLU.")
class DecoderGelu(DecoderLayer):
    def forward(self, tgt, mem, tgt_mask=None, memory_mask=None):
        return _decode(self, tgt, mem, tgt_mask, memory_mask, activation=F.gelu)


MUTANTS = mistake.mutants
