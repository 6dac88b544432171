"""Calls of contract functions, and what they returned: the data that crosses the sandbox.

This module is the one piece of the grader that also runs next to student code, in the
grading child process. It therefore imports nothing but torch and the standard library,
and it knows nothing secret: no reference, no hidden input generator, no seed.

A ``Call`` says what to run (a function, or a method of a class built from given
arguments and weights), with which tensors, on which device and in which dtype. A
``Result`` says what came back: the outputs flattened into a list of plain tensors,
the gradients, the arguments as they were after the call, or the error raised.
``execute_call`` turns one into the other, in whatever namespace it is given: the
reference module in the grading process, the student's namespace in the child.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .operations import Watch

ACCELERATOR = "accelerator"  # resolved to "cuda" when present, else "cpu"
# The prefix of a Result.error about what the code returned (rather than raised).
RETURNED = "it returned "
MAX_OUTPUTS = 64  # values in one call's result; a contract function returns a few tensors
# An argument equal to this string is replaced by the call's resolved device (as a
# string), for functions that take a ``device`` argument and no tensor to follow.
CALL_DEVICE = "<call device>"


def resolve_device(device: str) -> str:
    """Map the placeholder ``accelerator`` to the best device of this machine."""
    if device == ACCELERATOR:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class Module:
    """Build ``Call.function`` as a class with these arguments, load weights, call a method."""

    init_args: tuple = ()
    init_kwargs: Mapping = field(default_factory=dict)
    state_dict: Mapping[str, torch.Tensor] = field(default_factory=dict)
    method: str = "forward"


@dataclass(frozen=True)
class Callback:
    """A callable argument described as data; the process that runs the call builds it.

    The grader never sends code: it names a ``kind`` of callable and its tensors, and the
    executing process builds the function, counts its calls and records the first argument
    of each (``Result.calls``, ``Result.recorded``). Kinds:

    - ``"rnn"``: a recurrent decoder step, ``step(prev_tokens (B,), h (B, H)) ->
      (logits (B, V), h)`` with ``h = tanh(embedding[prev_tokens] + h @ W_hh.T)`` and
      ``logits = h @ W_out.T``; tensors ``embedding`` (V, H), ``W_hh`` (H, H), ``W_out`` (V, H).
    - ``"scripted"``: call i returns ``(logits[i], h + 1)`` whatever it is given (the last
      row again past the end); tensor ``logits`` (calls, B, V).
    """

    name: str  # what feedback calls it, e.g. "step"
    kind: str
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class OnDevice:
    """A tensor argument that stays on ``device`` whatever the call's device and dtype.

    For arguments a contract allows on another device than the others, such as the
    ``lengths`` of a padded batch kept on the CPU while the inputs are on a GPU.
    """

    tensor: torch.Tensor
    device: str = "cpu"


@dataclass(frozen=True)
class Call:
    """One call of a contract function.

    Args and kwargs hold tensors and plain values (int, float, bool, str, None,
    torch.dtype). Floating tensors are cast to ``dtype`` when it is given, and every
    tensor is moved to ``device`` (``cpu``, ``meta``, ``cuda`` or ``accelerator``),
    except those wrapped in ``OnDevice``; an argument equal to ``CALL_DEVICE`` becomes
    that device's name.
    With ``grad``, floating tensor arguments (and the module's parameters) require
    grad, and the outputs are reduced against fixed pseudo-random weights
    (``upstream_weights``) before ``backward``.
    """

    function: str
    args: tuple = ()
    kwargs: Mapping = field(default_factory=dict)
    module: Module | None = None
    device: str = "cpu"
    dtype: torch.dtype | None = None
    grad: bool = False
    seed: int = 0


@dataclass
class Result:
    """What one call returned, flattened to plain tensors.

    ``structure`` describes the nesting of the outputs (``"tensor"``, ``"tuple[2]"``,
    ...), ``outputs`` holds the tensors in order (None where an element was not a
    tensor), ``grads`` maps an argument name (``"args[0]"``, ``"kwargs[x]"``,
    ``"param[norm1.weight]"``) to its gradient (None when it got none),
    ``inputs_after`` holds the tensor arguments after the call (to see in-place
    changes), ``error`` is ``"ExceptionType: message"`` when the call raised.
    """

    structure: str = ""
    outputs: list = field(default_factory=list)
    grads: dict = field(default_factory=dict)
    inputs_after: dict = field(default_factory=dict)
    error: str | None = None
    forbidden: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)  # callback name -> number of calls
    recorded: dict = field(default_factory=dict)  # callback name -> first arguments, stacked


def upstream_weights(output: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    """Fixed weights that reduce one output to a scalar before ``backward``."""
    generator = torch.Generator().manual_seed(seed * 1009 + index)
    weights = torch.rand(tuple(output.shape), generator=generator, dtype=torch.float64) - 0.5
    return weights.to(dtype=output.dtype, device=output.device)


def _prepare(value, device: str, dtype, grad: bool, callbacks=None):
    if isinstance(value, OnDevice):
        return value.tensor.detach().to(resolve_device(value.device)).clone()
    if isinstance(value, Callback):
        tensors = {k: _prepare(t, device, dtype, False) for k, t in value.tensors.items()}
        return _build_callback(value, tensors, callbacks)
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to(device).clone()
        if grad and tensor.is_floating_point():
            tensor.requires_grad_(True)
        return tensor
    if isinstance(value, (list, tuple)):
        return type(value)(_prepare(item, device, dtype, grad, callbacks) for item in value)
    if isinstance(value, str) and value == CALL_DEVICE:
        return device
    return value


def _build_callback(spec: Callback, tensors: dict, log: dict | None):
    """The live function of ``spec``; each call's first argument is appended to ``log``."""
    arguments = [] if log is None else log.setdefault(spec.name, [])

    def rnn(prev_tokens, h):
        arguments.append(prev_tokens.detach().clone())
        h = torch.tanh(tensors["embedding"][prev_tokens] + h @ tensors["W_hh"].T)  # (B, H)
        return h @ tensors["W_out"].T, h  # (B, V), (B, H)

    def scripted(prev_tokens, h):
        arguments.append(prev_tokens.detach().clone())
        logits = tensors["logits"]  # (calls, B, V)
        return logits[min(len(arguments), len(logits)) - 1], h + 1

    builders = {"rnn": rnn, "scripted": scripted}
    if spec.kind not in builders:
        raise ValueError(f"unknown kind of callback {spec.kind!r}")
    return builders[spec.kind]


def _recorded(log: dict) -> tuple[dict, dict]:
    """(calls per callback, the first arguments of its calls stacked when they stack)."""
    calls = {name: len(arguments) for name, arguments in log.items()}
    recorded = {}
    for name, arguments in log.items():
        shapes = {(tuple(a.shape), a.dtype) for a in arguments if isinstance(a, torch.Tensor)}
        if arguments and len(shapes) == 1 and all(isinstance(a, torch.Tensor) for a in arguments):
            recorded[name] = torch.stack(arguments)
    return calls, recorded


def _flatten(value, outputs: list) -> str:
    """Append the tensors of ``value`` to ``outputs``; return its structure."""
    if type(value) in (tuple, list):
        inner = ",".join(_flatten(item, outputs) for item in value)
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, torch.Tensor):
        outputs.append(value)
        return "tensor"
    outputs.append(None)
    return type(value).__name__


def _named_inputs(args: tuple, kwargs: Mapping) -> dict:
    named = {f"args[{i}]": value for i, value in enumerate(args)}
    named.update({f"kwargs[{key}]": value for key, value in kwargs.items()})
    return {name: value for name, value in named.items() if isinstance(value, torch.Tensor)}


def describe_error(error: BaseException) -> str:
    """``"Type: first line of the message"``, even for an exception whose ``__str__`` raises."""
    try:
        lines = str(error).strip().splitlines()
    except BaseException:  # a hostile __str__
        lines = []
    try:
        name = str(type(error).__name__)
    except BaseException:
        name = "an exception"
    first = lines[0][:300] if lines else ""
    return f"{name}: {first}" if first else name


def execute_call(namespace: Mapping, call: Call, forbidden: Iterable[str] = ()) -> Result:
    """Run ``call`` with the callables found in ``namespace``; never raises.

    ``forbidden`` names operations (``autograder.runtime.operations``) the called code may
    not reach; those it reaches while it runs are listed in ``Result.forbidden``.
    """
    result = Result()
    try:
        _execute(namespace, call, result, tuple(forbidden))
    except BaseException as error:  # a crash of the called code is data, not ours
        result.error = describe_error(error)
    return result


def _execute(namespace: Mapping, call: Call, result: Result, forbidden: tuple) -> None:
    device = resolve_device(call.device)
    target = namespace.get(call.function)
    if target is None:
        raise NameError(f"{call.function} is not defined")
    log: dict = {}
    args = _prepare(call.args, device, call.dtype, call.grad, log)
    kwargs = {k: _prepare(v, device, call.dtype, call.grad, log) for k, v in call.kwargs.items()}
    inputs = _named_inputs(args, kwargs)
    parameters = {}
    torch.manual_seed(call.seed)
    if call.module is not None:
        init_args = _prepare(call.module.init_args, "cpu", None, False)
        target = target(*init_args, **dict(call.module.init_kwargs))
        state = _prepare(dict(call.module.state_dict), device, call.dtype, False)
        if state:
            target.load_state_dict(state)
        target = target.to(device=device)
        if call.dtype is not None:
            target = target.to(dtype=call.dtype)
        target.eval()
        parameters = dict(target.named_parameters()) if call.grad else {}
        target = getattr(target, call.module.method)
    if forbidden:
        watch = Watch(forbidden)
        try:
            with watch:
                value = target(*args, **kwargs)
        finally:  # what it reached counts even when it then raised
            result.forbidden = list(watch.reached)
    else:
        value = target(*args, **kwargs)
    result.calls, result.recorded = _recorded(log)
    outputs: list = []
    result.structure = _flatten(value, outputs)
    if len(outputs) > MAX_OUTPUTS:
        result.structure = result.structure[:60] + "..."
        result.error = f"{RETURNED}{len(outputs)} values, not a tensor or a few tensors"
        return
    result.outputs = [t.detach() if isinstance(t, torch.Tensor) else None for t in outputs]
    result.inputs_after = {name: t.detach().clone() for name, t in inputs.items()}
    if call.grad:
        _backward(outputs, inputs, parameters, call.seed, result)


def _backward(outputs, inputs, parameters, seed, result) -> None:
    loss = None
    for index, output in enumerate(outputs):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            term = (output * upstream_weights(output, seed, index)).sum()
            loss = term if loss is None else loss + term
    leaves = {name: t for name, t in inputs.items() if t.requires_grad}
    leaves.update({f"param[{name}]": p for name, p in parameters.items()})
    if loss is None:
        result.grads = {name: None for name in leaves}
        return
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    result.grads = {
        name: None if g is None else g.detach() for name, g in zip(leaves, grads, strict=True)
    }
