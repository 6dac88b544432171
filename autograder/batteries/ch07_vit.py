"""The hidden battery of chapter 7: patches, the patch embedding and the Vision Transformer.

Every check draws its sizes and values from the generator it is given (``kit.inputs``).
Images are non-square wherever the contract allows it (H != W, and a different number of
patch rows and columns), with several channels and several patch sizes. The two classes are
graded with the given ``__init__`` and weights drawn for every entry of the reference's own
state_dict (the class token and the position embeddings are never zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from autograder.contracts import ASSIGNMENTS
from autograder.kit import inputs
from autograder.kit.battery import Battery, Check
from autograder.kit.judges import TOLERANCES, match_reference, public_error
from autograder.kit.standard import HALF_POINT_PER_DTYPE, standard_checks
from autograder.mutants.ch07_vit import MUTANTS
from autograder.runtime.executor import Call, Module, Result
from solutions.ch07_vit import PatchEmbedding, ViT

LEAK_MARKER = "LEAK-MARKER-autograder-ch07-6a0d38b5"
ASSIGNMENT = ASSIGNMENTS["ch07_vit"]

PATCHIFY = "patchify"
EMBED = "PatchEmbedding"
VIT = "ViT"

F32 = TOLERANCES[torch.float32]
GRID = (2, 3, 4, 5)  # patches per row or column
PATCH_SIZES = (2, 3, 4)


def raises_value_error(**tolerances):
    """A judge: every call raises a ValueError, as the reference does.

    Against results that raise nothing (a known mistake's, in diagnosis) it compares values,
    so that a submission that returns what that mistake returns is named.
    """
    same_values = match_reference(**tolerances)

    def judge(calls: Sequence[Call], actual: Sequence[Result], expected: Sequence[Result]):
        if not all(result.error for result in expected):
            return same_values(calls, actual, expected)
        for number, result in enumerate(actual):
            if result.error is None:
                return f"call {number + 1}: it returned a result instead of raising ValueError"
            if not result.error.startswith("ValueError"):
                return f"call {number + 1}: it raised {public_error(result.error)}"
        return None

    return judge


def _grid(generator, low=2):
    """rows != cols patches per column and per row, p, and C in {2, 3}."""
    rows, cols = inputs.sizes(generator, 2, low=low, pool=GRID)
    p = inputs.choice(generator, PATCH_SIZES)
    C = inputs.choice(generator, (2, 3))
    return rows, cols, p, C


# --- patchify ---


def _patchify_call(generator, B, C, H, W, p, **options):
    images = inputs.randn(generator, B, C, H, W)
    return Call(PATCHIFY, (images, p), seed=inputs.seed(generator), **options)


def _patchify_calls(generator, count=2, **options):
    """``count`` calls on (B, C, H, W) with H != W, rows != cols."""
    calls = []
    for _ in range(count):
        rows, cols, p, C = _grid(generator)
        B = inputs.choice(generator, (1, 2, 3))
        calls.append(_patchify_call(generator, B, C, rows * p, cols * p, p, **options))
    return calls


def _patchify_edge_calls(generator):
    """p = 1 (every pixel a patch) and p = H (a single row of patches)."""
    rows, cols, _, C = _grid(generator)
    p = inputs.choice(generator, PATCH_SIZES)
    return [
        _patchify_call(generator, 2, C, rows, cols, 1),
        _patchify_call(generator, 2, C, p, cols * p, p),
    ]


def _patchify_indivisible_calls(generator):
    """H not a multiple of p (W one), then W not a multiple of p (H one)."""
    rows, cols, p, C = _grid(generator)
    extra = 1 + int(torch.randint(p - 1, (1,), generator=generator))  # 1 .. p-1
    return [
        _patchify_call(generator, 2, C, rows * p + extra, cols * p, p),
        _patchify_call(generator, 2, C, rows * p, cols * p + extra, p),
    ]


# --- the classes ---


def _embed_call(generator, square=False, **options):
    """PatchEmbedding((H, W) or H, p, C, dim) on (B, C, H, W)."""
    rows, cols, p, C = _grid(generator)
    if square:
        cols = rows
    B, dim = inputs.sizes(generator, 2, pool=(2, 3, 5, 6, 7))
    image_size = rows * p if square else (rows * p, cols * p)
    init = (image_size, p, C, dim)
    module = Module(init, {}, inputs.state_dict(generator, partial(PatchEmbedding, *init)))
    images = inputs.randn(generator, B, C, rows * p, cols * p)
    return Call(EMBED, (images,), module=module, seed=inputs.seed(generator), **options)


def _embed_calls(generator, squares=(False, False), **options):
    return [_embed_call(generator, square, **options) for square in squares]


def _vit_call(generator, square=False, classes_equal_dim=False, **options):
    """ViT((H, W) or H, p, C, classes, dim = 2 * d_head, depth 2, 2 heads, mlp_dim)."""
    rows, cols, p, C = _grid(generator)
    if square:
        cols = rows
    B, classes, mlp_dim = inputs.sizes(generator, 3, pool=(2, 3, 5, 7, 11))
    dim = 2 * inputs.choice(generator, (2, 3, 4))
    if classes_equal_dim:
        classes = dim
    image_size = rows * p if square else (rows * p, cols * p)
    init = (image_size, p, C, classes, dim, 2, 2, mlp_dim)
    module = Module(init, {}, inputs.state_dict(generator, partial(ViT, *init)))
    images = inputs.randn(generator, B, C, rows * p, cols * p)
    return Call(VIT, (images,), module=module, seed=inputs.seed(generator), **options)


def _vit_calls(generator, squares=(False, False), **options):
    return [_vit_call(generator, square, **options) for square in squares]


PATCHIFY_CHECKS = (
    Check(
        "patchify_values",
        PATCHIFY,
        2.5,
        _patchify_calls,
        "patchify is wrong on images (B, C, H, W) with H != W: patches go row by row (left to"
        " right, then top to bottom), each flattened in (C, p, p) order.",
        match_reference(**F32),
    ),
    Check(
        "patchify_edge_sizes",
        PATCHIFY,
        1.0,
        _patchify_edge_calls,
        "patchify is wrong with patch_size 1 (every pixel a patch) or patch_size = H (a single"
        " row of patches).",
        match_reference(**F32),
    ),
    Check(
        "patchify_not_a_multiple",
        PATCHIFY,
        1.5,
        _patchify_indivisible_calls,
        "patchify must raise a ValueError when H or W is not a multiple of patch_size.",
        raises_value_error(**F32),
        gated=True,  # raising compares no values: it pays once the values are right
    ),
    *standard_checks(
        PATCHIFY,
        _patchify_calls,
        points={
            "gradients": 1.5,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
    ),
)

EMBED_CHECKS = (
    Check(
        "patch_embedding_values",
        EMBED,
        3.5,
        _embed_calls,
        "PatchEmbedding is wrong on images (B, C, H, W) with H != W: project the patches with"
        " self.proj, put the class token first, then add self.pos_embed to all N+1 tokens.",
        match_reference(**F32),
    ),
    Check(
        "patch_embedding_square",
        EMBED,
        1.0,
        partial(_embed_calls, squares=(True,)),
        "PatchEmbedding is wrong on square images given by one image_size.",
        match_reference(**F32),
    ),
    *standard_checks(
        EMBED,
        _embed_calls,
        prefix="patch_embedding",
        points={
            "gradients": 2.0,
            **HALF_POINT_PER_DTYPE,
            "meta": 1.0,
            "accelerator": 1.0,
        },
    ),
)

VIT_CHECKS = (
    Check(
        "vit_values",
        VIT,
        3.0,
        _vit_calls,
        "ViT is wrong on images (B, C, H, W) with H != W: embed, run every block, normalise,"
        " then classify the class token x[:, 0].",
        match_reference(**F32),
    ),
    Check(
        "vit_square",
        VIT,
        1.5,
        partial(_vit_calls, squares=(True,)),
        "ViT is wrong on square images given by one image_size.",
        match_reference(**F32),
    ),
    Check(
        "vit_classes_equal_dim",
        VIT,
        1.0,
        partial(_vit_calls, squares=(False,), classes_equal_dim=True),
        "ViT is wrong when num_classes equals dim: the head's output is the logits, nothing"
        " comes after it.",
        match_reference(**F32),
    ),
    *standard_checks(
        VIT,
        _vit_calls,
        prefix="vit",
        points={"gradients": 2.0, "float64": 0.5, "meta": 1.0, "accelerator": 1.0},
    ),
)

BATTERY = Battery.for_assignment(
    ASSIGNMENT, (*PATCHIFY_CHECKS, *EMBED_CHECKS, *VIT_CHECKS), MUTANTS
)
