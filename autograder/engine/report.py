"""The class report: one HTML page and the figures it shows, rebuilt with every run.

``<out>/report.html`` and ``<out>/report_files/*.png`` (matplotlib, nothing fetched from a
network) answer what an instructor asks after grading:

- how the scores of each function are spread (one histogram per function);
- how often every check failed, among the students who were graded;
- which known mistakes the feedback named, and for how many students, most common first;
- who was not graded, and why;
- whose hidden test cells passed in the notebook's kernel but not in the grader
  (suspected tampering), and which manual grades differ from the grader's.

The page is for the instructor: it names students and checks, never hidden inputs,
reference values or the seed.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

FIGURE_DPI = 110
PALETTE = ("#3b6ea8", "#d9822b", "#4c9a52", "#a8443b", "#7b5ea8", "#8c6d31", "#3b9aa8")
BAR_HEIGHT_INCHES = 0.26


# What the page counts ---------------------------------------------------------------------


def graded(records: Sequence[dict]) -> list[dict]:
    """The records whose checks ran (not missing, unreadable or a grader error)."""
    return [record for record in records if record["status"] == "graded"]


def failed_checks(records: Sequence[dict]) -> Counter:
    """How many of ``records`` failed each check, by check name."""
    return Counter(
        check["name"]
        for record in records
        for entry in record["functions"].values()
        for check in entry["checks"]
        if not check["passed"]
    )


def check_failures(battery, records: Sequence[dict]) -> list[tuple[str, str, int, int]]:
    """(check, function, students who failed it, students graded) for every check, the most
    failed first, ties by the battery's order."""
    ran = graded(records)
    failed = failed_checks(ran)
    rows = [(c.name, c.function, failed[c.name], len(ran)) for c in battery.checks]
    order = {name: index for index, (name, *_) in enumerate(rows)}
    return sorted(rows, key=lambda row: (-row[2], order[row[0]]))


def named_mistakes(records: Sequence[dict]) -> list[tuple[str, str, list[str]]]:
    """(function, mistake, students) for every known mistake the feedback named, the most
    common first; a student counts once per mistake, however many checks named it."""
    students: dict[tuple[str, str], set[str]] = {}
    for record in graded(records):
        for function, entry in record["functions"].items():
            for check in entry["checks"]:
                if check.get("mistake"):
                    key = (function, check["mistake"])
                    students.setdefault(key, set()).add(record["student"])
    rows = [(function, text, sorted(names)) for (function, text), names in students.items()]
    return sorted(rows, key=lambda row: (-len(row[2]), row[0], row[1]))


# Figures -------------------------------------------------------------------------------------


def score_histograms(battery, records: Sequence[dict], path: Path) -> Path:
    """One histogram per function: how many students got each score."""
    functions = battery.functions
    columns = min(3, len(functions))
    rows = -(-len(functions) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows), dpi=FIGURE_DPI, layout="constrained")
    ran = graded(records)
    for index, function in enumerate(functions):
        axes = figure.add_subplot(rows, columns, index + 1)
        maximum = battery.max_score(function)
        scores = [record["functions"][function]["score"] for record in ran]
        edges = _score_bins(maximum)
        axes.hist(scores, bins=edges, color="#3b6ea8", edgecolor="white")
        axes.set_title(function, fontsize=10)
        axes.set_xlabel(f"points (out of {maximum:g})")
        axes.set_ylabel("students")
        axes.set_xlim(edges[0], edges[-1])
        axes.yaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"Scores of the {len(ran)} graded students, per function", fontsize=11)
    figure.savefig(path)
    return path


def _score_bins(maximum: float) -> np.ndarray:
    """Bins centred on every half point (checks may be worth half a point), or wider ones
    for large maxima (at most about 20 bins)."""
    step = max(0.5, np.ceil(maximum / 10) / 2)
    return np.arange(-step / 2, maximum + step, step)


def failure_chart(rows: Sequence[tuple[str, str, int, int]], functions, path: Path) -> Path:
    """A horizontal bar per check: the share of graded students who failed it."""
    height = max(2.0, 0.9 + BAR_HEIGHT_INCHES * len(rows))
    figure = Figure(figsize=(8.5, height), dpi=FIGURE_DPI, layout="constrained")
    axes = figure.add_subplot()
    colours = dict(zip(functions, PALETTE * len(functions), strict=False))
    labels = [name for name, *_ in rows][::-1]
    rates = [100 * failed / total if total else 0 for _, _, failed, total in rows][::-1]
    axes.barh(labels, rates, color=[colours[f] for _, f, *_ in rows][::-1])
    axes.set_xlim(0, 100)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlabel("graded students who failed the check (%)")
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="x", color="#dddddd")
    axes.set_axisbelow(True)
    legend = [Patch(color=colour, label=function) for function, colour in colours.items()]
    figure.legend(handles=legend, fontsize=8, loc="outside upper center", ncols=3)
    figure.savefig(path)
    return path


# The page ------------------------------------------------------------------------------------


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 70em;
       color: #222; }
.table { overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; }
td.text { min-width: 16em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.none { color: #666; font-style: italic; }
"""


def write_report(out_dir: Path, battery, records: Sequence[dict], summary) -> Path:
    """Write ``report.html`` and its figures into ``out_dir``; return the page's path."""
    files = out_dir / "report_files"
    files.mkdir(exist_ok=True)
    failures = check_failures(battery, records)
    score_histograms(battery, records, files / "scores.png")
    failure_chart(failures, battery.functions, files / "checks.png")
    sections = [
        _overview(battery, records, summary),
        _scores_section(battery, records),
        _checks_section(failures),
        _mistakes_section(named_mistakes(records)),
        _not_graded_section(summary.not_graded),
        _suspects_section(summary.tampering),
        _manual_section(summary.manual),
        _students_section(battery, records),
    ]
    page = (
        f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(battery.assignment)}: class report</title>\n<style>{STYLE}</style>\n"
        f"</head>\n<body>\n{''.join(sections)}</body>\n</html>\n"
    )
    path = out_dir / "report.html"
    temporary = path.with_name(".report.html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path


def _e(value) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence], numeric=()) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(_cell(cell, index in numeric) for index, cell in enumerate(row))
        + "</tr>\n"
        for row in rows
    )
    return f"<div class='table'><table>\n<tr>{head}</tr>\n{body}</table></div>\n"


def _cell(value, numeric: bool) -> str:
    """A table cell; a sentence keeps a readable width on a narrow screen (the table scrolls)."""
    text = str(value)
    kind = " class='number'" if numeric else " class='text'" if len(text) > 40 else ""
    return f"<td{kind}>{_e(text)}</td>"


def _figure(name: str, description: str) -> str:
    """A figure of ``report_files/``, linked to itself: on a narrow screen, a tap opens it."""
    source = f"report_files/{name}"
    return f"<a href='{source}'><img src='{source}' alt='{_e(description)}'></a>\n"


def _none(text: str) -> str:
    return f"<p class='none'>{_e(text)}</p>\n"


def _number(value: float) -> str:
    return f"{value:g}"


def _overview(battery, records, summary) -> str:
    ran = graded(records)
    total = sum(battery.max_score(f) for f in battery.functions)
    mean = sum(r["score"] for r in ran) / len(ran) if ran else 0.0
    return (
        f"<h1>{_e(battery.assignment)}: class report</h1>\n"
        f"<p>{len(records)} students, {len(ran)} graded; mean score of the graded students "
        f"{mean:.2f} / {total:g}. Written {datetime.now():%Y-%m-%d %H:%M} from the grader's "
        f"records in <code>{_e(summary.out_dir)}</code>.</p>\n"
    )


def _scores_section(battery, records) -> str:
    return "<h2>Scores per function</h2>\n" + _figure(
        "scores.png",
        "One histogram per function: the number of graded students at each score, from"
        " zero to full marks.",
    )


def _checks_section(failures) -> str:
    rows = [
        (name, function, failed, total, f"{100 * failed / total:.0f}%" if total else "-")
        for name, function, failed, total in failures
    ]
    return (
        "<h2>Failure rate of every check</h2>\n"
        + _figure(
            "checks.png",
            "A horizontal bar per check: the percentage of graded students who failed it, the"
            " most failed at the top.",
        )
        + _table(("check", "function", "failed", "graded", "rate"), rows, numeric=(2, 3, 4))
    )


def _mistakes_section(mistakes) -> str:
    title = "<h2>Known mistakes named in the feedback</h2>\n"
    if not mistakes:
        return title + _none("The feedback named no known mistake.")
    rows = [(len(names), function, text, ", ".join(names)) for function, text, names in mistakes]
    return title + _table(("students", "function", "mistake", "who"), rows, numeric=(0,))


def _not_graded_section(not_graded) -> str:
    title = "<h2>Students not graded</h2>\n"
    if not not_graded:
        return title + _none("Every student was graded.")
    return title + _table(("student", "why"), sorted(not_graded.items()))


def _suspects_section(suspects) -> str:
    title = "<h2>Suspected tampering</h2>\n"
    if not suspects:
        return title + _none(
            "No hidden test cell scored more in the notebook's kernel than in the grader."
        )
    rows = [
        (s.student, s.function, _number(s.kernel_score), _number(s.engine_score)) for s in suspects
    ]
    note = (
        "<p>These hidden test cells scored more in the notebook's kernel, where the student's"
        " code runs and can change them, than in the sandboxed grader, whose score counts."
        " The submissions are flagged in formgrader.</p>\n"
    )
    return title + note + _table(("student", "function", "kernel", "grader"), rows, (2, 3))


def _manual_section(manual) -> str:
    title = "<h2>Manual grades that differ from the grader's</h2>\n"
    if not manual:
        return title + _none("None.")
    rows = [
        (
            m.student,
            m.function,
            _number(m.manual_score),
            _number(m.engine_score),
            "overwritten" if m.overwritten else "kept",
        )
        for m in manual
    ]
    return title + _table(("student", "function", "manual", "grader", "now"), rows, (2, 3))


def _students_section(battery, records) -> str:
    functions = battery.functions
    rows = []
    for record in records:
        if record["status"] == "error":
            rows.append((record["student"], *["-"] * len(functions), "-"))
            continue
        scores = [_number(record["functions"][f]["score"]) for f in functions]
        rows.append((record["student"], *scores, _number(record["score"])))
    numeric = tuple(range(1, len(functions) + 2))
    return "<h2>Every student</h2>\n" + _table(("student", *functions, "total"), rows, numeric)
