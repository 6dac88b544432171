"""Time the reference solutions against the PyTorch built-ins that do the same job.

Run from the repository root:

    python bench/bench_references.py [--device cpu|cuda] [--dtype float32|float16|bfloat16]
                                     [--quick]

The first line printed gives the torch version, the device, the dtype and the number of CPU
threads; then comes one table row per reference and PyTorch baseline, both run on the same
inputs with the same weights:

- ``reference ms`` and ``PyTorch ms`` are median wall-clock times of one call, in
  milliseconds: forward plus backward (the gradients of a fixed random cotangent with
  respect to the inputs and all the weights), except for the ViT, timed forward only, in
  eval mode without grad.
- ``ratio`` is ``reference ms / PyTorch ms``: 1.0 means as fast as PyTorch, 3.0 three times
  slower. The references are written to be read, not to be fast; a ratio well above 1
  shows what the fused kernels and the fast paths of PyTorch buy.
- ``size`` gives ``B`` (batch), ``T`` (sequence length), ``D`` (model dim) and ``h`` (heads).
  The attention rows get ``(B, h, T, D/h)`` tensors, the multi-head attention is
  self-attention of a ``(B, T, D)`` sequence, the layers have a feed-forward dim of ``4D``,
  and the decoder gets a causal target mask and a memory as long as its target.
- The multi-head attention reference returns per-head weights, so its main baseline is
  ``nn.MultiheadAttention(need_weights=True, average_attn_weights=False)``; the row marked
  ``no weights`` times the same module with ``need_weights=False``, which lets PyTorch use
  its fused attention kernel.
- The reference encoder and decoder layers call their ``nn.MultiheadAttention``
  submodules, so their rows compare the layer norms, the feed-forward blocks and the
  residual connections written with plain tensor operations.
- The reference ViT runs ``nn.TransformerEncoderLayer`` blocks itself, so its row compares
  the patch embedding (reshapes and a linear map against a strided ``nn.Conv2d``) inside
  an otherwise identical network.

Before any timing, each pair is checked to compute the same thing: the outputs (and the
attention weights, where both return them) and the gradients of the inputs must agree to
within a relative error, in norm, that depends on the dtype; otherwise the script stops.
The reference and its baselines are timed in turns, sample by sample, but timings are
only as good as the machine is quiet: run it with nothing else busy.
"""

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solutions.ch03_self_attention import scaled_dot_product_attention
from solutions.ch05_multihead import multi_head_attention
from solutions.ch06_transformer import DecoderLayer, EncoderLayer
from solutions.ch07_vit import ViT

SIZES = [(8, 64, 128, 4), (16, 128, 256, 8), (4, 256, 512, 8)]  # (B, T, D, h)
QUICK_SIZES = [(8, 64, 128, 4)]
VIT_BATCHES = [16, 64]
QUICK_VIT_BATCHES = [16]
VIT_CONFIG = dict(
    image_size=32,
    patch_size=4,
    in_channels=3,
    num_classes=10,
    dim=128,
    depth=4,
    num_heads=4,
    mlp_dim=256,
)
# Largest allowed ||reference - PyTorch|| / ||PyTorch||, per dtype.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass
class Case:
    """One reference and its baselines, ready to call on fixed inputs.

    Every callable returns a tuple of tensors; the first is the output that gets
    differentiated. The ``inputs`` of a callable are the tensors whose gradients are
    compared (the same ones, in the same order, for the reference and each baseline);
    its ``leaves`` are all the tensors it differentiates (inputs and weights).
    """

    target: str
    size: str
    reference: Callable
    ref_inputs: list
    ref_leaves: list
    baselines: list = field(default_factory=list)  # (label, callable, inputs, leaves)
    backward: bool = True


def size_label(B, T, D, h):
    return f"B={B} T={T} D={D} h={h}"


def leaf(*shape, device, dtype):
    """A random input that takes gradients."""
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()


def sdpa_case(B, T, D, h, device, dtype):
    q, k, v = (leaf(B, h, T, D // h, device=device, dtype=dtype) for _ in range(3))
    qkv = [q, k, v]
    return Case(
        target="scaled dot-product attention",
        size=size_label(B, T, D, h),
        reference=lambda: scaled_dot_product_attention(q, k, v),
        ref_inputs=qkv,
        ref_leaves=qkv,
        baselines=[("", lambda: (F.scaled_dot_product_attention(q, k, v),), qkv, qkv)],
    )


def mha_case(B, T, D, h, device, dtype):
    mha = nn.MultiheadAttention(D, h, dropout=0.0, batch_first=True).to(device, dtype)
    W_q, W_k, W_v = (w.detach().clone().requires_grad_() for w in mha.in_proj_weight.chunk(3))
    b_q, b_k, b_v = (b.detach().clone().requires_grad_() for b in mha.in_proj_bias.chunk(3))
    W_o = mha.out_proj.weight.detach().clone().requires_grad_()
    b_o = mha.out_proj.bias.detach().clone().requires_grad_()
    weights = [W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o]
    x = leaf(B, T, D, device=device, dtype=dtype)

    def reference():
        return multi_head_attention(x, x, x, *weights, num_heads=h)

    def with_weights():
        return mha(x, x, x, need_weights=True, average_attn_weights=False)

    def without_weights():
        return mha(x, x, x, need_weights=False)[:1]

    torch_leaves = [x, *mha.parameters()]
    return Case(
        target="multi-head attention",
        size=size_label(B, T, D, h),
        reference=reference,
        ref_inputs=[x],
        ref_leaves=[x, *weights],
        baselines=[
            ("", with_weights, [x], torch_leaves),
            ("no weights", without_weights, [x], torch_leaves),
        ],
    )


def encoder_case(B, T, D, h, device, dtype):
    ref = EncoderLayer(D, h, 4 * D, norm_first=False)
    builtin = nn.TransformerEncoderLayer(D, h, 4 * D, dropout=0.0, batch_first=True)
    builtin.load_state_dict(ref.state_dict())
    ref, builtin = ref.to(device, dtype), builtin.to(device, dtype)
    x = leaf(B, T, D, device=device, dtype=dtype)
    return Case(
        target="encoder layer",
        size=size_label(B, T, D, h),
        reference=lambda: (ref(x),),
        ref_inputs=[x],
        ref_leaves=[x, *ref.parameters()],
        baselines=[("", lambda: (builtin(x),), [x], [x, *builtin.parameters()])],
    )


def decoder_case(B, T, D, h, device, dtype):
    ref = DecoderLayer(D, h, 4 * D, norm_first=False)
    builtin = nn.TransformerDecoderLayer(D, h, 4 * D, dropout=0.0, batch_first=True)
    builtin.load_state_dict(ref.state_dict())
    ref, builtin = ref.to(device, dtype), builtin.to(device, dtype)
    y = leaf(B, T, D, device=device, dtype=dtype)
    memory = leaf(B, T, D, device=device, dtype=dtype)
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # True = may attend

    def builtin_call():
        return (builtin(y, memory, tgt_mask=~causal),)  # PyTorch: True = may not attend

    return Case(
        target="decoder layer",
        size=size_label(B, T, D, h),
        reference=lambda: (ref(y, memory, tgt_mask=causal),),
        ref_inputs=[y, memory],
        ref_leaves=[y, memory, *ref.parameters()],
        baselines=[("", builtin_call, [y, memory], [y, memory, *builtin.parameters()])],
    )


class BuiltinViT(nn.Module):
    """The ViT of ch07 made of PyTorch built-ins: a strided Conv2d cuts and embeds the patches."""

    def __init__(self, ref):
        super().__init__()
        embed = ref.patch_embed
        p = embed.patch_size
        dim, patch_features = embed.proj.weight.shape
        channels = patch_features // (p * p)
        self.patchify = nn.Conv2d(channels, dim, kernel_size=p, stride=p)
        with torch.no_grad():
            # A patch is flattened in (C, p, p) order, which is the layout of a conv kernel.
            self.patchify.weight.copy_(embed.proj.weight.reshape(dim, channels, p, p))
            self.patchify.bias.copy_(embed.proj.bias)
        self.cls_token = nn.Parameter(embed.cls_token.detach().clone())
        self.pos_embed = nn.Parameter(embed.pos_embed.detach().clone())
        self.blocks = copy.deepcopy(ref.blocks)
        self.norm = copy.deepcopy(ref.norm)
        self.head = copy.deepcopy(ref.head)

    def forward(self, images):
        tokens = self.patchify(images).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(images.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat((cls, tokens), dim=1) + self.pos_embed  # (B, N+1, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))  # (B, num_classes)


def vit_case(B, device, dtype):
    cfg = VIT_CONFIG
    ref = ViT(**cfg).eval()
    builtin = BuiltinViT(ref).eval()
    ref, builtin = ref.to(device, dtype), builtin.to(device, dtype)
    size = cfg["image_size"]
    images = torch.randn(B, cfg["in_channels"], size, size, device=device, dtype=dtype)
    label = f"B={B} {size}x{size} p={cfg['patch_size']} D={cfg['dim']} L={cfg['depth']}"
    return Case(
        target="ViT forward",
        size=label,
        reference=lambda: (ref(images),),
        ref_inputs=[],
        ref_leaves=[],
        baselines=[("", lambda: (builtin(images),), [], [])],
        backward=False,
    )


def make_step(fn, leaves, backward, cotangent):
    """One timed call: forward, then (if asked) the gradients of every leaf."""
    if not backward:

        def forward_only():
            with torch.no_grad():
                return fn()

        return forward_only

    def forward_backward():
        outputs = fn()
        grads = torch.autograd.grad(outputs[0], leaves, cotangent)
        return outputs, grads

    return forward_backward


def relative_error(actual, expected):
    """||actual - expected|| / ||expected||, in float32.

    A norm, not a largest entry: in a gradient, a ReLU input within rounding of 0 can
    take the other branch in one of the two and move a single entry visibly.
    """
    actual, expected = actual.float(), expected.float()
    scale = expected.norm().clamp_min(torch.finfo(torch.float32).tiny)
    return ((actual - expected).norm() / scale).item()


def check_agreement(case, baseline, cotangent, tol):
    """Stop the script unless the reference and the baseline compute the same thing."""
    label, fn, inputs, _ = baseline
    name = f"{case.target} {label} [{case.size}]".replace("  ", " ")
    with torch.set_grad_enabled(case.backward):
        ref_out, base_out = case.reference(), fn()
    # Only the outputs both return: F.scaled_dot_product_attention gives no weights.
    shared = zip(ref_out, base_out, strict=False)
    pairs = [(f"output {i}", a, b) for i, (a, b) in enumerate(shared)]
    if case.backward:
        ref_grads = torch.autograd.grad(ref_out[0], case.ref_inputs, cotangent)
        base_grads = torch.autograd.grad(base_out[0], inputs, cotangent)
        pairs += [
            (f"grad of input {i}", a, b)
            for i, (a, b) in enumerate(zip(ref_grads, base_grads, strict=True))
        ]
    for what, a, b in pairs:
        if a.shape != b.shape:
            raise AssertionError(f"{name}: {what} shapes differ: {a.shape} vs {b.shape}")
        err = relative_error(a, b)
        if not err <= tol:
            raise AssertionError(f"{name}: {what} differs (relative error {err:.2e} > {tol:.0e})")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_sample(step, device, min_sample_s):
    """How many back-to-back calls of ``step`` last at least ``min_sample_s``."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    once = time.perf_counter() - start
    return max(1, math.ceil(min_sample_s / max(once, 1e-9)))


def median_ms(steps, device, warmup, repeats, min_sample_s):
    """Median time of one call of each step, in ms.

    Each sample runs a step enough times back to back to last at least ``min_sample_s``,
    so that fast calls are not drowned in timer and launch noise. The steps take turns,
    sample by sample, so that a change in the machine's load hits all of them alike.
    """
    for step in steps:
        for _ in range(warmup):
            step()
    numbers = [calls_per_sample(step, device, min_sample_s) for step in steps]
    samples = [[] for _ in steps]
    for _ in range(repeats):
        for step, number, times in zip(steps, numbers, samples, strict=True):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(number):
                step()
            synchronize(device)
            times.append((time.perf_counter() - start) / number)
    return [1e3 * statistics.median(times) for times in samples]


def run_case(case, device, dtype, timing):
    """Check and time one case; return its table rows."""
    probe = case.reference()[0]
    cotangent = torch.randn_like(probe) if case.backward else None
    for baseline in case.baselines:
        check_agreement(case, baseline, cotangent, TOLERANCE[dtype])
    steps = [make_step(case.reference, case.ref_leaves, case.backward, cotangent)]
    for _, fn, _, leaves in case.baselines:
        steps.append(make_step(fn, leaves, case.backward, cotangent))
    ref_ms, *base_ms = median_ms(steps, device, **timing)
    rows = []
    for (label, *_), ms in zip(case.baselines, base_ms, strict=True):
        target = f"{case.target} ({label})" if label else case.target
        rows.append((target, case.size, ref_ms, ms))
    return rows


def build_cases(device, dtype, quick):
    sizes = QUICK_SIZES if quick else SIZES
    makers = [sdpa_case, mha_case, encoder_case, decoder_case]
    for make in makers:
        for B, T, D, h in sizes:
            yield make(B, T, D, h, device, dtype)
    for B in QUICK_VIT_BATCHES if quick else VIT_BATCHES:
        yield vit_case(B, device, dtype)


def format_table(rows):
    header = ("target", "size", "reference ms", "PyTorch ms", "ratio")
    lines = [(t, s, f"{r:.3f}", f"{b:.3f}", f"{r / b:.2f}") for t, s, r, b in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(5)]
    aligns = ["<", "<", ">", ">", ">"]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(aligns, widths, strict=True))
    out = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--quick", action="store_true", help="one size, fewer repeats")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.quick:
        timing = dict(warmup=1, repeats=5, min_sample_s=0.002)
    else:
        timing = dict(warmup=2, repeats=9, min_sample_s=0.01)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}  device {device}  dtype {args.dtype}  "
        f"threads {torch.get_num_threads()}"
        + (f"  ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        flush=True,
    )
    rows = []
    for case in build_cases(device, dtype, args.quick):
        rows += run_case(case, device, dtype, timing)
    print(format_table(rows))


if __name__ == "__main__":
    main()
