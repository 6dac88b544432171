"""The chapter 4 and 5 exercise notebooks: generated, leak-free, with useful visible tests.

As for chapter 3 (``test_exercise_ch03.py``): the source notebook is exactly what
``exercises/build.py`` makes from the template and ``solutions/``, the release exactly what
``nbgrader generate_assignment`` makes from it; the release holds no reference code, hidden
tests or leak markers; the visible tests pass on the reference, fail on the stubs, answer
typical mistakes with the right sentence, and stay fast.
"""

import ast
import contextlib
import io
import shutil
import time

import nbformat
import pytest
from leaks import leak_markers

from autograder.contracts import ASSIGNMENTS
from exercises import build

CHAPTERS = ("ch04_masking", "ch05_multihead")
VISIBLE_TEST_SECONDS = 3.0


def contract(assignment: str) -> list[str]:
    return ASSIGNMENTS[assignment].names


def read(path):
    return nbformat.read(path, as_version=4)


def nbgrader_of(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def cells_by_grade_id(nb) -> dict:
    return {nbgrader_of(cell)["grade_id"]: cell for cell in nb.cells if nbgrader_of(cell)}


def source(assignment: str):
    return read(build.source_path(assignment))


def release(assignment: str):
    return read(build.release_path(assignment))


# --- one source of truth ----------------------------------------------------------------


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_source_notebook_is_generated_from_template_and_solutions(assignment):
    committed = build.source_path(assignment).read_text(encoding="utf-8")
    assert committed == build.notebook_text(build.build_source(assignment)), (
        "the source notebook is out of date: run python exercises/build.py " + assignment
    )


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_solution_cells_hold_the_reference_bodies(assignment):
    cells = cells_by_grade_id(source(assignment))
    for name in contract(assignment):
        head, body = build.reference_parts(assignment, name)
        assert cells[name].source.startswith(head)
        assert f"{build.BEGIN_SOLUTION}\n{body}\n" in cells[name].source


@pytest.mark.slow
@pytest.mark.parametrize("assignment", CHAPTERS)
def test_release_is_a_fresh_generate_assignment(tmp_path, assignment):
    course = tmp_path / "exercises"
    course.mkdir()
    shutil.copy(build.COURSE_ROOT / "nbgrader_config.py", course)
    shutil.copytree(build.source_path(assignment).parent, course / "source" / assignment)
    fresh = build.generate_release(assignment, course)
    committed = build.release_path(assignment).read_text(encoding="utf-8")
    assert fresh.read_text(encoding="utf-8") == committed, (
        "the release is out of date: run python exercises/build.py " + assignment
    )


# --- the nbgrader structure -------------------------------------------------------------


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_one_solution_cell_per_contract_name_then_visible_then_hidden_tests(assignment):
    nb = source(assignment)
    solutions = [cell for cell in nb.cells if nbgrader_of(cell).get("solution")]
    assert [nbgrader_of(cell)["grade_id"] for cell in solutions] == contract(assignment)
    for cell in solutions:
        tree = ast.parse(cell.source)
        assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == [
            nbgrader_of(cell)["grade_id"]
        ]
    ids = [nbgrader_of(cell).get("grade_id") for cell in nb.cells]
    for name in contract(assignment):
        at = ids.index(name)
        assert ids[at + 1 : at + 3] == [f"check_{name}", f"test_{name}"]


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_visible_tests_are_worth_nothing_and_hidden_tests_ten_points(assignment):
    cells = cells_by_grade_id(source(assignment))
    for name in contract(assignment):
        visible, hidden = nbgrader_of(cells[f"check_{name}"]), nbgrader_of(cells[f"test_{name}"])
        assert visible["locked"] and visible["grade"] and visible["points"] == 0
        assert hidden["locked"] and hidden["grade"] and hidden["points"] == 10
        last = ast.parse(cells[f"test_{name}"].source).body[-1]
        assert ast.unparse(last) == f"grade_function('{assignment}', '{name}', globals())"


# --- nothing secret reaches students ----------------------------------------------------


def reference_lines(assignment: str) -> set[str]:
    lines = set()
    for name in contract(assignment):
        _, body = build.reference_parts(assignment, name)
        for line in body.splitlines():
            code = line.split("#")[0].strip()
            if len(code) > 15:
                lines.add(code)
    return lines


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_release_has_no_reference_code_markers_or_hidden_material(assignment):
    text = build.release_path(assignment).read_text(encoding="utf-8")
    sources = "\n".join(cell.source for cell in release(assignment).cells)
    assert not [line for line in reference_lines(assignment) if line in sources]
    for path in (build.TEMPLATES / f"{assignment}.md", build.source_path(assignment)):
        assert not [m for m in leak_markers() if m in path.read_text(encoding="utf-8")]
    assert not [m for m in leak_markers() if m in text]
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grade_function", "autograder"):
        assert secret not in text
    cells = cells_by_grade_id(release(assignment))
    for name in contract(assignment):
        assert cells[name].source.endswith("# YOUR CODE HERE\n    raise NotImplementedError()")


# --- the visible tests ------------------------------------------------------------------


def run_cell(cell, namespace: dict) -> float:
    """Execute a code cell in ``namespace``, quietly; return the seconds it took."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(cell.source, f"<cell {cell.get('id')}>", "exec"), namespace)
    return time.perf_counter() - start


def kernel_with(nb, grade_ids) -> dict:
    cells = cells_by_grade_id(nb)
    namespace: dict = {}
    for grade_id in grade_ids:
        run_cell(cells[grade_id], namespace)
    return namespace


def reference_kernel(assignment: str) -> dict:
    return kernel_with(source(assignment), ["imports", *contract(assignment)])


VISIBLE = [(a, name) for a in CHAPTERS for name in ASSIGNMENTS[a].names]


@pytest.mark.parametrize("assignment, name", VISIBLE)
def test_visible_tests_pass_on_the_reference_and_are_fast(assignment, name):
    namespace = reference_kernel(assignment)
    run_cell(cells_by_grade_id(source(assignment))[f"check_{name}"], namespace)  # warm-up
    seconds = run_cell(cells_by_grade_id(source(assignment))[f"check_{name}"], namespace)
    assert seconds < VISIBLE_TEST_SECONDS


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_demo_cells_run_on_the_reference(assignment):
    namespace = reference_kernel(assignment)
    demos = [c for c in source(assignment).cells if "demo" in c.metadata.get("tags", [])]
    assert demos
    for cell in demos:
        run_cell(cell, namespace)


@pytest.mark.parametrize("assignment, name", VISIBLE)
def test_visible_tests_fail_on_the_release_stubs(assignment, name):
    namespace = kernel_with(release(assignment), ["imports", *contract(assignment)])
    with pytest.raises(NotImplementedError):
        run_cell(cells_by_grade_id(release(assignment))[f"check_{name}"], namespace)


# Typical mistakes, and the words the visible test must answer them with.
MISTAKES = {
    "causal mask upper-triangular": (
        "ch04_masking",
        "causal_mask",
        """
def causal_mask(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).triu()
""",
        "upper-triangular",
    ),
    "causal mask inverted": (
        "ch04_masking",
        "causal_mask",
        """
def causal_mask(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)
""",
        "inverted",
    ),
    "causal mask without the diagonal": (
        "ch04_masking",
        "causal_mask",
        """
def causal_mask(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(-1)
""",
        "diagonal must be True",
    ),
    "causal mask as floats": (
        "ch04_masking",
        "causal_mask",
        """
def causal_mask(T, device=None):
    return torch.ones(T, T, device=device).tril()
""",
        "bool tensor",
    ),
    "padding mask with <=": (
        "ch04_masking",
        "padding_mask",
        """
def padding_mask(lengths, T, device=None):
    return torch.arange(T, device=device)[None] <= lengths[:, None]
""",
        "t < lengths",
    ),
    "padding mask inverted": (
        "ch04_masking",
        "padding_mask",
        """
def padding_mask(lengths, T, device=None):
    return torch.arange(T, device=device)[None] >= lengths[:, None]
""",
        "inverted",
    ),
    "padding mask as wide as the longest": (
        "ch04_masking",
        "padding_mask",
        """
def padding_mask(lengths, T, device=None):
    return torch.arange(int(lengths.max()), device=device)[None] < lengths[:, None]
""",
        "may exceed every length",
    ),
    "mask applied after the softmax": (
        "ch04_masking",
        "masked_attention",
        """
def masked_attention(q, k, v, mask=None):
    w = torch.softmax(q @ k.mT / math.sqrt(q.shape[-1]), dim=-1)
    w = w if mask is None else w * mask
    return w @ v, w
""",
        "sum to 1",
    ),
    "forbidden scores filled with 0": (
        "ch04_masking",
        "masked_attention",
        """
def masked_attention(q, k, v, mask=None):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    s = s if mask is None else s.masked_fill(~mask, 0.0)
    w = torch.softmax(s, dim=-1)
    return w @ v, w
""",
        "forbidden key got a weight",
    ),
    "mask polarity inverted": (
        "ch04_masking",
        "masked_attention",
        """
def masked_attention(q, k, v, mask=None):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    s = s if mask is None else s.masked_fill(mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return w @ v, w
""",
        "forbidden key got a weight",
    ),
    "fully masked rows give NaN": (
        "ch04_masking",
        "masked_attention",
        """
def masked_attention(q, k, v, mask=None):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    s = s if mask is None else s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return w @ v, w
""",
        "gives NaN",
    ),
    "NaN patched after the values": (
        "ch04_masking",
        "masked_attention",
        """
def masked_attention(q, k, v, mask=None):
    s = q @ k.mT / math.sqrt(q.shape[-1])
    s = s if mask is None else s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return (w @ v).nan_to_num(0.0), w.nan_to_num(0.0)
""",
        "gradients are NaN",
    ),
    "no causal mask": (
        "ch04_masking",
        "causal_self_attention",
        """
def causal_self_attention(x, W_q, W_k, W_v, lengths=None):
    B, T = x.shape[:2]
    real = torch.ones(B, T, dtype=torch.bool)
    if lengths is not None:
        real = padding_mask(lengths, T)
    allowed = real[:, :, None] & real[:, None, :]
    return masked_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, allowed)
""",
        "later key",
    ),
    "lengths ignored": (
        "ch04_masking",
        "causal_self_attention",
        """
def causal_self_attention(x, W_q, W_k, W_v, lengths=None):
    return masked_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, causal_mask(x.shape[1]))
""",
        "padded",
    ),
    "padded queries kept": (
        "ch04_masking",
        "causal_self_attention",
        """
def causal_self_attention(x, W_q, W_k, W_v, lengths=None):
    allowed = causal_mask(x.shape[1])
    if lengths is not None:
        allowed = allowed & padding_mask(lengths, x.shape[1])[:, None, :]
    return masked_attention(x @ W_q.T, x @ W_k.T, x @ W_v.T, allowed)
""",
        "padded queries must be all zeros",
    ),
    "split without transpose": (
        "ch05_multihead",
        "split_heads",
        """
def split_heads(x, num_heads):
    B, T, D = x.shape
    if D % num_heads:
        raise ValueError(D)
    return x.reshape(B, num_heads, T, D // num_heads)
""",
        "whole positions",
    ),
    "split heads last": (
        "ch05_multihead",
        "split_heads",
        """
def split_heads(x, num_heads):
    B, T, D = x.shape
    return x.reshape(B, T, num_heads, D // num_heads)
""",
        r"should have shape \(B, h, T, d\)",
    ),
    "no ValueError": (
        "ch05_multihead",
        "split_heads",
        """
def split_heads(x, num_heads):
    B, T, D = x.shape
    assert D % num_heads == 0
    return x.reshape(B, T, num_heads, D // num_heads).transpose(1, 2)
""",
        "should raise a ValueError, got AssertionError",
    ),
    "merge without transpose": (
        "ch05_multihead",
        "merge_heads",
        """
def merge_heads(x):
    B, h, T, d = x.shape
    return x.reshape(B, T, h * d)
""",
        "row 0 holds positions of head 0",
    ),
    "merge interleaved": (
        "ch05_multihead",
        "merge_heads",
        """
def merge_heads(x):
    B, h, T, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, h * d)
""",
        "interleaved",
    ),
    "weights averaged over heads": (
        "ch05_multihead",
        "multi_head_attention",
        """
def multi_head_attention(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads,
                         mask=None):
    out, weights = REFERENCE(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o,
                             num_heads, mask)
    return out, weights.mean(dim=1)
""",
        "not their mean",
    ),
    "scores divided by sqrt(D)": (
        "ch05_multihead",
        "multi_head_attention",
        """
def multi_head_attention(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads,
                         mask=None):
    q = split_heads(query @ W_q.T + b_q, num_heads)
    k = split_heads(key @ W_k.T + b_k, num_heads)
    v = split_heads(value @ W_v.T + b_v, num_heads)
    s = q @ k.mT / math.sqrt(query.shape[-1])
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
    w = torch.softmax(s, dim=-1)
    w = w if mask is None else w.masked_fill(~mask, 0.0)
    return merge_heads(w @ v) @ W_o.T + b_o, w
""",
        r"sqrt\(D / num_heads\)",
    ),
    "no output projection": (
        "ch05_multihead",
        "multi_head_attention",
        """
def multi_head_attention(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads,
                         mask=None):
    eye, zero = torch.eye(W_o.shape[0], dtype=W_o.dtype), torch.zeros_like(b_o)
    return REFERENCE(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, eye, zero, num_heads, mask)
""",
        "merged @ W_o.T",
    ),
    "fully masked rows give NaN in MHA": (
        "ch05_multihead",
        "multi_head_attention",
        """
def multi_head_attention(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads,
                         mask=None):
    out, weights = REFERENCE(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o,
                             num_heads, mask)
    empty = None if mask is None else ~mask.any(dim=-1)
    return (out if empty is None else out.masked_fill(empty[..., None], float("nan"))), weights
""",
        "contains NaN",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_visible_tests_name_the_mistake(mistake):
    assignment, name, wrong, message = MISTAKES[mistake]
    namespace = reference_kernel(assignment)
    namespace["REFERENCE"] = namespace[name]
    exec(wrong, namespace)
    with pytest.raises(AssertionError, match=message):
        run_cell(cells_by_grade_id(source(assignment))[f"check_{name}"], namespace)
