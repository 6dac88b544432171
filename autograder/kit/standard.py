"""The standard checks of a contract function, written once for every chapter.

Every contract function is checked the same ways beyond its own values: gradients,
float64, float16 and bfloat16, the meta device (shapes without values: it catches tensors
created on a fixed device) and the grading machine's accelerator. ``standard_checks``
makes those checks from one ``draw`` of the function's typical calls; their messages come
from the function's name and the kind of check, with an optional hint per kind.

    standard_checks(
        "self_attention",
        partial(self_calls, count=2),       # draw(generator, **options) -> [Call, ...]
        prefix="self_attention",
        points={"gradients": 1.5, "float16": 0.5, "bfloat16": 0.5, "meta": 1, "accelerator": 1},
        hints={"float16": "let torch.softmax do the normalisation."},
    )

Every check also sees whether the inputs were modified in place (``compare_result``), and
the grader fails every check of a function that reaches a forbidden operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch

from autograder.kit.battery import Check
from autograder.kit.judges import TOLERANCES, match_reference
from autograder.runtime.executor import ACCELERATOR

KINDS = ("gradients", "float64", "float16", "bfloat16", "meta", "accelerator")
# Most functions earn half a point in each floating dtype: points={"gradients": 1.5,
# **HALF_POINT_PER_DTYPE, "meta": 1.0, "accelerator": 1.0}.
HALF_POINT_PER_DTYPE = {"float64": 0.5, "float16": 0.5, "bfloat16": 0.5}


def _message(function: str, kind: str, grads: bool) -> str:
    if kind == "gradients":
        return (
            f"the gradients of {function} are wrong: keep every step differentiable (no"
            " .detach(), .data, .numpy(), .item() or in-place edits of a tensor that needs"
            " them)."
        )
    if kind in ("float64", "float16", "bfloat16"):
        return (
            f"{function} is wrong in {kind}: keep the inputs' dtype and create no tensor"
            " with a fixed dtype."
        )
    if kind == "meta":
        return (
            f"{function} fails on the meta device (shapes, no values): a tensor is created on"
            " a fixed device, or the result has the wrong shape or dtype."
        )
    # On a grader without a GPU this check runs on the CPU, where the other checks already
    # say what is wrong: the device hint must only speak when this check fails alone.
    return (
        f"{function} is wrong on the grading machine's accelerator (a GPU when there is one,"
        f" else the CPU){', gradients included' if grads else ''}. If this is the only check"
        " of it that fails, a tensor is created on a fixed device: create new tensors on an"
        " input's device."
    )


def _options(kind: str, grads: bool) -> dict:
    if kind == "gradients":
        return {"grad": True}
    if kind in ("float64", "float16", "bfloat16"):
        return {"dtype": getattr(torch, kind)}
    if kind == "meta":
        return {"device": "meta"}
    return {"device": ACCELERATOR, "grad": grads}


def standard_checks(
    function: str,
    draw: Callable[..., list],
    *,
    points: Mapping[str, float],
    prefix: str | None = None,
    hints: Mapping[str, str] | None = None,
    tolerances: Mapping[str, Mapping] | None = None,
    grads: bool = True,
) -> tuple[Check, ...]:
    """The standard checks of ``function`` for the kinds that ``points`` names.

    ``draw(generator, **options)`` returns the calls of one check, with the options
    (``dtype``, ``device``, ``grad``) set on every call. ``grads=False`` for functions
    whose outputs carry no gradient (masks, integer results): their accelerator check then
    compares values only. The meta check is gated: it pays only once the function's values
    are right.
    """
    unknown = set(points) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds of standard check: {sorted(unknown)}")
    hints, tolerances = hints or {}, tolerances or {}
    checks = []
    for kind in KINDS:
        if not points.get(kind):
            continue
        message = _message(function, kind, grads)
        if kind in hints:
            message = f"{message} {hints[kind]}"
        dtype = getattr(torch, kind) if kind.startswith(("float", "bfloat")) else torch.float32
        tolerance = tolerances.get(kind, TOLERANCES[dtype])
        options = _options(kind, grads)
        checks.append(
            Check(
                name=f"{prefix or function}_{kind}",
                function=function,
                points=points[kind],
                calls=lambda generator, options=options: draw(generator, **options),
                message=message,
                judge=match_reference(**tolerance),
                gated=kind == "meta",
            )
        )
    return tuple(checks)


def device_argument_checks(
    function: str,
    draw: Callable[..., list],
    *,
    prefix: str,
    points: Mapping[str, float],
    creates: str,
    judge,
) -> tuple[Check, ...]:
    """The meta and accelerator checks of a function that takes a ``device`` argument and
    creates ``creates`` (for instance "the mask") there.

    ``draw(generator, device)`` returns calls that pass ``device=CALL_DEVICE`` and run on
    ``device``; ``points`` has a "meta" and an "accelerator" entry. The meta check is gated
    (it compares shapes only).
    """
    return (
        Check(
            f"{prefix}_meta",
            function,
            points["meta"],
            partial(draw, device="meta"),
            f"{function} ignores its device argument: create {creates} with device=device"
            " (the check asks for the meta device).",
            judge,
            gated=True,
        ),
        Check(
            f"{prefix}_accelerator",
            function,
            points["accelerator"],
            partial(draw, device=ACCELERATOR),
            f"{function} is wrong when asked for the grading machine's accelerator (a GPU when"
            f" there is one): create {creates} with device=device.",
            judge,
        ),
    )
