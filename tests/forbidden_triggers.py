"""One small call that reaches each forbidden operation, by a name built at run time.

``TRIGGERS[operation]()`` reaches ``operation`` (a key of
``autograder.runtime.operations.OPERATIONS``) on tiny CPU tensors, through ``getattr`` on
a name assembled from pieces, so that no forbidden name stands in the caller's source. The
batteries' tests put a trigger inside an otherwise correct answer: the whole function must
then score zero, and its feedback must name the operation.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def _get(owner, *pieces):
    return getattr(owner, "".join(pieces))


def _x(*shape):
    return torch.randn(*shape)


def _recurrent():
    _get(nn, "GR", "U")(3, 4, batch_first=True)(_x(2, 5, 3))


def _cross_entropy():
    _get(F, "cross_", "entropy")(_x(4, 3), torch.tensor([0, 1, 2, 0]))


def _nll_loss():
    _get(F, "nll_", "loss")(torch.log_softmax(_x(4, 3), -1), torch.tensor([0, 1, 2, 0]))


def _sdpa():
    q = _x(2, 3, 4)
    _get(F, "scaled_dot_", "product_attention")(q, q, q)


def _flex_attention():
    module = importlib.import_module("torch.nn.attention." + "flex_attention")
    q = _x(1, 1, 4, 8)
    _get(module, "flex_", "attention")(q, q, q)


def _mha():
    q = _x(2, 3, 4)
    _get(nn, "Multihead", "Attention")(4, 2, batch_first=True)(q, q, q)


def _mha_forward():
    q = _x(3, 2, 4)
    layer = nn.Linear(4, 12)
    out = nn.Linear(4, 4)
    _get(F, "multi_head_", "attention_forward")(
        q, q, q, 4, 2, layer.weight, layer.bias, None, None, False, 0.0, out.weight, out.bias
    )


def _masked_softmax():
    x = _x(2, 3)
    _get(torch, "_safe_", "softmax")(x, -1)


def _layer_norm():
    _get(F, "layer_", "norm")(_x(2, 4), (4,))


def _other_norms():
    _get(F, "group_", "norm")(_x(2, 4, 3), 2)


def _encoder_layer():
    _get(nn, "TransformerEncoder", "Layer")(4, 2, 8, batch_first=True)(_x(2, 3, 4))


def _decoder_layer():
    layer = _get(nn, "TransformerDecoder", "Layer")(4, 2, 8, batch_first=True)
    layer(_x(2, 3, 4), _x(2, 5, 4))


def _encoder():
    layer = nn.TransformerEncoderLayer(4, 2, 8, batch_first=True)
    _get(nn, "Transformer", "Encoder")(layer, 1, enable_nested_tensor=False)(_x(2, 3, 4))


def _decoder():
    layer = nn.TransformerDecoderLayer(4, 2, 8, batch_first=True)
    _get(nn, "Transformer", "Decoder")(layer, 1)(_x(2, 3, 4), _x(2, 5, 4))


def _transformer():
    model = _get(nn, "Trans", "former")(4, 2, 1, 1, 8, batch_first=True)
    model(_x(2, 3, 4), _x(2, 5, 4))


def _unfold():
    _get(F, "un", "fold")(_x(1, 2, 4, 4), 2, stride=2)


def _convolution():
    _get(torch, "conv", "2d")(_x(1, 2, 4, 4), _x(3, 2, 2, 2), stride=2)


def _pixel_unshuffle():
    _get(F, "pixel_", "unshuffle")(_x(1, 2, 4, 4), 2)


TRIGGERS = {
    "recurrent layers (nn.RNN/GRU/LSTM and their cells)": _recurrent,
    "F.cross_entropy": _cross_entropy,
    "F.nll_loss": _nll_loss,
    "F.scaled_dot_product_attention": _sdpa,
    "flex_attention": _flex_attention,
    "nn.MultiheadAttention": _mha,
    "F.multi_head_attention_forward": _mha_forward,
    "torch._masked_softmax / torch._safe_softmax": _masked_softmax,
    "F.layer_norm": _layer_norm,
    "F.batch_norm / F.group_norm / F.instance_norm / F.rms_norm": _other_norms,
    "nn.TransformerEncoderLayer": _encoder_layer,
    "nn.TransformerDecoderLayer": _decoder_layer,
    "nn.TransformerEncoder": _encoder,
    "nn.TransformerDecoder": _decoder,
    "nn.Transformer": _transformer,
    "F.unfold": _unfold,
    "convolution": _convolution,
    "F.pixel_unshuffle": _pixel_unshuffle,
}
