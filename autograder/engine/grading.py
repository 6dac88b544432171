"""Grade every submission of one assignment: the engine behind ``python -m autograder grade``.

One run goes through these steps, each a small function below:

1. find the submissions (``<submitted>/<student>/<assignment>/<assignment>.ipynb``);
2. draw the plan from the run's secret seed and run the reference once, here;
3. for each submission, in ``workers`` threads that each own one sandboxed ``Worker``:
   read the notebook, check the source for forbidden built-ins, run the plan in the
   sandbox, judge the results here, and write the student's record atomically to
   ``<out>/records/<student>.json`` as soon as it is done;
4. rebuild every output from the record files: ``grades.csv``, ``lms.csv``, the
   ``--json`` list, one feedback file per student, the class report (``report.html``)
   and, for an nbgrader course, the gradebook.

A record present for the same assignment and the same notebook is not graded again
unless ``force`` (which the command line's ``--student`` implies for the students it
names); a run that is interrupted keeps the records it finished. The seed is kept in
``<out>/run.json`` (private to the instructor) so that a run can be reproduced and resumed;
feedback never shows it, nor reference values, hidden inputs or tests. Inside an nbgrader
course the output folder is ``<course>/grading/<assignment>`` by default, where ``nbgrader
autograde`` finds the same records and seed (``autograder.engine.nbgrader_steps``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import json
import os
import queue
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autograder.engine import gradebook, report
from autograder.engine.notebook import KnownCells, Submission, read_submission
from autograder.kit.battery import (
    Battery,
    Outcome,
    Plan,
    fail_forbidden,
    judge_plan,
    make_plan,
    one_torch_thread,
    run_reference,
    scores_by_function,
)
from autograder.runtime.operations import forbidden_in_source

REPOSITORY = Path(__file__).resolve().parents[2]
SEED_VARIABLE = "AUTOGRADER_SEED"
MESSAGE_LIMIT = 500
ABORT_WAIT_SECONDS = 3.0  # for the threads to notice an interruption


class GradingError(Exception):
    """A problem with the run itself (not with a submission): bad paths, unknown assignment."""


class SelfCheckFailed(GradingError):
    """The reference solutions did not get full marks through the students' path."""


# Finding the submissions ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One student folder, and their notebook if it is there."""

    student: str
    notebook: Path | None


def find_submissions(submitted_dir: Path, assignment_id: str) -> list[Entry]:
    if not submitted_dir.is_dir():
        raise GradingError(f"{submitted_dir} is not a folder of student submissions")
    entries = []
    for folder in sorted(submitted_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        notebook = folder / assignment_id / f"{assignment_id}.ipynb"
        entries.append(Entry(folder.name, notebook if notebook.exists() else None))
    return entries


def default_out_dir(submitted_dir: Path, assignment_id: str) -> Path:
    """``<course>/grading/<assignment>`` for an nbgrader course, else ``grading/<assignment>``."""
    course = gradebook.find_course(submitted_dir)
    return (course if course is not None else Path()) / "grading" / assignment_id


def select(entries: Sequence[Entry], students: Sequence[str] | None) -> list[Entry]:
    """The entries of ``students`` (every entry when None); an unknown id is an error."""
    if students is None:
        return list(entries)
    known = {entry.student for entry in entries}
    unknown = sorted(set(students) - known)
    if unknown:
        raise GradingError(f"no submission folder for student {', '.join(unknown)}")
    return [entry for entry in entries if entry.student in set(students)]


def notebook_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# The run's seed and settings ------------------------------------------------------------


def resolve_seed(out_dir: Path, assignment_id: str, seed: int | None) -> int:
    """The given seed, else $AUTOGRADER_SEED, else the seed of this output's last run, else new."""
    if seed is not None:
        return seed
    if os.environ.get(SEED_VARIABLE):
        try:
            return int(os.environ[SEED_VARIABLE])
        except ValueError as error:
            raise GradingError(f"{SEED_VARIABLE} must be an integer") from error
    previous = read_json(out_dir / "run.json")
    same_assignment = isinstance(previous, dict) and previous.get("assignment") == assignment_id
    if same_assignment and isinstance(previous.get("seed"), int):
        return previous["seed"]
    return secrets.randbits(63)


def record_key(out_dir: Path) -> str:
    """The key that signs this output folder's records: kept in run.json, made once."""
    previous = read_json(out_dir / "run.json")
    key = previous.get("record_key") if isinstance(previous, dict) else None
    if isinstance(key, str) and len(key) == 64:
        return key
    return secrets.token_hex(32)


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder, readable by its owner only (it holds the seed)."""
    for folder in (out_dir, out_dir / "records", out_dir / "feedback", out_dir / "kernel"):
        folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # an existing folder of someone else's keeps its mode
        out_dir.chmod(0o700)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# What every submission is graded against, computed once -------------------------------


@dataclass
class Setup:
    """The battery, the plan and the reference's results of one run."""

    battery: Battery
    plan: Plan
    expected: Mapping
    known: KnownCells


def course_notebooks(course_root: Path, assignment_id: str) -> list[Path]:
    name = f"{assignment_id}.ipynb"
    return [course_root / folder / assignment_id / name for folder in ("release", "source")]


def make_setup(battery: Battery, seed: int, course_root: Path) -> Setup:
    plan = make_plan(battery, seed)
    expected = run_reference(battery, plan)
    known = KnownCells.from_notebooks(course_notebooks(course_root, battery.assignment))
    return Setup(battery, plan, expected, known)


@dataclass
class RunCache:
    """What one process may reuse between runs of the same assignment, seed and course:
    the plan with the reference's results, and a self-check that passed with the same
    isolation and limits. ``nbgrader autograde`` grades one student per call."""

    setups: dict = field(default_factory=dict)
    self_checked: set = field(default_factory=set)

    def setup(self, battery: Battery, seed: int, course_root: Path) -> Setup:
        key = (battery.assignment, seed, str(course_root), _source_digest(course_root, battery))
        if key not in self.setups:
            self.setups[key] = make_setup(battery, seed, course_root)
        return self.setups[key]


def _source_digest(course_root: Path, battery: Battery) -> str | None:
    return notebook_digest(course_notebooks(course_root, battery.assignment)[1])


# Grading one submission ------------------------------------------------------------------


def grade_submission(setup: Setup, worker, entry: Entry) -> dict:
    """The record of one student: scores, every check's verdict, problems, errors."""
    battery = setup.battery
    record = new_record(battery, entry)
    if entry.notebook is None:
        expected = f"{battery.assignment}/{battery.assignment}.ipynb"
        return not_graded(record, "missing", f"no notebook was submitted (expected {expected})")
    submission = read_submission(entry.notebook, battery.functions, setup.known)
    record["problems"] = submission.problems
    if not submission.readable:
        return not_graded(record, "unreadable", submission.problems[0])
    forbidden = static_forbidden(battery, submission)
    report = worker.run(submission.cells, setup.plan.calls, battery.forbidden)
    outcomes = judge_plan(battery, setup.plan, report.results, setup.expected, report.failures)
    outcomes = fail_forbidden(outcomes, forbidden, how="names")
    record.update(
        status="graded",
        isolation=report.isolation,
        cell_errors=cell_errors(submission, report.cell_errors),
        sandbox_notes=list(getattr(report, "notes", [])),
    )
    fill_scores(record, battery, outcomes, forbidden)
    return record


def new_record(battery: Battery, entry: Entry) -> dict:
    return {
        "student": entry.student,
        "assignment": battery.assignment,
        "status": "error",
        "notebook_digest": notebook_digest(entry.notebook),
        "problems": [],
        "cell_errors": [],
        "isolation": None,
        "functions": {
            function: {
                "score": 0.0,
                "max_score": battery.max_score(function),
                "forbidden_in_source": [],
                "checks": [],
            }
            for function in battery.functions
        },
        "score": 0.0,
        "max_score": sum(battery.max_score(function) for function in battery.functions),
    }


def not_graded(record: dict, status: str, reason: str) -> dict:
    record["status"] = status
    record["reason"] = reason
    return record


def static_forbidden(battery: Battery, submission: Submission) -> dict[str, list[str]]:
    """For each contract function, the forbidden operations its defining cell names (the
    second line: the sandbox watches what each function reaches while it runs)."""
    return {
        function: forbidden_in_source(
            source, battery.forbidden.get(function, ()), own_names=battery.functions
        )
        for function, source in submission.function_sources.items()
    }


def cell_errors(submission: Submission, errors: Iterable) -> list[dict]:
    """The sandbox's cell errors (numbered from 1 among the cells run), renumbered as the
    cells of the student's notebook."""
    described = []
    for index, message in errors:
        number = submission.notebook_cell(index - 1) if isinstance(index, int) else None
        described.append({"cell": number, "message": str(message)[:MESSAGE_LIMIT]})
    return described


def fill_scores(record: dict, battery: Battery, outcomes: Sequence[Outcome], forbidden) -> None:
    scores = scores_by_function(battery, outcomes)
    for function, entry in record["functions"].items():
        entry["score"] = scores[function]
        entry["forbidden_in_source"] = forbidden.get(function, [])
        entry["checks"] = [
            {
                "name": outcome.check.name,
                "passed": outcome.passed,
                "points": outcome.check.points,
                "feedback": outcome.feedback()[:MESSAGE_LIMIT],
                "mistake": outcome.mistake,
            }
            for outcome in outcomes
            if outcome.check.function == function
        ]
    record["score"] = sum(scores.values())


def grading_failed(record: dict, error: BaseException) -> dict:
    """A record for a submission the grader itself failed on: no score, retried next run.

    The detail is for the instructor; the student reads only that the grader failed.
    """
    record["error_detail"] = "".join(traceback.format_exception(error))[-4000:]
    return not_graded(
        record, "error", f"grader error ({type(error).__name__}): this is not your mistake"
    )


# The self-check ------------------------------------------------------------------------------

SELF_CHECK_STUDENT = "reference solutions (self-check)"

# What a failing self-check most likely means, by a phrase of the failed checks' reasons.
SELF_CHECK_CAUSES = (
    (
        "harness",
        "the sandboxed child cannot run the grading code: it may be unable to read the Python"
        " installation or the course (a private folder with --isolation process). Install"
        " bubblewrap (apt-get install bubblewrap) and use --isolation bubblewrap, or put the"
        " course and its .venv in a folder other users can read.",
    ),
    (
        "ran for more than",
        "this machine is too slow for the time limit: raise it with --time-limit SECONDS.",
    ),
    (
        "memory",
        "the memory limit is too low for this machine: raise it with --memory-limit GIB.",
    ),
    (
        "CPU time",
        "the CPU-time limit is too low for this machine: raise it with --time-limit SECONDS.",
    ),
)


def reference_entry(course_root: Path, assignment_id: str) -> Entry:
    """The course's source notebook (its answer cells hold the reference solutions)."""
    source = course_root / "source" / assignment_id / f"{assignment_id}.ipynb"
    if not source.is_file():
        raise SelfCheckFailed(
            f"the self-check needs the source notebook {source}: run"
            f" `python exercises/build.py {assignment_id}` to write it"
        )
    return Entry(SELF_CHECK_STUDENT, source)


def self_check(setup: Setup, worker, course_root: Path) -> dict:
    """Grade the reference solutions exactly as a student is graded; raise unless full marks.

    Same notebook reader, sandbox, isolation level, limits, devices and judges: a failure
    here is the grader's, and grading students would blame them for it.
    """
    record = grade_submission(setup, worker, reference_entry(course_root, setup.battery.assignment))
    if record["status"] == "graded" and record["score"] == record["max_score"]:
        return record
    raise SelfCheckFailed(self_check_message(record))


def self_check_message(record: dict) -> str:
    if record["status"] != "graded":
        failures = [record.get("reason", "not graded")]
        detail = record.get("error_detail", "")
    else:
        failures = [
            check["feedback"]
            for entry in record["functions"].values()
            for check in entry["checks"]
            if not check["passed"]
        ]
        detail = ""
    text = " ".join(failures)
    causes = [advice for phrase, advice in SELF_CHECK_CAUSES if phrase in text] or [
        "the battery and the reference solutions disagree: a bug in the course, not in the"
        " students' code. Run the test suite (bash scripts/test.sh) to find it."
    ]
    lines = [
        "the self-check failed: the reference solutions, graded through the same sandbox,"
        f" isolation level ({record.get('isolation') or 'none'}), limits and devices as the"
        f" students, scored {_number(record['score'])} / {_number(record['max_score'])}."
        " No student was graded. Failed checks:",
        *(f"  - {failure}" for failure in failures[:10]),
    ]
    if len(failures) > 10:
        lines.append(f"  ... and {len(failures) - 10} more")
    lines += ["Likely cause and fix:", *(f"  - {cause}" for cause in causes)]
    if detail:
        lines += ["Detail:", detail]
    return "\n".join(lines)


# Records ----------------------------------------------------------------------------------


class RecordStore:
    """One JSON record per student under ``<out>/records``, signed with the run's key.

    A record whose signature does not match was not written by this grader (a submission
    or a person changed it): ``load`` ignores it, so the student is graded again, and
    ``forged`` names them for the summary.
    """

    def __init__(self, out_dir: Path, key: str, folder: str = "records"):
        self.folder = out_dir / folder
        self.key = key.encode()
        self.forged: set[str] = set()

    def path(self, student: str) -> Path:
        return self.folder / f"{student}.json"

    def signature(self, record: dict) -> str:
        unsigned = {name: value for name, value in record.items() if name != "signature"}
        text = json.dumps(unsigned, sort_keys=True).encode()
        return hmac.new(self.key, text, hashlib.sha256).hexdigest()

    def load(self, student: str) -> dict | None:
        record = read_json(self.path(student))
        if not isinstance(record, dict):
            return None
        if not hmac.compare_digest(str(record.get("signature")), self.signature(record)):
            self.forged.add(student)
            return None
        return record

    def write(self, record: dict) -> None:
        signed = {**record, "signature": self.signature(record)}
        write_atomically(self.path(record["student"]), json.dumps(signed, indent=1))


# What the notebook's kernel claimed ----------------------------------------------------------


def kernel_store(out_dir: Path, key: str) -> RecordStore:
    """The scores that ``nbgrader autograde`` saw the hidden test cells produce in the
    kernel, per student, signed like the records (written by ``nbgrader_steps``)."""
    return RecordStore(out_dir, key, folder="kernel")


def save_kernel_scores(store: RecordStore, entry: Entry, scores: Mapping) -> None:
    store.write(
        {
            "student": entry.student,
            "notebook_digest": notebook_digest(entry.notebook),
            "scores": dict(scores),
        }
    )


def saved_state(
    out_dir: Path, submitted_dir: Path, assignment_id: str, student: str
) -> tuple[dict | None, dict]:
    """``student``'s record in ``out_dir`` (None if there is none, or it was not written by
    this grader) and the kernel's claims about the notebook submitted now."""
    run = read_json(out_dir / "run.json")
    if not isinstance(run, dict) or run.get("assignment") != assignment_id:
        return None, {}
    key = record_key(out_dir)
    notebook = Path(submitted_dir) / student / assignment_id / f"{assignment_id}.ipynb"
    entry = Entry(student, notebook if notebook.exists() else None)
    claims = load_kernel_scores(kernel_store(out_dir, key), [entry])
    return RecordStore(out_dir, key).load(student), claims.get(student, {})


def load_kernel_scores(store: RecordStore, entries: Sequence[Entry]) -> dict[str, dict]:
    """Each student's kernel claims about the notebook they have submitted now."""
    claims = {}
    for entry in entries:
        saved = store.load(entry.student)
        if saved and saved.get("notebook_digest") == notebook_digest(entry.notebook):
            claims[entry.student] = saved.get("scores", {})
    return claims


def is_done(record: dict | None, assignment_id: str, entry: Entry) -> bool:
    """Whether ``record`` already grades this notebook (same assignment, same file)."""
    return (
        record is not None
        and record.get("assignment") == assignment_id
        and record.get("status") in ("graded", "missing", "unreadable")
        and record.get("notebook_digest") == notebook_digest(entry.notebook)
    )


# Running the pool ---------------------------------------------------------------------------


class Interrupted(Exception):
    """Grading was stopped (Ctrl-C); the records finished so far are kept."""

    def __init__(self, finished: int, left: int):
        super().__init__(f"{finished} submissions graded, {left} left")
        self.finished = finished
        self.left = left


@dataclass
class _Fatal:
    error: BaseException


class Pool:
    """``size`` threads, each with its own Worker, grading entries from one queue."""

    def __init__(self, setup: Setup, make_worker: Callable, store: RecordStore, size: int):
        self.setup, self.make_worker, self.store = setup, make_worker, store
        self.size = size
        self.todo: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.workers: list = []
        self.written = 0
        self.lock = threading.Lock()

    def run(self, entries: Sequence[Entry], on_record: Callable[[dict], None]) -> None:
        for entry in entries:
            self.todo.put(entry)
        threads = [threading.Thread(target=self._thread, daemon=True) for _ in range(self.size)]
        for thread in threads:
            thread.start()
        finished = 0
        try:
            while finished < len(entries):
                item = self._next(threads)
                if isinstance(item, _Fatal):
                    raise GradingError(f"the sandbox could not start: {item.error}") from item.error
                finished += 1
                on_record(item)
        except KeyboardInterrupt:
            self._abort(threads)
            raise Interrupted(self.written, len(entries) - self.written) from None
        except BaseException:
            self._abort(threads)
            raise
        for thread in threads:
            thread.join()

    def _next(self, threads):
        while True:
            try:
                return self.done.get(timeout=0.2)
            except queue.Empty:
                if not any(thread.is_alive() for thread in threads) and self.done.empty():
                    raise GradingError("the grading threads stopped early") from None

    def _thread(self) -> None:
        worker = None
        try:
            worker = self.make_worker()
            with self.lock:
                self.workers.append(worker)
            self._grade_until_empty(worker)
        except Exception as error:
            if not self.stop.is_set():
                self.done.put(_Fatal(error))
        finally:
            _close(worker)

    def _grade_until_empty(self, worker) -> None:
        while not self.stop.is_set():
            try:
                entry = self.todo.get_nowait()
            except queue.Empty:
                return
            try:
                record = grade_submission(self.setup, worker, entry)
            except Exception as error:
                record = grading_failed(new_record(self.setup.battery, entry), error)
            if self.stop.is_set():  # interrupted mid-run: its result may be incomplete
                return
            self.store.write(record)
            with self.lock:
                self.written += 1
            self.done.put(record)

    def _abort(self, threads) -> None:
        """Stop taking work, kill the running sandboxes, and wait a little for the threads."""
        self.stop.set()
        with self.lock:
            workers = list(self.workers)
        for worker in workers:
            _close(worker)
        deadline = time.monotonic() + ABORT_WAIT_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _close(worker) -> None:
    if worker is None:
        return
    # Closing twice, or after a crash, must not hide the real outcome.
    with contextlib.suppress(Exception):
        worker.close()


# Outputs, rebuilt from the records ----------------------------------------------------------


def final_records(store: RecordStore, entries: Sequence[Entry], battery: Battery) -> list[dict]:
    """Every student's record; one changed after it was written counts as a grader error."""
    records = []
    for entry in entries:
        record = store.load(entry.student)
        if record is None and store.path(entry.student).exists():
            reason = "grader error: the record was changed after grading (run again to regrade)"
            record = not_graded(new_record(battery, entry), "error", reason)
        if record is not None:
            records.append(record)
    return records


def grader_failed(record: dict) -> bool:
    """Whether the grader (not the submission) failed: such a record carries no score."""
    return record["status"] == "error"


def write_csv(path: Path, battery: Battery, records: Sequence[dict]) -> None:
    """One row per student; the scores of a student the grader failed on are left empty."""
    functions = battery.functions
    rows = [["student", *functions, "total", "max"]]
    for record in records:
        scored = not grader_failed(record)
        scores = [_number(record["functions"][f]["score"]) if scored else "" for f in functions]
        total = _number(record["score"]) if scored else ""
        rows.append([record["student"], *scores, total, _number(record["max_score"])])
    _write_rows(path, rows)


def write_lms_csv(path: Path, battery: Battery, records: Sequence[dict], manual=()) -> None:
    """The final grades for a learning management system's import: one row per student,
    one column per function (its points in the header), and the total.

    A score changed by hand in formgrader and kept (``manual``: ``ManualGrade``s) replaces
    the grader's; a student the grader failed on has empty cells, so that an import leaves
    their grade unset rather than 0.
    """
    kept = {(m.student, m.function): m.manual_score for m in manual if not m.overwritten}
    functions = battery.functions
    header = [f"{f} ({_number(battery.max_score(f))} points)" for f in functions]
    total_max = _number(sum(battery.max_score(f) for f in functions))
    rows = [["student_id", *header, f"total ({total_max} points)"]]
    for record in sorted(records, key=lambda r: r["student"]):
        if grader_failed(record):
            rows.append([record["student"], *[""] * (len(functions) + 1)])
            continue
        scores = [
            kept.get((record["student"], f), record["functions"][f]["score"]) for f in functions
        ]
        rows.append([record["student"], *map(_number, scores), _number(sum(scores))])
    _write_rows(path, rows)


def _write_rows(path: Path, rows: Sequence[Sequence]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    os.replace(temporary, path)


def _number(value: float):
    return int(value) if float(value).is_integer() else round(value, 4)


def function_feedback(record: dict, function: str) -> str:
    """The text a student reads about one function: every check, or why nothing was graded."""
    if record["status"] != "graded":
        return f"Not graded: {record.get('reason', 'the submission could not be graded')}."
    entry = record["functions"][function]
    return "\n".join([summary_line(entry), *(check["feedback"] for check in entry["checks"])])


def summary_line(entry: dict) -> str:
    """One sentence over a function's checks, read before the details."""
    checks = entry["checks"]
    passed = sum(check["passed"] for check in checks)
    if passed == len(checks):
        return f"All {len(checks)} checks passed."
    if all("raised NotImplementedError" in check["feedback"] for check in checks):
        return "Not written yet: it still raises NotImplementedError."
    return f"{passed} of {len(checks)} checks passed."


def json_records(records: Sequence[dict]) -> list[dict]:
    return [
        {
            "student": record["student"],
            "assignment": record["assignment"],
            "function": function,
            "score": None if grader_failed(record) else entry["score"],
            "max_score": entry["max_score"],
            "feedback": function_feedback(record, function),
        }
        for record in records
        for function, entry in record["functions"].items()
    ]


def feedback_markdown(record: dict) -> str:
    """One student's feedback file: every check, the notebook's problems, the cell errors."""
    lines = feedback_header(record)
    for function in record["functions"]:
        lines += function_section(record, function)
    lines += notebook_sections(record)
    return "\n".join(lines).rstrip() + "\n"


def feedback_header(record: dict) -> list[str]:
    """The title and the total (and, when nothing was graded, why)."""
    lines = [
        f"# {record['assignment']}: feedback for {record['student']}",
        "",
        f"Score: {_number(record['score'])} / {_number(record['max_score'])}",
        "",
    ]
    if record["status"] != "graded":
        lines += [function_feedback(record, ""), ""]
    return lines


def function_section(record: dict, function: str) -> list[str]:
    """One function's score and its checks (the text of its hidden test cell's output)."""
    entry = record["functions"][function]
    lines = [f"## {function}: {_number(entry['score'])} / {_number(entry['max_score'])}", ""]
    if entry["checks"]:
        lines += [summary_line(entry), "", *_check_lines(entry), ""]
    return lines


def notebook_sections(record: dict) -> list[str]:
    """The notebook's problems, the errors of its cells and the isolation it ran under."""
    graded = record["status"] == "graded"
    problems = record["problems"] if graded else record["problems"][1:]
    lines = _section("Problems with the notebook", problems)
    errors = [f"cell {error['cell'] or '?'}: {error['message']}" for error in record["cell_errors"]]
    lines += _section("Errors while running your cells", errors)
    if record.get("isolation"):
        lines.append(
            f"Your code ran in a separate, limited process (isolation: {record['isolation']})."
        )
    return lines


def _check_lines(entry: dict) -> list[str]:
    return [f"- {'PASS' if c['passed'] else 'FAIL'} {c['feedback']}" for c in entry["checks"]]


def _section(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    return [f"## {title}", "", *(f"- {item}" for item in items), ""]


def write_outputs(
    out_dir: Path, battery: Battery, records: Sequence[dict], json_path, manual=()
) -> None:
    write_csv(out_dir / "grades.csv", battery, records)
    write_lms_csv(out_dir / "lms.csv", battery, records, manual)
    for record in records:
        write_atomically(
            out_dir / "feedback" / f"{record['student']}.md", feedback_markdown(record)
        )
    if json_path is not None:
        write_atomically(Path(json_path), json.dumps(json_records(records), indent=1) + "\n")


# The summary -------------------------------------------------------------------------------


@dataclass
class Summary:
    """What one run did, for the terminal."""

    assignment: str
    out_dir: Path
    students: int = 0
    graded_now: int = 0
    skipped: int = 0
    mean_score: float = 0.0
    max_score: float = 0.0
    failed_checks: list[tuple[int, list[str]]] = field(default_factory=list)  # count, checks
    problems: dict[str, list[str]] = field(default_factory=dict)
    not_graded: dict[str, str] = field(default_factory=dict)
    grader_errors: list[str] = field(default_factory=list)  # students not graded: our failure
    self_checked: bool = False  # the reference got full marks through the students' path
    forged: list[str] = field(default_factory=list)  # records this grader did not write
    tampering: list[gradebook.Suspect] = field(default_factory=list)
    manual: list[gradebook.ManualGrade] = field(default_factory=list)  # kept or overwritten
    gradebook_note: str = ""
    isolation: dict[str, int] = field(default_factory=dict)
    report: Path | None = None


def failure_groups(records: Sequence[dict], top: int = 3) -> list[tuple[int, list[str]]]:
    """The checks failed by the most students, grouped by that number (ties together),
    for the ``top`` largest numbers."""
    groups: dict[int, list[str]] = {}
    for name, count in report.failed_checks(records).items():
        groups.setdefault(count, []).append(name)
    return [(count, sorted(groups[count])) for count in sorted(groups, reverse=True)[:top]]


def summarise(summary: Summary, records: Sequence[dict]) -> Summary:
    summary.students = len(records)
    if records:
        summary.mean_score = sum(r["score"] for r in records) / len(records)
        summary.max_score = max(r["max_score"] for r in records)
    summary.failed_checks = failure_groups(records)
    summary.problems = {r["student"]: r["problems"] for r in records if r["problems"]}
    summary.grader_errors = [r["student"] for r in records if grader_failed(r)]
    summary.not_graded = {
        r["student"]: r.get("reason", "") for r in records if r["status"] != "graded"
    }
    summary.isolation = dict(Counter(r["isolation"] for r in records if r.get("isolation")))
    return summary


# The whole run ------------------------------------------------------------------------------


def checked_worker(
    setup: Setup, factory: Callable, course_root: Path, cache: RunCache | None = None, key=None
) -> Callable:
    """A worker factory whose first worker has passed the self-check (it is reused).

    With a ``cache`` that has seen this ``key`` pass, the self-check is not run again.
    """
    if cache is not None and key in cache.self_checked:
        return factory
    try:
        first = factory()
    except RuntimeError as error:  # no sandbox of the kind asked for can start here
        raise GradingError(str(error)) from error
    try:
        self_check(setup, first, course_root)
    except BaseException:
        _close(first)
        raise
    if cache is not None:
        cache.self_checked.add(key)
    ready = [first]
    return lambda: ready.pop() if ready else factory()


def default_worker_factory(isolation: str, limits=None, accept_weak: bool = False) -> Callable:
    from autograder.sandbox import Limits, Worker

    return lambda: Worker(limits or Limits(), isolation=isolation, accept_weak=accept_weak)


def load_battery(assignment_id: str) -> Battery:
    try:
        from autograder.batteries import available
        from autograder.batteries import load_battery as load
    except ImportError as error:
        raise GradingError(f"no hidden test batteries can be loaded ({error})") from error
    try:
        return load(assignment_id)
    except (LookupError, ImportError, ValueError) as error:
        known = ", ".join(available()) or "none"
        raise GradingError(
            f"unknown assignment '{assignment_id}' (assignments with a battery: {known})"
        ) from error


def grade(
    assignment_id: str,
    submitted_dir: Path,
    out_dir: Path | None = None,
    workers: int | None = None,
    force: bool = False,
    json_path: Path | None = None,
    seed: int | None = None,
    *,
    students: Sequence[str] | None = None,
    overwrite_manual: bool = False,
    kernel_scores: Mapping[str, Mapping] | None = None,
    write_gradebook: bool = True,
    outputs: bool = True,
    cache: RunCache | None = None,
    isolation: str = "auto",
    accept_weak: bool = False,
    limits=None,
    battery: Battery | None = None,
    worker_factory: Callable | None = None,
    course_root: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> Summary:
    """Grade the submissions of ``assignment_id`` under ``submitted_dir`` into ``out_dir``.

    ``students`` limits the run to those students (with ``force``, they are graded again
    even when their notebook has not changed); every output still covers the whole class.
    Inside an nbgrader course the scores go into its gradebook (unless ``write_gradebook``),
    where manual grades are kept unless ``overwrite_manual``. ``kernel_scores`` (student ->
    function -> score) are what ``nbgrader autograde`` saw the hidden test cells claim in
    the kernel; they are kept with the output and compared with the grader's scores.
    Without ``outputs``, only the records are written (nothing is rebuilt from them).

    Raises ``GradingError`` for a problem with the run and ``Interrupted`` on Ctrl-C.
    """
    submitted_dir = Path(submitted_dir)
    out_dir = (
        Path(out_dir) if out_dir is not None else default_out_dir(submitted_dir, assignment_id)
    )
    battery = battery or load_battery(assignment_id)
    entries = find_submissions(submitted_dir, assignment_id)
    chosen = select(entries, students)
    course = gradebook.find_course(submitted_dir)
    course_root = course or course_root or REPOSITORY / "exercises"
    prepare_out_dir(out_dir)
    seed = resolve_seed(out_dir, assignment_id, seed)
    key = record_key(out_dir)
    run = {"assignment": assignment_id, "seed": seed, "record_key": key}
    write_atomically(out_dir / "run.json", json.dumps(run))
    store, claims = RecordStore(out_dir, key), kernel_store(out_dir, key)
    for entry in chosen:
        if kernel_scores and entry.student in kernel_scores:
            save_kernel_scores(claims, entry, kernel_scores[entry.student])
    pending = [e for e in chosen if force or not is_done(store.load(e.student), assignment_id, e)]
    summary = Summary(assignment_id, out_dir, graded_now=len(pending))
    summary.skipped = len(chosen) - len(pending)
    if on_start:
        on_start(len(pending))
    if pending:
        with one_torch_thread():
            cache = cache or RunCache()
            setup = cache.setup(battery, seed, course_root)
            size = max(1, min(workers or os.cpu_count() or 1, len(pending)))
            factory = worker_factory or default_worker_factory(isolation, limits, accept_weak)
            check_key = (battery.assignment, seed, str(course_root), isolation, repr(limits))
            checked = checked_worker(setup, factory, course_root, cache, check_key)
            summary.self_checked = True
            Pool(setup, checked, store, size).run(pending, on_record or (lambda record: None))
    records = final_records(store, entries, battery)
    summary.forged = sorted(store.forged)
    if not outputs:
        return summarise(summary, records)
    kernel_claims = load_kernel_scores(claims, entries)
    summary.tampering = [
        suspect
        for record in records
        for suspect in gradebook.suspects_of(record, kernel_claims.get(record["student"], {}))
    ]
    gradebook.write_suspects(out_dir / "suspected_tampering.csv", summary.tampering)
    if course is not None:  # without write_gradebook, only read its manual grades
        written = gradebook.record_scores(
            course, assignment_id, records, kernel_claims, overwrite_manual, write_gradebook
        )
        summary.manual, summary.gradebook_note = written.manual, written.note
    write_outputs(out_dir, battery, records, json_path, summary.manual)
    summarise(summary, records)
    summary.report = report.write_report(out_dir, battery, records, summary)
    return summary
