"""Chapter 5's battery beyond the shared table: other right answers, the ValueError check,
and the masks of every shape."""

import math

import pytest
import torch
import torch.nn.functional as F

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


# --- other right answers ---


def split_by_chunks(x, num_heads):
    if x.shape[-1] % num_heads:
        raise ValueError("D must be a multiple of num_heads")
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def merge_by_concatenation(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


def mha_head_by_head(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    """One head at a time, with F.linear and -inf fills, the NaN removed before v."""
    d = query.shape[-1] // num_heads
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    outputs, maps = [], []
    for i in range(num_heads):
        rows = slice(i * d, (i + 1) * d)
        q = F.linear(query, W_q[rows], b_q[rows])
        k = F.linear(key, W_k[rows], b_k[rows])
        v = F.linear(value, W_v[rows], b_v[rows])
        scores = q @ k.mT / math.sqrt(d)  # (B, Tq, Tk)
        if mask is not None:
            head_mask = mask.expand(-1, num_heads, -1, -1)[:, i] if mask.dim() == 4 else mask
            scores = scores.masked_fill(~head_mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        outputs.append(weights @ v)
        maps.append(weights)
    return F.linear(torch.cat(outputs, dim=-1), W_o, b_o), torch.stack(maps, dim=1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_correct_implementations_score_full_marks(seed):
    namespace = {
        **REFERENCE,
        SPLIT: split_by_chunks,
        MERGE: merge_by_concatenation,
        MHA: mha_head_by_head,
    }
    scores, outcomes = grade(namespace, seed)
    failed = [outcome.feedback() for outcome in outcomes if not outcome.passed]
    assert scores == dict.fromkeys(BATTERY.functions, 10.0), failed


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
