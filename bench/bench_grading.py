"""Grading throughput: ``python -m autograder grade`` against ``nbgrader autograde``.

Run from the repository root (nbgrader must find ``alembic`` on PATH):

    PATH=.venv/bin:$PATH .venv/bin/python bench/bench_grading.py [--count 100] [--workers N]
                           [--skip-nbgrader] [--course-pipeline] [--mix-seed S] [--keep]

It builds a throwaway copy of the chapter 3 course in a temporary folder (the source
notebook, the release made by ``nbgrader generate_assignment``, the repository's
``autograder/`` and ``solutions/`` linked beside it), writes ``--count`` generated
submissions into ``<course>/submitted/``, then grades all of them twice in the same run:
first with ``nbgrader autograde`` as nbgrader does it on its own (its default pipeline: a
plain kernel, whose hidden test cells run the battery in the student's process), then
with the grader (sandboxed children, the same battery). Each is one subprocess, timed from
its start to its exit, start-up included. The first is the baseline of the ratio.

``--course-pipeline`` adds a third run on a second copy of the same submissions:
``nbgrader autograde`` with the course's own pipeline (``exercises/nbgrader_config.py``:
the notebook in a sandboxed kernel, then the grader's verdicts in the hidden test cells),
which is what an instructor who follows the README runs. It costs a kernel start and a
grading per student, so it is slower than either tool alone; it is timed, not compared.

The submissions are a fixed mix (``--mix-seed``): ``honest`` (the reference code in every
answer cell), ``wrong`` (one or two functions replaced by known mistakes from
``autograder/mutants``), ``partial`` (honest, with one answer left as released) and
``blank`` (the release as is).

How to read the output:

- ``machine``: CPU cores usable by this process, and the grader's isolation level, read
  from its summary (``bubblewrap`` or the weaker ``process``).
- The table gives, per run, the submissions graded, the wall-clock seconds of the whole
  command, and submissions per minute. ``grader, grading only`` uses the time the
  grader's last progress line reports, in whole seconds: from the moment it has found
  the submissions (so the self-check and the sandboxes' start are in) to the last
  record; the interpreter start-up, the imports and what is written after (feedback,
  CSV, the class report, the nbgrader gradebook) are not. ``ratio`` is the grader's
  throughput over nbgrader's, whole command against whole command; the goal is at
  least 20.
- ``agreement``: how many students get the same total from both tools (within 1e-6),
  by kind of submission. Both run the same battery with different random seeds; every
  kind must agree, ``wrong`` included, since each known mistake fails the same checks
  on every seed (``tests/test_batteries.py`` proves it). The differing students are
  listed. The run fails if a tool left any student without a score. The grader, run
  second, also compares its scores with the kernel's in the gradebook and counts the
  suspected tampering, which must be 0 here.

Timings are only as good as the machine is quiet: run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder.engine.gradebook import course_settings  # noqa: E402
from autograder.kit.mistakes import standalone_source  # noqa: E402
from autograder.mutants.ch03_self_attention import MUTANTS  # noqa: E402
from exercises import build  # noqa: E402

ASSIGNMENT = "ch03_self_attention"
KINDS = {"honest": 0.35, "wrong": 0.40, "partial": 0.10, "blank": 0.15}
TOLERANCE = 1e-6


# The course -------------------------------------------------------------------------------


# nbgrader's own autograde pipeline (nbgrader 0.9's default), the baseline: the notebook runs
# in a plain kernel and its hidden test cells run the battery there.
NBGRADER_PIPELINE = """
c.Autograde.autograde_preprocessors = [
    "nbgrader.preprocessors.Execute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
"""


def make_course(root: Path, pipeline: str) -> Path:
    """A released copy of the course at ``root/exercises``, beside links to the packages.

    ``pipeline`` is ``"nbgrader"`` (nbgrader's own autograde steps) or ``"course"`` (the
    course's: a sandboxed kernel, then the grader's verdicts in the hidden test cells).
    """
    extra = NBGRADER_PIPELINE if pipeline == "nbgrader" else ""
    return build.copy_course(root, ASSIGNMENT, config_extra=extra)


def answer_cells(nb) -> dict[str, nbformat.NotebookNode]:
    """The solution cells of ``nb``, by grade_id (the contract name)."""
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if cell.metadata.get("nbgrader", {}).get("solution")
    }


def honest_sources(course: Path) -> dict[str, str]:
    """Each answer cell of the source notebook without its solution markers."""
    source = nbformat.read(build.source_path(ASSIGNMENT, course), as_version=4)
    markers = (build.BEGIN_SOLUTION, build.END_SOLUTION)
    return {
        name: "\n".join(line for line in cell.source.splitlines() if line.strip() not in markers)
        for name, cell in answer_cells(source).items()
    }


# Known mistakes as cell text ----------------------------------------------------------------


# Submissions ------------------------------------------------------------------------------


@dataclass
class Student:
    name: str
    kind: str
    mistakes: tuple[str, ...] = ()


def plan_students(count: int, seed: int) -> list[Student]:
    """``count`` students, each of a kind drawn with the weights of ``KINDS``."""
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    students = []
    for index, kind in enumerate(kinds):
        mistakes: tuple[str, ...] = ()
        if kind == "wrong":
            chosen = rng.sample(MUTANTS, k=rng.choice((1, 1, 2)))
            by_function = {m.function: m for m in chosen}  # one mistake per function
            mistakes = tuple(f"{m.function}:{m.name}" for m in by_function.values())
        elif kind == "partial":
            mistakes = (rng.choice(sorted({m.function for m in MUTANTS})),)
        students.append(Student(f"s{index:03d}_{kind}", kind, mistakes))
    return students


def submission(student: Student, release, honest: dict[str, str]):
    """The notebook ``student`` hands in, made from the release notebook."""
    nb = nbformat.from_dict(release)
    cells = answer_cells(nb)
    if student.kind == "blank":
        return nb
    mutants = {f"{m.function}:{m.name}": m for m in MUTANTS}
    for name, cell in cells.items():
        cell.source = honest[name]
    for mistake in student.mistakes:
        if student.kind == "wrong":
            cells[mutants[mistake].function].source = standalone_source(mutants[mistake])
        else:  # partial: this answer stays as released
            cells[mistake].source = answer_cells(nbformat.from_dict(release))[mistake].source
    return nb


def write_submissions(course: Path, students: list[Student]) -> None:
    release = nbformat.read(build.release_path(ASSIGNMENT, course), as_version=4)
    honest = honest_sources(course)
    for student in students:
        path = course / "submitted" / student.name / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(submission(student, release, honest), path)


# Running the two tools ----------------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    stdout: str
    stderr: str


def timed(command: list[str], cwd: Path) -> Timed:
    """Run ``command``; its wall time; stop with its output if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=build.nbgrader_env(), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(command[:3])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return Timed(seconds, done.stdout, done.stderr)


def run_nbgrader(course: Path) -> Timed:
    nbgrader = str(Path(sys.executable).parent / "nbgrader")
    return timed([nbgrader, "autograde", ASSIGNMENT], course)


def run_grader(course: Path, out: Path, workers: int | None) -> Timed:
    command = [sys.executable, "-m", "autograder", "grade", ASSIGNMENT, str(course / "submitted")]
    command += ["--out", str(out)] + (["--workers", str(workers)] if workers else [])
    return timed(command, REPO)


def grading_seconds(stderr: str) -> float | None:
    """The time on the grader's last progress line, ``N/N graded (Ss)``."""
    found = re.findall(r"^(\d+)/\1 graded \((\d+)s\)", stderr, flags=re.MULTILINE)
    return float(found[-1][1]) if found else None


def summary_line(stdout: str, label: str) -> str:
    """The value after ``label: `` on a line of the grader's summary."""
    found = re.search(rf"^{label}: (.*)$", stdout, flags=re.MULTILINE)
    return found.group(1) if found else "unknown"


# Scores -------------------------------------------------------------------------------------


def grader_totals(out: Path) -> dict[str, float]:
    with (out / "grades.csv").open(newline="") as handle:
        return {row["student"]: float(row["total"]) for row in csv.DictReader(handle)}


def nbgrader_totals(course: Path, students: list[Student]) -> dict[str, float]:
    """Each student's in-kernel total (``auto_score``; the grader writes ``manual_score``)."""
    from nbgrader.api import Gradebook, MissingEntry

    db_url, course_id = course_settings(course)
    functions = sorted({m.function for m in MUTANTS})
    totals = {}
    with Gradebook(db_url, course_id) as book:
        for student in students:
            try:
                scores = [
                    book.find_grade(f"test_{f}", ASSIGNMENT, ASSIGNMENT, student.name).auto_score
                    for f in functions
                ]
            except MissingEntry:
                continue
            if None not in scores:
                totals[student.name] = sum(scores)
    return totals


def require_all(tool: str, totals: dict, students: list[Student]) -> None:
    missing = [s.name for s in students if s.name not in totals]
    if missing:
        sys.exit(f"{tool} gave no score to {len(missing)} students: {', '.join(missing[:10])}")


# Report -------------------------------------------------------------------------------------


def per_minute(count: int, seconds: float | None) -> float | None:
    return 60.0 * count / seconds if seconds else None


def table(rows: list[tuple[str, int, float | None]]) -> str:
    lines = [f"{'tool':<28} {'submissions':>11} {'wall s':>9} {'per minute':>11}"]
    for name, count, seconds in rows:
        rate = per_minute(count, seconds)
        wall = f"{seconds:9.1f}" if seconds else f"{'-':>9}"
        speed = f"{rate:11.1f}" if rate else f"{'-':>11}"
        lines.append(f"{name:<28} {count:>11} {wall} {speed}")
    return "\n".join(lines)


def agreement(students, grader: dict, kernel: dict) -> str:
    lines, differing = ["agreement on the total (grader = nbgrader):"], []
    for kind in KINDS:
        group = [s for s in students if s.kind == kind]
        same = [s for s in group if abs(grader[s.name] - kernel[s.name]) <= TOLERANCE]
        differing += [s for s in group if s not in same]
        if group:
            lines.append(f"  {kind:<8} {len(same):4d} / {len(group)}")
    total = len(students) - len(differing)
    lines.append(f"  {'all':<8} {total:4d} / {len(students)}")
    for s in differing:
        mistakes = ", ".join(s.mistakes)
        lines.append(
            f"  differs: {s.name} ({mistakes}): grader {grader[s.name]:g},"
            f" nbgrader {kernel[s.name]:g}"
        )
    return "\n".join(lines)


def report(students, nbgrader: Timed | None, grader: Timed, scores, kernel, course_run) -> None:
    count = len(students)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} CPU cores usable (os.cpu_count() = {os.cpu_count()})")
    print(f"grader isolation: {summary_line(grader.stdout, 'isolation')}")
    kinds = ", ".join(f"{k} {sum(s.kind == k for s in students)}" for k in KINDS)
    print(f"submissions: {count} ({kinds})\n")
    rows = [
        ("nbgrader autograde", count, nbgrader.seconds if nbgrader else None),
        ("grader (whole command)", count, grader.seconds),
        ("grader, grading only", count, grading_seconds(grader.stderr)),
    ]
    if course_run:
        rows.append(("autograde, course pipeline", count, course_run.seconds))
    print(table(rows))
    if nbgrader:
        ratio = nbgrader.seconds / grader.seconds
        only = grading_seconds(grader.stderr)
        print(f"\nratio (grader / nbgrader throughput): {ratio:.1f} (goal: at least 20)")
        if only:
            print(f"ratio, grading only: {nbgrader.seconds / only:.1f}")
        print()
        print(agreement(students, scores, kernel))
        suspects = summary_line(grader.stdout, "suspected tampering")
        print(f"grader's suspected tampering (kernel scored higher): {suspects}")


# Main ---------------------------------------------------------------------------------------


def parse(argv) -> argparse.Namespace:
    main = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    main.add_argument("--count", type=int, default=100, help="submissions (100)")
    main.add_argument("--workers", type=int, help="the grader's --workers (its default)")
    main.add_argument("--skip-nbgrader", action="store_true", help="time the grader only")
    main.add_argument("--mix-seed", type=int, default=0, help="seed of the submission mix")
    main.add_argument("--keep", action="store_true", help="keep the temporary course")
    main.add_argument(
        "--course-pipeline",
        action="store_true",
        help="also time nbgrader autograde with the course's pipeline (sandboxed kernel, "
        "the grader's verdicts), on a second copy of the submissions",
    )
    return main.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        students = plan_students(args.count, args.mix_seed)
        course = make_course(root / "nbgrader", "nbgrader")
        write_submissions(course, students)
        print(f"course and submissions in {root}", file=sys.stderr)
        nbgrader = kernel = course_run = None
        if not args.skip_nbgrader:
            nbgrader = run_nbgrader(course)
            kernel = nbgrader_totals(course, students)
            require_all("nbgrader autograde", kernel, students)
        grader = run_grader(course, root / "out", args.workers)
        scores = grader_totals(root / "out")
        require_all("the grader", scores, students)
        if args.course_pipeline:
            course_copy = make_course(root / "course", "course")
            write_submissions(course_copy, students)
            course_run = run_nbgrader(course_copy)
            require_all("the course pipeline", nbgrader_totals(course_copy, students), students)
        report(students, nbgrader, grader, scores, kernel, course_run)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
