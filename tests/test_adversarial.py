"""An adversarial corpus: every hostile submission costs its own points and nothing else.

Each attack is the chapter 3 solution notebook with one answer cell replaced by a
hostile one: it patches torch to fool the tests, exits, hangs, eats memory, floods its
output, crashes, kills its parents, lies with a tensor subclass, returns something
that is not a tensor, wipes its folder, tampers with IPython or with the results, reads
the course's solutions, or writes garbage into the grader's channel. One real grading
run (the real battery, the real sandbox, two workers) goes over all of them together
with an honest, a wrong and a blank submission. For each attack the attacked function
scores 0 with a reason that says what happened, and the two untouched functions keep
their full marks; the outputs are complete and leak nothing.
"""

from __future__ import annotations

import csv
import json
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from leaks import leak_markers, reference_code_lines

from autograder.engine import grading
from autograder.engine.notebook import load_notebook
from autograder.kit.mistakes import standalone_source
from autograder.mutants import ch03_self_attention as mutants
from autograder.sandbox import Limits, Worker
from autograder.sandbox.launch import bwrap_works

pytestmark = pytest.mark.slow

ASSIGNMENT = "ch03_self_attention"
SDPA, SELF, PE = FUNCTIONS = [
    "scaled_dot_product_attention",
    "self_attention",
    "sinusoidal_positional_encoding",
]
COURSE = grading.REPOSITORY / "exercises"
SEED = 20240611
FULL_MARKS = 10
# Short per-call limits keep the hanging attacks cheap. An honest call takes milliseconds,
# but the first call on the meta device costs a fresh child about 1.6 s of CPU time.
LIMITS = Limits(call_wall_seconds=4, call_cpu_seconds=3, load_wall_seconds=10)
RECORD_KEYS = {"student", "assignment", "function", "score", "max_score", "feedback"}
# Replaced, when the notebooks are written, by the repository and the run's output folder.
REPO_DIR, OUT_DIR = "@REPO_DIR@", "@OUT_DIR@"

SIGNATURES = {
    SELF: "(x, W_q, W_k, W_v)",
    PE: "(T, D, base=10000.0, dtype=torch.float32, device=None)",
}
# Wrong on every check, the shape-only meta checks included: the values are not
# projected (the output has D columns, not d_v), and for odd D the table is one too wide.
WRONG = {
    SELF: """\
scores = (x @ W_q.T) @ (x @ W_k.T).transpose(-2, -1) / math.sqrt(W_q.shape[0])
weights = torch.softmax(scores, dim=-1)
return weights @ x, weights""",
    PE: """\
two_i = torch.arange(0, D, 2, dtype=torch.float32, device=device)
angles = torch.arange(T, dtype=torch.float32, device=device)[:, None] / base ** (two_i / D)
return torch.cat((angles.sin(), angles.cos()), dim=-1).to(dtype)""",
}


@dataclass(frozen=True)
class Attack:
    """One hostile answer cell: ``prelude`` runs at its top level, ``body`` is ``function``'s."""

    name: str
    function: str  # the function it attacks: SELF or PE (self_attention calls SDPA)
    body: str
    reason: str  # a regex that the feedback of each of its function's checks must match
    prelude: str = ""

    def cell(self) -> str:
        body = textwrap.indent(self.body, "    ")
        return f"{self.prelude}\n\ndef {self.function}{SIGNATURES[self.function]}:\n{body}\n"


NOT_A_TENSOR = r"not a plain torch\.Tensor"
WRONG_VALUES = r"has shape|differs"
GONE = r"ended the process|killed|crashed"

ATTACKS = [
    # Fooling the tests: the functions are wrong, the patched checks are not the grader's.
    Attack(
        "allclose_cheat", SELF, WRONG[SELF], WRONG_VALUES,
        prelude="import math\nimport torch\n\ntorch.allclose = lambda *args, **kwargs: True",
    ),
    Attack(
        "assert_close_patch", PE, WRONG[PE], WRONG_VALUES,
        prelude="import torch\n\ntorch.testing.assert_close = lambda *args, **kwargs: None",
    ),
    Attack(
        "equal_patch", SELF, WRONG[SELF], WRONG_VALUES,
        prelude="import math\nimport torch\n\ntorch.equal = lambda *args, **kwargs: True",
    ),
    Attack(
        "tensor_eq_patch", PE, WRONG[PE], WRONG_VALUES,
        prelude="import torch\n\ntorch.Tensor.__eq__ = lambda self, other: torch.tensor(True)",
    ),
    Attack(
        "ipython_input_transformer", PE, WRONG[PE], WRONG_VALUES,
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
        "fake_results_file", SELF, WRONG[SELF], WRONG_VALUES,
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
    Attack("sys_exit", SELF, "import sys\nsys.exit(0)", r"SystemExit"),
    Attack("os_exit", PE, "import os\nos._exit(0)", r"ended the process \(os\._exit\)"),
    Attack("raise_system_exit", SELF, "raise SystemExit", r"SystemExit"),
    Attack("keyboard_interrupt", PE, "raise KeyboardInterrupt", r"KeyboardInterrupt"),
    Attack("base_exception", SELF, "raise BaseException('bye')", r"BaseException"),
    Attack(
        "exception_without_message", SELF,
        "class Mute(Exception):\n    def __str__(self):\n        raise Mute()\n\nraise Mute()",
        r"raised Mute",
    ),
    Attack("infinite_loop", PE, "while True:\n    pass", r"ran for more than 4 s|CPU time"),
    Attack("sleep_forever", SELF, "import time\ntime.sleep(10**6)", r"ran for more than 4 s"),
    # Resources.
    Attack("torch_memory_bomb", SELF, "return torch.empty(10**12), x", r"RuntimeError|Memory"),
    Attack("bytearray_bomb", PE, "return bytearray(10**11)", r"MemoryError"),
    Attack(
        "fork_bomb", SELF, "import os\nwhile True:\n    os.fork()",
        r"BlockingIOError|OSError|ran for more than|" + GONE,
    ),
    Attack("print_flood", PE, "print('x' * 100_000_000)", r"File too large|more output"),
    # Crashing, killing.
    Attack("segfault", SELF, "import ctypes\nctypes.string_at(0)", r"segmentation fault"),
    Attack(
        "kill_parent", PE, "import os\nos.kill(os.getppid(), 9)\nreturn None",
        r"PermissionError|killed|parent",
    ),
    Attack("kill_process_group", SELF, "import os\nos.killpg(0, 9)", r"killed \(SIGKILL\)"),
    Attack(
        "garbage_to_file_descriptors", SELF,
        """\
import os
for fd in range(3, 21):
    try:
        os.write(fd, b"\\xff\\x00garbage" * 512)
    except OSError:
        pass
return x, x""",
        r"unexpected data|connection to the grader",
    ),
    # Lying about the result.
    Attack(
        "subclass_lying_eq", SELF,
        """\
class Liar(torch.Tensor):
    def __eq__(self, other):
        return True

return x.as_subclass(Liar), x.as_subclass(Liar)""",
        NOT_A_TENSOR,
    ),
    Attack(
        "subclass_lying_torch_function", PE,
        """\
class Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True

return torch.zeros(T, D, dtype=dtype, device=device).as_subclass(Liar)""",
        NOT_A_TENSOR + r"|raised",
    ),
    Attack("returns_list", PE, "return [0.0] * D", r"it returned list\[float,"),
    Attack(
        "returns_long_list", PE, "return [0.0] * 2000", r"it returned 2000 values",
    ),
    Attack(
        "returns_numpy", PE, "import numpy\nreturn numpy.zeros((T, D))",
        r"it returned ndarray, expected tensor",
    ),
    Attack("returns_string", SELF, "return 'tensor([[1.0]])'", r"it returned str, expected"),
    Attack(
        "returns_nan", PE, "return torch.full((T, D), float('nan'))",
        r"contains NaN|has dtype|is on cpu",
    ),
    Attack(
        "delete_working_dir", SELF,
        f"""\
import os, shutil
try:
    for name in os.listdir("."):
        shutil.rmtree(name, ignore_errors=True)
    shutil.rmtree(os.getcwd())
except OSError:
    pass
{WRONG[SELF]}""",
        WRONG_VALUES,
        prelude="import math\nimport torch",
    ),
    # Reading the course: it is not there.
    Attack(
        "read_solutions_file", SELF,
        f"""\
namespace = {{}}
with open("{REPO_DIR}/solutions/ch03_self_attention.py") as handle:
    exec(handle.read(), namespace)
return namespace["self_attention"](x, W_q, W_k, W_v)""",
        r"FileNotFoundError|PermissionError",
    ),
    Attack(
        "import_solutions", PE,
        f"""\
import sys
sys.path.insert(0, "{REPO_DIR}")
from solutions.ch03_self_attention import sinusoidal_positional_encoding as reference
return reference(T, D, base, dtype, device)""",
        r"ModuleNotFoundError|ImportError",
    ),
]  # fmt: skip
ATTACKED = {attack.name: attack for attack in ATTACKS}
HONEST, WRONG_STUDENT, BLANK = "honest", "wrong_mutant", "blank"
STUDENTS = sorted([HONEST, WRONG_STUDENT, BLANK, *ATTACKED])


# Notebooks ----------------------------------------------------------------------------


def grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def course_notebook(folder: str) -> dict:
    notebook, problem = load_notebook(COURSE / folder / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    assert notebook is not None, problem
    return notebook


def answers() -> dict[str, str]:
    """The source notebook's answer cells, reference code included."""
    cells = course_notebook("source")["cells"]
    return {grade_id(c): "".join(c["source"]) for c in cells if grade_id(c) in FUNCTIONS}


def submission(replaced: dict[str, str]) -> dict:
    """The release notebook with every answer filled in, then the ``replaced`` ones."""
    notebook = course_notebook("release")
    sources = {**answers(), **replaced}
    for cell in notebook["cells"]:
        if grade_id(cell) in sources:
            cell["source"] = sources[grade_id(cell)]
    return notebook


def mutant_cell() -> str:
    mutant = next(m for m in mutants.MUTANTS if m.name == "self_softmax_over_queries")
    return "import math\nimport torch\n\n" + standalone_source(mutant)


def all_submissions(out: Path) -> dict[str, dict]:
    def placed(source: str) -> str:
        return source.replace(REPO_DIR, str(grading.REPOSITORY)).replace(OUT_DIR, str(out))

    notebooks = {
        HONEST: submission({}),
        WRONG_STUDENT: submission({SELF: mutant_cell()}),
        BLANK: course_notebook("release"),
    }
    for attack in ATTACKS:
        notebooks[attack.name] = submission({attack.function: placed(attack.cell())})
    return notebooks


def write_submissions(folder: Path, notebooks: dict[str, dict]) -> None:
    for student, notebook in notebooks.items():
        path = folder / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(notebook))


# The run ------------------------------------------------------------------------------


@dataclass
class Run:
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


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    if not bwrap_works():
        pytest.skip("bubblewrap cannot start a sandbox here: the grading that counts needs it")
    root = tmp_path_factory.mktemp("adversarial")
    out = root / "out"
    write_submissions(root / "submitted", all_submissions(out))
    started = time.monotonic()
    summary = grading.grade(
        ASSIGNMENT, root / "submitted", out, workers=2, json_path=root / "grades.json",
        seed=SEED, worker_factory=lambda: Worker(LIMITS, isolation="bubblewrap"),
    )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"\ngraded {len(STUDENTS)} submissions in {seconds:.0f} s")
    with (out / "grades.csv").open(newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    feedback = {path.stem: path.read_text() for path in (out / "feedback").glob("*.md")}
    records = json.loads((root / "grades.json").read_text())
    return Run(out, summary, seconds, rows, records, feedback)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_costs_only_the_attacked_function(run, attack):
    """0 for the attacked function, each check saying why; full marks for the other two."""
    attacked = run.record(attack.name, attack.function)
    assert attacked["score"] == 0, attacked["feedback"]
    summary, *checks = attacked["feedback"].splitlines()
    assert summary == f"0 of {len(checks)} checks passed.", summary
    for check in checks:
        assert re.search(attack.reason, check), check
    for function in FUNCTIONS:
        if function != attack.function:
            record = run.record(attack.name, function)
            assert record["score"] == FULL_MARKS, (function, record["feedback"])


def test_corpus_is_large_and_varied():
    assert len(ATTACKS) >= 20 and len(ATTACKED) == len(ATTACKS)
    assert {attack.function for attack in ATTACKS} == {SELF, PE}


def test_honest_wrong_and_blank(run):
    assert [run.score(HONEST, f) for f in FUNCTIONS] == [FULL_MARKS] * 3
    assert [run.score(BLANK, f) for f in FUNCTIONS] == [0, 0, 0]
    assert run.score(WRONG_STUDENT, SDPA) == run.score(WRONG_STUDENT, PE) == FULL_MARKS
    wrong = run.record(WRONG_STUDENT, SELF)
    assert wrong["score"] < FULL_MARKS
    assert "softmax runs over the queries" in wrong["feedback"]


def test_outputs_are_complete(run):
    assert list(run.rows) == STUDENTS
    assert run.summary.students == len(STUDENTS) and run.summary.not_graded == {}
    for student, row in run.rows.items():
        total = sum(run.score(student, f) for f in FUNCTIONS)
        assert float(row["total"]) == total and float(row["max"]) == 3 * FULL_MARKS
    assert len(run.records) == len(STUDENTS) * len(FUNCTIONS)
    assert all(set(record) == RECORD_KEYS for record in run.records)
    pairs = {(record["student"], record["function"]) for record in run.records}
    assert pairs == {(student, function) for student in STUDENTS for function in FUNCTIONS}
    assert sorted(run.feedback) == STUDENTS


def test_grader_records_are_its_own(run):
    records = {path.stem for path in (run.out / "records").glob("*.json")}
    assert records == set(STUDENTS)
    faked = json.loads((run.out / "records" / "fake_results_file.json").read_text())
    assert faked["score"] == 2 * FULL_MARKS and faked["status"] == "graded"


def test_feedback_leaks_nothing(run):
    markers, lines = leak_markers(), reference_code_lines()
    assert markers and lines
    texts = [*run.feedback.values(), json.dumps(run.records)]
    for text in texts:
        assert not [marker for marker in markers if marker in text]
        assert not [line for line in lines if line in text]


def test_runs_in_reasonable_time(run):
    assert run.seconds < 180
