"""The chapter 2 battery beyond the shared tables (its other correct answers are in
tests/correct_answers.py): the masks and rows that the checks rely on."""

import pytest

from autograder.batteries import load_battery
from autograder.kit.battery import make_plan
from autograder.mutants.ch02_attention import MUTANTS
from tests.battery_grading import grade_functions

ASSIGNMENT = "ch02_attention"
BATTERY = load_battery(ASSIGNMENT)
REFERENCE = BATTERY.reference_namespace()
DOT, ADDITIVE, MASK, SOFTMAX, ATTEND = BATTERY.functions


pytestmark = pytest.mark.usefixtures("one_thread")


def grade(namespace, seed, functions=None):
    return grade_functions(BATTERY, namespace, seed, functions)


# --- what the checks look at ---


def test_fully_masked_rows_are_mixed_with_rows_that_attend():
    for seed in range(30):
        plan = make_plan(BATTERY, seed)
        for call in plan.calls["masked_softmax_fully_masked_rows"]:
            rows = call.args[1].reshape(-1, call.args[1].shape[-1])
            assert (~rows.any(dim=-1)).any() and rows.any(dim=-1).any()
        for call in plan.calls["attend_fully_masked_row"]:
            allowed = call.args[3].sum(dim=-1)  # (B,)
            assert (allowed == 0).any() and (allowed == call.args[3].shape[1]).any()
            assert ((allowed > 0) & (allowed < call.args[3].shape[1])).any()


def test_softmax_then_zeroing_is_told_apart_from_a_row_of_nan():
    """Both renormalising the softmax of every score and filling with -inf give NaN on a
    fully masked row; masked scores far above the others tell them apart."""
    names = ("masked_softmax_renormalised", "masked_softmax_nan_rows")
    for mutant in (m for m in MUTANTS if m.name in names):
        _, outcomes = grade({**REFERENCE, SOFTMAX: mutant.implementation}, 4, [SOFTMAX])
        named = {outcome.mistake for outcome in outcomes if not outcome.passed}
        assert named == {mutant.mistake}


def test_mask_width_must_be_t_even_when_every_sequence_is_shorter():
    width = next(m for m in MUTANTS if m.name == "mask_width_from_lengths")
    _, outcomes = grade({**REFERENCE, MASK: width.implementation}, 6, [MASK])
    verdicts = {outcome.check.name: outcome for outcome in outcomes}
    assert verdicts["lengths_to_mask_values"].passed
    assert "shape" in verdicts["lengths_to_mask_all_padded"].reason
