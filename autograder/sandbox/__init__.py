"""The grader's side of the sandbox: start it, send it work, read back only data.

``Worker`` owns one fork server (``launch`` starts it, ``link`` talks to it) and runs one
submission at a time through it; ``ISOLATION_LEVELS`` says what each level protects.
"""

from autograder.sandbox.worker import (
    BUBBLEWRAP,
    ISOLATION_LEVELS,
    PROCESS,
    Limits,
    RunReport,
    Worker,
)

__all__ = ["BUBBLEWRAP", "ISOLATION_LEVELS", "PROCESS", "Limits", "RunReport", "Worker"]
