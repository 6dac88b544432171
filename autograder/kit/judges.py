"""Judges: compare a submission's results with the reference's, and say what differs.

Every judge returns None when the submission is right, else one short reason in the
student's terms. Reasons name shapes, dtypes, devices and error sizes, never the
reference's values or the hidden inputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from autograder.runtime.executor import RETURNED, Call, Result


def tensor_problem(name: str, actual, expected: torch.Tensor, rtol: float, atol: float):
    """What is wrong with tensor ``actual`` (called ``name``) given ``expected``, or None.

    NaN is right only where NaN is expected (a known mistake's result can hold NaN).
    """
    if type(actual) is not torch.Tensor:  # subclasses could lie about their values
        return f"{name} is a {type(actual).__name__}, not a plain torch.Tensor"
    if actual.shape != expected.shape:
        return f"{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    if actual.dtype != expected.dtype:
        return f"{name} has dtype {actual.dtype}, expected {expected.dtype}"
    if actual.device.type != expected.device.type:
        return f"{name} is on {actual.device.type}, expected {expected.device.type}"
    if expected.device.type == "meta":
        return None
    if actual.dtype == torch.bool or not actual.is_floating_point():
        if not torch.equal(actual.cpu(), expected.cpu()):
            wrong = (actual.cpu() != expected.cpu()).sum().item()
            return f"{name} differs in {wrong} of {expected.numel()} entries"
        return None
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if (a.isnan() & ~e.isnan()).any():
        return f"{name} contains NaN"
    if (a.isinf() & ~e.isinf()).any():
        return f"{name} contains infinities"
    finite = e.isfinite()
    error = (a - e).abs()
    allowed = atol + rtol * e.abs()
    bad = finite & ~(error <= allowed)
    if bad.any():
        return (
            f"{name} differs in {bad.sum().item()} of {e.numel()} entries "
            f"(largest difference {error[finite].max().item():.3g})"
        )
    if (~finite & (a != e) & ~(a.isnan() & e.isnan())).any():
        return f"{name} differs where the expected value is not finite"
    return None


# A decimal number or a printed tensor in an error message may be a hidden input that
# the student's code put there on purpose.
_HIDDEN_VALUES = re.compile(r"\d\.\d|tensor\(|array\(|\b(nan|inf)\b", re.IGNORECASE)


def public_error(error: str) -> str:
    """The student's own error, without its message when that could carry hidden inputs."""
    kind, _, message = error.partition(": ")
    if _HIDDEN_VALUES.search(message):
        return f"{kind} (its message is withheld because it shows tensor values)"
    return error


def compare_result(actual: Result, expected: Result, rtol: float, atol: float, grads: bool = True):
    """The first difference between two results of the same call, or None."""
    if actual.error:
        if actual.error.startswith(RETURNED):
            return actual.error
        return f"it raised {public_error(actual.error)}"
    if expected.error:  # a broken check; say so rather than blame the student
        raise RuntimeError(f"the reference raised {expected.error}")
    if actual.structure != expected.structure:
        return f"it returned {actual.structure}, expected {expected.structure}"
    for index, (a, e) in enumerate(zip(actual.outputs, expected.outputs, strict=True)):
        if e is None:
            continue
        name = "the output" if len(expected.outputs) == 1 else f"output {index}"
        problem = tensor_problem(name, a, e, rtol, atol)
        if problem:
            return problem
    for name, count in expected.calls.items():
        if actual.calls.get(name) != count:
            return f"it called {name} {actual.calls.get(name, 0)} times, expected {count}"
        e, a = expected.recorded.get(name), actual.recorded.get(name)
        if e is not None and (a is None or tensor_problem("", a, e, 0.0, 0.0)):
            return f"the arguments it passed to {name} differ from the expected ones"
    for name, e in expected.inputs_after.items():
        a = actual.inputs_after.get(name)
        if a is None or tensor_problem(name, a, e, 0.0, 0.0):
            return f"it modified its input {name} in place"
    if grads:
        for name, e in expected.grads.items():
            a = actual.grads.get(name)
            if e is None:
                continue
            if a is None:
                return f"no gradient flows back to {name}"
            problem = tensor_problem(f"the gradient of {name}", a, e, rtol * 10, atol * 10)
            if problem:
                return problem
    return None


def match_reference(rtol: float = 1e-5, atol: float = 1e-6, grads: bool = True):
    """A judge: every call's outputs (and gradients) equal the reference's."""

    def judge(calls: Sequence[Call], actual: Sequence[Result], expected: Sequence[Result]):
        for number, (a, e) in enumerate(zip(actual, expected, strict=True)):
            problem = compare_result(a, e, rtol, atol, grads)
            if problem:
                return problem if len(calls) == 1 else f"call {number + 1}: {problem}"
        return None

    return judge


# Tolerances by dtype, for checks that run in low precision.
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=4e-2),
}
