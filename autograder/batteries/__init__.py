"""The hidden test batteries, one module per assignment, each with a ``BATTERY``.

battery = load_battery("ch03_self_attention")
"""

from __future__ import annotations

import importlib
import pkgutil

from autograder.kit.battery import Battery


class UnknownAssignment(KeyError):
    """No battery for this assignment id."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def available() -> list[str]:
    """The assignment ids that have a battery, sorted."""
    return sorted(
        module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")
    )


def load_battery(assignment_id: str) -> Battery:
    """The ``BATTERY`` of ``autograder.batteries.<assignment_id>``."""
    if assignment_id not in available():
        known = ", ".join(available()) or "none"
        raise UnknownAssignment(f"no battery for assignment {assignment_id!r} (available: {known})")
    return importlib.import_module(f"{__name__}.{assignment_id}").BATTERY
