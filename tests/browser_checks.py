"""What a reader's browser shows of the built book, checked in headless Chromium.

Each check takes a loaded Playwright page (after ``visit``) and returns a list of problems
in words, empty when the page is fine, so that the same functions serve the test of the
real book and the tests that prove each check can fail (small HTML fixtures).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM = Path("/usr/bin/chromium")
# The network is closed: nothing may try to reach it (updates, field trials, sign-in).
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-gpu",
]
DESKTOP, PHONE = 1280, 400  # CSS px widths of the viewport
MIN_TEXT_PX = 9.0  # the smallest figure text a phone reader can be asked to read
MIN_CONTRAST = 4.5  # WCAG AA for body-size text
MIN_ALT_WORDS = 6  # an alt text describes the figure; a file name or "figure" does not
MATHJAX_SCRIPT_WAIT_MS = 2_000  # after the load event
MATHJAX_TYPESET_WAIT_MS = 15_000
LOCAL_SCHEMES = {"file", "data", "blob", "about"}


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (requirements.txt has it)"
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        return (
            f"headless Chromium is not installed at {CHROMIUM} (the Debian package chromium; "
            "scripts/test.sh installs it with apt-get when it runs as root)"
        )
    return None


@dataclass
class Visit:
    """What happened while a page loaded: console errors and every request."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)


def visit(page, url: str) -> Visit:
    """Load ``url`` in ``page`` and wait until MathJax (if any) has typeset the maths."""
    seen = Visit(url)
    page.on("console", lambda m: m.type == "error" and seen.console_errors.append(m.text))
    page.on("pageerror", lambda error: seen.console_errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "requestfailed",
        lambda request: seen.failed_requests.append(f"{request.url} ({request.failure})"),
    )
    page.on(
        "response",
        lambda response: (
            response.status >= 400
            and seen.failed_requests.append(f"{response.url} (HTTP {response.status})")
        ),
    )
    page.goto(url, wait_until="load")
    page.evaluate(
        """async ([scriptWait, typesetWait]) => {
            // Deferred scripts have run by the load event; an async one may come a little
            // later. The page configures window.MathJax before the script replaces it.
            const started = Date.now();
            const hasScript = [...document.scripts].some((s) => /mathjax/i.test(s.src));
            while (hasScript && !(window.MathJax && window.MathJax.startup)
                   && Date.now() - started < scriptWait) {
                await new Promise((r) => setTimeout(r, 50));
            }
            if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
                await Promise.race([window.MathJax.startup.promise,
                                    new Promise((r) => setTimeout(r, typesetWait))]);
            }
        }""",
        [MATHJAX_SCRIPT_WAIT_MS, MATHJAX_TYPESET_WAIT_MS],
    )
    return seen


# --- what happened while loading --------------------------------------------------------


def console_problems(seen: Visit) -> list[str]:
    return [f"console error: {text}" for text in seen.console_errors]


def request_problems(seen: Visit) -> list[str]:
    """Failed requests, and any request that leaves the built site."""
    problems = [f"failed request: {failed}" for failed in seen.failed_requests]
    for url in seen.requests:
        if urlparse(url).scheme not in LOCAL_SCHEMES:
            problems.append(f"external request: {url}")
    return problems


# --- maths ------------------------------------------------------------------------------

RAW_TEX_JS = """() => {
    const problems = [];
    const article = document.querySelector("main") || document.body;
    for (const el of article.querySelectorAll(".math")) {
        if (!el.querySelector("mjx-container")) {
            problems.push("maths not typeset: " + el.textContent.trim().slice(0, 60));
        }
    }
    const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        if (node.parentElement.closest("pre, code, script, style, mjx-container, .math")) {
            continue;
        }
        const text = node.textContent;
        if (/\\\\\\(|\\\\\\[|\\$\\$|\\\\begin\\{/.test(text)) {
            problems.push("raw TeX in the text: " + text.trim().slice(0, 60));
        }
    }
    return problems;
}"""


def raw_tex_problems(page) -> list[str]:
    """Maths that MathJax did not typeset, or TeX delimiters left in the text."""
    return page.evaluate(RAW_TEX_JS)


# --- figures ----------------------------------------------------------------------------

IMAGES_JS = """() => [...document.images].map((img) => ({
    src: img.currentSrc || img.src,
    alt: img.getAttribute("alt"),
    loaded: img.complete && img.naturalWidth > 0,
    content: !!img.closest("main figure, main .cell_output, main .section, main section"),
    width: img.getBoundingClientRect().width,
}))"""

HASH_LIKE = re.compile(r"^[0-9a-f]{16,}$")


def images(page) -> list[dict]:
    return page.evaluate(IMAGES_JS)


def alt_text_problem(alt: str | None, src: str) -> str | None:
    """Why ``alt`` does not describe a figure, or None when it does."""
    if not alt or not alt.strip():
        return "no alt text"
    stem = Path(urlparse(src).path).stem
    words = re.findall(r"[A-Za-z]{2,}", alt)
    if (stem and stem in alt) or HASH_LIKE.match(Path(alt).stem) or "/" in alt.split()[0]:
        return f"alt text is a file name: {alt[:60]!r}"
    if len(words) < MIN_ALT_WORDS:
        return f"alt text too short to describe the figure: {alt!r}"
    return None


def figure_problems(page) -> list[str]:
    """Every image loads; every figure of the text has a real alt text."""
    problems = []
    for image in images(page):
        name = Path(urlparse(image["src"]).path).name
        if not image["loaded"]:
            problems.append(f"image does not load: {name}")
        if image["content"]:
            why = alt_text_problem(image["alt"], image["src"])
            if why:
                problems.append(f"{name}: {why}")
    return problems


# --- downloads --------------------------------------------------------------------------

DOWNLOADS_JS = """() => [...document.querySelectorAll(
        "a.download, a[download], .dropdown-download-buttons a, a.colab-link")]
    .map((a) => a.href)"""


def download_links(page) -> list[str]:
    return page.evaluate(DOWNLOADS_JS)


def local_path(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def download_problems(page, *, exercise_expected: bool) -> list[str]:
    """Every local download link resolves to a file; a chapter offers its exercise and
    itself as a notebook."""
    problems = []
    links = download_links(page)
    for url in links:
        path = local_path(url)
        if path is not None and not path.is_file():
            problems.append(f"download link does not resolve: {url}")
    if exercise_expected:
        if not any("/_downloads/" in url and url.endswith(".ipynb") for url in links):
            problems.append("no download of the chapter's exercise notebook")
        if not any("/_sources/" in url and url.endswith(".ipynb") for url in links):
            problems.append("the chapter is not offered as an .ipynb notebook")
    return problems


# --- figure text on a phone -------------------------------------------------------------

# Matplotlib draws SVG text as glyph outlines whose em is 100 units (its TextToPath scale);
# the glyph's screen transform gives its rendered size in CSS px, sub- and superscripts
# included. Real <text> elements (svg.fonttype "none") are measured by their font size.
GLYPH_SIZES_JS = """() => {
    const sizes = [];
    const scale = (m) => Math.hypot(m.a, m.b);
    for (const group of document.querySelectorAll("svg g[id^='text_']")) {
        const glyphs = group.querySelectorAll("use");
        const texts = group.querySelectorAll("text");
        let largest = 0;
        for (const glyph of glyphs) largest = Math.max(largest, 100 * scale(glyph.getScreenCTM()));
        for (const text of texts) {
            const size = parseFloat(getComputedStyle(text).fontSize);
            largest = Math.max(largest, size * scale(text.getScreenCTM()));
        }
        if (largest > 0) {
            const comment = [...group.childNodes].find((n) => n.nodeType === Node.COMMENT_NODE);
            const label = comment ? comment.textContent.trim() : group.id;
            sizes.push([label, largest]);
        }
    }
    return sizes;
}"""


def svg_text_sizes(scratch, svg_source: str, width_px: float) -> list[tuple[str, float]]:
    """(text, CSS px) of every text of an SVG figure shown ``width_px`` wide."""
    svg = re.sub(r"^<\?xml[^>]*>\s*(<!DOCTYPE[^>]*>)?", "", svg_source.lstrip())
    scratch.set_content(
        "<!DOCTYPE html><html><body style='margin:0'>"
        f"<div id='figure' style='width:{width_px}px'>{svg}</div></body></html>"
    )
    scratch.evaluate(
        """() => { const svg = document.querySelector('#figure svg');
                   svg.setAttribute('width', '100%'); svg.removeAttribute('height');
                   svg.style.height = 'auto'; }"""
    )
    return [tuple(size) for size in scratch.evaluate(GLYPH_SIZES_JS)]


def small_figure_text_problems(page, scratch) -> list[str]:
    """Text of SVG figures rendered smaller than MIN_TEXT_PX at the page's width."""
    problems = []
    for image in images(page):
        path = local_path(image["src"])
        if not image["content"] or path is None or path.suffix != ".svg" or not path.is_file():
            continue
        sizes = svg_text_sizes(scratch, path.read_text(), image["width"])
        small = [(text, px) for text, px in sizes if px < MIN_TEXT_PX - 1e-3]
        if small:
            shown = ", ".join(f"{text!r} {px:.1f} px" for text, px in small[:4])
            problems.append(f"{path.name}: {len(small)} texts below {MIN_TEXT_PX} px: {shown}")
    return problems


# --- layout on a phone ------------------------------------------------------------------

OVERFLOW_JS = """() => {
    const problems = [];
    const width = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth > width + 1) {
        problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth}px`
                      + ` wide in a ${width}px viewport`);
    }
    const article = document.querySelector("article") || document.querySelector("main");
    const text = "p, li, dt, dd, figcaption, h1, h2, h3, h4, blockquote, div.cell_output pre";
    for (const el of article.querySelectorAll(text)) {
        if (el.closest(".math, mjx-container, table")) continue;
        const box = el.getBoundingClientRect();
        if (box.width === 0) continue;  // hidden (a collapsed cell, for instance)
        const clipped = el.scrollWidth > el.clientWidth + 1;
        const offscreen = box.right > width + 1;
        if (clipped || offscreen) {
            problems.push(`text overflows (${el.tagName.toLowerCase()}): `
                          + el.textContent.trim().slice(0, 60));
        }
    }
    for (const container of article.querySelectorAll("mjx-container[display='true']")) {
        const maths = container.querySelector("mjx-math");
        const needed = maths ? maths.getBoundingClientRect().width : 0;
        if (needed > container.clientWidth + 1) {
            const number = container.parentElement.querySelector("span.eqno");
            problems.push(`equation ${number ? number.textContent.trim() : ""} is wider than `
                          + `the screen: ${Math.round(needed)}px in ${container.clientWidth}px`);
        }
    }
    return problems;
}"""


def overflow_problems(page) -> list[str]:
    """Prose, equations or printed results that run off the screen or hide behind a scroll
    bar."""
    return page.evaluate(OVERFLOW_JS)


# --- captions ---------------------------------------------------------------------------

CONTRAST_JS = """(minimum) => {
    const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
    const channel = (v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    };
    const luminance = ([r, g, b]) =>
        0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    const background = (el) => {
        for (; el; el = el.parentElement) {
            const c = rgb(getComputedStyle(el).backgroundColor);
            if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const problems = [];
    for (const caption of document.querySelectorAll("main figcaption")) {
        // every element that holds caption text itself, not only the caption's box
        const walker = document.createTreeWalker(caption, NodeFilter.SHOW_TEXT);
        const holders = new Set();
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            if (node.textContent.trim() && !node.parentElement.closest("a, mjx-container")) {
                holders.add(node.parentElement);
            }
        }
        for (const el of holders) {
            const style = getComputedStyle(el);
            const fg = luminance(rgb(style.color));
            const bg = luminance(background(el));
            const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
            const text = el.textContent.trim().slice(0, 40);
            if (ratio < minimum) {
                problems.push(`caption contrast ${ratio.toFixed(2)}:1 is below ${minimum}:1: `
                              + text);
            }
            if (parseInt(style.fontWeight, 10) < 400) {
                problems.push(`caption text in a thin font (weight ${style.fontWeight}): ${text}`);
            }
        }
    }
    return problems;
}"""


def contrast_problems(page) -> list[str]:
    """Caption text with too little contrast against its background, or in a thin font."""
    return page.evaluate(CONTRAST_JS, MIN_CONTRAST)


# --- navigation -------------------------------------------------------------------------

NAVIGATION_JS = """() => {
    const visible = (el) => { const b = el.getBoundingClientRect();
                              return b.width > 0 && b.height > 0
                                     && getComputedStyle(el).visibility !== "hidden"; };
    return {
        searchBoxes: [...document.querySelectorAll(".search-button-field")].filter(visible).length,
        header: [...document.querySelectorAll("header.bd-header")].filter(visible).length,
        previous: !!document.querySelector("a.left-prev"),
        next: !!document.querySelector("a.right-next"),
    };
}"""


def navigation_problems(page, *, first: bool, last: bool) -> list[str]:
    """One search box, no empty header bar, previous and next links where they exist."""
    found = page.evaluate(NAVIGATION_JS)
    problems = []
    if found["searchBoxes"] > 1:
        problems.append(f"{found['searchBoxes']} search boxes are visible")
    if found["header"]:
        problems.append("a header bar above the page is visible")
    if not first and not found["previous"]:
        problems.append("no link to the previous page")
    if not last and not found["next"]:
        problems.append("no link to the next page")
    return problems
