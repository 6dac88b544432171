"""Every chapter's battery, from one table: the tests a new chapter gets by adding its data.

For every assignment with a battery (``autograder.batteries.available()``): the battery
matches its contracts; the reference gets full marks on several seeds; a blank notebook and
an answer with the right shapes but wrong values get zero on every contract name; every
known mistake loses points and is named, on the same checks whatever the seed; reaching a
forbidden operation costs the whole function; every chapter's other correct answers
(``tests/correct_answers.py``) score full marks. Chapter-specific checks stay in
``test_battery_<id>.py``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from autograder.batteries import available, load_battery
from autograder.contracts import ASSIGNMENTS
from autograder.kit.battery import (
    judge_plan,
    make_plan,
    run_reference,
    scores_by_function,
)
from autograder.kit.mistakes import standalone_source
from autograder.runtime.executor import execute_call
from tests.battery_grading import grade_functions
from tests.correct_answers import CORRECT
from tests.forbidden_triggers import TRIGGERS
from tests.leaks import MARKER

ASSIGNMENTS_WITH_BATTERY = available()
SEEDS = (1, 2, 3)


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def planned(assignment_id: str, seed: int):
    """A plan and its reference results (with its mutant cache), shared by the tests."""
    battery = load_battery(assignment_id)
    plan = make_plan(battery, seed)
    return plan, run_reference(battery, plan)


def grade(assignment_id: str, namespace: dict, seed: int = SEEDS[0]):
    """Scores by function and outcomes of ``namespace``, executed here as the child does."""
    battery = load_battery(assignment_id)
    plan, expected = planned(assignment_id, seed)
    function_of = {check.name: check.function for check in battery.checks}
    actual = {
        name: [
            execute_call(namespace, call, battery.forbidden.get(function_of[name], ()))
            for call in calls
        ]
        for name, calls in plan.calls.items()
    }
    outcomes = judge_plan(battery, plan, actual, expected)
    return scores_by_function(battery, outcomes), outcomes


def reference(assignment_id: str) -> dict:
    return load_battery(assignment_id).reference_namespace()


def with_function(assignment_id: str, name: str, implementation) -> dict:
    return {**reference(assignment_id), name: implementation}


def full_marks(assignment_id: str) -> dict:
    battery = load_battery(assignment_id)
    return {function: battery.max_score(function) for function in battery.functions}


def _zeros(value):
    return tree_map(lambda t: torch.zeros_like(t) if isinstance(t, torch.Tensor) else t, value)


def right_shapes_wrong_values(target):
    """``target`` (a reference function or class) returning zeros of the right shapes."""
    if isinstance(target, type) and issubclass(target, nn.Module):

        class Zeros(target):
            def forward(self, *args, **kwargs):
                return _zeros(super().forward(*args, **kwargs))

        return Zeros
    return lambda *args, **kwargs: _zeros(target(*args, **kwargs))


def mutants():
    return [
        pytest.param(assignment_id, mutant, id=f"{assignment_id}-{mutant.name}")
        for assignment_id in ASSIGNMENTS_WITH_BATTERY
        for mutant in load_battery(assignment_id).mutants
    ]


# The battery and its contracts ---------------------------------------------------------------


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_battery_covers_exactly_its_contracts(assignment_id):
    battery = load_battery(assignment_id)
    contracts = ASSIGNMENTS[assignment_id]
    assert battery.functions == contracts.names
    assert dict(battery.forbidden) == contracts.forbidden()
    assert {f: battery.max_score(f) for f in battery.functions} == {
        c.name: c.points for c in contracts.contracts
    }


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_battery_and_mistakes_carry_leak_markers(assignment_id):
    import importlib

    for package in ("batteries", "mutants"):
        module = importlib.import_module(f"autograder.{package}.{assignment_id}")
        assert MARKER.fullmatch(module.LEAK_MARKER)


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_at_least_eight_known_mistakes_per_contract_name(assignment_id):
    battery = load_battery(assignment_id)
    for function in battery.functions:
        assert sum(m.function == function for m in battery.mutants) >= 8, function


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_plan_is_deterministic_for_a_seed_and_differs_across_seeds(assignment_id):
    battery = load_battery(assignment_id)
    first, again, other = (make_plan(battery, seed) for seed in (7, 7, 8))

    def tensors(plan):
        return [
            t
            for calls in plan.calls.values()
            for call in calls
            for t in call.args
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]

    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(again), strict=True))
    assert any(
        a.shape != b.shape or not torch.equal(a, b)
        for a, b in zip(tensors(first), tensors(other), strict=False)
    )


# What earns points -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_reference_scores_full_marks(assignment_id, seed):
    battery = load_battery(assignment_id)
    scores, outcomes = grade(assignment_id, reference(assignment_id), seed)
    failed = [(o.check.name, o.reason) for o in outcomes if not o.passed]
    assert not failed
    assert scores == {f: battery.max_score(f) for f in battery.functions}


def correct_answers():
    return [
        pytest.param(assignment_id, variant, id=f"{assignment_id}-{variant}")
        for assignment_id in ASSIGNMENTS_WITH_BATTERY
        for variant in CORRECT[assignment_id]
    ]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("assignment_id, variant", correct_answers())
def test_other_correct_implementations_score_full_marks(assignment_id, variant, seed):
    """The other names of the namespace are the reference's."""
    namespace = {**reference(assignment_id), **CORRECT[assignment_id][variant]}
    scores, outcomes = grade(assignment_id, namespace, seed)
    failed = [outcome.feedback() for outcome in outcomes if not outcome.passed]
    assert scores == full_marks(assignment_id), failed


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_every_contract_name_has_another_correct_answer(assignment_id):
    answered = {name for variant in CORRECT[assignment_id].values() for name in variant}
    assert answered == set(load_battery(assignment_id).functions)


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_blank_notebook_scores_zero_with_a_reason_for_every_check(assignment_id):
    scores, outcomes = grade(assignment_id, {})
    assert set(scores.values()) == {0}
    assert all("is not defined" in outcome.reason for outcome in outcomes)


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_right_shapes_with_wrong_values_score_zero_on_every_name(assignment_id):
    namespace = {
        name: right_shapes_wrong_values(target) for name, target in reference(assignment_id).items()
    }
    scores, _ = grade(assignment_id, namespace)
    assert set(scores.values()) == {0}


@pytest.mark.parametrize("assignment_id, mutant", mutants())
def test_every_known_mistake_loses_points_and_is_named(assignment_id, mutant):
    battery = load_battery(assignment_id)
    namespace = with_function(assignment_id, mutant.function, mutant.implementation)
    scores, outcomes = grade(assignment_id, namespace)
    assert scores[mutant.function] < battery.max_score(mutant.function)
    failed = [o for o in outcomes if o.check.function == mutant.function and not o.passed]
    named = {o.mistake for o in failed}
    assert mutant.mistake in named
    # where another known mistake is named, the diagnosis would mislead the student
    assert named <= {mutant.mistake, None}, named
    others = [f for f in battery.functions if f != mutant.function]
    assert all(scores[f] == battery.max_score(f) for f in others)


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_every_known_mistake_pasted_alone_grades_as_registered(assignment_id):
    """A mistake's notebook source (``standalone_source``, with the helpers it calls) run in
    a namespace of the notebook's imports and the reference's names earns what it does
    registered, on the same checks."""
    battery = load_battery(assignment_id)
    plan = planned(assignment_id, SEEDS[0])
    for mutant in battery.mutants:
        cell = {**reference(assignment_id), "math": math, "torch": torch, "F": F, "nn": nn}
        exec(standalone_source(mutant), cell)
        registered, pasted = (
            grade_functions(
                battery,
                with_function(assignment_id, mutant.function, f),
                functions=[mutant.function],
                plan=plan,
            )
            for f in (mutant.implementation, cell[mutant.function])
        )
        assert registered[0] == pasted[0], mutant.name
        failed = [
            [o.check.name for o in outcomes if not o.passed] for _, outcomes in (registered, pasted)
        ]
        assert failed[0] == failed[1], mutant.name


@pytest.mark.parametrize("assignment_id", ASSIGNMENTS_WITH_BATTERY)
def test_every_known_mistake_fails_the_same_checks_on_every_seed(assignment_id):
    """A known mistake costs the same points whatever the run's seed, so that the kernel's
    grade and the grader's (drawn from different seeds) agree on it: where they disagree,
    the grader reports suspected tampering."""
    battery = load_battery(assignment_id)
    failed_sets: dict[str, set] = {}
    for seed in range(8):
        plan, expected = planned(assignment_id, 100 + seed)
        for mutant in battery.mutants:
            namespace = with_function(assignment_id, mutant.function, mutant.implementation)
            failed = frozenset(
                check.name
                for check in battery.checks
                if check.function == mutant.function
                and check.judge(
                    plan.calls[check.name],
                    [execute_call(namespace, call) for call in plan.calls[check.name]],
                    expected[check.name],
                )
                is not None
            )
            assert failed, f"seed {seed}: {mutant.name} passes every check"
            failed_sets.setdefault(mutant.name, set()).add(failed)
    varying = {name: sets for name, sets in failed_sets.items() if len(sets) > 1}
    assert not varying, f"the failed checks depend on the seed: {varying}"


# Forbidden operations --------------------------------------------------------------------------


def forbidden_cases():
    return [
        pytest.param(assignment_id, contract.name, operation, id=f"{contract.name}-{operation}")
        for assignment_id in ASSIGNMENTS_WITH_BATTERY
        for contract in ASSIGNMENTS[assignment_id].contracts
        for operation in contract.forbidden
    ]


@pytest.mark.parametrize("assignment_id, function, operation", forbidden_cases())
def test_reaching_a_forbidden_operation_costs_the_whole_function(
    assignment_id, function, operation
):
    battery = load_battery(assignment_id)
    honest = reference(assignment_id)[function]
    if isinstance(honest, type):

        class cheat(honest):
            def forward(self, *args, **kwargs):
                TRIGGERS[operation]()  # reached on the side, by a name built at run time
                return super().forward(*args, **kwargs)

    else:

        def cheat(*args, **kwargs):
            TRIGGERS[operation]()  # reached on the side, by a name built at run time
            return honest(*args, **kwargs)

    scores, outcomes = grade(assignment_id, with_function(assignment_id, function, cheat))
    assert scores[function] == 0
    reasons = {o.reason for o in outcomes if o.check.function == function}
    assert all(operation in reason for reason in reasons), reasons
    assert all(scores[f] == battery.max_score(f) for f in battery.functions if f != function)
