"""Chapter 4's battery beyond the shared tables (its other correct answers are in
tests/correct_answers.py): the empty rows, the properties, and the masks' device argument."""

import math

import pytest
import torch

from autograder.batteries import load_battery
from autograder.batteries.ch04_masking import random_mask
from autograder.kit.battery import make_plan
from tests.battery_grading import grade_functions

ASSIGNMENT = "ch04_masking"
BATTERY = load_battery(ASSIGNMENT)
REFERENCE = BATTERY.reference_namespace()
CAUSAL, PADDING, MASKED, CAUSAL_SELF = BATTERY.functions


pytestmark = pytest.mark.usefixtures("one_thread")


def grade(namespace, seed=1, functions=None):
    return grade_functions(BATTERY, namespace, seed, functions)


# --- the inputs ---


def test_random_masks_allow_a_key_per_row_and_hide_one_somewhere(gen):
    for _ in range(50):
        mask = random_mask(gen, 3, 4, 5)
        assert mask.any(dim=-1).all() and not mask.all()
        with_empty = random_mask(gen, 3, 4, 5, empty_rows=2)
        assert (~with_empty.any(dim=-1)).sum() == 2 and with_empty.any(dim=-1).any()


def test_checks_about_empty_rows_hold_one_in_every_call():
    plan = make_plan(BATTERY, 7)
    for name in ("masked_empty_rows", "masked_gradients", "masked_accelerator"):
        for call in plan.calls[name]:
            mask = call.args[3]
            assert (~mask.any(dim=-1)).any() and mask.any(dim=-1).any(), name
    for call in plan.calls["causal_self_padded"]:
        lengths, T = call.args[4], call.args[0].shape[1]
        assert (lengths < T).any() and (lengths == T).any()


# --- what the checks catch ---


def masked_nan_gradients(q, k, v, mask=None):
    """Right values, but the NaN of empty rows is patched after the weights met v."""
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).nan_to_num(0.0), weights.nan_to_num(0.0)


def test_nan_gradients_of_empty_rows_cost_the_gradient_checks():
    _, outcomes = grade({**REFERENCE, MASKED: masked_nan_gradients}, functions=[MASKED])
    failed = {o.check.name: o.reason for o in outcomes if not o.passed}
    assert set(failed) == {"masked_gradients", "masked_accelerator"}
    assert all("gradient" in reason and "NaN" in reason for reason in failed.values())


def causal_self_reads_the_future(x, W_q, W_k, W_v, lengths=None):
    q, k, v = x @ W_q.T, x @ W_k.T, x @ W_v.T
    return REFERENCE[MASKED](q, k, v, None)


def test_the_future_check_is_a_property_of_the_submission():
    _, outcomes = grade(
        {**REFERENCE, CAUSAL_SELF: causal_self_reads_the_future}, functions=[CAUSAL_SELF]
    )
    future = next(o for o in outcomes if o.check.name == "causal_self_future")
    assert not future.passed and "before the change" in future.reason


def causal_ignores_device(T, device=None):
    return torch.ones(T, T, dtype=torch.bool).tril()


def test_a_mask_created_on_a_fixed_device_fails_the_meta_check():
    scores, outcomes = grade({**REFERENCE, CAUSAL: causal_ignores_device}, functions=[CAUSAL])
    verdicts = {o.check.name: o.passed for o in outcomes}
    assert verdicts["causal_values"] and not verdicts["causal_meta"]
    assert scores[CAUSAL] == 8.0
