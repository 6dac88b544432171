"""Known mistakes of chapter 1: the RNN cell and encoder, teacher forcing, the loss, decoding.

Each mistake is the whole function as a student might write it with one error, registered
with the sentence that names that error. They are tried in this order.

The classic seq2seq mistakes of the research notes (content anchors, section 3.1), and the
mistakes below that carry them into these five functions:

1. decoder input = target, no shift: ``shift_right_returns_targets``.
2. padding included in the loss: ``ce_mean_over_all_positions``,
   ``ce_divides_by_all_positions``.
3. loss averaged per sequence or per batch: ``ce_mean_of_sequence_means``,
   ``ce_sum_over_batch_size``, ``ce_sum_not_mean``.
4. the pad embedding learns (padding treated as data): ``encode_pads_run_as_tokens``,
   whose padded steps produce states as if they were tokens.
5. final state taken at the padded last step: ``encode_last_state_after_padding``,
   ``encode_last_state_from_last_column``.
6. hidden state not threaded: ``cell_ignores_previous_state``, ``encode_h0_every_step``,
   ``decode_h0_every_step``.
7. batch and time confused: ``encode_time_major_view``.
8. decoding does not stop at eos: ``decode_no_eos_fill``, ``decode_never_stops_early``.
9. decoding feeds back something else than its own prediction (teacher forcing at
   inference): ``decode_feeds_bos_every_step``.
10. a detach in the training path: ``encode_detaches_state``, ``cell_detaches_state``.
11. double softmax, or NLL on raw logits: ``ce_double_softmax``, ``ce_nll_of_raw_logits``.
12. a correction applied after the step it should guard (clipping after
    ``optimizer.step()``): ``decode_eos_fed_after_the_step``, whose finished rows are
    written as eos only after their own prediction was fed back.
"""

import torch

from autograder.kit.mistakes import KnownMistakes

LEAK_MARKER = "LEAK-MARKER-autograder-ch01-1ba3a81b"

CELL = "rnn_cell"
ENCODE = "rnn_encode"
SHIFT = "shift_right"
CE = "sequence_cross_entropy"
DECODE = "greedy_decode"

mistake = KnownMistakes()


# --- rnn_cell(x_t (B, D_in), h_prev (B, H), W_ih (H, D_in), W_hh (H, H), b (H,)) ---


@mistake(CELL, "the previous state h_prev is not used: h_t must depend on h_prev @ W_hh.T.")
def cell_ignores_previous_state(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + b)


@mistake(CELL, "the tanh is missing: h_t = tanh(x_t W_ih^T + h_prev W_hh^T + b).")
def cell_no_tanh(x_t, h_prev, W_ih, W_hh, b):
    return x_t @ W_ih.T + h_prev @ W_hh.T + b


@mistake(CELL, "a sigmoid is used where the Elman cell uses tanh.")
def cell_sigmoid(x_t, h_prev, W_ih, W_hh, b):
    return torch.sigmoid(x_t @ W_ih.T + h_prev @ W_hh.T + b)


@mistake(CELL, "the bias b is missing.")
def cell_no_bias(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + h_prev @ W_hh.T)


@mistake(CELL, "the bias is added twice (b already holds both of PyTorch's biases).")
def cell_bias_twice(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + b + h_prev @ W_hh.T + b)


@mistake(CELL, "the bias is added after the tanh instead of inside it.")
def cell_bias_after_tanh(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + h_prev @ W_hh.T) + b


@mistake(
    CELL,
    "h_prev @ W_hh is used instead of h_prev @ W_hh.T (weights are stored as "
    "(out_features, in_features)).",
)
def cell_untransposed_w_hh(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + h_prev @ W_hh + b)


@mistake(CELL, "W_ih and W_hh are swapped: W_ih multiplies the input x_t, W_hh the state h_prev.")
def cell_swapped_weights(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_hh.T + h_prev @ W_ih.T + b)


@mistake(
    CELL,
    "W_ih is reshaped (or viewed) to (D_in, H) instead of transposed: use W_ih.T.",
)
def cell_reshaped_w_ih(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.reshape(W_ih.shape[1], W_ih.shape[0]) + h_prev @ W_hh.T + b)


@mistake(
    CELL,
    "tanh is written as (exp(2a) - 1) / (exp(2a) + 1), which overflows to NaN for large a "
    "(use torch.tanh).",
)
def cell_tanh_by_hand(x_t, h_prev, W_ih, W_hh, b):
    a = x_t @ W_ih.T + h_prev @ W_hh.T + b
    return (torch.exp(2 * a) - 1) / (torch.exp(2 * a) + 1)


@mistake(CELL, "h_prev is detached, so no gradient flows back through the state.")
def cell_detaches_state(x_t, h_prev, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + h_prev.detach() @ W_hh.T + b)


# --- rnn_encode(x (B, T, D_in), h0 (B, H), W_ih, W_hh, b, lengths=None) ---


def _cell(x_t, h, W_ih, W_hh, b):
    return torch.tanh(x_t @ W_ih.T + h @ W_hh.T + b)  # (B, H)


def _real(x, lengths, offset=0):
    """(B, T) bool: position + offset < length (all True without lengths)."""
    B, T, _ = x.shape
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=x.device)
    positions = torch.arange(T, device=x.device)
    return positions[None, :] + offset < lengths.to(x.device)[:, None]


def _masked_encode(steps, h, real, W_ih, W_hh, b, fed=lambda h: h):
    """The masked loop of several mistakes below: at step t, ``_cell(steps[t], fed(h))``
    (B, H) becomes the state and the output where ``real[:, t]`` (B, T) is True; elsewhere
    the state stays and the output is zero. Returns (outputs (B, T, H), last state (B, H))."""
    outputs = []
    for t, x_t in enumerate(steps):
        h_new = _cell(x_t, fed(h), W_ih, W_hh, b)
        h = torch.where(real[:, t, None], h_new, h)
        outputs.append(torch.where(real[:, t, None], h_new, 0.0))
    return torch.stack(outputs, dim=1), h


@mistake(
    ENCODE,
    "h_last is the state after the last padded step: at padded steps the state must stay as "
    "it was at the last real token.",
)
def encode_last_state_after_padding(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    h, outputs = h0, []
    for t in range(x.shape[1]):
        h = _cell(x[:, t], h, W_ih, W_hh, b)
        outputs.append(torch.where(real[:, t, None], h, 0.0))
    return torch.stack(outputs, dim=1), h


@mistake(
    ENCODE,
    "h_last is taken from the last column of outputs, which is zero for padded sequences: "
    "take each sequence's state at its last real step.",
)
def encode_last_state_from_last_column(x, h0, W_ih, W_hh, b, lengths=None):
    outputs, _ = _masked_encode(x.unbind(dim=1), h0, _real(x, lengths), W_ih, W_hh, b)
    return outputs, outputs[:, -1]


@mistake(
    ENCODE,
    "the padded steps are run as if they were tokens: outputs must be zero at padded steps "
    "(t >= length).",
)
def encode_pads_run_as_tokens(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    h, h_last, outputs = h0, h0, []
    for t in range(x.shape[1]):
        h = _cell(x[:, t], h, W_ih, W_hh, b)
        h_last = torch.where(real[:, t, None], h, h_last)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h_last


@mistake(
    ENCODE,
    "lengths is ignored: padded steps must give zero outputs and leave the state unchanged.",
)
def encode_ignores_lengths(x, h0, W_ih, W_hh, b, lengths=None):
    h, outputs = h0, []
    for t in range(x.shape[1]):
        h = _cell(x[:, t], h, W_ih, W_hh, b)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mistake(
    ENCODE,
    "one padded step too many counts as real (t <= length instead of t < length).",
)
def encode_mask_off_by_one(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths, offset=-1)
    return _masked_encode(x.unbind(dim=1), h0, real, W_ih, W_hh, b)


@mistake(
    ENCODE,
    "every step starts again from h0: each step must take the state of the step before.",
)
def encode_h0_every_step(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    return _masked_encode(x.unbind(dim=1), h0, real, W_ih, W_hh, b, fed=lambda h: h0)


@mistake(ENCODE, "the given h0 is ignored: the first step starts from zeros instead of h0.")
def encode_zero_initial_state(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    return _masked_encode(x.unbind(dim=1), torch.zeros_like(h0), real, W_ih, W_hh, b)


@mistake(
    ENCODE,
    "x is reshaped (or viewed) to (T, B, D_in) as if time came first: x is (B, T, D_in), "
    "so step t is x[:, t].",
)
def encode_time_major_view(x, h0, W_ih, W_hh, b, lengths=None):
    B, T, D = x.shape
    steps = x.reshape(T, B, D)  # a reshape is not a transpose
    return _masked_encode(steps, h0, _real(x, lengths), W_ih, W_hh, b)


@mistake(
    ENCODE,
    "outputs hold the state before each step (starting with h0) instead of the state after it.",
)
def encode_outputs_one_step_late(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    h, outputs = h0, []
    for t in range(x.shape[1]):
        outputs.append(torch.where(real[:, t, None], h, 0.0))
        h = torch.where(real[:, t, None], _cell(x[:, t], h, W_ih, W_hh, b), h)
    return torch.stack(outputs, dim=1), h


@mistake(
    ENCODE,
    "the state is detached between steps, so gradients do not flow back through time.",
)
def encode_detaches_state(x, h0, W_ih, W_hh, b, lengths=None):
    real = _real(x, lengths)
    return _masked_encode(x.unbind(dim=1), h0, real, W_ih, W_hh, b, fed=lambda h: h.detach())


# --- shift_right(targets (B, T) long, bos_id) ---


@mistake(
    SHIFT,
    "the decoder inputs are the targets themselves: with teacher forcing the decoder reads "
    "bos, then the targets moved one step right, never the token it must predict.",
)
def shift_right_returns_targets(targets, bos_id):
    return targets.clone()


@mistake(
    SHIFT,
    "the targets are shifted left (bos at the end) instead of right (bos first).",
)
def shift_right_shifts_left(targets, bos_id):
    bos = torch.full_like(targets[:, :1], bos_id)
    return torch.cat((targets[:, 1:], bos), dim=1)


@mistake(
    SHIFT,
    "the last target is kept, so the result has T + 1 columns: drop the last target.",
)
def shift_right_keeps_last(targets, bos_id):
    bos = torch.full_like(targets[:, :1], bos_id)
    return torch.cat((bos, targets), dim=1)


@mistake(
    SHIFT,
    "the bos column is missing: targets[:, :-1] has T - 1 columns; put bos in front of it.",
)
def shift_right_drops_bos(targets, bos_id):
    return targets[:, :-1].clone()


@mistake(SHIFT, "the first target y_0 is overwritten with bos instead of moving every target.")
def shift_right_overwrites_first(targets, bos_id):
    shifted = targets.clone()
    shifted[:, 0] = bos_id
    return shifted


@mistake(SHIFT, "the bos token is fixed at 0 instead of bos_id.")
def shift_right_hardcoded_bos(targets, bos_id):
    bos = torch.zeros_like(targets[:, :1])
    return torch.cat((bos, targets[:, :-1]), dim=1)


@mistake(
    SHIFT,
    "the rows are shifted (along the batch, dim 0) instead of the time steps (dim 1).",
)
def shift_right_along_batch(targets, bos_id):
    bos = torch.full_like(targets[:1], bos_id)
    return torch.cat((bos, targets[:-1]), dim=0)


@mistake(SHIFT, "targets is modified in place: build a new tensor.")
def shift_right_in_place(targets, bos_id):
    targets[:, 1:] = targets[:, :-1].clone()
    targets[:, 0] = bos_id
    return targets


@mistake(
    SHIFT,
    "the bos column is made of floats (like torch.ones(B, 1) * bos_id), so the result is not "
    "long: create it with the targets' dtype.",
)
def shift_right_float_bos(targets, bos_id):
    bos = torch.ones(targets.shape[0], 1, device=targets.device) * bos_id
    return torch.cat((bos, targets[:, :-1]), dim=1)


# --- sequence_cross_entropy(logits (B, T, V), targets (B, T), pad_id) ---


def _token_nll(logits, targets, real):
    """(B, T) negative log-likelihood of each target (zero at pads)."""
    safe = torch.where(real, targets, 0)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, safe[..., None])[..., 0]
    return torch.where(real, nll, 0.0)


@mistake(
    CE,
    "the padded positions are included in the mean: average over the real (not pad) targets only.",
)
def ce_mean_over_all_positions(logits, targets, pad_id):
    safe = torch.where(targets != pad_id, targets, 0)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, safe[..., None])[..., 0]
    return nll.mean()


@mistake(
    CE,
    "the sum over the real tokens is divided by all B * T positions, pads included, instead "
    "of by the number of real tokens.",
)
def ce_divides_by_all_positions(logits, targets, pad_id):
    real = targets != pad_id
    return _token_nll(logits, targets, real).sum() / real.numel()


@mistake(
    CE,
    "each sequence is averaged first and then the sequences: the loss is the mean over all "
    "real tokens of the batch together.",
)
def ce_mean_of_sequence_means(logits, targets, pad_id):
    real = targets != pad_id
    per_sequence = _token_nll(logits, targets, real).sum(dim=1) / real.sum(dim=1)
    return per_sequence.mean()


@mistake(
    CE,
    "the sum over the real tokens is divided by the batch size B instead of by the number "
    "of real tokens.",
)
def ce_sum_over_batch_size(logits, targets, pad_id):
    real = targets != pad_id
    return _token_nll(logits, targets, real).sum() / targets.shape[0]


@mistake(CE, "the loss is the sum over the real tokens, not their mean.")
def ce_sum_not_mean(logits, targets, pad_id):
    real = targets != pad_id
    return _token_nll(logits, targets, real).sum()


@mistake(
    CE,
    "a softmax is taken twice (log_softmax of probabilities): take log_softmax of the raw logits.",
)
def ce_double_softmax(logits, targets, pad_id):
    real = targets != pad_id
    return _token_nll(torch.softmax(logits, dim=-1), targets, real).sum() / real.sum()


@mistake(
    CE,
    "the raw logit of the target is used as its log probability: normalise with "
    "torch.log_softmax first.",
)
def ce_nll_of_raw_logits(logits, targets, pad_id):
    real = targets != pad_id
    safe = torch.where(real, targets, 0)
    nll = -logits.gather(-1, safe[..., None])[..., 0]
    return torch.where(real, nll, 0.0).sum() / real.sum()


@mistake(
    CE,
    "the log softmax is computed as log(exp(x) / sum(exp(x))), which overflows for large "
    "logits: use torch.log_softmax (it subtracts the maximum).",
)
def ce_log_softmax_by_hand(logits, targets, pad_id):
    real = targets != pad_id
    safe = torch.where(real, targets, 0)
    exp = logits.exp()
    probs = exp / exp.sum(dim=-1, keepdim=True)
    nll = -probs.gather(-1, safe[..., None])[..., 0].log()
    return torch.where(real, nll, 0.0).sum() / real.sum()


@mistake(
    CE,
    "torch.log_softmax runs over the time steps (dim=1) instead of the vocabulary (dim=-1).",
)
def ce_log_softmax_over_time(logits, targets, pad_id):
    real = targets != pad_id
    safe = torch.where(real, targets, 0)
    nll = -torch.log_softmax(logits, dim=1).gather(-1, safe[..., None])[..., 0]
    return torch.where(real, nll, 0.0).sum() / real.sum()


@mistake(
    CE,
    "the pad mask is inverted: the loss averages over the pad positions instead of the real "
    "tokens.",
)
def ce_inverted_mask(logits, targets, pad_id):
    pads = targets == pad_id
    safe = torch.where(pads, 0, targets)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, safe[..., None])[..., 0]
    return torch.where(pads, nll, 0.0).sum() / pads.sum()


@mistake(
    CE,
    "the loss is returned as a Python number (.item()), which cannot be backpropagated: "
    "return the tensor.",
)
def ce_returns_number(logits, targets, pad_id):
    real = targets != pad_id
    return (_token_nll(logits, targets, real).sum() / real.sum()).item()


# --- greedy_decode(step, h0, bos_id, eos_id, max_len) -> (B, max_len) long ---


def _start(h0, bos_id):
    """(prev_tokens (B,) all bos, finished (B,) all False), on h0's device."""
    prev = torch.full((h0.shape[0],), bos_id, dtype=torch.long, device=h0.device)
    return prev, torch.zeros_like(prev, dtype=torch.bool)


def _decode_into(tokens, step, h0, first, eos_id, column=0, stop=torch.all):
    """The greedy loop of the mistakes below: feed the token id ``first`` to every sequence,
    then each step's argmax (eos once a sequence has finished); write step t's tokens (B,)
    to ``tokens[:, column + t]`` until the last column, or until ``stop(finished)``.
    Returns ``tokens`` (B, columns)."""
    prev, finished = _start(h0, first)
    h = h0
    for t in range(tokens.shape[1] - column):
        logits, h = step(prev, h)
        prev = torch.where(finished, eos_id, logits.argmax(dim=-1))
        tokens[:, column + t] = prev
        finished = finished | (prev == eos_id)
        if bool(stop(finished)):
            break
    return tokens


@mistake(
    DECODE,
    "after a sequence emits eos its later positions keep the predicted tokens: they must "
    "all be eos_id.",
)
def decode_no_eos_fill(step, h0, bos_id, eos_id, max_len):
    prev, finished = _start(h0, bos_id)
    h, tokens = h0, []
    for _ in range(max_len):
        logits, h = step(prev, h)
        prev = logits.argmax(dim=-1)
        tokens.append(prev)
        finished = finished | (prev == eos_id)
        if bool(finished.all()):
            break
    tokens = torch.stack(tokens, dim=1)
    rest = torch.full((h0.shape[0], max_len - tokens.shape[1]), eos_id, device=h0.device)
    return torch.cat((tokens, rest), dim=1)


@mistake(
    DECODE,
    "step is called again after every sequence has finished: stop the loop as soon as all "
    "of them have emitted eos.",
)
def decode_never_stops_early(step, h0, bos_id, eos_id, max_len):
    prev, finished = _start(h0, bos_id)
    h, tokens = h0, []
    for _ in range(max_len):
        logits, h = step(prev, h)
        prev = torch.where(finished, eos_id, logits.argmax(dim=-1))
        tokens.append(prev)
        finished = finished | (prev == eos_id)
    return torch.stack(tokens, dim=1)


@mistake(
    DECODE,
    "finished sequences are fed their own prediction: write eos and feed eos back to step "
    "once a sequence has finished.",
)
def decode_eos_fed_after_the_step(step, h0, bos_id, eos_id, max_len):
    prev, finished = _start(h0, bos_id)
    h, tokens = h0, []
    for _ in range(max_len):
        logits, h = step(prev, h)
        prev = logits.argmax(dim=-1)
        tokens.append(torch.where(finished, eos_id, prev))
        finished = finished | (prev == eos_id)
        if bool(finished.all()):
            break
    tokens = torch.stack(tokens, dim=1)
    rest = torch.full((h0.shape[0], max_len - tokens.shape[1]), eos_id, device=h0.device)
    return torch.cat((tokens, rest), dim=1)


@mistake(
    DECODE,
    "bos is fed at every step: feed back the token predicted at the step before.",
)
def decode_feeds_bos_every_step(step, h0, bos_id, eos_id, max_len):
    bos, finished = _start(h0, bos_id)
    h, tokens = h0, torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    for t in range(max_len):
        logits, h = step(bos, h)
        tokens[:, t] = torch.where(finished, eos_id, logits.argmax(dim=-1))
        finished = finished | (tokens[:, t] == eos_id)
        if bool(finished.all()):
            break
    return tokens


@mistake(
    DECODE,
    "h0 is passed to step at every step: pass the state that step returned the time before.",
)
def decode_h0_every_step(step, h0, bos_id, eos_id, max_len):
    prev, finished = _start(h0, bos_id)
    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    for t in range(max_len):
        logits, _ = step(prev, h0)
        prev = torch.where(finished, eos_id, logits.argmax(dim=-1))
        tokens[:, t] = prev
        finished = finished | (prev == eos_id)
        if bool(finished.all()):
            break
    return tokens


@mistake(
    DECODE,
    "the result starts with bos (max_len + 1 columns): return the max_len generated tokens only.",
)
def decode_keeps_bos(step, h0, bos_id, eos_id, max_len):
    tokens = torch.full((h0.shape[0], max_len + 1), eos_id, device=h0.device)
    tokens[:, 0] = bos_id
    return _decode_into(tokens, step, h0, bos_id, eos_id, column=1)


@mistake(
    DECODE,
    "decoding stops as soon as any sequence emits eos: go on until every sequence has "
    "finished (use all(), not any()).",
)
def decode_stops_at_first_eos(step, h0, bos_id, eos_id, max_len):
    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    return _decode_into(tokens, step, h0, bos_id, eos_id, stop=torch.any)


@mistake(
    DECODE,
    "when decoding stops early the remaining positions are left at 0 (torch.zeros): they "
    "must be eos_id.",
)
def decode_zeros_after_stop(step, h0, bos_id, eos_id, max_len):
    tokens = torch.zeros(h0.shape[0], max_len, dtype=torch.long, device=h0.device)
    return _decode_into(tokens, step, h0, bos_id, eos_id)


@mistake(
    DECODE,
    "the tokens are stored in a float tensor (torch.zeros or torch.full without "
    "dtype=torch.long): return long token ids.",
)
def decode_float_tokens(step, h0, bos_id, eos_id, max_len):
    tokens = torch.full((h0.shape[0], max_len), float(eos_id), device=h0.device)
    return _decode_into(tokens, step, h0, bos_id, eos_id)


@mistake(DECODE, "the first tokens fed to step are 0 instead of bos_id.")
def decode_starts_from_zero(step, h0, bos_id, eos_id, max_len):
    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)
    return _decode_into(tokens, step, h0, 0, eos_id)


@mistake(
    DECODE,
    "one step too few: the bos does not count, so there are max_len calls and max_len tokens.",
)
def decode_one_step_short(step, h0, bos_id, eos_id, max_len):
    tokens = torch.full((h0.shape[0], max_len - 1), eos_id, device=h0.device)
    return _decode_into(tokens, step, h0, bos_id, eos_id)


MUTANTS = mistake.mutants
