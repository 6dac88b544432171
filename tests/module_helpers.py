"""Device and dtype checks for modules, the counterparts of those in ``helpers`` for functions.

A module is copied before it moves, so the float64 CPU original stays usable.
"""

import copy

import torch
from helpers import (
    CUDA_TOLERANCES,
    assert_close,
    assert_same_layout_on_meta,
    move,
    tensors_of,
    tree_map,
)


def moved_module(module, device, dtype=None):
    """A copy of ``module`` on ``device`` (and in ``dtype`` when given)."""
    return copy.deepcopy(module).to(device=device, dtype=dtype)


def assert_module_meta_matches(module, *args, **kwargs):
    """Run ``module`` on the CPU and a copy of it on ``meta``: same shapes and dtypes, on meta."""
    cpu_out = module(*args, **kwargs)
    meta_out = moved_module(module, "meta")(*move(args, "meta"), **move(kwargs, "meta"))
    assert_same_layout_on_meta(cpu_out, meta_out)


def assert_module_cuda_matches(module, dtype, *args, **kwargs):
    """Run a copy of ``module`` on CUDA in ``dtype`` and compare with its float64 CPU result."""
    expected = module(*args, **kwargs)
    cuda_module = moved_module(module, "cuda", dtype)
    actual = cuda_module(*move(args, "cuda", dtype), **move(kwargs, "cuda", dtype))
    for tensor in tensors_of(actual):
        assert tensor.device.type == "cuda"
        assert tensor.dtype == dtype or not tensor.is_floating_point()
    expected = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, expected)
    assert_close(move(actual, "cpu"), expected, **CUDA_TOLERANCES[dtype])


def double(module):
    """``module`` in float64, in evaluation mode, for comparisons at float64 tolerances."""
    return module.to(torch.float64).eval()
