"""Forbidden operations are detected whatever Python name reaches them.

An adversarial table of evasions across the seven chapters' forbidden lists (public
functions, internal bindings, ``torch.ops.aten`` overloads, top-level aliases, names built
at run time, modules, copied code, fused kernels, threads): each is detected and named,
on the CPU and on the meta device, in several dtypes. A table of allowed code, and every
reference solution, is not flagged. The watch leaves nothing enabled afterwards, nests,
and notices being switched off. The static check reads aliases and strings.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import re
import sys
import textwrap
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.contracts import ASSIGNMENTS
from autograder.runtime import operations as ops
from autograder.runtime.operations import (
    OPERATIONS,
    SWITCHED_OFF,
    Watch,
    forbidden_in_source,
)
from solutions import (
    ch01_seq2seq,
    ch02_attention,
    ch03_self_attention,
    ch04_masking,
    ch05_multihead,
    ch06_transformer,
    ch07_vit,
)

# The forbidden operations of every contract name (autograder.contracts).
FORBIDDEN = {assignment.id: assignment.forbidden() for assignment in ASSIGNMENTS.values()}

SETTINGS = [
    pytest.param("cpu", torch.float32, id="cpu-float32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("meta", torch.float16, id="meta-float16"),
    pytest.param(
        "cuda",
        torch.float16,
        id="cuda-float16",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@dataclass(frozen=True)
class Make:
    """Tensors and modules on one device, in one floating dtype."""

    device: str
    dtype: torch.dtype

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, dtype=self.dtype, device=self.device)

    def module(self, module: nn.Module) -> nn.Module:
        return module.to(device=self.device, dtype=self.dtype)

    def labels(self, *shape: int, high: int = 3) -> torch.Tensor:
        return torch.randint(high, shape, device=self.device)


@dataclass(frozen=True)
class Evasion:
    """A way to reach ``expected`` while the list of ``function`` forbids it."""

    name: str
    function: tuple[str, str]  # (assignment, contract name)
    expected: str
    run: Callable[[Make], object]
    meta: bool = True  # the route exists on the meta device
    slow_on_cpu: bool = False  # its first CPU call takes seconds


def copied_function(function, name: str | None = None):
    """``function`` re-compiled from its source (dedented, maybe renamed), in its module."""
    source = textwrap.dedent(inspect.getsource(function))
    if name is not None:
        source = source.replace(f"def {function.__name__}(", f"def {name}(", 1)
    namespace = dict(vars(sys.modules[function.__module__]))
    exec(source, namespace)
    return namespace[name or function.__name__]


def rnn_weights(make: Make):
    x, h = make(2, 3, 4), make(1, 2, 5)
    return x, h, [make(5, 4), make(5, 5), make(5), make(5)]


def attention_inputs(make: Make):
    return make(2, 2, 3, 4), make(2, 2, 5, 4), make(2, 2, 5, 4)


def mha_arguments(make: Make):
    x = make(3, 2, 8)  # (T, B, D): the functional form is sequence-first
    return (x, x, x, 8, 2, make(24, 8), make(24), None, None, False, 0.0, make(8, 8), make(8))


def encoder_layer(make: Make) -> nn.TransformerEncoderLayer:
    return make.module(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True))


def encoder_layer_fast_path(make: Make):
    layer = encoder_layer(make)
    x = make(2, 3, 8)
    p = dict(layer.named_parameters())
    return torch._transformer_encoder_layer_fwd(
        x,
        8,
        2,
        p["self_attn.in_proj_weight"],
        p["self_attn.in_proj_bias"],
        p["self_attn.out_proj.weight"],
        p["self_attn.out_proj.bias"],
        False,  # use_gelu
        False,  # norm_first
        1e-5,
        p["norm1.weight"],
        p["norm1.bias"],
        p["norm2.weight"],
        p["norm2.bias"],
        p["linear1.weight"],
        p["linear1.bias"],
        p["linear2.weight"],
        p["linear2.bias"],
    )


def in_a_thread(function: Callable[[], object]) -> None:
    thread = threading.Thread(target=function)
    thread.start()
    thread.join()


def in_a_new_pool(function: Callable[[], object]) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(function).result()


CH01, CH02, CH03 = "ch01_seq2seq", "ch02_attention", "ch03_self_attention"
CH04, CH05, CH06, CH07 = "ch04_masking", "ch05_multihead", "ch06_transformer", "ch07_vit"

EVASIONS = [
    # ch01 rnn_cell / rnn_encode: the recurrent layers, whatever form.
    Evasion(
        "nn.RNN",
        (CH01, "rnn_encode"),
        ops.RECURRENT,
        lambda m: m.module(nn.RNN(4, 5, batch_first=True))(m(2, 3, 4)),
    ),
    Evasion(
        "torch._VF.rnn_tanh",
        (CH01, "rnn_encode"),
        ops.RECURRENT,
        lambda m: torch._VF.rnn_tanh(
            *rnn_weights(m)[:2], rnn_weights(m)[2], True, 1, 0.0, False, False, True
        ),
    ),
    Evasion(
        "torch.rnn_tanh_cell",
        (CH01, "rnn_cell"),
        ops.RECURRENT,
        lambda m: torch.rnn_tanh_cell(m(2, 4), m(2, 5), m(5, 4), m(5, 5), m(5), m(5)),
    ),
    Evasion(
        "torch.ops.aten.gru_cell.default",
        (CH01, "rnn_cell"),
        ops.RECURRENT,
        lambda m: torch.ops.aten.gru_cell.default(m(2, 4), m(2, 5), m(15, 4), m(15, 5)),
    ),
    Evasion(
        "nn.LSTMCell",
        (CH01, "rnn_cell"),
        ops.RECURRENT,
        lambda m: m.module(nn.LSTMCell(4, 5))(m(2, 4)),
    ),
    Evasion(
        "getattr(torch, 'rnn_' + 'relu_cell')",
        (CH01, "rnn_cell"),
        ops.RECURRENT,
        lambda m: getattr(torch, "rnn_" + "relu_cell")(m(2, 4), m(2, 5), m(5, 4), m(5, 5)),
    ),
    Evasion(
        "quantizable LSTM (written in Python)",
        (CH01, "rnn_encode"),
        ops.RECURRENT,
        lambda m: torch.ao.nn.quantizable.LSTM(4, 5, batch_first=True)(m(2, 3, 4).float()),
        meta=False,
    ),
    # ch01 sequence_cross_entropy: the losses and their internal forms.
    Evasion(
        "F.cross_entropy",
        (CH01, "sequence_cross_entropy"),
        ops.CROSS_ENTROPY,
        lambda m: F.cross_entropy(m(6, 3), m.labels(6), ignore_index=0),
    ),
    Evasion(
        "torch._C._nn.nll_loss_nd",
        (CH01, "sequence_cross_entropy"),
        ops.NLL_LOSS,
        lambda m: torch._C._nn.nll_loss_nd(m(6, 3).log_softmax(-1), m.labels(6), None, 1, 0),
    ),
    Evasion(
        "torch.ops.aten.nll_loss_forward.default",
        (CH01, "sequence_cross_entropy"),
        ops.NLL_LOSS,
        lambda m: torch.ops.aten.nll_loss_forward.default(m(6, 3), m.labels(6), None, 1, -100),
    ),
    Evasion(
        "nn.NLLLoss on (B, V, T) logits",
        (CH01, "sequence_cross_entropy"),
        ops.NLL_LOSS,
        lambda m: nn.NLLLoss(ignore_index=0)(m(2, 3, 4).log_softmax(1), m.labels(2, 4)),
    ),
    # ch02-ch05: attention, whatever form.
    Evasion(
        "F.scaled_dot_product_attention",
        (CH03, "scaled_dot_product_attention"),
        ops.SDPA,
        lambda m: F.scaled_dot_product_attention(*attention_inputs(m)),
    ),
    Evasion(
        "torch._C._nn.scaled_dot_product_attention",
        (CH04, "masked_attention"),
        ops.SDPA,
        lambda m: torch._C._nn.scaled_dot_product_attention(*attention_inputs(m)),
    ),
    Evasion(
        "torch.ops.aten.scaled_dot_product_attention.default",
        (CH03, "self_attention"),
        ops.SDPA,
        lambda m: torch.ops.aten.scaled_dot_product_attention.default(*attention_inputs(m)),
    ),
    Evasion(
        "torch._scaled_dot_product_flash_attention_for_cpu",
        (CH04, "causal_self_attention"),
        ops.SDPA,
        lambda m: torch._scaled_dot_product_flash_attention_for_cpu(*attention_inputs(m)),
    ),
    Evasion(
        "torch.ops.aten._scaled_dot_product_attention_math",
        (CH05, "multi_head_attention"),
        ops.SDPA,
        lambda m: torch.ops.aten._scaled_dot_product_attention_math(*attention_inputs(m)),
    ),
    Evasion(
        "getattr(F, 'scaled_' + 'dot_product_attention')",
        (CH02, "attend"),
        ops.SDPA,
        lambda m: getattr(F, "scaled_" + "dot_product_attention")(*attention_inputs(m)),
    ),
    Evasion(
        "vmap over F.scaled_dot_product_attention",
        (CH03, "scaled_dot_product_attention"),
        ops.SDPA,
        lambda m: torch.vmap(F.scaled_dot_product_attention)(*attention_inputs(m)),
    ),
    Evasion(
        "F.scaled_dot_product_attention in a thread",
        (CH03, "self_attention"),
        ops.SDPA,
        lambda m: in_a_thread(lambda: F.scaled_dot_product_attention(*attention_inputs(m))),
    ),
    Evasion(
        "F.scaled_dot_product_attention in a new thread pool",
        (CH04, "masked_attention"),
        ops.SDPA,
        lambda m: in_a_new_pool(lambda: F.scaled_dot_product_attention(*attention_inputs(m))),
    ),
    Evasion(
        "F.scaled_dot_product_attention in a thread pool left running",
        (CH04, "causal_self_attention"),
        ops.SDPA,
        lambda m: (
            concurrent.futures.ThreadPoolExecutor(1)
            .submit(F.scaled_dot_product_attention, *attention_inputs(m))
            .result()
        ),
    ),
    Evasion(
        "flex_attention",
        (CH03, "scaled_dot_product_attention"),
        ops.FLEX_ATTENTION,
        lambda m: _flex_attention()(*attention_inputs(m)),
        slow_on_cpu=True,  # its eager form compiles a graph
    ),
    Evasion(
        "nn.MultiheadAttention, with weights",
        (CH05, "multi_head_attention"),
        ops.MHA,
        lambda m: m.module(nn.MultiheadAttention(8, 2, batch_first=True))(
            m(2, 3, 8), m(2, 4, 8), m(2, 4, 8), average_attn_weights=False
        ),
    ),
    Evasion(
        "nn.MultiheadAttention, fast path",
        (CH03, "self_attention"),
        ops.MHA,
        lambda m: _no_grad(
            lambda: m.module(nn.MultiheadAttention(8, 2, batch_first=True)).eval()(
                m(2, 3, 8), m(2, 3, 8), m(2, 3, 8), need_weights=False
            )
        ),
    ),
    Evasion(
        "getattr(nn, 'Multihead' + 'Attention')",
        (CH02, "masked_softmax"),
        ops.MHA,
        lambda m: m.module(getattr(nn, "Multihead" + "Attention")(8, 2))(
            m(3, 1, 8), m(3, 1, 8), m(3, 1, 8)
        ),
    ),
    Evasion(
        "F.multi_head_attention_forward",
        (CH05, "multi_head_attention"),
        ops.MHA_FORWARD,
        lambda m: F.multi_head_attention_forward(*mha_arguments(m)),
    ),
    Evasion(
        "F.multi_head_attention_forward rebuilt with types.FunctionType",
        (CH04, "causal_self_attention"),
        ops.MHA_FORWARD,
        lambda m: types.FunctionType(
            F.multi_head_attention_forward.__code__,
            vars(F),
            "my_attention",
            F.multi_head_attention_forward.__defaults__,
        )(*mha_arguments(m)),
    ),
    Evasion(
        "F.multi_head_attention_forward re-compiled from its source, renamed",
        (CH05, "multi_head_attention"),
        ops.MHA_FORWARD,
        lambda m: copied_function(F.multi_head_attention_forward, "my_attention")(
            *mha_arguments(m)
        ),
    ),
    Evasion(
        "nn.MultiheadAttention.forward re-compiled into a subclass",
        (CH03, "self_attention"),
        ops.MHA,
        lambda m: m.module(
            type(
                "Mine",
                (nn.MultiheadAttention,),
                {"forward": copied_function(nn.MultiheadAttention.forward)},
            )(8, 2)
        )(m(3, 1, 8), m(3, 1, 8), m(3, 1, 8)),
    ),
    Evasion(
        "torch._native_multi_head_attention",
        (CH05, "multi_head_attention"),
        ops.MHA_FORWARD,
        lambda m: torch._native_multi_head_attention(
            m(2, 3, 8), m(2, 3, 8), m(2, 3, 8), 8, 2, m(24, 8), m(24), m(8, 8), m(8)
        ),
    ),
    Evasion(
        "torch._masked_softmax",
        (CH02, "masked_softmax"),
        ops.MASKED_SOFTMAX,
        lambda m: torch._masked_softmax(m(2, 5), m(2, 5) > 0, -1, 0),
        meta=False,  # no meta kernel
    ),
    Evasion(
        "torch._safe_softmax",
        (CH04, "masked_attention"),
        ops.MASKED_SOFTMAX,
        lambda m: torch._safe_softmax(m(2, 5), -1),
    ),
    # ch06 layer_norm: layer norm, and the normalisation layers that compute it.
    Evasion(
        "torch.layer_norm",
        (CH06, "layer_norm"),
        ops.LAYER_NORM,
        lambda m: torch.layer_norm(m(2, 3, 8), (8,), m(8), m(8)),
    ),
    Evasion(
        "torch.ops.aten.native_layer_norm.default",
        (CH06, "layer_norm"),
        ops.LAYER_NORM,
        lambda m: torch.ops.aten.native_layer_norm.default(m(2, 8), [8], m(8), m(8), 1e-5),
    ),
    Evasion(
        "nn.LayerNorm",
        (CH06, "layer_norm"),
        ops.LAYER_NORM,
        lambda m: m.module(nn.LayerNorm(8))(m(2, 3, 8)),
    ),
    Evasion(
        "F.group_norm with one group",
        (CH06, "layer_norm"),
        ops.OTHER_NORMS,
        lambda m: F.group_norm(m(6, 8), 1, m(8), m(8)),
    ),
    Evasion(
        "torch.batch_norm on the transpose",
        (CH06, "layer_norm"),
        ops.OTHER_NORMS,
        lambda m: torch.batch_norm(m(6, 8).T, None, None, None, None, True, 0.0, 1e-5, False),
    ),
    # ch06 EncoderLayer / DecoderLayer: the Transformer classes.
    Evasion(
        "nn.TransformerEncoderLayer",
        (CH06, "EncoderLayer"),
        ops.ENCODER_LAYER,
        lambda m: encoder_layer(m)(m(2, 3, 8)),
    ),
    Evasion(
        "nn.TransformerEncoderLayer, fast path",
        (CH06, "EncoderLayer"),
        ops.ENCODER_LAYER,
        lambda m: _no_grad(lambda: encoder_layer(m).eval()(m(2, 3, 8))),
    ),
    Evasion(
        "torch._transformer_encoder_layer_fwd",
        (CH06, "EncoderLayer"),
        ops.ENCODER_LAYER,
        encoder_layer_fast_path,
    ),
    Evasion(
        "nn.TransformerEncoderLayer.forward re-compiled from its source",
        (CH06, "EncoderLayer"),
        ops.ENCODER_LAYER,
        lambda m: copied_function(nn.TransformerEncoderLayer.forward)(encoder_layer(m), m(2, 3, 8)),
    ),
    Evasion(
        "nn.TransformerDecoderLayer.forward on the student's own module",
        (CH06, "DecoderLayer"),
        ops.DECODER_LAYER,
        lambda m: nn.TransformerDecoderLayer.forward(
            m.module(ch06_transformer.DecoderLayer(8, 2, 16)), m(2, 3, 8), m(2, 4, 8)
        ),
    ),
    Evasion(
        "nn.TransformerEncoder",
        (CH06, "EncoderLayer"),
        ops.ENCODER,
        lambda m: m.module(nn.TransformerEncoder(encoder_layer(m), 1, enable_nested_tensor=False))(
            m(2, 3, 8)
        ),
    ),
    Evasion(
        "nn.Transformer",
        (CH06, "DecoderLayer"),
        ops.TRANSFORMER,
        lambda m: m.module(nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True))(
            m(2, 3, 8), m(2, 4, 8)
        ),
    ),
    # ch07 patchify / PatchEmbedding: F.unfold, convolutions, pixel_unshuffle.
    Evasion(
        "F.unfold",
        (CH07, "patchify"),
        ops.UNFOLD,
        lambda m: F.unfold(m(2, 3, 8, 8), 4, stride=4),
    ),
    Evasion(
        "nn.Unfold",
        (CH07, "patchify"),
        ops.UNFOLD,
        lambda m: nn.Unfold(4, stride=4)(m(2, 3, 8, 8)),
    ),
    Evasion(
        "torch.ops.aten.im2col.default",
        (CH07, "PatchEmbedding"),
        ops.UNFOLD,
        lambda m: torch.ops.aten.im2col.default(m(2, 3, 8, 8), [4, 4], [1, 1], [0, 0], [4, 4]),
    ),
    Evasion(
        "getattr(F, 'un' + 'fold')",
        (CH07, "patchify"),
        ops.UNFOLD,
        lambda m: getattr(F, "un" + "fold")(m(2, 3, 8, 8), 4, stride=4),
    ),
    Evasion(
        "torch.conv2d with an identity kernel",
        (CH07, "patchify"),
        ops.CONVOLUTION,
        lambda m: torch.conv2d(m(2, 3, 8, 8), m(48, 3, 4, 4), stride=4),
    ),
    Evasion(
        "torch.convolution",
        (CH07, "PatchEmbedding"),
        ops.CONVOLUTION,
        lambda m: torch.convolution(
            m(2, 3, 8, 8), m(16, 3, 4, 4), None, [4, 4], [0, 0], [1, 1], False, [0, 0], 1
        ),
    ),
    Evasion(
        "nn.Conv2d",
        (CH07, "PatchEmbedding"),
        ops.CONVOLUTION,
        lambda m: m.module(nn.Conv2d(3, 16, 4, stride=4))(m(2, 3, 8, 8)),
    ),
    Evasion(
        "F.conv1d over the rows",
        (CH07, "patchify"),
        ops.CONVOLUTION,
        lambda m: F.conv1d(m(2, 3, 8), m(12, 3, 4), stride=4),
    ),
    Evasion(
        "F.pixel_unshuffle",
        (CH07, "patchify"),
        ops.PIXEL_UNSHUFFLE,
        lambda m: F.pixel_unshuffle(m(2, 3, 8, 8), 4).flatten(2).transpose(1, 2),
    ),
]


def _flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _no_grad(function: Callable[[], object]):
    with torch.no_grad():
        return function()


def run_watched(names, function: Callable[[], object]) -> Watch:
    """Run ``function`` inside a watch; its exceptions are the watched code's own."""
    # An evasion may fail after it reached the operation (no meta kernel, a dtype).
    with Watch(names) as watch, contextlib.suppress(Exception):
        function()
    return watch


def forbidden(function: tuple[str, str]) -> tuple[str, ...]:
    assignment, name = function
    return FORBIDDEN[assignment][name]


def test_the_table_covers_every_list_and_route():
    lists = {forbidden(evasion.function) for evasion in EVASIONS}
    assert len(EVASIONS) >= 20
    assert {evasion.function[0] for evasion in EVASIONS} == set(FORBIDDEN)
    every_listed = set().union(
        *(set(names) for names in FORBIDDEN.values() for names in names.values())
    )
    assert every_listed == set(OPERATIONS)
    assert {evasion.expected for evasion in EVASIONS} >= every_listed - {ops.DECODER}
    assert all(evasion.expected in forbidden(evasion.function) for evasion in EVASIONS)
    assert len(lists) >= 7


def evasion_cases():
    for evasion in EVASIONS:
        for setting in SETTINGS:
            device, dtype = setting.values
            if device == "meta" and not evasion.meta:
                continue
            marks = list(setting.marks)
            if device != "meta" and evasion.slow_on_cpu:
                marks.append(pytest.mark.slow)
            yield pytest.param(
                evasion, device, dtype, marks=marks, id=f"{evasion.name}-{setting.id}"
            )


@pytest.mark.parametrize(("evasion", "device", "dtype"), list(evasion_cases()))
def test_each_evasion_is_detected_and_named(evasion, device, dtype):
    watch = run_watched(forbidden(evasion.function), lambda: evasion.run(Make(device, dtype)))
    assert watch.reached == [evasion.expected]


def test_an_evasion_is_named_by_the_operation_reached_inside_when_only_that_is_listed():
    make = Make("cpu", torch.float32)
    logits, labels = make(6, 3), make.labels(6)
    assert run_watched([ops.NLL_LOSS], lambda: F.cross_entropy(logits, labels)).reached == [
        ops.NLL_LOSS
    ]
    both = run_watched([ops.NLL_LOSS, ops.CROSS_ENTROPY], lambda: F.cross_entropy(logits, labels))
    assert both.reached == [ops.CROSS_ENTROPY]
    x = make(2, 3, 8)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    fast = run_watched([ops.SDPA], lambda: mha(x, x, x, need_weights=False))
    assert fast.reached == [ops.SDPA]
    separately = run_watched(
        [ops.SDPA, ops.MHA], lambda: (mha(x, x, x), F.scaled_dot_product_attention(x, x, x))
    )
    assert separately.reached == sorted([ops.SDPA, ops.MHA])


def test_a_thread_pool_made_in_one_call_is_watched_in_the_next():
    pool = None
    q = torch.randn(1, 2, 3)

    def student_function():
        nonlocal pool
        pool = pool or concurrent.futures.ThreadPoolExecutor(1)
        return pool.submit(F.scaled_dot_product_attention, q, q, q).result()

    try:
        for _ in range(3):
            assert run_watched([ops.SDPA], student_function).reached == [ops.SDPA]
        with Watch([ops.SDPA]) as allowed:
            pool.submit(torch.softmax, q, -1).result()
        assert allowed.reached == []
    finally:
        pool.shutdown()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_scripted_function_is_detected():
    make = Make("cpu", torch.float32)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return torch.layer_norm(x, [8])

    scripted = torch.jit.script(norm)
    assert run_watched([ops.LAYER_NORM], lambda: scripted(make(2, 8))).reached == [ops.LAYER_NORM]


# --- allowed code ----------------------------------------------------------------------


def hand_written_layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(variance + 1e-5) * gamma + beta


def masked_attention_by_hand(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return torch.einsum("bqk,bkd->bqd", weights, v), weights


ALLOWED = [
    pytest.param(
        (CH05, "multi_head_attention"),
        lambda m: masked_attention_by_hand(
            m(2, 3, 4),
            m(2, 5, 4),
            m(2, 5, 4),
            torch.ones(3, 5, dtype=torch.bool, device=m.device).tril(),
        ),
        id="matmul, masked_fill, softmax, einsum",
    ),
    pytest.param(
        (CH02, "attend"),
        lambda m: (
            F.linear(m(2, 4), m(6, 4), m(6)),
            nn.Linear(4, 6).to(m.device, m.dtype)(m(2, 4)),
        ),
        id="F.linear and nn.Linear",
    ),
    pytest.param(
        (CH02, "masked_softmax"),
        lambda m: torch.where(m(2, 5) > 0, F.softmax(m(2, 5), -1), 0.0),
        id="softmax then where",
    ),
    pytest.param(
        (CH06, "layer_norm"),
        lambda m: (hand_written_layer_norm(m(2, 3, 8), m(8), m(8)), torch.var_mean(m(2, 8), -1)),
        id="hand-written layer norm, var_mean",
    ),
    pytest.param(
        (CH01, "sequence_cross_entropy"),
        lambda m: -m(6, 3).log_softmax(-1).gather(-1, m.labels(6, 1)).mean(),
        id="log_softmax and gather",
    ),
    pytest.param(
        (CH01, "rnn_cell"),
        lambda m: torch.tanh(m(2, 4) @ m(5, 4).T + m(2, 5) @ m(5, 5).T + m(5)),
        id="tanh of linear maps",
    ),
    pytest.param(
        (CH07, "patchify"),
        lambda m: m(2, 3, 8, 8).unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 4, 16),
        id="Tensor.unfold",
    ),
    pytest.param(
        (CH07, "PatchEmbedding"),
        lambda m: encoder_layer(m)(F.gelu(m(2, 3, 8)) + F.relu(m(2, 3, 8))),
        id="nn.TransformerEncoderLayer blocks, F.gelu, F.relu",
    ),
    pytest.param(
        (CH06, "EncoderLayer"),
        lambda m: m.module(nn.MultiheadAttention(8, 2, batch_first=True))(
            m(2, 3, 8), m(2, 3, 8), m(2, 3, 8), need_weights=False
        ),
        id="nn.MultiheadAttention as a submodule",
    ),
    pytest.param(
        (CH06, "DecoderLayer"),
        lambda m: m.module(nn.LayerNorm(8))(m(2, 3, 8)),
        id="nn.LayerNorm as a submodule",
    ),
]


@pytest.mark.parametrize(("device", "dtype"), SETTINGS[:1] + SETTINGS[2:])
@pytest.mark.parametrize(("function", "code"), ALLOWED)
def test_allowed_code_is_not_flagged(function, code, device, dtype):
    make = Make(device, dtype)
    with Watch(forbidden(function)) as watch:
        code(make)
    assert watch.reached == []


def reference_calls(make: Make) -> dict[tuple[str, str], Callable[[], object]]:
    """A call of every reference solution, by (assignment, contract name)."""
    x, lengths = make(2, 3, 4), torch.tensor([3, 1], device=make.device)
    q, k, v = make(2, 3, 4), make(2, 5, 4), make(2, 5, 6)
    W = make(4, 4)
    mask = torch.ones(3, 5, dtype=torch.bool, device=make.device).tril()
    images = make(2, 3, 8, 8)

    def step(tokens, h):
        return make(2, 7), h

    def module(cls, *init, forward=()):
        return lambda: make.module(cls(*init))(*forward)

    return {
        (CH01, "rnn_cell"): lambda: ch01_seq2seq.rnn_cell(
            x[:, 0], make(2, 5), make(5, 4), make(5, 5), make(5)
        ),
        (CH01, "rnn_encode"): lambda: ch01_seq2seq.rnn_encode(
            x, make(2, 5), make(5, 4), make(5, 5), make(5), lengths
        ),
        (CH01, "shift_right"): lambda: ch01_seq2seq.shift_right(make.labels(2, 4, high=7), 1),
        (CH01, "sequence_cross_entropy"): lambda: ch01_seq2seq.sequence_cross_entropy(
            make(2, 4, 7), make.labels(2, 4, high=7), 0
        ),
        (CH01, "greedy_decode"): lambda: ch01_seq2seq.greedy_decode(step, make(2, 5), 1, 2, 3),
        (CH02, "dot_scores"): lambda: ch02_attention.dot_scores(make(2, 4), make(2, 5, 4)),
        (CH02, "additive_scores"): lambda: ch02_attention.additive_scores(
            make(2, 4), make(2, 5, 4), make(6, 4), make(6, 4), make(6)
        ),
        (CH02, "lengths_to_mask"): lambda: ch02_attention.lengths_to_mask(lengths, 5),
        (CH02, "masked_softmax"): lambda: ch02_attention.masked_softmax(make(2, 5), mask[:2]),
        (CH02, "attend"): lambda: ch02_attention.attend(
            make(2, 4), make(2, 5, 4), make(2, 5, 6), mask[:2], make(6, 4), make(6, 4), make(6)
        ),
        (CH03, "scaled_dot_product_attention"): lambda: (
            ch03_self_attention.scaled_dot_product_attention(q, k, v)
        ),
        (CH03, "self_attention"): lambda: ch03_self_attention.self_attention(x, W, W, W),
        (CH03, "sinusoidal_positional_encoding"): lambda: (
            ch03_self_attention.sinusoidal_positional_encoding(5, 7, device=make.device)
        ),
        (CH04, "causal_mask"): lambda: ch04_masking.causal_mask(5, device=make.device),
        (CH04, "padding_mask"): lambda: ch04_masking.padding_mask(lengths, 5, device=make.device),
        (CH04, "masked_attention"): lambda: ch04_masking.masked_attention(q, k, v, mask),
        (CH04, "causal_self_attention"): lambda: ch04_masking.causal_self_attention(
            x, W, W, W, lengths
        ),
        (CH05, "split_heads"): lambda: ch05_multihead.split_heads(make(2, 3, 8), 2),
        (CH05, "merge_heads"): lambda: ch05_multihead.merge_heads(make(2, 2, 3, 4)),
        (CH05, "multi_head_attention"): lambda: ch05_multihead.multi_head_attention(
            make(2, 3, 8),
            make(2, 5, 8),
            make(2, 5, 8),
            *[make(8, 8) if i % 2 == 0 else make(8) for i in range(8)],
            2,
            mask,
        ),
        (CH06, "layer_norm"): lambda: ch06_transformer.layer_norm(x, make(4), make(4)),
        (CH06, "feed_forward"): lambda: ch06_transformer.feed_forward(
            x, make(6, 4), make(6), make(4, 6), make(4)
        ),
        (CH06, "EncoderLayer"): module(
            ch06_transformer.EncoderLayer, 8, 2, 16, forward=(make(2, 3, 8), mask[:, :3])
        ),
        (CH06, "DecoderLayer"): module(
            ch06_transformer.DecoderLayer,
            8,
            2,
            16,
            True,
            forward=(make(2, 3, 8), make(2, 5, 8), mask[:, :3], mask),
        ),
        (CH07, "patchify"): lambda: ch07_vit.patchify(images, 4),
        (CH07, "PatchEmbedding"): module(ch07_vit.PatchEmbedding, 8, 4, 3, 16, forward=(images,)),
        (CH07, "ViT"): module(ch07_vit.ViT, 8, 4, 3, 5, 16, 1, 2, 32, forward=(images,)),
    }


@pytest.mark.parametrize(("device", "dtype"), SETTINGS[:1] + SETTINGS[2:])
def test_no_reference_solution_reaches_its_forbidden_operations(device, dtype):
    calls = reference_calls(Make(device, dtype))
    assert set(calls) == {(a, f) for a, names in FORBIDDEN.items() for f in names}
    for function, call in calls.items():
        with Watch(forbidden(function)) as watch:
            call()
        assert watch.reached == [], function


def test_autograd_and_a_backward_pass_inside_the_watch_change_nothing():
    make = Make("cpu", torch.float32)
    q = make(2, 3, 4).requires_grad_()
    x = make(2, 3, 8).requires_grad_()
    with Watch(forbidden((CH03, "scaled_dot_product_attention"))) as allowed:
        out, weights = ch03_self_attention.scaled_dot_product_attention(q, q, q)
        (out.sum() + weights.sum()).backward()
    with Watch(forbidden((CH06, "EncoderLayer"))) as submodules:
        ch06_transformer.EncoderLayer(8, 2, 16)(x).sum().backward()
    with Watch(forbidden((CH03, "self_attention"))) as reached:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert (allowed.reached, submodules.reached, reached.reached) == ([], [], [ops.SDPA])
    assert q.grad is not None and x.grad is not None


# --- the watch's own behaviour ----------------------------------------------------------


def nothing_enabled() -> bool:
    return (
        sys.getprofile() is None
        and threading.getprofile() is None
        and not torch._C._autograd._profiler_enabled()
    )


def test_nothing_stays_enabled_even_when_the_watched_code_raised():
    q = torch.randn(1, 2, 3)
    with pytest.raises(ZeroDivisionError), Watch([ops.SDPA]) as watch:
        F.scaled_dot_product_attention(q, q, q)
        1 / 0  # noqa: B018
    assert watch.reached == [ops.SDPA]
    assert nothing_enabled()
    with Watch([ops.SDPA]) as watch:
        pass
    assert watch.reached == [] and nothing_enabled()


def test_the_previous_profile_functions_come_back():
    def previous(frame, event, arg):
        return None

    sys.setprofile(previous)
    threading.setprofile(previous)
    try:
        with Watch([ops.MHA]):
            assert sys.getprofile() is not previous
        assert sys.getprofile() is previous and threading.getprofile() is previous
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


def test_watches_nest_and_each_sees_only_its_own_time_and_list():
    x = torch.randn(2, 8)
    with Watch([ops.SDPA, ops.LAYER_NORM]) as outer:
        with Watch([ops.LAYER_NORM]) as inner:
            torch.layer_norm(x, (8,))
            F.scaled_dot_product_attention(x, x, x)
        with Watch([ops.SDPA]) as after:
            pass
        F.scaled_dot_product_attention(x, x, x)
    assert inner.reached == [ops.LAYER_NORM]
    assert after.reached == []
    assert outer.reached == sorted([ops.SDPA, ops.LAYER_NORM])
    assert nothing_enabled()


def test_a_watch_cannot_be_entered_twice_at_once():
    watch = Watch([ops.SDPA])
    with watch, pytest.raises(RuntimeError), watch:
        pass
    with watch:  # and may be used again afterwards
        F.scaled_dot_product_attention(*[torch.randn(1, 2, 3)] * 3)
    assert watch.reached == [ops.SDPA]


def test_watches_in_two_threads_at_once_keep_apart():
    barrier = threading.Barrier(2)
    reached = {}

    def watched(name, names, function):
        with Watch(names) as watch:
            barrier.wait()
            function()
            barrier.wait()
        reached[name] = watch.reached

    x = torch.randn(2, 8)
    threads = [
        threading.Thread(
            target=watched, args=("a", [ops.SDPA, ops.LAYER_NORM], lambda: torch.relu(x))
        ),
        threading.Thread(
            target=watched, args=("b", [ops.LAYER_NORM], lambda: torch.layer_norm(x, (8,)))
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reached == {"a": [], "b": [ops.LAYER_NORM]}
    assert nothing_enabled()


def test_no_names_watch_nothing_and_unknown_names_raise():
    with Watch([]) as watch:
        assert sys.getprofile() is None
        torch.layer_norm(torch.randn(2, 8), (8,))
    assert watch.reached == []
    with pytest.raises(ValueError, match=re.escape("unknown forbidden operations: 'F.softmax'")):
        Watch([ops.SDPA, "F.softmax"])
    with pytest.raises(ValueError, match="operation names"):
        Watch(ops.SDPA)


SWITCHES_OFF = [
    pytest.param(lambda: sys.setprofile(None), "sys.setprofile", id="sys.setprofile(None)"),
    pytest.param(
        lambda: (sys.setprofile(None), sys.setprofile(sys.getprofile())),
        "sys.setprofile",
        id="sys.setprofile, put back",
    ),
    pytest.param(
        lambda: (
            torch._C._autograd._enable_record_function(False),
            F.scaled_dot_product_attention(*[torch.randn(1, 2, 3)] * 3),
            torch._C._autograd._enable_record_function(True),
        ),
        "torch._C._autograd._enable_record_function",
        id="record functions off",
    ),
    pytest.param(
        lambda: torch.autograd.profiler.profile().__enter__(),
        "torch._C._autograd._prepare_profiler",
        id="another profiler",
    ),
    pytest.param(
        lambda: torch._C._autograd._disable_profiler_legacy(),
        "torch._C._autograd._disable_profiler_legacy",
        id="profiler off",
    ),
    pytest.param(lambda: threading.setprofile(None), "threading.setprofile", id="threading"),
]


@pytest.mark.parametrize(("switch_off", "how"), SWITCHES_OFF)
def test_switching_the_watch_off_is_reported(switch_off, how):
    watch = run_watched([ops.SDPA], switch_off)
    assert SWITCHED_OFF.format(how) in watch.reached
    assert nothing_enabled()


def test_switching_record_functions_off_before_the_watch_does_not_blind_it():
    q = torch.randn(1, 2, 3)
    torch._C._autograd._enable_record_function(False)
    try:
        assert run_watched([ops.SDPA], lambda: F.scaled_dot_product_attention(q, q, q)).reached == [
            ops.SDPA
        ]
    finally:
        torch._C._autograd._enable_record_function(True)


def test_the_patterns_name_real_operators_and_no_allowed_one():
    registered = {name.partition(".")[0] for name in torch._C._dispatch_get_all_op_names()}
    matched = {}
    for operation in OPERATIONS.values():
        for pattern in operation.aten:
            names = {name for name in registered if ops.fnmatch.fnmatchcase(name, pattern)}
            assert names, f"{pattern} matches no operator"
            matched[pattern] = names
    flagged = set().union(*matched.values())
    allowed = {
        "aten::unfold",
        "aten::softmax",
        "aten::_softmax",
        "aten::log_softmax",
        "aten::matmul",
        "aten::bmm",
        "aten::linear",
        "aten::einsum",
        "aten::masked_fill",
        "aten::var_mean",
        "aten::gather",
        "aten::col2im",
        "aten::_convert_indices_from_coo_to_csr",
        "aten::mkldnn_reorder_conv2d_weight",
        "aten::_fused_sdp_choice",
        "aten::pixel_shuffle",
    }
    assert allowed <= registered
    assert not flagged & allowed
    assert all(
        "conv" in name
        for name in set().union(*(matched[p] for p in OPERATIONS[ops.CONVOLUTION].aten))
    )


# --- the static check ---------------------------------------------------------------------

ATTENTION = FORBIDDEN[CH03]["self_attention"]
PATCHES = FORBIDDEN[CH07]["patchify"]
SOURCES = [
    ("out = F.scaled_dot_product_attention(q, k, v)", ATTENTION, [ops.SDPA]),
    (
        "from torch.nn.functional import scaled_dot_product_attention as attn\nattn(q, k, v)",
        ATTENTION,
        [ops.SDPA],
    ),
    ("torch._C._nn.scaled_dot_product_attention(q, k, v)", ATTENTION, [ops.SDPA]),
    ("torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)", ATTENTION, [ops.SDPA]),
    ("layer = torch.nn.MultiheadAttention(8, 2)", ATTENTION, [ops.MHA]),
    ("getattr(torch, '_native_multi_head_attention')", ATTENTION, [ops.MHA_FORWARD]),
    ("getattr(F, 'scaled_' + 'dot_product_attention')(q, k, v)", ATTENTION, []),
    ("import torch.nn.functional as G\nG.unfold(x, 4, stride=4)", PATCHES, [ops.UNFOLD]),
    ("from torch.nn import functional as G\nG.unfold(x, 4)", PATCHES, [ops.UNFOLD]),
    ("from torch.nn.functional import unfold as cut\ncut(x, 4)", PATCHES, [ops.UNFOLD]),
    ("torch.nn.functional.unfold(x, 4)", PATCHES, [ops.UNFOLD]),
    ("F.unfold(x, 4)", PATCHES, [ops.UNFOLD]),
    ("x.unfold(2, 4, 4).unfold(3, 4, 4)", PATCHES, []),
    ("nn.Unfold(4)(x)", PATCHES, [ops.UNFOLD]),
    ("torch.conv2d(x, w, stride=4)", PATCHES, [ops.CONVOLUTION]),
    ("from torch.nn import Conv2d as C\nC(3, 8, 4)", PATCHES, [ops.CONVOLUTION]),
    ("getattr(F, 'layer_norm')(x, (8,))", (ops.LAYER_NORM,), [ops.LAYER_NORM]),
    (
        "torch._VF.rnn_tanh(x, h, w, True, 1, 0.0, False, False, True)",
        (ops.RECURRENT,),
        [ops.RECURRENT],
    ),
    (
        "F.cross_entropy(a, b); F.nll_loss(a, b)",
        (ops.CROSS_ENTROPY, ops.NLL_LOSS),
        [ops.CROSS_ENTROPY, ops.NLL_LOSS],
    ),
    ("def f(:", ATTENTION, []),
]


@pytest.mark.parametrize(("source", "names", "expected"), SOURCES)
def test_the_static_check_reads_aliases_and_strings(source, names, expected):
    assert forbidden_in_source(source, names) == sorted(expected)


def test_the_static_check_leaves_the_students_own_names_alone():
    source = "def self_attention(x):\n    return scaled_dot_product_attention(x, x, x)\n"
    assert forbidden_in_source(source, ATTENTION) == [ops.SDPA]
    assert forbidden_in_source(source, ATTENTION, own_names={"scaled_dot_product_attention"}) == []
    helper = (
        "def scaled_dot_product_attention(q, k, v, mask):\n    return q\n"
        "def masked_attention(q, k, v, mask=None):\n"
        "    return scaled_dot_product_attention(q, k, v, mask)\n"
    )
    assert forbidden_in_source(helper, ATTENTION) == []
    assert forbidden_in_source(helper + "F.scaled_dot_product_attention(q, q, q)", ATTENTION) == [
        ops.SDPA
    ]
    loss = "cross_entropy = -log_probs.gather(-1, t).mean()\nreturn cross_entropy"
    assert forbidden_in_source(loss, (ops.CROSS_ENTROPY, ops.NLL_LOSS)) == []
    conv = "convolution = images.reshape(B, C, H // p, p, W // p, p)"
    assert forbidden_in_source(conv, PATCHES) == []
    assert forbidden_in_source("torch.convolution(x, w)", PATCHES) == [ops.CONVOLUTION]
    with pytest.raises(ValueError, match="unknown"):
        forbidden_in_source(source, ["softmax"])


def test_no_reference_source_names_its_forbidden_operations():
    modules = {
        CH01: ch01_seq2seq,
        CH02: ch02_attention,
        CH03: ch03_self_attention,
        CH04: ch04_masking,
        CH05: ch05_multihead,
        CH06: ch06_transformer,
        CH07: ch07_vit,
    }
    for assignment, lists in FORBIDDEN.items():
        for name, names in lists.items():
            source = inspect.getsource(getattr(modules[assignment], name))
            assert forbidden_in_source(source, names, own_names=lists) == [], (assignment, name)
