"""Forbidden operations: what an exercise may not call, and a watch that sees them run.

What an exercise forbids is an *operation* (the built-in that does the job being taught),
not a Python name: ``F.scaled_dot_product_attention``,
``torch._C._nn.scaled_dot_product_attention``,
``torch.ops.aten.scaled_dot_product_attention.default`` and ``getattr(F, "scaled_" + ...)``
all reach the same operator. ``Watch`` therefore looks below the Python API, with two
detectors, while the student's function runs:

1. torch's dispatcher. Every operator call, composite ones included (``aten::layer_norm``
   before it decomposes, ``aten::rnn_tanh``, ``aten::cross_entropy_loss``), runs the
   RecordFunction callbacks, whatever the device (cpu, cuda, meta) and dtype, with or
   without autograd, and also from TorchScript. The watch turns on torch's legacy
   profiler on the watched thread (the cheapest way to get those callbacks from Python:
   kineto's profiler costs far more to start and stop) and matches the recorded operator
   names against each operation's ``aten`` patterns.
2. Python code. Built-ins written in Python that reach no operator of their own
   (``nn.MultiheadAttention`` with weights does plain ``bmm``/``softmax``; the Transformer
   layers' ``forward``) are watched with a profile function (``sys.setprofile``) that
   matches the code object of every Python call: by identity, or by equal bytecode, so
   that a copy (``types.FunctionType(f.__code__, ...)``, ``exec(inspect.getsource(f))``,
   even renamed) is caught too. The same function sees every call of a C function, so
   it also notices calls that switch the watch off (``sys.setprofile``,
   ``torch._C._autograd._enable_record_function``, ...).

Threads that start (with ``threading``) while a watch is active are watched too, and
what they reach goes to the watches active when they hand a result over. A reached
operation is reported once, by its outermost call (``nn.MultiheadAttention``, not also the
``F.multi_head_attention_forward`` it calls), when both are watched.

This module imports only the standard library and torch, and holds nothing secret: it is
copied into the sandboxed process that runs student code. Import it there before any
student code runs: it keeps its own references to the functions it relies on, and
resolves the watched Python functions at import.

What it cannot see: code that runs in another process; threads started outside every
watch (a thread pool made at the top level of a cell) or without ``threading``
(``_thread.start_new_thread``); graphs compiled before the call (``torch.compile``,
``torch.jit.script``/``trace``, ``torch.export``) of a Python-level built-in, or any
compiled graph whose kernels replace the operator (inductor); a re-typed or edited copy
of a Python-level built-in's source; a student who switches the watch off in a way that
calls no Python-visible function (``ctypes``) or patches this module or ``threading``.
"""

from __future__ import annotations

import ast
import dis
import fnmatch
import importlib
import inspect
import queue
import sys
import textwrap
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from . import syntax


@dataclass(frozen=True)
class Operation:
    """A forbidden operation and everything that means it was reached.

    ``name`` is what the student reads. ``aten`` holds dispatcher operator names
    (``fnmatch`` patterns, without overload: ``"aten::_scaled_dot_product_*"``).
    ``python`` holds dotted paths of Python functions whose code is watched, for
    built-ins that reach no operator of their own. ``source_names`` are what the static
    check looks for in source: a bare identifier matches any attribute, name, imported
    name or string equal to it; a dotted path (``"torch.nn.functional.unfold"``)
    matches only that module attribute, through whatever alias reaches the module.
    """

    name: str
    aten: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    source_names: tuple[str, ...] = ()


RECURRENT = "recurrent layers (nn.RNN/GRU/LSTM and their cells)"
CROSS_ENTROPY = "F.cross_entropy"
NLL_LOSS = "F.nll_loss"
SDPA = "F.scaled_dot_product_attention"
FLEX_ATTENTION = "flex_attention"
MHA = "nn.MultiheadAttention"
MHA_FORWARD = "F.multi_head_attention_forward"
MASKED_SOFTMAX = "torch._masked_softmax / torch._safe_softmax"
LAYER_NORM = "F.layer_norm"
OTHER_NORMS = "F.batch_norm / F.group_norm / F.instance_norm / F.rms_norm"
ENCODER_LAYER = "nn.TransformerEncoderLayer"
DECODER_LAYER = "nn.TransformerDecoderLayer"
ENCODER = "nn.TransformerEncoder"
DECODER = "nn.TransformerDecoder"
TRANSFORMER = "nn.Transformer"
UNFOLD = "F.unfold"
CONVOLUTION = "convolution"
PIXEL_UNSHUFFLE = "F.pixel_unshuffle"

_QUANTIZABLE = "torch.ao.nn.quantizable.modules"
_TRANSFORMER_MODULE = "torch.nn.modules.transformer"

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            RECURRENT,
            aten=(
                "aten::rnn_tanh",
                "aten::rnn_tanh_cell",
                "aten::rnn_relu",
                "aten::rnn_relu_cell",
                "aten::gru",
                "aten::gru_cell",
                "aten::lstm",
                "aten::lstm_cell",
                "aten::_thnn_fused_lstm_cell",
                "aten::_thnn_fused_gru_cell",
                "aten::_cudnn_rnn",
                "aten::miopen_rnn",
                "aten::mkldnn_rnn_layer",
                "aten::_lstm_mps",
                "aten::quantized_lstm*",
                "aten::quantized_gru*",
                "aten::quantized_rnn_*",
                "quantized::quantized_*_cell_dynamic",
            ),
            # Written in Python from linear maps: no recurrent operator of their own.
            python=(
                f"{_QUANTIZABLE}.rnn.LSTM.forward",
                f"{_QUANTIZABLE}.rnn.LSTMCell.forward",
                f"{_QUANTIZABLE}.rnn._LSTMLayer.forward",
                f"{_QUANTIZABLE}.rnn._LSTMSingleLayer.forward",
            ),
            source_names=(
                "RNN",
                "GRU",
                "LSTM",
                "RNNBase",
                "RNNCell",
                "GRUCell",
                "LSTMCell",
                "RNNCellBase",
                "rnn_tanh",
                "rnn_relu",
                "rnn_tanh_cell",
                "rnn_relu_cell",
                "gru_cell",
                "lstm_cell",
                "_thnn_fused_lstm_cell",
                "_thnn_fused_gru_cell",
            ),
        ),
        Operation(
            CROSS_ENTROPY,
            aten=("aten::cross_entropy_loss",),
            source_names=("cross_entropy", "cross_entropy_loss", "CrossEntropyLoss"),
        ),
        Operation(
            NLL_LOSS,
            aten=(
                "aten::nll_loss",
                "aten::nll_loss_nd",
                "aten::nll_loss_forward",
                "aten::nll_loss2d",
                "aten::nll_loss2d_forward",
            ),
            source_names=(
                "nll_loss",
                "nll_loss_nd",
                "nll_loss_forward",
                "nll_loss2d",
                "nll_loss2d_forward",
                "NLLLoss",
                "NLLLoss2d",
            ),
        ),
        Operation(
            SDPA,
            aten=(
                "aten::scaled_dot_product_attention",
                "aten::_scaled_dot_product_*",
                "aten::_flash_attention_forward*",
                "aten::_efficient_attention_forward",
                "aten::_cudnn_attention_forward",
                "aten::_triton_scaled_dot_attention",
            ),
            source_names=(
                "scaled_dot_product_attention",
                "_scaled_dot_product_attention_math",
                "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention",
                "_scaled_dot_product_fused_attention_overrideable",
                "_flash_attention_forward",
                "_efficient_attention_forward",
                "_cudnn_attention_forward",
                "_triton_scaled_dot_attention",
            ),
        ),
        Operation(
            FLEX_ATTENTION,
            # In eager mode it computes with plain operators, in a higher-order operator.
            python=(
                "torch.nn.attention.flex_attention.flex_attention",
                "torch._higher_order_ops.flex_attention.FlexAttentionHOP.__call__",
                "torch._higher_order_ops.flex_attention.math_attention",
            ),
            source_names=("flex_attention", "FlexAttentionHOP", "math_attention"),
        ),
        Operation(
            MHA,
            python=(
                "torch.nn.modules.activation.MultiheadAttention.forward",
                f"{_QUANTIZABLE}.activation.MultiheadAttention.forward",
                f"{_QUANTIZABLE}.activation.MultiheadAttention._forward_impl",
            ),
            source_names=("MultiheadAttention",),
        ),
        Operation(
            MHA_FORWARD,
            aten=("aten::_native_multi_head_attention", "aten::_triton_multi_head_attention"),
            python=("torch.nn.functional.multi_head_attention_forward",),
            source_names=(
                "multi_head_attention_forward",
                "_native_multi_head_attention",
                "_triton_multi_head_attention",
            ),
        ),
        Operation(
            MASKED_SOFTMAX,
            aten=("aten::_masked_softmax", "aten::_safe_softmax"),
            source_names=("_masked_softmax", "_safe_softmax"),
        ),
        Operation(
            LAYER_NORM,
            aten=(
                "aten::layer_norm",
                "aten::native_layer_norm",
                "quantized::layer_norm",
                "static_runtime::layer_norm",
            ),
            source_names=("layer_norm", "native_layer_norm", "LayerNorm"),
        ),
        # Each computes a layer norm on a reshaped input (group_norm with one group on
        # (N, D), batch_norm on the transpose, rms_norm of the centred input).
        Operation(
            OTHER_NORMS,
            aten=(
                "aten::batch_norm*",
                "aten::_batch_norm_*",
                "aten::native_batch_norm",
                "aten::_native_batch_norm_legit*",
                "aten::cudnn_batch_norm",
                "aten::miopen_batch_norm",
                "aten::quantized_batch_norm",
                "aten::group_norm",
                "aten::native_group_norm",
                "aten::instance_norm",
                "aten::rms_norm",
                "aten::_fused_rms_norm",
                "quantized::batch_norm*",
                "quantized::group_norm",
                "quantized::instance_norm",
            ),
            source_names=(
                "batch_norm",
                "native_batch_norm",
                "group_norm",
                "native_group_norm",
                "instance_norm",
                "rms_norm",
                "BatchNorm1d",
                "BatchNorm2d",
                "BatchNorm3d",
                "GroupNorm",
                "InstanceNorm1d",
                "InstanceNorm2d",
                "InstanceNorm3d",
                "RMSNorm",
            ),
        ),
        Operation(
            ENCODER_LAYER,
            aten=("aten::_transformer_encoder_layer_fwd",),
            python=(f"{_TRANSFORMER_MODULE}.TransformerEncoderLayer.forward",),
            source_names=("TransformerEncoderLayer", "_transformer_encoder_layer_fwd"),
        ),
        Operation(
            DECODER_LAYER,
            python=(f"{_TRANSFORMER_MODULE}.TransformerDecoderLayer.forward",),
            source_names=("TransformerDecoderLayer",),
        ),
        Operation(
            ENCODER,
            python=(f"{_TRANSFORMER_MODULE}.TransformerEncoder.forward",),
            source_names=("TransformerEncoder",),
        ),
        Operation(
            DECODER,
            python=(f"{_TRANSFORMER_MODULE}.TransformerDecoder.forward",),
            source_names=("TransformerDecoder",),
        ),
        Operation(
            TRANSFORMER,
            python=(f"{_TRANSFORMER_MODULE}.Transformer.forward",),
            source_names=("Transformer",),
        ),
        Operation(
            UNFOLD,
            aten=("aten::im2col",),
            # Not the bare "unfold": Tensor.unfold (a strided view) is allowed.
            source_names=("torch.nn.functional.unfold", "Unfold", "im2col"),
        ),
        Operation(
            CONVOLUTION,
            aten=(
                "aten::conv1d",
                "aten::conv2d",
                "aten::conv3d",
                "aten::conv_tbc",
                "aten::conv_transpose*",
                "aten::conv_depthwise3d",
                "aten::convolution*",
                "aten::_convolution*",
                "aten::_conv_depthwise2d",
                "aten::cudnn_convolution*",
                "aten::miopen_*convolution*",
                "aten::mkldnn_convolution",
                "aten::_mps_convolution*",
                "aten::_nnpack_spatial_convolution",
                "aten::slow_conv*",
                "aten::_slow_conv*",
                "aten::thnn_conv*",
                "mkldnn::_convolution*",
                "mkldnn_prepacked::conv2d_run",
                "quantized::conv*",
                "_quantized::conv*",
                "onednn::qconv*",
            ),
            source_names=(
                "conv1d",
                "conv2d",
                "conv3d",
                "conv_transpose1d",
                "conv_transpose2d",
                "conv_transpose3d",
                "conv_tbc",
                "torch.convolution",
                "torch._convolution",
                "_conv_forward",
                "mkldnn_convolution",
                "Conv1d",
                "Conv2d",
                "Conv3d",
                "ConvTranspose1d",
                "ConvTranspose2d",
                "ConvTranspose3d",
                "LazyConv1d",
                "LazyConv2d",
                "LazyConv3d",
            ),
        ),
        # pixel_unshuffle(images, p).flatten(2).transpose(1, 2) is patchify.
        Operation(
            PIXEL_UNSHUFFLE,
            aten=("aten::pixel_unshuffle",),
            source_names=("pixel_unshuffle", "PixelUnshuffle"),
        ),
    )
}


def _check_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str):
        raise ValueError(f"expected operation names, got the string {names!r}")
    names = frozenset(names)
    unknown = sorted(names - OPERATIONS.keys())
    if unknown:
        raise ValueError(f"unknown forbidden operations: {', '.join(map(repr, unknown))}")
    return names


# --- the static check ---------------------------------------------------------------

# Module aliases that a notebook cell may use without importing them itself.
_DEFAULT_ALIASES = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}


def forbidden_in_source(
    source: str, names: Iterable[str], own_names: Iterable[str] = ()
) -> list[str]:
    """The operations among ``names`` that ``source`` names, by their ``source_names``.

    A bare source name matches an attribute (``F.layer_norm``, ``nn.LayerNorm``), a name,
    an imported name (``from torch.nn.functional import layer_norm as ln``) or a string
    (``getattr(F, "layer_norm")``). A dotted source name matches that module attribute
    through any alias of the module (``import torch.nn.functional as G; G.unfold``). A
    name that ``own_names`` holds (the contract functions) or that the source binds (a
    function, a class, a variable, an argument) is the student's own: ``self_attention``
    may call the student's ``scaled_dot_product_attention``, and a loss may be held in
    ``cross_entropy``. Unparsable source names nothing. This is the second line: names
    built at run time escape it, and ``Watch`` sees them.
    """
    watched = [OPERATIONS[name] for name in sorted(_check_names(names))]
    tree = syntax.parse(source)
    if tree is None:
        return []
    own_names = set(own_names) | _bound_names(tree)
    bare: dict[str, set[str]] = {}
    dotted: dict[str, set[str]] = {}
    for op in watched:
        for source_name in op.source_names:
            table = dotted if "." in source_name else bare
            table.setdefault(source_name, set()).add(op.name)
    aliases = _module_aliases(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found |= bare.get(node.attr, set())
            found |= dotted.get(_dotted_path(node, aliases), set())
        elif isinstance(node, ast.Name) and node.id not in own_names:
            found |= bare.get(node.id, set())
            found |= dotted.get(aliases.get(node.id, ""), set())
        elif isinstance(node, ast.alias):
            found |= bare.get(node.name.rpartition(".")[2], set())
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found |= dotted.get(f"{node.module}.{alias.name}", set())
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= bare.get(node.value, set())
    return sorted(found)


def _bound_names(tree: ast.AST) -> set[str]:
    """The names that ``tree`` binds itself: functions, classes, variables, arguments."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted path it is bound to by the imports of ``tree``."""
    aliases = dict(_DEFAULT_ALIASES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted_path(node: ast.Attribute, aliases: dict[str, str]) -> str:
    """``G.unfold`` -> ``torch.nn.functional.unfold`` when G is that module; else ``""``."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return ""
    return ".".join([aliases[node.id], *reversed(attributes)])


# --- Python code: which code objects are forbidden built-ins -------------------------

_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_LOCAL_SLOTS = frozenset(dis.haslocal) | frozenset(dis.hasfree)
# The compiler emits LOAD_ATTR for a method of a name it saw imported in the same
# source, LOAD_METHOD otherwise: a copy compiled without the module's imports differs so.
_SAME_OPCODE = {"LOAD_METHOD": "LOAD_ATTR"}
_NO_OPS = frozenset({"EXTENDED_ARG", "NOP", "CACHE"})


def _instructions(code: types.CodeType) -> tuple:
    """The bytecode of ``code`` in a form that copies of one source share.

    Jumps point to instruction indices (not byte offsets), locals are slot numbers (a
    copy may rename them), whitespace runs in strings are one space, nested code objects
    are compared the same way. The function's name, docstring, file and line numbers do
    not count.
    """
    raw = list(dis.get_instructions(code))
    kept = [instruction for instruction in raw if instruction.opname not in _NO_OPS]
    index_at = {}
    next_index = len(kept)
    for instruction in reversed(raw):  # a jump to an EXTENDED_ARG lands on what follows
        if instruction.opname not in _NO_OPS:
            next_index -= 1
        index_at[instruction.offset] = next_index
    normalised = []
    for instruction in kept:
        if instruction.opcode in _JUMPS:
            argument = index_at.get(instruction.argval, instruction.argval)
        elif instruction.opcode in _LOCAL_SLOTS:
            argument = instruction.arg
        elif isinstance(instruction.argval, types.CodeType):
            argument = _instructions(instruction.argval)
        elif isinstance(instruction.argval, str):  # a continued line's indent may differ
            argument = " ".join(instruction.argval.split())
        else:
            argument = instruction.argval
        normalised.append((_SAME_OPCODE.get(instruction.opname, instruction.opname), argument))
    return tuple(normalised)


def _resolve(path: str):
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(f"cannot import {path}")


@dataclass
class _Target:
    """One watched Python function; ``forms`` is filled when a copy is suspected."""

    function: types.FunctionType
    operation: str
    forms: list[tuple] | None = None

    def matches(self, code: types.CodeType) -> bool:
        """Whether ``code`` is this function's code, or a copy of it."""
        if code is self.function.__code__:
            return True
        if self.forms is None:
            self.forms = [_instructions(self.function.__code__)]
            recompiled = _recompiled(self.function)
            if recompiled is not None:
                self.forms.append(_instructions(recompiled))
        return _instructions(code) in self.forms


def _recompiled(function: types.FunctionType) -> types.CodeType | None:
    """``function``'s code compiled again from its source, alone: as a copy made with
    ``exec(inspect.getsource(...))`` is (the compiler picks other call instructions when it
    does not see the module's imports)."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
        module = compile(source, "<copy>", "exec")
    except (OSError, TypeError, SyntaxError):
        return None
    for constant in module.co_consts:
        if isinstance(constant, types.CodeType) and constant.co_name == function.__name__:
            return constant
    return None


def _python_targets() -> dict[tuple[str, ...], list[_Target]]:
    """Watched functions by the ``co_names`` of their code (a copy uses the same global
    and attribute names). Resolved once, when this module is imported: before student
    code can patch torch."""
    targets: dict[tuple[str, ...], list[_Target]] = {}
    for op in OPERATIONS.values():
        for path in op.python:
            function = _resolve(path)
            while hasattr(function, "__wrapped__"):
                function = function.__wrapped__
            targets.setdefault(function.__code__.co_names, []).append(_Target(function, op.name))
    return targets


_TARGETS = _python_targets()
# id(code) -> (code, operation or None); keeping the code keeps its id from being reused.
_VERDICTS: dict[int, tuple[types.CodeType, str | None]] = {}
_MAX_VERDICTS = 50_000


def _python_operation(code: types.CodeType) -> str | None:
    """The operation whose Python code ``code`` is (the same object, or a copy)."""
    verdict = _VERDICTS.get(id(code))
    if verdict is not None and verdict[0] is code:
        return verdict[1]
    operation = None
    for target in _TARGETS.get(code.co_names, ()):
        if target.matches(code):
            operation = target.operation
            break
    if len(_VERDICTS) >= _MAX_VERDICTS:
        _VERDICTS.clear()
    _VERDICTS[id(code)] = (code, operation)
    return operation


# --- dispatcher operators: which recorded names are forbidden operations -------------

# A watched Python function, while it runs, is a range of this name in torch's profile,
# so that the operators it calls are known to be inside it.
_MARKER = "forbidden-python::"
_PROFILER_MARKS = frozenset({"__start_profile", "__stop_profile", "[memory]"})
_NOTHING: frozenset[str] = frozenset()
_EVENT_OPERATIONS: dict[str, frozenset[str]] = {}
_MAX_EVENT_NAMES = 50_000


def _event_operations(event_name: str) -> frozenset[str]:
    """The operations that a recorded operator (or marker) name means; usually none."""
    operations = _EVENT_OPERATIONS.get(event_name)
    if operations is None:
        if event_name.startswith(_MARKER):
            name = event_name[len(_MARKER) :]
            operations = frozenset({name}) if name in OPERATIONS else _NOTHING
        else:
            operations = frozenset(
                op.name
                for op in OPERATIONS.values()
                if any(fnmatch.fnmatchcase(event_name, pattern) for pattern in op.aten)
            )
        if len(_EVENT_OPERATIONS) >= _MAX_EVENT_NAMES:
            _EVENT_OPERATIONS.clear()
        _EVENT_OPERATIONS[event_name] = operations
    return operations


def _profile_records(events_by_thread, records: set) -> None:
    """Add ``(operation, operations around it)`` for each forbidden operator recorded.

    The profile lists, per thread, a range's start (with its name) and its end (with
    none), in order, so nesting is a stack.
    """
    for events in events_by_thread:
        around = _NOTHING
        stack = []
        for event in events:
            name = event.name()
            if not name:
                if stack:
                    around = stack.pop()
                continue
            if name in _PROFILER_MARKS:
                continue
            stack.append(around)
            operations = _event_operations(name)
            if operations:
                for operation in operations:
                    records.add((operation, around))
                around = around | operations


# --- the watch ------------------------------------------------------------------------

# Bound now, before any student code can replace them.
_ENABLE_PROFILER = torch._C._autograd._enable_profiler_legacy
_DISABLE_PROFILER = torch._C._autograd._disable_profiler_legacy
_ENABLE_RECORD_FUNCTION = torch._C._autograd._enable_record_function
_RANGE_START = torch._C._autograd._record_function_with_args_enter
_RANGE_END = torch._C._autograd._record_function_with_args_exit
_PROFILER_CONFIG = torch._C._profiler.ProfilerConfig(
    torch._C._profiler.ProfilerState.CPU,
    False,  # report_input_shapes
    False,  # profile_memory
    False,  # with_stack
    False,  # with_flops
    False,  # with_modules
    torch._C._profiler._ExperimentalConfig(),
)
_SET_PROFILE = sys.setprofile
_GET_PROFILE = sys.getprofile
_SET_THREAD_PROFILE = threading.setprofile
_GET_THREAD_PROFILE = threading.getprofile

# C functions whose call switches the watch off, and the name the student reads.
_SWITCHES = {
    function: name
    for name, function in {
        "sys.setprofile": sys.setprofile,
        "torch._C._autograd._enable_record_function": _ENABLE_RECORD_FUNCTION,
        "torch._C._autograd._clear_callbacks": torch._C._autograd._clear_callbacks,
        "torch._C._autograd._disable_profiler_legacy": _DISABLE_PROFILER,
        "torch._C._autograd._enable_profiler_legacy": _ENABLE_PROFILER,
        "torch._C._autograd._disable_profiler": torch._C._autograd._disable_profiler,
        "torch._C._autograd._enable_profiler": torch._C._autograd._enable_profiler,
        "torch._C._autograd._prepare_profiler": torch._C._autograd._prepare_profiler,
    }.items()
}
SWITCHED_OFF = "{}, which switches off the check for forbidden operations"
_OWN_GLOBALS = globals()  # this module's own C calls are not the watched code's

# Objects whose methods a thread calls to hand a result over (a Future, a queue, an
# Event, join): a started thread's recording is handed to the watches before each call.
_HANDOVERS = (type(threading.Lock()), type(threading.RLock()), type(queue.SimpleQueue()))
_WATCHED_IN_PYTHON = frozenset(name for name, op in OPERATIONS.items() if op.python)

_LOCK = threading.Lock()
_ACTIVE: list[Watch] = []  # every watch entered and not yet left, in any thread
_THREAD_HOOK_SAVED: list = []  # threading's profile hook before the first watch
_LOCAL = threading.local()  # .session: the _Session of this thread, if any


class _Session:
    """The recording on one thread: torch's profiler and the thread's profile function.

    A session of the thread that enters a watch serves the watches entered on it
    (``watches``, innermost last). A session of a thread started by watched code
    (``root_frame`` is its first frame) serves the watches active when it started and
    those active whenever it hands a result over; it ends with its first frame.
    """

    def __init__(self, watches: list[Watch], root_frame=None):
        self.watches = watches
        self.root_frame = root_frame
        self.python_operations = _WATCHED_IN_PYTHON if root_frame else frozenset()
        self.records: set = set()  # (operation, operations around it)
        self.switched_off: set[str] = set()
        self.frames: list = []  # (frame, range handle, operations around inside) per watched call
        self.previous_profile = None
        self.profile = self._make_profile()

    def _make_profile(self):
        session, frames, records = self, self.frames, self.records
        started_thread = self.root_frame is not None

        def profile(frame, event, arg):
            if event == "call":
                if session.python_operations:
                    operation = _python_operation(frame.f_code)
                    if operation is not None and operation in session.python_operations:
                        around = frames[-1][2] if frames else _NOTHING
                        records.add((operation, around))
                        handle = _RANGE_START(_MARKER + operation)
                        frames.append((frame, handle, around | {operation}))
            elif event == "return":
                if frames and frames[-1][0] is frame:
                    _RANGE_END(frames.pop()[1])
                elif frame is session.root_frame:
                    session.end_thread()
            elif event == "c_call" and frame.f_globals is not _OWN_GLOBALS:
                try:
                    switch = _SWITCHES.get(arg)
                except TypeError:  # an unhashable callable
                    switch = None
                if switch is not None:
                    session.switched_off.add(switch)
                if started_thread and type(getattr(arg, "__self__", None)) in _HANDOVERS:
                    session.flush()
                    session.resume()

        return profile

    def start(self) -> None:
        """Turn on torch's profiler and the profile function on this thread."""
        self.previous_profile = _GET_PROFILE()
        self.resume()

    def resume(self) -> None:
        """Turn torch's profiler and the profile function (back) on."""
        if self.root_frame is None:
            names = frozenset().union(*(watch.names for watch in self.watches))
            self.python_operations = names & _WATCHED_IN_PYTHON
        _ENABLE_RECORD_FUNCTION(True)  # the default, which code run earlier may have changed
        try:
            _ENABLE_PROFILER(_PROFILER_CONFIG)
        except RuntimeError:  # a profiler left running by the watched code
            self.switched_off.add("torch's profiler, left running")
        _SET_PROFILE(self.profile)

    def flush(self) -> None:
        """Turn torch's profiler and the profile function off, and hand what was recorded
        to the watches."""
        try:
            events = _DISABLE_PROFILER()
        except RuntimeError:  # switched off by the watched code
            self.switched_off.add("torch's profiler, switched off")
            events = []
        if _GET_PROFILE() is not self.profile:
            self.switched_off.add("sys.setprofile")
        _SET_PROFILE(None)  # reading the profile calls C functions: unwatched, it is faster
        _profile_records(events, self.records)
        records, switched_off = set(self.records), set(self.switched_off)
        self.records.clear()
        self.switched_off.clear()
        with _LOCK:
            watches = self.watches + (_ACTIVE if self.root_frame is not None else [])
            for watch in dict.fromkeys(watches):
                watch._records |= records
                watch._switched_off |= switched_off

    def stop(self) -> None:
        """Flush, and give this thread its previous profile function back."""
        try:
            self.flush()
        finally:
            _SET_PROFILE(self.previous_profile)
            while self.frames:
                _RANGE_END(self.frames.pop()[1])

    def end_thread(self) -> None:
        """The started thread's first frame returns: stop watching the thread."""
        try:
            self.stop()
        finally:
            self.root_frame = None
            _LOCAL.session = None
            _SET_PROFILE(None)


def _watch_new_thread(frame, event, arg) -> None:
    """``threading``'s profile hook while a watch is active, the first event of every new
    thread: watch the thread, for the watches active now, until ``frame`` returns."""
    with _LOCK:
        watches = list(_ACTIVE)
    if not watches:
        _SET_PROFILE(None)
        return
    session = _Session(watches, root_frame=frame)
    _LOCAL.session = session
    session.resume()


class Watch:
    """Records which of the given operations run inside it.

    ``with Watch(names) as watch: function(...)``, then ``watch.reached`` holds the sorted
    names of the operations reached (each by its outermost call), and also, when the
    watched code switched the watch off, a sentence that says how (``SWITCHED_OFF``):
    treat both as reaching a forbidden operation. ``watch.switched_off`` lists the latter.

    It watches the thread that enters it, and the threads that start (with ``threading``)
    while it is active: what such a thread reaches before it hands a result over (a
    Future, a queue, an Event, ``join``) goes to the watches active then. Nothing stays
    enabled on the entering thread after ``__exit__``, whatever the watched code raised
    (a started thread stays watched until it ends). Watches may nest, on one thread or
    several. A backward pass inside it is recorded too, but reaches no forward operator.
    """

    def __init__(self, names: Iterable[str]):
        self.names = _check_names(names)
        self.reached: list[str] = []
        self.switched_off: list[str] = []
        self._records: set = set()
        self._switched_off: set[str] = set()
        self._session: _Session | None = None

    def __enter__(self) -> Watch:
        if self._session is not None:
            raise RuntimeError("this Watch is already entered")
        self.reached, self.switched_off = [], []
        self._records, self._switched_off = set(), set()
        if not self.names:
            return self
        with _LOCK:
            if not _ACTIVE:
                _THREAD_HOOK_SAVED[:] = [_GET_THREAD_PROFILE()]
                _SET_THREAD_PROFILE(_watch_new_thread)
            _ACTIVE.append(self)
        session = getattr(_LOCAL, "session", None)
        if session is not None and session.root_frame is not None:
            session.end_thread()  # a started thread that enters a watch is that watch's
            session = None
        if session is None:
            session = _LOCAL.session = _Session([self])
            session.start()
        else:  # what ran so far belongs to the outer watches only
            session.flush()
            session.watches.append(self)
            session.resume()
        self._session = session
        return self

    def __exit__(self, *exc) -> None:
        session = self._session
        if session is None:
            return
        self._session = None
        try:
            if session.watches == [self] and session.root_frame is None:
                _LOCAL.session = None
                session.stop()
            else:
                session.flush()
                session.watches.remove(self)
                session.resume()
        finally:
            with _LOCK:
                _ACTIVE.remove(self)
                if not _ACTIVE:
                    if _GET_THREAD_PROFILE() is not _watch_new_thread:
                        self._switched_off.add("threading.setprofile")
                    _SET_THREAD_PROFILE(_THREAD_HOOK_SAVED.pop() if _THREAD_HOOK_SAVED else None)
            self._conclude()

    def _conclude(self) -> None:
        with _LOCK:
            reached = {
                operation
                for operation, around in self._records
                if operation in self.names and not (around & self.names)
            }
            self.switched_off = sorted(self._switched_off)
        self.reached = sorted(reached) + [SWITCHED_OFF.format(s) for s in self.switched_off]
