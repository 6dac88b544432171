"""The book's figure style: every figure readable on a phone, every figure described.

The rule, for every figure of every chapter:

- Size. A figure is at most ``MAX_WIDTH_IN`` inches wide (``plotting.figure`` refuses wider
  ones). On a 400 px wide screen the book's text column is about ``PHONE_COLUMN_PX`` wide, and
  an SVG figure ``w`` inches wide (``96 w`` px at its natural size) is shrunk to fit it.
- Fonts. Text of ``s`` points then renders at ``s * 4/3 * PHONE_COLUMN_PX / (96 w)`` CSS px.
  For that to be at least ``MIN_TEXT_PX`` the smallest text of a figure ``w`` inches wide
  must be ``min_font_pt(w)`` points or more. ``use_book_style`` sets every default size to
  ``BASE_FONT_PT``, enough up to ``MAX_WIDTH_IN``; ``show`` refuses a figure with smaller
  text, so a chapter cannot build with unreadable figures. The book's browser test measures
  the rendered glyphs at 400 px as well.
- Alt text. Every figure is shown with ``{glue:figure}`` and an ``:alt:`` that says what the
  figure shows (its axes, what rises or falls, what the reader should see), not its file
  name. The browser test rejects figures without one.
- Where it shows. During the book build (``ATTENTION_BOOK_BUILD`` is set by the book's Sphinx
  extension) ``show`` glues the figure for the page's ``{glue:figure}``; in any other kernel
  (a downloaded or launched chapter) it simply displays it.

Usage in a chapter's hidden set-up cell::

    import plotting
    plotting.use_book_style()

and for each figure::

    fig, ax = plotting.figure(width=5.5, height=3.2)
    ...
    plotting.show(fig, "ch03-lookup")          # then a {glue:figure} with :alt: in the page
"""

from __future__ import annotations

import os

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.text import Text

BUILD_FLAG = "ATTENTION_BOOK_BUILD"  # set by book/_ext/course_book.py during a book build
PHONE_COLUMN_PX = 340  # the text column of sphinx-book-theme at a 400 px viewport, rounded down
MIN_TEXT_PX = 9.0  # the smallest text a reader can be asked to read on a phone
MAX_WIDTH_IN = 6.2  # wider figures need fonts too large for a desktop reader
BASE_FONT_PT = 12.0


def min_font_pt(width_in: float) -> float:
    """The smallest font size (pt) readable at 400 px for a figure ``width_in`` inches wide."""
    return MIN_TEXT_PX * 96 * width_in / (4 / 3 * PHONE_COLUMN_PX)


def use_book_style() -> None:
    """SVG output, the book's font sizes, tight layout; call once in a page's set-up cell."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("config", 'InlineBackend.figure_formats = ["svg"]')
    mpl.rcParams.update(
        {
            "font.size": BASE_FONT_PT,
            "axes.titlesize": BASE_FONT_PT,
            "axes.labelsize": BASE_FONT_PT,
            "xtick.labelsize": BASE_FONT_PT,
            "ytick.labelsize": BASE_FONT_PT,
            "legend.fontsize": BASE_FONT_PT,
            "figure.titlesize": BASE_FONT_PT,
            "figure.constrained_layout.use": True,
            "svg.fonttype": "path",  # the glyphs are drawn: no dependence on the reader's fonts
        }
    )


def figure(width: float = 5.5, height: float = 3.5, **subplots) -> tuple[Figure, object]:
    """``plt.subplots`` with a size that the phone rule allows."""
    if width > MAX_WIDTH_IN:
        raise ValueError(f"a book figure is at most {MAX_WIDTH_IN} in wide, not {width}")
    return plt.subplots(figsize=(width, height), **subplots)


def too_small_texts(fig: Figure) -> list[str]:
    """The visible texts of ``fig`` that would render below ``MIN_TEXT_PX`` on a phone."""
    fig.draw_without_rendering()  # lays the figure out, which creates its tick labels
    width = fig.get_figwidth()
    needed = min_font_pt(width)
    small = []
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text().strip() and text.get_fontsize() < needed - 1e-6:
            small.append(f"{text.get_text()!r} at {text.get_fontsize():.1f} pt")
    return small


def show(fig: Figure, name: str) -> None:
    """Check ``fig`` against the phone rule, then glue it as ``name`` for a {glue:figure}.

    Outside a book build there is no page to glue into: the figure is displayed instead.
    """
    if fig.get_figwidth() > MAX_WIDTH_IN + 1e-6:
        raise ValueError(f"{name}: {fig.get_figwidth():.1f} in wide, at most {MAX_WIDTH_IN}")
    small = too_small_texts(fig)
    if small:
        needed = min_font_pt(fig.get_figwidth())
        raise ValueError(
            f"{name}: text below {needed:.1f} pt is unreadable at 400 px: " + ", ".join(small[:5])
        )
    if os.environ.get(BUILD_FLAG):
        from myst_nb import glue

        glue(name, fig, display=False)
    else:
        from IPython.display import display

        display(fig)
    plt.close(fig)
