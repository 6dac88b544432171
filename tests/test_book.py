"""The book builds warning-free with every chapter executed, and leaks nothing."""

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import ROOT, find_leaks

pytestmark = pytest.mark.slow


def build(folder: Path) -> subprocess.CompletedProcess:
    """Build the book in ``folder`` as the README's command does."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [str(jupyter_book), "build", ".", "--warningiserror", "--nitpick", "--keep-going"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def built_book():
    """The course's book, built (from the execution cache where it is fresh)."""
    run = build(ROOT)
    assert run.returncode == 0, (
        f"the book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    return ROOT / "_build" / "html"


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
