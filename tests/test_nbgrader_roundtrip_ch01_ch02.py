"""The nbgrader round trip of the chapter 1 and 2 exercises, in a throwaway copy of the course.

As ``tests/test_nbgrader_roundtrip.py`` does for chapter 3: release each assignment, then
autograde three submissions with the hidden test cells, which run the battery in the kernel
(the reference, the untouched release, and one with a known mistake in one function).
"""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from autograder.contracts import ASSIGNMENTS
from autograder.kit.mistakes import standalone_source
from autograder.mutants import ch01_seq2seq, ch02_attention
from exercises import build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
POINTS = 10.0
# One known mistake per assignment, in a function that no later function calls.
MISTAKES = {
    "ch01_seq2seq": next(m for m in ch01_seq2seq.MUTANTS if m.name == "ce_mean_over_all_positions"),
    "ch02_attention": next(m for m in ch02_attention.MUTANTS if m.name == "dot_scaled"),
}
STUDENTS = ("correct", "blank", "mistake")


def make_course(root: Path, assignments) -> Path:
    """A copy of the course at ``root/exercises``, beside links to the trusted packages."""
    course = root / "exercises"
    course.mkdir(parents=True)
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    for assignment in assignments:
        shutil.copytree(build.source_path(assignment).parent, course / "source" / assignment)
    (root / "autograder").symlink_to(REPO / "autograder", target_is_directory=True)
    (root / "solutions").symlink_to(REPO / "solutions", target_is_directory=True)
    return course


def submit(course: Path, student: str, assignment: str, nb) -> None:
    path = course / "submitted" / student / assignment / f"{assignment}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def with_mistake(nb, mutant):
    """A copy of ``nb`` whose solution cell of ``mutant.function`` is the known mistake."""
    nb = nbformat.from_dict(nb)
    (cell,) = [
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == mutant.function
    ]
    cell.source = standalone_source(mutant)
    return nb


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The course after release, three submissions per assignment and autograding."""
    course = make_course(tmp_path_factory.mktemp("roundtrip"), MISTAKES)
    for assignment, mutant in MISTAKES.items():
        build.generate_release(assignment, course)
        source = nbformat.read(build.source_path(assignment, course), as_version=4)
        release = nbformat.read(build.release_path(assignment, course), as_version=4)
        submit(course, "correct", assignment, source)
        submit(course, "blank", assignment, release)
        submit(course, "mistake", assignment, with_mistake(source, mutant))
        build.run_nbgrader(course, "autograde", assignment)
    return course


@pytest.mark.parametrize("assignment", MISTAKES)
def test_autograde_scores(course, assignment):
    names = ASSIGNMENTS[assignment].names
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "attention-course") as gradebook:
        scores = {
            student: {
                name: gradebook.find_grade(f"test_{name}", assignment, assignment, student).score
                for name in names
            }
            for student in STUDENTS
        }
    assert scores["correct"] == dict.fromkeys(names, POINTS)
    assert scores["blank"] == dict.fromkeys(names, 0.0)
    wrong = MISTAKES[assignment].function
    assert scores["mistake"] == {name: POINTS for name in names if name != wrong} | {
        wrong: scores["mistake"][wrong]
    }
    assert scores["mistake"][wrong] < POINTS
