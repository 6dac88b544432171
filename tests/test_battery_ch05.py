"""Chapter 5's battery beyond the shared tables (its other correct answers are in
tests/correct_answers.py): the ValueError check, and the masks of every shape."""

import pytest
import torch

from autograder.batteries import load_battery
from autograder.kit.battery import make_plan, run_reference
from tests.battery_grading import grade_functions

ASSIGNMENT = "ch05_multihead"
BATTERY = load_battery(ASSIGNMENT)
REFERENCE = BATTERY.reference_namespace()
SPLIT, MERGE, MHA = BATTERY.functions


pytestmark = pytest.mark.usefixtures("one_thread")


def grade(namespace, seed=1, functions=None):
    return grade_functions(BATTERY, namespace, seed, functions)


# --- the ValueError ---


def split_with_assert(x, num_heads):
    assert x.shape[-1] % num_heads == 0
    return REFERENCE[SPLIT](x, num_heads)


def split_without_check(x, num_heads):
    B, T, D = x.shape
    d = D // num_heads
    return x[..., : num_heads * d].reshape(B, T, num_heads, d).transpose(1, 2)


@pytest.mark.parametrize(
    "split, reason",
    [(split_with_assert, "raised AssertionError"), (split_without_check, "expected a ValueError")],
)
def test_an_indivisible_dim_must_raise_a_value_error(split, reason):
    scores, outcomes = grade({**REFERENCE, SPLIT: split}, functions=[SPLIT])
    failed = {o.check.name: o.reason for o in outcomes if not o.passed}
    assert set(failed) == {"split_indivisible"}
    assert reason in failed["split_indivisible"]
    assert scores[SPLIT] == 10 - 1.5


def test_the_value_error_check_pays_only_for_working_code():
    def always_raises(x, num_heads):
        raise ValueError("no")

    scores, outcomes = grade({**REFERENCE, SPLIT: always_raises}, functions=[SPLIT])
    indivisible = next(o for o in outcomes if o.check.name == "split_indivisible")
    assert scores[SPLIT] == 0 and "once the values are right" in indivisible.reason


# --- the masks ---


def test_every_mask_shape_of_the_contract_is_drawn():
    plan = make_plan(BATTERY, 5)
    shapes = set()
    for name, calls in plan.calls.items():
        for call in calls:
            if call.function == MHA and len(call.args) == 13:
                query, key, mask = call.args[0], call.args[1], call.args[12]
                B, Tq, Tk, h = query.shape[0], query.shape[1], key.shape[1], call.args[11]
                shapes.add(
                    {
                        (Tq, Tk): "2d",
                        (B, Tq, Tk): "3d",
                        (B, 1, 1, Tk): "keys",
                        (B, h, Tq, Tk): "heads",
                    }[tuple(mask.shape)]
                )
                if name == "mha_empty_rows":
                    assert (~mask.any(dim=-1)).any()
    assert shapes == {"2d", "3d", "keys", "heads"}


def test_fully_masked_rows_give_the_output_bias():
    plan = make_plan(BATTERY, 5)
    expected = run_reference(BATTERY, plan)
    for call, result in zip(plan.calls["mha_empty_rows"], expected["mha_empty_rows"], strict=True):
        mask, b_o = call.args[12], call.args[10]
        out, weights = result.outputs
        empty = ~mask.any(dim=-1)  # (B, Tq) or (Tq,)
        empty = empty.expand(out.shape[:2])
        assert torch.allclose(out[empty], b_o.expand(int(empty.sum()), -1))
        assert (weights.transpose(1, 2)[empty] == 0).all()
