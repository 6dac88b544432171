"""The built book as readers meet it: every page of ``_toc.yml`` in headless Chromium.

At 1280 px (a desktop) and 400 px (a phone), from ``_build/html`` without any network:
no console errors, no failed or external requests, every equation typeset, every figure
loaded and described, every download resolving; on the phone no figure text below 9 CSS
px and no text running off the screen. Screenshots of every page at both widths go to
``_build/screenshots/`` for a person to look at.

The tests of the checks themselves (small HTML fixtures, and copies of the built site
broken on purpose) prove that each check can fail.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import browser_checks as bc
import matplotlib.pyplot as plt
import pytest
from book_build import ROOT, toc_pages

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = toc_pages()


@pytest.fixture(scope="module")
def browser():
    reason = bc.chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(bc.CHROMIUM), args=bc.CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser):
    """A fresh page with a desktop viewport, and a scratch page for measuring SVGs."""
    context = browser.new_context(viewport={"width": bc.DESKTOP, "height": 900})
    yield context.new_page(), context.new_page()
    context.close()


def is_chapter(docname: str) -> bool:
    return Path(docname).name.startswith("ch")


def read_page(browser, html: Path, width: int, docname: str) -> list[str]:
    """Every check of one page at one width; saves its screenshot."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page, scratch = context.new_page(), context.new_page()
        seen = bc.visit(page, html.as_uri())
        problems = bc.console_problems(seen) + bc.request_problems(seen)
        problems += bc.raw_tex_problems(page) + bc.figure_problems(page)
        problems += bc.download_problems(page, exercise_expected=is_chapter(docname))
        problems += bc.navigation_problems(
            page, first=docname == PAGES[0], last=docname == PAGES[-1]
        )
        if width == bc.PHONE:
            problems += bc.small_figure_text_problems(page, scratch)
            problems += bc.overflow_problems(page)
        else:
            problems += bc.contrast_problems(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"{docname.replace('/', '_')}_{width}.png"
        page.screenshot(path=shot, full_page=True)
        return problems
    finally:
        context.close()


@pytest.mark.parametrize("docname", PAGES)
def test_page_reads_well_on_desktop_and_phone(built_book, browser, docname):
    html = built_book / f"{docname}.html"
    assert html.is_file(), f"{docname} is in _toc.yml but was not built"
    problems = {width: read_page(browser, html, width, docname) for width in (bc.DESKTOP, bc.PHONE)}
    assert problems == {bc.DESKTOP: [], bc.PHONE: []}, json.dumps(problems, indent=1)


# --- the checks can fail: small pages -------------------------------------------------------


def fixture_page(tmp_path: Path, body: str, head: str = "") -> str:
    path = tmp_path / "page.html"
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'>{head}</head>"
        f"<body><main>{body}</main></body></html>"
    )
    return path.as_uri()


def test_untypeset_maths_is_found(tab, tmp_path):
    page, _ = tab
    body = r'<p>A score <span class="math">\(\sqrt{d_k}\)</span> and a stray \(q\).</p>'
    bc.visit(page, fixture_page(tmp_path, body))
    assert bc.raw_tex_problems(page) == [
        r"maths not typeset: \(\sqrt{d_k}\)",
        r"raw TeX in the text: and a stray \(q\).",
    ]


def test_maths_typeset_by_the_books_own_mathjax_passes(built_book, tab, tmp_path):
    page, _ = tab
    mathjax = (built_book / "_static" / "mathjax" / "tex-chtml.js").as_uri()
    url = fixture_page(
        tmp_path,
        r'<p>A score <span class="math">\(\sqrt{d_k}\)</span></p>',
        f'<script defer src="{mathjax}"></script>',
    )
    seen = bc.visit(page, url)
    assert bc.raw_tex_problems(page) == []
    assert bc.request_problems(seen) == [] and bc.console_problems(seen) == []


def test_missing_figures_and_file_name_alt_texts_are_found(tab, tmp_path):
    page, _ = tab
    good = tmp_path / "good.svg"
    good.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    body = (
        "<figure><img src='missing.svg' alt='A line chart of the loss falling over steps'>"
        "</figure><figure><img src='good.svg' alt='../_images/85545e72e90c2ddc2dd1.svg'>"
        "</figure><figure><img src='good.svg' alt='figure'></figure>"
        "<figure><img src='good.svg' alt='A heat map of attention weights, brightest on "
        "the diagonal'></figure>"
    )
    seen = bc.visit(page, fixture_page(tmp_path, body))
    problems = bc.figure_problems(page)
    assert problems == [
        "image does not load: missing.svg",
        "good.svg: alt text is a file name: '../_images/85545e72e90c2ddc2dd1.svg'",
        "good.svg: alt text too short to describe the figure: 'figure'",
    ]
    assert any("missing.svg" in failed for failed in seen.failed_requests)


def test_broken_downloads_are_found(tab, tmp_path):
    page, _ = tab
    (tmp_path / "_downloads").mkdir()
    (tmp_path / "_downloads" / "there.ipynb").write_text("{}")
    body = (
        "<a class='download' href='_downloads/there.ipynb'>ok</a>"
        "<a class='download' href='_downloads/gone.ipynb'>gone</a>"
    )
    bc.visit(page, fixture_page(tmp_path, body))
    problems = bc.download_problems(page, exercise_expected=True)
    assert len(problems) == 2
    assert "gone.ipynb" in problems[0]
    assert problems[1] == "the chapter is not offered as an .ipynb notebook"


def test_external_requests_and_console_errors_are_found(tab, tmp_path):
    page, _ = tab
    body = "<script>console.error('broken widget')</script><img src='https://cdn.invalid/x.js'>"
    seen = bc.visit(page, fixture_page(tmp_path, body))
    assert "console error: broken widget" in bc.console_problems(seen)
    assert "external request: https://cdn.invalid/x.js" in bc.request_problems(seen)


def svg_with_text(path: Path, width_in: float, font_pt: float) -> str:
    """An SVG figure ``width_in`` wide with a word and a symbol of ``font_pt`` points."""
    fig = plt.figure(figsize=(width_in, 1.0))
    fig.text(0.1, 0.4, "Label", fontsize=font_pt)
    fig.text(0.5, 0.4, "$d_k$", fontsize=font_pt)
    with plt.rc_context({"svg.fonttype": "path"}):
        fig.savefig(path, format="svg")
    plt.close(fig)
    return path.read_text()


@pytest.mark.parametrize("font_pt", [6.0, 12.0])
def test_svg_text_is_measured_at_its_rendered_size(tab, tmp_path, font_pt):
    """A text of s pt in a figure w in wide, shown W px wide, is s * 4/3 * W / (96 w) px."""
    _, scratch = tab
    width_in, shown_px = 6.0, 340
    svg = svg_with_text(tmp_path / "figure.svg", width_in, font_pt)
    sizes = bc.svg_text_sizes(scratch, svg, shown_px)
    expected = font_pt * 4 / 3 * shown_px / (96 * width_in)
    assert [text for text, _ in sizes] == ["Label", "$d_k$"]
    for _, px in sizes:
        assert px == pytest.approx(expected, rel=0.03)


def test_small_figure_text_is_found(tab, tmp_path):
    page, scratch = tab
    svg_with_text(tmp_path / "small.svg", 6.0, 6.0)
    svg_with_text(tmp_path / "large.svg", 6.0, 14.0)
    alt = "alt='A one-line figure with a label and a symbol in it'"
    body = f"<figure><img src='small.svg' {alt}></figure><figure><img src='large.svg' {alt}>"
    page.set_viewport_size({"width": bc.PHONE, "height": 800})
    bc.visit(page, fixture_page(tmp_path, f"<div style='width:340px'>{body}</div>"))
    problems = bc.small_figure_text_problems(page, scratch)
    assert len(problems) == 1 and problems[0].startswith("small.svg: 2 texts below")


def test_overflowing_text_is_found(tab, tmp_path):
    page, _ = tab
    page.set_viewport_size({"width": bc.PHONE, "height": 800})
    body = textwrap.dedent(
        """
        <p>A paragraph that wraps as paragraphs do, over several lines on a phone.</p>
        <div class="cell_output"><pre style="overflow-x: auto">sequences right 100.0 % """
        + "x" * 80
        + "</pre></div>"
    )
    bc.visit(page, fixture_page(tmp_path, body))
    problems = bc.overflow_problems(page)
    clipped = ("sequences right 100.0 % " + "x" * 80)[:60]
    assert problems == [f"text overflows (pre): {clipped}"]


@pytest.mark.parametrize("with_book_script", [False, True])
def test_too_wide_equations_are_found_unless_the_book_fits_them(
    built_book, tab, tmp_path, with_book_script
):
    page, _ = tab
    page.set_viewport_size({"width": bc.PHONE, "height": 800})
    static = built_book / "_static"
    head = f'<script defer src="{(static / "mathjax" / "tex-chtml.js").as_uri()}"></script>'
    if with_book_script:
        head += f'<script src="{(static / "course_book.js").as_uri()}"></script>'
    terms = " + ".join(f"q_{{{i}}} k_{{{i}}}" for i in range(9))
    body = f'<div class="math">\\[ s = {terms} \\]</div>'
    bc.visit(page, fixture_page(tmp_path, body, head))
    problems = bc.overflow_problems(page)
    if with_book_script:
        assert problems == []
    else:
        assert problems[-1].startswith("equation  is wider than the screen: ")


def test_low_contrast_captions_are_found(tab, tmp_path):
    page, _ = tab
    body = (
        "<figure><figcaption style='color:#aaa'>Grey on white</figcaption></figure>"
        "<figure><figcaption style='color:#222'><span style='color:#bbb'>Fig. 1</span> "
        "<span style='font-weight:300'>Thin</span> Dark on white</figcaption></figure>"
    )
    bc.visit(page, fixture_page(tmp_path, body))
    assert bc.contrast_problems(page) == [
        "caption contrast 2.32:1 is below 4.5:1: Grey on white",
        "caption contrast 1.92:1 is below 4.5:1: Fig. 1",
        "caption text in a thin font (weight 300): Thin",
    ]


def test_navigation_problems_are_found(tab, tmp_path):
    page, _ = tab
    body = (
        "<header class='bd-header'><button class='search-button-field'>Search</button></header>"
        "<button class='search-button-field'>Search</button>"
    )
    bc.visit(page, fixture_page(tmp_path, body))
    assert bc.navigation_problems(page, first=False, last=False) == [
        "2 search boxes are visible",
        "a header bar above the page is visible",
        "no link to the previous page",
        "no link to the next page",
    ]


# --- the checks can fail: the real site, broken on purpose ----------------------------------


def first_chapter() -> str:
    return next(page for page in PAGES if is_chapter(page))


def break_site(site: Path, damage: str, chapter: str) -> None:
    page = site / f"{chapter}.html"
    if damage == "maths":
        shutil.rmtree(site / "_static" / "mathjax")
    elif damage == "figure":
        text = page.read_text()
        image = text[text.index("../_images/") :].split('"')[0]
        (page.parent / image).unlink()
    elif damage == "download":
        shutil.rmtree(site / "_downloads")


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("maths", "maths not typeset"),
        ("figure", "image does not load"),
        ("download", "download link does not resolve"),
    ],
)
def test_a_broken_copy_of_the_site_fails(built_book, browser, tmp_path, damage, expected):
    chapter = first_chapter()
    site = tmp_path / "html"
    shutil.copytree(built_book, site, ignore=shutil.ignore_patterns("*.png"))
    break_site(site, damage, chapter)
    context = browser.new_context(viewport={"width": bc.DESKTOP, "height": 900})
    page = context.new_page()
    seen = bc.visit(page, (site / f"{chapter}.html").as_uri())
    problems = bc.request_problems(seen) + bc.raw_tex_problems(page)
    problems += bc.figure_problems(page) + bc.download_problems(page, exercise_expected=True)
    context.close()
    assert any(expected in problem for problem in problems), problems


def test_without_chromium_the_tests_say_why(monkeypatch):
    monkeypatch.setattr(bc, "CHROMIUM", Path("/nonexistent/chromium"))
    reason = bc.chromium_missing_reason()
    assert "the Debian package chromium" in reason and "apt-get" in reason
