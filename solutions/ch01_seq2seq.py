"""Chapter 1 reference: an RNN encoder, teacher forcing, the sequence loss, greedy decoding."""

import torch

LEAK_MARKER = "LEAK-MARKER-solutions-ch01-371e1c21"


def rnn_cell(x_t, h_prev, W_ih, W_hh, b):
    """One step of an Elman RNN: tanh(x_t W_ih^T + h_prev W_hh^T + b).

    Args:
        x_t: (B, D_in) inputs at this step.
        h_prev: (B, H) previous hidden state.
        W_ih: (H, D_in) input-to-hidden weights.
        W_hh: (H, H) hidden-to-hidden weights.
        b: (H,) bias (the sum of PyTorch's bias_ih and bias_hh).

    Returns:
        (B, H) new hidden state.
    """
    return torch.tanh(x_t @ W_ih.T + h_prev @ W_hh.T + b)  # (B, H)


def rnn_encode(x, h0, W_ih, W_hh, b, lengths=None):
    """Run the RNN over a padded batch, one time step after the other.

    At a padded step (t >= length) the output is zero and the state is carried over
    unchanged, so ``h_last`` is each sequence's state at its last real step.

    Args:
        x: (B, T, D_in) padded input sequences.
        h0: (B, H) initial hidden state.
        W_ih: (H, D_in), W_hh: (H, H), b: (H,) the cell's parameters.
        lengths: (B,) real lengths (>= 1), on any device; None when nothing is padded.

    Returns:
        outputs: (B, T, H) hidden state at every real step, zero at padded steps.
        h_last: (B, H) hidden state at each sequence's last real step.
    """
    B, T, _ = x.shape
    if lengths is None:
        real = torch.ones(B, T, dtype=torch.bool, device=x.device)  # (B, T)
    else:
        lengths = torch.as_tensor(lengths, device=x.device)  # (B,)
        positions = torch.arange(T, device=x.device)  # (T,)
        real = positions[None, :] < lengths[:, None]  # (B, T)
    h = h0  # (B, H)
    outputs = []
    for t in range(T):
        h_new = rnn_cell(x[:, t], h, W_ih, W_hh, b)  # (B, H)
        real_t = real[:, t, None]  # (B, 1)
        h = torch.where(real_t, h_new, h)  # (B, H): padded rows keep their state
        outputs.append(torch.where(real_t, h_new, 0.0))  # (B, H)
    return torch.stack(outputs, dim=1), h  # (B, T, H), (B, H)


def shift_right(targets, bos_id):
    """Decoder inputs for teacher forcing: [bos, y_0, ..., y_{T-2}].

    Args:
        targets: (B, T) long target tokens.
        bos_id: the beginning-of-sequence token.

    Returns:
        (B, T) long, the targets moved one step to the right behind a bos.
    """
    bos = targets.new_full((targets.shape[0], 1), bos_id)  # (B, 1)
    return torch.cat((bos, targets[:, :-1]), dim=1)  # (B, T)


def sequence_cross_entropy(logits, targets, pad_id):
    """Mean negative log-likelihood of the targets over the non-pad positions.

    Args:
        logits: (B, T, V) unnormalised scores over the vocabulary.
        targets: (B, T) long target tokens; ``pad_id`` marks padding (it may lie
            outside the vocabulary, like -100).
        pad_id: the padding token, ignored in the mean.

    Returns:
        () scalar loss, of ``logits``'s dtype.
    """
    real = targets != pad_id  # (B, T)
    safe_targets = torch.where(real, targets, 0)  # (B, T): any valid index at pads
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V), via logsumexp
    target_log_probs = log_probs.gather(-1, safe_targets[..., None])[..., 0]  # (B, T)
    nll = torch.where(real, -target_log_probs, 0.0)  # (B, T)
    return nll.sum() / real.sum()  # ()


def greedy_decode(step, h0, bos_id, eos_id, max_len):
    """Decode by always feeding back the most likely token.

    Once a sequence emits eos its remaining positions are eos and it is fed eos; the
    loop stops as soon as every sequence has finished, so ``step`` is not called again.

    Args:
        step: ``step(prev_tokens (B,) long, h) -> (logits (B, V), h)``.
        h0: (B, ...) initial decoder state.
        bos_id: the token fed at the first step.
        eos_id: the end-of-sequence token.
        max_len: the number of tokens to produce at most.

    Returns:
        (B, max_len) long on ``h0``'s device, without the bos.
    """
    B = h0.shape[0]
    tokens = torch.full((B, max_len), eos_id, dtype=torch.long, device=h0.device)  # (B, L)
    prev_tokens = torch.full((B,), bos_id, dtype=torch.long, device=h0.device)  # (B,)
    finished = torch.zeros(B, dtype=torch.bool, device=h0.device)  # (B,)
    h = h0
    for t in range(max_len):
        logits, h = step(prev_tokens, h)  # (B, V)
        best = logits.argmax(dim=-1)  # (B,)
        prev_tokens = torch.where(finished, eos_id, best)  # (B,)
        tokens[:, t] = prev_tokens
        finished = finished | (prev_tokens == eos_id)  # (B,)
        # Values on the meta device are unknown: there it simply runs to max_len.
        if finished.device.type != "meta" and bool(finished.all()):
            break
    return tokens  # (B, L)
