"""The chapter 3 exercise notebooks: generated, leak-free, and with useful visible tests.

The source notebook must be exactly what ``exercises/build.py`` makes from the template
and ``solutions/`` now, and the release exactly what ``nbgrader generate_assignment``
makes from that source. The release must not contain reference code, hidden tests or
the leak markers of ``solutions/`` and ``autograder/``. The visible test cells must pass
on the reference, fail with the right sentence on typical mistakes, and stay fast.
"""

import ast
import contextlib
import io
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from exercises import build

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "ch03_self_attention"
CONTRACT = ("scaled_dot_product_attention", "self_attention", "sinusoidal_positional_encoding")
VISIBLE_TEST_SECONDS = 3.0
MARKER = re.compile(r"LEAK-MARKER-[A-Za-z0-9_-]+")


def read(path: Path):
    return nbformat.read(path, as_version=4)


def cells_by_grade_id(nb) -> dict:
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if "nbgrader" in cell.metadata
    }


def nbgrader_of(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(scope="module")
def source():
    return read(build.source_path(ASSIGNMENT))


@pytest.fixture(scope="module")
def release():
    return read(build.release_path(ASSIGNMENT))


# --- one source of truth ----------------------------------------------------------------


def test_source_notebook_is_generated_from_template_and_solutions():
    committed = build.source_path(ASSIGNMENT).read_text(encoding="utf-8")
    assert committed == build.notebook_text(build.build_source(ASSIGNMENT)), (
        "the source notebook is out of date: run python exercises/build.py " + ASSIGNMENT
    )


def test_solution_cells_hold_the_reference_bodies(source):
    cells = cells_by_grade_id(source)
    for name in CONTRACT:
        head, body = build.reference_parts(ASSIGNMENT, name)
        solution = cells[name].source
        assert solution.startswith(head)
        assert f"{build.BEGIN_SOLUTION}\n{body}\n" in solution


@pytest.mark.slow
def test_release_is_a_fresh_generate_assignment(tmp_path):
    course = tmp_path / "exercises"
    course.mkdir()
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    shutil.copytree(build.source_path(ASSIGNMENT).parent, course / "source" / ASSIGNMENT)
    fresh = build.generate_release(ASSIGNMENT, course)
    # nbgrader writes no timestamps or random ids into a release: compare the whole file.
    committed = build.release_path(ASSIGNMENT).read_text(encoding="utf-8")
    assert fresh.read_text(encoding="utf-8") == committed, (
        "the release is out of date: run python exercises/build.py " + ASSIGNMENT
    )


# --- the nbgrader structure -------------------------------------------------------------


def test_one_solution_cell_per_contract_name(source):
    solutions = [cell for cell in source.cells if nbgrader_of(cell).get("solution")]
    assert [nbgrader_of(cell)["grade_id"] for cell in solutions] == list(CONTRACT)
    for cell in solutions:
        name = nbgrader_of(cell)["grade_id"]
        definitions = [
            node.name for node in ast.parse(cell.source).body if isinstance(node, ast.FunctionDef)
        ]
        assert definitions == [name]


def test_each_solution_is_followed_by_visible_then_hidden_tests(source):
    ids = [nbgrader_of(cell).get("grade_id") for cell in source.cells]
    for name in CONTRACT:
        at = ids.index(name)
        assert ids[at + 1 : at + 3] == [f"check_{name}", f"test_{name}"]


def test_visible_tests_are_worth_nothing_and_hidden_tests_ten_points(source):
    cells = cells_by_grade_id(source)
    for name in CONTRACT:
        visible = nbgrader_of(cells[f"check_{name}"])
        assert visible["locked"] and visible["grade"] and not visible["solution"]
        assert visible["points"] == 0
        hidden = nbgrader_of(cells[f"test_{name}"])
        assert hidden["locked"] and hidden["grade"] and not hidden["solution"]
        assert hidden["points"] == 10
        assert hidden["schema_version"] == 3


def test_hidden_cells_end_with_the_grading_call(source):
    cells = cells_by_grade_id(source)
    for name in CONTRACT:
        tree = ast.parse(cells[f"test_{name}"].source)
        last = tree.body[-1]
        assert isinstance(last, ast.Expr), "the score must be the cell's last expression"
        assert ast.unparse(last) == f"grade_function('{ASSIGNMENT}', '{name}', globals())"


# --- nothing secret reaches students ----------------------------------------------------


def leak_markers() -> set[str]:
    """Every leak marker defined anywhere in solutions/ and autograder/."""
    found = set()
    for package in ("solutions", "autograder"):
        for path in (REPO / package).rglob("*.py"):
            found.update(MARKER.findall(path.read_text(encoding="utf-8")))
    return found


def reference_lines() -> set[str]:
    """The lines of the reference bodies long enough to be telling, without comments."""
    lines = set()
    for name in CONTRACT:
        _, body = build.reference_parts(ASSIGNMENT, name)
        for line in body.splitlines():
            code = line.split("#")[0].strip()
            if len(code) > 15:
                lines.add(code)
    return lines


def release_text() -> str:
    return build.release_path(ASSIGNMENT).read_text(encoding="utf-8")


def test_leak_markers_exist():
    assert any("solutions-ch03" in marker for marker in leak_markers())


@pytest.mark.parametrize(
    "path",
    [
        build.TEMPLATES / f"{ASSIGNMENT}.md",
        build.source_path(ASSIGNMENT),
        build.release_path(ASSIGNMENT),
    ],
    ids=["template", "source", "release"],
)
def test_no_leak_markers(path):
    text = path.read_text(encoding="utf-8")
    assert not [marker for marker in leak_markers() if marker in text]


def test_release_has_no_reference_code(release):
    sources = "\n".join(cell.source for cell in release.cells)
    leaked = [line for line in reference_lines() if line in sources]
    assert not leaked


@pytest.mark.parametrize(
    "secret", ["BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grade_function", "autograder"]
)
def test_release_has_no_hidden_material(secret):
    assert secret not in release_text()


def test_release_solution_cells_are_stubs(release):
    cells = cells_by_grade_id(release)
    for name in CONTRACT:
        assert cells[name].source.endswith("# YOUR CODE HERE\n    raise NotImplementedError()")


# --- the visible tests ------------------------------------------------------------------


def run_cell(cell, namespace: dict) -> float:
    """Execute a code cell in ``namespace``, quietly; return the seconds it took."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(cell.source, f"<cell {cell.get('id')}>", "exec"), namespace)
    return time.perf_counter() - start


def kernel_with(nb, grade_ids) -> dict:
    """A namespace in which the given cells of ``nb`` have run, in order."""
    cells = cells_by_grade_id(nb)
    namespace = {}
    for grade_id in grade_ids:
        run_cell(cells[grade_id], namespace)
    return namespace


@pytest.fixture
def reference_kernel(source):
    return kernel_with(source, ["imports", *CONTRACT])


@pytest.mark.parametrize("name", CONTRACT)
def test_visible_tests_pass_on_the_reference_and_are_fast(source, reference_kernel, name):
    seconds = run_cell(cells_by_grade_id(source)[f"check_{name}"], reference_kernel)
    assert seconds < VISIBLE_TEST_SECONDS


def test_demo_cells_run_on_the_reference(source, reference_kernel):
    demos = [cell for cell in source.cells if "demo" in cell.metadata.get("tags", [])]
    assert demos
    for cell in demos:
        run_cell(cell, reference_kernel)


@pytest.mark.parametrize("name", CONTRACT)
def test_visible_tests_fail_on_the_release_stubs(release, name):
    namespace = kernel_with(release, ["imports", *CONTRACT])
    with pytest.raises(NotImplementedError):
        run_cell(cells_by_grade_id(release)[f"check_{name}"], namespace)


# Typical mistakes, and the words the visible test must answer them with.
MISTAKES = {
    "no 1/sqrt(d) scaling": (
        "scaled_dot_product_attention",
        """
def scaled_dot_product_attention(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights
""",
        "not scaled",
    ),
    "softmax over the queries": (
        "scaled_dot_product_attention",
        """
def scaled_dot_product_attention(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-2)
    return weights @ v, weights
""",
        "sum to 1",
    ),
    "output transposed": (
        "scaled_dot_product_attention",
        """
def scaled_dot_product_attention(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(-2, -1), weights
""",
        r"out should have shape \(\.\.\., Tq, dv\)",
    ),
    "cast to float32": (
        "scaled_dot_product_attention",
        """
def scaled_dot_product_attention(q, k, v):
    q, k, v = q.float(), k.float(), v.float()
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v, weights
""",
        "float64 inputs should give float64 outputs",
    ),
    "scales q in place": (
        "scaled_dot_product_attention",
        """
def scaled_dot_product_attention(q, k, v):
    q /= q.shape[-1] ** 0.5
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return weights @ v, weights
""",
        "modified q, k or v in place",
    ),
    "weights transposed": (
        "self_attention",
        """
def self_attention(x, W_q, W_k, W_v):
    out, weights = scaled_dot_product_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T)
    return out, weights.mT
""",
        "weights are transposed",
    ),
    "queries and keys swapped": (
        "self_attention",
        """
def self_attention(x, W_q, W_k, W_v):
    return scaled_dot_product_attention(x @ W_k.T, x @ W_q.T, x @ W_v.T)
""",
        r"weights differ from softmax\(q k\^T / sqrt\(d_k\)\)",
    ),
    "values not projected": (
        "self_attention",
        """
def self_attention(x, W_q, W_k, W_v):
    return scaled_dot_product_attention(x @ W_q.T, x @ W_k.T, x)
""",
        r"out should have shape \(B, T, d_v\)",
    ),
    "keys from the query projection": (
        "self_attention",
        """
def self_attention(x, W_q, W_k, W_v):
    return scaled_dot_product_attention(x @ W_q.T, x @ W_q.T, x @ W_v.T)
""",
        r"weights differ from softmax\(q k\^T / sqrt\(d_k\)\)",
    ),
    "sin and cos swapped": (
        "sinusoidal_positional_encoding",
        """
def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    p = torch.arange(T, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(D, device=device) // 2 * 2
    angles = p / base ** (two_i / D)
    pe = torch.where(torch.arange(D, device=device) % 2 == 0, angles.cos(), angles.sin())
    return pe.to(dtype)
""",
        r"position 0 should be \[0, 1, 0, 1, \.\.\.\]",
    ),
    "sines first, then cosines": (
        "sinusoidal_positional_encoding",
        """
def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    p = torch.arange(T, dtype=torch.float64, device=device)[:, None]
    two_i = torch.arange(0, D, 2, device=device)
    angles = p / base ** (two_i / D)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :D].to(dtype)
""",
        "all the sines come first",
    ),
    "exponent j/D instead of 2i/D": (
        "sinusoidal_positional_encoding",
        """
def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    p = torch.arange(T, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(D, device=device)
    angles = p / base ** (j / D)
    pe = torch.where(j % 2 == 0, angles.sin(), angles.cos())
    return pe.to(dtype)
""",
        "same exponent 2i/D",
    ),
    "dtype ignored": (
        "sinusoidal_positional_encoding",
        """
def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    p = torch.arange(T, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(D, device=device)
    angles = p / base ** (j // 2 * 2 / D)
    return torch.where(j % 2 == 0, angles.sin(), angles.cos()).float()
""",
        "dtype=torch.float64 should give float64",
    ),
    "odd D drops the last column": (
        "sinusoidal_positional_encoding",
        """
def sinusoidal_positional_encoding(T, D, base=10000.0, dtype=torch.float32, device=None):
    p = torch.arange(T, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(D // 2 * 2, device=device)
    angles = p / base ** (j // 2 * 2 / D)
    return torch.where(j % 2 == 0, angles.sin(), angles.cos()).to(dtype)
""",
        r"odd D: expected shape \(3, 5\)",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_visible_tests_name_the_mistake(source, reference_kernel, mistake):
    name, wrong, message = MISTAKES[mistake]
    exec(wrong, reference_kernel)
    with pytest.raises(AssertionError, match=message):
        run_cell(cells_by_grade_id(source)[f"check_{name}"], reference_kernel)
