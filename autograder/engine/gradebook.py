"""Write the grader's scores into an nbgrader course's gradebook, flag tampering, keep
manual grades.

When the submissions folder is the ``submitted/`` folder of an nbgrader course (its
parent holds ``nbgrader_config.py`` or ``gradebook.db``), each function's score becomes
the ``auto_score`` of the hidden test cell ``test_<function>``: formgrader, its "Tests
Failed?" column and ``nbgrader export`` then show the grader's scores. ``nbgrader
autograde`` writes the same score there (its hidden test cells carry the grader's verdict,
see ``autograder.engine.nbgrader_steps``), so whichever of the two runs last, the
gradebook ends the same (``sync_student`` is the one place that writes it).

``manual_score`` belongs to the people grading in formgrader. A manual score that differs
from the grader's is kept and reported as a conflict, unless ``overwrite_manual``.

The kernel's own result on a hidden test cell (what ``nbgrader autograde`` saw the cell
produce before the grader's verdict replaced it) is a claim the student's code could
forge. A claim higher than the grader's score flags the submission in formgrader and
puts a comment on the student's answer cell: "kernel 10, grader 0: ...".

sqlite is not safe to share between threads: call this from the main thread only.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOLERANCE = 1e-9
SUSPECT_COMMENT = re.compile(r"^kernel [-\d.e+]+, grader [-\d.e+]+: ")


@dataclass(frozen=True)
class Suspect:
    """A function that passed in the notebook's kernel but scored less in the sandbox."""

    student: str
    function: str
    kernel_score: float
    engine_score: float
    max_score: float

    def comment(self) -> str:
        return (
            f"kernel {self.kernel_score:g}, grader {self.engine_score:g}: the hidden tests of"
            f" {self.function} scored {self.kernel_score:g} in the notebook's kernel, where the"
            f" notebook's own code can change how they run, and {self.engine_score:g} /"
            f" {self.max_score:g} in the course's sandboxed grader, whose score counts."
            " Flagged for review as suspected tampering."
        )


@dataclass(frozen=True)
class ManualGrade:
    """A score set by hand in formgrader that differs from the grader's."""

    student: str
    function: str
    manual_score: float
    engine_score: float
    overwritten: bool


@dataclass
class GradebookResult:
    suspects: list[Suspect] = field(default_factory=list)
    manual: list[ManualGrade] = field(default_factory=list)
    note: str = ""


def find_course(submitted_dir: Path) -> Path | None:
    """The course folder when ``submitted_dir`` is an nbgrader course's ``submitted/``."""
    submitted_dir = Path(submitted_dir).resolve()
    root = submitted_dir.parent
    if submitted_dir.name != "submitted":
        return None
    if (root / "nbgrader_config.py").is_file() or (root / "gradebook.db").is_file():
        return root
    return None


def course_settings(root: Path) -> tuple[str, str]:
    """The database URL and course id that nbgrader itself would use for ``root``."""
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    config = Config()
    if (root / "nbgrader_config.py").is_file():
        config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    coursedir = CourseDirectory(config=config)
    return coursedir.db_url, coursedir.course_id or "default_course"


def suspects_of(record: dict, kernel_scores: Mapping[str, float | None]) -> list[Suspect]:
    """The functions whose kernel claim is higher than the grader's score."""
    if record.get("status") == "error":
        return []
    found = []
    for function, entry in record["functions"].items():
        claim = kernel_scores.get(function)
        if claim is not None and claim > entry["score"] + TOLERANCE:
            found.append(
                Suspect(record["student"], function, claim, entry["score"], entry["max_score"])
            )
    return found


def record_scores(
    root: Path,
    assignment_id: str,
    records: Sequence[dict],
    kernel_scores: Mapping[str, Mapping[str, float | None]],
    overwrite_manual: bool = False,
    commit: bool = True,
) -> GradebookResult:
    """Write every record into the course's gradebook (see ``sync_student``); without
    ``commit``, change nothing and only say what writing would find (the manual grades)."""
    from nbgrader.api import Gradebook, MissingEntry

    db_url, course_id = course_settings(root)
    result = GradebookResult()
    with Gradebook(db_url, course_id) as book:
        try:
            book.find_assignment(assignment_id)
        except MissingEntry:
            result.note = (
                f"the gradebook has no assignment '{assignment_id}' "
                "(run nbgrader generate_assignment first); no scores were written"
            )
            return result
        missing_cells: set[str] = set()
        for record in records:
            claims = kernel_scores.get(record["student"], {})
            suspects, manual = sync_student(
                book, assignment_id, record, claims, overwrite_manual, missing_cells, commit
            )
            result.suspects += suspects
            result.manual += manual
        if not commit:
            book.db.rollback()
            return result
        book.db.commit()
    result.note = f"scores written to the nbgrader gradebook ({len(records)} students)"
    if missing_cells:
        result.note += f"; no grade cell for {', '.join(sorted(missing_cells))}"
    return result


def sync_student(
    book,
    assignment_id: str,
    record: dict,
    kernel_scores: Mapping[str, float | None],
    overwrite_manual: bool = False,
    missing_cells: set | None = None,
    create: bool = True,
) -> tuple[list[Suspect], list[ManualGrade]]:
    """Make one student's gradebook entries say what the grader's record says.

    For each hidden test cell: ``auto_score`` is the grader's score (none, and a manual
    grade needed, when the grader itself failed on the submission); a differing manual
    score is kept (or cleared when ``overwrite_manual``) and returned. A kernel claim above
    the grader's score flags the notebook and comments the answer cell; a comment of ours
    that no longer applies is removed, and so is the flag it set. The caller commits.
    Without ``create``, a student with no submission in the gradebook is left out.
    """
    student = record["student"]
    notebook = _submission_notebook(book, assignment_id, student, create)
    if notebook is None:
        return [], []
    suspects = suspects_of(record, kernel_scores)
    by_function = {suspect.function: suspect for suspect in suspects}
    manual, unflag = [], False
    for function, entry in record["functions"].items():
        grade = _find(book.find_grade, f"test_{function}", assignment_id, student)
        if grade is None:
            if missing_cells is not None:
                missing_cells.add(f"test_{function}")
            continue
        conflict = _write_score(grade, record, entry, overwrite_manual)
        if conflict is not None:
            manual.append(ManualGrade(student, function, *conflict))
        comment = _find(book.find_comment, function, assignment_id, student)
        unflag |= _write_comment(comment, by_function.get(function))
    if suspects:
        notebook.flagged = True
    elif unflag:
        notebook.flagged = False
    return suspects, manual


def _submission_notebook(book, assignment_id: str, student: str, create: bool = True):
    from nbgrader.api import MissingEntry

    try:
        book.find_submission(assignment_id, student)
    except MissingEntry:
        if not create:
            return None
        book.update_or_create_student(student)
        with warnings.catch_warnings():  # nbgrader's own add_submission trips SQLAlchemy warnings
            warnings.simplefilter("ignore")
            book.add_submission(assignment_id, student)
    return book.find_submission_notebook(assignment_id, assignment_id, student)


def _find(finder, cell: str, assignment_id: str, student: str):
    from nbgrader.api import MissingEntry

    try:
        return finder(cell, assignment_id, assignment_id, student)
    except MissingEntry:
        return None


def _write_score(grade, record: dict, entry: dict, overwrite_manual: bool):
    """Set the grade; return (manual, grader, overwritten) when a manual score differs."""
    if record["status"] == "error":  # the grader failed: no score, a person must look
        grade.auto_score = None
        grade.needs_manual_grade = True
        return None
    score = _rescale(entry["score"], entry["max_score"], grade.max_score)
    grade.auto_score = score
    grade.needs_manual_grade = False
    manual = grade.manual_score
    if manual is None or abs(manual - score) <= TOLERANCE:
        return None
    if overwrite_manual:
        grade.manual_score = None
    return manual, score, overwrite_manual


def _write_comment(comment, suspect: Suspect | None) -> bool:
    """Comment a suspect on its answer cell; return True when a stale comment of ours
    was removed."""
    if comment is None:
        return False
    ours = bool(comment.auto_comment and SUSPECT_COMMENT.match(comment.auto_comment))
    if suspect is not None:
        comment.auto_comment = suspect.comment()
        return False
    if ours:
        comment.auto_comment = None
    return ours


def _rescale(score: float, max_score: float, cell_max: float | None) -> float:
    """The score in the grade cell's points, should the cell's points differ from the battery's."""
    if not cell_max or not max_score or abs(cell_max - max_score) < TOLERANCE:
        return float(score)
    return float(score) * cell_max / max_score


def write_suspects(path: Path, suspects: Sequence[Suspect]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "function", "kernel_score", "engine_score", "max_score"])
        for s in suspects:
            writer.writerow([s.student, s.function, s.kernel_score, s.engine_score, s.max_score])
    os.replace(temporary, path)
