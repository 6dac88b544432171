"""The course's steps inside ``nbgrader autograde`` and ``nbgrader generate_feedback``.

``exercises/nbgrader_config.py`` puts them into nbgrader's pipelines
(``Autograde.autograde_preprocessors``, ``GenerateFeedback.preprocessors``), so that nbgrader
and the grader give one grade and one feedback:

autograde
    ``SandboxedExecute`` runs the notebook in a kernel that sees none of the course
    (``kernel_sandbox``): a hidden test cell's ``from autograder.kernel import ...``
    fails there. Then ``GraderVerdicts``, in the instructor's process, notes what each
    hidden test cell produced in the kernel (the kernel's claim, which the student's code
    could forge), has the sandboxed grader grade the submission (or reuses its record for
    this very notebook, with the same seed), and replaces the cell's outputs with the
    grader's verdict: the text of ``feedback/<student>.md`` for that function and the
    score, which nbgrader's ``SaveAutoGrades`` stores. ``GraderGradebook`` then makes the
    gradebook entries exactly what the grader's run writes (``gradebook.sync_student``):
    manual grades kept, a kernel claim above the grader's score flagged, with a comment.

generate_feedback
    ``GraderFeedback`` refreshes each hidden test cell from the grader's latest record,
    removes the hidden tests' source and every other output of those cells, hides any
    output that shows course material (a leak marker or a line of a reference solution),
    and opens the notebook with the grader's summary.
"""

from __future__ import annotations

import ast
import atexit
import functools
import re
import sys
from pathlib import Path

import nbformat
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Float, Unicode

from autograder.engine import gradebook, grading
from autograder.runtime import syntax

HIDDEN_TESTS_MARKER = "### BEGIN HIDDEN TESTS"
LEAK_MARKER = re.compile(r"LEAK-MARKER-[A-Za-z0-9-]+")
DISTINCTIVE_LINE = 20  # characters: shorter lines of code are too common to be telling
HIDDEN_OUTPUT = "(This output is hidden: it shows material of the course's solutions or tests.)"

# One process grades many students: the plan and the self-check are computed once, and
# the outputs rebuilt from the records (grades.csv, feedback files, the class report) are
# written once, when nbgrader is done.
RUN_CACHE = grading.RunCache()
OUTPUTS_DUE: set[tuple[str, Path]] = set()


def rebuild_outputs() -> None:
    """Rebuild the grader's outputs of every assignment graded in this process."""
    while OUTPUTS_DUE:
        assignment, submitted = OUTPUTS_DUE.pop()
        try:
            summary = grading.grade(assignment, submitted, students=[], write_gradebook=False)
        except Exception as error:  # at exit: say it, never hide nbgrader's own outcome
            print(f"the grader's outputs were not rebuilt: {error!r}", file=sys.stderr)
        else:
            print(f"{assignment}: class report {summary.report}", file=sys.stderr)


atexit.register(rebuild_outputs)


# Which cells are whose ------------------------------------------------------------------


def hidden_test_function(cell, functions) -> str | None:
    """The contract function whose hidden test cell ``cell`` is (grade_id ``test_<name>``)."""
    nbgrader = cell.get("metadata", {}).get("nbgrader", {})
    grade_id = str(nbgrader.get("grade_id", ""))
    if not nbgrader.get("grade") or nbgrader.get("solution") or not grade_id.startswith("test_"):
        return None
    function = grade_id.removeprefix("test_")
    return function if function in functions else None


def kernel_claims(nb, functions) -> dict[str, float | None]:
    """What each hidden test cell scored in the kernel, as nbgrader would score it; None
    for a cell that produced nothing (the kernel did not run)."""
    claims = {}
    for cell in nb.cells:
        function = hidden_test_function(cell, functions)
        if function is None or cell.cell_type != "code":
            continue
        if not cell.get("outputs"):
            claims[function] = None
            continue
        try:
            claims[function] = float(utils.determine_grade(cell)[0])
        except ValueError:  # a value above the cell's points: nbgrader itself would refuse it
            claims[function] = float(cell.metadata["nbgrader"]["points"])
    return claims


# The grader's verdict as cell outputs ---------------------------------------------------


def verdict_text(record: dict, function: str) -> str:
    """The text of ``feedback/<student>.md`` about ``function``, or why nothing was graded."""
    if record["status"] != "graded":
        return grading.function_feedback(record, function)
    return "\n".join(grading.function_section(record, function)).strip()


def verdict_outputs(record: dict, function: str, points: float) -> list:
    """The outputs of ``function``'s hidden test cell: the grader's text, and its score as
    the cell's value (or an error, when the grader itself failed: no score)."""
    text = verdict_text(record, function)
    shown = nbformat.v4.new_output("stream", name="stdout", text=text + "\n")
    if grading.grader_failed(record):
        error = nbformat.v4.new_output(
            "error", ename="NotGraded", evalue=record.get("reason", ""), traceback=[]
        )
        return [shown, error]
    entry = record["functions"][function]
    score = gradebook._rescale(entry["score"], entry["max_score"], points)
    value = nbformat.v4.new_output("execute_result", data={"text/plain": repr(float(score))})
    return [shown, value]


def put_verdicts(nb, record: dict | None, functions) -> None:
    """Replace every hidden test cell's outputs with the grader's verdict (nothing when
    there is no record)."""
    for cell in nb.cells:
        function = hidden_test_function(cell, functions)
        if function is None or cell.cell_type != "code":
            continue
        points = float(cell.metadata["nbgrader"].get("points") or 0)
        cell.outputs = [] if record is None else verdict_outputs(record, function, points)


# Where the grader keeps its results for a course --------------------------------------------


class CourseStep(NbGraderPreprocessor):
    """A step that finds the grader's output for the notebook nbgrader is working on."""

    def course(self, resources) -> tuple[Path, str, str] | None:
        """(course root, assignment, student), or None for a notebook the grader does not
        grade (another notebook name, an assignment without a battery)."""
        from autograder.batteries import available

        ids = resources["nbgrader"]
        assignment, student = ids["assignment"], ids["student"]
        if ids["notebook"] != assignment or assignment not in available():
            self.log.info("%s/%s: not a notebook the course's grader grades", assignment, ids)
            return None
        return Path(CourseDirectory(config=self.config).root).resolve(), assignment, student

    @staticmethod
    def submitted(root: Path) -> Path:
        return root / "submitted"

    def saved(self, root: Path, assignment: str, student: str) -> tuple[dict | None, dict]:
        """The grader's record of ``student`` and the kernel's claims about the notebook
        submitted now."""
        out_dir = grading.default_out_dir(self.submitted(root), assignment)
        return grading.saved_state(out_dir, self.submitted(root), assignment, student)


class GraderVerdicts(CourseStep):
    """autograde, after the kernel: the sandboxed grader's verdict in the hidden test cells."""

    isolation = Unicode("auto", help="the grader's isolation (auto, bubblewrap, process)").tag(
        config=True
    )
    accept_weak_isolation = Bool(False, help="allow the process level without root").tag(
        config=True
    )
    time_limit = Float(10.0, help="seconds per call of a student function").tag(config=True)
    memory_limit = Float(4.0, help="GiB a submission may allocate").tag(config=True)

    def preprocess(self, nb, resources):
        found = self.course(resources)
        if found is None:
            return nb, resources
        root, assignment, student = found
        from autograder.sandbox import Limits

        functions = grading.load_battery(assignment).functions
        limits = Limits(
            call_wall_seconds=self.time_limit,
            call_cpu_seconds=self.time_limit,
            memory_bytes=int(self.memory_limit * 2**30),
        )
        grading.grade(
            assignment, self.submitted(root), workers=1, students=[student],
            kernel_scores={student: kernel_claims(nb, functions)}, outputs=False,
            cache=RUN_CACHE, isolation=self.isolation, accept_weak=self.accept_weak_isolation,
            limits=limits,
        )  # fmt: skip
        OUTPUTS_DUE.add((assignment, self.submitted(root)))
        record, _ = self.saved(root, assignment, student)
        put_verdicts(nb, record, functions)
        return nb, resources


class GraderGradebook(CourseStep):
    """autograde, after ``SaveAutoGrades``: the gradebook as the grader's run writes it."""

    def preprocess(self, nb, resources):
        found = self.course(resources)
        if found is None:
            return nb, resources
        root, assignment, student = found
        record, claims = self.saved(root, assignment, student)
        if record is None:
            return nb, resources
        with Gradebook(resources["nbgrader"]["db_url"]) as book:
            suspects, manual = gradebook.sync_student(book, assignment, record, claims)
            book.db.commit()
        for suspect in suspects:
            self.log.warning("suspected tampering, flagged: %s", suspect.comment())
        for grade in manual:
            self.log.warning(
                "%s %s: the manual grade %g is kept (the grader gives %g)",
                student, grade.function, grade.manual_score, grade.engine_score,
            )  # fmt: skip
        return nb, resources


# Feedback ------------------------------------------------------------------------------------


class GraderFeedback(CourseStep):
    """generate_feedback: the grader's feedback, and nothing of the course's material."""

    def preprocess(self, nb, resources):
        found = self.course(resources)
        functions = grading.load_battery(found[1]).functions if found else []
        record = self.saved(*found)[0] if found else None
        for cell in nb.cells:
            if hidden_test_function(cell, functions) is not None:
                cell.source = without_hidden_tests(cell.source)
            elif cell.cell_type == "code":
                cell.outputs = [hide_course_material(output) for output in cell.get("outputs", [])]
        put_verdicts(nb, record, functions)
        if found:
            nb.cells.insert(0, summary_cell(record))
        return nb, resources


def without_hidden_tests(source: str) -> str:
    """The part of a hidden test cell's source that students saw in the release."""
    return source.split(HIDDEN_TESTS_MARKER)[0].rstrip()


def summary_cell(record: dict | None):
    """A first cell with the grader's total, its score per function and the notebook's
    problems and cell errors (the parts of ``feedback/<student>.md`` that are about the
    whole notebook)."""
    lines = ["## The course's grader", ""]
    if record is None:
        lines.append("No grade from the course's grader was found for this notebook.")
        return nbformat.v4.new_markdown_cell("\n".join(lines))
    lines += grading.feedback_header(record)[2:]
    lines += [
        "Each function was run on hidden inputs, in a separate, limited process, and compared"
        " with the reference solution. Its verdict is under the function's hidden tests.",
        "",
        "| function | score |",
        "|---|---|",
    ]
    for function, entry in record["functions"].items():
        score = "-" if grading.grader_failed(record) else f"{entry['score']:g}"
        lines.append(f"| `{function}` | {score} / {entry['max_score']:g} |")
    lines += ["", *grading.notebook_sections(record)]
    return nbformat.v4.new_markdown_cell("\n".join(lines).rstrip())


def hide_course_material(output):
    """``output``, or a note in its place when it shows a leak marker or a line of a
    reference solution."""
    text = str(output.get("text", "")) + str(output.get("data", "")) + str(output.get("traceback"))
    if not any(piece in text for piece in course_material()):
        return output
    return nbformat.v4.new_output("stream", name="stdout", text=HIDDEN_OUTPUT)


@functools.cache
def course_material() -> tuple[str, ...]:
    """The leak markers of ``solutions/`` and ``autograder/``, and the distinctive lines of
    the reference functions' bodies."""
    pieces = set()
    for folder in ("solutions", "autograder"):
        for path in (grading.REPOSITORY / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            pieces.update(LEAK_MARKER.findall(text))
            if folder == "solutions":
                pieces.update(_body_lines(text))
    return tuple(sorted(pieces))


def _body_lines(source: str) -> set[str]:
    lines = source.splitlines()
    found = set()
    tree = syntax.parse(source)
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, ast.FunctionDef) or node.name == "__init__":
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring is given to students on purpose
        if body:
            code = (
                line.split("#")[0].strip()
                for line in lines[body[0].lineno - 1 : body[-1].end_lineno]
            )
            found.update(line for line in code if len(line) >= DISTINCTIVE_LINE)
    return found
