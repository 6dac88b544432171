"""Known mistakes: a registry, and the helpers that many chapters' mistakes share.

A chapter's mistakes file holds only its mistakes, each a whole function (or class) as a
student might write it with one error, registered with the sentence that names the error:

    mistake = KnownMistakes()

    @mistake("scaled_dot_product_attention", "the scores are not divided by sqrt(d_k).")
    def sdpa_no_scaling(q, k, v):
        return softmax_attention(q, k, v, scale=1.0)

    MUTANTS = mistake.mutants

The registered name is the function's own. The grader tries the mutants in the order of
registration; when a failing submission's outputs match one, its feedback names the mistake.
The sentences (never the code) also reach the exercise notebooks' visible tests.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from collections.abc import Callable

import torch

from autograder.kit.battery import Mutant


class KnownMistakes:
    """The known mistakes of one assignment, in the order they are registered."""

    def __init__(self):
        self._mutants: list[Mutant] = []

    def __call__(self, function: str, mistake: str) -> Callable:
        """A decorator that registers ``implementation`` as a mistake in ``function``."""

        def register(implementation):
            name = implementation.__name__
            if any(mutant.name == name for mutant in self._mutants):
                raise ValueError(f"two known mistakes are called {name}")
            self._mutants.append(Mutant(function, name, mistake, implementation))
            return implementation

        return register

    @property
    def mutants(self) -> tuple[Mutant, ...]:
        return tuple(self._mutants)

    def sentence(self, name: str) -> str:
        """The sentence of the mistake called ``name`` (for the visible tests)."""
        for mutant in self._mutants:
            if mutant.name == name:
                return mutant.mistake
        raise KeyError(f"no known mistake called {name!r}")


def softmax_attention(q, k, v, scale=None, mask=None, dim=-1):
    """Attention as the references compute it, with the knobs mistakes turn.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv); ``scale`` defaults to 1/sqrt(d);
    ``mask`` (True = may attend) is applied to the scores with -inf; ``dim`` is the softmax
    axis. Returns (out (..., Tq, dv), weights (..., Tq, Tk)).
    """
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return weights @ v, weights


def standalone_source(mutant) -> str:
    """Source that defines ``mutant.function`` as the mistake, with the helpers it calls and
    without the registering decorator: a cell a student could have written (for benchmarks
    and end-to-end tests). The cell's imports (math, torch, F, nn) are the notebook's."""
    implementation = mutant.implementation
    helpers = [inspect.getsource(helper) for helper in _helpers(implementation)]
    own = inspect.getsource(implementation)
    own = own[re.search(r"^(def|class) ", own, re.MULTILINE).start() :]  # no decorator
    pattern = rf"\b(def|class) {implementation.__name__}\b"
    own = re.sub(pattern, rf"\1 {mutant.function}", own, count=1)
    return "\n\n".join([*helpers, own]).rstrip() + "\n"


def _helpers(function, found=None) -> list:
    """The plain functions of the course that ``function`` (or a class's methods) calls,
    dependencies first."""
    found = [] if found is None else found
    if inspect.isclass(function):
        methods = [m for m in vars(function).values() if inspect.isfunction(m)]
        names = set().union(*(_names_used(method.__code__) for method in methods))
        namespace = vars(sys.modules[function.__module__])
    else:
        names = _names_used(function.__code__) if inspect.isfunction(function) else set()
        namespace = getattr(function, "__globals__", {})
    for name in sorted(names):
        helper = namespace.get(name)
        course_function = inspect.isfunction(helper) and helper.__module__.startswith("autograder")
        if course_function and helper is not function and helper not in found:
            _helpers(helper, found)
            if helper not in found:
                found.append(helper)
    return found


def _names_used(code) -> set[str]:
    """Global names used by a code object and the functions and lambdas inside it."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if inspect.iscode(constant):
            names |= _names_used(constant)
    return names
