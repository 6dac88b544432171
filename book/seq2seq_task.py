"""The course's sequence-to-sequence task: English number words to digits.

    source: three hundred and forty two thousand five hundred and six
    target: 3 4 2 5 0 6

Chapters 1, 2 and 6 train their models on this one task, so that an RNN, an RNN with
attention and a Transformer can be compared on the same held-out test set. The task has
real structure: a digit in the target comes from one or two words of the source ("forty"
gives the 4, "hundred" tells where the 3 goes), some digits come from no word at all (the 0
of "five hundred and six"), and the words of the thousands come before those of the units, so
the model must keep track of where it is. Sources are 1 to 17 words long and targets 1 to 9
digits, so accuracy can be measured against input length.

Everything is generated from a seed; nothing is downloaded.

The pieces, in the order a training script uses them:

- ``number_to_words(n)``: the words for one number, British style ("... hundred and six").
- ``SOURCE_VOCAB``, ``TARGET_VOCAB``: token <-> id maps. Id 0 is ``<pad>`` in both; the target
  vocabulary also has ``<bos>`` (1) and ``<eos>`` (2), then the digits "0" to "9".
- ``make_splits(n_train, n_test, seed)``: a train and a held-out test ``Split``, with no
  number in both.
- ``batches(split, batch_size, generator)``: padded ``Batch`` es of sources and targets.
- ``exact_matches(predicted, split)`` and ``accuracy_by_length(correct, lengths)``: the
  evaluation, a sequence counts only when every digit and the end are right.

Shapes: ``B`` is the batch size, ``S`` the padded source length, ``T`` the padded target
length (digits plus ``<eos>``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

UNITS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SCALES = [(1_000_000, "million"), (1_000, "thousand")]

MAX_DIGITS = 9  # numbers from 0 to 999 999 999
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def _below_hundred(n: int) -> list[str]:
    """Words for 0 < n < 100: "seven", "seventeen", "seventy", "seventy seven"."""
    if n < 20:
        return [UNITS[n]]
    tens, units = divmod(n, 10)
    return [TENS[tens]] + ([UNITS[units]] if units else [])


def _below_thousand(n: int) -> list[str]:
    """Words for 0 < n < 1000, with "and" after the hundreds: "three hundred and six"."""
    hundreds, rest = divmod(n, 100)
    words = [UNITS[hundreds], "hundred"] if hundreds else []
    if hundreds and rest:
        words.append("and")
    return words + (_below_hundred(rest) if rest else [])


def number_to_words(n: int) -> list[str]:
    """The English words for ``0 <= n < 10**9``, one word per token, British style.

    >>> " ".join(number_to_words(342506))
    'three hundred and forty two thousand five hundred and six'
    >>> " ".join(number_to_words(2000005))
    'two million and five'
    """
    if not 0 <= n < 10**MAX_DIGITS:
        raise ValueError(f"{n} is outside 0 .. {10**MAX_DIGITS - 1}")
    if n == 0:
        return ["zero"]
    words = []
    for scale, name in SCALES:
        group, n = divmod(n, scale)
        if group:
            words += [*_below_thousand(group), name]
    if n:
        if words and n < 100:
            words.append("and")  # "one thousand and five"
        words += _below_thousand(n)
    return words


class Vocabulary:
    """A fixed token <-> id map; id 0 is always ``<pad>``."""

    def __init__(self, tokens: list[str]):
        self.tokens = list(tokens)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        if self.tokens[0] != PAD or len(self.ids) != len(self.tokens):
            raise ValueError("tokens must be distinct and start with <pad>")

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.ids[token] for token in tokens]

    def decode(self, ids) -> list[str]:
        """Tokens for ``ids`` (a list or a 1-D tensor), without ``<pad>`` and ``<bos>``, up to
        the first ``<eos>``."""
        tokens = []
        for i in torch.as_tensor(ids).tolist():
            if self.tokens[i] == EOS:
                break
            if self.tokens[i] not in (PAD, BOS):
                tokens.append(self.tokens[i])
        return tokens


SOURCE_VOCAB = Vocabulary([PAD, *UNITS, *TENS[2:], "hundred", "thousand", "million", "and"])
TARGET_VOCAB = Vocabulary([PAD, BOS, EOS, *"0123456789"])
PAD_ID = 0  # in both vocabularies
BOS_ID = TARGET_VOCAB.ids[BOS]
EOS_ID = TARGET_VOCAB.ids[EOS]
MAX_SOURCE_LEN = len(number_to_words(777_777_777))  # 17 words, the longest source
MAX_TARGET_LEN = MAX_DIGITS + 1  # the digits and <eos>


def random_number(rng: random.Random) -> int:
    """A random number of 1 to 9 digits.

    A number has ``d`` digits with probability proportional to ``d``, so that long sources
    are common; a digit after the first is 0 with probability 1/5, so that sources like
    "two million and five" are common too.
    """
    n_digits = rng.choices(range(1, MAX_DIGITS + 1), weights=range(1, MAX_DIGITS + 1))[0]
    digits = [rng.randint(1, 9)] + [
        0 if rng.random() < 0.2 else rng.randint(1, 9) for _ in range(n_digits - 1)
    ]
    return int("".join(map(str, digits)))


@dataclass
class Split:
    """One split of the task, unpadded.

    numbers: the N numbers.
    sources: N lists of source ids (words), 1 to ``MAX_SOURCE_LEN`` long.
    targets: N lists of target ids: the digits, then ``<eos>``.
    """

    numbers: list[int]
    sources: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def source_lengths(self) -> torch.Tensor:
        """(N,) long, the number of words of each source."""
        return torch.tensor([len(source) for source in self.sources])


def encode_numbers(numbers: list[int]) -> Split:
    """The ``Split`` of the given numbers: words in, digits and ``<eos>`` out."""
    sources = [SOURCE_VOCAB.encode(number_to_words(n)) for n in numbers]
    targets = [TARGET_VOCAB.encode([*str(n), EOS]) for n in numbers]
    return Split(list(numbers), sources, targets)


def make_splits(n_train: int = 20_000, n_test: int = 3_000, seed: int = 0) -> tuple[Split, Split]:
    """A training split and a held-out test split; no number appears in both.

    Training numbers are drawn with ``random_number`` (repeats allowed, as in any real
    data set); test numbers are drawn the same way and kept only if they are new, so the
    test measures generalisation to unseen numbers. The same seed gives the same splits.
    """
    rng = random.Random(seed)
    train = [random_number(rng) for _ in range(n_train)]
    seen = set(train)
    test = []
    while len(test) < n_test:
        n = random_number(rng)
        if n not in seen:
            seen.add(n)
            test.append(n)
    return encode_numbers(train), encode_numbers(test)


def pad(sequences: list[list[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into one tensor.

    Returns:
        tokens: (B, L) long, ``L`` the longest length, ``pad_id`` after each sequence's end.
        lengths: (B,) long, the real length of each sequence.
    """
    lengths = torch.tensor([len(s) for s in sequences])  # (B,)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id)  # (B, L)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.tensor(sequence)
    return tokens, lengths


@dataclass
class Batch:
    """A padded batch.

    source: (B, S) long source ids, ``PAD_ID`` after each source's end.
    source_lengths: (B,) long, the number of real source words (>= 1).
    target: (B, T) long target ids (digits, ``<eos>``), ``PAD_ID`` after the ``<eos>``.
    """

    source: torch.Tensor
    source_lengths: torch.Tensor
    target: torch.Tensor


def make_batch(split: Split, indices) -> Batch:
    """The examples ``indices`` of ``split`` as one padded ``Batch``."""
    source, source_lengths = pad([split.sources[i] for i in indices])  # (B, S), (B,)
    target, _ = pad([split.targets[i] for i in indices])  # (B, T)
    return Batch(source, source_lengths, target)


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield the whole split as ``Batch`` es; shuffled when a ``generator`` is given."""
    if generator is None:
        order = torch.arange(len(split))
    else:
        order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(split), batch_size):
        yield make_batch(split, order[start : start + batch_size].tolist())


def exact_matches(predicted: torch.Tensor, split: Split) -> torch.Tensor:
    """Which predictions are exactly right: every digit, then ``<eos>``, nothing else.

    Args:
        predicted: (N, L) long predicted target ids, in the order of ``split``; what follows
            a prediction's first ``<eos>`` is ignored.
        split: the split the predictions are for.

    Returns:
        (N,) bool.
    """
    correct = []
    for row, target in zip(predicted.tolist(), split.targets, strict=True):
        correct.append(row[: len(target)] == target)  # target ends with <eos>
    return torch.tensor(correct)


def accuracy_by_length(
    correct: torch.Tensor, lengths: torch.Tensor, min_count: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact-match accuracy for each source length.

    Args:
        correct: (N,) bool, one entry per example.
        lengths: (N,) long source lengths.
        min_count: lengths with fewer examples than this are left out.

    Returns:
        lengths: (K,) the source lengths present, increasing.
        accuracy: (K,) float, the fraction correct at each length.
        counts: (K,) long, the number of examples at each length.
    """
    values, inverse, counts = torch.unique(lengths, return_inverse=True, return_counts=True)
    hits = torch.zeros(len(values)).index_add_(0, inverse, correct.float())  # (K,)
    keep = counts >= min_count  # (K,)
    return values[keep], (hits / counts)[keep], counts[keep]
