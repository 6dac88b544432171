"""The chapter 1 references against PyTorch (float64, CPU): values, gradients, semantics.

On ``meta``, on CUDA and for unmodified inputs every reference is checked from the one table
of ``test_references.py``; here, only the lengths left on the CPU while the other inputs
are on another device.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import F64, assert_close, assert_cuda_matches, cuda_dtypes, move, randn
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from solutions.ch01_seq2seq import (
    greedy_decode,
    rnn_cell,
    rnn_encode,
    sequence_cross_entropy,
    shift_right,
)

# Distinct sizes: batch 3, padded length 6, input dim 4, hidden dim 5, vocabulary 9.
B, T, D_IN, H, V = 3, 6, 4, 5, 9
LENGTHS = [6, 1, 4]  # unsorted, with a length-1 sequence
BOS, EOS = 1, 2


def reference_rnn(W_ih, W_hh, b):
    """An ``nn.RNN`` holding the given weights; our single bias goes into bias_ih."""
    rnn = nn.RNN(D_IN, H, batch_first=True, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(W_ih)
        rnn.weight_hh_l0.copy_(W_hh)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    return rnn


@pytest.fixture
def rnn_params(gen):
    """x (B, T, D_in), h0 (B, H), W_ih (H, D_in), W_hh (H, H), b (H,)."""
    return (
        randn(B, T, D_IN, generator=gen),
        randn(B, H, generator=gen),
        randn(H, D_IN, generator=gen) * 0.5,
        randn(H, H, generator=gen) * 0.5,
        randn(H, generator=gen),
    )


@pytest.fixture
def lengths():
    return torch.tensor(LENGTHS)


def test_rnn_cell_matches_rnn_cell_module(rnn_params, gen):
    x, h0, W_ih, W_hh, b = rnn_params
    bias_hh = randn(H, generator=gen)
    cell = nn.RNNCell(D_IN, H, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(W_ih)
        cell.weight_hh.copy_(W_hh)
        cell.bias_ih.copy_(b - bias_hh)
        cell.bias_hh.copy_(bias_hh)
    h = rnn_cell(x[:, 0], h0, W_ih, W_hh, b)
    assert h.shape == (B, H)
    assert_close(h, cell(x[:, 0], h0))


def test_rnn_cell_gradients_pass_gradcheck(gen):
    args = (
        randn(2, 3, generator=gen, requires_grad=True),
        randn(2, 4, generator=gen, requires_grad=True),
        randn(4, 3, generator=gen, requires_grad=True),
        randn(4, 4, generator=gen, requires_grad=True),
        randn(4, generator=gen, requires_grad=True),
    )
    assert torch.autograd.gradcheck(rnn_cell, args)


def test_rnn_encode_without_lengths_matches_nn_rnn(rnn_params):
    x, h0, W_ih, W_hh, b = rnn_params
    outputs, h_last = rnn_encode(x, h0, W_ih, W_hh, b)
    expected_outputs, expected_h = reference_rnn(W_ih, W_hh, b)(x, h0[None])
    assert outputs.shape == (B, T, H) and h_last.shape == (B, H)
    assert_close((outputs, h_last), (expected_outputs, expected_h[0]))


def test_rnn_encode_with_lengths_matches_truncated_sequences(rnn_params, lengths):
    x, h0, W_ih, W_hh, b = rnn_params
    rnn = reference_rnn(W_ih, W_hh, b)
    outputs, h_last = rnn_encode(x, h0, W_ih, W_hh, b, lengths)
    for i, length in enumerate(LENGTHS):
        expected_outputs, expected_h = rnn(x[i : i + 1, :length], h0[None, i : i + 1])
        assert_close(outputs[i, :length], expected_outputs[0])
        assert_close(h_last[i], expected_h[0, 0])
        assert (outputs[i, length:] == 0).all(), "padded outputs must be exactly zero"


def test_rnn_encode_with_lengths_matches_packed_sequence(rnn_params, lengths):
    x, h0, W_ih, W_hh, b = rnn_params
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_outputs, expected_h = reference_rnn(W_ih, W_hh, b)(packed, h0[None])
    expected_outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=T)
    assert_close(rnn_encode(x, h0, W_ih, W_hh, b, lengths), (expected_outputs, expected_h[0]))


def test_rnn_encode_ignores_padded_inputs(rnn_params, lengths, gen):
    x, h0, W_ih, W_hh, b = rnn_params
    padded = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T)
    noisy_x = torch.where(padded[:, :, None], randn(B, T, D_IN, generator=gen) * 10, x)
    assert not torch.equal(noisy_x, x)
    assert_close(
        rnn_encode(noisy_x, h0, W_ih, W_hh, b, lengths), rnn_encode(x, h0, W_ih, W_hh, b, lengths)
    )


def test_rnn_encode_full_lengths_equal_no_lengths(rnn_params):
    x, h0, W_ih, W_hh, b = rnn_params
    full = torch.full((B,), T)
    assert_close(rnn_encode(x, h0, W_ih, W_hh, b, full), rnn_encode(x, h0, W_ih, W_hh, b))


def test_rnn_encode_gradients_match_nn_rnn(rnn_params, lengths):
    x, h0, W_ih, W_hh, b = (t.clone().requires_grad_() for t in rnn_params)
    outputs, h_last = rnn_encode(x, h0, W_ih, W_hh, b, lengths)
    (outputs.square().sum() + h_last.sin().sum()).backward()

    x_ref, h0_ref = (t.clone().requires_grad_() for t in rnn_params[:2])
    rnn = reference_rnn(*rnn_params[2:])
    packed = pack_padded_sequence(x_ref, lengths, batch_first=True, enforce_sorted=False)
    packed_outputs, h_ref = rnn(packed, h0_ref[None])
    outputs_ref, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=T)
    (outputs_ref.square().sum() + h_ref.sin().sum()).backward()

    for mine, reference in [
        (x.grad, x_ref.grad),
        (h0.grad, h0_ref.grad),
        (W_ih.grad, rnn.weight_ih_l0.grad),
        (W_hh.grad, rnn.weight_hh_l0.grad),
        (b.grad, rnn.bias_ih_l0.grad),
    ]:
        torch.testing.assert_close(mine, reference, **F64)


def test_rnn_encode_passes_gradcheck(gen):
    args = (
        randn(3, 4, 2, generator=gen, requires_grad=True),
        randn(3, 3, generator=gen, requires_grad=True),
        randn(3, 2, generator=gen, requires_grad=True),
        randn(3, 3, generator=gen, requires_grad=True),
        randn(3, generator=gen, requires_grad=True),
    )
    lengths = torch.tensor([4, 1, 2])
    assert torch.autograd.gradcheck(lambda *a: rnn_encode(*a, lengths), args)


def test_rnn_encode_accepts_cpu_lengths_with_meta_inputs(rnn_params, lengths):
    outputs, h_last = rnn_encode(*move(rnn_params, "meta"), lengths)
    assert outputs.device.type == "meta" and outputs.shape == (B, T, H)
    assert h_last.device.type == "meta" and h_last.shape == (B, H)


@cuda_dtypes
def test_rnn_encode_accepts_cpu_lengths_with_cuda_inputs(rnn_params, lengths, dtype):
    assert_cuda_matches(lambda *args: rnn_encode(*args, lengths), dtype, *rnn_params)


def test_shift_right_hand_made_example():
    targets = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]])
    expected = torch.tensor([[1, 5, 6, 7], [1, 8, 2, 0]])
    assert torch.equal(shift_right(targets, bos_id=1), expected)


def test_shift_right_random(gen):
    targets = torch.randint(3, V, (B, T), generator=gen)
    shifted = shift_right(targets, BOS)
    assert shifted.shape == (B, T) and shifted.dtype == torch.long
    assert (shifted[:, 0] == BOS).all()
    assert torch.equal(shifted[:, 1:], targets[:, :-1])


def test_shift_right_length_one():
    assert torch.equal(shift_right(torch.tensor([[4], [7]]), 3), torch.tensor([[3], [3]]))


def padded_targets(gen, pad_id):
    """(B, T) random tokens, with ``pad_id`` at the positions >= LENGTHS."""
    targets = torch.randint(0, V, (B, T), generator=gen)
    padded = torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]  # (B, T)
    return torch.where(padded, pad_id, targets), padded


def torch_cross_entropy(logits, targets, pad_id):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=pad_id)


@pytest.mark.parametrize("pad_id", [0, 4, -100])
def test_sequence_cross_entropy_matches_pytorch(gen, pad_id):
    logits = randn(B, T, V, generator=gen) * 3
    targets, _ = padded_targets(gen, pad_id)
    loss = sequence_cross_entropy(logits, targets, pad_id)
    assert loss.shape == () and loss.dtype == torch.float64
    assert_close(loss, torch_cross_entropy(logits, targets, pad_id))


@pytest.mark.parametrize("pad_id", [0, -100])
def test_sequence_cross_entropy_gradients_match_pytorch(gen, pad_id):
    logits = randn(B, T, V, generator=gen)
    targets, _ = padded_targets(gen, pad_id)
    mine, reference = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    sequence_cross_entropy(mine, targets, pad_id).backward()
    torch_cross_entropy(reference, targets, pad_id).backward()
    torch.testing.assert_close(mine.grad, reference.grad, **F64)


def test_sequence_cross_entropy_ignores_pad_logits(gen):
    logits = randn(B, T, V, generator=gen)
    targets, padded = padded_targets(gen, pad_id=0)
    changed = torch.where(padded[:, :, None], randn(B, T, V, generator=gen) * 1e3, logits)
    assert not torch.equal(changed, logits)
    mine = changed.clone().requires_grad_()
    loss = sequence_cross_entropy(mine, targets, 0)
    loss.backward()
    assert_close(loss, sequence_cross_entropy(logits, targets, 0))
    assert (mine.grad[padded] == 0).all()


def test_sequence_cross_entropy_large_logits_stay_finite(gen):
    logits = randn(B, T, V, generator=gen) * 1e4
    targets, _ = padded_targets(gen, pad_id=0)
    mine = logits.clone().requires_grad_()
    loss = sequence_cross_entropy(mine, targets, 0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mine.grad).all()
    assert_close(loss, torch_cross_entropy(logits, targets, 0))


class ScriptedStep:
    """A decoder that emits ``script[row, t]`` at its t-th call, whatever it is fed.

    The state h (B, 2) holds each row's index and the step counter, so the step works
    on any device and dtype. Every call records the tokens it was fed.
    """

    def __init__(self, script):
        self.script = script  # (B, S) long
        self.fed = []

    def __call__(self, prev_tokens, h):
        self.fed.append(prev_tokens.cpu())
        rows, t = h[:, 0].long(), h[:, 1].long()  # (B,), (B,)
        tokens = self.script.to(h.device)[rows, t]  # (B,)
        logits = F.one_hot(tokens, V).to(h.dtype) * 5  # (B, V)
        return logits, torch.stack((h[:, 0], h[:, 1] + 1), dim=1)

    @staticmethod
    def initial_state(batch):
        return torch.stack((torch.arange(batch), torch.zeros(batch)), dim=1).double()  # (B, 2)


# The scripts go on after eos with other tokens: a finished row must still give eos.
EARLY_SCRIPT = [
    [5, 3, EOS, 7, 7, 7, 7, 7],
    [EOS, 4, 4, 4, 4, 4, 4, 4],
    [6, 6, 3, 8, EOS, 5, 5, 5],
]
EARLY_TOKENS = [
    [5, 3, EOS, EOS, EOS, EOS, EOS, EOS],
    [EOS] * 8,
    [6, 6, 3, 8, EOS, EOS, EOS, EOS],
]
ENDLESS_SCRIPT = [
    [5, 3, EOS, 7, 7, 7, 7, 7],
    [4, 4, 4, 4, 4, 4, 4, 4],
    [EOS, 6, 6, 6, 6, 6, 6, 6],
]
ENDLESS_TOKENS = [
    [5, 3, EOS, EOS, EOS, EOS, EOS, EOS],
    [4, 4, 4, 4, 4, 4, 4, 4],
    [EOS] * 8,
]


@pytest.mark.parametrize(
    "script, expected, calls",
    [(EARLY_SCRIPT, EARLY_TOKENS, 5), (ENDLESS_SCRIPT, ENDLESS_TOKENS, 8)],
    ids=["all-finish", "one-never-finishes"],
)
def test_greedy_decode_scripted(script, expected, calls):
    step = ScriptedStep(torch.tensor(script))
    tokens = greedy_decode(step, ScriptedStep.initial_state(B), BOS, EOS, max_len=8)
    expected = torch.tensor(expected)
    assert tokens.dtype == torch.long and torch.equal(tokens, expected)
    assert len(step.fed) == calls, "step called after every sequence had finished"
    fed_expected = torch.cat((torch.full((B, 1), BOS), expected), dim=1)  # (B, 9)
    for t, fed in enumerate(step.fed):
        assert torch.equal(fed, fed_expected[:, t]), f"wrong tokens fed at step {t}"


def test_greedy_decode_short_max_len():
    step = ScriptedStep(torch.tensor(EARLY_SCRIPT))
    tokens = greedy_decode(step, ScriptedStep.initial_state(B), BOS, EOS, max_len=3)
    assert torch.equal(tokens, torch.tensor(EARLY_TOKENS)[:, :3])
    assert len(step.fed) == 3


class TinyDecoder:
    """A small RNN decoder: h = tanh(E[prev] + h W^T), logits = h U^T; counts its calls."""

    def __init__(self, seed, vocab=7, hidden=H):
        gen = torch.Generator().manual_seed(seed)
        self.E = randn(vocab, hidden, generator=gen)
        self.W = randn(hidden, hidden, generator=gen) * 0.5
        self.U = randn(vocab, hidden, generator=gen)
        self.calls = 0

    def __call__(self, prev_tokens, h):
        self.calls += 1
        h = torch.tanh(self.E.to(h)[prev_tokens] + h @ self.W.to(h).T)  # (B, H)
        return h @ self.U.to(h).T, h  # (B, V), (B, H)


def decode_row_by_row(step, h0, bos_id, eos_id, max_len):
    """Greedy decoding written plainly, one sequence at a time."""
    rows = []
    for i in range(h0.shape[0]):
        h, prev, row = h0[i : i + 1], torch.tensor([bos_id]), []
        while len(row) < max_len:
            logits, h = step(prev, h)
            token = int(logits.argmax())
            row.append(token)
            if token == eos_id:
                break
            prev = torch.tensor([token])
        rows.append(row + [eos_id] * (max_len - len(row)))
    return torch.tensor(rows)


@pytest.mark.parametrize("seed", [0, 2])
def test_greedy_decode_matches_row_by_row_loop(seed):
    batch, max_len = 4, 9
    h0 = randn(batch, H, generator=torch.Generator().manual_seed(seed + 100))
    step = TinyDecoder(seed)
    tokens = greedy_decode(step, h0, BOS, EOS, max_len)
    expected = decode_row_by_row(TinyDecoder(seed), h0, BOS, EOS, max_len)
    assert torch.equal(tokens, expected)
    ends = [row.index(EOS) + 1 if EOS in row else max_len for row in expected.tolist()]
    assert len(set(ends)) > 1, "the rows should finish at different steps"
    assert step.calls == max(ends)
