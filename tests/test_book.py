"""The book builds warning-free with every chapter executed, and leaks nothing."""

import html
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from book_build import build, toc_pages
from bs4 import BeautifulSoup
from leaks import ROOT, find_leaks
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

pytestmark = pytest.mark.slow


CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
# A chapter

```{{code-cell}} ipython3
{code}
```
"""


@pytest.mark.parametrize(
    "code, builds",
    [
        ("print('a sound chapter')", True),
        ("raise ValueError('a broken chapter')", False),
        ("import warnings\nwarnings.warn('a warning')", False),
    ],
    ids=["sound", "cell error", "warning"],
)
def test_a_chapter_that_breaks_or_warns_fails_the_build(tmp_path, code, builds):
    shutil.copy(ROOT / "_config.yml", tmp_path)
    shutil.copy(ROOT / "references.bib", tmp_path)
    shutil.copytree(ROOT / "book" / "_ext", tmp_path / "book" / "_ext")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: chapter\n")
    (tmp_path / "chapter.md").write_text(CHAPTER.format(code=code))
    run = build(tmp_path)
    assert (run.returncode == 0) == builds, run.stdout[-3000:]


def test_book_has_an_index(built_book):
    assert (built_book / "index.html").is_file()
    assert (built_book / "book" / "intro.html").is_file()


def test_every_toc_page_is_built(built_book):
    toc = (ROOT / "_toc.yml").read_text()
    for line in toc.splitlines():
        entry = line.strip().removeprefix("- ").strip()
        for key in ("root:", "file:"):
            if entry.startswith(key):
                page = entry.removeprefix(key).strip()
                assert (built_book / f"{page}.html").is_file(), page


def test_hidden_folders_are_not_rendered(built_book):
    for folder in ("solutions", "autograder", "exercises", "tests"):
        assert not list(built_book.rglob(f"{folder}/*.html")), folder


def test_book_leaks_no_marker_and_no_reference_code(built_book):
    leaks = {}
    for path in built_book.rglob("*"):
        if path.suffix in {".html", ".txt", ".md", ".ipynb", ".py", ".js"} and path.is_file():
            text = path.read_text(errors="replace")
            found = find_leaks(text) + find_leaks(html.unescape(text))
            if found:
                leaks[str(path.relative_to(built_book))] = sorted(set(found))[:5]
    assert not leaks, f"hidden material in the built book: {leaks}"


def test_chapters_offer_their_current_exercise_for_download(built_book):
    releases = sorted((ROOT / "exercises" / "release").glob("*/*.ipynb"))
    assert releases, "no released exercise"
    for release in releases:
        page = built_book / "book" / f"{release.stem}.html"
        links = re.findall(rf'href="(\.\./_downloads/[^"]*/{release.name})"', page.read_text())
        assert links, f"{page.name} has no download link to {release.name}"
        downloaded = (page.parent / links[0]).resolve()
        assert downloaded.read_bytes() == release.read_bytes(), "the download is out of date"


# --- what readers meet: numbering, citations, runnable downloads ----------------------------

CHAPTERS = [page for page in toc_pages() if re.match(r"ch\d+_", Path(page).name)]


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(), "html.parser")


def chapter_number(page: str) -> int:
    return int(re.match(r"ch(\d+)_", Path(page).name).group(1))


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_numbers_figures_and_equations_by_its_own_number(built_book, page):
    html = soup(built_book / f"{page}.html")
    number = chapter_number(page)
    captions = [span.get_text(strip=True) for span in html.select("span.caption-number")]
    equations = [span.get_text(strip=True).rstrip("#") for span in html.select("span.eqno")]
    assert captions, f"{page} has no numbered figure"
    assert captions == [f"Fig. {number}.{k}" for k in range(1, len(captions) + 1)]
    assert equations == [f"({number}.{k})" for k in range(1, len(equations) + 1)]


@pytest.mark.parametrize("page", CHAPTERS)
def test_sidebar_page_title_and_heading_show_the_chapter_number(built_book, page):
    html = soup(built_book / f"{page}.html")
    heading = html.select_one("article h1").get_text(strip=True).rstrip("#")
    sidebar = html.select_one("nav.bd-links a.current").get_text(strip=True)
    assert heading.startswith(f"{chapter_number(page)}. ")
    assert sidebar == heading
    assert html.title.get_text().startswith(heading)


def test_bibliography_labels_read_like_the_citations(built_book):
    """Every citation link shows the author-year label of the entry it points to."""
    entries = soup(built_book / "book" / "references.html").select("div.citation")
    labels = {entry["id"]: entry.select_one("span.label").get_text() for entry in entries}
    assert labels and all(re.fullmatch(r"\[\D+, \d{4}[a-z]?\]", label) for label in labels.values())
    assert all(entry.select("a.reference.external") for entry in entries), "an entry has no link"

    def words(text: str) -> str:
        return " ".join(re.sub(r"[\[\](),;]", " ", text).split())

    checked = 0
    for page in toc_pages():
        for citation in soup(built_book / f"{page}.html").select("span.bibtex-citation"):
            for link in citation.select("a[href*='references.html#']"):
                label = labels[link["href"].split("#")[1]]
                assert words(label) in words(citation.get_text()), (page, citation.get_text())
                checked += 1
    assert checked > 0


def run_notebook(path: Path, cwd: Path) -> None:
    """Execute ``path`` in a fresh kernel started in ``cwd``, without the build's
    environment (no PYTHONPATH, no book-build flag)."""
    notebook = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "ATTENTION_BOOK_BUILD"}}
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)


@pytest.mark.parametrize("page", CHAPTERS)
def test_downloaded_chapter_runs_in_a_fresh_kernel_from_the_repository_root(built_book, page):
    download = built_book / "_sources" / f"{page}.ipynb"
    assert download.is_file(), f"{page} is not offered as .ipynb"
    first_code = next(c for c in nbformat.read(download, 4).cells if c.cell_type == "code")
    assert "course-setup" in first_code.metadata.get("tags", [])
    run_notebook(download, ROOT)


def test_downloaded_chapter_outside_the_repository_says_what_it_needs(built_book, tmp_path):
    download = built_book / "_sources" / f"{CHAPTERS[0]}.ipynb"
    notebook = nbformat.read(download, as_version=4)
    setup = next(c for c in notebook.cells if "course-setup" in c.metadata.get("tags", []))
    notebook.cells = [setup]
    alone = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, alone)
    with pytest.raises(CellExecutionError, match="needs the course repository: clone https://"):
        run_notebook(alone, tmp_path)
