"""Rules every page of the book follows, read from the sources (nothing is built).

Pages are those of ``_toc.yml``, so a chapter is checked as soon as it joins the book.
Chapter ``chNN_*`` is chapter NN: its title reads "NN. Title" (the sidebar, the page title
and the previous/next links all show it), its exercise box "Exercise NN: ...".
"""

import re
import subprocess

import pytest
import yaml
from book_build import ROOT, config, toc_pages
from pybtex.database import parse_file

PAGES = toc_pages()
CHAPTERS = [page for page in PAGES if re.match(r"ch\d+_", page.rsplit("/", 1)[-1])]
CITATION = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
FIGURE_DIRECTIVE = re.compile(r"^```\{(?:glue:figure|figure)\}[^\n]*\n(.*?)^```", re.M | re.S)
MIN_ALT_WORDS = 6


def source(page: str) -> str:
    return (ROOT / f"{page}.md").read_text()


def chapter_number(page: str) -> int:
    return int(re.match(r"ch(\d+)_", page.rsplit("/", 1)[-1]).group(1))


def headings(text: str, level: int) -> list[str]:
    """Markdown headings of ``level`` outside code cells and fenced blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("#" * level + " "):
            found.append(line[level + 1 :].strip())
    return found


def cited_keys() -> dict[str, list[str]]:
    """Citation key -> the pages that cite it."""
    cited: dict[str, list[str]] = {}
    for page in PAGES:
        for group in CITATION.findall(source(page)):
            for key in group.split(","):
                cited.setdefault(key.strip(), []).append(page)
    return cited


def test_every_bibliography_entry_is_cited_and_every_citation_exists():
    entries = set(parse_file(ROOT / "references.bib").entries)
    cited = set(cited_keys())
    assert entries - cited == set(), "entries that no page cites: remove them or cite them"
    assert cited - entries == set(), "citations without an entry in references.bib"


def test_every_bibliography_entry_links_to_the_work():
    entries = parse_file(ROOT / "references.bib").entries
    unlinked = [key for key, entry in entries.items() if not {"doi", "url"} & set(entry.fields)]
    assert unlinked == [], "give these entries a doi or a url field"


def test_the_rules_find_what_they_look_for():
    """The readers of the sources see citations, headings and alt texts where they are."""
    text = "# 3. Title\n```{code-cell}\n# not a heading\n```\n## Part\n{cite:p}`a,b` {cite:t}`c`"
    assert headings(text, 1) == ["3. Title"] and headings(text, 2) == ["Part"]
    assert CITATION.findall(text) == ["a,b", "c"]
    figure = "```{glue:figure} x\n:name: fig-x\n:alt: A chart\n\nCaption.\n```\n"
    assert FIGURE_DIRECTIVE.findall(figure) == [":name: fig-x\n:alt: A chart\n\nCaption.\n"]


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_title_carries_its_number(page):
    titles = headings(source(page), 1)
    number = chapter_number(page)
    assert len(titles) == 1, f"{page} has {len(titles)} titles"
    assert re.match(rf"{number}\. \S", titles[0]), f"{titles[0]!r} should read '{number}. ...'"


@pytest.mark.parametrize("page", CHAPTERS)
def test_no_section_repeats_the_chapter_title(page):
    text = source(page)
    title = headings(text, 1)[0].split(". ", 1)[-1].lower()
    assert title not in [heading.lower() for heading in headings(text, 2)]


@pytest.mark.parametrize("page", CHAPTERS)
def test_exercise_box_is_numbered_like_its_chapter(page):
    boxes = re.findall(r"^```\{admonition\} (Exercise[^\n]*)", source(page), re.M)
    number = chapter_number(page)
    assert boxes, f"{page} has no exercise box"
    for box in boxes:
        assert box.startswith(f"Exercise {number}:"), box


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_has_a_describing_alt_text(page):
    for options in FIGURE_DIRECTIVE.findall(source(page)):
        alt = re.search(r"^:alt:(.*)$", options, re.M)
        assert alt, f"a figure of {page} has no :alt:"
        words = re.findall(r"[A-Za-z]{2,}", alt.group(1))
        assert len(words) >= MIN_ALT_WORDS, f"alt text too short: {alt.group(1)!r}"


def test_the_repository_url_is_named_in_config_only():
    url = config()["repository"]["url"]
    assert url.startswith("https://github.com/")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    naming = [
        name
        for name in tracked
        if (ROOT / name).is_file() and url in (ROOT / name).read_text(errors="replace")
    ]
    assert naming == ["_config.yml"]


def test_launch_buttons_and_pages_workflow_are_configured():
    settings = config()
    assert settings["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert settings["launch_buttons"]["jupyterhub_url"]
    assert settings["html"]["use_repository_button"] is True
    binder = (ROOT / ".binder" / "requirements.txt").read_text()
    runtime = (ROOT / ".binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-3.11"
    lock = f"requirements/lock-py{runtime.removeprefix('python-')}.txt"  # the runtime's lock
    assert f"-r ../{lock}" in binder.splitlines()
    assert (ROOT / lock).is_file()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text())
    assert workflow[True]["push"]["branches"] == ["main"]  # YAML reads the key `on` as True
    steps = workflow["jobs"]["build"]["steps"]
    assert any(step.get("run") == "bash scripts/build_book.sh" for step in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages"))
    assert upload["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]["steps"]
    assert deploy[0]["uses"].startswith("actions/deploy-pages@")
