"""Every reference of every chapter on ``meta`` and on CUDA, and leaving its inputs unmodified.

One table holds, for every contract name of ``autograder.contracts.ASSIGNMENTS`` in order,
an input builder: ``(generator) -> (args, kwargs)`` for a function, ``(generator) ->
(module, args, kwargs)`` for a class (the reference class built with its ``__init__``
arguments). The inputs reach the most code: distinct non-square sizes, masks with fully
masked rows, unsorted lengths with a length 1. A second row, named by its variant, is added
only where leaving out an optional argument runs other code that creates tensors.

For every row: the reference leaves its input tensors (and a module its own parameters and
buffers) unmodified; on ``meta`` it gives the CPU outputs' structure, shapes and dtypes, all
on ``meta`` (a tensor created on a fixed device fails there); on CUDA in float32, float16 and
bfloat16 it matches its float64 CPU result (skipped without a GPU). A ``torch.device``
argument (the factory functions') follows the tensors, and a floating ``torch.dtype``
argument follows their dtype. The comparisons with PyTorch stay in ``test_ref_<id>.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from helpers import (
    CUDA_TOLERANCES,
    assert_close,
    assert_same_layout_on_meta,
    assert_unmodified,
    cuda_dtypes,
    move,
    moved_module,
    randn,
    tensors_of,
    tree_map,
)
from torch import nn

from autograder.contracts import ASSIGNMENTS
from solutions.ch06_transformer import DecoderLayer, EncoderLayer
from solutions.ch07_vit import PatchEmbedding, ViT

B, TQ, TK = 3, 5, 7  # batch, query length, key length
D, DV, A = 4, 6, 10  # query and key dim (a head's dim), value dim, additive attention dim
H, DM, DFF = 3, 12, 20  # heads, model dim (3 heads of 4), feed-forward hidden dim
V, BOS, EOS, PAD = 9, 1, 2, -100  # vocabulary and its special tokens (PAD outside it)
LENGTHS, LENGTHS_Q = [7, 1, 4], [5, 3, 1]  # unsorted, with a length 1; of TK and TQ
C, HEIGHT, WIDTH, P, CLASSES, DEPTH = 3, 8, 12, 4, 5, 2  # images of 2 x 3 patches
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Row:
    """One contract name, the builder of its inputs and, for a second row, its variant."""

    chapter: str
    name: str
    build: Callable
    variant: str = ""

    @property
    def id(self) -> str:
        return "-".join(part for part in (self.chapter, self.name, self.variant) if part)


# Shared inputs ----------------------------------------------------------------------------


def random_mask(gen, *shape):
    """A random bool mask of ``shape``, True = may attend."""
    return torch.rand(*shape, generator=gen) < 0.6


def lengths_mask(lengths, T):
    """(B, T) bool, True where the position is below the sequence's length."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def padded_causal_mask(lengths_q, lengths_k):
    """(B, Tq, Tk) causal mask over the real tokens; a padded query sees key 0, as PyTorch's
    attention (which the layers run) gives NaN on a row with nothing allowed."""
    tq, tk = max(lengths_q), max(lengths_k)
    real_q, real_k = lengths_mask(lengths_q, tq), lengths_mask(lengths_k, tk)  # (B, Tq), (B, Tk)
    causal = torch.ones(tq, tk, dtype=torch.bool).tril()  # (Tq, Tk)
    key_0 = torch.arange(tk) == 0  # (Tk,)
    return causal & real_k[:, None, :] | ~real_q[:, :, None] & key_0  # (B, Tq, Tk)


def module_of(cls, *init_args, gen, **init_kwargs):
    """``cls(*init_args, **init_kwargs)`` in float64, initialised from ``gen``, every parameter
    then moved off its initial value (the layer norms off their ones and zeros)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (), generator=gen)))
        module = cls(*init_args, **init_kwargs).to(torch.float64)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.2 * randn(*parameter.shape, generator=gen))
    return module


# ch01_seq2seq -----------------------------------------------------------------------------


def rnn_weights(gen):
    """W_ih (DV, D), W_hh (DV, DV), b (DV,): an RNN from D inputs to a DV hidden state."""
    return (
        randn(DV, D, generator=gen) * 0.5,
        randn(DV, DV, generator=gen) * 0.5,
        randn(DV, generator=gen),
    )


def rnn_cell_inputs(gen):
    x_t, h_prev = randn(B, D, generator=gen), randn(B, DV, generator=gen)
    return (x_t, h_prev, *rnn_weights(gen)), {}


def rnn_encode_inputs_without_lengths(gen):
    x, h0 = randn(B, TK, D, generator=gen), randn(B, DV, generator=gen)
    return (x, h0, *rnn_weights(gen)), {}


def rnn_encode_inputs(gen):
    (x, h0, *weights), _ = rnn_encode_inputs_without_lengths(gen)
    return (x, h0, *weights, torch.tensor(LENGTHS)), {}


def shift_right_inputs(gen):
    return (torch.randint(0, V, (B, TK), generator=gen), BOS), {}


def sequence_cross_entropy_inputs(gen):
    logits = randn(B, TK, V, generator=gen) * 3
    targets = torch.randint(0, V, (B, TK), generator=gen)
    targets = torch.where(lengths_mask(LENGTHS, TK), targets, PAD)  # (B, TK)
    return (logits, targets, PAD), {}


# Rows finish at different steps, and go on after eos with other tokens.
SCRIPT = [[5, 3, EOS, 7, 7, 7, 7, 7], [EOS, 4, 4, 4, 4, 4, 4, 4], [6, 6, 3, 8, EOS, 5, 5, 5]]


class ScriptedStep:
    """A decoder step that emits ``script[row, t]`` at its t-th call, whatever it is fed.

    Its state h (B, 2) holds each row's index and the step counter, so it runs on any
    device and in any dtype, and the low-precision argmax is the float64 one.
    """

    def __init__(self, script):
        self.script = script  # (B, S) long

    def __call__(self, prev_tokens, h):
        rows, t = h[:, 0].long(), h[:, 1].long()  # (B,), (B,)
        tokens = self.script.to(h.device)[rows, t]  # (B,)
        vocabulary = torch.arange(V, device=h.device)  # (V,)
        logits = (vocabulary == tokens[:, None]).to(h.dtype) * 5  # (B, V)
        return logits, torch.stack((h[:, 0], h[:, 1] + 1), dim=1)  # (B, V), (B, 2)


def greedy_decode_inputs(gen):
    h0 = torch.stack((torch.arange(B), torch.zeros(B)), dim=1).double()  # (B, 2)
    return (ScriptedStep(torch.tensor(SCRIPT)), h0, BOS, EOS, len(SCRIPT[0])), {}


# ch02_attention ---------------------------------------------------------------------------


def dot_scores_inputs(gen):
    return (randn(B, D, generator=gen), randn(B, TK, D, generator=gen)), {}


def additive_weights(gen):
    """W_q (A, D), W_k (A, DV), v (A,): queries of D and keys of DV features."""
    return randn(A, D, generator=gen), randn(A, DV, generator=gen), randn(A, generator=gen)


def additive_scores_inputs(gen):
    query, keys = randn(B, D, generator=gen), randn(B, TK, DV, generator=gen)
    return (query, keys, *additive_weights(gen)), {}


def lengths_to_mask_inputs(gen):
    return (torch.tensor(LENGTHS), TK), {}


def masked_softmax_inputs(gen):
    mask = random_mask(gen, B, TQ, TK)
    mask[2, 1] = False  # a fully masked row
    return (randn(B, TQ, TK, generator=gen) * 3, mask), {}


def attend_inputs(gen):
    query, keys = randn(B, D, generator=gen), randn(B, TK, DV, generator=gen)
    values = randn(B, TK, DM, generator=gen)
    mask = lengths_mask(LENGTHS, TK)
    mask[1] = False  # a sequence with nothing allowed
    return (query, keys, values, mask, *additive_weights(gen)), {}


# ch03_self_attention ----------------------------------------------------------------------


def scaled_dot_product_attention_inputs(gen):
    q = randn(B, H, TQ, D, generator=gen)
    return (q, randn(B, H, TK, D, generator=gen), randn(B, H, TK, DV, generator=gen)), {}


def projections(gen):
    """W_q (D, DM), W_k (D, DM), W_v (DV, DM), at the scale that keeps the scores near 1."""
    shapes = [(D, DM), (D, DM), (DV, DM)]
    return tuple(randn(*shape, generator=gen) / DM**0.5 for shape in shapes)


def self_attention_inputs(gen):
    return (randn(B, TQ, DM, generator=gen), *projections(gen)), {}


def positional_encoding_inputs(gen):
    return (30, 11), {"dtype": torch.float64, "device": CPU}  # odd D, angles up to 29


# ch04_masking -----------------------------------------------------------------------------


def causal_mask_inputs(gen):
    return (TK,), {"device": CPU}


def padding_mask_inputs(gen):
    return (torch.tensor(LENGTHS), TK), {}


def masked_attention_inputs(gen):
    q, k = randn(B, TQ, D, generator=gen), randn(B, TK, D, generator=gen)
    mask = random_mask(gen, B, TQ, TK)
    mask[:, 0] = False  # query 0 may attend nothing
    return (q, k, randn(B, TK, DV, generator=gen), mask), {}


def causal_self_attention_inputs(gen):
    x = randn(B, TK, DM, generator=gen)
    return (x, *projections(gen), torch.tensor(LENGTHS)), {}


# ch05_multihead ---------------------------------------------------------------------------


def split_heads_inputs(gen):
    return (randn(B, TQ, DM, generator=gen), H), {}


def merge_heads_inputs(gen):
    return (randn(B, H, TQ, D, generator=gen),), {}


def multi_head_attention_inputs(gen):
    query = randn(B, TQ, DM, generator=gen)
    key, value = randn(B, TK, DM, generator=gen), randn(B, TK, DM, generator=gen)
    params = [
        randn(*shape, generator=gen) / (D if len(shape) == 2 else 1)
        for shape in [(DM, DM), (DM,)] * 4
    ]  # W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o
    mask = random_mask(gen, B, TQ, TK)  # the same for every head
    mask[1, 3] = False  # a fully masked row
    return (query, key, value, *params, H, mask), {}


# ch06_transformer -------------------------------------------------------------------------


def layer_norm_inputs(gen):
    x = randn(B, TQ, DV, generator=gen) + 2.0
    return (x, randn(DV, generator=gen), randn(DV, generator=gen)), {}


def feed_forward_inputs(gen):
    x = randn(B, TQ, DM, generator=gen)
    W1, b1 = randn(DFF, DM, generator=gen) / 3, randn(DFF, generator=gen)
    W2, b2 = randn(DM, DFF, generator=gen) / 4, randn(DM, generator=gen)
    return (x, W1, b1, W2, b2), {}


def encoder_layer_inputs(gen):
    layer = module_of(EncoderLayer, DM, H, DFF, norm_first=False, gen=gen)
    x, mask = randn(B, TQ, DM, generator=gen), padded_causal_mask(LENGTHS_Q, LENGTHS_Q)
    return layer, (x, mask), {}


def decoder_layer_inputs(gen):
    layer = module_of(DecoderLayer, DM, H, DFF, norm_first=True, gen=gen)
    y, memory = randn(B, TQ, DM, generator=gen), randn(B, TK, DM, generator=gen)
    masks = {
        "tgt_mask": padded_causal_mask(LENGTHS_Q, LENGTHS_Q),
        "memory_mask": padded_causal_mask(LENGTHS_Q, LENGTHS),
    }
    return layer, (y, memory), masks


# ch07_vit ---------------------------------------------------------------------------------


def images(gen):
    return randn(B, C, HEIGHT, WIDTH, generator=gen)  # non-square, several channels


def patchify_inputs(gen):
    return (images(gen), P), {}


def patch_embedding_inputs(gen):
    embedding = module_of(PatchEmbedding, (HEIGHT, WIDTH), P, C, DM, gen=gen)
    return embedding, (images(gen),), {}


def vit_inputs(gen):
    vit = module_of(ViT, (HEIGHT, WIDTH), P, C, CLASSES, DM, DEPTH, H, DFF, gen=gen)
    return vit, (images(gen),), {}


TABLE = [
    Row("ch01_seq2seq", "rnn_cell", rnn_cell_inputs),
    Row("ch01_seq2seq", "rnn_encode", rnn_encode_inputs),
    Row("ch01_seq2seq", "rnn_encode", rnn_encode_inputs_without_lengths, "without_lengths"),
    Row("ch01_seq2seq", "shift_right", shift_right_inputs),
    Row("ch01_seq2seq", "sequence_cross_entropy", sequence_cross_entropy_inputs),
    Row("ch01_seq2seq", "greedy_decode", greedy_decode_inputs),
    Row("ch02_attention", "dot_scores", dot_scores_inputs),
    Row("ch02_attention", "additive_scores", additive_scores_inputs),
    Row("ch02_attention", "lengths_to_mask", lengths_to_mask_inputs),
    Row("ch02_attention", "masked_softmax", masked_softmax_inputs),
    Row("ch02_attention", "attend", attend_inputs),
    Row("ch03_self_attention", "scaled_dot_product_attention", scaled_dot_product_attention_inputs),
    Row("ch03_self_attention", "self_attention", self_attention_inputs),
    Row(
        "ch03_self_attention",
        "sinusoidal_positional_encoding",
        positional_encoding_inputs,
    ),
    Row("ch04_masking", "causal_mask", causal_mask_inputs),
    Row("ch04_masking", "padding_mask", padding_mask_inputs),
    Row("ch04_masking", "masked_attention", masked_attention_inputs),
    Row("ch04_masking", "causal_self_attention", causal_self_attention_inputs),
    Row("ch05_multihead", "split_heads", split_heads_inputs),
    Row("ch05_multihead", "merge_heads", merge_heads_inputs),
    Row("ch05_multihead", "multi_head_attention", multi_head_attention_inputs),
    Row("ch06_transformer", "layer_norm", layer_norm_inputs),
    Row("ch06_transformer", "feed_forward", feed_forward_inputs),
    Row("ch06_transformer", "EncoderLayer", encoder_layer_inputs),
    Row("ch06_transformer", "DecoderLayer", decoder_layer_inputs),
    Row("ch07_vit", "patchify", patchify_inputs),
    Row("ch07_vit", "PatchEmbedding", patch_embedding_inputs),
    Row("ch07_vit", "ViT", vit_inputs),
]

ROWS = pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in TABLE])


# Running a reference anywhere ----------------------------------------------------------------


def built(row, gen):
    """The reference of ``row`` (a function, or a module of the reference class) and its
    positional and keyword arguments."""
    assignment = ASSIGNMENTS[row.chapter]
    reference = getattr(assignment.reference_module(), row.name)
    if not assignment.contract(row.name).is_class(assignment.reference_module()):
        args, kwargs = row.build(gen)
        return reference, args, kwargs
    module, args, kwargs = row.build(gen)
    assert type(module) is reference, f"the table builds a {type(module).__name__}"
    return module, args, kwargs


def placed(obj, device, dtype=None):
    """``obj`` with its tensors on ``device`` (the floating ones cast to ``dtype`` when given),
    its ``torch.device`` values replaced by ``device`` and, when ``dtype`` is given, its
    floating ``torch.dtype`` values by ``dtype``; inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.device):
        return torch.device(device)
    if isinstance(obj, torch.dtype):
        return dtype if dtype is not None and obj.is_floating_point else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(placed(item, device, dtype) for item in obj)
    if isinstance(obj, dict):
        return {key: placed(value, device, dtype) for key, value in obj.items()}
    return move(obj, device, dtype)


def run_on(device, target, args, kwargs, dtype=None):
    """Run ``target`` (a copy of it, for a module) with its arguments on ``device``."""
    if isinstance(target, nn.Module):
        target = moved_module(target, device, dtype)
    return target(*placed(args, device, dtype), **placed(kwargs, device, dtype))


def call_leaving_inputs_unmodified(target, args, kwargs):
    """Call ``target``: no input tensor, nor a module's parameter or buffer, may change."""
    state = target.state_dict(keep_vars=True) if isinstance(target, nn.Module) else {}

    def call(*args, _state, **kwargs):
        return target(*args, **kwargs)

    return assert_unmodified(call, *args, _state=state, **kwargs)


def assert_matches_cpu_on(device, dtype, target, args, kwargs):
    """Run ``target`` on ``device`` in ``dtype``: outputs there, floating ones in ``dtype``, and
    within ``dtype``'s tolerances of the float64 CPU result."""
    expected = target(*args, **kwargs)
    actual = run_on(device, target, args, kwargs, dtype)
    for tensor in tensors_of(actual):
        assert tensor.device.type == torch.device(device).type, f"an output on {tensor.device}"
        assert tensor.dtype == dtype or not tensor.is_floating_point(), f"a {tensor.dtype} output"
    expected = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, expected)
    assert_close(move(actual, "cpu"), expected, **CUDA_TOLERANCES[dtype])


# The tests -------------------------------------------------------------------------------------


def test_table_covers_every_contract_of_every_chapter():
    contracts = [
        (assignment.id, name) for assignment in ASSIGNMENTS.values() for name in assignment.names
    ]
    covered = list(dict.fromkeys((row.chapter, row.name) for row in TABLE))
    assert covered == contracts
    ids = [row.id for row in TABLE]
    assert len(set(ids)) == len(ids), "two rows with the same id"


@ROWS
def test_reference_on_meta_leaves_its_inputs_unmodified(row, gen):
    target, args, kwargs = built(row, gen)
    cpu_out = call_leaving_inputs_unmodified(target, args, kwargs)
    meta_out = run_on("meta", target, args, kwargs)
    assert_same_layout_on_meta(cpu_out, meta_out)


@cuda_dtypes
@ROWS
def test_reference_on_cuda_matches_cpu(row, gen, dtype):
    assert_matches_cpu_on("cuda", dtype, *built(row, gen))
