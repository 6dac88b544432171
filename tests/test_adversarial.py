"""An adversarial corpus: every hostile submission costs its own points and nothing else.

Each attack is a chapter's solution notebook with one answer cell replaced by a hostile
one: it patches torch to fool the tests, exits, hangs, eats memory, floods its output,
crashes, kills its parents, lies with a tensor subclass, returns something that is not a
tensor, wipes its folder, tampers with IPython or with the results, reads the course's
solutions, or writes garbage into the grader's channel. The corpus runs on two chapters:
chapter 3 (functions with tensor and with plain arguments) and chapter 5 (a function of
thirteen arguments, and two reshapes, one of which must raise). Each attack is aimed at one
function of the chapter (``Chapter.targets``), written for its signature. Per chapter, one
real grading run (the real battery, the real sandbox, two workers) goes over all of them
together with an honest, a wrong and a blank submission. For each attack the attacked
function scores 0 with a reason that says what happened, and the untouched functions keep
their full marks; the outputs are complete and leak nothing.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from leaks import leak_markers, reference_code_lines

from autograder.engine import grading
from autograder.engine.notebook import load_notebook
from autograder.kit.mistakes import standalone_source
from autograder.sandbox import Limits, Worker
from autograder.sandbox.launch import bwrap_works

pytestmark = pytest.mark.slow

COURSE = grading.REPOSITORY / "exercises"
SEED = 20240611
FULL_MARKS = 10
# Short per-call limits keep the hanging attacks cheap. An honest call takes milliseconds,
# but the first call on the meta device costs a fresh child about 1.6 s of CPU time.
LIMITS = Limits(call_wall_seconds=4, call_cpu_seconds=3, load_wall_seconds=10)
RECORD_KEYS = {"student", "assignment", "function", "score", "max_score", "feedback"}
# Replaced, when the notebooks are written, by the repository and the run's output folder.
REPO_DIR, OUT_DIR = "@REPO_DIR@", "@OUT_DIR@"

NOT_A_TENSOR = r"not a plain torch\.Tensor"
WRONG_VALUES = r"has shape|differs"
GONE = r"ended the process|killed|crashed"


@dataclass(frozen=True)
class Target:
    """A function that attacks are aimed at, and what an attack needs to know of it.

    ``args`` passes its parameters on; ``tensor`` is one of its tensor arguments;
    ``out_like`` makes zeros shaped like its (single tensor) output; ``wrong`` is a body
    that is wrong on every check, the shape-only ones included, and ``wrong_reason`` the
    feedback that says so.
    """

    function: str
    signature: str
    args: str
    wrong: str
    wrong_reason: str = WRONG_VALUES
    tensor: str = ""
    out_like: str = ""


@dataclass(frozen=True)
class Chapter:
    """One assignment the corpus runs on.

    ``targets`` maps an attack's role to the functions it is aimed at: role "A" functions
    take tensors (and may return a pair), role "B" functions return one tensor; the
    attacks of a role take its functions in turn. ``honest`` replaces answer cells of the
    source notebook so that no attacked function is called by another one; ``wrong``
    names a known mistake (function, mistake name, words of its sentence).
    """

    assignment: str
    functions: tuple[str, ...]
    targets: dict[str, tuple[Target, ...]]
    wrong: tuple[str, str, str]
    honest: dict[str, str] = field(default_factory=dict)

    @property
    def attacked(self) -> set[str]:
        return {target.function for targets in self.targets.values() for target in targets}


CH03 = Chapter(
    "ch03_self_attention",
    ("scaled_dot_product_attention", "self_attention", "sinusoidal_positional_encoding"),
    {
        # self_attention calls scaled_dot_product_attention, which is therefore not attacked.
        "A": (
            Target(
                "self_attention",
                "(x, W_q, W_k, W_v)",
                "x, W_q, W_k, W_v",
                # The values are not projected: the output has D columns, not d_v.
                """\
scores = (x @ W_q.T) @ (x @ W_k.T).transpose(-2, -1) / math.sqrt(W_q.shape[0])
weights = torch.softmax(scores, dim=-1)
return weights @ x, weights""",
                tensor="x",
            ),
        ),
        "B": (
            Target(
                "sinusoidal_positional_encoding",
                "(T, D, base=10000.0, dtype=torch.float32, device=None)",
                "T, D, base, dtype, device",
                # For odd D the table is one column too wide.
                """\
two_i = torch.arange(0, D, 2, dtype=torch.float32, device=device)
angles = torch.arange(T, dtype=torch.float32, device=device)[:, None] / base ** (two_i / D)
return torch.cat((angles.sin(), angles.cos()), dim=-1).to(dtype)""",
                out_like="torch.zeros(T, D, dtype=dtype, device=device)",
            ),
        ),
    },
    ("self_attention", "self_softmax_over_queries", "softmax runs over the queries"),
)

# An honest multi_head_attention that does its own reshapes, so that an attack on
# split_heads or merge_heads costs those functions only.
SELF_CONTAINED_MHA = """\
def multi_head_attention(
    query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None
):
    B, Tq, D = query.shape
    d = D // num_heads

    def heads(x):  # (B, T, D) -> (B, h, T, d)
        return x.reshape(B, x.shape[1], num_heads, d).transpose(1, 2)

    q, k, v = heads(query @ W_q.T + b_q), heads(key @ W_k.T + b_k), heads(value @ W_v.T + b_v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, h, Tq, Tk)
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    merged = (weights @ v).transpose(1, 2).reshape(B, Tq, D)
    return merged @ W_o.T + b_o, weights
"""

CH05 = Chapter(
    "ch05_multihead",
    ("split_heads", "merge_heads", "multi_head_attention"),
    {
        "A": (
            Target(
                "multi_head_attention",
                "(query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask=None)",
                "query, key, value, W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o, num_heads, mask",
                # One head, no projections: the weights are (B, Tq, Tk), not (B, h, Tq, Tk).
                """\
scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
weights = torch.softmax(scores, dim=-1)
return weights @ value, weights""",
                tensor="query",
            ),
        ),
        "B": (
            Target(
                "split_heads",
                "(x, num_heads)",
                "x, num_heads",
                "return x.reshape(x.shape[0], x.shape[1], num_heads, -1)",  # no transpose
                wrong_reason=WRONG_VALUES + r"|not a ValueError",
                out_like="torch.zeros(x.shape[0], num_heads, x.shape[1], x.shape[2] // num_heads,"
                " dtype=x.dtype, device=x.device)",
            ),
            Target(
                "merge_heads",
                "(x)",
                "x",
                "return x.transpose(1, 2)",  # (B, T, h, d), not (B, T, h*d)
                out_like="torch.zeros(x.shape[0], x.shape[2], x.shape[1] * x.shape[3],"
                " dtype=x.dtype, device=x.device)",
            ),
        ),
    },
    ("multi_head_attention", "mha_scale_by_model_dim", "divided by sqrt(D)"),
    honest={"multi_head_attention": SELF_CONTAINED_MHA},
)

CHAPTERS = (CH03, CH05)


@dataclass(frozen=True)
class Attack:
    """One hostile answer cell: ``prelude`` runs at its top level, ``body`` is the attacked
    function's. In both, <X> stands for the target's tensor argument, <OUT_LIKE> for zeros
    shaped like its output, <ARGS> for its arguments passed on, <WRONG> for its wrong body,
    <MODULE> for the chapter's solutions module and <FUNCTION> for the function's name; in
    ``reason``, <WRONG_REASON> for the target's ``wrong_reason``."""

    name: str
    role: str  # "A" or "B": which functions of a chapter it can be aimed at
    body: str
    reason: str  # a regex that the feedback of each of its function's checks must match
    prelude: str = ""

    def target(self, chapter: Chapter) -> Target:
        same_role = [attack.name for attack in ATTACKS if attack.role == self.role]
        targets = chapter.targets[self.role]
        return targets[same_role.index(self.name) % len(targets)]

    def function(self, chapter: Chapter) -> str:
        return self.target(chapter).function

    def filled(self, text: str, chapter: Chapter) -> str:
        target = self.target(chapter)
        for placeholder, value in (
            ("<WRONG>", target.wrong),
            ("<X>", target.tensor),
            ("<OUT_LIKE>", target.out_like),
            ("<ARGS>", target.args),
            ("<MODULE>", chapter.assignment),
            ("<FUNCTION>", target.function),
        ):
            text = text.replace(placeholder, value)
        return text

    def cell(self, chapter: Chapter) -> str:
        target = self.target(chapter)
        body = textwrap.indent(self.filled(self.body, chapter), "    ")
        prelude = self.filled(self.prelude, chapter)
        return f"{prelude}\n\ndef {target.function}{target.signature}:\n{body}\n"

    def pattern(self, chapter: Chapter) -> str:
        return self.reason.replace("<WRONG_REASON>", self.target(chapter).wrong_reason)


WRONG_ANSWER = "<WRONG_REASON>"

ATTACKS = [
    # Fooling the tests: the functions are wrong, the patched checks are not the grader's.
    Attack(
        "allclose_cheat", "A", "<WRONG>", WRONG_ANSWER,
        prelude="import math\nimport torch\n\ntorch.allclose = lambda *args, **kwargs: True",
    ),
    Attack(
        "assert_close_patch", "B", "<WRONG>", WRONG_ANSWER,
        prelude="import torch\n\ntorch.testing.assert_close = lambda *args, **kwargs: None",
    ),
    Attack(
        "equal_patch", "A", "<WRONG>", WRONG_ANSWER,
        prelude="import math\nimport torch\n\ntorch.equal = lambda *args, **kwargs: True",
    ),
    Attack(
        "tensor_eq_patch", "B", "<WRONG>", WRONG_ANSWER,
        prelude="import torch\n\ntorch.Tensor.__eq__ = lambda self, other: torch.tensor(True)",
    ),
    Attack(
        "ipython_input_transformer", "B", "<WRONG>", WRONG_ANSWER,
        prelude="""\
import torch

try:
    get_ipython().input_transformers_cleanup.append(
        lambda lines: [line.replace("grade_function(", "print(") for line in lines]
    )
except NameError:
    pass""",
    ),
    Attack(
        "fake_results_file", "A", "<WRONG>", WRONG_ANSWER,
        prelude=f"""\
import json, math, os
import torch

fake = {{"score": 30, "max_score": 30, "status": "graded", "functions": {{}}}}
for path in ("results.json", "grades.csv", "{OUT_DIR}/grades.csv",
             "{OUT_DIR}/records/fake_results_file.json"):
    try:
        with open(path, "w") as handle:
            json.dump(fake, handle)
    except OSError:
        pass""",
    ),
    # Leaving the process, or never coming back.
    Attack("sys_exit", "A", "import sys\nsys.exit(0)", r"SystemExit"),
    Attack("os_exit", "B", "import os\nos._exit(0)", r"ended the process \(os\._exit\)"),
    Attack("raise_system_exit", "A", "raise SystemExit", r"SystemExit"),
    Attack("keyboard_interrupt", "B", "raise KeyboardInterrupt", r"KeyboardInterrupt"),
    Attack("base_exception", "A", "raise BaseException('bye')", r"BaseException"),
    Attack(
        "exception_without_message", "A",
        "class Mute(Exception):\n    def __str__(self):\n        raise Mute()\n\nraise Mute()",
        r"raised Mute",
    ),
    Attack("infinite_loop", "B", "while True:\n    pass", r"ran for more than 4 s|CPU time"),
    Attack("sleep_forever", "A", "import time\ntime.sleep(10**6)", r"ran for more than 4 s"),
    # Resources.
    Attack("torch_memory_bomb", "A", "return torch.empty(10**12), <X>", r"RuntimeError|Memory"),
    Attack("bytearray_bomb", "B", "return bytearray(10**11)", r"MemoryError"),
    Attack(
        "fork_bomb", "A", "import os\nwhile True:\n    os.fork()",
        r"BlockingIOError|OSError|ran for more than|" + GONE,
    ),
    Attack("print_flood", "B", "print('x' * 100_000_000)", r"File too large|more output"),
    # Crashing, killing.
    Attack("segfault", "A", "import ctypes\nctypes.string_at(0)", r"segmentation fault"),
    Attack(
        "kill_parent", "B", "import os\nos.kill(os.getppid(), 9)\nreturn None",
        r"PermissionError|killed|parent",
    ),
    Attack("kill_process_group", "A", "import os\nos.killpg(0, 9)", r"killed \(SIGKILL\)"),
    Attack(
        "garbage_to_file_descriptors", "A",
        """\
import os
for fd in range(3, 21):
    try:
        os.write(fd, b"\\xff\\x00garbage" * 512)
    except OSError:
        pass
return <X>, <X>""",
        r"unexpected data|connection to the grader",
    ),
    # Lying about the result.
    Attack(
        "subclass_lying_eq", "A",
        """\
class Liar(torch.Tensor):
    def __eq__(self, other):
        return True

return <X>.as_subclass(Liar), <X>.as_subclass(Liar)""",
        NOT_A_TENSOR,
    ),
    Attack(
        "subclass_lying_torch_function", "B",
        """\
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True

return <OUT_LIKE>.as_subclass(Liar)""",
        NOT_A_TENSOR + r"|raised|expected a ValueError",
    ),
    Attack("returns_list", "B", "return [0.0] * 5", r"it returned list\[float,"),
    Attack("returns_long_list", "B", "return [0.0] * 2000", r"it returned 2000 values"),
    Attack(
        "returns_numpy", "B", "import numpy\nreturn numpy.zeros(3)",
        r"it returned ndarray, expected",
    ),
    Attack("returns_string", "A", "return 'tensor([[1.0]])'", r"it returned str, expected"),
    Attack(
        "returns_nan", "B", "return torch.full(<OUT_LIKE>.shape, float('nan'))",
        r"contains NaN|has dtype|is on cpu|expected a ValueError",
    ),
    Attack(
        "delete_working_dir", "A",
        """\
import os, shutil
try:
    for name in os.listdir("."):
        shutil.rmtree(name, ignore_errors=True)
    shutil.rmtree(os.getcwd())
except OSError:
    pass
<WRONG>""",
        WRONG_ANSWER,
        prelude="import math\nimport torch",
    ),
    # Reading the course: it is not there.
    Attack(
        "read_solutions_file", "A",
        f"""\
namespace = {{}}
with open("{REPO_DIR}/solutions/<MODULE>.py") as handle:
    exec(handle.read(), namespace)
return namespace["<FUNCTION>"](<ARGS>)""",
        r"FileNotFoundError|PermissionError",
    ),
    Attack(
        "import_solutions", "B",
        f"""\
import sys
sys.path.insert(0, "{REPO_DIR}")
from solutions.<MODULE> import <FUNCTION> as reference
return reference(<ARGS>)""",
        r"ModuleNotFoundError|ImportError",
    ),
]  # fmt: skip
ATTACKED = {attack.name: attack for attack in ATTACKS}
HONEST, WRONG_STUDENT, BLANK = "honest", "wrong_mutant", "blank"
STUDENTS = sorted([HONEST, WRONG_STUDENT, BLANK, *ATTACKED])


# Notebooks ----------------------------------------------------------------------------


def grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def course_notebook(chapter: Chapter, folder: str) -> dict:
    assignment = chapter.assignment
    notebook, problem = load_notebook(COURSE / folder / assignment / f"{assignment}.ipynb")
    assert notebook is not None, problem
    return notebook


def answers(chapter: Chapter) -> dict[str, str]:
    """The source notebook's answer cells, reference code included, and the chapter's
    honest replacements."""
    cells = course_notebook(chapter, "source")["cells"]
    found = {grade_id(c): "".join(c["source"]) for c in cells if grade_id(c) in chapter.functions}
    return {**found, **chapter.honest}


def submission(chapter: Chapter, replaced: dict[str, str]) -> dict:
    """The release notebook with every answer filled in, then the ``replaced`` ones."""
    notebook = course_notebook(chapter, "release")
    sources = {**answers(chapter), **replaced}
    for cell in notebook["cells"]:
        if grade_id(cell) in sources:
            cell["source"] = sources[grade_id(cell)]
    return notebook


def mutant_cell(chapter: Chapter) -> str:
    function, name, _ = chapter.wrong
    module = importlib.import_module(f"autograder.mutants.{chapter.assignment}")
    mutant = next(m for m in module.MUTANTS if m.name == name)
    assert mutant.function == function
    return "import math\nimport torch\n\n" + standalone_source(mutant)


def all_submissions(chapter: Chapter, out: Path) -> dict[str, dict]:
    def placed(source: str) -> str:
        return source.replace(REPO_DIR, str(grading.REPOSITORY)).replace(OUT_DIR, str(out))

    notebooks = {
        HONEST: submission(chapter, {}),
        WRONG_STUDENT: submission(chapter, {chapter.wrong[0]: mutant_cell(chapter)}),
        BLANK: course_notebook(chapter, "release"),
    }
    for attack in ATTACKS:
        cell = placed(attack.cell(chapter))
        notebooks[attack.name] = submission(chapter, {attack.function(chapter): cell})
    return notebooks


def write_submissions(chapter: Chapter, folder: Path, notebooks: dict[str, dict]) -> None:
    assignment = chapter.assignment
    for student, notebook in notebooks.items():
        path = folder / student / assignment / f"{assignment}.ipynb"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(notebook))


# The run ------------------------------------------------------------------------------


@dataclass
class Run:
    chapter: Chapter
    out: Path
    summary: grading.Summary
    seconds: float
    rows: dict[str, dict]  # grades.csv, by student
    records: list[dict]  # the --json list
    feedback: dict[str, str]  # feedback file, by student

    def record(self, student: str, function: str) -> dict:
        return next(r for r in self.records if (r["student"], r["function"]) == (student, function))

    def score(self, student: str, function: str) -> float:
        return self.record(student, function)["score"]


@pytest.fixture(scope="module", params=CHAPTERS, ids=lambda chapter: chapter.assignment)
def run(request, tmp_path_factory) -> Run:
    if not bwrap_works():
        pytest.skip("bubblewrap cannot start a sandbox here: the grading that counts needs it")
    chapter = request.param
    root = tmp_path_factory.mktemp(f"adversarial-{chapter.assignment}")
    out = root / "out"
    write_submissions(chapter, root / "submitted", all_submissions(chapter, out))
    started = time.monotonic()
    summary = grading.grade(
        chapter.assignment, root / "submitted", out, workers=2,
        json_path=root / "grades.json", seed=SEED,
        worker_factory=lambda: Worker(LIMITS, isolation="bubblewrap"),
    )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"\n{chapter.assignment}: graded {len(STUDENTS)} submissions in {seconds:.0f} s")
    with (out / "grades.csv").open(newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    feedback = {path.stem: path.read_text() for path in (out / "feedback").glob("*.md")}
    records = json.loads((root / "grades.json").read_text())
    return Run(chapter, out, summary, seconds, rows, records, feedback)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_costs_only_the_attacked_function(run, attack):
    """0 for the attacked function, each check saying why; full marks for the others."""
    attacked_function = attack.function(run.chapter)
    attacked = run.record(attack.name, attacked_function)
    assert attacked["score"] == 0, attacked["feedback"]
    summary, *checks = attacked["feedback"].splitlines()
    assert summary == f"0 of {len(checks)} checks passed.", summary
    for check in checks:
        assert re.search(attack.pattern(run.chapter), check), check
    for function in run.chapter.functions:
        if function != attacked_function:
            record = run.record(attack.name, function)
            assert record["score"] == FULL_MARKS, (function, record["feedback"])


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda chapter: chapter.assignment)
def test_corpus_is_large_and_varied(chapter):
    assert len(ATTACKS) >= 20 and len(ATTACKED) == len(ATTACKS)
    assert {attack.function(chapter) for attack in ATTACKS} == chapter.attacked
    for attack in ATTACKS:
        cell = attack.cell(chapter)
        assert not re.search(r"<[A-Z_]+>", cell), cell
        compile(cell, attack.name, "exec")


def test_honest_wrong_and_blank(run):
    functions = run.chapter.functions
    wrong_function, _, words = run.chapter.wrong
    assert [run.score(HONEST, f) for f in functions] == [FULL_MARKS] * len(functions)
    assert [run.score(BLANK, f) for f in functions] == [0] * len(functions)
    for function in functions:
        if function != wrong_function:
            assert run.score(WRONG_STUDENT, function) == FULL_MARKS
    wrong = run.record(WRONG_STUDENT, wrong_function)
    assert wrong["score"] < FULL_MARKS
    assert words in wrong["feedback"]


def test_outputs_are_complete(run):
    functions = run.chapter.functions
    assert list(run.rows) == STUDENTS
    assert run.summary.students == len(STUDENTS) and run.summary.not_graded == {}
    for student, row in run.rows.items():
        total = sum(run.score(student, f) for f in functions)
        assert float(row["total"]) == total
        assert float(row["max"]) == len(functions) * FULL_MARKS
    assert len(run.records) == len(STUDENTS) * len(functions)
    assert all(set(record) == RECORD_KEYS for record in run.records)
    pairs = {(record["student"], record["function"]) for record in run.records}
    assert pairs == {(student, function) for student in STUDENTS for function in functions}
    assert sorted(run.feedback) == STUDENTS


def test_grader_records_are_its_own(run):
    records = {path.stem for path in (run.out / "records").glob("*.json")}
    assert records == set(STUDENTS)
    faked = json.loads((run.out / "records" / "fake_results_file.json").read_text())
    untouched = len(run.chapter.functions) - 1
    assert faked["score"] == untouched * FULL_MARKS and faked["status"] == "graded"


def test_feedback_leaks_nothing(run):
    markers, lines = leak_markers(), reference_code_lines()
    assert markers and lines
    texts = [*run.feedback.values(), json.dumps(run.records)]
    for text in texts:
        assert not [marker for marker in markers if marker in text]
        assert not [line for line in lines if line in text]


def test_runs_in_reasonable_time(run):
    assert run.seconds < 180
