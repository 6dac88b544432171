"""Generate the nbgrader source and release notebooks of the exercises.

Each exercise is written once, as a readable MyST Markdown template in
``exercises/templates/<assignment>.md``. Its code cells carry one option that says
what they are:

``:read_only: <id>``
    a locked cell (the imports, for instance);
``:check_helper: <id>``
    an empty placeholder, filled with the check helper that the visible tests use
    (``exercises/visible_checks.py``, which holds nothing secret), followed by the
    sentences of the known mistakes that this notebook's checks name and the part of the
    notebook that defines each function; locked, shown collapsed;
``:solution: <name>``
    filled with the signature and docstring of the reference ``solutions.<assignment>.<name>``
    and, between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, its body, so that each
    reference exists only in ``solutions/``. The template cell may hold comment lines
    (the shapes of the steps): they go above the solution region, so students keep them.
    For a class, the class is shown whole (its given ``__init__`` and other methods) and
    only the body of ``forward`` is the solution region;
``:visible_tests: <name>``
    the checks a student runs (``Checks`` of the check helper): locked, 0 points. Every
    ``mistake="..."`` and every key of a ``known={...}`` names a known mistake of
    ``autograder/mutants/<assignment>.py``; an unknown name fails the build;
``:hidden_tests: <name>``
    an empty placeholder, filled with the graded cell that runs the hidden battery of
    ``autograder/`` for ``<name>`` in the notebook's kernel, worth the contract's points.

Markdown cells may use ``{{points:<name>}}`` (the contract's points),
``{{forbidden:<name>}}`` (a sentence naming the operations the contract forbids) and
``{{mistake:<mistake name>}}`` (the sentence of a known mistake); points and forbidden
operations come from ``autograder/contracts.py``. The part of the notebook that defines a
function is the numbered heading above its solution cell (``## 2. Self-attention`` gives
"part 2").

The front matter may hold an ``exercise:`` table of chapter-specific settings for the tests
(``tests/test_exercises.py``), for instance

    exercise:
      not_caught:  # a visible test need not catch this corruption of this function
        greedy_decode: {wrong_device: "it stops on a condition the meta device cannot test"}

``build_source`` turns a template into the source notebook (with nbgrader metadata,
schema 3, and stable cell ids), ``generate_release`` runs ``nbgrader
generate_assignment`` on a course root. The command line does both:

    python exercises/build.py [assignment ...]    # default: every template
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jupytext
import nbformat

COURSE_ROOT = Path(__file__).resolve().parent
REPOSITORY_ROOT = COURSE_ROOT.parent
TEMPLATES = COURSE_ROOT / "templates"
CHECK_HELPER = COURSE_ROOT / "visible_checks.py"

SCHEMA_VERSION = 3
BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"

KINDS = ("read_only", "check_helper", "solution", "visible_tests", "hidden_tests")
PLACEHOLDER = re.compile(r"\{\{(\w+):(\w+)\}\}")
PART_HEADING = re.compile(r"^#+\s+(\d+)\.", re.MULTILINE)

# The first line of each kind of cell, so that students tell them apart at a glance.
SOLUTION_BANNER = (
    "# YOUR ANSWER: edit this cell. Replace raise NotImplementedError() with your code."
)
CHECKS_BANNER = "# CHECKS of {name} (read-only, 0 points): run this cell after your answer."
GIVEN_INIT = "# Given: the grader builds your class with this __init__ as it is."


def assignments() -> list[str]:
    """The assignments that have a template."""
    return sorted(path.stem for path in TEMPLATES.glob("*.md"))


def source_path(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    return course_root / "source" / assignment / f"{assignment}.ipynb"


def release_path(assignment: str, course_root: Path = COURSE_ROOT) -> Path:
    return course_root / "release" / assignment / f"{assignment}.ipynb"


def template_path(assignment: str) -> Path:
    return TEMPLATES / f"{assignment}.md"


def read_template(assignment: str, template: Path | None = None):
    """The template of ``assignment``, parsed by jupytext (front matter in its metadata)."""
    return jupytext.read(template or template_path(assignment), fmt="md:myst")


def exercise_settings(assignment: str) -> dict:
    """The ``exercise:`` table of the template's front matter (empty when there is none)."""
    return dict(read_template(assignment).metadata.get("exercise") or {})


def contracts(assignment: str):
    """The ``autograder.contracts.Assignment`` of ``assignment``."""
    from autograder.contracts import assignment as contract_assignment

    return contract_assignment(assignment)


def known_mistakes(assignment: str) -> dict[str, str]:
    """Known mistake name -> its sentence, from ``autograder/mutants/<assignment>.py``."""
    module = importlib.import_module(f"autograder.mutants.{assignment}")
    return {mutant.name: mutant.mistake for mutant in module.MUTANTS}


# --- the reference, split into what students see and what they write ---------------------


def reference_module(assignment: str):
    return importlib.import_module(f"solutions.{assignment}")


def reference_parts(assignment: str, name: str, module=None) -> tuple[str, str, str]:
    """Split a reference function into (what students see above their code, the body they
    write, what they see below it).

    For a function: the signature and docstring, the body after the docstring, and
    nothing. For a class: the class up to the end of ``forward``'s docstring (with the
    given ``__init__``), ``forward``'s body, and the methods after ``forward``. All are
    taken verbatim from the source of the module, so comments and layout are kept and
    nothing else of the module (its constants) comes along.
    """
    module = module or reference_module(assignment)
    lines = inspect.getsource(module).splitlines()
    node = _find_definition(ast.parse("\n".join(lines)), name)
    start = (node.decorator_list or [node])[0].lineno - 1
    if isinstance(node, ast.ClassDef):
        method = _find_definition(node, "forward")
        head = lines[start : _docstring(method, f"{name}.forward").end_lineno]
        head = _mark_given_init(head, node, start)
        body = lines[_docstring(method, f"{name}.forward").end_lineno : method.end_lineno]
        tail = lines[method.end_lineno : node.end_lineno]
    else:
        head = lines[start : _docstring(node, name).end_lineno]
        body = lines[_docstring(node, name).end_lineno : node.end_lineno]
        tail = []
    return "\n".join(head), "\n".join(body).strip("\n"), "\n".join(tail).rstrip()


def _find_definition(tree, name: str):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node
    raise KeyError(f"no top-level definition of {name!r} in the reference")


def _docstring(node, name: str):
    first = node.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        raise ValueError(f"the reference {name} needs a docstring for the student")
    return first


def _mark_given_init(head: list[str], node: ast.ClassDef, start: int) -> list[str]:
    """``head`` with a comment above ``__init__`` that says it is given."""
    for child in node.body:
        if isinstance(child, ast.FunctionDef) and child.name == "__init__":
            at = (child.decorator_list or [child])[0].lineno - 1 - start
            indent = head[at][: len(head[at]) - len(head[at].lstrip())]
            return [*head[:at], indent + GIVEN_INIT, *head[at:]]
    return head


def solution_source(assignment: str, name: str, stub_comments: str = "", module=None) -> str:
    """The source of a solution cell: the reference body inside a solution region, below
    the template's comment lines (which students keep)."""
    head, body, tail = reference_parts(assignment, name, module)
    indent = body[: len(body) - len(body.lstrip())]
    comments = [indent + line.strip() for line in stub_comments.splitlines() if line.strip()]
    lines = [SOLUTION_BANNER, head, *comments, indent + BEGIN_SOLUTION, body, indent + END_SOLUTION]
    return "\n".join([*lines, *([tail] if tail else [])])


def hidden_tests_source(assignment: str, name: str) -> str:
    """The source of a graded cell; the last expression is the score (partial credit)."""
    points = contracts(assignment).contract(name).points
    return "\n".join(
        [
            f"# HIDDEN TESTS ({points:g} points): they run when your notebook is graded.",
            BEGIN_HIDDEN,
            "from autograder.kernel import grade_function",
            "",
            f'grade_function("{assignment}", "{name}", globals())',
            END_HIDDEN,
        ]
    )


# --- the visible tests and their helper ---------------------------------------------------


def mistakes_named(source: str) -> list[str]:
    """The known mistakes a visible test cell names: ``mistake="..."`` and ``known={...}``."""
    names = []
    for node in ast.walk(ast.parse(source)):
        for keyword in getattr(node, "keywords", []):
            if keyword.arg == "mistake":
                names.append(_string(keyword.value, source))
            elif keyword.arg == "known":
                if not isinstance(keyword.value, ast.Dict):
                    raise ValueError("known= must be a dict literal in a visible test cell")
                names += [_string(key, source) for key in keyword.value.keys]
    return names


def _string(node, source: str) -> str:
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        where = ast.get_source_segment(source, node)
        raise ValueError(f"a known mistake must be named by a string literal, not {where}")
    return node.value


def check_helper_source(mistakes: dict[str, str], parts: dict[str, str]) -> str:
    """The check helper, with this notebook's mistake sentences and parts filled in."""
    source = CHECK_HELPER.read_text(encoding="utf-8").rstrip("\n")
    for variable, values in (("MISTAKES", mistakes), ("PARTS", parts)):
        empty = f"{variable}: dict[str, str] = {{}}"
        if source.count(empty) != 1:
            raise ValueError(f"{CHECK_HELPER.name} must define {empty} once")
        source = source.replace(empty, _dict_literal(variable, values))
    return source


def _dict_literal(variable: str, values: dict[str, str]) -> str:
    """``variable = {...}`` as ruff formats it, with long strings split over lines."""
    if not values:
        return f"{variable}: dict[str, str] = {{}}"
    lines = [f"{variable} = {{"]
    for key, value in values.items():
        one_line = f"    {_quoted(key)}: {_quoted(value)},"
        if len(one_line) <= 100:
            lines.append(one_line)
            continue
        chunks = [value]
        if len(_quoted(value)) > 100 - 8:
            chunks = textwrap.wrap(value, 86, drop_whitespace=False, break_on_hyphens=False)
        lines += [f"    {_quoted(key)}: (", *(f"        {_quoted(c)}" for c in chunks), "    ),"]
    lines.append("}")
    return "\n".join(lines)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parts_of(cells) -> dict[str, str]:
    """Contract name -> "part N", from the numbered heading above its solution cell."""
    parts, part = {}, None
    for cell in cells:
        if cell.cell_type == "markdown":
            numbers = PART_HEADING.findall(cell.source)
            part = f"part {numbers[-1]}" if numbers else part
        elif "solution" in cell.metadata and part:
            parts[cell.metadata["solution"]] = part
    return parts


# --- placeholders in the text -------------------------------------------------------------


def expand_placeholders(text: str, assignment: str) -> str:
    """Replace ``{{points:name}}``, ``{{forbidden:name}}`` and ``{{mistake:name}}``."""

    def expand(match) -> str:
        kind, name = match.groups()
        if kind == "points":
            return f"{contracts(assignment).contract(name).points:g}"
        if kind == "forbidden":
            return forbidden_sentence(assignment, name)
        if kind == "mistake":
            return _sentence(assignment, name)
        raise ValueError(f"unknown placeholder {match.group(0)} in the {assignment} template")

    return PLACEHOLDER.sub(expand, text)


def forbidden_sentence(assignment: str, name: str) -> str:
    """What ``name`` may not reach, in a sentence for students (from the contracts)."""
    contract = contracts(assignment).contract(name)
    if not contract.forbidden:
        return f"Every PyTorch operation is allowed in `{name}`."
    operations = [f"`{operation}`" for operation in contract.forbidden]
    listed = ", ".join(operations[:-1]) + (" or " if len(operations) > 1 else "") + operations[-1]
    return (
        f"**Not allowed** in `{name}`: {listed}. A function that reaches one of them, under"
        f" whatever name, scores 0 of its {contract.points:g} points."
    )


def _sentence(assignment: str, name: str) -> str:
    mistakes = known_mistakes(assignment)
    if name not in mistakes:
        raise KeyError(f"{assignment} has no known mistake called {name!r}")
    return mistakes[name]


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


def build_cell(template_cell, assignment: str, helper: str | None = None):
    """The source-notebook cell for one template cell: its source, metadata and id."""
    kind, name = cell_kind(template_cell)
    tags = list(template_cell.metadata.get("tags", []))
    if template_cell.cell_type == "markdown":
        cell = nbformat.v4.new_markdown_cell(expand_placeholders(template_cell.source, assignment))
    else:
        source = helper if kind == "check_helper" else _code_source(template_cell, kind, assignment)
        cell = nbformat.v4.new_code_cell(source)
    if kind is not None:
        cell.metadata["nbgrader"] = _metadata_of_kind(kind, name, assignment)
    if kind == "check_helper":
        cell.metadata["jupyter"] = {"source_hidden": True}
    if tags:
        cell.metadata["tags"] = tags
    return cell


def _code_source(template_cell, kind, assignment: str) -> str:
    name = template_cell.metadata.get(kind)
    source = template_cell.source
    if kind == "check_helper" or kind == "hidden_tests":
        if source.strip():
            raise ValueError(f"the {kind} placeholder {name} must be empty in the template")
        return hidden_tests_source(assignment, name) if kind == "hidden_tests" else ""
    if kind == "solution":
        if any(line.strip() and not line.lstrip().startswith("#") for line in source.splitlines()):
            raise ValueError(f"the solution cell of {name} may hold only comment lines")
        return solution_source(assignment, name, source)
    if kind == "visible_tests":
        return CHECKS_BANNER.format(name=name) + "\n" + source
    return source


def _metadata_of_kind(kind: str, name: str, assignment: str) -> dict:
    if kind in ("read_only", "check_helper"):
        return nbgrader_metadata(name, locked=True)
    if kind == "solution":
        return nbgrader_metadata(name, solution=True)
    if kind == "visible_tests":
        # Graded with 0 points, so that nbgrader's Validate button runs them and reports
        # a stub or a wrong answer; the points come from the hidden tests.
        return nbgrader_metadata(f"check_{name}", grade=True, locked=True, points=0)
    points = contracts(assignment).contract(name).points
    return nbgrader_metadata(f"test_{name}", grade=True, locked=True, points=points)


def helper_for(cells, assignment: str) -> str:
    """The check helper of this notebook: the mistakes its visible tests name, its parts."""
    sentences = known_mistakes(assignment)
    named = []
    for cell in cells:
        if "visible_tests" in cell.metadata:
            named += [n for n in mistakes_named(cell.source) if n not in named]
    unknown = [name for name in named if name not in sentences]
    if unknown:
        raise KeyError(f"{assignment}: no known mistake called {', '.join(unknown)}")
    return check_helper_source({name: sentences[name] for name in named}, parts_of(cells))


def assign_ids(nb) -> None:
    """Stable cell ids: the grade_id where there is one, else the cell's position."""
    for index, cell in enumerate(nb.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell["id"] = grade_id or f"cell-{index:02d}"


# --- notebooks ----------------------------------------------------------------------------


def build_source(assignment: str, template: Path | None = None):
    """The source notebook of ``assignment``, from its template and ``solutions/``."""
    parsed = read_template(assignment, template)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": parsed.metadata["kernelspec"],
        "language_info": {"name": "python"},
    }
    helper = helper_for(parsed.cells, assignment)
    nb.cells = [build_cell(cell, assignment, helper) for cell in parsed.cells]
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


def copy_course(root: Path, assignment: str, *, config_extra: str = "") -> Path:
    """A released copy of the course at ``root/exercises``, for one assignment.

    ``root`` gets the layout of the repository: the copied ``nbgrader_config.py`` puts its
    parent folder on the instructor's kernels' PYTHONPATH and loads the course's nbgrader
    steps from it, so ``autograder/`` and ``solutions/`` are linked there. ``config_extra``
    is appended to the copied configuration (to try another autograde pipeline, say).
    """
    course = root / "exercises"
    course.mkdir(parents=True)
    config = (COURSE_ROOT / "nbgrader_config.py").read_text()
    (course / "nbgrader_config.py").write_text(config + config_extra)
    shutil.copytree(source_path(assignment).parent, course / "source" / assignment)
    for package in ("autograder", "solutions"):
        (root / package).symlink_to(REPOSITORY_ROOT / package, target_is_directory=True)
    generate_release(assignment, course)
    return course


def main(argv: list[str]) -> int:
    for assignment in argv or assignments():
        print(f"{assignment}: wrote {write_source(assignment).relative_to(COURSE_ROOT)}")
        print(f"{assignment}: wrote {generate_release(assignment).relative_to(COURSE_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPOSITORY_ROOT))  # so that ``solutions`` and ``autograder`` import
    sys.exit(main(sys.argv[1:]))
