"""The instructor's workflow as an instructor runs it, in throwaway copies of the course.

For every chapter that has an exercise, a copy of the course gets two hostile submissions
and goes through ``nbgrader autograde``, the grader, formgrader's gradebook and
``nbgrader generate_feedback``:

- a *leak attack*: a cell that imports every module of ``solutions/`` and of the
  batteries, reads them (and the source notebooks and the gradebook) by path from the
  notebook's folder upwards and by absolute path, prints what it found, tries to write
  itself full marks into the gradebook, and leaves links to the solutions in its folder
  (``generate_feedback`` copies that folder's files into the feedback it releases);
- a *kernel cheat*: a blank notebook that puts a fake ``autograder.kernel`` in
  ``sys.modules``, so that the hidden test cells claim full marks in the kernel.

Nothing of the course may reach the autograded notebook (what formgrader shows), the
gradebook, the grader's feedback or the feedback HTML that "Release Feedback" sends; the
cheat keeps the grader's zero and is flagged, with a comment on each affected cell.
"""

from __future__ import annotations

import html
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from leaks import find_leaks

from autograder.batteries import available
from autograder.engine import grading
from exercises import build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
COURSE_ID = "attention-course"


def exercise_assignments() -> list[str]:
    """The assignments that have both a battery and a source notebook."""
    return [a for a in available() if build.source_path(a).is_file()]


# What hostile students submit ------------------------------------------------------------

LEAK_ATTACK = """\
import glob, importlib, inspect, os, pkgutil, sqlite3

MODULES = ["solutions", "autograder.batteries", "autograder.kernel"]
PATTERNS = ["solutions/*.py", "autograder/batteries/*.py", "exercises/source/*/*.ipynb",
            "source/*/*.ipynb", "exercises/gradebook.db", "gradebook.db"]


def show(what, text):
    print(f"--- {what}")
    print(text[:3000])
    start = text.find("### BEGIN SOLUTION")
    if start >= 0:
        print(text[start : start + 1500])


for name in MODULES:
    try:
        package = importlib.import_module(name)
        show(name, inspect.getsource(package))
        for info in pkgutil.iter_modules(package.__path__):
            show(info.name, inspect.getsource(importlib.import_module(f"{name}.{info.name}")))
    except Exception as error:
        print(f"import {name}: {type(error).__name__}")

roots = [os.path.join(*[".."] * up) for up in range(1, 7)] + [KNOWN_ROOT]
for root in roots:
    for pattern in PATTERNS:
        for path in glob.glob(os.path.join(root, pattern)):
            try:
                with open(path, "rb") as handle:
                    show(path, handle.read().decode("latin-1"))
            except OSError as error:
                print(f"read {path}: {type(error).__name__}")
            if path.endswith("gradebook.db"):
                try:
                    with sqlite3.connect(path) as db:
                        db.execute("UPDATE grade SET manual_score = 10")
                    print("wrote the gradebook")
                except Exception as error:
                    print(f"write {path}: {type(error).__name__}")

for index, target in enumerate(KNOWN_FILES):
    try:
        os.symlink(target, f"notes_{index}.txt")
        print("linked")
    except OSError as error:
        print(f"link: {type(error).__name__}")
"""

KERNEL_CHEAT = """\
import sys, types

fake = types.ModuleType("autograder.kernel")
fake.grade_function = lambda *args, **kwargs: 10.0
sys.modules["autograder"] = types.ModuleType("autograder")
sys.modules["autograder.kernel"] = fake
"""


def with_cell_after_imports(nb, source: str):
    """A copy of ``nb`` with a plain code cell (no nbgrader metadata) after the imports."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    at = next(
        index
        for index, cell in enumerate(nb.cells)
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "imports"
    )
    cell = nbformat.v4.new_code_cell(source)
    cell["id"] = "student-extra"
    nb.cells.insert(at + 1, cell)
    return nb


# A copy of the course -----------------------------------------------------------------------


def submit(course: Path, assignment: str, student: str, nb) -> None:
    path = course / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


def release_of(course: Path, assignment: str):
    return nbformat.read(build.release_path(assignment, course), as_version=4)


def grade_with_the_grader(course: Path, assignment: str, **options) -> grading.Summary:
    return grading.grade(assignment, course / "submitted", grading_dir(course, assignment),
                         workers=2, **options)  # fmt: skip


def grading_dir(course: Path, assignment: str) -> Path:
    return course / "grading" / assignment


def gradebook_text(course: Path) -> str:
    """Every text value of formgrader's database (comments, names, scores) except the
    instructor's own source cells, which nbgrader stores there on purpose."""
    with sqlite3.connect(course / "gradebook.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        skip = {"base_cell", "source_cell", "solution_cell", "grade_cell", "task_cell"}
        return "\n".join(
            str(row) for table in tables if table not in skip
            for row in db.execute(f"SELECT * FROM {table}")
        )  # fmt: skip


def student_outputs(course: Path, assignment: str, student: str) -> dict:
    """What the student can read after Release Feedback, and what formgrader shows."""
    notebook = course / "autograded" / student / assignment / f"{assignment}.ipynb"
    feedback = course / "feedback" / student / assignment
    grader = grading_dir(course, assignment) / "feedback" / f"{student}.md"
    return {
        "autograded notebook": notebook.read_text(),
        "feedback html": (feedback / f"{assignment}.html").read_text(),
        "released files": "\n".join(
            path.read_text(errors="replace") for path in feedback.rglob("*") if path.is_file()
        ),
        "grader feedback": grader.read_text(),
    }


@pytest.fixture(scope="module", params=exercise_assignments())
def attacked_course(request, tmp_path_factory):
    """A course copy of one chapter after autograde, the grader and generate_feedback."""
    assignment = request.param
    root = tmp_path_factory.mktemp(f"attack-{assignment}")
    course = build.copy_course(root, assignment)
    release = release_of(course, assignment)
    targets = [root / "solutions" / p.name for p in (REPO / "solutions").glob("ch*.py")]
    targets += [root / "autograder" / "batteries" / f"{assignment}.py"]
    attack = LEAK_ATTACK.replace("KNOWN_ROOT", repr(str(root)))
    attack = attack.replace("KNOWN_FILES", repr([str(path) for path in targets]))
    submit(course, assignment, "leaker", with_cell_after_imports(release, attack))
    submit(course, assignment, "cheat", with_cell_after_imports(release, KERNEL_CHEAT))
    build.run_nbgrader(course, "autograde", assignment)
    summary = grade_with_the_grader(course, assignment)
    build.run_nbgrader(course, "generate_feedback", assignment)
    return assignment, course, summary


def test_the_leak_attack_reads_nothing(attacked_course):
    assignment, course, _ = attacked_course
    outputs = student_outputs(course, assignment, "leaker")
    outputs["gradebook"] = gradebook_text(course)
    leaked = {where: find_leaks(text)[:3] for where, text in outputs.items() if find_leaks(text)}
    assert not leaked, f"{assignment}: course material reached {leaked}"
    printed = attack_output(course, assignment, "leaker")
    assert "import solutions: ModuleNotFoundError" in printed  # the attack did run
    assert "---" not in printed and "wrote the gradebook" not in printed  # found nothing
    assert "linked" not in printed and "link: OSError" in printed


def attack_output(course: Path, assignment: str, student: str) -> str:
    """What the student's extra cell printed when ``nbgrader autograde`` ran it."""
    path = course / "autograded" / student / assignment / f"{assignment}.ipynb"
    (cell,) = [c for c in nbformat.read(path, as_version=4).cells if c.get("id") == "student-extra"]
    return "".join(output.get("text", "") for output in cell.outputs)


def test_the_leak_attack_cannot_write_its_grades(attacked_course):
    from nbgrader.api import Gradebook

    assignment, course, _ = attacked_course
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as book:
        notebook = book.find_submission_notebook(assignment, assignment, "leaker")
        assert notebook.score == 0
        assert all(grade.manual_score is None for grade in notebook.grades)


def test_the_kernel_cheat_keeps_the_graders_zero_and_is_flagged(attacked_course):
    from nbgrader.api import Gradebook

    assignment, course, summary = attacked_course
    functions = grading.load_battery(assignment).functions
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as book:
        assert book.find_submission_notebook(assignment, assignment, "cheat").flagged
        assert not book.find_submission_notebook(assignment, assignment, "leaker").flagged
        for function in functions:
            grade = book.find_grade(f"test_{function}", assignment, assignment, "cheat")
            assert (grade.auto_score, grade.manual_score, grade.score) == (0, None, 0)
            assert not grade.needs_manual_grade and grade.failed_tests
            comment = book.find_comment(function, assignment, assignment, "cheat").comment
            assert comment.startswith(f"kernel {grade.max_score:g}, grader 0: the hidden tests")
    assert {(s.student, s.function) for s in summary.tampering} == {
        ("cheat", function) for function in functions
    }


# The whole workflow on chapter 3: order, manual grades, one student, feedback, report -------

WORKFLOW = "ch03_self_attention"
STUDENTS = ("honest", "mutant", "blank", "cheat")
UNSCALED_ATTENTION = '''def scaled_dot_product_attention(q, k, v):
    """Forgets to divide the scores by sqrt(d)."""
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights
'''


def run_grader(root: Path, *options: str) -> subprocess.CompletedProcess:
    """``python -m autograder grade`` as the README runs it, from the repository root."""
    command = [sys.executable, "-m", "autograder", "grade", WORKFLOW, "exercises/submitted"]
    done = subprocess.run(
        [*command, "--workers", "2", *options], cwd=root, env=build.nbgrader_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def snapshot(course: Path) -> dict:
    """Every student's grades, comments and flag in the gradebook."""
    from nbgrader.api import Gradebook

    state = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as book:
        for student in STUDENTS:
            notebook = book.find_submission_notebook(WORKFLOW, WORKFLOW, student)
            state[student] = {
                "flagged": notebook.flagged,
                "grades": {
                    g.name: (g.auto_score, g.manual_score, g.needs_manual_grade)
                    for g in notebook.grades
                },
                "comments": {c.name: c.auto_comment for c in notebook.comments},
            }
    return state


def set_manual_score(course: Path, student: str, cell: str, score: float) -> None:
    """What formgrader does when a grader types a score."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as book:
        book.find_grade(cell, WORKFLOW, WORKFLOW, student).manual_score = score
        book.db.commit()


def source_with(nb, grade_id: str, source: str):
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = source
    return nb


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """Chapter 3 through the grader, autograde, the grader again, a manual grade (and
    autograde of that student again), generate_feedback and an overwrite of manual grades."""
    root = tmp_path_factory.mktemp("workflow")
    course = build.copy_course(root, WORKFLOW)
    source = nbformat.read(build.source_path(WORKFLOW, course), as_version=4)
    release = release_of(course, WORKFLOW)
    submit(course, WORKFLOW, "honest", source)
    submit(course, WORKFLOW, "mutant", source_with(source, FUNCTION, UNSCALED_ATTENTION))
    submit(course, WORKFLOW, "blank", release)
    submit(course, WORKFLOW, "cheat", with_cell_after_imports(release, KERNEL_CHEAT))
    seen = {"grader first": run_grader(root), "after the grader": snapshot(course)}
    build.run_nbgrader(course, "autograde", WORKFLOW)
    seen["after autograde"] = snapshot(course)
    seen["grader last"] = run_grader(root)
    seen["after the grader again"] = snapshot(course)
    set_manual_score(course, "honest", "test_self_attention", 7.0)
    seen["manual kept"] = run_grader(root)
    build.run_nbgrader(course, "autograde", WORKFLOW, "--student", "honest", "--force")
    seen["manual after autograde"] = snapshot(course)
    seen["lms with manual"] = (grading_dir(course, WORKFLOW) / "lms.csv").read_text()
    build.run_nbgrader(course, "generate_feedback", WORKFLOW)
    seen["overwritten"] = run_grader(root, "--overwrite-manual-grades")
    seen["after overwriting"] = snapshot(course)
    return course, seen


FUNCTION = "scaled_dot_product_attention"
TESTS = ("test_scaled_dot_product_attention", "test_self_attention",
         "test_sinusoidal_positional_encoding")  # fmt: skip


def test_the_grader_first_leaves_nothing_to_grade_by_hand(workflow):
    _, seen = workflow
    after = seen["after autograde"]
    for student in STUDENTS:
        assert not any(needs for _, _, needs in after[student]["grades"].values()), student
    assert [after["honest"]["grades"][t][:2] for t in TESTS] == [(10, None)] * 3
    assert [after["blank"]["grades"][t][0] for t in TESTS] == [0, 0, 0]
    assert after["mutant"]["grades"][TESTS[0]][0] < 10
    assert [s for s in STUDENTS if after[s]["flagged"]] == ["cheat"]


def test_whichever_runs_last_the_gradebook_ends_the_same(workflow):
    _, seen = workflow
    assert seen["after the grader again"] == seen["after autograde"]
    assert "(0 graded now, 4 already graded)" in seen["grader last"].stdout
    first, last = seen["after the grader"], seen["after autograde"]
    for student in STUDENTS:  # the grader alone already wrote the final scores
        assert [first[student]["grades"][t] for t in TESTS] == [
            last[student]["grades"][t] for t in TESTS
        ]


def test_formgrader_shows_the_graders_scores_and_the_flag(workflow):
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    course, _ = workflow
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    rows = {
        row["student"]: row
        for row in NbGraderAPI(config=config).get_notebook_submissions(WORKFLOW, WORKFLOW)
    }
    assert {s: (r["flagged"], r["failed_tests"]) for s, r in rows.items()} == {
        "honest": (False, False),
        "mutant": (False, True),
        "blank": (False, True),
        "cheat": (True, True),
    }
    assert not any(row["needs_manual_grade"] for row in rows.values())


def test_manual_grades_survive_and_conflicts_are_reported(workflow):
    _, seen = workflow
    said = seen["manual kept"].stdout
    assert "manual grades kept (1)" in said and "honest self_attention: 7 by hand, 10 here" in said
    honest = seen["manual after autograde"]["honest"]["grades"]["test_self_attention"]
    assert honest == (10, 7, False)  # autograde again: still 7, nothing to grade by hand
    lms = {row.split(",")[0]: row.split(",") for row in seen["lms with manual"].splitlines()}
    assert lms["honest"][1:] == ["10", "7", "10", "27"]
    assert "manual grades overwritten (1)" in seen["overwritten"].stdout
    assert seen["after overwriting"]["honest"]["grades"]["test_self_attention"] == (10, None, False)


def test_released_feedback_quotes_the_grader(workflow):
    course, _ = workflow
    for student in ("mutant", "blank"):
        html_text = student_outputs(course, WORKFLOW, student)["feedback html"]
        grader = (grading_dir(course, WORKFLOW) / "feedback" / f"{student}.md").read_text()
        quoted = [line for line in grader.splitlines() if line.startswith(("- FAIL", "- PASS"))]
        assert quoted, student
        assert all(html.escape(line, quote=False) in html_text for line in quoted), student
        assert "BEGIN HIDDEN TESTS" not in html_text and "grade_function" not in html_text
    mutant = (grading_dir(course, WORKFLOW) / "feedback" / "mutant.md").read_text()
    assert "Likely mistake" in mutant


def test_the_class_report_names_mistakes_and_suspects(workflow):
    course, seen = workflow
    out = grading_dir(course, WORKFLOW)
    page = (out / "report.html").read_text()
    for image in ("scores.png", "checks.png"):
        assert f"report_files/{image}" in page and (out / "report_files" / image).stat().st_size
    assert "Suspected tampering" in page and "<td>cheat</td>" in page
    assert f"class report: {out / 'report.html'}" in seen["overwritten"].stdout
