"""The nbgrader round trip of the exercises, each in a throwaway copy of the course.

Release the assignment, validate the source (it passes) and the release (its tests fail),
autograde four submissions with the hidden test cells, which run the battery in the
kernel (the reference, the untouched release, one with a wrong function, and a right one
that writes warnings on stderr), and export the grades to CSV. Chapters 3, 4 and 5 go
round (``ROUND_TRIPS``).
"""

import csv
import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.validator import Validator
from traitlets.config.loader import PyFileConfigLoader

from autograder.contracts import ASSIGNMENTS
from autograder.kit.mistakes import standalone_source
from exercises import build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
AUTOGRADER = REPO / "autograder"
POINTS = 10.0

# The mutant of chapter 3: attention without the 1/sqrt(d) scaling, a classic mistake.
UNSCALED_ATTENTION = '''def scaled_dot_product_attention(q, k, v):
    """Forgets to divide the scores by sqrt(d)."""
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights
'''


def known_mistake(assignment: str, name: str) -> str:
    """The answer cell of a known mistake of ``assignment``'s battery."""
    mutants = importlib.import_module(f"autograder.mutants.{assignment}").MUTANTS
    mutant = next(m for m in mutants if m.name == name)
    return "import math\nimport torch\n\n" + standalone_source(mutant)


# Per assignment: the function the mutant student gets wrong, its answer cell, and a function
# that does not call it (it keeps its points).
ROUND_TRIPS = {
    "ch03_self_attention": (
        "scaled_dot_product_attention",
        lambda: UNSCALED_ATTENTION,
        "sinusoidal_positional_encoding",
    ),
    "ch04_masking": (
        "masked_attention",
        lambda: known_mistake("ch04_masking", "masked_fill_zero"),
        "causal_mask",
    ),
    "ch05_multihead": (
        "multi_head_attention",
        lambda: known_mistake("ch05_multihead", "mha_scale_by_model_dim"),
        "split_heads",
    ),
}


# Emitted on every call: PyTorch warns on stderr like this, which must not cost points.
WARNING = """
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("this warning must not cost points", UserWarning, stacklevel=1)"""
STUDENTS = ("correct", "blank", "mutant", "warns")


@dataclass(frozen=True)
class RoundTrip:
    """One assignment's course copy, after release, four submissions and autograding."""

    assignment: str
    course: Path

    @property
    def contract(self) -> list[str]:
        return ASSIGNMENTS[self.assignment].names

    @property
    def max_score(self) -> float:
        return POINTS * len(self.contract)


def make_course(root: Path, assignment: str) -> Path:
    """A copy of the course at ``root/exercises``, beside links to the trusted packages.

    The copied ``nbgrader_config.py`` puts its parent folder, ``root``, on the kernels'
    PYTHONPATH, so ``root`` gets the layout of the repository.
    """
    course = root / "exercises"
    course.mkdir(parents=True)
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    shutil.copytree(build.source_path(assignment).parent, course / "source" / assignment)
    (root / "autograder").symlink_to(AUTOGRADER, target_is_directory=True)
    (root / "solutions").symlink_to(REPO / "solutions", target_is_directory=True)
    return course


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


@pytest.fixture(scope="module", params=list(ROUND_TRIPS))
def trip(request, tmp_path_factory) -> RoundTrip:
    """The course after release, four submissions and autograding."""
    assignment = request.param
    mutated, mutant_cell, _ = ROUND_TRIPS[assignment]
    course = make_course(tmp_path_factory.mktemp(f"roundtrip-{assignment}"), assignment)
    build.generate_release(assignment, course)
    source = nbformat.read(build.source_path(assignment, course), as_version=4)
    release = nbformat.read(build.release_path(assignment, course), as_version=4)
    last = ASSIGNMENTS[assignment].names[-1]
    submit(course, assignment, "correct", source)
    submit(course, assignment, "blank", release)
    submit(course, assignment, "mutant", with_cell_source(source, mutated, mutant_cell()))
    submit(course, assignment, "warns", warning_on_every_call(source, last))
    build.run_nbgrader(course, "autograde", assignment)
    return RoundTrip(assignment, course)


@pytest.fixture
def validator(trip):
    """A Validator with the course's configuration; it sets PYTHONPATH, so undo that after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.setenv("PATH", build.nbgrader_env()["PATH"])
        yield lambda **options: Validator(config=course_config(trip.course), **options)


def test_source_passes_validation(trip, validator):
    path = build.source_path(trip.assignment, trip.course)
    results = validator(validate_all=True).validate(str(path))
    assert results == {}, results


def test_release_fails_validation(trip, validator):
    """What a student's Validate button reports on the release: every visible test fails."""
    results = validator().validate(str(build.release_path(trip.assignment, trip.course)))
    failed = "\n".join(cell["source"] for cell in results["failed"])
    for name in trip.contract:
        assert f"= {name}(" in failed, f"the visible tests of {name} should fail on the stub"
    assert "NotImplementedError" in "\n".join(cell["raw_error"] for cell in results["failed"])


def scores(trip: RoundTrip) -> dict[str, dict[str, float]]:
    """Score of each hidden test cell, by student."""
    database = f"sqlite:///{trip.course / 'gradebook.db'}"
    with Gradebook(database, "attention-course") as gradebook:
        return {
            student: {
                name: gradebook.find_grade(
                    f"test_{name}", trip.assignment, trip.assignment, student
                ).score
                for name in trip.contract
            }
            for student in STUDENTS
        }


def test_autograde_scores(trip):
    by_student = scores(trip)
    assert by_student["correct"] == dict.fromkeys(trip.contract, POINTS)
    assert by_student["warns"] == dict.fromkeys(trip.contract, POINTS)
    assert by_student["blank"] == dict.fromkeys(trip.contract, 0.0)
    mutated, _, independent = ROUND_TRIPS[trip.assignment]
    mutant = by_student["mutant"]
    assert mutant[independent] == POINTS
    assert mutant[mutated] < POINTS
    assert 0 < sum(mutant.values()) < trip.max_score


def test_export_to_csv(trip):
    build.run_nbgrader(trip.course, "export")
    with open(trip.course / "grades.csv", newline="") as file:
        rows = {row["student_id"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(STUDENTS)
    for row in rows.values():
        assert row["assignment"] == trip.assignment
        assert float(row["max_score"]) == trip.max_score
    assert float(rows["correct"]["score"]) == trip.max_score
    assert float(rows["warns"]["score"]) == trip.max_score
    assert float(rows["blank"]["score"]) == 0.0
    assert 0.0 < float(rows["mutant"]["score"]) < trip.max_score
