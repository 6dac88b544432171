"""Every chapter's exercise notebooks, from one table: a new chapter needs no new test here.

For every assignment that has a template (``exercises/templates/<id>.md``) and a battery:
the committed source and release notebooks are what ``exercises/build.py`` and nbgrader make
now, and ruff-clean; the cells have the structure the grader reads, with the contracts'
points; nothing secret reaches the release; and the visible checks pass on the reference,
fail on the stubs and on every known mistake of ``autograder/mutants/<id>.py`` (naming the
mistakes the cell names), catch the generic faults (wrong values, an ignored dtype or
device, inputs modified in place), say "fix part N first" where a function builds on a
wrong one, print lines that fit nbgrader's validate, and stay fast.

The chapter-specific data is the template itself: the mistakes each check cell names (its
``mistake=`` and ``known=``), the functions it builds on (``Checks(..., needs=...)``) and,
in the front matter's ``exercise:`` table, the faults a function's checks need not catch
(``not_caught``, with the reason).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import torch
from torch.utils._pytree import tree_map

from autograder.batteries import available
from autograder.contracts import assignment as contracts_of
from exercises import build
from tests.leaks import find_leaks, leak_markers

ASSIGNMENTS = [a for a in build.assignments() if a in available()]
VISIBLE_SECONDS = 3.0  # CPU time of one check cell on the reference
MAX_LINE = 89  # nbgrader validate shows 86 characters after its indent; PASS/FAIL lines < 90
HIDDEN_MATERIAL = ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grade_function", "autograder")
FAULTS = ("wrong_values", "float32_outputs", "wrong_device", "modifies_inputs")


def names_of(assignment: str) -> list[str]:
    return contracts_of(assignment).names


def per_function():
    return [pytest.param(a, name, id=f"{a}-{name}") for a in ASSIGNMENTS for name in names_of(a)]


@functools.cache
def source(assignment: str):
    return nbformat.read(build.source_path(assignment), as_version=4)


@functools.cache
def release(assignment: str):
    return nbformat.read(build.release_path(assignment), as_version=4)


def nbgrader_of(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def cells_by_grade_id(nb) -> dict:
    return {nbgrader_of(cell)["grade_id"]: cell for cell in nb.cells if nbgrader_of(cell)}


# --- fresh and clean ----------------------------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_source_is_generated_from_the_template_and_the_references(assignment):
    committed = build.source_path(assignment).read_text(encoding="utf-8")
    assert committed == build.notebook_text(build.build_source(assignment)), (
        f"the source notebook is out of date: run python exercises/build.py {assignment}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_is_a_fresh_generate_assignment(assignment, tmp_path):
    course = tmp_path / "exercises"
    course.mkdir()
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    shutil.copytree(build.source_path(assignment).parent, course / "source" / assignment)
    fresh = build.generate_release(assignment, course)
    # nbgrader writes no timestamps or random ids into a release: compare the whole file.
    assert fresh.read_text(encoding="utf-8") == build.release_path(assignment).read_text(
        encoding="utf-8"
    ), f"the release is out of date: run python exercises/build.py {assignment}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_notebooks_are_ruff_clean(assignment):
    ruff = Path(sys.executable).parent / "ruff"
    paths = [str(build.source_path(assignment)), str(build.release_path(assignment))]
    for command in (["format", "--check"], ["check"]):
        done = subprocess.run([ruff, *command, *paths], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


# --- the structure the grader reads -------------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_one_solution_cell_per_contract_name_in_order(assignment):
    solutions = [cell for cell in source(assignment).cells if nbgrader_of(cell).get("solution")]
    assert [nbgrader_of(cell)["grade_id"] for cell in solutions] == names_of(assignment)
    for cell in solutions:
        tree = ast.parse(cell.source)
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [nbgrader_of(cell)["grade_id"]]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_each_answer_is_followed_by_its_checks_then_its_hidden_tests(assignment):
    ids = [nbgrader_of(cell).get("grade_id") for cell in source(assignment).cells]
    for name in names_of(assignment):
        at = ids.index(name)
        assert ids[at + 1 : at + 3] == [f"check_{name}", f"test_{name}"]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_checks_are_worth_nothing_and_hidden_tests_the_contract_points(assignment):
    cells = cells_by_grade_id(source(assignment))
    for contract in contracts_of(assignment).contracts:
        for grade_id, points in ((f"check_{contract.name}", 0), (f"test_{contract.name}", None)):
            metadata = nbgrader_of(cells[grade_id])
            assert metadata["locked"] and metadata["grade"] and not metadata["solution"]
            assert metadata["schema_version"] == 3
            assert metadata["points"] == (contract.points if points is None else points)
        assert f"({contract.points:g} points)" in cells[f"test_{contract.name}"].source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_hidden_cells_end_with_the_grading_call(assignment):
    cells = cells_by_grade_id(source(assignment))
    for name in names_of(assignment):
        last = ast.parse(cells[f"test_{name}"].source).body[-1]
        assert isinstance(last, ast.Expr), "the score must be the cell's last expression"
        assert ast.unparse(last) == f"grade_function('{assignment}', '{name}', globals())"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_check_helper_is_given_locked_before_the_first_check(assignment):
    ids = [nbgrader_of(cell).get("grade_id") for cell in source(assignment).cells]
    helpers = [cell for cell in source(assignment).cells if "def close(" in cell.source]
    assert len(helpers) == 1
    (helper,) = helpers
    assert nbgrader_of(helper)["locked"] and not nbgrader_of(helper)["grade"]
    assert ids.index(nbgrader_of(helper)["grade_id"]) < ids.index(
        f"check_{names_of(assignment)[0]}"
    )
    assert "MISTAKES = {" in helper.source and "PARTS = {" in helper.source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_text_names_the_points_and_the_forbidden_operations(assignment):
    markdown = "\n".join(c.source for c in release(assignment).cells if c.cell_type == "markdown")
    assert "{{" not in markdown
    for contract in contracts_of(assignment).contracts:
        assert build.forbidden_sentence(assignment, contract.name) in markdown
        for operation in contract.forbidden:
            assert f"`{operation}`" in markdown


# --- nothing secret reaches students ------------------------------------------------------


def release_text(assignment: str) -> str:
    return build.release_path(assignment).read_text(encoding="utf-8")


def test_leak_markers_exist():
    assert any("solutions-ch03" in marker for marker in leak_markers())


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_leaks_in_the_template_source_or_release(assignment):
    for path in (build.template_path(assignment), build.source_path(assignment)):
        text = path.read_text(encoding="utf-8")
        assert not [marker for marker in leak_markers() if marker in text], path
    assert not find_leaks(release_text(assignment))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_hidden_material(assignment):
    text = release_text(assignment)
    assert not [secret for secret in HIDDEN_MATERIAL if secret in text]


def mistake_code_lines(assignment: str) -> set[str]:
    """Distinctive lines of the known mistakes' code (their sentences are not secret)."""
    module = importlib.import_module(f"autograder.mutants.{assignment}")
    lines = set()
    for mutant in module.MUTANTS:
        source = textwrap.dedent(inspect.getsource(mutant.implementation))
        # its def line and body: the decorator holds the sentence, the arguments are the
        # contract's
        node, source_lines = ast.parse(source).body[0], source.splitlines()
        body = [source_lines[node.lineno - 1], *source_lines[node.body[0].lineno - 1 :]]
        lines.update(line.split("#")[0].strip() for line in body)
    return {line for line in lines if len(line) >= 20 and not line.startswith(('"', "'"))}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_known_mistake_code(assignment):
    text = "\n".join(cell.source for cell in release(assignment).cells)
    assert not [line for line in mistake_code_lines(assignment) if line in text]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_answers_are_stubs_below_the_shape_comments(assignment):
    cells = cells_by_grade_id(release(assignment))
    for name in names_of(assignment):
        answer = cells[name].source
        assert answer.startswith(build.SOLUTION_BANNER)
        assert re.search(r"\n( +)# YOUR CODE HERE\n\1raise NotImplementedError\(\)", answer)


# --- running cells as a kernel would ------------------------------------------------------


class Kernel(dict):
    """A namespace in which notebook cells run, their printed lines kept."""

    def run(self, cell) -> tuple[str, float]:
        """Execute ``cell``; return what it printed and its CPU seconds. Errors propagate,
        with the printed text in ``self.printed``."""
        out = io.StringIO()
        start = time.process_time()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(cell.source, f"<cell {cell.get('id')}>", "exec"), self)
        finally:
            self.printed = out.getvalue()
        return self.printed, time.process_time() - start


def kernel(nb) -> Kernel:
    """The namespace after running every code cell of ``nb`` but the tests and demos."""
    namespace = Kernel()
    for cell in nb.cells:
        metadata = nbgrader_of(cell)
        is_test = metadata.get("grade") and not metadata.get("solution")
        if cell.cell_type == "code" and not is_test and "demo" not in cell.metadata.get("tags", []):
            namespace.run(cell)
    return namespace


def checks_cell(assignment: str, name: str):
    return cells_by_grade_id(source(assignment))[f"check_{name}"]


def kernel_before_checks(assignment: str, name: str) -> Kernel:
    """The reference's namespace after the check cells before ``name``'s, as after Run All."""
    namespace = kernel(source(assignment))
    for earlier in names_of(assignment)[: names_of(assignment).index(name)]:
        namespace.run(checks_cell(assignment, earlier))
    return namespace


def failure_of(namespace: Kernel, cell) -> str:
    """The message of the ChecksFailed that ``cell`` raises, after what it printed."""
    with pytest.raises(AssertionError) as raised:
        namespace.run(cell)
    assert type(raised.value).__name__ == "ChecksFailed", raised.value
    return f"{namespace.printed}\n{raised.value}"


def flat(text: str) -> str:
    """``text`` with its line breaks (hints are wrapped) and runs of spaces as one space."""
    return " ".join(text.split())


def assert_lines_fit(text: str) -> None:
    long = [line for line in text.splitlines() if len(line) > MAX_LINE]
    assert not long, long


@pytest.mark.parametrize("assignment, name", per_function())
def test_checks_pass_on_the_reference_within_seconds(assignment, name):
    namespace = kernel_before_checks(assignment, name)
    printed, seconds = namespace.run(checks_cell(assignment, name))
    assert f"checks of {name} pass." in printed
    assert "FAIL" not in printed and "NOTE" not in printed
    assert seconds < VISIBLE_SECONDS
    assert_lines_fit(printed)


@pytest.mark.parametrize("assignment, name", per_function())
def test_checks_fail_on_the_release_stubs(assignment, name):
    namespace = kernel(release(assignment))
    message = failure_of(namespace, cells_by_grade_id(release(assignment))[f"check_{name}"])
    assert "Not written yet" in message
    assert_lines_fit(message)


def known_mistakes():
    return [
        pytest.param(a, mutant, id=f"{a}-{mutant.name}")
        for a in ASSIGNMENTS
        for mutant in importlib.import_module(f"autograder.mutants.{a}").MUTANTS
    ]


@pytest.mark.parametrize("assignment, mutant", known_mistakes())
def test_every_known_mistake_fails_its_checks_and_is_named_where_the_cell_names_it(
    assignment, mutant
):
    namespace = kernel_before_checks(assignment, mutant.function)
    namespace[mutant.function] = mutant.implementation
    cell = checks_cell(assignment, mutant.function)
    message = failure_of(namespace, cell)
    if mutant.name in build.mistakes_named(cell.source):
        assert flat(mutant.mistake) in flat(message)
    others = set(build.known_mistakes(assignment).values()) - {mutant.mistake}
    assert not [s for s in others if flat(s) in flat(message)], "a wrong diagnosis"
    assert_lines_fit(message)


# --- generic faults: every chapter's checks catch them --------------------------------------


def faulty(target, fault: str, applied: list):
    """``target`` (a function or an nn.Module class) with ``fault``; ``applied`` gets True
    each time the fault changes something."""

    def change_output(value):
        if not isinstance(value, torch.Tensor):
            return value
        if fault == "wrong_values":
            applied.append(True)
            if value.dtype == torch.bool:
                return ~value
            return value + 1 if not value.is_floating_point() else torch.zeros_like(value) + 0.5
        if (
            fault == "float32_outputs"
            and value.is_floating_point()
            and value.dtype != torch.float32
        ):
            applied.append(True)
            return value.float()
        if fault == "wrong_device" and value.is_meta:
            applied.append(True)
            return torch.zeros(value.shape, dtype=value.dtype)
        return value

    def change_inputs(args, kwargs):
        tensors = [t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)]
        if fault == "modifies_inputs" and tensors:
            applied.append(True)
            with torch.no_grad():
                if tensors[0].dtype == torch.bool:
                    tensors[0].logical_not_()
                else:
                    tensors[0].add_(1)

    if isinstance(target, type):

        class Faulty(target):
            def forward(self, *args, **kwargs):
                result = tree_map(change_output, super().forward(*args, **kwargs))
                change_inputs(args, kwargs)
                return result

        Faulty.__name__ = target.__name__
        return Faulty

    @functools.wraps(target)
    def wrapper(*args, **kwargs):
        result = tree_map(change_output, target(*args, **kwargs))
        change_inputs(args, kwargs)
        return result

    return wrapper


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("assignment, name", per_function())
def test_checks_catch_the_generic_faults(assignment, name, fault):
    reason = build.exercise_settings(assignment).get("not_caught", {}).get(name, {}).get(fault)
    if reason:
        pytest.skip(reason)
    namespace = kernel_before_checks(assignment, name)
    applied = []
    namespace[name] = faulty(namespace[name], fault, applied)
    cell = checks_cell(assignment, name)
    try:
        namespace.run(cell)
    except AssertionError as error:
        assert_lines_fit(f"{namespace.printed}\n{error}")
        return
    if fault == "modifies_inputs" and not applied:
        pytest.skip(f"{name} takes no tensor")
    pytest.fail(f"the checks of {name} miss the fault {fault} (applied: {bool(applied)})")


def needs_of(cell) -> list[str]:
    """The functions a check cell builds on: ``Checks(name, needs=...)``."""
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Checks":
            for keyword in node.keywords:
                if keyword.arg == "needs":
                    needs = ast.literal_eval(keyword.value)
                    return [needs] if isinstance(needs, str) else list(needs)
    return []


def dependent_cells():
    return [
        pytest.param(a, name, needed, id=f"{a}-{name}-needs-{needed}")
        for a in ASSIGNMENTS
        for name in names_of(a)
        for needed in needs_of(checks_cell(a, name))
    ]


@pytest.mark.parametrize("assignment, name, needed", dependent_cells())
def test_a_wrong_earlier_part_says_fix_it_first(assignment, name, needed):
    namespace = kernel(source(assignment))
    namespace[needed] = faulty(namespace[needed], "wrong_values", [])
    failure_of(namespace, checks_cell(assignment, needed))
    message = failure_of(namespace, checks_cell(assignment, name))
    part = build.parts_of(build.read_template(assignment).cells)[needed]
    assert f"fix {part} first" in flat(message)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_demo_cells_run_on_the_reference_and_on_the_stubs(assignment):
    for nb in (source(assignment), release(assignment)):
        namespace = kernel(nb)
        demos = [cell for cell in nb.cells if "demo" in cell.metadata.get("tags", [])]
        assert demos
        for cell in demos:
            namespace.run(cell)


# --- the build ----------------------------------------------------------------------------


def test_an_unknown_known_mistake_fails_the_build(tmp_path):
    template = build.template_path(ASSIGNMENTS[0]).read_text(encoding="utf-8")
    wrong = re.sub(r'mistake="\w+"', 'mistake="no_such_mistake"', template, count=1)
    assert wrong != template
    (tmp_path / "t.md").write_text(wrong, encoding="utf-8")
    with pytest.raises(KeyError, match="no_such_mistake"):
        build.build_source(ASSIGNMENTS[0], tmp_path / "t.md")


def test_an_unknown_placeholder_fails_the_build():
    with pytest.raises((KeyError, ValueError)):
        build.expand_placeholders("{{points:no_such_function}}", ASSIGNMENTS[0])
    with pytest.raises(ValueError, match="unknown placeholder"):
        build.expand_placeholders("{{colour:scaled_dot_product_attention}}", ASSIGNMENTS[0])


TINY_CLASS = '''
import torch
from torch import nn


class Scale(nn.Module):
    """Multiplies by a learned scale."""

    def __init__(self, size):
        super().__init__()
        self.scale = nn.Parameter(torch.full((size,), 2.0))  # (size,)

    def forward(self, x):
        """x (..., size) -> (..., size)."""
        scaled = x * self.scale  # (..., size)
        return scaled

    def extra_repr(self):
        return "given"
'''


def test_a_class_answer_shows_init_and_leaves_forward_to_the_student(tmp_path):
    path = tmp_path / "tiny_reference.py"
    path.write_text(TINY_CLASS, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("tiny_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cell = build.solution_source("tiny", "Scale", "# scaled (..., size)", module=module)

    namespace = {"torch": torch, "nn": torch.nn}
    exec(cell, namespace)
    layer = namespace["Scale"](3)
    assert torch.equal(layer(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    assert f"    {build.GIVEN_INIT}\n    def __init__(self, size):" in cell
    assert "self.scale = nn.Parameter(torch.full((size,), 2.0))" in cell
    assert '        """x (..., size) -> (..., size)."""\n        # scaled (..., size)\n' in cell

    # What nbgrader's ClearSolutions leaves: the given class, and a stub in forward.
    stub = re.sub(
        rf"( *){build.BEGIN_SOLUTION}\n.*?{build.END_SOLUTION}",
        r"\1# YOUR CODE HERE\n\1raise NotImplementedError()",
        cell,
        flags=re.DOTALL,
    )
    namespace = {"torch": torch, "nn": torch.nn}
    exec(stub, namespace)
    layer = namespace["Scale"](3)
    assert layer.extra_repr() == "given" and layer.scale.shape == (3,)
    with pytest.raises(NotImplementedError):
        layer(torch.ones(2, 3))
    assert "x * self.scale" not in stub


def test_check_helper_reports_in_short_lines_and_raises_an_assertion_error():
    helper = {}
    exec(build.check_helper_source({"m": "the sentence of m."}, {"f": "part 1"}), helper)
    check = helper["Checks"]("f")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(AssertionError) as raised:
        check("a check that holds", lambda: True)
        check.values("a value check", torch.tensor([0.5, 0.5]), [1.0, 0.0], known={"m": 0.5})
        check("a check that raises", lambda: 1 / 0, hint="a hint " * 30)
        check.done()
    assert out.getvalue().splitlines() == [
        "PASS  a check that holds",
        "FAIL  a value check",
        "FAIL  a check that raises",
    ]
    shown = raised.value._render_traceback_()  # what IPython shows instead of a traceback
    assert shown[0] == "ChecksFailed: 2 of 3 checks of f failed."
    text = flat("\n".join(shown))
    assert "Likely mistake: the sentence of m. Got 0.5, 0.5." in text
    assert any("ZeroDivisionError" in line for line in shown)
    assert_lines_fit("\n".join(shown))
    assert helper["close"](torch.tensor([float("nan")]), [float("nan")])
    assert not helper["close"](torch.ones(2), [1.0, 1.0, 1.0])
