"""nbgrader configuration of the course; this folder is the course root.

nbgrader reads this file when it runs from this folder (``nbgrader generate_assignment``,
``nbgrader autograde``, ``nbgrader generate_feedback``, ``nbgrader export``, formgrader);
code that uses the Python API loads it with ``traitlets.config.loader.PyFileConfigLoader``.
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by traitlets when it runs this file)

# The repository root (the parent of this course root) holds the grader, whose steps
# nbgrader loads below. It is also on PYTHONPATH for the instructor's own kernels: the
# hidden test cells call ``autograder.kernel`` when ``nbgrader validate`` runs the source
# notebook. The kernels of ``nbgrader autograde``, which run students' code, get none of
# it: they start in a sandbox with a clean environment (autograder/engine/kernel_sandbox.py).
REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if REPOSITORY_ROOT not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([REPOSITORY_ROOT, *_paths])

c.CourseDirectory.course_id = "attention-course"

# What a student finds in place of each solution region.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# A test cell whose metadata a student deleted is put back (and then scores 0), instead
# of waiting for a manual grade forever.
c.OverwriteCells.add_missing_cells = True

# Any output on stderr makes a test cell score 0. PyTorch writes its warnings there, so
# drop those before grading: a warning is not a failed test.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"Warning"

# Seconds per cell. The first cell pays for importing torch.
c.Execute.timeout = 300

# nbgrader's autograde and feedback pipelines, with the course's steps: the notebook runs
# in a sandboxed kernel; the hidden test cells then get the sandboxed grader's verdict,
# which is what the gradebook stores and what the released feedback shows
# (autograder/engine/nbgrader_steps.py). The grader's limits for these runs:
# c.GraderVerdicts.time_limit = 10.0 (seconds per call), c.GraderVerdicts.memory_limit = 4.0 (GiB).
c.Autograde.autograde_preprocessors = [
    "autograder.engine.kernel_sandbox.SandboxedExecute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "autograder.engine.nbgrader_steps.GraderVerdicts",
    "nbgrader.preprocessors.SaveAutoGrades",
    "autograder.engine.nbgrader_steps.GraderGradebook",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "autograder.engine.nbgrader_steps.GraderFeedback",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
