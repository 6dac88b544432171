"""The chapter 1 battery beyond the shared tables (its other correct answers are in
tests/correct_answers.py): the decoding checks that count the calls of ``step`` and look at
what it was fed."""

import pytest
import torch

from autograder.batteries import load_battery
from autograder.kit.battery import make_plan
from autograder.mutants.ch01_seq2seq import MUTANTS
from autograder.runtime.executor import OnDevice, execute_call
from tests.battery_grading import grade_functions

ASSIGNMENT = "ch01_seq2seq"
BATTERY = load_battery(ASSIGNMENT)
REFERENCE = BATTERY.reference_namespace()
CELL, ENCODE, SHIFT, CE, DECODE = BATTERY.functions


pytestmark = pytest.mark.usefixtures("one_thread")


def grade(namespace, seed, functions=None):
    return grade_functions(BATTERY, namespace, seed, functions)


# --- what the checks look at ---


def test_padded_batches_hold_a_full_sequence_and_one_of_length_one():
    for seed in range(50):
        plan = make_plan(BATTERY, seed)
        for call in plan.calls["rnn_encode_padded"]:
            x, lengths = call.args[0], call.args[5]
            assert lengths.max() == x.shape[1] and lengths.min() == 1
        for call in plan.calls["rnn_encode_lengths_on_cpu"]:
            assert isinstance(call.args[5], OnDevice) and call.args[5].device == "cpu"


def _decode_checks(namespace, seed=5):
    _, outcomes = grade(namespace, seed, [DECODE])
    return {outcome.check.name: outcome for outcome in outcomes}


def test_decoding_must_stop_once_every_sequence_has_finished():
    never_stops = next(m for m in MUTANTS if m.name == "decode_never_stops_early")
    outcomes = _decode_checks({**REFERENCE, DECODE: never_stops.implementation})
    assert not outcomes["greedy_decode_all_finish"].passed
    assert "it called step" in outcomes["greedy_decode_all_finish"].reason
    assert outcomes["greedy_decode_unfinished"].passed  # a sequence never finishes there
    assert outcomes["greedy_decode_all_finish"].mistake == never_stops.mistake


def test_finished_sequences_must_be_fed_eos():
    fed_late = next(m for m in MUTANTS if m.name == "decode_eos_fed_after_the_step")
    outcomes = _decode_checks({**REFERENCE, DECODE: fed_late.implementation})
    for name in ("greedy_decode_unfinished", "greedy_decode_all_finish"):
        assert "arguments it passed to step differ" in outcomes[name].reason
    assert outcomes["greedy_decode_feedback"].passed  # its step never predicts eos


def test_the_recurrent_step_tells_a_decoder_that_ignores_the_state():
    stale = next(m for m in MUTANTS if m.name == "decode_h0_every_step")
    outcomes = _decode_checks({**REFERENCE, DECODE: stale.implementation})
    assert not outcomes["greedy_decode_feedback"].passed
    assert outcomes["greedy_decode_unfinished"].passed  # a scripted step ignores the state


def test_the_large_logit_check_catches_a_log_softmax_by_hand_on_every_draw():
    by_hand = next(m for m in MUTANTS if m.name == "ce_log_softmax_by_hand")
    check = next(c for c in BATTERY.checks if c.name == "sequence_cross_entropy_large_logits")
    for seed in range(100):
        calls = check.calls(torch.Generator().manual_seed(seed))
        expected = [execute_call(REFERENCE, call) for call in calls]
        actual = [execute_call({CE: by_hand.implementation}, call) for call in calls]
        assert check.judge(calls, actual, expected), f"passes on seed {seed}"
