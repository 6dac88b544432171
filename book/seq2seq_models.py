"""The two recurrent models of chapters 1 and 2, and the loop that trains them.

Both read the source with the same GRU encoder and write the target with a GRU
decoder, one token per step; they differ in what the decoder sees of the source:

- ``Seq2Seq`` (chapter 1): only the encoder's last state, which starts the decoder.
- ``AttentionSeq2Seq`` (chapter 2): the same start, plus at every step a context
  vector, a weighted mix of *all* encoder states chosen by additive (Bahdanau)
  attention.

Chapter 6 trains them again beside its Transformer, on the same task
(``seq2seq_task``).

The functions that the exercises of chapters 1 and 2 ask for (``shift_right``,
``sequence_cross_entropy``, ``greedy_decode``, ``lengths_to_mask``, ``attend``) are
imported from the course's reference solutions, so that this file uses exactly the
functions whose contracts the exercises state. Everything else is PyTorch.

Shapes: ``B`` batch, ``S`` padded source length, ``T`` padded target length, ``E``
embedding size, ``H`` hidden size, ``A`` attention size, ``V`` target vocabulary size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import seq2seq_task as task
import torch
import torch.nn as nn

from solutions.ch01_seq2seq import greedy_decode, sequence_cross_entropy, shift_right
from solutions.ch02_attention import attend, lengths_to_mask


class Encoder(nn.Module):
    """Embeds the source words and runs a GRU over them."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=task.PAD_ID)
        self.rnn = nn.GRU(embed_dim, hidden_dim, batch_first=True)

    def forward(self, source: torch.Tensor, lengths: torch.Tensor):
        """Encode a padded batch.

        Args:
            source: (B, S) long source ids.
            lengths: (B,) long real lengths (>= 1).

        Returns:
            states: (B, S, H) the GRU state after each word; those at
                padded positions are meaningless: whoever reads them masks them.
            last: (B, H) each sequence's state after its last real word.
        """
        states, _ = self.rnn(self.embed(source))  # (B, S, H)
        # Left to right: at position length-1 the GRU has not seen the pads.
        rows = torch.arange(source.shape[0], device=source.device)  # (B,)
        last = states[rows, lengths.to(source.device) - 1]  # (B, H)
        return states, last


class Seq2Seq(nn.Module):
    """The encoder-decoder of chapter 1 (Sutskever et al., 2014; Cho et al.,
    2014): the decoder starts from the encoder's last state and sees nothing
    else of the source.
    """

    def __init__(self, embed_dim: int = 32, hidden_dim: int = 64):
        super().__init__()
        V = len(task.TARGET_VOCAB)
        self.encoder = Encoder(len(task.SOURCE_VOCAB), embed_dim, hidden_dim)
        self.embed = nn.Embedding(V, embed_dim, padding_idx=task.PAD_ID)
        self.rnn = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.readout = nn.Linear(hidden_dim, V)

    def forward(self, source, source_lengths, decoder_inputs):
        """Teacher-forced logits.

        Args:
            source: (B, S) long; source_lengths: (B,) long.
            decoder_inputs: (B, T) long, the targets shifted right behind
                ``<bos>``.

        Returns:
            logits: (B, T, V), step t predicting target token t.
            weights: None (this model has no attention).
        """
        _, last = self.encoder(source, source_lengths)  # (B, H)
        inputs = self.embed(decoder_inputs)  # (B, T, E)
        states, _ = self.rnn(inputs, last[None])  # (B, T, H), from s_0 = last
        return self.readout(states), None  # (B, T, V)

    def decode_state(self, source, source_lengths):
        """What the decoder starts from: the encoder's last state, (B, H)."""
        return self.encoder(source, source_lengths)[1]

    def step(self, prev_tokens, h):
        """One decoding step.

        prev_tokens (B,) long, h (B, H) -> logits (B, V), the new h (B, H).
        """
        inputs = self.embed(prev_tokens)[:, None]  # (B, 1, E)
        output, _ = self.rnn(inputs, h[None])  # (B, 1, H)
        h = output[:, 0]  # (B, H)
        return self.readout(h), h


@dataclass
class DecoderState:
    """The attention decoder's state between steps.

    h: (B, H) the GRU state s_t.
    states: (B, S, H) the encoder states, the keys and the values.
    mask: (B, S) bool, True at real source words.
    weights: (B, S) the attention weights of the step that produced ``h`` (None
        before the first step).
    """

    h: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def shape(self):
        return self.h.shape  # greedy_decode reads the batch size here

    @property
    def device(self):
        return self.h.device


class AttentionSeq2Seq(nn.Module):
    """The encoder-decoder with additive attention of chapter 2 (Bahdanau et al., 2015).

    At output step t the previous decoder state s_{t-1} is the query, the encoder
    states are the keys and the values; the context c_t they give is fed to the GRU
    cell with the previous token, and the readout sees the new state s_t and c_t.
    """

    def __init__(self, embed_dim=32, hidden_dim=64, attention_dim=64):
        super().__init__()
        V, H, A = len(task.TARGET_VOCAB), hidden_dim, attention_dim
        self.encoder = Encoder(len(task.SOURCE_VOCAB), embed_dim, H)
        self.embed = nn.Embedding(V, embed_dim, padding_idx=task.PAD_ID)
        self.cell = nn.GRUCell(embed_dim + H, H)
        # Additive scores tanh(s W_q^T + h W_k^T) v, weights as nn.Linear stores them.
        self.W_q = nn.Linear(H, A, bias=False)  # weight: (A, H)
        self.W_k = nn.Linear(H, A, bias=False)  # weight: (A, H)
        self.v = nn.Parameter(torch.randn(A) / A**0.5)  # (A,)
        self.readout = nn.Linear(2 * H, V)

    def decode_state(self, source, source_lengths):
        """The decoder's first ``DecoderState``: h is the encoder's last state."""
        states, last = self.encoder(source, source_lengths)  # (B, S, H), (B, H)
        lengths = source_lengths.to(states.device)  # (B,)
        mask = lengths_to_mask(lengths, states.shape[1])  # (B, S)
        return DecoderState(last, states, mask)

    def attend(self, query, memory: DecoderState):
        """Context (B, H) and weights (B, S) for the queries (B, H) over ``memory``."""
        keys = values = memory.states  # (B, S, H)
        W_q, W_k = self.W_q.weight, self.W_k.weight  # (A, H) each
        return attend(query, keys, values, memory.mask, W_q, W_k, self.v)

    def step(self, prev_tokens, memory: DecoderState):
        """One decoding step.

        prev_tokens (B,) long -> logits (B, V) and the next ``DecoderState``,
        which records this step's attention weights (B, S).
        """
        context, weights = self.attend(memory.h, memory)  # (B, H), (B, S)
        embedded = self.embed(prev_tokens)  # (B, E)
        inputs = torch.cat([embedded, context], dim=-1)  # (B, E + H)
        h = self.cell(inputs, memory.h)  # (B, H): s_t
        logits = self.readout(torch.cat([h, context], dim=-1))  # (B, V)
        return logits, DecoderState(h, memory.states, memory.mask, weights)

    def forward(self, source, source_lengths, decoder_inputs):
        """Teacher-forced logits (B, T, V) and attention weights (B, T, S)."""
        memory = self.decode_state(source, source_lengths)
        all_logits, all_weights = [], []
        for t in range(decoder_inputs.shape[1]):
            logits, memory = self.step(decoder_inputs[:, t], memory)  # (B, V)
            all_logits.append(logits)
            all_weights.append(memory.weights)  # (B, S)
        return torch.stack(all_logits, dim=1), torch.stack(all_weights, dim=1)


def loss_on(model, batch: task.Batch) -> torch.Tensor:
    """The teacher-forced loss of ``model`` on one batch: a scalar, the mean
    over the real target tokens."""
    decoder_inputs = shift_right(batch.target, task.BOS_ID)  # (B, T)
    source, lengths = batch.source, batch.source_lengths  # (B, S), (B,)
    logits, _ = model(source, lengths, decoder_inputs)  # (B, T, V)
    return sequence_cross_entropy(logits, batch.target, task.PAD_ID)


def train(
    model: nn.Module,
    split: task.Split,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Train with Adam and gradient clipping.

    Returns ``{"losses": [mean loss of each epoch], "seconds": time taken}``.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, start = [], time.perf_counter()
    model.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in task.batches(split, batch_size, generator):
            loss = loss_on(model, batch)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total, count = total + loss.item(), count + 1
        losses.append(total / count)
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - start}


# How chapters 1, 2 and 6 train the two models: about the same time on a CPU each.
RECIPES = {
    "rnn": (Seq2Seq, {"epochs": 8, "batch_size": 128, "lr": 5e-3}),
    "attention": (AttentionSeq2Seq, {"epochs": 4, "batch_size": 128, "lr": 5e-3}),
}


def train_model(kind: str, split: task.Split, seed: int = 0):
    """A new model of ``kind`` ("rnn" or "attention"), trained on ``split`` by its
    recipe.

    The seed fixes the initial weights and the order of the batches, so chapters
    that call this with the same split get the same model. Returns
    ``(model, history)``, the history as ``train`` returns it.
    """
    model_class, settings = RECIPES[kind]
    torch.manual_seed(seed)
    model = model_class()
    return model, train(model, split, seed=seed, **settings)


@torch.no_grad()
def translate(model, source, source_lengths, max_len: int = task.MAX_TARGET_LEN):
    """Greedy decoding of a padded batch.

    Returns:
        tokens: (B, max_len) long predicted target ids, ``<eos>`` after each one's end.
        weights: (B, steps, S) the attention weights of each step taken, or None.
    """
    start = model.decode_state(source, source_lengths)
    steps = []  # the states the decoder goes through

    def step(prev_tokens, state):
        logits, state = model.step(prev_tokens, state)
        steps.append(state)
        return logits, state

    tokens = greedy_decode(step, start, task.BOS_ID, task.EOS_ID, max_len)  # (B, L)
    if isinstance(start, DecoderState):
        return tokens, torch.stack([state.weights for state in steps], dim=1)
    return tokens, None


def evaluate(model, split: task.Split, batch_size: int = 500) -> torch.Tensor:
    """Greedy decoding of the whole split; (N,) bool, which predictions are exactly
    right."""
    predictions = []
    for batch in task.batches(split, batch_size):
        tokens, _ = translate(model, batch.source, batch.source_lengths)  # (B, max_len)
        predictions.append(tokens)
    return task.exact_matches(torch.cat(predictions), split)  # (N,)
