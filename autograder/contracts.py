"""The exercise contracts of the seven chapters: one source of truth.

For every assignment: its contract names (the functions and classes students write, in the
order of the notebook), the points of each, and the operations each may not reach. The
batteries are built from it (``autograder.kit.battery.Battery`` checks that they agree),
``exercises/build.py`` writes each notebook's "not allowed" sentences and points from it, and
the tests read it. The given ``__init__`` of a class contract is the reference class's own
(``solutions/``): the exercise shows it, and the grader builds the student's class with it.

The operation names are those of ``autograder.runtime.operations``, which detects them
whatever Python name reaches them.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from autograder.runtime.operations import (
    CONVOLUTION,
    CROSS_ENTROPY,
    DECODER,
    DECODER_LAYER,
    ENCODER,
    ENCODER_LAYER,
    FLEX_ATTENTION,
    LAYER_NORM,
    MASKED_SOFTMAX,
    MHA,
    MHA_FORWARD,
    NLL_LOSS,
    OTHER_NORMS,
    PIXEL_UNSHUFFLE,
    RECURRENT,
    SDPA,
    TRANSFORMER,
    UNFOLD,
)

ATTENTION = (SDPA, FLEX_ATTENTION, MHA, MHA_FORWARD)
MASKED_ATTENTION = (*ATTENTION, MASKED_SOFTMAX)
TRANSFORMER_CLASSES = (ENCODER_LAYER, DECODER_LAYER, ENCODER, DECODER, TRANSFORMER)
PATCHES = (UNFOLD, CONVOLUTION, PIXEL_UNSHUFFLE)


@dataclass(frozen=True)
class Contract:
    """One function or class a student writes."""

    name: str
    forbidden: tuple[str, ...] = ()  # operation names it may not reach
    points: float = 10.0

    def is_class(self, reference_module) -> bool:
        return inspect.isclass(getattr(reference_module, self.name))


@dataclass(frozen=True)
class Assignment:
    """One chapter's exercise: its id, its reference module and its contracts, in order."""

    id: str
    reference: str  # module path of the reference solutions
    contracts: tuple[Contract, ...]

    @property
    def names(self) -> list[str]:
        return [contract.name for contract in self.contracts]

    def contract(self, name: str) -> Contract:
        for contract in self.contracts:
            if contract.name == name:
                return contract
        raise KeyError(f"{self.id} has no contract {name!r}")

    def forbidden(self) -> dict[str, tuple[str, ...]]:
        return {contract.name: contract.forbidden for contract in self.contracts}

    def reference_module(self):
        return importlib.import_module(self.reference)


def _assignment(id_: str, *contracts: Contract) -> Assignment:
    return Assignment(id_, f"solutions.{id_}", contracts)


ASSIGNMENTS: dict[str, Assignment] = {
    assignment.id: assignment
    for assignment in (
        _assignment(
            "ch01_seq2seq",
            Contract("rnn_cell", (RECURRENT,)),
            Contract("rnn_encode", (RECURRENT,)),
            Contract("shift_right"),
            Contract("sequence_cross_entropy", (CROSS_ENTROPY, NLL_LOSS)),
            Contract("greedy_decode"),
        ),
        _assignment(
            "ch02_attention",
            Contract("dot_scores", ATTENTION),
            Contract("additive_scores", ATTENTION),
            Contract("lengths_to_mask", ATTENTION),
            Contract("masked_softmax", MASKED_ATTENTION),
            Contract("attend", MASKED_ATTENTION),
        ),
        _assignment(
            "ch03_self_attention",
            Contract("scaled_dot_product_attention", ATTENTION),
            Contract("self_attention", ATTENTION),
            Contract("sinusoidal_positional_encoding", ATTENTION),
        ),
        _assignment(
            "ch04_masking",
            Contract("causal_mask", ATTENTION),
            Contract("padding_mask", ATTENTION),
            Contract("masked_attention", MASKED_ATTENTION),
            Contract("causal_self_attention", MASKED_ATTENTION),
        ),
        _assignment(
            "ch05_multihead",
            Contract("split_heads", ATTENTION),
            Contract("merge_heads", ATTENTION),
            Contract("multi_head_attention", MASKED_ATTENTION),
        ),
        _assignment(
            "ch06_transformer",
            Contract("layer_norm", (LAYER_NORM, OTHER_NORMS)),
            Contract("feed_forward"),
            # The layers may use their nn.MultiheadAttention and nn.LayerNorm submodules.
            Contract("EncoderLayer", TRANSFORMER_CLASSES),
            Contract("DecoderLayer", TRANSFORMER_CLASSES),
        ),
        _assignment(
            "ch07_vit",
            Contract("patchify", PATCHES),
            Contract("PatchEmbedding", PATCHES),
            # It runs the given nn.TransformerEncoderLayer blocks.
            Contract("ViT"),
        ),
    )
}


def assignment(assignment_id: str) -> Assignment:
    try:
        return ASSIGNMENTS[assignment_id]
    except KeyError:
        known = ", ".join(ASSIGNMENTS)
        raise KeyError(f"unknown assignment {assignment_id!r} (known: {known})") from None
