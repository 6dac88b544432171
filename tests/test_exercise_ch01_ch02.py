"""The chapter 1 and 2 exercise notebooks: generated, leak-free, and with useful visible tests.

As for chapter 3 (``tests/test_exercise_ch03.py``): the source notebook must be exactly what
``exercises/build.py`` makes from the template and ``solutions/`` now, and the release
exactly what ``nbgrader generate_assignment`` makes from it. The release holds no reference
code, hidden tests or leak markers. The visible tests pass on the reference, fail on the
release stubs, name typical mistakes, and stay fast.
"""

import ast
import contextlib
import io
import shutil
import time

import nbformat
import pytest

from autograder.contracts import ASSIGNMENTS
from exercises import build
from tests.leaks import leak_markers, reference_code_lines

ASSIGNMENT_IDS = ("ch01_seq2seq", "ch02_attention")
VISIBLE_TEST_SECONDS = 3.0


def contract(assignment: str) -> list[str]:
    return ASSIGNMENTS[assignment].names


def read(path):
    return nbformat.read(path, as_version=4)


def cells_by_grade_id(nb) -> dict:
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if "nbgrader" in cell.metadata
    }


def nbgrader_of(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


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


def source_of(assignment):
    return read(build.source_path(assignment))


def release_of(assignment):
    return read(build.release_path(assignment))


# --- one source of truth ----------------------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENT_IDS)
def test_source_notebook_is_generated_from_template_and_solutions(assignment):
    committed = build.source_path(assignment).read_text(encoding="utf-8")
    assert committed == build.notebook_text(build.build_source(assignment)), (
        "the source notebook is out of date: run python exercises/build.py " + assignment
    )


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENT_IDS)
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


@pytest.mark.parametrize("assignment", ASSIGNMENT_IDS)
def test_one_solution_cell_per_contract_name_with_its_tests_after_it(assignment):
    source = source_of(assignment)
    solutions = [cell for cell in source.cells if nbgrader_of(cell).get("solution")]
    assert [nbgrader_of(cell)["grade_id"] for cell in solutions] == contract(assignment)
    ids = [nbgrader_of(cell).get("grade_id") for cell in source.cells]
    cells = cells_by_grade_id(source)
    for name in contract(assignment):
        definitions = [
            node.name
            for node in ast.parse(cells[name].source).body
            if isinstance(node, ast.FunctionDef)
        ]
        assert definitions == [name]
        at = ids.index(name)
        assert ids[at + 1 : at + 3] == [f"check_{name}", f"test_{name}"]
        assert nbgrader_of(cells[f"check_{name}"])["points"] == 0
        assert nbgrader_of(cells[f"test_{name}"])["points"] == 10
        last = ast.parse(cells[f"test_{name}"].source).body[-1]
        assert ast.unparse(last) == f"grade_function('{assignment}', '{name}', globals())"


# --- nothing secret reaches students ----------------------------------------------------


@pytest.mark.parametrize("assignment", ASSIGNMENT_IDS)
def test_release_holds_no_secret(assignment):
    text = build.release_path(assignment).read_text(encoding="utf-8")
    template = (build.TEMPLATES / f"{assignment}.md").read_text(encoding="utf-8")
    assert not [marker for marker in leak_markers() if marker in text or marker in template]
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "grade_function", "autograder"):
        assert secret not in text
    sources = "\n".join(cell.source for cell in release_of(assignment).cells)
    assert not [line for line in reference_code_lines() if line in sources]
    cells = cells_by_grade_id(release_of(assignment))
    for name in contract(assignment):
        assert cells[name].source.endswith("# YOUR CODE HERE\n    raise NotImplementedError()")


# --- the visible tests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment, name",
    [(assignment, name) for assignment in ASSIGNMENT_IDS for name in contract(assignment)],
)
def test_visible_tests_pass_on_the_reference_fail_on_the_stubs_and_are_fast(assignment, name):
    source = source_of(assignment)
    namespace = kernel_with(source, ["imports", *contract(assignment)])
    assert run_cell(cells_by_grade_id(source)[f"check_{name}"], namespace) < VISIBLE_TEST_SECONDS
    release = release_of(assignment)
    stubs = kernel_with(release, ["imports", *contract(assignment)])
    with pytest.raises(NotImplementedError):
        run_cell(cells_by_grade_id(release)[f"check_{name}"], stubs)


@pytest.mark.parametrize("assignment", ASSIGNMENT_IDS)
def test_demo_cells_run_on_the_reference(assignment):
    source = source_of(assignment)
    namespace = kernel_with(source, ["imports", *contract(assignment)])
    demos = [cell for cell in source.cells if "demo" in cell.metadata.get("tags", [])]
    assert demos
    for cell in demos:
        run_cell(cell, namespace)


# Typical mistakes, and the words the visible test must answer them with.
MISTAKES = {
    "cell without tanh": (
        "ch01_seq2seq",
        "rnn_cell",
        "def rnn_cell(x_t, h_prev, W_ih, W_hh, b):\n"
        "    return x_t @ W_ih.T + h_prev @ W_hh.T + b\n",
        "the tanh is missing",
    ),
    "cell ignores h_prev": (
        "ch01_seq2seq",
        "rnn_cell",
        "def rnn_cell(x_t, h_prev, W_ih, W_hh, b):\n    return torch.tanh(x_t @ W_ih.T + b)\n",
        "h_prev is not used",
    ),
    "cell with W_hh untransposed": (
        "ch01_seq2seq",
        "rnn_cell",
        "def rnn_cell(x_t, h_prev, W_ih, W_hh, b):\n"
        "    return torch.tanh(x_t @ W_ih.T + h_prev @ W_hh + b)\n",
        r"not h_prev @ W_hh",
    ),
    "encoder ignores lengths": (
        "ch01_seq2seq",
        "rnn_encode",
        "def rnn_encode(x, h0, W_ih, W_hh, b, lengths=None):\n"
        "    h, outputs = h0, []\n"
        "    for t in range(x.shape[1]):\n"
        "        h = rnn_cell(x[:, t], h, W_ih, W_hh, b)\n"
        "        outputs.append(h)\n"
        "    return torch.stack(outputs, dim=1), h\n",
        "zero at padded steps",
    ),
    "encoder state taken after the padding": (
        "ch01_seq2seq",
        "rnn_encode",
        "def rnn_encode(x, h0, W_ih, W_hh, b, lengths=None):\n"
        "    T = x.shape[1]\n"
        "    lengths = torch.full((x.shape[0],), T) if lengths is None else lengths\n"
        "    h, outputs = h0, []\n"
        "    for t in range(T):\n"
        "        h = rnn_cell(x[:, t], h, W_ih, W_hh, b)\n"
        "        outputs.append(h * (t < lengths.to(x.device))[:, None])\n"
        "    return torch.stack(outputs, dim=1), h\n",
        "not after the padding",
    ),
    "encoder restarts from h0": (
        "ch01_seq2seq",
        "rnn_encode",
        "def rnn_encode(x, h0, W_ih, W_hh, b, lengths=None):\n"
        "    outputs = [rnn_cell(x[:, t], h0, W_ih, W_hh, b) for t in range(x.shape[1])]\n"
        "    return torch.stack(outputs, dim=1), outputs[-1]\n",
        "feed each state to the next step",
    ),
    "decoder inputs are the targets": (
        "ch01_seq2seq",
        "shift_right",
        "def shift_right(targets, bos_id):\n    return targets.clone()\n",
        "the decoder inputs are the targets themselves",
    ),
    "bos overwrites y_0": (
        "ch01_seq2seq",
        "shift_right",
        "def shift_right(targets, bos_id):\n"
        "    shifted = targets.clone()\n"
        "    shifted[:, 0] = bos_id\n"
        "    return shifted\n",
        r"expected \[\[1, 5, 6\], \[1, 8, 9\]\]",
    ),
    "shift in place": (
        "ch01_seq2seq",
        "shift_right",
        "def shift_right(targets, bos_id):\n"
        "    targets[:, 1:] = targets[:, :-1].clone()\n"
        "    targets[:, 0] = bos_id\n"
        "    return targets\n",
        "modified targets in place",
    ),
    "loss counts the padding": (
        "ch01_seq2seq",
        "sequence_cross_entropy",
        "def sequence_cross_entropy(logits, targets, pad_id):\n"
        "    log_probs = torch.log_softmax(logits, dim=-1)\n"
        "    safe = targets.clamp(min=0)\n"
        "    return -log_probs.gather(-1, safe[..., None]).mean()\n",
        "the padded positions are counted",
    ),
    "loss per sequence": (
        "ch01_seq2seq",
        "sequence_cross_entropy",
        "def sequence_cross_entropy(logits, targets, pad_id):\n"
        "    real = targets != pad_id\n"
        "    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])\n"
        "    nll = -picked[..., 0] * real\n"
        "    return (nll.sum(1) / real.sum(1)).mean()\n",
        "a mean per sequence",
    ),
    "loss as a number": (
        "ch01_seq2seq",
        "sequence_cross_entropy",
        "def sequence_cross_entropy(logits, targets, pad_id):\n"
        "    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id).item()\n",
        "scalar tensor",
    ),
    "loss by hand overflows": (
        "ch01_seq2seq",
        "sequence_cross_entropy",
        "def sequence_cross_entropy(logits, targets, pad_id):\n"
        "    real = targets != pad_id\n"
        "    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)\n"
        "    picked = probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]\n"
        "    return -(picked.log() * real).sum() / real.sum()\n",
        "large logits",
    ),
    "decoding never stops early": (
        "ch01_seq2seq",
        "greedy_decode",
        "def greedy_decode(step, h0, bos_id, eos_id, max_len):\n"
        "    prev = torch.full((h0.shape[0],), bos_id, device=h0.device)\n"
        "    done = torch.zeros_like(prev, dtype=torch.bool)\n"
        "    h, tokens = h0, []\n"
        "    for _ in range(max_len):\n"
        "        logits, h = step(prev, h)\n"
        "        prev = logits.argmax(-1).masked_fill(done, eos_id)\n"
        "        tokens.append(prev)\n"
        "        done = done | (prev == eos_id)\n"
        "    return torch.stack(tokens, dim=1)\n",
        "step was called after every sequence had finished",
    ),
    "finished rows fed their argmax": (
        "ch01_seq2seq",
        "greedy_decode",
        "def greedy_decode(step, h0, bos_id, eos_id, max_len):\n"
        "    prev = torch.full((h0.shape[0],), bos_id, device=h0.device)\n"
        "    done = torch.zeros_like(prev, dtype=torch.bool)\n"
        "    h = h0\n"
        "    tokens = torch.full((h0.shape[0], max_len), eos_id, device=h0.device)\n"
        "    for t in range(max_len):\n"
        "        logits, h = step(prev, h)\n"
        "        prev = logits.argmax(-1)\n"
        "        tokens[:, t] = prev.masked_fill(done, eos_id)\n"
        "        done = done | (prev == eos_id)\n"
        "        if done.all():\n"
        "            break\n"
        "    return tokens\n",
        "should be fed eos",
    ),
    "dot scores scaled": (
        "ch02_attention",
        "dot_scores",
        "def dot_scores(query, keys):\n"
        "    return (keys @ query[:, :, None])[..., 0] / math.sqrt(query.shape[-1])\n",
        "divided by sqrt",
    ),
    "dot scores keep an axis": (
        "ch02_attention",
        "dot_scores",
        "def dot_scores(query, keys):\n    return keys @ query[:, :, None]\n",
        "drop the last axis",
    ),
    "additive without tanh": (
        "ch02_attention",
        "additive_scores",
        "def additive_scores(query, keys, W_q, W_k, v):\n"
        "    return ((query @ W_q.T)[:, None] + keys @ W_k.T) @ v\n",
        "the tanh is missing",
    ),
    "mask inverted": (
        "ch02_attention",
        "lengths_to_mask",
        "def lengths_to_mask(lengths, T):\n"
        "    return torch.arange(T, device=lengths.device)[None] >= lengths[:, None]\n",
        "inverted",
    ),
    "mask one too long": (
        "ch02_attention",
        "lengths_to_mask",
        "def lengths_to_mask(lengths, T):\n"
        "    return torch.arange(T, device=lengths.device)[None] <= lengths[:, None]\n",
        "one position too many",
    ),
    "mask as wide as the longest": (
        "ch02_attention",
        "lengths_to_mask",
        "def lengths_to_mask(lengths, T):\n"
        "    positions = torch.arange(int(lengths.max()), device=lengths.device)\n"
        "    return positions[None] < lengths[:, None]\n",
        "T columns",
    ),
    "softmax then zeroing": (
        "ch02_attention",
        "masked_softmax",
        "def masked_softmax(scores, mask):\n    return torch.softmax(scores, dim=-1) * mask\n",
        "sum to 1",
    ),
    "softmax of -inf": (
        "ch02_attention",
        "masked_softmax",
        "def masked_softmax(scores, mask):\n"
        "    return torch.softmax(scores.masked_fill(~mask, float('-inf')), dim=-1)\n",
        "gives NaN",
    ),
    "NaN hidden, not its gradient": (
        "ch02_attention",
        "masked_softmax",
        "def masked_softmax(scores, mask):\n"
        "    bias = torch.zeros_like(scores).masked_fill(~mask, float('-inf'))\n"
        "    return torch.nan_to_num(torch.softmax(scores + bias, dim=-1))\n",
        "gradients are not finite",
    ),
    "context is a mean": (
        "ch02_attention",
        "attend",
        "def attend(query, keys, values, mask, W_q, W_k, v):\n"
        "    weights = masked_softmax(additive_scores(query, keys, W_q, W_k, v), mask)\n"
        "    return values.mean(dim=1), weights\n",
        "weighted sum of the values",
    ),
    "attend ignores the mask": (
        "ch02_attention",
        "attend",
        "def attend(query, keys, values, mask, W_q, W_k, v):\n"
        "    weights = torch.softmax(additive_scores(query, keys, W_q, W_k, v), dim=-1)\n"
        "    return (weights[:, None] @ values)[:, 0], weights\n",
        "uniform over the allowed positions",
    ),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_visible_tests_name_the_mistake(mistake):
    assignment, name, wrong, message = MISTAKES[mistake]
    source = source_of(assignment)
    namespace = kernel_with(source, ["imports", *contract(assignment)])
    exec(wrong, namespace)
    with pytest.raises(AssertionError, match=message):
        run_cell(cells_by_grade_id(source)[f"check_{name}"], namespace)
