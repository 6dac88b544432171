"""Drawing a check's inputs from its seeded generator.

Every check draws its sizes and values from the ``torch.Generator`` it is given, so that its
inputs depend on the run's secret seed and nothing else. Sizes within one call are distinct
(batch, lengths and widths all differ), so that a swapped axis or a wrong size shows.
Tensors are drawn in float32 on the CPU; ``Call.dtype`` and ``Call.device`` move them.
"""

from __future__ import annotations

import math

import torch

# No size is the square of another (4, 9): dividing by the square root of one size never
# equals dividing by another, so known mistakes of scaling stay tellable apart.
SIZES = (2, 3, 5, 6, 7, 8, 10, 11, 12, 13)


def sizes(generator: torch.Generator, count: int, low: int = 2, pool=SIZES) -> list[int]:
    """``count`` distinct sizes from ``pool`` (at least ``low``), in random order."""
    candidates = torch.tensor([size for size in pool if size >= low])
    if count > len(candidates):
        raise ValueError(f"{count} distinct sizes >= {low} asked of a pool of {len(candidates)}")
    return candidates[torch.randperm(len(candidates), generator=generator)[:count]].tolist()


def integers(generator: torch.Generator, count: int, low: int, high: int) -> list[int]:
    """``count`` distinct integers in [low, high], in random order."""
    return (torch.randperm(high - low + 1, generator=generator)[:count] + low).tolist()


def randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values times ``scale``."""
    return torch.randn(shape, generator=generator) * scale


def weights(generator: torch.Generator, out_features: int, in_features: int) -> torch.Tensor:
    """A weight matrix stored as ``nn.Linear`` stores it, (out, in), with variance 1/in."""
    return randn(generator, out_features, in_features, scale=in_features**-0.5)


def seed(generator: torch.Generator) -> int:
    """A seed for ``Call.seed`` (the upstream gradient weights, the call's torch seed)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def choice(generator: torch.Generator, options):
    """One of ``options``, drawn."""
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def lengths(generator: torch.Generator, batch: int, longest: int) -> torch.Tensor:
    """(batch,) int64 lengths in [1, longest], distinct where possible, one of them full."""
    drawn = torch.randint(1, longest + 1, (batch,), generator=generator)
    drawn[int(torch.randint(batch, (1,), generator=generator))] = longest
    return drawn


def large_scores(
    generator: torch.Generator, batch: int, queries: int, keys: int, width: int, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (batch, queries, width) and k (batch, keys, width) whose scaled scores q.k/sqrt(width)
    are ``offset`` plus a spread of order one over the keys.

    Every key carries ``offset * sqrt(width) * u`` and every query exactly one unit of ``u``
    (the rest of the query is orthogonal to it): the softmax is far from one-hot, and exp() of
    the raw scores overflows (offset +1000) or underflows to 0 / 0 (offset -1000).
    """
    u = randn(generator, width)
    u = u / u.norm()
    q = randn(generator, batch, queries, width)
    q = q - (q @ u)[..., None] * u + u
    k = randn(generator, batch, keys, width) + offset * math.sqrt(width) * u
    return q, k


def large_attention(
    generator: torch.Generator, offset: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, Tq, d), k (B, Tk, d) and v (B, Tk, dv) with distinct sizes of at least 3, whose
    scaled scores are ``offset`` plus a spread of order one over the keys (``large_scores``)."""
    B, Tq, Tk, d, dv = sizes(generator, 5, low=3)
    q, k = large_scores(generator, B, Tq, Tk, d, offset)
    v = randn(generator, B, Tk, dv)
    return q, k, v


def state_dict(generator: torch.Generator, build) -> dict[str, torch.Tensor]:
    """Drawn weights for every entry of the state_dict of the module ``build()`` makes.

    The module is built on the meta device (no values, no use of the global generator);
    each entry is then drawn from ``generator``: matrices with variance 1/in_features, norm
    weights around 1, everything else (biases, class tokens, position embeddings) of
    order 1/2, so that no parameter is zero and none can be left out unnoticed.
    """
    with torch.device("meta"):
        module = build()
    drawn = {}
    for name, tensor in module.state_dict().items():
        shape = tuple(tensor.shape)
        owner, _, leaf = name.rpartition(".")
        if len(shape) == 2:
            drawn[name] = randn(generator, *shape, scale=shape[1] ** -0.5)
        elif "norm" in owner.rpartition(".")[2] and leaf == "weight":
            drawn[name] = 1.0 + randn(generator, *shape, scale=0.5)
        else:
            drawn[name] = randn(generator, *shape, scale=0.5)
    return drawn
