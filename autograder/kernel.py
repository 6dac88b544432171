"""Grade one contract function inside the notebook's own kernel, for ``nbgrader autograde``.

A hidden test cell of an exercise notebook ends with

    from autograder.kernel import grade_function
    grade_function("ch03_self_attention", "self_attention", globals())

which runs every check of that function on the notebook's namespace, prints one line
per check and leaves the points earned as the cell's value (nbgrader's partial credit).
The seed comes from ``AUTOGRADER_SEED`` when it is set, else it is random.

Here the student's code shares the process with the grader and could tamper with it,
so this grade is a convenience; ``python -m autograder grade`` is the one of record.
Nothing here raises on anything the student wrote, and nothing is written to stderr
(nbgrader scores a test cell that writes to stderr as 0). The lines printed name
shapes, dtypes and error sizes, never reference values or hidden inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import secrets
import warnings
from collections.abc import Mapping

from autograder.batteries import load_battery
from autograder.kit.battery import (
    Battery,
    Outcome,
    apply_gates,
    fail_forbidden,
    judge_check,
    make_plan,
    one_torch_thread,
    reached_operations,
    run_reference,
)
from autograder.runtime.executor import execute_call
from autograder.runtime.operations import forbidden_in_source


class _Sink:
    """A stream that drops what it is given (the student's prints and warnings)."""

    def write(self, text) -> int:
        return len(text) if isinstance(text, str) else 0

    def flush(self) -> None:
        pass


def grade_function(assignment_id: str, function: str, namespace: Mapping, seed=None) -> float:
    """Run the checks of ``function`` on ``namespace``; print the verdicts; return the points.

    Args:
        assignment_id: e.g. ``"ch03_self_attention"``.
        function: a contract name of that assignment.
        namespace: where the student's functions live (the notebook's ``globals()``).
        seed: the seed of the inputs; default ``AUTOGRADER_SEED``, else random.
    """
    battery = load_battery(assignment_id)
    if function not in battery.functions:
        raise ValueError(f"{assignment_id} has no contract function {function!r}")
    own_names = battery.functions
    battery = battery.only(function)
    checks = battery.checks
    with _quiet():
        try:
            outcomes = _grade(battery, function, namespace, _seed(seed), own_names)
        except Exception as error:  # torch itself broken by the student's code, ...
            reason = f"grading stopped: {type(error).__name__}"
            outcomes = [Outcome(check, False, reason) for check in checks]
    score = round(sum(outcome.score for outcome in outcomes), 6)
    lines = [f"{function}: {score:g} / {battery.max_score(function):g} points"]
    lines += [f"  {outcome.feedback()}" for outcome in outcomes]
    with contextlib.suppress(Exception):
        print("\n".join(lines))
    return score


def _seed(seed) -> int:
    if seed is None:
        seed = os.environ.get("AUTOGRADER_SEED")
    if seed is None or seed == "":
        return secrets.randbits(63)
    try:
        return int(seed)
    except (TypeError, ValueError):
        return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")


@contextlib.contextmanager
def _quiet():
    """No warnings, nothing on stderr, one torch thread (the inputs are tiny)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(_Sink()), one_torch_thread():
        warnings.simplefilter("ignore")
        yield


def _grade(battery: Battery, function: str, namespace: Mapping, seed: int, own_names):
    """The outcomes of ``battery``'s checks (all of ``function``) on ``namespace``."""
    plan = make_plan(battery, seed)
    expected = run_reference(battery, plan)
    operations = battery.forbidden.get(function, ())
    named = _forbidden_in_function(namespace, function, operations, own_names)
    if named:
        outcomes = [Outcome(check, True) for check in battery.checks]
        return fail_forbidden(outcomes, {function: named}, how="names")
    actual = _run_student(namespace, plan.calls, operations)
    outcomes = []
    for check in battery.checks:
        try:
            outcome = judge_check(
                battery,
                check,
                plan.calls[check.name],
                actual[check.name],
                expected[check.name],
                cache=plan.mutant_results,
            )
        except Exception:  # a result too strange to compare is a wrong result
            outcome = Outcome(check, False, "its result could not be checked")
        outcomes.append(outcome)
    return fail_forbidden(apply_gates(battery, outcomes), reached_operations(battery, actual))


def _forbidden_in_function(namespace, function: str, operations, own_names) -> list[str]:
    """The forbidden operations named in the source of the student's ``function``."""
    try:
        source = inspect.getsource(namespace[function])
    except Exception:  # not defined, not a function, source not available
        return []
    return forbidden_in_source(source, operations, own_names=own_names)


def _run_student(namespace, calls: Mapping, operations) -> dict:
    """Execute the calls, watching for the forbidden operations, the student's output
    thrown away."""
    sink = _Sink()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return {
            name: [execute_call(namespace, call, operations) for call in check_calls]
            for name, check_calls in calls.items()
        }
