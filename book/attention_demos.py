"""Helpers shared by the masking (ch04) and multi-head attention (ch05) pages.

Two things both pages need and neither page is about: drawing a matrix (a mask or a map of
attention weights) as a grid of cells, and the loop that trains a small model on batches
generated on the fly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.colors as mcolors
import torch
from matplotlib.axes import Axes

MASK_COLOURS = mcolors.ListedColormap(["#e8e8e8", "#2b6cb0"])  # False: light grey, True: blue


def draw_matrix(
    ax: Axes,
    values: torch.Tensor,
    *,
    cmap="Blues",
    vmin: float = 0.0,
    vmax: float = 1.0,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    tick_every: int = 1,
):
    """Draw ``values`` (rows, cols) as coloured cells separated by thin white lines.

    Row ``i`` is drawn from the top, as a matrix is written; labels default to the indices,
    one every ``tick_every`` rows and columns. Returns the image, for a colour bar.
    """
    values = torch.as_tensor(values).detach().float().cpu()  # (rows, cols)
    rows, cols = values.shape
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    row_labels = row_labels if row_labels is not None else [str(i) for i in range(rows)]
    col_labels = col_labels if col_labels is not None else [str(j) for j in range(cols)]
    ax.set_yticks(range(0, rows, tick_every), row_labels[::tick_every])
    ax.set_xticks(range(0, cols, tick_every), col_labels[::tick_every])
    ax.set_xticks([j - 0.5 for j in range(1, cols)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, rows)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return image


def draw_mask(ax: Axes, mask: torch.Tensor, **labels):
    """Draw a boolean mask: True (may attend, a real token) blue, False light grey."""
    return draw_matrix(ax, torch.as_tensor(mask).float(), cmap=MASK_COLOURS, **labels)


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each ``window`` consecutive values: a noisy loss curve made readable."""
    values = torch.tensor(values, dtype=torch.float64)  # (steps,)
    sums = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.float64), values]), dim=0)
    return ((sums[window:] - sums[:-window]) / window).tolist()  # (steps - window + 1,)


def train(
    make_model: Callable[[], torch.nn.Module],
    make_batch: Callable[[int, torch.Generator], tuple],
    batch_loss: Callable[[torch.nn.Module, tuple], torch.Tensor],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a fresh model with Adam on ``steps`` generated batches; return it and its losses.

    ``make_model()`` builds the model after the seed is set, so two calls with the same
    seed start from the same weights and see the same batches, whatever the model is.
    ``batch_loss(model, batch)`` returns the scalar loss of one batch.
    """
    torch.manual_seed(seed)  # the initial weights
    generator = torch.Generator().manual_seed(seed + 1)  # the data
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        batch = make_batch(batch_size, generator)
        loss = batch_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses
