"""Write the grader's scores into an nbgrader course's gradebook, and spot tampering.

When the submissions folder is the ``submitted/`` folder of an nbgrader course (its
parent holds ``nbgrader_config.py`` or ``gradebook.db``), each function's score becomes
the ``manual_score`` of the hidden test cell ``test_<function>``. nbgrader lets a
manual score override the in-kernel one, so formgrader and ``nbgrader export`` show the
grader's scores. A submission whose in-kernel score (``auto_score``, from ``nbgrader
autograde``) is higher than the grader's passed tests that its own code could tamper
with, so it is listed as suspected tampering.

sqlite is not safe to share between threads: call this from the main thread only.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Suspect:
    """A function that passed in the notebook's kernel but scored less in the sandbox."""

    student: str
    function: str
    kernel_score: float
    engine_score: float
    max_score: float


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


def record_scores(
    root: Path, assignment_id: str, records: Sequence[dict], tampering_csv: Path
) -> tuple[list[Suspect], str]:
    """Write every graded record's scores; return the suspects and a note for the summary."""
    from nbgrader.api import Gradebook, MissingEntry

    db_url, course_id = course_settings(root)
    suspects: list[Suspect] = []
    with Gradebook(db_url, course_id) as book:
        try:
            book.find_assignment(assignment_id)
        except MissingEntry:
            return [], (
                f"the gradebook has no assignment '{assignment_id}' "
                "(run nbgrader generate_assignment first); no scores were written"
            )
        missing_cells: set[str] = set()
        for record in records:
            suspects += _record_student(book, assignment_id, record, missing_cells)
        book.db.commit()
    write_suspects(tampering_csv, suspects)
    note = f"scores written to the nbgrader gradebook ({len(records)} students)"
    if missing_cells:
        note += f"; no grade cell for {', '.join(sorted(missing_cells))}"
    return suspects, note


def _record_student(book, assignment_id: str, record: dict, missing_cells: set) -> list[Suspect]:
    from nbgrader.api import MissingEntry

    student = record["student"]
    book.update_or_create_student(student)
    try:
        book.find_submission(assignment_id, student)
    except MissingEntry:
        with warnings.catch_warnings():  # nbgrader's own add_submission trips SQLAlchemy warnings
            warnings.simplefilter("ignore")
            book.add_submission(assignment_id, student)
    suspects = []
    for function, entry in record["functions"].items():
        cell = f"test_{function}"
        try:
            grade = book.find_grade(cell, assignment_id, assignment_id, student)
        except MissingEntry:
            missing_cells.add(cell)
            continue
        score = _rescale(entry["score"], entry["max_score"], grade.max_score)
        if grade.auto_score is not None and grade.auto_score > score + TOLERANCE:
            suspects.append(Suspect(student, function, grade.auto_score, score, grade.max_score))
        grade.manual_score = score
        grade.needs_manual_grade = False
    return suspects


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
