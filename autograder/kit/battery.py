"""Hidden test batteries, written as data.

A battery is the list of ``Check``s of one assignment. A check names the contract
function it grades, its points, a seeded generator of ``Call``s, a judge and the
sentence the student reads when it fails. Nothing in a check runs student code: the
calls are executed elsewhere (in the sandboxed child of ``python -m autograder grade``,
or in the notebook's own kernel under ``nbgrader autograde``), and the judge only
compares the ``Result``s that come back with the reference's.

    plan = make_plan(battery, seed)                    # inputs, from a secret seed
    expected = run_reference(battery, plan)            # in the grading process
    actual = <execute plan's calls on the submission>  # sandboxed child, or kernel
    outcomes = judge_plan(battery, plan, actual, expected)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from autograder.runtime.executor import Call, Result, execute_call

# A judge returns None when the student's results are right, else a short reason
# (in the student's terms, never showing reference values or hidden inputs).
Judge = Callable[[Sequence[Call], Sequence[Result], Sequence[Result]], "str | None"]


@dataclass(frozen=True)
class Check:
    """One named, seeded case of a battery.

    A ``gated`` check does not compare values with the reference (shapes on the meta
    device, a property such as permutation equivariance): it pays only once the function's
    basic check (its first check that is not gated) passes, so that an answer with the
    right shapes and wrong values earns nothing.
    """

    name: str
    function: str
    points: float
    calls: Callable[[torch.Generator], Sequence[Call]]
    message: str
    judge: Judge
    gated: bool = False


@dataclass(frozen=True)
class Mutant:
    """A realistic wrong implementation, and the one sentence that names the mistake."""

    function: str
    name: str
    mistake: str
    implementation: Callable


class BatteryError(ValueError):
    """A battery that contradicts itself or its contracts (raised when it is built)."""


@dataclass(frozen=True)
class Battery:
    """Everything the grader knows about one assignment; it checks itself when built."""

    assignment: str
    reference: str  # module path of the reference solutions
    checks: tuple[Check, ...]
    forbidden: Mapping[str, tuple[str, ...]]  # contract name -> forbidden operation names
    mutants: tuple[Mutant, ...] = ()
    points: Mapping[str, float] | None = None  # contract name -> points; None: not checked

    def __post_init__(self):
        problems = battery_problems(self)
        if problems:
            raise BatteryError(f"battery {self.assignment}: " + "; ".join(problems))

    @classmethod
    def for_assignment(cls, assignment, checks, mutants=()) -> Battery:
        """The battery of ``assignment`` (an ``autograder.contracts.Assignment``): its
        reference, forbidden operations and points come from the contracts."""
        points = {contract.name: contract.points for contract in assignment.contracts}
        return cls(
            assignment.id,
            assignment.reference,
            tuple(checks),
            assignment.forbidden(),
            tuple(mutants),
            points,
        )

    @property
    def functions(self) -> list[str]:
        """The contract names, in the order of their first check."""
        return list(dict.fromkeys(check.function for check in self.checks))

    def max_score(self, function: str) -> float:
        return sum(check.points for check in self.checks if check.function == function)

    def only(self, function: str) -> Battery:
        """The part of this battery that grades ``function``."""
        return Battery(
            self.assignment,
            self.reference,
            tuple(check for check in self.checks if check.function == function),
            {name: ops for name, ops in self.forbidden.items() if name == function},
            tuple(mutant for mutant in self.mutants if mutant.function == function),
            None if self.points is None else {function: self.points[function]},
        )

    def basic_check(self, function: str) -> Check:
        """The first check of ``function`` that compares values: the gated ones wait on it."""
        return next(c for c in self.checks if c.function == function and not c.gated)

    def reference_namespace(self) -> dict:
        return vars(importlib.import_module(self.reference))


def battery_problems(battery: Battery) -> list[str]:
    """What is inconsistent in ``battery``: names, points, forbidden lists, mistakes."""
    problems = []
    names = [check.name for check in battery.checks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(f"check names used twice: {', '.join(repeated)}")
    functions = set(battery.functions)
    for function in functions:
        if all(c.gated for c in battery.checks if c.function == function):
            problems.append(f"{function} has only gated checks (nothing compares values)")
    for what, keys in (
        ("forbidden", set(battery.forbidden)),
        ("known mistakes", {mutant.function for mutant in battery.mutants}),
    ):
        strangers = keys - functions
        if strangers:
            problems.append(f"{what} name no contract: {', '.join(sorted(strangers))}")
    mutant_names = [(mutant.function, mutant.name) for mutant in battery.mutants]
    if len(set(mutant_names)) != len(mutant_names):
        problems.append("two known mistakes of one function share a name")
    if battery.points is not None:
        if set(battery.points) != functions:
            problems.append(
                f"checks cover {sorted(functions)}, the contracts are {sorted(battery.points)}"
            )
        for function, points in battery.points.items():
            total = battery.max_score(function)
            if function in functions and abs(total - points) > 1e-9:
                problems.append(f"{function}'s checks add up to {total:g}, not {points:g}")
    return problems


@dataclass
class Outcome:
    """The verdict of one check on one submission."""

    check: Check
    passed: bool
    reason: str = ""
    mistake: str | None = None

    @property
    def score(self) -> float:
        return self.check.points if self.passed else 0.0

    def feedback(self) -> str:
        if self.passed:
            return f"{self.check.name}: passed"
        text = f"{self.check.name}: {self.check.message}"
        if self.reason:
            text += f" ({self.reason})"
        if self.mistake:
            text += f" Likely mistake: {self.mistake}"
        return text


@dataclass
class Plan:
    """The calls of every check, drawn from one seed.

    ``mutant_results`` caches, per (check name, mutant name), the known mistakes'
    results on these calls: filled by diagnosis in the grading process and reused for
    every submission judged against this plan. Send ``calls``, not the plan, to the
    code under test.
    """

    seed: int
    calls: dict[str, list[Call]] = field(default_factory=dict)
    mutant_results: dict[tuple[str, str], list[Result]] = field(
        default_factory=dict, repr=False, compare=False
    )


def check_seed(seed: int, check_name: str) -> int:
    """The seed of one check, derived from the run's secret seed and the check's name."""
    digest = hashlib.sha256(f"{seed}:{check_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_plan(battery: Battery, seed: int) -> Plan:
    plan = Plan(seed)
    for check in battery.checks:
        generator = torch.Generator().manual_seed(check_seed(seed, check.name))
        plan.calls[check.name] = list(check.calls(generator))
    return plan


def run_reference(battery: Battery, plan: Plan) -> dict[str, list[Result]]:
    """The reference's results for every call of the plan (in the grading process)."""
    namespace = battery.reference_namespace()
    return {
        name: [execute_call(namespace, call) for call in calls]
        for name, calls in plan.calls.items()
    }


def judge_plan(
    battery: Battery,
    plan: Plan,
    actual: Mapping[str, Sequence[Result] | None],
    expected: Mapping[str, Sequence[Result]],
    crashed: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """Judge every check; ``actual[name]`` is None when the submission never answered it.

    ``crashed`` gives, for checks that never answered, the reason to show (a timeout,
    a killed process, ...).
    """
    crashed = crashed or {}
    outcomes = []
    for check in battery.checks:
        results = actual.get(check.name)
        if results is None or len(results) != len(plan.calls[check.name]):
            reason = crashed.get(check.name, "your code did not return a result")
            outcomes.append(Outcome(check, False, reason))
            continue
        outcomes.append(
            judge_check(
                battery,
                check,
                plan.calls[check.name],
                results,
                expected[check.name],
                cache=plan.mutant_results,
            )
        )
    return fail_forbidden(apply_gates(battery, outcomes), reached_operations(battery, actual))


def reached_operations(battery: Battery, actual: Mapping) -> dict[str, list[str]]:
    """Per function, the forbidden operations its calls reached in any check."""
    reached: dict[str, set[str]] = {}
    for check in battery.checks:
        for result in actual.get(check.name) or ():
            reached.setdefault(check.function, set()).update(result.forbidden)
    return {function: sorted(names) for function, names in reached.items() if names}


def fail_forbidden(
    outcomes: Sequence[Outcome], forbidden: Mapping[str, Sequence[str]], how: str = "reaches"
) -> list[Outcome]:
    """Fail every check of a function that ``forbidden`` names: a forbidden operation costs
    the whole function. ``how`` says what was seen: "reaches" (while it ran) or "names"
    (in its source)."""
    failed = []
    for outcome in outcomes:
        names = forbidden.get(outcome.check.function)
        if names:
            reason = (
                f"{outcome.check.function} {how} the forbidden operation {', '.join(names)},"
                " which this exercise asks you to write yourself"
            )
            outcome = Outcome(outcome.check, False, reason)
        failed.append(outcome)
    return failed


def apply_gates(battery: Battery, outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Fail every gated check whose function's basic check failed: points for working code."""
    passed = {outcome.check.name for outcome in outcomes if outcome.passed}
    gated = []
    for outcome in outcomes:
        check = outcome.check
        basic = battery.basic_check(check.function).name
        if check.gated and outcome.passed and basic not in passed:
            reason = f"it counts only once the values are right (check {basic})"
            outcome = Outcome(check, False, reason)
        gated.append(outcome)
    return gated


def judge_check(battery, check, calls, results, expected, cache=None) -> Outcome:
    """Judge one check's values; ``cache`` is passed on to ``diagnose``. Forbidden
    operations are judged over the whole function (``fail_forbidden``)."""
    reason = check.judge(calls, results, expected)
    if reason is None:
        return Outcome(check, True)
    return Outcome(check, False, reason, diagnose(battery, check, calls, results, cache))


def diagnose(battery: Battery, check: Check, calls, results, cache=None) -> str | None:
    """Name the known mistake whose outputs the student's outputs match, if any.

    The mutants are tried in the battery's order. A mutant that raises on some calls is
    matched by its error: the same inputs give the same message, so a student who makes
    that mistake raises it too. ``cache`` (a dict, for instance ``Plan.mutant_results``)
    keeps each mutant's results on this check's calls, so that they are computed once per
    plan.
    """
    reference = None
    for mutant in battery.mutants:
        if mutant.function != check.function:
            continue
        key = (check.name, mutant.name)
        mutant_results = None if cache is None else cache.get(key)
        if mutant_results is None:
            reference = reference or battery.reference_namespace()
            namespace = {**reference, mutant.function: mutant.implementation}
            mutant_results = [execute_call(namespace, call) for call in calls]
            if cache is not None:
                cache[key] = mutant_results
        if reproduces(check, calls, results, mutant_results):
            return mutant.mistake
    return None


def reproduces(check: Check, calls, results, mutant_results) -> bool:
    """Whether ``results`` are a mutant's: its error message on every call where it raised,
    its values (by the check's judge) on the others."""
    raised = [index for index, result in enumerate(mutant_results) if result.error]
    if any(results[index].error != mutant_results[index].error for index in raised):
        return False
    kept = [index for index in range(len(calls)) if index not in raised]
    if not kept:
        return True

    def pick(values):
        return [values[index] for index in kept]

    try:
        return check.judge(pick(calls), pick(results), pick(mutant_results)) is None
    except Exception:  # a judge that needs every call (a property over pairs)
        return False


def scores_by_function(battery: Battery, outcomes: Sequence[Outcome]) -> dict[str, float]:
    scores = dict.fromkeys(battery.functions, 0.0)
    for outcome in outcomes:
        scores[outcome.check.function] += outcome.score
    return scores


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread while references run and results are judged: the inputs are tiny,
    and the grader's threads share the cores with the sandboxed children (or the kernel
    with nothing). The caller's setting comes back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
