"""What must never reach a student: leak markers and lines of reference code.

Every module of ``solutions/`` and ``autograder/`` carries a unique ``LEAK-MARKER-...``
string; a marker found in the built book or a released notebook means that hidden
material was shipped. Lines of the reference functions' bodies are searched for too,
so that a solution pasted (or imported and printed) anywhere is caught.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"LEAK-MARKER-[A-Za-z0-9-]+")
SHORTEST_DISTINCT_LINE = 20  # shorter lines ("return out, weights") are too generic


def leak_markers() -> set[str]:
    found = set()
    for folder in ("solutions", "autograder"):
        for path in (ROOT / folder).rglob("*.py"):
            found.update(MARKER.findall(path.read_text()))
    return found


def _body_lines(function: ast.FunctionDef, source_lines: list[str]) -> list[str]:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring is given to students on purpose
    if not body:
        return []
    lines = source_lines[body[0].lineno - 1 : body[-1].end_lineno]
    code = (line.split("#")[0].strip() for line in lines)
    return [line for line in code if len(line) >= SHORTEST_DISTINCT_LINE]


def reference_code_lines() -> set[str]:
    """Distinctive lines of every function (and method) body in ``solutions/``."""
    lines = set()
    for path in (ROOT / "solutions").glob("ch*.py"):
        source = path.read_text()
        source_lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and node.name != "__init__":
                lines.update(_body_lines(node, source_lines))
    return lines


def find_leaks(text: str) -> list[str]:
    """The markers and reference lines that ``text`` contains."""
    leaks = [marker for marker in leak_markers() if marker in text]
    leaks += [line for line in reference_code_lines() if line in text]
    return leaks
