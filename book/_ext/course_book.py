"""The book's Sphinx extension: what a reader of the built site meets, beyond the theme.

- Chapter numbers. A page ``chNN_*`` is chapter NN: its figures, tables and equations are
  numbered ``NN.k`` ("Fig. 3.2", "(3.4)") whatever the order in which chapters join the
  table of contents. Titles carry the number themselves ("3. Self-attention").
- Bibliography labels in author-year form ("Vaswani et al., 2017"), the form of the
  citations in the text, with DOIs and URLs printed as links.
- Runnable downloads. The theme offers each chapter as ``.ipynb``; this extension puts a
  first code cell into that notebook that makes the course's modules importable (the
  reference solutions at the repository root, the book's helpers in ``book/``), so the
  notebook runs in a fresh kernel from anywhere inside a checkout of the repository.
- A Colab link next to every download of an exercise's release notebook (a released
  notebook needs nothing but PyTorch, so Colab can run it from the repository).
- The book's CSS (``static/course_book.css``) and script (``static/course_book.js``: display
  equations wider than a phone's screen are scaled down to fit).
- ``ATTENTION_BOOK_BUILD=1`` in the environment of the kernels that execute the chapters,
  so that ``plotting.show`` glues a figure for the page during a build and simply shows it
  anywhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import nbformat
from docutils import nodes
from pybtex.plugin import find_plugin, register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

BUILD_FLAG = "ATTENTION_BOOK_BUILD"
COLAB = "https://colab.research.google.com"
CHAPTER_PAGE = re.compile(r"(?:^|/)ch(\d+)_[^/]+$")
RELEASED_EXERCISE = re.compile(r"exercises/release/(?P<id>[^/]+)/(?P=id)\.ipynb$")
SETUP_TAG = "course-setup"

SETUP_CELL = """\
# Set-up for running this chapter outside the book. The chapter imports modules of the
# course repository, {url}: the reference solutions at its root and the book's helpers
# in book/. Run this notebook from inside a checkout of it (the root or any folder below).
import sys
from pathlib import Path

here = Path.cwd().resolve()
repository = next(
    (folder for folder in [here, *here.parents] if (folder / "book" / "plotting.py").is_file()),
    None,
)
if repository is None:
    raise RuntimeError(
        "This notebook needs the course repository: clone {url} "
        "and start Jupyter inside it (for example at its root)."
    )
sys.path[:0] = [str(repository), str(repository / "book")]
"""


def chapter_number(docname: str) -> int | None:
    """The chapter number of a page ``book/chNN_name``, None for other pages."""
    match = CHAPTER_PAGE.search(docname)
    return int(match.group(1)) if match else None


# --- chapter numbers -------------------------------------------------------------------


def number_by_chapter(app: Sphinx, env: BuildEnvironment) -> list[str]:
    """Renumber figures, tables and equations of chapter NN as (NN, 1), (NN, 2), ...

    Sphinx numbers them in one count across the whole book when the table of contents is
    not numbered; the chapter's own number is stabler than its position in ``_toc.yml``.
    """
    for docname, figtypes in env.toc_fignumbers.items():
        chapter = chapter_number(docname)
        if chapter is None:
            continue
        for numbers in figtypes.values():
            in_page_order = sorted(numbers, key=numbers.__getitem__)
            for position, node_id in enumerate(in_page_order, start=1):
                numbers[node_id] = (chapter, position)
    return []


# --- bibliography ----------------------------------------------------------------------


def author_year(entry) -> str:
    """'Vaswani et al., 2017': the citation text of sphinxcontrib-bibtex's author_year style."""
    last_name = find_plugin("pybtex.style.names", "last")()
    persons = entry.persons.get("author", [])
    names = [last_name.format(person, True).format().render_as("text") for person in persons]
    authors = f"{names[0]} et al." if len(names) > 2 else " and ".join(names)
    return f"{authors}, {entry.fields['year']}"


class AuthorYearLabels(BaseLabelStyle):
    """Bibliography labels that read like the citations in the text."""

    def format_labels(self, sorted_entries):
        seen: dict[str, int] = {}
        for entry in sorted_entries:
            label = author_year(entry)
            seen[label] = seen.get(label, 0) + 1
            yield label if seen[label] == 1 else f"{label}{'abcdefghij'[seen[label] - 1]}"


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries (URL and DOI as links), author-year labels, sorted by author."""

    default_label_style = "course_author_year"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "course_author_year", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "course_author_year", AuthorYearStyle)


# --- downloads -------------------------------------------------------------------------


def repository_parts(app: Sphinx) -> tuple[str, str, str]:
    """(url, "org/name", branch) of the repository named in ``_config.yml``."""
    options = app.config.html_theme_options
    url = options.get("repository_url", "").rstrip("/")
    path = urlparse(url).path.strip("/")
    return url, path, options.get("repository_branch") or "main"


def make_download_runnable(app: Sphinx, pagename: str, templatename, context, doctree) -> None:
    """Put the set-up cell into the ``.ipynb`` download that the theme just wrote."""
    if not context.get("ipynb_source"):
        return
    path = Path(app.outdir) / "_sources" / context["ipynb_source"]
    notebook = nbformat.read(path, as_version=4)
    if any(SETUP_TAG in cell.metadata.get("tags", []) for cell in notebook.cells):
        return
    url, _, _ = repository_parts(app)
    cell = nbformat.v4.new_code_cell(SETUP_CELL.format(url=url), metadata={"tags": [SETUP_TAG]})
    if notebook.nbformat_minor < 5:
        del cell["id"]
    first_code = next(
        (i for i, c in enumerate(notebook.cells) if c.cell_type == "code"), len(notebook.cells)
    )
    notebook.cells.insert(first_code, cell)
    nbformat.write(notebook, path)


def add_colab_links(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """After each download of a released exercise, a link that opens it in Colab."""
    _, org_and_name, branch = repository_parts(app)
    if not org_and_name:
        return
    for download in list(doctree.findall(addnodes.download_reference)):
        match = RELEASED_EXERCISE.search(download.get("reftarget", ""))
        if not match:
            continue
        url = f"{COLAB}/github/{org_and_name}/blob/{branch}/{match.group(0)}"
        link = nodes.reference("", "open it in Colab", refuri=url, classes=["colab-link"])
        parent = download.parent
        at = parent.index(download) + 1
        parent.insert(at, [nodes.Text(" (or "), link, nodes.Text(")")])


# --- scripts ---------------------------------------------------------------------------


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename, context, doctree) -> None:
    """Keep one copy of each script. sphinx-thebe and sphinx-togglebutton register their
    inline configuration twice, and a second ``const THEBE_JS_URL`` is a script error on
    every page."""
    unique, seen = [], set()
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        # an inline script is registered with filename None by some, "" by others
        key = (getattr(script, "filename", str(script)) or "", repr(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


# --- set-up ----------------------------------------------------------------------------


def add_static_folder(app: Sphinx, config) -> None:
    config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app: Sphinx) -> dict:
    os.environ[BUILD_FLAG] = "1"  # inherited by the kernels that execute the chapters
    app.connect("config-inited", add_static_folder)
    app.add_css_file("course_book.css")
    app.add_js_file("course_book.js")
    app.connect("env-get-updated", number_by_chapter, priority=900)
    app.connect("doctree-resolved", add_colab_links)
    app.connect("html-page-context", make_download_runnable, priority=900)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
