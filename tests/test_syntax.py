"""Parsing students' source (``autograder.runtime.syntax``): from many threads, and hostile."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from autograder.runtime import syntax

SOURCE = (Path(__file__).resolve().parent.parent / "solutions" / "ch05_multihead.py").read_text()


class Finalised:
    """Garbage whose finalizer runs Python code: the collector may then switch threads
    in the middle of building an AST, which is what exposes CPython 3.11's shared depth."""

    def __del__(self):
        sum(range(50))


def parse_in_threads(parse, threads: int = 4, rounds: int = 200) -> list[str]:
    """The errors that ``parse`` raised while ``threads`` threads parsed at once."""
    errors: list[str] = []

    def work():
        for _ in range(rounds):
            garbage = [Finalised() for _ in range(50)]
            cycle = [garbage]
            cycle.append(cycle)  # only the cyclic collector frees it
            try:
                parse(SOURCE)
            except Exception as error:  # any error is the failure
                errors.append(f"{type(error).__name__}: {error}")
                return

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def test_parses_from_many_threads_at_once():
    """On CPython 3.11, ``ast.parse`` in this loop raises "SystemError: AST constructor
    recursion depth mismatch" within a few rounds; through ``syntax.parse`` it never does."""
    assert parse_in_threads(syntax.parse) == []


def test_parses_python():
    tree = syntax.parse("def f(x):\n    return x + 1\n")
    assert [node.name for node in tree.body if isinstance(node, ast.FunctionDef)] == ["f"]


@pytest.mark.parametrize(
    "source",
    [
        "def f(:\n",  # SyntaxError
        "x = 1\0",  # ValueError: a NUL byte
        "chain = x" + ".y" * 200_000,  # RecursionError while building the AST
        "-" * 100_000 + "1",  # MemoryError in the parser
    ],
    ids=["syntax", "nul", "deep-attributes", "deep-unary"],
)
def test_unparsable_source_is_none(source):
    assert syntax.parse(source) is None
