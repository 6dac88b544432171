"""Read one submitted notebook defensively, and say what to run and what to check.

A submitted notebook is untrusted data: it may be invalid JSON, binary garbage, far
too large, or a notebook whose cells the student deleted, duplicated, retyped or
stripped of their nbgrader metadata. ``read_submission`` never raises on any of
that. It returns a ``Submission``: the code cells to run (in order, without test
cells and cells tagged ``demo``), the source that defines each contract function
(for the static check of forbidden built-ins), and the problems found, each a
sentence for the student.

Test cells, hidden or visible (``grade`` true and ``solution`` false; the visible ones
are worth 0 points), are recognised by their nbgrader metadata, by a grade_id the
course knows as a test cell, and by their source matching a test cell of the course's
notebooks, so that stripping the metadata of a test cell does not make it run as
student code.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autograder.runtime import syntax

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
HIDDEN_TESTS_MARKER = "### BEGIN HIDDEN TESTS"
# A line magic or shell escape: indentation, "%" or "!", the magic's name, the rest.
MAGIC_LINE = re.compile(r"^(\s*)(%(?!%)|!)(\w*)\s*(.*)$")
# Line magics whose argument is a Python statement that IPython runs.
RUNS_ITS_STATEMENT = ("time", "timeit", "capture")
# Cell magics after which the cell is still Python that IPython runs.
PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")


@dataclass(frozen=True)
class KnownCells:
    """What the course's own notebooks say about its cells."""

    test_sources: frozenset[str] = frozenset()  # normalised sources of test cells
    test_ids: frozenset[str] = frozenset()  # grade_ids of test cells
    solution_ids: frozenset[str] = frozenset()  # grade_ids of answer cells

    @classmethod
    def from_notebooks(cls, paths: Iterable[Path]) -> KnownCells:
        """Collect the test and answer cells of the course notebooks that exist."""
        test_sources, test_ids, solution_ids = set(), set(), set()
        for path in paths:
            notebook, _ = load_notebook(path)
            for cell in _cell_dicts(notebook or {}):
                grade_id = _grade_id(cell)
                if _is_test_by_metadata(cell):
                    test_sources.add(normalise(cell_source(cell)))
                    if grade_id:
                        test_ids.add(grade_id)
                elif _nbgrader(cell).get("solution") is True and grade_id:
                    solution_ids.add(grade_id)
        test_sources.discard("")
        return cls(frozenset(test_sources), frozenset(test_ids), frozenset(solution_ids))


@dataclass
class Submission:
    """What the grader runs and checks for one submitted notebook."""

    cells: list[str] = field(default_factory=list)  # code to run, in order
    cell_numbers: list[int] = field(default_factory=list)  # notebook position (1-based)
    function_sources: dict[str, str] = field(default_factory=dict)  # contract name -> cell
    problems: list[str] = field(default_factory=list)  # sentences for the student
    readable: bool = False

    def notebook_cell(self, index: int) -> int | None:
        """The notebook position of the ``index``-th cell that was run."""
        if 0 <= index < len(self.cell_numbers):
            return self.cell_numbers[index]
        return None


def read_submission(
    path: Path,
    functions: Sequence[str],
    known: KnownCells | None = None,
    max_bytes: int = MAX_NOTEBOOK_BYTES,
) -> Submission:
    """Read ``path`` and return what to grade; never raises on a bad notebook."""
    known = known or KnownCells()
    submission = Submission()
    notebook, problem = load_notebook(path, max_bytes)
    if notebook is None:
        submission.problems.append(problem)
        return submission
    cells, cell_problems = _usable_cells(notebook)
    submission.problems.extend(cell_problems)
    solution_ids = known.solution_ids | set(functions)
    submission.problems.extend(_duplicate_id_problems(cells))
    for number, cell in cells:
        if _should_run(cell, known, solution_ids):
            submission.cells.append(without_magics(cell_source(cell)))
            submission.cell_numbers.append(number)
    submission.problems.extend(_retyped_cell_problems(cells, solution_ids))
    for function in functions:
        source, problem = _function_source(function, cells, submission)
        if source is not None:
            submission.function_sources[function] = source
        if problem:
            submission.problems.append(problem)
    submission.readable = True
    return submission


# Loading -------------------------------------------------------------------------------


def load_notebook(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> tuple[dict | None, str]:
    """The notebook as a dict, or None and a sentence that says why it cannot be read."""
    try:
        if path.is_symlink() or not path.is_file():
            return None, "the notebook is not a regular file"
        size = path.stat().st_size
        if size > max_bytes:
            return None, (
                f"the notebook is {size / 2**20:.1f} MB, more than the "
                f"{max_bytes / 2**20:.0f} MB limit (clear large outputs and resubmit)"
            )
        data = path.read_bytes()
    except OSError as error:
        return None, f"the notebook could not be opened ({type(error).__name__})"
    return parse_notebook(data)


def parse_notebook(data: bytes) -> tuple[dict | None, str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the notebook is not a text file (it is not valid UTF-8)"
    try:
        notebook = json.loads(text)
    except (ValueError, RecursionError) as error:
        return None, f"the notebook is not valid JSON ({_short(error)}); it may be corrupted"
    if not isinstance(notebook, dict):
        return None, "the file is JSON but not a Jupyter notebook"
    if not isinstance(notebook.get("cells"), list):
        return None, "the notebook has no list of cells (it is not a version 4 notebook)"
    return notebook, ""


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _usable_cells(notebook: dict) -> tuple[list[tuple[int, dict]], list[str]]:
    """The cells that are dicts with a known type, numbered from 1, and what was skipped."""
    cells, problems = [], []
    for number, cell in enumerate(notebook["cells"], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            problems.append(f"cell {number} is not a valid notebook cell and was skipped")
            continue
        cells.append((number, cell))
    return cells, problems


def _cell_dicts(notebook: dict) -> list[dict]:
    cells = notebook.get("cells")
    return [cell for cell in cells if isinstance(cell, dict)] if isinstance(cells, list) else []


# Cell metadata ---------------------------------------------------------------------------


def _metadata(cell: dict) -> dict:
    metadata = cell.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _nbgrader(cell: dict) -> dict:
    nbgrader = _metadata(cell).get("nbgrader")
    return nbgrader if isinstance(nbgrader, dict) else {}


def _grade_id(cell: dict) -> str | None:
    grade_id = _nbgrader(cell).get("grade_id")
    return grade_id if isinstance(grade_id, str) and grade_id else None


def _tags(cell: dict) -> list[str]:
    tags = _metadata(cell).get("tags")
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def cell_source(cell: dict) -> str:
    """The source of a cell as one string (nbformat allows a string or a list of lines)."""
    source = cell.get("source", "")
    if isinstance(source, str):
        return source
    if isinstance(source, list):
        return "".join(line for line in source if isinstance(line, str))
    return ""


def normalise(source: str) -> str:
    """Source with trailing spaces and blank edges removed, for comparing cells."""
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def without_magics(source: str) -> str:
    """The cell as plain Python, with its line numbers kept.

    ``%time stmt`` (and ``%timeit``, ``%capture``) becomes ``stmt``; any other line magic or
    shell escape becomes ``pass`` at the same indentation, so that a magic alone in an
    indented block still leaves a statement there. A cell magic that keeps the cell Python
    (``%%time``, ``%%timeit``, ``%%capture``) is dropped; a cell under any other cell magic
    (``%%bash``, ``%%html``, ...) is not Python and becomes ``pass``.
    """
    lines = source.split("\n")
    first = lines[0].strip()
    if first.startswith("%%"):
        if not first.startswith(PYTHON_CELL_MAGICS):
            return "pass"
        lines[0] = ""
    return "\n".join(_plain_line(line) for line in lines)


def _plain_line(line: str) -> str:
    match = MAGIC_LINE.match(line)
    if match is None:
        return line
    indent, kind, name, rest = match.groups()
    if kind == "%" and name in RUNS_ITS_STATEMENT and rest and not rest.startswith("-"):
        return f"{indent}{rest}"
    return f"{indent}pass"


# Which cells run ---------------------------------------------------------------------------


def _is_test_by_metadata(cell: dict) -> bool:
    """A test cell, hidden or visible: graded and not an answer."""
    nbgrader = _nbgrader(cell)
    return nbgrader.get("grade") is True and nbgrader.get("solution") is not True


def is_test_cell(cell: dict, known: KnownCells) -> bool:
    source = cell_source(cell)
    return (
        _is_test_by_metadata(cell)
        or _grade_id(cell) in known.test_ids
        or normalise(source) in known.test_sources
        or HIDDEN_TESTS_MARKER in source
    )


def _should_run(cell: dict, known: KnownCells, solution_ids: Collection[str]) -> bool:
    if is_test_cell(cell, known) or "demo" in _tags(cell):
        return False
    # Like nbgrader's OverwriteCells, an answer cell runs as code even if its type was changed.
    return cell["cell_type"] == "code" or _grade_id(cell) in solution_ids


def _duplicate_id_problems(cells: list[tuple[int, dict]]) -> list[str]:
    counts = Counter(_grade_id(cell) for _, cell in cells)
    return [
        f"the cell id '{grade_id}' appears {count} times (a duplicated cell); "
        "all copies ran in order, so the last definition counts"
        for grade_id, count in counts.items()
        if grade_id and count > 1
    ]


def _retyped_cell_problems(cells: list[tuple[int, dict]], solution_ids) -> list[str]:
    return [
        f"cell {number} ('{_grade_id(cell)}') was changed to a {cell['cell_type']} cell; "
        "it was graded as the code cell it should be"
        for number, cell in cells
        if cell["cell_type"] != "code" and _grade_id(cell) in solution_ids
    ]


# Where each contract function is defined ------------------------------------------------


def defines(source: str, name: str) -> bool:
    """Whether ``source`` defines ``name`` at its top level (a def or a class)."""
    tree = syntax.parse(source)
    if tree is None:
        return (
            re.search(rf"^(async\s+)?(def|class)\s+{re.escape(name)}\b", source, re.M) is not None
        )
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.name == name
        for node in tree.body
    )


def _function_source(
    function: str, cells: list[tuple[int, dict]], submission: Submission
) -> tuple[str | None, str]:
    """The source that defines ``function`` when the cells run, and a problem if any."""
    ran = list(zip(submission.cell_numbers, submission.cells, strict=True))
    defining = [source for _, source in ran if defines(source, function)]
    by_id = [source for number, source in ran if _grade_id(_cell_at(cells, number)) == function]
    if defining:
        problem = ""
        if not by_id:
            problem = (
                f"no answer cell carries the id '{function}' (its nbgrader metadata was "
                f"removed or changed); {function} was graded from the cell that defines it"
            )
        return defining[-1], problem
    if by_id:
        return by_id[-1], f"the answer cell '{function}' does not define {function}"
    if any(defines(cell_source(cell), function) for _, cell in cells):
        return None, (
            f"{function} is defined only in a cell that does not run "
            "(a test, demo, markdown or raw cell)"
        )
    return None, f"no cell defines {function}"


def _cell_at(cells: list[tuple[int, dict]], number: int) -> dict:
    return next(cell for n, cell in cells if n == number)
