"""Grading a namespace in this process, as the sandboxed child would, for the battery tests."""

from __future__ import annotations

from autograder.kit.battery import judge_plan, make_plan, run_reference, scores_by_function
from autograder.runtime.executor import execute_call


def grade_functions(battery, namespace: dict, seed: int = 1, functions=None, plan=None):
    """Scores by function and outcomes of ``namespace`` on the checks of ``functions``.

    ``plan`` is an optional (plan, expected) pair to reuse (with its cache of mistakes'
    results); by default the plan of ``seed`` is drawn and run on the reference here.
    """
    functions = functions or battery.functions
    drawn, expected = plan or (None, None)
    if drawn is None:
        drawn = make_plan(battery, seed)
        expected = run_reference(battery, drawn)
    names = {check.name for check in battery.checks if check.function in functions}
    actual = {
        name: [
            execute_call(namespace, call, battery.forbidden.get(call.function, ()))
            for call in calls
        ]
        for name, calls in drawn.calls.items()
        if name in names
    }
    outcomes = [
        o for o in judge_plan(battery, drawn, actual, expected) if o.check.function in functions
    ]
    return scores_by_function(battery, outcomes), outcomes
