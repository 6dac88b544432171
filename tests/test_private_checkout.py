"""Grading from a checkout that only its owner can read (a home folder, ``mktemp -d``).

The course and its virtual environment are placed in a folder of mode 0700, as a clone
into a home directory gives; the grader then runs from there as a command, at both
isolation levels. A child that runs as a user of its own cannot read that folder, so it
must get everything it needs from the fork server; a correct submission must still get
full marks, and a blank one zero.

The environment is copied with hard links (``cp -al``: a second or two, no extra disk),
or in full where hard links cannot be made (another file system).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ch03_self_attention"
COURSE_PARTS = ("autograder", "solutions", "exercises/source", "exercises/release")


def _copy_environment(target: Path) -> Path:
    venv = Path(sys.prefix)
    done = subprocess.run(["cp", "-al", str(venv), str(target)], capture_output=True)
    if done.returncode != 0:
        shutil.copytree(venv, target, symlinks=True)
    return target / "bin" / "python"


@pytest.fixture(scope="module")
def private_course(tmp_path_factory):
    """(python, course) inside a folder of mode 0700, with an honest and a blank submission."""
    private = tmp_path_factory.mktemp("private")
    private.chmod(0o700)
    python = _copy_environment(private / "venv")
    course = private / "course"
    for part in COURSE_PARTS:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / part, course / part, ignore=ignore)
    notebook = f"{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
    for student, folder in (("honest", "source"), ("blank", "release")):
        destination = course / "submitted" / student / notebook
        destination.parent.mkdir(parents=True)
        shutil.copyfile(ROOT / "exercises" / folder / notebook, destination)
    return python, course


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["bubblewrap", "process"])
def test_grading_from_a_private_checkout(private_course, isolation):
    from autograder.sandbox.launch import bwrap_works

    if isolation == "bubblewrap" and not bwrap_works():
        pytest.skip("bubblewrap cannot start a sandbox on this machine")
    python, course = private_course
    out = course.parent / f"out-{isolation}"
    command = [str(python), "-m", "autograder", "grade", ASSIGNMENT, str(course / "submitted")]
    command += ["--out", str(out), "--json", str(out / "grades.json"), "--isolation", isolation]
    if isolation == "process" and os.geteuid() != 0:
        command.append("--accept-weak-isolation")
    environment = {**os.environ, "PYTHONPATH": str(course), "AUTOGRADER_SEED": "20261201"}
    done = subprocess.run(
        command, cwd=course, env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = json.loads((out / "grades.json").read_text())
    scores = {(r["student"], r["function"]): (r["score"], r["max_score"]) for r in records}
    functions = {function for _, function in scores}
    assert len(functions) == 3
    for function in functions:
        score, max_score = scores[("honest", function)]
        assert score == max_score > 0, (function, done.stdout)
        assert scores[("blank", function)][0] == 0
