"""The hidden battery of chapter 1: the RNN cell and encoder, teacher forcing, the loss, decoding.

Every check draws its sizes and values from the generator it is given (``kit.inputs``), so
that the inputs depend on the run's secret seed. Sizes within one call are distinct (batch,
time, input and hidden sizes, vocabulary), so that a swapped axis or a wrong size shows.
Padded batches always hold a full-length sequence and one of length 1. ``greedy_decode``
gets its ``step`` as data (``Callback``): a small RNN whose logits depend on the fed tokens
and on the state, or a scripted table that makes each sequence finish at a chosen step; its
calls are counted and what it was fed is compared.
"""

from __future__ import annotations

from functools import partial

import torch

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference
from autograder.kit.standard import HALF_POINT_PER_DTYPE, standard_checks
from autograder.mutants.ch01_seq2seq import MUTANTS
from autograder.runtime.executor import ACCELERATOR, Call, Callback, OnDevice

LEAK_MARKER = "LEAK-MARKER-autograder-ch01-9c2e3699"
ASSIGNMENT = ASSIGNMENTS["ch01_seq2seq"]

CELL = "rnn_cell"
ENCODE = "rnn_encode"
SHIFT = "shift_right"
CE = "sequence_cross_entropy"
DECODE = "greedy_decode"

F32 = TOLERANCES[torch.float32]
EXACT = match_reference(grads=False)  # integer outputs are compared exactly
# Logits around 1000 carry float32 rounding errors around 1e-4.
LARGE = dict(rtol=1e-3, atol=1e-3)
FLOAT16_HINT = "Let torch.tanh and torch.log_softmax work in the inputs' dtype."


def _padded_lengths(generator, batch: int, longest: int) -> torch.Tensor:
    """(batch,) lengths in [1, longest] with one full sequence and one of length 1."""
    lengths = inputs.lengths(generator, batch, longest)
    full, single = torch.randperm(batch, generator=generator)[:2].tolist()
    lengths[full], lengths[single] = longest, 1
    return lengths


# --- rnn_cell ---


def _cell_args(generator, B, D_in, H, bias_scale=1.0):
    """x_t (B, D_in), h_prev (B, H) in (-1, 1), W_ih (H, D_in), W_hh (H, H), b (H,)."""
    x_t = inputs.randn(generator, B, D_in)
    h_prev = torch.tanh(inputs.randn(generator, B, H))
    W_ih, W_hh = inputs.weights(generator, H, D_in), inputs.weights(generator, H, H)
    b = inputs.randn(generator, H, scale=bias_scale)
    return x_t, h_prev, W_ih, W_hh, b


def _cell_calls(generator, count=3, square=False, hot=False, **options) -> list[Call]:
    """``count`` calls with distinct B, D_in, H; ``square`` makes D_in = H; ``hot`` gives
    one hidden unit a bias of 8, where tanh is nearly 1 and exp(2a) overflows float16."""
    calls = []
    for _ in range(count):
        B, D_in, H = inputs.sizes(generator, 3)
        if square:
            D_in = H
        x_t, h_prev, W_ih, W_hh, b = _cell_args(generator, B, D_in, H)
        if hot:
            b[int(torch.randint(H, (1,), generator=generator))] = 8.0
        args = (x_t, h_prev, W_ih, W_hh, b)
        calls.append(Call(CELL, args, seed=inputs.seed(generator), **options))
    return calls


def _cell_saturated_calls(generator) -> list[Call]:
    """Pre-activations around +100 and -100 (a bias of +-100): tanh saturates at +-1."""
    B, D_in, H = inputs.sizes(generator, 3)
    x_t, h_prev, W_ih, W_hh, _ = _cell_args(generator, B, D_in, H)
    signs = torch.where(torch.rand(H, generator=generator) < 0.5, -1.0, 1.0)
    signs[0], signs[1] = 1.0, -1.0
    b = 100.0 * signs + inputs.randn(generator, H)
    return [Call(CELL, (x_t, h_prev, W_ih, W_hh, b), seed=inputs.seed(generator))]


CELL_CHECKS = (
    Check(
        "rnn_cell_values",
        CELL,
        3.0,
        _cell_calls,
        "rnn_cell is wrong for x_t (B, D_in), h_prev (B, H), W_ih (H, D_in), W_hh (H, H) and"
        " b (H,): h_t = tanh(x_t @ W_ih.T + h_prev @ W_hh.T + b).",
        match_reference(**F32),
    ),
    Check(
        "rnn_cell_square_weights",
        CELL,
        1.0,
        partial(_cell_calls, count=2, square=True),
        "rnn_cell is wrong when D_in = H, where W_ih and W_hh have the same shape: W_ih"
        " multiplies the input, W_hh the previous state, each transposed.",
        match_reference(**F32),
    ),
    Check(
        "rnn_cell_saturated",
        CELL,
        1.0,
        _cell_saturated_calls,
        "rnn_cell is wrong or not finite when the pre-activations are around +100 and -100,"
        " where tanh saturates at +1 and -1 (torch.tanh does this).",
        match_reference(**F32),
    ),
    *standard_checks(
        CELL,
        partial(_cell_calls, count=2, hot=True),
        prefix="rnn_cell",
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
    ),
)


# --- rnn_encode ---


def _encode_calls(
    generator, count=2, padded=True, length=None, lengths_on_cpu=False, **options
) -> list[Call]:
    """``count`` calls (x, h0, W_ih, W_hh, b[, lengths]) with distinct B, T, D_in, H.

    ``padded`` passes lengths (one full, one of length 1); ``length`` pins T;
    ``lengths_on_cpu`` keeps lengths on the CPU whatever the call's device.
    """
    calls = []
    for _ in range(count):
        B, T, D_in, H = inputs.sizes(generator, 4, low=3)
        T = length or T
        x = inputs.randn(generator, B, T, D_in)
        h0 = torch.tanh(inputs.randn(generator, B, H))
        W_ih, W_hh = inputs.weights(generator, H, D_in), inputs.weights(generator, H, H)
        b = inputs.randn(generator, H)
        args = (x, h0, W_ih, W_hh, b)
        if padded:
            lengths = _padded_lengths(generator, B, T)
            args += (OnDevice(lengths) if lengths_on_cpu else lengths,)
        calls.append(Call(ENCODE, args, seed=inputs.seed(generator), **options))
    return calls


ENCODE_CHECKS = (
    Check(
        "rnn_encode_unpadded",
        ENCODE,
        2.0,
        partial(_encode_calls, padded=False),
        "rnn_encode is wrong without lengths: outputs[:, t] is the state after step t,"
        " starting from h0 and feeding each state to the next step, and h_last is the state"
        " after the last step.",
        match_reference(**F32),
    ),
    Check(
        "rnn_encode_padded",
        ENCODE,
        2.0,
        _encode_calls,
        "rnn_encode is wrong on a padded batch: outputs must be zero at padded steps"
        " (t >= length) and h_last is each sequence's state at its last real step (t ="
        " length - 1).",
        match_reference(**F32),
    ),
    Check(
        "rnn_encode_length_one",
        ENCODE,
        1.0,
        partial(_encode_calls, length=1),
        "rnn_encode is wrong for sequences of a single step (T = 1).",
        match_reference(**F32),
    ),
    *standard_checks(
        ENCODE,
        _encode_calls,
        prefix="rnn_encode",
        points={"gradients": 1.5, **HALF_POINT_PER_DTYPE},
        hints={"float16": FLOAT16_HINT},
    ),
    *standard_checks(
        ENCODE,
        partial(_encode_calls, padded=False),
        prefix="rnn_encode",
        points={"meta": 1.0, "accelerator": 0.5},
    ),
    Check(
        "rnn_encode_lengths_on_cpu",
        ENCODE,
        0.5,
        partial(_encode_calls, lengths_on_cpu=True, device=ACCELERATOR, grad=True),
        "rnn_encode is wrong when lengths lives on the CPU and x on the grading machine's"
        " accelerator (a GPU when there is one): move lengths to x.device before comparing.",
        match_reference(**F32),
    ),
)


# --- shift_right ---


def _targets(generator, B, T, vocab, avoid):
    """(B, T) long tokens in [0, vocab) that are never ``avoid`` (when it is one of them)."""
    if not 0 <= avoid < vocab:
        return torch.randint(0, vocab, (B, T), generator=generator)
    tokens = torch.randint(0, vocab - 1, (B, T), generator=generator)
    return tokens + (tokens >= avoid).long()


def _shift_calls(generator, count=3, batch=None, length=None, **options) -> list[Call]:
    """``count`` calls (targets (B, T), bos_id) with B != T; bos_id >= 1 never in targets."""
    calls = []
    for _ in range(count):
        B, T = inputs.sizes(generator, 2)
        B, T = batch or B, length or T
        vocab = int(torch.randint(8, 40, (1,), generator=generator))
        bos_id = int(torch.randint(1, vocab, (1,), generator=generator))
        targets = _targets(generator, B, T, vocab, bos_id)
        calls.append(Call(SHIFT, (targets, bos_id), **options))
    return calls


SHIFT_CHECKS = (
    Check(
        "shift_right_values",
        SHIFT,
        4.0,
        _shift_calls,
        "shift_right is wrong: for targets (B, T) the decoder inputs are [bos, y_0, ...,"
        " y_{T-2}] in every row, a new (B, T) long tensor.",
        EXACT,
    ),
    Check(
        "shift_right_length_one",
        SHIFT,
        2.0,
        partial(_shift_calls, count=2, length=1),
        "shift_right is wrong for targets of a single step (T = 1): the result is just bos.",
        EXACT,
    ),
    Check(
        "shift_right_single_sequence",
        SHIFT,
        1.0,
        partial(_shift_calls, count=2, batch=1),
        "shift_right is wrong for a batch of one sequence (B = 1): shift along the time steps"
        " (dim 1).",
        EXACT,
    ),
    *standard_checks(
        SHIFT,
        partial(_shift_calls, count=2),
        prefix="shift_right",
        points={"meta": 1.5, "accelerator": 1.5},
        grads=False,
    ),
)


# --- sequence_cross_entropy ---


def _ce_calls(
    generator, count=2, pad_id=None, padded=True, offsets=(0.0,), **options
) -> list[Call]:
    """``count`` calls (logits (B, T, V), targets (B, T), pad_id) with distinct B, T, V.

    Targets are padded with ``pad_id`` (one full sequence, one of length 1) unless not
    ``padded``; ``pad_id`` None draws one inside the vocabulary. Each call i adds
    ``offsets[i % len(offsets)]`` to every logit.
    """
    calls = []
    for index in range(count):
        B, T, V = inputs.sizes(generator, 3, low=3)
        pad = pad_id if pad_id is not None else int(torch.randint(0, V, (1,), generator=generator))
        targets = _targets(generator, B, T, V, pad)
        if padded:
            lengths = _padded_lengths(generator, B, T)
            targets = torch.where(torch.arange(T)[None, :] < lengths[:, None], targets, pad)
        logits = inputs.randn(generator, B, T, V, scale=2.0).clamp(-7.0, 7.0)  # (B, T, V)
        if padded:
            # Wide logits at the pads and an unlikely target in the one-token sequences:
            # their negative log-likelihoods stand far from the others, so that a mean
            # over the wrong positions, or per sequence, shows in every dtype. Real
            # positions stay within +-7 and pads within +-35, so a sum of exp() overflows
            # neither float16 at real positions nor float32 anywhere; the probability of
            # the unlikely target underflows float16 (log of a softmax gives inf there,
            # log_softmax does not).
            pads = (targets == pad)[..., None]  # (B, T, 1)
            logits = torch.where(pads, logits * 5, logits)
            single = (lengths == 1).nonzero()[:, 0]  # (rows,)
            logits[single, 0, targets[single, 0]] -= 25.0
        logits = logits + offsets[index % len(offsets)]
        calls.append(Call(CE, (logits, targets, pad), seed=inputs.seed(generator), **options))
    return calls


CE_CHECKS = (
    Check(
        "sequence_cross_entropy_values",
        CE,
        3.0,
        partial(_ce_calls, count=3),
        "sequence_cross_entropy is wrong on padded targets: it is the mean, over the"
        " positions whose target is not pad_id, of -log softmax(logits)[target].",
        match_reference(**F32),
    ),
    Check(
        "sequence_cross_entropy_unpadded",
        CE,
        1.0,
        partial(_ce_calls, padded=False),
        "sequence_cross_entropy is wrong when no target is padding: it is then the mean over"
        " all B * T positions.",
        match_reference(**F32),
    ),
    Check(
        "sequence_cross_entropy_pad_outside_vocabulary",
        CE,
        1.0,
        partial(_ce_calls, pad_id=-100),
        "sequence_cross_entropy is wrong when pad_id lies outside the vocabulary (-100, as"
        " PyTorch's ignore_index): never index the logits with a pad target.",
        match_reference(**F32),
    ),
    Check(
        "sequence_cross_entropy_large_logits",
        CE,
        1.0,
        partial(_ce_calls, offsets=(1000.0, -1000.0)),
        "sequence_cross_entropy is wrong or not finite when the logits are around +1000 or"
        " -1000: use torch.log_softmax, which subtracts each row's maximum.",
        match_reference(**LARGE, grads=False),
    ),
    *standard_checks(
        CE,
        partial(_ce_calls, count=4),  # four scalars: low-precision tolerances are wide
        prefix="sequence_cross_entropy",
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            # No meta check: the natural nll[real].mean() has a data-dependent shape.
            "accelerator": 1.0,
        },
        hints={"float16": FLOAT16_HINT},
    ),
)


# --- greedy_decode ---


def _decode_ids(generator, vocab):
    """Distinct bos_id and eos_id in [1, vocab): neither is token 0."""
    bos_id, eos_id = inputs.integers(generator, 2, 1, vocab - 1)
    return bos_id, eos_id


def _rnn_step(generator, H, V, bos_id, eos_id) -> Callback:
    """A step whose logits depend on the fed token and on the state; it never predicts bos
    or eos (their output rows are the mean of the others), so no sequence finishes."""
    W_out = inputs.weights(generator, V, H) * 4
    others = [token for token in range(V) if token not in (bos_id, eos_id)]
    W_out[[bos_id, eos_id]] = W_out[others].mean(dim=0)
    tensors = {
        "embedding": inputs.randn(generator, V, H),
        "W_hh": inputs.weights(generator, H, H) * 2,
        "W_out": W_out,
    }
    return Callback("step", "rnn", tensors)


def _finishing_table(generator, B, V, L, bos_id, eos_id, finish) -> Callback:
    """A scripted step: row b emits eos at call ``finish[b]`` (never when >= L) and neither
    bos nor eos otherwise."""
    logits = inputs.randn(generator, L, B, V)
    logits[..., [bos_id, eos_id]] = -50.0
    for row, at in enumerate(finish):
        if at < L:
            logits[at, row, eos_id] = 50.0
    return Callback("step", "scripted", {"logits": logits})


def _decode_rnn_calls(generator, count=2, max_len=None, **options) -> list[Call]:
    """``count`` calls with an RNN step and distinct B, H, V; max_len in [4, 9]."""
    calls = []
    for _ in range(count):
        B, H, V = inputs.sizes(generator, 3, low=5)
        L = max_len or int(torch.randint(4, 10, (1,), generator=generator))
        bos_id, eos_id = _decode_ids(generator, V)
        step = _rnn_step(generator, H, V, bos_id, eos_id)
        h0 = inputs.randn(generator, B, H)
        calls.append(Call(DECODE, (step, h0, bos_id, eos_id, L), **options))
    return calls


def _decode_scripted_calls(generator, count=2, all_finish=False, max_len=None, **options):
    """``count`` calls with a scripted step.

    Without ``all_finish`` one sequence never finishes and another finishes two steps or
    more before the end. With it every sequence finishes, one of them two steps or more
    before the last to finish, itself before step max_len - 1 (so decoding must stop
    early). ``max_len`` pins the length; the finishing steps are then drawn freely.
    """
    calls = []
    for _ in range(count):
        B, H, V = inputs.sizes(generator, 3, low=3)
        L = max_len or int(torch.randint(5, 10, (1,), generator=generator))
        bos_id, eos_id = _decode_ids(generator, V)
        first, second = torch.randperm(B, generator=generator)[:2].tolist()
        finish = torch.randint(0, L + 1, (B,), generator=generator)  # L: never
        if max_len is None and all_finish:
            last = int(torch.randint(2, L - 1, (1,), generator=generator))
            finish = finish.clamp(max=last)
            finish[first] = last
            finish[second] = int(torch.randint(0, last - 1, (1,), generator=generator))
        elif max_len is None:
            finish[first] = L
            finish[second] = int(torch.randint(0, L - 2, (1,), generator=generator))
        step = _finishing_table(generator, B, V, L, bos_id, eos_id, finish.tolist())
        h0 = inputs.randn(generator, B, H)
        calls.append(Call(DECODE, (step, h0, bos_id, eos_id, L), **options))
    return calls


def _decode_length_one_calls(generator) -> list[Call]:
    return [
        *_decode_rnn_calls(generator, count=1, max_len=1),
        *_decode_scripted_calls(generator, count=1, max_len=1),
    ]


def _decode_accelerator_calls(generator) -> list[Call]:
    return [
        *_decode_rnn_calls(generator, count=1, device=ACCELERATOR),
        *_decode_scripted_calls(generator, count=1, all_finish=True, device=ACCELERATOR),
    ]


DECODE_CHECKS = (
    Check(
        "greedy_decode_feedback",
        DECODE,
        3.0,
        _decode_rnn_calls,
        "greedy_decode is wrong with a recurrent step: feed bos first, then at every step the"
        " argmax of the logits step returned, and pass on the state step returned.",
        EXACT,
    ),
    Check(
        "greedy_decode_unfinished",
        DECODE,
        2.5,
        _decode_scripted_calls,
        "greedy_decode is wrong when one sequence finishes early and another never emits eos:"
        " after its eos a sequence is filled with eos_id and fed eos_id, and decoding goes on"
        " for max_len steps while a sequence is unfinished.",
        EXACT,
    ),
    Check(
        "greedy_decode_all_finish",
        DECODE,
        2.0,
        partial(_decode_scripted_calls, all_finish=True),
        "greedy_decode is wrong when every sequence emits eos before max_len: stop calling"
        " step once all have finished, and fill the remaining positions with eos_id.",
        EXACT,
    ),
    Check(
        "greedy_decode_length_one",
        DECODE,
        1.0,
        _decode_length_one_calls,
        "greedy_decode is wrong for max_len = 1: one call of step, one token per sequence.",
        EXACT,
    ),
    Check(
        "greedy_decode_accelerator",
        DECODE,
        1.5,
        _decode_accelerator_calls,
        "greedy_decode is wrong on the grading machine's accelerator (a GPU when there is"
        " one): create the tokens on h0's device.",
        EXACT,
    ),
)

BATTERY = Battery.for_assignment(
    ASSIGNMENT, (*CELL_CHECKS, *ENCODE_CHECKS, *SHIFT_CHECKS, *CE_CHECKS, *DECODE_CHECKS), MUTANTS
)
