"""The chapter 3 battery, its known mistakes and the in-kernel runner, run in-process."""

import math

import pytest
import torch
import torch.nn.functional as F

from autograder.batteries import UnknownAssignment, available, load_battery
from autograder.kernel import grade_function
from autograder.kit.battery import make_plan, run_reference
from autograder.mutants.ch03_self_attention import MUTANTS
from autograder.runtime.executor import execute_call
from tests.battery_grading import grade_functions

ASSIGNMENT = "ch03_self_attention"
BATTERY = load_battery(ASSIGNMENT)
REFERENCE = BATTERY.reference_namespace()
SDPA, SELF, PE = BATTERY.functions
SEED = 20240611


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planned():
    """One plan and its reference results, shared (with its mutant cache) by the tests."""
    plan = make_plan(BATTERY, SEED)
    return plan, run_reference(BATTERY, plan)


def grade(namespace, planned, functions=None):
    return grade_functions(BATTERY, namespace, functions=functions, plan=planned)


def with_function(name, implementation):
    return {**REFERENCE, name: implementation}


# --- the battery as data ---


def test_registry():
    assert ASSIGNMENT in available()
    assert load_battery(ASSIGNMENT) is BATTERY
    with pytest.raises(UnknownAssignment, match=r"available: .*ch03_self_attention"):
        load_battery("ch99_nothing")
    with pytest.raises(KeyError):
        load_battery("ch99_nothing")


def test_sizes_within_a_call_are_distinct(planned):
    plan, _ = planned
    for call in plan.calls["sdpa_batched"]:
        q, k, v = call.args
        B, Tq, d_k = q.shape
        assert len({B, Tq, k.shape[1], d_k, v.shape[2]}) == 5


# --- wrong submissions ---


def test_diagnosis_is_cached_per_plan(planned):
    plan, _ = planned
    mutant = MUTANTS[0]
    grade(with_function(mutant.function, mutant.implementation), planned, [mutant.function])
    cached = dict(plan.mutant_results)
    assert ("sdpa_batched", mutant.name) in cached
    grade(with_function(mutant.function, mutant.implementation), planned, [mutant.function])
    assert all(plan.mutant_results[key] is results for key, results in cached.items())


def sdpa_with_fixed_device(q, k, v):
    d = q.shape[-1]
    scale = torch.ones(k.shape[-2]) / math.sqrt(d)  # on the CPU whatever q's device
    weights = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
    return weights @ v, weights


def pe_with_fixed_device(T, D, base=10000.0, dtype=torch.float32, device=None):
    return REFERENCE[PE](T, D, base, dtype).to(dtype)  # ignores device


@pytest.mark.parametrize(
    ("function", "implementation", "meta_check"),
    [(SDPA, sdpa_with_fixed_device, "sdpa_meta"), (PE, pe_with_fixed_device, "pe_meta")],
)
def test_a_tensor_on_a_fixed_device_fails_the_meta_check(
    planned, function, implementation, meta_check
):
    _, outcomes = grade(with_function(function, implementation), planned, [function])
    verdicts = {outcome.check.name: outcome.passed for outcome in outcomes}
    assert not verdicts[meta_check]
    assert next(iter(verdicts.values()))  # right on the CPU in float32


def sdpa_in_place(q, k, v):
    if not q.requires_grad:
        q.mul_(1 / math.sqrt(q.shape[-1]))  # modifies the caller's tensor
    else:
        q = q / math.sqrt(q.shape[-1])
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights


def test_modifying_an_input_in_place_fails(planned):
    _, outcomes = grade(with_function(SDPA, sdpa_in_place), planned, [SDPA])
    batched = next(outcome for outcome in outcomes if outcome.check.name == "sdpa_batched")
    assert not batched.passed
    assert "modified its input args[0] in place" in batched.reason


class LyingTensor(torch.Tensor):
    def __eq__(self, other):
        return True

    def allclose(self, *args, **kwargs):
        return True

    def equal(self, *args, **kwargs):
        return True


def sdpa_lying(q, k, v):
    out, weights = REFERENCE[SDPA](q, k, v)
    return torch.zeros_like(out).as_subclass(LyingTensor), weights.as_subclass(LyingTensor)


def test_a_lying_tensor_subclass_scores_zero(planned):
    scores, outcomes = grade(with_function(SDPA, sdpa_lying), planned, [SDPA])
    assert scores[SDPA] == 0
    assert "not a plain torch.Tensor" in outcomes[0].reason


def self_attention_causal(x, W_q, W_k, W_v):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    T = x.shape[-2]
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return weights @ v, weights


def test_the_permutation_check_is_a_property_of_the_submission(planned):
    _, outcomes = grade(with_function(SELF, self_attention_causal), planned, [SELF])
    permutation = next(o for o in outcomes if o.check.name == "self_attention_permutation")
    assert not permutation.passed
    assert "permuted tokens" in permutation.reason
    # A wrong but equivariant answer satisfies the property, yet the check is gated: it
    # pays only once the values are right.
    mutant = next(m for m in MUTANTS if m.name == "self_no_scaling")
    _, outcomes = grade(with_function(SELF, mutant.implementation), planned, [SELF])
    permutation = next(o for o in outcomes if o.check.name == "self_attention_permutation")
    assert not permutation.passed and "once the values are right" in permutation.reason


# --- the in-kernel runner ---


def sdpa_forbidden(q, k, v):
    out = F.scaled_dot_product_attention(q, k, v)
    return out, REFERENCE[SDPA](q, k, v)[1]


def sdpa_forbidden_hidden(q, k, v):
    built_in = getattr(F, "scaled_dot_" + "product_attention")
    return built_in(q, k, v), REFERENCE[SDPA](q, k, v)[1]


@pytest.mark.parametrize("cheat", [sdpa_forbidden, sdpa_forbidden_hidden])
def test_a_forbidden_built_in_scores_zero(capsys, cheat):
    original = F.scaled_dot_product_attention
    score = grade_function(ASSIGNMENT, SDPA, with_function(SDPA, cheat), seed=SEED)
    assert score == 0
    out, err = capsys.readouterr()
    assert "the forbidden operation F.scaled_dot_product_attention" in out
    assert err == ""
    assert F.scaled_dot_product_attention is original  # nothing of torch was replaced


def test_kernel_gives_the_reference_full_marks_and_prints_one_line_per_check(capsys):
    assert grade_function(ASSIGNMENT, SELF, dict(REFERENCE), seed=SEED) == 10
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "self_attention: 10 / 10 points"
    assert len(lines) == 1 + sum(check.function == SELF for check in BATTERY.checks)
    assert err == ""


def raises_system_exit(*args, **kwargs):
    raise SystemExit(3)


def noisy(*args, **kwargs):
    import sys
    import warnings

    print("student output")
    print("student error", file=sys.stderr)
    warnings.warn("student warning", stacklevel=1)
    return REFERENCE[SDPA](*args, **kwargs)


def returns_garbage(*args, **kwargs):
    return {"not": "a tensor"}, object()


@pytest.mark.parametrize("garbage", [None, 42, "text", raises_system_exit, returns_garbage])
def test_kernel_never_raises_on_garbage(capsys, garbage):
    namespace = {} if garbage is None else {**REFERENCE, SDPA: garbage}
    assert grade_function(ASSIGNMENT, SDPA, namespace, seed=SEED) == 0
    out, err = capsys.readouterr()
    assert out.startswith("scaled_dot_product_attention: 0 / 10 points")
    assert err == ""


def test_kernel_keeps_the_student_output_and_warnings_away(capsys):
    assert grade_function(ASSIGNMENT, SDPA, with_function(SDPA, noisy), seed=SEED) == 10
    out, err = capsys.readouterr()
    assert "student" not in out and err == ""


def test_kernel_seed_comes_from_the_environment(monkeypatch, capsys):
    wrong = next(m for m in MUTANTS if m.name == "sdpa_no_max_subtraction")
    monkeypatch.setenv("AUTOGRADER_SEED", str(SEED))
    namespace = with_function(SDPA, wrong.implementation)
    assert grade_function(ASSIGNMENT, SDPA, namespace) == 9
    out, _ = capsys.readouterr()
    assert wrong.mistake in out


def test_low_precision_positions_catch_angles_in_the_target_dtype_on_every_draw():
    """The mistake shows only for large enough T and D; every draw must be large enough."""
    mutant = next(m for m in MUTANTS if m.implementation.__name__ == "pe_in_target_dtype")
    namespace = with_function(PE, mutant.implementation)
    checks = [check for check in BATTERY.checks if check.name in ("pe_float16", "pe_bfloat16")]
    assert len(checks) == 2
    for seed in range(300):
        for check in checks:
            generator = torch.Generator().manual_seed(seed)
            calls = check.calls(generator)
            expected = [execute_call(REFERENCE, call) for call in calls]
            actual = [execute_call(namespace, call) for call in calls]
            assert check.judge(calls, actual, expected), f"{check.name} passes on seed {seed}"
