"""The course's steps inside nbgrader, piece by piece (fast; the whole workflow runs in
``test_instructor_workflow.py``): the configured pipelines, the kernel's sandbox, the
kernel's claims, the grader's verdict as cell outputs, and what feedback hides."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import nbformat
import pytest
from traitlets.config.loader import PyFileConfigLoader

from autograder.engine import grading, kernel_sandbox, nbgrader_steps
from solutions import ch03_self_attention as reference

REPO = Path(__file__).resolve().parent.parent
FUNCTIONS = ("scaled_dot_product_attention", "self_attention")


def configured(section: str, name: str) -> list[str]:
    """A setting of the course's configuration (loading it sets PYTHONPATH: undone after)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.path", list(sys.path))
        patch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        folder = str(REPO / "exercises")
        config = PyFileConfigLoader("nbgrader_config.py", path=folder).load_config()
    return list(config[section][name])


def class_name(step) -> str:
    return step if isinstance(step, str) else f"{step.__module__}.{step.__qualname__}"


@pytest.mark.parametrize(
    ("section", "name", "ours"),
    [
        ("Autograde", "autograde_preprocessors", {"Execute": "SandboxedExecute"}),
        ("GenerateFeedback", "preprocessors", {}),
    ],
)
def test_the_course_keeps_every_nbgrader_step_in_order(section, name, ours):
    """nbgrader's own steps, in nbgrader's order, each once (``Execute`` replaced by the
    sandboxed one); every configured step imports."""
    from nbgrader.converters import Autograde, GenerateFeedback

    converter = {"Autograde": Autograde, "GenerateFeedback": GenerateFeedback}[section]
    defaults = [
        class_name(step).rsplit(".", 1)[1] for step in converter.class_traits()[name].default()
    ]
    steps = configured(section, name)
    names = [step.rsplit(".", 1)[1] for step in steps]
    assert [n for n in names if n in defaults or n in ours.values()] == [
        ours.get(n, n) for n in defaults
    ]
    for step in steps:
        module, attribute = step.rsplit(".", 1)
        assert getattr(importlib.import_module(module), attribute)


def test_the_autograde_pipeline_grades_after_the_kernel_and_fixes_the_gradebook_last():
    names = [step.rsplit(".", 1)[1] for step in configured("Autograde", "autograde_preprocessors")]
    assert (
        names.index("LimitOutput") < names.index("GraderVerdicts") < names.index("SaveAutoGrades")
    )
    assert names.index("SaveAutoGrades") < names.index("GraderGradebook")


# The kernel's sandbox ---------------------------------------------------------------------------


def test_the_kernel_sandbox_binds_nothing_of_the_course(tmp_path):
    notebook_dir = tmp_path / "autograded" / "ann" / "ch03"
    command = kernel_sandbox.bwrap_kernel_prefix(str(notebook_dir), str(tmp_path / "run"))
    bound = [command[i + 1] for i, arg in enumerate(command) if arg in ("--bind", "--ro-bind")]
    writable = [command[i + 1] for i, arg in enumerate(command) if arg == "--bind"]
    assert writable == [str(tmp_path / "run")]  # the sockets; the notebook's folder: read-only
    assert str(notebook_dir) in bound
    for path in bound:  # the Python installation may live inside a checkout, never the course
        assert not (REPO / "solutions").is_relative_to(path), path
        assert not (REPO / "autograder").is_relative_to(path), path
    for isolation in ("--unshare-net", "--unshare-pid", "--clearenv", "--die-with-parent"):
        assert isolation in command
    environment = {command[i + 1] for i, arg in enumerate(command) if arg == "--setenv"}
    assert "PYTHONPATH" not in environment


def test_without_bubblewrap_no_student_code_runs_in_a_kernel(monkeypatch, caplog):
    monkeypatch.setattr(kernel_sandbox, "kernel_sandbox_problem", lambda: "bubblewrap is absent.")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ran')")])
    step = kernel_sandbox.SandboxedExecute()
    step.log = logging.getLogger("test")
    with caplog.at_level(logging.WARNING):
        ran, _ = step.preprocess(nb, {"metadata": {"path": "."}})
    assert ran.cells[0].outputs == []
    assert "not run in a kernel" in caplog.text and "bubblewrap is absent." in caplog.text


# The kernel's claims and the grader's verdict -----------------------------------------------


def hidden_cell(function: str, *outputs, points: float = 10.0):
    cell = nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\ngrade(...)\n### END HIDDEN TESTS")
    cell.metadata["nbgrader"] = {
        "grade": True, "solution": False, "locked": True, "grade_id": f"test_{function}",
        "points": points, "schema_version": 3,
    }  # fmt: skip
    cell.outputs = list(outputs)
    return cell


def result(value: str):
    return nbformat.v4.new_output("execute_result", data={"text/plain": value})


def test_the_kernels_claims_are_scored_as_nbgrader_scores_them():
    failed = nbformat.v4.new_output("error", ename="ModuleNotFoundError", evalue="", traceback=[])
    nb = nbformat.v4.new_notebook(
        cells=[
            hidden_cell(FUNCTIONS[0], failed),
            hidden_cell(FUNCTIONS[1], result("10.0")),
            hidden_cell("not_a_contract_name", result("3.0")),
        ]
    )
    assert nbgrader_steps.kernel_claims(nb, FUNCTIONS) == {FUNCTIONS[0]: 0.0, FUNCTIONS[1]: 10.0}
    nb.cells = [hidden_cell(FUNCTIONS[0]), hidden_cell(FUNCTIONS[1], result("1e9"))]
    assert nbgrader_steps.kernel_claims(nb, FUNCTIONS) == {FUNCTIONS[0]: None, FUNCTIONS[1]: 10.0}


def record(status="graded"):
    checks = [
        {"name": "values", "passed": True, "points": 3, "feedback": "values: passed"},
        {"name": "grads", "passed": False, "points": 2, "feedback": "grads: wrong. Likely: x."},
    ]  # fmt: skip
    return {
        "student": "ann", "assignment": "ch03_self_attention", "status": status,
        "reason": "grader error (RuntimeError): this is not your mistake",
        "functions": {f: {"score": 3.0, "max_score": 5.0, "checks": checks} for f in FUNCTIONS},
        "score": 6.0, "max_score": 10.0, "problems": [], "cell_errors": [], "isolation": "bwrap",
    }  # fmt: skip


def test_the_verdict_is_the_graders_text_and_score_in_the_cells_points():
    text, value = nbgrader_steps.verdict_outputs(record(), FUNCTIONS[0], points=10.0)
    assert text.text.strip() == "\n".join(grading.function_section(record(), FUNCTIONS[0])).strip()
    assert "- FAIL grads: wrong. Likely: x." in text.text
    assert value.output_type == "execute_result" and float(value.data["text/plain"]) == 6.0
    failed = record(status="error")
    _, error = nbgrader_steps.verdict_outputs(failed, FUNCTIONS[0], points=10.0)
    assert error.output_type == "error"  # no score: nbgrader stores 0, the gradebook step none


def test_feedback_cells_show_the_grader_and_nothing_hidden():
    nb = nbformat.v4.new_notebook(cells=[hidden_cell(FUNCTIONS[0], result("10.0"))])
    nbgrader_steps.put_verdicts(nb, record(), FUNCTIONS)
    assert [o.output_type for o in nb.cells[0].outputs] == ["stream", "execute_result"]
    nbgrader_steps.put_verdicts(nb, None, FUNCTIONS)
    assert nb.cells[0].outputs == []
    visible = nbgrader_steps.without_hidden_tests(
        "# Hidden tests (10 points)\n" + nb.cells[0].source
    )
    assert visible == "# Hidden tests (10 points)"
    summary = nbgrader_steps.summary_cell(record()).source
    assert "Score: 6 / 10" in summary and f"| `{FUNCTIONS[0]}` | 3 / 5 |" in summary


@pytest.mark.parametrize(
    "text",
    [reference.LEAK_MARKER, "        weights = torch.softmax(scores, dim=-1)"],
    ids=["marker", "reference line"],
)
def test_outputs_that_show_course_material_are_hidden(text):
    assert any(piece in text for piece in nbgrader_steps.course_material())
    shown = nbformat.v4.new_output("stream", name="stdout", text=f"look:\n{text}\n")
    assert nbgrader_steps.hide_course_material(shown).text == nbgrader_steps.HIDDEN_OUTPUT
    harmless = nbformat.v4.new_output("stream", name="stdout", text="tensor([1., 2.])\n")
    assert nbgrader_steps.hide_course_material(harmless) is harmless
