"""Shared checks for the reference tests: devices, dtypes, immutability.

Every reference is checked the same way: against PyTorch in float64 on the CPU,
on the ``meta`` device (which catches tensors created on a fixed device), on CUDA in
float32/float16/bfloat16 when a GPU is present, and for not modifying its inputs.
"""

import copy

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Tolerances of a low-precision CUDA result against the float64 CPU result.
CUDA_TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}

cuda_dtypes = pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(dtype, marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))
        for dtype in CUDA_TOLERANCES
    ],
    ids=lambda dtype: str(dtype).removeprefix("torch."),
)

F64 = dict(rtol=1e-10, atol=1e-12)


def tree_map(fn, obj):
    """Apply ``fn`` to every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, item) for item in obj)
    if isinstance(obj, dict):
        return {key: tree_map(fn, value) for key, value in obj.items()}
    return obj


def tensors_of(obj):
    """The tensors inside nested tuples, lists and dicts, in order."""
    found = []
    tree_map(found.append, obj)
    return found


def move(obj, device, dtype=None):
    """Move every tensor to ``device``; cast floating tensors to ``dtype`` when given."""

    def one(tensor):
        if dtype is not None and tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype)
        return tensor.to(device=device)

    return tree_map(one, obj)


def assert_close(actual, expected, **tolerances):
    """Compare nested outputs tensor by tensor (float64 tolerances by default)."""
    actual, expected = tensors_of(actual), tensors_of(expected)
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(
            a, e, **(tolerances or F64), msg=lambda m, i=index: f"output {i}: {m}"
        )


def assert_unmodified(fn, *args, **kwargs):
    """Call ``fn`` and assert that no tensor argument changed, in value or in version."""
    before = [(t, t.detach().clone(), t._version) for t in tensors_of((args, kwargs))]
    result = fn(*args, **kwargs)
    for tensor, saved, version in before:
        assert tensor._version == version, "an input was modified in place"
        torch.testing.assert_close(tensor.detach(), saved, rtol=0, atol=0, equal_nan=True)
    return result


def assert_gradients_match(fn, torch_fn, *inputs, loss=lambda out: out.square().sum()):
    """Backpropagate ``loss`` through ``fn`` and through ``torch_fn`` (the same computation
    written with PyTorch's built-ins) from copies of ``inputs``: the gradients must agree."""
    ours = [t.clone().requires_grad_() for t in inputs]
    theirs = [t.clone().requires_grad_() for t in inputs]
    loss(fn(*ours)).backward()
    loss(torch_fn(*theirs)).backward()
    for index, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(
            mine.grad, reference.grad, **F64, msg=lambda m, i=index: f"input {i}: {m}"
        )


def assert_same_layout_on_meta(cpu_out, meta_out):
    """The meta outputs have the CPU outputs' structure, shapes and dtypes, on ``meta``."""
    cpu_tensors, meta_tensors = tensors_of(cpu_out), tensors_of(meta_out)
    assert len(cpu_tensors) == len(meta_tensors)
    for cpu_tensor, meta_tensor in zip(cpu_tensors, meta_tensors, strict=True):
        assert meta_tensor.device.type == "meta"
        assert meta_tensor.shape == cpu_tensor.shape
        assert meta_tensor.dtype == cpu_tensor.dtype


def assert_cuda_matches(fn, dtype, *args, **kwargs):
    """Run ``fn`` on CUDA in ``dtype`` and compare with its float64 CPU result."""
    expected = fn(*args, **kwargs)
    actual = fn(*move(args, "cuda", dtype), **move(kwargs, "cuda", dtype))
    for tensor in tensors_of(actual):
        assert tensor.device.type == "cuda"
    expected = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, expected)
    actual = move(actual, "cpu")
    assert_close(actual, expected, **CUDA_TOLERANCES[dtype])


def moved_module(module, device, dtype=None):
    """A copy of ``module`` on ``device`` (and in ``dtype`` when given); the original stays."""
    return copy.deepcopy(module).to(device=device, dtype=dtype)


def randn(*shape, generator, requires_grad=False):
    """A float64 standard normal tensor from ``generator``."""
    tensor = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return tensor.requires_grad_(requires_grad)
