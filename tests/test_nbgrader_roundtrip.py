"""The nbgrader round trip of every chapter's exercise, each in a throwaway copy of the course.

Per assignment with a template and a battery (one round trip each): release the
assignment, validate the source (it passes) and the release (every check cell fails, and
says that the function is not written yet), autograde four submissions with the course's
pipeline (the notebook in a sandboxed kernel, then the sandboxed grader's verdict in each
hidden test cell: ``exercises/nbgrader_config.py``) — the reference, the untouched release,
one with a known mistake in its last function, and a right one that writes warnings on
stderr — and export the grades to CSV.
"""

import csv
import importlib
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.validator import Validator
from traitlets.config.loader import PyFileConfigLoader

from autograder.batteries import available
from autograder.contracts import assignment as contracts_of
from exercises import build

pytestmark = pytest.mark.slow

ASSIGNMENTS = [a for a in build.assignments() if a in available()]
STUDENTS = ("correct", "blank", "mutant", "warns")

# Emitted on every call: PyTorch warns on stderr like this, which must not cost points.
WARNING = """
with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.warn("this warning must not cost points", UserWarning, stacklevel=1)"""


def submit(course: Path, assignment: str, student: str, nb) -> None:
    path = course / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


def with_cell_source(nb, grade_id: str, source: str):
    """A copy of ``nb`` whose cell ``grade_id`` holds ``source``."""
    nb = nbformat.from_dict(nb)
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = source
    return nb


def first_known_mistake(assignment: str, name: str) -> str:
    """A solution cell that defines ``name`` as its first known mistake."""
    module = importlib.import_module(f"autograder.mutants.{assignment}")
    mutant = next(mutant for mutant in module.MUTANTS if mutant.function == name)
    return f"from {module.__name__} import {mutant.name} as {name}\n"


def warning_on_every_call(nb, grade_id: str):
    """A copy of ``nb`` whose solution ``grade_id`` warns before it computes."""
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    lines = cell.source.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.strip() == build.BEGIN_SOLUTION]
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    warning = [indent + line for line in WARNING.splitlines() if line]
    source = "\n".join(["import warnings", *lines[: at + 1], *warning, *lines[at + 1 :]])
    return with_cell_source(nb, grade_id, source)


def course_config(course: Path):
    """The course's configuration, loaded the way nbgrader loads it (and with its effects)."""
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return config


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def course(request, tmp_path_factory):
    """(assignment, course) after release, four submissions and autograding."""
    assignment = request.param
    names = contracts_of(assignment).names
    course = build.copy_course(tmp_path_factory.mktemp(f"roundtrip-{assignment}"), assignment)
    source = nbformat.read(build.source_path(assignment, course), as_version=4)
    release = nbformat.read(build.release_path(assignment, course), as_version=4)
    submit(course, assignment, "correct", source)
    submit(course, assignment, "blank", release)
    mutant = with_cell_source(source, names[-1], first_known_mistake(assignment, names[-1]))
    submit(course, assignment, "mutant", mutant)
    submit(course, assignment, "warns", warning_on_every_call(source, names[0]))
    build.run_nbgrader(course, "autograde", assignment)
    return assignment, course


@pytest.fixture
def validator(course):
    """A Validator with the course's configuration; it sets PYTHONPATH, so undo that after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.setenv("PATH", build.nbgrader_env()["PATH"])
        yield lambda **options: Validator(config=course_config(course[1]), **options)


def test_source_passes_validation(course, validator):
    assignment, root = course
    results = validator(validate_all=True).validate(str(build.source_path(assignment, root)))
    assert results == {}, results


def test_release_fails_validation_saying_what_to_write(course, validator):
    """What a student's Validate button reports on the release: every check cell fails."""
    assignment, root = course
    results = validator().validate(str(build.release_path(assignment, root)))
    failed = {cell["source"].splitlines()[0]: cell["raw_error"] for cell in results["failed"]}
    for name in contracts_of(assignment).names:
        banner = build.CHECKS_BANNER.format(name=name)
        assert banner in failed, f"the checks of {name} should fail on the stub"
        assert "Not written yet" in failed[banner]
        assert all(len(line) < 90 for line in failed[banner].splitlines())


def scores(assignment: str, course: Path) -> dict[str, dict[str, float]]:
    """Score of each hidden test cell, by student."""
    names = contracts_of(assignment).names
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "attention-course") as gradebook:
        return {
            student: {
                name: gradebook.find_grade(f"test_{name}", assignment, assignment, student).score
                for name in names
            }
            for student in STUDENTS
        }


def test_autograde_scores(course):
    assignment, root = course
    points = {c.name: c.points for c in contracts_of(assignment).contracts}
    by_student = scores(assignment, root)
    assert by_student["correct"] == points
    assert by_student["warns"] == points
    assert by_student["blank"] == dict.fromkeys(points, 0.0)
    mutant, last = by_student["mutant"], contracts_of(assignment).names[-1]
    assert mutant[last] < points[last]
    assert {name: mutant[name] for name in points if name != last} == {
        name: value for name, value in points.items() if name != last
    }


def test_export_to_csv(course):
    assignment, root = course
    max_score = sum(c.points for c in contracts_of(assignment).contracts)
    build.run_nbgrader(root, "export")
    with open(root / "grades.csv", newline="") as file:
        rows = {row["student_id"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(STUDENTS)
    for row in rows.values():
        assert row["assignment"] == assignment
        assert float(row["max_score"]) == max_score
    assert float(rows["correct"]["score"]) == max_score
    assert float(rows["warns"]["score"]) == max_score
    assert float(rows["blank"]["score"]) == 0.0
    assert 0.0 < float(rows["mutant"]["score"]) < max_score
