"""The chapter 2 battery beyond the shared tables: other correct answers, and the masks
and rows that the checks rely on."""

import pytest
import torch
import torch.nn.functional as F

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


# --- other correct answers ---


def dot_scores_bmm(query, keys):
    return torch.bmm(keys, query.unsqueeze(2)).squeeze(2)


def additive_scores_einsum(query, keys, W_q, W_k, v):
    energies = torch.tanh(F.linear(query, W_q).unsqueeze(1) + F.linear(keys, W_k))
    return torch.einsum("bta,a->bt", energies, v)


def lengths_to_mask_expand(lengths, T):
    positions = torch.arange(T, device=lengths.device).expand(len(lengths), T)
    return positions < lengths.unsqueeze(1)


def masked_softmax_fill_lowest(scores, mask):
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def masked_softmax_by_hand(scores, mask):
    """Subtracts the maximum of the allowed scores; a zero total gives zeros."""
    lowest = torch.finfo(scores.dtype).min
    filled = torch.where(mask, scores, lowest)
    shifted = filled - filled.amax(dim=-1, keepdim=True).detach()
    exp = torch.where(mask, shifted.exp(), 0.0)
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, 1.0)


def attend_bmm(query, keys, values, mask, W_q, W_k, v):
    scores = additive_scores_einsum(query, keys, W_q, W_k, v)
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    weights = masked_softmax_fill_lowest(scores, mask)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


CORRECT = {
    "bmm, einsum, expand, fill": {
        DOT: dot_scores_bmm,
        ADDITIVE: additive_scores_einsum,
        MASK: lengths_to_mask_expand,
        SOFTMAX: masked_softmax_fill_lowest,
        ATTEND: attend_bmm,
    },
    "softmax by hand": {SOFTMAX: masked_softmax_by_hand},
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("variant", CORRECT)
def test_other_correct_implementations_score_full_marks(variant, seed):
    scores, outcomes = grade({**REFERENCE, **CORRECT[variant]}, seed)
    failed = [outcome.feedback() for outcome in outcomes if not outcome.passed]
    assert scores == dict.fromkeys(BATTERY.functions, 10.0), failed


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
