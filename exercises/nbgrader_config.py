"""nbgrader configuration of the course; this folder is the course root.

nbgrader reads this file when it runs from this folder (``nbgrader generate_assignment``,
``nbgrader autograde``, ``nbgrader export``); code that uses the Python API loads it with
``traitlets.config.loader.PyFileConfigLoader``.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 (provided by traitlets when it runs this file)

# The repository root (the parent of this course root) must be importable in the
# notebook kernels, whose hidden test cells run ``from autograder.kernel import ...``.
# Kernels inherit the environment of the nbgrader process, so setting it here is enough.
REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
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

# Seconds per cell. A hidden test cell runs a whole battery (many shapes, gradients,
# dtypes) and the first cell pays for importing torch.
c.Execute.timeout = 300
