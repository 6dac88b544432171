"""The chapter 1 battery beyond the shared tables: other correct answers, and the decoding
checks that count the calls of ``step`` and look at what it was fed."""

import pytest
import torch
import torch.nn.functional as F

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


# --- other correct answers ---


def rnn_cell_linear(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(F.linear(x_t, W_ih) + F.linear(h_prev, W_hh, b))


def rnn_encode_gather(x, h0, W_ih, W_hh, b, lengths=None):
    """Runs over the padding too, then zeroes it and picks each last real state."""
    B, T, _ = x.shape
    states, h = [], h0
    for t in range(T):
        h = rnn_cell_linear(x[:, t], h, W_ih, W_hh, b)
        states.append(h)
    states = torch.stack(states, dim=1)  # (B, T, H)
    if lengths is None:
        return states, h
    lengths = lengths.to(x.device)
    real = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # (B, T)
    last = states[torch.arange(B, device=x.device), lengths - 1]  # (B, H)
    return states * real[..., None].to(x.dtype), last


def rnn_encode_float_mask(x, h0, W_ih, W_hh, b, lengths=None):
    """Blends with a float mask instead of torch.where."""
    B, T, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), T)
    lengths = lengths.to(x.device)
    h, outputs = h0, []
    for t in range(T):
        keep = (t < lengths).to(x.dtype)[:, None]  # (B, 1)
        h_new = torch.tanh(x[:, t] @ W_ih.T + h @ W_hh.T + b)
        h = keep * h_new + (1 - keep) * h
        outputs.append(keep * h_new)
    return torch.stack(outputs, dim=1), h


def shift_right_pad(targets, bos_id):
    return F.pad(targets[:, :-1], (1, 0), value=bos_id)


def sequence_cross_entropy_logsumexp(logits, targets, pad_id):
    real = targets != pad_id
    picked = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T)
    nll = torch.logsumexp(logits, dim=-1) - picked
    return nll[real].mean()


def greedy_decode_lists(step, h0, bos_id, eos_id, max_len):
    prev = torch.full((h0.shape[0],), bos_id, device=h0.device)
    done = torch.zeros(h0.shape[0], dtype=torch.bool, device=h0.device)
    columns, h = [], h0
    while len(columns) < max_len and not done.all():
        logits, h = step(prev, h)
        prev = logits.argmax(-1).masked_fill(done, eos_id)
        columns.append(prev)
        done = done | (prev == eos_id)
    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    tokens[:, : len(columns)] = torch.stack(columns, dim=1)
    return tokens


CORRECT = {
    "linear, gather, pad, logsumexp, lists": {
        CELL: rnn_cell_linear,
        ENCODE: rnn_encode_gather,
        SHIFT: shift_right_pad,
        CE: sequence_cross_entropy_logsumexp,
        DECODE: greedy_decode_lists,
    },
    "float mask": {ENCODE: rnn_encode_float_mask},
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("variant", CORRECT)
def test_other_correct_implementations_score_full_marks(variant, seed):
    """The encoders run in the student's namespace, where rnn_cell is the reference's."""
    scores, outcomes = grade({**REFERENCE, **CORRECT[variant]}, seed)
    failed = [outcome.feedback() for outcome in outcomes if not outcome.passed]
    assert scores == dict.fromkeys(BATTERY.functions, 10.0), failed


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
