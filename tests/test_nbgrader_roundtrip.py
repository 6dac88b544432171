"""The nbgrader round trip of the chapter 3 exercise, in a throwaway copy of the course.

Release the assignment, validate the source (it passes) and the release (its tests fail),
autograde four submissions with the hidden test cells, which run the battery in the
kernel (the reference, the untouched release, one with a wrong function, and a right one
that writes warnings on stderr), and export the grades to CSV.
"""

import csv
import shutil
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.validator import Validator
from traitlets.config.loader import PyFileConfigLoader

from exercises import build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
AUTOGRADER = REPO / "autograder"
ASSIGNMENT = "ch03_self_attention"
CONTRACT = ("scaled_dot_product_attention", "self_attention", "sinusoidal_positional_encoding")
POINTS = 10.0
MAX_SCORE = POINTS * len(CONTRACT)

# The mutant: attention without the 1/sqrt(d) scaling, a classic mistake.
UNSCALED_ATTENTION = '''def scaled_dot_product_attention(q, k, v):
    """Forgets to divide the scores by sqrt(d)."""
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights
'''


# Emitted on every call: PyTorch warns on stderr like this, which must not cost points.
WARNING = """
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("this warning must not cost points", UserWarning, stacklevel=1)"""
STUDENTS = ("correct", "blank", "mutant", "warns")


def make_course(root: Path) -> Path:
    """A copy of the course at ``root/exercises``, beside links to the trusted packages.

    The copied ``nbgrader_config.py`` puts its parent folder, ``root``, on the kernels'
    PYTHONPATH, so ``root`` gets the layout of the repository.
    """
    course = root / "exercises"
    course.mkdir(parents=True)
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    shutil.copytree(build.source_path(ASSIGNMENT).parent, course / "source" / ASSIGNMENT)
    (root / "autograder").symlink_to(AUTOGRADER, target_is_directory=True)
    (root / "solutions").symlink_to(REPO / "solutions", target_is_directory=True)
    return course


def submit(course: Path, student: str, nb) -> None:
    path = course / "submitted" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


def with_cell_source(nb, grade_id: str, source: str):
    """A copy of ``nb`` whose cell ``grade_id`` holds ``source``."""
    nb = nbformat.from_dict(nb)
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    cell.source = source
    return nb


def warning_on_every_call(nb, grade_id: str):
    """A copy of ``nb`` whose solution ``grade_id`` warns before it computes."""
    (cell,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    warning = "import warnings\n\n" + cell.source.replace(
        build.BEGIN_SOLUTION, build.BEGIN_SOLUTION + WARNING, 1
    )
    return with_cell_source(nb, grade_id, warning)


def course_config(course: Path):
    """The course's configuration, loaded the way nbgrader loads it (and with its effects)."""
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return config


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The course after release, three submissions and autograding."""
    course = make_course(tmp_path_factory.mktemp("roundtrip"))
    build.generate_release(ASSIGNMENT, course)
    source = nbformat.read(build.source_path(ASSIGNMENT, course), as_version=4)
    release = nbformat.read(build.release_path(ASSIGNMENT, course), as_version=4)
    submit(course, "correct", source)
    submit(course, "blank", release)
    submit(course, "mutant", with_cell_source(source, CONTRACT[0], UNSCALED_ATTENTION))
    submit(course, "warns", warning_on_every_call(source, CONTRACT[2]))
    build.run_nbgrader(course, "autograde", ASSIGNMENT)
    return course


@pytest.fixture
def validator(course):
    """A Validator with the course's configuration; it sets PYTHONPATH, so undo that after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.setenv("PATH", build.nbgrader_env()["PATH"])
        yield lambda **options: Validator(config=course_config(course), **options)


def test_source_passes_validation(course, validator):
    results = validator(validate_all=True).validate(str(build.source_path(ASSIGNMENT, course)))
    assert results == {}, results


def test_release_fails_validation(course, validator):
    """What a student's Validate button reports on the release: every visible test fails."""
    results = validator().validate(str(build.release_path(ASSIGNMENT, course)))
    failed = "\n".join(cell["source"] for cell in results["failed"])
    for name in CONTRACT:
        assert f"= {name}(" in failed, f"the visible tests of {name} should fail on the stub"
    assert "NotImplementedError" in "\n".join(cell["raw_error"] for cell in results["failed"])


def scores(course: Path) -> dict[str, dict[str, float]]:
    """Score of each hidden test cell, by student."""
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "attention-course") as gradebook:
        return {
            student: {
                name: gradebook.find_grade(f"test_{name}", ASSIGNMENT, ASSIGNMENT, student).score
                for name in CONTRACT
            }
            for student in STUDENTS
        }


def test_autograde_scores(course):
    by_student = scores(course)
    assert by_student["correct"] == dict.fromkeys(CONTRACT, POINTS)
    assert by_student["warns"] == dict.fromkeys(CONTRACT, POINTS)
    assert by_student["blank"] == dict.fromkeys(CONTRACT, 0.0)
    mutant = by_student["mutant"]
    assert mutant["sinusoidal_positional_encoding"] == POINTS
    assert mutant["scaled_dot_product_attention"] < POINTS
    assert 0 < sum(mutant.values()) < MAX_SCORE


def test_export_to_csv(course):
    build.run_nbgrader(course, "export")
    with open(course / "grades.csv", newline="") as file:
        rows = {row["student_id"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(STUDENTS)
    for row in rows.values():
        assert row["assignment"] == ASSIGNMENT
        assert float(row["max_score"]) == MAX_SCORE
    assert float(rows["correct"]["score"]) == MAX_SCORE
    assert float(rows["warns"]["score"]) == MAX_SCORE
    assert float(rows["blank"]["score"]) == 0.0
    assert 0.0 < float(rows["mutant"]["score"]) < MAX_SCORE
