"""Judges of properties: checks that compare the student's results with each other.

They never compare values with the reference (``expected`` gives only the structure and
shapes of a result), so the checks that use them are ``gated``: they pay only once the
function's values are right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autograder.kit.judges import TOLERANCES, tensor_problem
from autograder.runtime.executor import Call, Result

F32 = TOLERANCES[torch.float32]


def _permutation(x: torch.Tensor, x_permuted: torch.Tensor) -> torch.Tensor:
    """perm with x_permuted = x[:, perm], found by matching the tokens of batch 0."""
    same = (x_permuted[0][:, None, :] == x[0][None, :, :]).all(dim=-1)  # (T, T)
    return same.int().argmax(dim=1)


def _shape_problem(actual: Sequence[Result], expected: Sequence[Result]) -> str | None:
    for result in actual:
        if result.error:
            return f"it raised {result.error}"
        if result.structure != expected[0].structure:
            return f"it returned {result.structure}, expected {expected[0].structure}"
    for index, tensor in enumerate(actual[0].outputs + actual[1].outputs):
        reference = expected[0].outputs[index % len(expected[0].outputs)]
        if reference is None:
            continue
        name = f"output {index % len(expected[0].outputs)}"
        if type(tensor) is not torch.Tensor:
            return f"{name} is a {type(tensor).__name__}, not a plain torch.Tensor"
        if tensor.shape != reference.shape:
            return f"{name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}"
    return None


def permutation_equivariant(weights_output: int | None = None):
    """A judge for two calls, f(x, ...) then f(x[:, perm], ...): output 0 of the second is
    output 0 of the first with its tokens (dim 1) permuted, and output ``weights_output``
    (attention weights (B, ..., T, T)) has its last two dims permuted the same way."""

    def judge(calls: Sequence[Call], actual: Sequence[Result], expected: Sequence[Result]):
        problem = _shape_problem(actual, expected)
        if problem:
            return problem
        perm = _permutation(calls[0].args[0], calls[1].args[0])
        out, out_permuted = actual[0].outputs[0], actual[1].outputs[0]
        problem = tensor_problem(
            "the output for the permuted tokens", out_permuted, out[:, perm], **F32
        )
        if problem or weights_output is None:
            return problem
        weights = actual[0].outputs[weights_output]
        moved = weights[..., perm, :][..., perm]
        permuted = actual[1].outputs[weights_output]
        return tensor_problem("the weights for the permuted tokens", permuted, moved, **F32)

    return judge
