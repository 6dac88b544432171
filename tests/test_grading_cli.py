"""The grading engine end to end: notebooks in, gradebook, JSON, feedback and summary out.

A course notebook is built here from the chapter 3 reference (answer cells, visible
checks, hidden test cells that hold a leak marker), then a folder of submissions:
honest, a known mistake, blank, corrupt JSON, a stripped grade_id, a duplicated
answer cell, an answer cell turned markdown, test cells stripped of their metadata,
and a student folder without a notebook. Submissions run in ``Worker`` when the
sandbox module is present, else in ``InProcessWorker`` (same interface, no sandbox).
"""

from __future__ import annotations

import copy
import csv
import html
import inspect
import io
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from autograder.engine import cli, grading
from autograder.engine.notebook import KnownCells, read_submission
from autograder.kit.battery import Battery, Check, Mutant
from autograder.kit.judges import match_reference
from autograder.runtime.executor import Call, execute_call
from solutions import ch03_self_attention as reference

ASSIGNMENT = "ch03_self_attention"
FUNCTIONS = ["scaled_dot_product_attention", "self_attention", "sinusoidal_positional_encoding"]
LEAK = "LEAK-MARKER-hidden-tests-5f0c"
SEED = 982451653123
VENV_BIN = Path(sys.executable).parent
SDPA_OPERATION = "F.scaled_dot_product_attention"
CELL_IDS = itertools.count()


# A small battery and an in-process worker ---------------------------------------------


def _sdpa_calls(generator):
    shapes = [(2, 3, 5, 4, 6), (1, 1, 1, 3, 2)]
    calls = []
    for b, tq, tk, d, dv in shapes:
        q, k, v = (
            torch.randn(b, t, n, generator=generator) for t, n in ((tq, d), (tk, d), (tk, dv))
        )
        calls.append(Call("scaled_dot_product_attention", (q, k, v), dtype=torch.float64))
    return calls


def _self_attention_calls(generator):
    x = torch.randn(2, 5, 4, generator=generator)
    weights = tuple(torch.randn(3, 4, generator=generator) for _ in range(3))
    return [Call("self_attention", (x, *weights), dtype=torch.float64, grad=True)]


def _positional_calls(generator):
    return [Call("sinusoidal_positional_encoding", (7, 5), {"dtype": torch.float64})]


def _unscaled_sdpa(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights


def make_battery() -> Battery:
    judge = match_reference(rtol=1e-7, atol=1e-9)
    checks = (
        Check("sdpa_values", FUNCTIONS[0], 5, _sdpa_calls, "wrong attention output.", judge),
        Check("sdpa_rectangular", FUNCTIONS[0], 5, _sdpa_calls, "wrong for Tq != Tk.", judge),
        Check("self_attention_values", FUNCTIONS[1], 10, _self_attention_calls, "wrong.", judge),
        Check("positions_table", FUNCTIONS[2], 10, _positional_calls, "wrong table.", judge),
    )
    mutants = (
        Mutant(FUNCTIONS[0], "unscaled", "the scores are not divided by sqrt(d).", _unscaled_sdpa),
    )
    forbidden = {FUNCTIONS[0]: (SDPA_OPERATION,), FUNCTIONS[1]: (SDPA_OPERATION,)}
    return Battery(ASSIGNMENT, "solutions.ch03_self_attention", checks, forbidden, mutants)


@dataclass
class FakeReport:
    results: dict
    failures: dict = field(default_factory=dict)
    cell_errors: list = field(default_factory=list)
    output: str = ""
    isolation: str = "none (in-process test worker)"


class InProcessWorker:
    """Runs the cells and calls in this process: for tests of the engine, never for grading."""

    created = 0
    closed = 0

    def __init__(self):
        type(self).created += 1

    def run(self, cells, plan, forbidden=None):
        namespace: dict = {}
        errors = []
        for index, source in enumerate(cells, start=1):
            try:
                exec(compile(source, f"<cell {index}>", "exec"), namespace)
            except Exception as error:
                errors.append((index, f"{type(error).__name__}: {error}"))
        forbidden = forbidden or {}
        results = {
            name: [execute_call(namespace, c, forbidden.get(c.function, ())) for c in calls]
            for name, calls in plan.items()
        }
        return FakeReport(results, cell_errors=errors)

    def close(self):
        type(self).closed += 1


def worker_factory():
    try:
        from autograder.sandbox import Limits, Worker
    except ImportError:
        return InProcessWorker
    return lambda: Worker(Limits(), isolation="auto")


# Notebooks -------------------------------------------------------------------------------


def _cell(cell_type, source, **nbgrader):
    metadata = {"nbgrader": {"schema_version": 3, **nbgrader}} if nbgrader else {}
    cell = {"id": f"c{next(CELL_IDS)}", "cell_type": cell_type, "metadata": metadata}
    cell["source"] = source
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _answer(function, body):
    return _cell("code", body, grade=False, grade_id=function, locked=False, solution=True)


def _hidden_tests(function):
    return _cell(
        "code",
        f"# Hidden tests of {function} (10 points)\n### BEGIN HIDDEN TESTS\n"
        f"print('{LEAK}')\nraise RuntimeError('hidden tests ran')\n### END HIDDEN TESTS\n",
        grade=True, grade_id=f"test_{function}", locked=True, points=10, solution=False,
    )  # fmt: skip


def _source_body(function):
    code = inspect.getsource(getattr(reference, function))
    return f"### BEGIN SOLUTION\n{code}### END SOLUTION\n"


def source_notebook() -> dict:
    cells = [
        _cell("markdown", "# Exercise 3"),
        _cell("code", "import math\n\nimport torch\n", grade=False, grade_id="imports", locked=True,
              solution=False),
    ]  # fmt: skip
    for function in FUNCTIONS:
        cells += [
            _answer(function, _source_body(function)),
            _cell("code", f"raise AssertionError('visible check of {function} ran')",
                  grade=True, grade_id=f"check_{function}", locked=True, points=0,
                  solution=False),
            _hidden_tests(function),
        ]  # fmt: skip
    cells.append({**_cell("code", "print(sinusoidal_positional_encoding(4, 4))"),
                  "metadata": {"tags": ["demo"]}})  # fmt: skip
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def release_notebook() -> dict:
    """What nbgrader releases: answers stubbed, hidden tests removed."""
    notebook = copy.deepcopy(source_notebook())
    for cell in notebook["cells"]:
        source = cell["source"]
        if "### BEGIN SOLUTION" in source:
            head = source.split("### BEGIN SOLUTION")[0]
            cell["source"] = head + "# YOUR CODE HERE\nraise NotImplementedError()"
        if "### BEGIN HIDDEN TESTS" in source:
            cell["source"] = source.split("### BEGIN HIDDEN TESTS")[0]
    return notebook


def honest_notebook() -> dict:
    notebook = release_notebook()
    for cell in notebook["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in FUNCTIONS:
            cell["source"] = inspect.getsource(getattr(reference, grade_id))
    return notebook


def _find(notebook, grade_id):
    return next(
        c
        for c in notebook["cells"]
        if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id
    )


def variants() -> dict[str, dict | bytes | None]:
    wrong = honest_notebook()
    _find(wrong, FUNCTIONS[0])["source"] = inspect.getsource(_unscaled_sdpa).replace(
        "_unscaled_sdpa", FUNCTIONS[0]
    )
    stripped = honest_notebook()
    _find(stripped, FUNCTIONS[1])["metadata"] = {}
    duplicated = honest_notebook()
    answer = _find(duplicated, FUNCTIONS[0])
    duplicated["cells"].insert(duplicated["cells"].index(answer) + 1, copy.deepcopy(answer))
    retyped = honest_notebook()
    cell = _find(retyped, FUNCTIONS[2])
    cell["cell_type"] = "markdown"
    del cell["outputs"], cell["execution_count"]
    leaky = honest_notebook()
    for index, cell in enumerate(leaky["cells"]):
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id", "")
        if grade_id.startswith("test_"):
            leaky["cells"][index] = {**_hidden_tests(grade_id[5:]), "metadata": {}}
    forbidden = honest_notebook()
    _find(forbidden, FUNCTIONS[0])["source"] = (
        "import torch.nn.functional as F\n\ndef scaled_dot_product_attention(q, k, v):\n"
        "    out = F.scaled_dot_product_attention(q, k, v)\n    return out, None\n"
    )
    crashing = honest_notebook()
    crashing["cells"].insert(2, _cell("code", "ratio = 1 / 0"))
    # Parsable by no one: ast.parse raises RecursionError, not SyntaxError, on this cell.
    nested = honest_notebook()
    _find(nested, FUNCTIONS[2])["source"] += "\nchain = x" + ".y" * 200_000 + "\n"
    return {
        "honest": honest_notebook(),
        "crash_cell": crashing,
        "deep_nesting": nested,
        "wrong": wrong,
        "blank": release_notebook(),
        "corrupt": b'{"cells": [{"cell_type": "code", "sour',
        "garbage": bytes(range(256)) * 8,
        "stripped_id": stripped,
        "duplicated": duplicated,
        "retyped": retyped,
        "stripped_tests": leaky,
        "forbidden": forbidden,
        "no_notebook": None,
    }


def write_submissions(submitted: Path, notebooks: dict) -> None:
    for student, notebook in notebooks.items():
        folder = submitted / student / ASSIGNMENT
        folder.mkdir(parents=True)
        if notebook is None:
            (folder / "notes.txt").write_text("forgot the notebook")
        elif isinstance(notebook, bytes):
            (folder / f"{ASSIGNMENT}.ipynb").write_bytes(notebook)
        else:
            (folder / f"{ASSIGNMENT}.ipynb").write_text(json.dumps(notebook))


def write_course(root: Path) -> None:
    for folder, notebook in (("source", source_notebook()), ("release", release_notebook())):
        path = root / folder / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(notebook))


# The mixed batch, graded once -----------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_course(root / "course")
    write_submissions(root / "subs", variants())
    out = root / "out"
    summary = grading.grade(
        ASSIGNMENT, root / "subs", out, workers=2, json_path=root / "grades.json", seed=SEED,
        battery=make_battery(), worker_factory=worker_factory(), course_root=root / "course",
    )  # fmt: skip
    records = {path.stem: json.loads(path.read_text()) for path in (out / "records").glob("*.json")}
    return root, out, summary, records


def test_every_student_gets_a_row_in_csv_and_json(batch):
    root, out, summary, _ = batch
    students = sorted(variants())
    with (out / "grades.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["student"] for row in rows] == students
    assert list(rows[0]) == ["student", *FUNCTIONS, "total", "max"]
    records = json.loads((root / "grades.json").read_text())
    assert len(records) == len(students) * len(FUNCTIONS)
    keys = {"student", "assignment", "function", "score", "max_score", "feedback"}
    assert all(set(record) == keys for record in records)
    assert {(r["student"], r["function"]) for r in records} == {
        (s, f) for s in students for f in FUNCTIONS
    }
    assert summary.students == len(students)


def test_scores(batch):
    _, _, _, records = batch
    totals = {student: record["score"] for student, record in records.items()}
    full_marks = ("honest", "crash_cell", "stripped_id", "duplicated", "retyped", "stripped_tests")
    for student in full_marks:
        assert totals[student] == 30, (student, records[student])
    assert totals["blank"] == totals["corrupt"] == totals["garbage"] == totals["no_notebook"] == 0
    # The wrong scaled_dot_product_attention also breaks self_attention, which calls it.
    assert totals["wrong"] == 10
    # A cell no parser can read costs its own function, and nothing stops the grader.
    assert records["deep_nesting"]["status"] == "graded" and totals["deep_nesting"] == 20
    assert records["forbidden"]["functions"][FUNCTIONS[0]]["score"] == 0


def test_problems_are_named(batch):
    _, _, summary, records = batch
    assert "not valid JSON" in records["corrupt"]["reason"]
    assert "UTF-8" in records["garbage"]["reason"]
    assert "no notebook" in records["no_notebook"]["reason"]
    assert any("metadata" in p for p in records["stripped_id"]["problems"])
    assert any("appears 2 times" in p for p in records["duplicated"]["problems"])
    assert any("markdown" in p for p in records["retyped"]["problems"])
    assert records["honest"]["problems"] == [] and records["honest"]["cell_errors"] == []
    assert records["stripped_tests"]["cell_errors"] == []  # its test cells did not run
    [error] = records["crash_cell"]["cell_errors"]
    assert error["cell"] == 3 and "ZeroDivisionError" in error["message"]
    assert {"corrupt", "garbage", "no_notebook"} <= set(summary.not_graded)


def test_feedback_names_the_mistake_and_leaks_nothing(batch):
    root, out, _, _ = batch
    reference_lines = {
        line.strip()
        for line in inspect.getsource(reference).splitlines()
        if len(line.strip()) > 20 and not line.strip().startswith(("#", '"""'))
    }
    files = sorted((out / "feedback").glob("*.md"))
    assert [f.stem for f in files] == sorted(variants())
    texts = [f.read_text() for f in files] + [(root / "grades.json").read_text()]
    for text in texts:
        assert LEAK not in text and "LEAK-MARKER" not in text
        assert str(SEED) not in text
        assert not [line for line in reference_lines if line in text]
    wrong = (out / "feedback" / "wrong.md").read_text()
    assert "not divided by sqrt(d)" in wrong and "FAIL" in wrong
    assert "forbidden" in (out / "feedback" / "forbidden.md").read_text()
    assert "isolation" in (out / "feedback" / "honest.md").read_text()


def test_seed_is_kept_private_in_run_json(batch):
    _, out, _, _ = batch
    assert json.loads((out / "run.json").read_text())["seed"] == SEED
    assert oct(out.stat().st_mode & 0o777) == oct(0o700)


# What the instructor reads: ties, the class report, the LMS file ----------------------------


def _failures(records) -> Counter:
    return Counter(
        check["name"]
        for record in records.values()
        for entry in record["functions"].values()
        for check in entry["checks"]
        if not check["passed"]
    )


def test_checks_failed_most_keeps_ties_together(batch):
    _, _, summary, records = batch
    failures = _failures(records)
    top = max(failures.values())
    assert summary.failed_checks[0] == (top, sorted(n for n, c in failures.items() if c == top))
    # blank, wrong and forbidden fail all three; a wrong attention breaks self_attention
    assert summary.failed_checks[0] == (
        3,
        ["sdpa_rectangular", "sdpa_values", "self_attention_values"],
    )
    counts = [count for count, _ in summary.failed_checks]
    assert counts == sorted(set(counts), reverse=True)  # one line per number of students
    text = cli.format_summary(summary)
    assert f"{top:4d}  {', '.join(summary.failed_checks[0][1])}" in text


def test_the_class_report_counts_checks_mistakes_and_who_was_not_graded(batch):
    from autograder.engine import report

    _, out, summary, records = batch
    graded = [r for r in records.values() if r["status"] == "graded"]
    rows = report.check_failures(make_battery(), list(records.values()))
    failures = _failures(records)
    assert [(name, failed, total) for name, _, failed, total in rows] == sorted(
        [(c.name, failures[c.name], len(graded)) for c in make_battery().checks],
        key=lambda row: -row[1],
    )
    assert report.named_mistakes(list(records.values())) == [
        (FUNCTIONS[0], "the scores are not divided by sqrt(d).", ["wrong"])
    ]
    page = (out / "report.html").read_text()
    for image in ("scores.png", "checks.png"):
        assert f"src='report_files/{image}'" in page
        assert (out / "report_files" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for student in ("corrupt", "garbage", "no_notebook"):
        row = re.search(rf"<tr><td>{student}</td><td[^>]*>([^<]*)</td></tr>", page)
        assert row and row[1] == html.escape(summary.not_graded[student])
    assert "No hidden test cell scored more" in page  # no suspects outside a course
    assert summary.report == out / "report.html"
    assert str(SEED) not in page and LEAK not in page


def test_report_bins_and_cells():
    from autograder.engine import report

    assert report._score_bins(10).tolist() == [x / 2 - 0.25 for x in range(22)]
    assert report._score_bins(100).tolist() == [x * 5 - 2.5 for x in range(22)]
    assert "<td>&lt;b&gt;ann&lt;/b&gt;</td>" in report._table(("student",), [("<b>ann</b>",)])


def test_the_lms_file_has_final_scores_one_column_per_function(batch, tmp_path):
    from autograder.engine.gradebook import ManualGrade

    _, out, _, records = batch
    rows = list(csv.reader((out / "lms.csv").open()))
    assert rows[0] == [
        "student_id", *(f"{f} (10 points)" for f in FUNCTIONS), "total (30 points)"
    ]  # fmt: skip
    assert [row[0] for row in rows[1:]] == sorted(variants())
    assert dict((row[0], row[1:]) for row in rows[1:])["wrong"] == ["0", "0", "10", "10"]
    manual = [
        ManualGrade("wrong", FUNCTIONS[1], 4.0, 10.0, overwritten=False),
        ManualGrade("honest", FUNCTIONS[0], 1.0, 10.0, overwritten=True),
    ]
    path = tmp_path / "lms.csv"
    grading.write_lms_csv(path, make_battery(), list(records.values()), manual)
    final = {row[0]: row[1:] for row in list(csv.reader(path.open()))[1:]}
    assert final["wrong"] == ["0", "4", "10", "14"]  # the kept manual grade
    assert final["honest"] == ["10", "10", "10", "30"]  # the overwritten one is gone


# Re-runs, interruption, the command line -------------------------------------------------


@pytest.fixture
def small_batch(tmp_path):
    everything = variants()
    write_course(tmp_path / "course")
    chosen = ("honest", "wrong", "blank", "corrupt", "no_notebook")
    write_submissions(tmp_path / "subs", {name: everything[name] for name in chosen})
    return tmp_path


def _grade(root, **options):
    return grading.grade(
        ASSIGNMENT, root / "subs", root / "out", workers=2, seed=SEED, battery=make_battery(),
        worker_factory=InProcessWorker, course_root=root / "course", **options,
    )  # fmt: skip


def test_rerun_skips_graded_and_force_regrades(small_batch):
    first = _grade(small_batch)
    assert (first.graded_now, first.skipped) == (5, 0)
    created = InProcessWorker.created
    again = _grade(small_batch)
    assert (again.graded_now, again.skipped) == (0, 5)
    assert InProcessWorker.created == created  # nothing was started
    notebook = small_batch / "subs" / "blank" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    notebook.write_text(json.dumps(honest_notebook()))
    changed = _grade(small_batch)
    assert (changed.graded_now, changed.skipped) == (1, 4)
    forced = _grade(small_batch, force=True)
    assert (forced.graded_now, forced.skipped) == (5, 0)


def test_only_the_students_named_are_graded(small_batch):
    _grade(small_batch)
    again = _grade(small_batch, students=["wrong", "blank"], force=True)
    assert (again.graded_now, again.skipped, again.students) == (2, 0, 5)
    unchanged = _grade(small_batch, students=["wrong"])  # without force: nothing changed
    assert (unchanged.graded_now, unchanged.skipped) == (0, 1)
    with pytest.raises(grading.GradingError, match="no submission folder for student nobody"):
        _grade(small_batch, students=["nobody"])


@pytest.fixture
def command_line(small_batch, monkeypatch):
    """The small batch as ``python -m autograder grade`` sees it from a repository root,
    graded in process with the test battery."""
    monkeypatch.setattr(grading, "load_battery", lambda assignment: make_battery())
    monkeypatch.setattr(grading, "default_worker_factory", lambda *options: InProcessWorker)
    monkeypatch.setattr(grading, "REPOSITORY", small_batch)
    (small_batch / "exercises").symlink_to(small_batch / "course")
    monkeypatch.chdir(small_batch)
    return small_batch


def test_student_option_regrades_them_on_the_command_line(command_line, capsys):
    assert cli.main(["grade", ASSIGNMENT, "subs", "--workers", "1"]) == 0
    capsys.readouterr()
    options = ["--student", "wrong", "--student", "honest"]
    assert cli.main(["grade", ASSIGNMENT, "subs", "--workers", "1", *options]) == 0
    said = capsys.readouterr().out
    assert "5 students (2 graded now, 0 already graded)" in said
    assert f"class report: {Path('grading') / ASSIGNMENT / 'report.html'}" in said


def test_interrupt_keeps_finished_records_and_resumes(small_batch):
    def stop_after_first(record):
        raise KeyboardInterrupt

    closed = InProcessWorker.closed
    with pytest.raises(grading.Interrupted) as stopped:
        _grade(small_batch, on_record=stop_after_first)
    records = list((small_batch / "out" / "records").iterdir())
    assert stopped.value.finished == len(records) >= 1
    assert all(path.suffix == ".json" and json.loads(path.read_text()) for path in records)
    assert InProcessWorker.closed > closed
    assert not (small_batch / "out" / "grades.csv").exists()
    resumed = _grade(small_batch)
    assert resumed.graded_now == 5 - len(records) and resumed.students == 5


def test_command_line_prints_progress_and_summary(command_line, capsys):
    status = cli.main(["grade", ASSIGNMENT, "subs", "--json", "out.json", "--workers", "2"])
    captured = capsys.readouterr()
    assert status == 0
    assert "5/5 graded" in captured.err
    assert "mean score" in captured.out and "checks failed most" in captured.out
    assert "corrupt" in captured.out and "isolation" in captured.out
    assert (command_line / "grading" / ASSIGNMENT / "grades.csv").exists()
    assert len(json.loads((command_line / "out.json").read_text())) == 15


def test_progress_bar_redraws_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = cli.Progress(stream)
    progress.start(2)
    progress.advance({"student": "a", "score": 1, "max_score": 2})
    progress.advance({"student": "b", "score": 2, "max_score": 2})
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3 and "2/2" in text and text.endswith("\n")


def test_usage_errors_exit_non_zero(tmp_path, monkeypatch, capsys):
    def unknown(assignment):
        raise grading.GradingError(f"unknown assignment '{assignment}'")

    monkeypatch.setattr(grading, "load_battery", unknown)
    assert cli.main(["grade", "ch99", str(tmp_path)]) == 2
    assert "unknown assignment" in capsys.readouterr().err
    monkeypatch.setattr(grading, "load_battery", lambda assignment: make_battery())
    assert cli.main(["grade", ASSIGNMENT, str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["grade", ASSIGNMENT, str(tmp_path), "--workers", "0"])
    assert exit_info.value.code == 2


# Reading notebooks ---------------------------------------------------------------------------


def _read(tmp_path, notebook, **options):
    path = tmp_path / "nb.ipynb"
    path.write_bytes(notebook if isinstance(notebook, bytes) else json.dumps(notebook).encode())
    known = KnownCells.from_notebooks([_course_file(tmp_path, release_notebook())])
    return read_submission(path, FUNCTIONS, known, **options)


def _course_file(tmp_path, notebook):
    path = tmp_path / "release.ipynb"
    path.write_text(json.dumps(notebook))
    return path


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "not a Jupyter notebook"),
        (b'{"nbformat": 4, "metadata": {}}', "no list of cells"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
    ],
)
def test_unreadable_notebooks_give_a_reason(tmp_path, content, words):
    submission = _read(tmp_path, content)
    assert not submission.readable and words in submission.problems[0]


def test_oversized_notebook_is_refused(tmp_path):
    submission = _read(tmp_path, honest_notebook(), max_bytes=1000)
    assert not submission.readable and "MB limit" in submission.problems[0]


def test_symlinked_notebook_is_refused(tmp_path):
    target = tmp_path / "secret.txt"
    target.write_text("{}")
    (tmp_path / "link.ipynb").symlink_to(target)
    submission = read_submission(tmp_path / "link.ipynb", FUNCTIONS)
    assert not submission.readable and "regular file" in submission.problems[0]


def test_reader_keeps_answers_and_drops_tests_demos_and_markdown(tmp_path):
    submission = _read(tmp_path, honest_notebook())
    assert submission.readable and submission.problems == []
    joined = "\n".join(submission.cells)
    assert "raise AssertionError" not in joined  # visible checks
    assert "Hidden tests" not in joined and "print(sinusoidal" not in joined
    assert set(submission.function_sources) == set(FUNCTIONS)
    assert submission.cell_numbers == [2, 3, 6, 9]


def test_reader_survives_odd_cells(tmp_path):
    notebook = honest_notebook()
    notebook["cells"] += [
        "not a cell",
        {"cell_type": "code", "metadata": "broken", "source": ["%matplotlib inline\n", "x = 1"]},
        {"cell_type": "code", "source": 42},
        {"cell_type": "widget"},
    ]
    submission = _read(tmp_path, notebook)
    assert submission.readable
    assert "pass\nx = 1" in submission.cells
    assert sum("not a valid notebook cell" in p for p in submission.problems) == 2


def test_reader_reports_missing_and_misplaced_definitions(tmp_path):
    notebook = honest_notebook()
    notebook["cells"] = [c for c in notebook["cells"] if c["metadata"].get("nbgrader", {}).get(
        "grade_id") != FUNCTIONS[2]]  # fmt: skip
    answer = _find(notebook, FUNCTIONS[1])
    answer["source"] = "x = 1"
    notebook["cells"].append(_cell("markdown", inspect.getsource(reference.self_attention)))
    submission = _read(tmp_path, notebook)
    assert any("does not define self_attention" in p for p in submission.problems)
    assert any(f"no cell defines {FUNCTIONS[2]}" in p for p in submission.problems)


# An nbgrader course: scores land in the gradebook ----------------------------------------


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(VENV_BIN / "nbgrader"), *args], cwd=course, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's add_submission
def test_nbgrader_course_gets_the_scores_and_the_tampering_report(tmp_path, monkeypatch):
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    course = tmp_path / "course"
    write_course(course)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'test-course'\n"
    )
    config = Config()
    config.CourseDirectory.root, config.CourseDirectory.course_id = str(course), "test-course"
    assert NbGraderAPI(config=config).generate_assignment(ASSIGNMENT)["success"]
    everything = variants()
    write_submissions(course / "submitted", {n: everything[n] for n in ("honest", "wrong")})
    summary = grading.grade(
        ASSIGNMENT, course / "submitted", workers=1, seed=SEED, battery=make_battery(),
        worker_factory=InProcessWorker, kernel_scores={"wrong": {FUNCTIONS[0]: 10.0}},
    )  # fmt: skip
    out = course / "grading" / ASSIGNMENT  # the course's own output folder
    assert [(s.student, s.function) for s in summary.tampering] == [("wrong", FUNCTIONS[0])]
    assert "wrong" in (out / "suspected_tampering.csv").read_text()
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "test-course") as book:
        notebook = book.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, "wrong")
        assert notebook.flagged
        comment = book.find_comment(FUNCTIONS[0], ASSIGNMENT, ASSIGNMENT, "wrong").comment
        assert comment.startswith("kernel 10, grader 0: ")
    _nbgrader(course, "export", "--to", str(tmp_path / "export.csv"))
    with (tmp_path / "export.csv").open() as handle:
        exported = {row["student_id"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert exported == {"honest": 30.0, "wrong": 10.0}


# Writing the gradebook: one function for the grader and for nbgrader autograde -----------


class FakeEntry:
    """A grade, a comment or a submitted notebook of an nbgrader gradebook, in memory."""

    def __init__(self, **values):
        self.__dict__.update(values)


class FakeGradebook:
    """The part of ``nbgrader.api.Gradebook`` that ``gradebook.sync_student`` uses."""

    def __init__(self, students):
        self.notebooks = {s: FakeEntry(flagged=False) for s in students}
        self.grades = {
            (s, f"test_{f}"): FakeEntry(
                auto_score=None, manual_score=None, needs_manual_grade=True, max_score=10.0
            )
            for s in students
            for f in FUNCTIONS
        }
        self.comments = {(s, f): FakeEntry(auto_comment=None) for s in students for f in FUNCTIONS}
        self.db = FakeEntry(commit=lambda: None, rollback=lambda: None)

    def find_submission(self, assignment, student):
        from nbgrader.api import MissingEntry

        if student not in self.notebooks:
            raise MissingEntry()

    def find_submission_notebook(self, notebook, assignment, student):
        return self.notebooks[student]

    def find_grade(self, cell, notebook, assignment, student):
        return self.grades[(student, cell)]

    def find_comment(self, cell, notebook, assignment, student):
        return self.comments[(student, cell)]


def _record(student, scores, status="graded"):
    return {
        "student": student,
        "status": status,
        "functions": {
            f: {"score": score, "max_score": 10.0}
            for f, score in zip(FUNCTIONS, scores, strict=True)
        },
    }


def test_a_kernel_claim_above_the_grader_flags_and_comments_until_it_is_gone():
    from autograder.engine import gradebook

    book = FakeGradebook(["ann"])
    record = _record("ann", [0.0, 10.0, 4.0])
    claims = {FUNCTIONS[0]: 10.0, FUNCTIONS[1]: 10.0, FUNCTIONS[2]: 0.0}
    suspects, manual = gradebook.sync_student(book, ASSIGNMENT, record, claims)
    assert [(s.function, s.kernel_score, s.engine_score) for s in suspects] == [
        (FUNCTIONS[0], 10.0, 0.0)
    ]
    assert manual == [] and book.notebooks["ann"].flagged
    comment = book.comments[("ann", FUNCTIONS[0])].auto_comment
    assert comment.startswith(f"kernel 10, grader 0: the hidden tests of {FUNCTIONS[0]}")
    assert book.comments[("ann", FUNCTIONS[1])].auto_comment is None
    grades = [book.grades[("ann", f"test_{f}")] for f in FUNCTIONS]
    assert [(g.auto_score, g.needs_manual_grade) for g in grades] == [
        (0.0, False), (10.0, False), (4.0, False)
    ]  # fmt: skip
    gradebook.sync_student(book, ASSIGNMENT, _record("ann", [10.0, 10.0, 10.0]), {})
    assert not book.notebooks["ann"].flagged  # a resubmission that passes: our flag goes
    assert book.comments[("ann", FUNCTIONS[0])].auto_comment is None


def test_a_flag_set_by_a_person_stays():
    from autograder.engine import gradebook

    book = FakeGradebook(["ann"])
    book.notebooks["ann"].flagged = True
    book.comments[("ann", FUNCTIONS[0])].auto_comment = "No response."
    gradebook.sync_student(book, ASSIGNMENT, _record("ann", [0.0, 0.0, 0.0]), {})
    assert book.notebooks["ann"].flagged
    assert book.comments[("ann", FUNCTIONS[0])].auto_comment == "No response."


def test_manual_scores_are_kept_unless_overwriting_is_asked_for():
    from autograder.engine import gradebook

    book = FakeGradebook(["ann"])
    book.grades[("ann", f"test_{FUNCTIONS[1]}")].manual_score = 7.0
    book.grades[("ann", f"test_{FUNCTIONS[2]}")].manual_score = 10.0  # agrees: no conflict
    record = _record("ann", [10.0, 10.0, 10.0])
    _, manual = gradebook.sync_student(book, ASSIGNMENT, record, {})
    assert [(m.function, m.manual_score, m.engine_score, m.overwritten) for m in manual] == [
        (FUNCTIONS[1], 7.0, 10.0, False)
    ]
    assert book.grades[("ann", f"test_{FUNCTIONS[1]}")].manual_score == 7.0
    _, manual = gradebook.sync_student(book, ASSIGNMENT, record, {}, overwrite_manual=True)
    assert [m.overwritten for m in manual] == [True]
    assert book.grades[("ann", f"test_{FUNCTIONS[1]}")].manual_score is None


def test_a_grader_failure_asks_for_a_manual_grade_and_suspects_nobody():
    from autograder.engine import gradebook

    book = FakeGradebook(["ann"])
    record = _record("ann", [0.0, 0.0, 0.0], status="error")
    suspects, _ = gradebook.sync_student(book, ASSIGNMENT, record, {FUNCTIONS[0]: 10.0})
    assert suspects == [] and not book.notebooks["ann"].flagged
    grade = book.grades[("ann", f"test_{FUNCTIONS[0]}")]
    assert (grade.auto_score, grade.needs_manual_grade) == (None, True)


# The real battery in the real sandbox ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_real_battery_in_the_sandbox(tmp_path, isolation):
    from autograder.sandbox.launch import bwrap_works

    release = grading.REPOSITORY / "exercises" / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    blank = json.loads(release.read_text())
    honest = copy.deepcopy(blank)
    for cell in honest["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in FUNCTIONS:
            cell["source"] = inspect.getsource(getattr(reference, grade_id))
    write_submissions(tmp_path / "subs", {"honest": honest, "blank": blank})
    summary = grading.grade(
        ASSIGNMENT, tmp_path / "subs", tmp_path / "out", workers=2, seed=SEED,
        json_path=tmp_path / "grades.json", isolation=isolation,
        accept_weak=isolation == "process",  # without root, the process level must be asked for
    )  # fmt: skip
    records = json.loads((tmp_path / "grades.json").read_text())
    scores = {(r["student"], r["function"]): r["score"] for r in records}
    maxima = {r["function"]: r["max_score"] for r in records}
    assert {f: scores[("honest", f)] for f in FUNCTIONS} == {f: maxima[f] for f in FUNCTIONS}
    assert all(maxima[f] > 0 for f in FUNCTIONS)
    assert {f: scores[("blank", f)] for f in FUNCTIONS} == dict.fromkeys(FUNCTIONS, 0)
    strongest = "bubblewrap" if isolation == "auto" and bwrap_works() else "process"
    assert {level.split()[0] for level in summary.isolation} == {strongest}
    for path in (tmp_path / "out" / "feedback").glob("*.md"):
        assert reference.LEAK_MARKER not in path.read_text()


def test_cli_limits_default_to_the_sandbox_defaults_and_can_be_raised():
    from autograder.engine.cli import limits_of, parser
    from autograder.sandbox import Limits

    defaults = parser().parse_args(["grade", ASSIGNMENT, "submitted"])
    assert limits_of(defaults) == Limits()
    raised = parser().parse_args(
        ["grade", ASSIGNMENT, "submitted", "--time-limit", "30", "--memory-limit", "1.5"]
    )
    limits = limits_of(raised)
    assert (limits.call_wall_seconds, limits.call_cpu_seconds) == (30.0, 30.0)
    assert limits.memory_bytes == 3 << 29


# The self-check and the grader's own failures ----------------------------------------------


class SlowWorker(InProcessWorker):
    """A worker on which every call times out: a machine too slow for the limits."""

    def run(self, cells, plan, forbidden=None):
        report = super().run(cells, plan, forbidden)
        report.results = dict.fromkeys(plan)
        report.failures = dict.fromkeys(plan, "your code ran for more than 10 s")
        return report


def test_self_check_stops_the_run_before_any_student_is_graded(small_batch, monkeypatch, capsys):
    monkeypatch.setattr(grading, "load_battery", lambda assignment: make_battery())
    monkeypatch.setattr(grading, "default_worker_factory", lambda *options: SlowWorker)
    monkeypatch.setattr(grading, "REPOSITORY", small_batch)
    (small_batch / "exercises").symlink_to(small_batch / "course")
    monkeypatch.chdir(small_batch)
    status = cli.main(["grade", ASSIGNMENT, "subs", "--workers", "1"])
    captured = capsys.readouterr()
    assert status == cli.EXIT_SELF_CHECK
    assert "self-check failed" in captured.err and "0 / 30" in captured.err
    assert "--time-limit" in captured.err  # the cause and its fix
    assert not list((small_batch / "grading" / ASSIGNMENT / "records").iterdir())


def test_self_check_failure_names_a_broken_battery(small_batch):
    battery = make_battery()
    wrong = Check("sdpa_values", FUNCTIONS[0], 5, _sdpa_calls, "m.", lambda *args: "differs")
    battery = Battery(battery.assignment, battery.reference, (wrong, *battery.checks[1:]), {})
    with pytest.raises(grading.SelfCheckFailed, match="disagree") as failed:
        grading.grade(
            ASSIGNMENT, small_batch / "subs", small_batch / "out", workers=1, seed=SEED,
            battery=battery, worker_factory=InProcessWorker, course_root=small_batch / "course",
        )  # fmt: skip
    assert "25 / 30" in str(failed.value)


class FailingWorker(InProcessWorker):
    """A worker whose sandbox breaks on one student's submission (a harness failure)."""

    def run(self, cells, plan, forbidden=None):
        if any("return 7" in cell for cell in cells):
            raise RuntimeError("the grading sandbox cannot start a child")
        return super().run(cells, plan, forbidden)


def test_a_grader_failure_gives_no_score_and_a_non_zero_exit(small_batch, monkeypatch, capsys):
    notebook = small_batch / "subs" / "blank" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    broken = honest_notebook()
    broken["cells"].append(_cell("code", "def unused():\n    return 7\n"))
    notebook.write_text(json.dumps(broken))
    monkeypatch.setattr(grading, "load_battery", lambda assignment: make_battery())
    monkeypatch.setattr(grading, "default_worker_factory", lambda *options: FailingWorker)
    monkeypatch.setattr(grading, "REPOSITORY", small_batch)
    (small_batch / "exercises").symlink_to(small_batch / "course")
    monkeypatch.chdir(small_batch)
    status = cli.main(["grade", ASSIGNMENT, "subs", "--json", "out.json", "--workers", "1"])
    captured = capsys.readouterr()
    assert status == cli.EXIT_GRADER_ERRORS
    assert "grader failed on 1 submissions" in captured.err
    records = [r for r in json.loads((small_batch / "out.json").read_text())]
    assert {r["score"] for r in records if r["student"] == "blank"} == {None}
    assert all(r["score"] is not None for r in records if r["student"] != "blank")
    assert "not your mistake" in next(r["feedback"] for r in records if r["student"] == "blank")
    rows = (small_batch / "grading" / ASSIGNMENT / "grades.csv").read_text().splitlines()
    assert next(row for row in rows if row.startswith("blank,")) == "blank,,,,,30"


def test_a_record_the_grader_did_not_write_is_detected_and_regraded(small_batch):
    _grade(small_batch)
    forged_path = small_batch / "out" / "records" / "blank.json"
    forged = json.loads(forged_path.read_text())
    forged["score"] = forged["max_score"]  # a blank notebook made to look perfect
    for entry in forged["functions"].values():
        entry["score"] = entry["max_score"]
    forged_path.write_text(json.dumps(forged))  # same digest: a plain re-run would keep it
    again = _grade(small_batch)
    assert again.forged == ["blank"] and again.graded_now == 1
    rows = (small_batch / "out" / "grades.csv").read_text().splitlines()
    assert next(row for row in rows if row.startswith("blank,")) == "blank,0,0,0,0,30"
    assert _grade(small_batch).forged == []


@pytest.mark.parametrize(
    "cell, plain",
    [
        ("if True:\n    %time y = 2\nz = 3", "if True:\n    y = 2\nz = 3"),
        ("for i in range(2):\n    !ls\n", "for i in range(2):\n    pass\n"),
        ("%matplotlib inline\nx = 1", "pass\nx = 1"),
        ("%timeit -n 3 f()\n", "pass\n"),
        ("%%time\nx = 1", "\nx = 1"),
        ("%%bash\nls -l", "pass"),
        ("x = 5 % 3  # a remainder, not a magic", "x = 5 % 3  # a remainder, not a magic"),
    ],
)
def test_magics_become_plain_python_once(cell, plain):
    from autograder.engine.notebook import without_magics

    assert without_magics(cell) == plain
    compile(without_magics(cell), "<cell>", "exec")  # valid Python, indented blocks included
