"""The references define exactly the contract names and signatures of SPEC.md.

Outside checks import these names, so a renamed parameter is a broken contract.
"""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from solutions import CHAPTERS

ROOT = Path(__file__).resolve().parent.parent

# Contract name -> its parameters, in order (for classes: those of forward).
CONTRACTS = {
    "ch01_seq2seq": {
        "rnn_cell": ["x_t", "h_prev", "W_ih", "W_hh", "b"],
        "rnn_encode": ["x", "h0", "W_ih", "W_hh", "b", "lengths"],
        "shift_right": ["targets", "bos_id"],
        "sequence_cross_entropy": ["logits", "targets", "pad_id"],
        "greedy_decode": ["step", "h0", "bos_id", "eos_id", "max_len"],
    },
    "ch02_attention": {
        "dot_scores": ["query", "keys"],
        "additive_scores": ["query", "keys", "W_q", "W_k", "v"],
        "lengths_to_mask": ["lengths", "T"],
        "masked_softmax": ["scores", "mask"],
        "attend": ["query", "keys", "values", "mask", "W_q", "W_k", "v"],
    },
    "ch03_self_attention": {
        "scaled_dot_product_attention": ["q", "k", "v"],
        "self_attention": ["x", "W_q", "W_k", "W_v"],
        "sinusoidal_positional_encoding": ["T", "D", "base", "dtype", "device"],
    },
    "ch04_masking": {
        "causal_mask": ["T", "device"],
        "padding_mask": ["lengths", "T", "device"],
        "masked_attention": ["q", "k", "v", "mask"],
        "causal_self_attention": ["x", "W_q", "W_k", "W_v", "lengths"],
    },
    "ch05_multihead": {
        "split_heads": ["x", "num_heads"],
        "merge_heads": ["x"],
        "multi_head_attention": [
            "query", "key", "value", "W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o",
            "num_heads", "mask",
        ],
    },
    "ch06_transformer": {
        "layer_norm": ["x", "gamma", "beta", "eps"],
        "feed_forward": ["x", "W1", "b1", "W2", "b2"],
        "EncoderLayer": ["x", "mask"],
        "DecoderLayer": ["y", "memory", "tgt_mask", "memory_mask"],
    },
    "ch07_vit": {
        "patchify": ["images", "patch_size"],
        "PatchEmbedding": ["images"],
        "ViT": ["images"],
    },
}  # fmt: skip

# The only loops a reference may have: an RNN's and greedy decoding's time loop,
# and a ViT's loop over its blocks.
ALLOWED_LOOPS = {"rnn_encode", "greedy_decode", "ViT"}


def parameters(obj):
    target = obj.forward if inspect.isclass(obj) else obj
    names = list(inspect.signature(target).parameters)
    return names[1:] if inspect.isclass(obj) else names


def test_every_chapter_has_a_contract():
    assert set(CONTRACTS) == set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_contract_names_and_signatures(chapter):
    module = importlib.import_module(f"solutions.{chapter}")
    for name, expected in CONTRACTS[chapter].items():
        obj = getattr(module, name, None)
        assert obj is not None, f"solutions.{chapter} lacks {name}"
        assert parameters(obj) == expected, f"{name}{inspect.signature(obj)}"
        assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_leak_marker_is_unique(chapter):
    module = importlib.import_module(f"solutions.{chapter}")
    assert module.LEAK_MARKER.startswith("LEAK-MARKER-")
    others = [importlib.import_module(f"solutions.{c}").LEAK_MARKER for c in CHAPTERS]
    assert others.count(module.LEAK_MARKER) == 1


def loops_in(tree):
    """(enclosing top-level name, line) of every for/while loop and comprehension."""
    for top in tree.body:
        for node in ast.walk(top):
            if isinstance(node, (ast.For, ast.While, ast.comprehension)):
                yield getattr(top, "name", "<module>"), node


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_references_are_vectorised(chapter):
    tree = ast.parse((ROOT / "solutions" / f"{chapter}.py").read_text())
    offending = [
        f"{name} line {getattr(node, 'lineno', '?')}"
        for name, node in loops_in(tree)
        if name not in ALLOWED_LOOPS
    ]
    assert not offending, f"Python loops outside the allowed time/block loops: {offending}"
