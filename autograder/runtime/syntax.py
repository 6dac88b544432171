"""Parse Python source that a student wrote: from any thread, and whatever the source.

Every parse of submitted code goes through ``parse``, for two reasons:

- CPython 3.11 keeps the AST constructor's recursion depth in state that all threads of
  the interpreter share (python/cpython#106905). Two threads that turn source into AST
  objects at the same time can make one of them fail with ``SystemError: AST constructor
  recursion depth mismatch``. The grader reads submissions in one thread per sandbox, so
  one lock makes the parses take turns (3.10, 3.12 and 3.13 do not show the fault).
- Hostile source can make ``ast.parse`` raise more than ``SyntaxError``: deep nesting
  gives ``RecursionError`` or ``MemoryError``, a NUL byte ``ValueError``. Each means the
  same to the grader: the source cannot be read as Python.
"""

from __future__ import annotations

import ast
import threading

_PARSING = threading.Lock()
UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)


def parse(source: str) -> ast.Module | None:
    """The module ``source`` parses to, or None where it cannot be parsed."""
    with _PARSING:
        try:
            return ast.parse(source)
        except UNPARSABLE:
            return None
