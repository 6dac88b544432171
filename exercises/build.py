"""Generate the nbgrader source and release notebooks of the exercises.

Each exercise is written once, as a readable MyST Markdown template in
``exercises/templates/<assignment>.md``. Its code cells carry one option that says
what they are:

``:read_only: <id>``
    a locked cell (the imports, for instance);
``:solution: <name>``
    an empty placeholder, filled with the signature and docstring of the reference
    function ``solutions.<assignment>.<name>`` and, between ``### BEGIN SOLUTION`` and
    ``### END SOLUTION``, the reference body, so that each reference exists only in
    ``solutions/``;
``:visible_tests: <name>``
    the tests a student runs: locked, not graded;
``:hidden_tests: <name>``
    an empty placeholder, filled with the graded cell that runs the hidden battery of
    ``autograder/`` for ``<name>`` in the notebook's kernel.

``build_source`` turns a template into the source notebook (with nbgrader metadata,
schema 3, and stable cell ids), ``generate_release`` runs ``nbgrader
generate_assignment`` on a course root. The command line does both:

    python exercises/build.py [assignment ...]    # default: every template
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat

COURSE_ROOT = Path(__file__).resolve().parent
TEMPLATES = COURSE_ROOT / "templates"

POINTS = 10  # per contract function; the battery gives the same
SCHEMA_VERSION = 3
BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"

KINDS = ("read_only", "solution", "visible_tests", "hidden_tests")


def assignments() -> list[str]:
    """The assignments that have a template."""
    return sorted(path.stem for path in TEMPLATES.glob("*.md"))


def source_path(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    return course_root / "source" / assignment / f"{assignment}.ipynb"


def release_path(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    return course_root / "release" / assignment / f"{assignment}.ipynb"


# --- the reference, split into what students see and what they write ---------------------


def reference_parts(assignment: str, name: str) -> tuple[str, str]:
    """Split a reference function into (signature + docstring, body after the docstring).

    Both are taken verbatim from the source of ``solutions.<assignment>``, so comments
    and layout are kept and nothing else of the module (its constants) comes along.
    """
    module = importlib.import_module(f"solutions.{assignment}")
    lines = inspect.getsource(module).splitlines()
    function = _find_function(ast.parse("\n".join(lines)), name)
    first = function.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        raise ValueError(f"solutions.{assignment}.{name} needs a docstring for the student")
    start = (function.decorator_list or [function])[0].lineno - 1
    head = lines[start : first.end_lineno]
    body = lines[first.end_lineno : function.end_lineno]
    return "\n".join(head), "\n".join(body).strip("\n")


def _find_function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise KeyError(f"no top-level function {name!r} in the reference module")


def solution_source(assignment: str, name: str) -> str:
    """The source of a solution cell: the reference body inside a solution region."""
    head, body = reference_parts(assignment, name)
    indent = body[: len(body) - len(body.lstrip())]
    return "\n".join([head, indent + BEGIN_SOLUTION, body, indent + END_SOLUTION])


def hidden_tests_source(assignment: str, name: str) -> str:
    """The source of a graded cell; the last expression is the score (partial credit)."""
    return "\n".join(
        [
            f"# Hidden tests ({POINTS} points): they run when your notebook is graded.",
            BEGIN_HIDDEN,
            "from autograder.kernel import grade_function",
            "",
            f'grade_function("{assignment}", "{name}", globals())',
            END_HIDDEN,
        ]
    )


# --- nbgrader metadata --------------------------------------------------------------------


def nbgrader_metadata(grade_id: str, *, solution=False, grade=False, locked=False, points=None):
    """Cell metadata in nbgrader's schema 3."""
    metadata = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
    }
    if grade:
        metadata["points"] = points
    return metadata


def cell_kind(cell) -> tuple[str | None, str | None]:
    """(kind, name) from the template option of a code cell, or (None, None)."""
    found = [(kind, cell.metadata[kind]) for kind in KINDS if kind in cell.metadata]
    if len(found) > 1:
        raise ValueError(f"a cell has more than one of {KINDS}: {cell.source[:60]!r}")
    return found[0] if found else (None, None)


def build_cell(template_cell, assignment: str):
    """The source-notebook cell for one template cell: its source, metadata and id."""
    kind, name = cell_kind(template_cell)
    tags = list(template_cell.metadata.get("tags", []))
    if template_cell.cell_type == "markdown":
        cell = nbformat.v4.new_markdown_cell(template_cell.source)
    else:
        cell = nbformat.v4.new_code_cell(_code_source(template_cell, kind, assignment, name))
    if kind is not None:
        cell.metadata["nbgrader"] = _metadata_of_kind(kind, name)
    if tags:
        cell.metadata["tags"] = tags
    return cell


def _code_source(template_cell, kind, assignment: str, name: str | None) -> str:
    if kind in ("solution", "hidden_tests") and template_cell.source.strip():
        raise ValueError(f"the {kind} placeholder of {name} must be empty in the template")
    if kind == "solution":
        return solution_source(assignment, name)
    if kind == "hidden_tests":
        return hidden_tests_source(assignment, name)
    return template_cell.source


def _metadata_of_kind(kind: str, name: str) -> dict:
    if kind == "read_only":
        return nbgrader_metadata(name, locked=True)
    if kind == "solution":
        return nbgrader_metadata(name, solution=True)
    if kind == "visible_tests":
        # Graded with 0 points, so that nbgrader's Validate button runs them and reports
        # a stub or a wrong answer; the points come from the hidden tests.
        return nbgrader_metadata(f"check_{name}", grade=True, locked=True, points=0)
    return nbgrader_metadata(f"test_{name}", grade=True, locked=True, points=POINTS)


def assign_ids(nb) -> None:
    """Stable cell ids: the grade_id where there is one, else the cell's position."""
    for index, cell in enumerate(nb.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell["id"] = grade_id or f"cell-{index:02d}"


# --- notebooks ----------------------------------------------------------------------------


def build_source(assignment: str, template: Path | None = None):
    """The source notebook of ``assignment``, from its template and ``solutions/``."""
    template = template or TEMPLATES / f"{assignment}.md"
    parsed = jupytext.read(template, fmt="md:myst")
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": parsed.metadata["kernelspec"],
        "language_info": {"name": "python"},
    }
    nb.cells = [build_cell(cell, assignment) for cell in parsed.cells]
    assign_ids(nb)
    nbformat.validate(nb)
    return nb


def notebook_text(nb) -> str:
    """The file content of a notebook, as nbformat writes it."""
    return nbformat.writes(nb) + "\n"


def write_source(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    path = source_path(assignment, course_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(notebook_text(build_source(assignment)), encoding="utf-8")
    return path


def nbgrader_env() -> dict:
    """The environment for nbgrader: it finds ``alembic`` (and kernels) on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_nbgrader(course_root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``nbgrader <args>`` in ``course_root``; raise with its log when it fails."""
    command = [str(Path(sys.executable).parent / "nbgrader"), *args]
    done = subprocess.run(
        command, cwd=course_root, env=nbgrader_env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def generate_release(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    """Regenerate ``release/<assignment>`` (and the gradebook entry) from the source."""
    run_nbgrader(course_root, "generate_assignment", assignment, "--force")
    return release_path(assignment, course_root)


def main(argv: list[str]) -> int:
    for assignment in argv or assignments():
        print(f"{assignment}: wrote {write_source(assignment).relative_to(COURSE_ROOT)}")
        print(f"{assignment}: wrote {generate_release(assignment).relative_to(COURSE_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(COURSE_ROOT.parent))  # so that ``solutions`` imports
    sys.exit(main(sys.argv[1:]))
