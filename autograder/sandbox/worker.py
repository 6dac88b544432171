"""Run a submission's code in an isolated, limited process, and bring back only data.

The grading process never runs student code. A ``Worker`` starts a fork server once
(it imports torch, safetensors and the executor, nothing of the course), and for each
submission asks it to fork a confined child that executes the notebook's cells and
then the calls of each check. The process tree, under bubblewrap::

    grader (Worker: deadlines, decoding, restarts)
      └─ bwrap ─ fork server (its own copy of its code, read-only; no network)
                   └─ child, one per submission (own user, own session, rlimits)
                        └─ whatever student code starts (killed after each child)

The grader sends the child one job (JSON + safetensors); the child answers with framed
messages, one per call (``autograder.runtime.child`` lists them), which the grader decodes without
unpickling (``autograder.runtime.codec``). A child that dies, hangs or sends garbage costs the
check (or the top-level cell) it was running: the grader records why, and a new child
re-executes the cells and goes on with the remaining checks.

What each isolation level protects is ``ISOLATION_LEVELS``, appended below.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from autograder.runtime.child import EXIT_CHANNEL_LOST
from autograder.runtime.codec import Malformed, TensorPacker, decode_result, encode_call, frame
from autograder.runtime.executor import ACCELERATOR, Call, Result
from autograder.runtime.server import EXIT_CONFINE_FAILED, EXIT_HARNESS_BROKEN

from .launch import bwrap_problem
from .link import ChildLink, Ended, ServerGone, ServerLink, TimedOut

ISOLATION_LEVELS = """\
Isolation levels

bubblewrap: the fork server and every child run in a bubblewrap sandbox with no network
(a private network namespace), their own PID, IPC and UTS namespaces, a read-only view
of the system and of the Python installation, a private /tmp of bounded size, no view
of the course files (they are not mounted: solutions, batteries and the gradebook do
not exist there), and no life after the grader (--die-with-parent). When the grader
runs as root, each child also runs as an unprivileged user of its own, which cannot
signal or trace the fork server, and every process of that user is killed after each
child. Rootless, bubblewrap maps a single user: a child can then kill the fork server
(the Worker restarts it), but nothing outside the sandbox.

process (weaker: no bubblewrap; as root only, unless accepted explicitly): the child is a
separate process with the same limits (CPU and wall-clock time per call, address space,
processes, output size, an empty working directory, a scrubbed environment, no course
directory on sys.path) and an unprivileged user of its own. It is not hidden from the
file system: it can read every file that any user may read (a world-readable course
checkout included), and it can use the network. It cannot read the grader's output
folder (mode 0700) nor signal the grader. As its own user it may be unable to read a
Python installed in a private folder: it can import only what the fork server imported
beforehand (torch and the common standard modules).

process without root (refused unless --accept-weak-isolation): the child runs as the
grader's own user. It can read and change every file that user can (solutions, the
gradebook, other students' notebooks and records, though a record it forges is detected
and regraded on the next run unless it also read the run's key), and signal or kill the
grader. Only for code you trust.

Both levels: a submission can only spoil its own results; what it sends back is data,
checked and judged in the grading process. The address space is capped unless CUDA is
in use (the CUDA driver reserves huge address ranges); the run report says when it is
not. GPU access inside bubblewrap (binding /dev/nvidia*) is not verified.
"""
__doc__ += "\n" + ISOLATION_LEVELS

BUBBLEWRAP = "bubblewrap"
PROCESS = "process (weaker: no bubblewrap)"
UID_BASE = 1_500_000_000  # children's users: far above any real account
_uid_counter = itertools.count()
_warned = False

# The beginnings of the reasons that say a call reached its time limit.
TIME_LIMIT_REASONS = ("your code ran for more than", "your code used more than")

SIGNAL_REASONS = {
    signal.SIGSEGV: "the process crashed (segmentation fault)",
    signal.SIGBUS: "the process crashed (bus error)",
    signal.SIGILL: "the process crashed (illegal instruction)",
    signal.SIGFPE: "the process crashed (arithmetic error)",
    signal.SIGABRT: "the process aborted",
    signal.SIGXFSZ: "your code wrote more output or data than allowed",
    signal.SIGKILL: "the process was killed (SIGKILL)",
}


@dataclass
class Limits:
    call_wall_seconds: float = 10.0  # per Call
    call_cpu_seconds: float = 10.0  # per Call
    load_wall_seconds: float = 30.0  # executing the notebook's cells
    memory_bytes: int = 4 << 30  # extra address space above the fork server's own
    processes: int = 64
    output_bytes: int = 1 << 20  # stdout+stderr a child may write (never read, never parsed)
    disk_bytes: int = 256 << 20  # size of the private /tmp under bubblewrap


@dataclass
class RunReport:
    results: dict[str, list[Result] | None]  # per check name; None if it never answered
    failures: dict[str, str]  # check name -> reason, in the student's terms
    cell_errors: list[tuple[int, str]]  # (cell number, from 1; "Type: message" or reason)
    isolation: str  # BUBBLEWRAP or PROCESS
    notes: list[str] = field(default_factory=list)  # limits that could not be applied


class Worker:
    """A fork server, and the runs of submissions through it (one at a time)."""

    def __init__(
        self, limits: Limits | None = None, isolation: str = "auto", accept_weak: bool = False
    ):
        self.limits = limits or Limits()
        self.bubblewrap = _choose_isolation(isolation, accept_weak)
        self.isolation = BUBBLEWRAP if self.bubblewrap else PROCESS
        self.uid = UID_BASE + (os.getpid() % (1 << 22)) * 64 + next(_uid_counter) % 64
        self._spawn_ids = itertools.count(1)
        self._server: ServerLink | None = ServerLink(self.bubblewrap, self.limits.disk_bytes)

    def run(
        self,
        cells: Sequence[str],
        plan: Mapping[str, Sequence[Call]],
        forbidden: Mapping[str, Sequence[str]] | None = None,
    ) -> RunReport:
        report = RunReport(
            results=dict.fromkeys(plan),
            failures={},
            cell_errors=[],
            isolation=self.isolation,
        )
        _Run(
            self,
            list(cells),
            {name: list(calls) for name, calls in plan.items()},
            {name: list(ops) for name, ops in (forbidden or {}).items()},
            report,
        ).execute()
        return report

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def spawn(self, spec: dict) -> ChildLink:
        """A new child, restarting the fork server if it died."""
        for _ in range(2):
            if self._server is None or not self._server.alive():
                self.restart_server()
            try:
                return ChildLink(self._server, next(self._spawn_ids), spec)
            except ServerGone:
                self.restart_server()
        raise RuntimeError("the grading sandbox cannot start a child")

    def restart_server(self) -> None:
        if self._server is not None:
            self._server.process.kill()
            self._server.close()
        self._server = ServerLink(self.bubblewrap, self.limits.disk_bytes)

    @property
    def own_user(self) -> bool:
        return self._server is not None and self._server.can_switch_user


WEAK_WITHOUT_ROOT = (
    "Without root, the process level runs student code as your own user: it can read and"
    " change every file you can (solutions, the gradebook, other students' notebooks and"
    " grades) and signal or kill the grader. It protects nothing against a hostile"
    " submission; use it only for code you trust."
)


class IsolationUnavailable(RuntimeError):
    """The isolation asked for cannot run here; the message says why and what to do."""


def _choose_isolation(isolation: str, accept_weak: bool = False) -> bool:
    """True for bubblewrap, False for the process level; raises where neither may run.

    The process level runs only as root (each child then gets a user of its own), or when
    the caller accepts its weakness explicitly. Falling back to it is never silent.
    """
    global _warned
    if isolation not in ("auto", "bubblewrap", "process"):
        raise ValueError(f"unknown isolation {isolation!r}")
    problem = None if isolation == "process" else bwrap_problem()
    if isolation != "process" and problem is None:
        return True
    if isolation == "bubblewrap":
        raise IsolationUnavailable(f"--isolation bubblewrap was asked for, but {problem}")
    root = os.geteuid() == 0
    if not root and not accept_weak:
        why = f"{problem} " if problem else ""
        raise IsolationUnavailable(
            f"{why}The process level is refused without root. {WEAK_WITHOUT_ROOT}"
            " To use it anyway, pass --accept-weak-isolation."
        )
    if not _warned:
        _warned = True
        weakness = "" if root else f" {WEAK_WITHOUT_ROOT}"
        why = f" {problem}" if problem else ""
        print(
            "WARNING: student code runs with process-level isolation only (it can read the"
            f" files its user can read and use the network).{why}{weakness}",
            file=sys.stderr,
        )
    return False


class HarnessFailure(RuntimeError):
    """The sandbox failed before any student code ran: the grader's failure, not the student's."""


class _Problem(Exception):
    """The child stopped answering as expected; ``reason`` is in the student's terms."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Restart(Exception):
    """The child asked to be replaced (it found threads or processes left behind)."""


class _Run:
    """One submission through one Worker: as many children as its failures need."""

    def __init__(self, worker: Worker, cells, plan, forbidden, report: RunReport):
        self.worker = worker
        self.limits = worker.limits
        self.cells = cells
        self.plan = plan
        self.forbidden = forbidden
        self.report = report
        self.pending = list(plan)
        self.function_of = {name: calls[0].function for name, calls in plan.items() if calls}
        self.skipped: dict[int, str] = {}  # cell number -> why it was skipped
        self.load_errors: list[tuple[int, str]] = []
        self.stage: tuple[str, object] | None = None

    def execute(self) -> None:
        memory = self.limits.memory_bytes
        if self._uses_cuda():
            memory = None
            self.report.notes.append("no memory limit: CUDA is in use")
        self.spec = self._spec(memory)
        self.job = self._job()
        for _ in range(len(self.cells) + len(self.plan) + 3):
            if not self._attempt():
                break
        for name in self.pending:
            self.report.failures[name] = "your code failed too many times to be graded"
        self.report.cell_errors = sorted([*self.skipped.items(), *self.load_errors])

    def _uses_cuda(self) -> bool:
        devices = {call.device for calls in self.plan.values() for call in calls}
        return bool(devices & {"cuda", ACCELERATOR}) and torch.cuda.is_available()

    def _spec(self, memory) -> dict:
        calls = sum(len(calls) for calls in self.plan.values())
        limits = self.limits
        return {
            "uid": self.worker.uid,
            "gid": self.worker.uid,
            "processes": limits.processes,
            "output_bytes": limits.output_bytes,
            "memory_bytes": memory,
            "load_cpu_seconds": limits.load_wall_seconds,
            "cpu_budget_seconds": limits.load_wall_seconds + calls * limits.call_cpu_seconds + 5,
        }

    def _job(self) -> dict:
        packer = TensorPacker()
        checks = {
            name: [encode_call(c, packer) for c in calls] for name, calls in self.plan.items()
        }
        meta = {
            "type": "job",
            "cells": self.cells,
            "checks": checks,
            "forbidden": self.forbidden,
            "call_cpu_seconds": self.limits.call_cpu_seconds,
        }
        return {"meta": meta, "tensors": packer.tensors}

    def _payload(self) -> bytes:
        meta = {
            **self.job["meta"],
            "skip": sorted(self.skipped),
            "run": self.pending,
            "own_uid": self.worker.own_user,
        }
        return frame(meta, self.job["tensors"])

    # One child

    def _attempt(self) -> bool:
        """Run one child; True when another one is needed."""
        if not self.pending:
            return False
        child = self.worker.spawn(self.spec)
        self.stage = None
        self.finished = False
        try:
            self._load(child)
            self._checks(child)
            return False
        except _Restart:
            return True
        except _Problem as problem:
            return self._blame(problem.reason)
        except ServerGone:
            self.worker.restart_server()
            return self._blame("the grading process was killed (did your code kill its parent?)")
        finally:
            self._collect(child)

    def _blame(self, reason: str) -> bool:
        """Charge ``reason`` to what was running; True when another child is needed."""
        kind, what = self.stage or ("start", None)
        if kind == "cell":
            self.skipped[what] = reason
            return True
        if kind == "check":
            for name in self._charged_with(what, reason):
                self.report.failures[name] = reason
                self.pending.remove(name)
            return bool(self.pending)
        for name in self.pending:
            self.report.failures[name] = reason
        self.pending = []
        return False

    def _charged_with(self, check: str, reason: str) -> list[str]:
        """The checks that ``reason`` costs: a time limit reached in one check of a function
        costs every check of that function still pending, without running them (a hang
        costs one time limit per function, not one per check)."""
        if not reason.startswith(TIME_LIMIT_REASONS):
            return [check]
        function = self.function_of[check]
        return [name for name in self.pending if self.function_of[name] == function]

    def _load(self, child: ChildLink) -> None:
        if not child.send(self._payload(), self.limits.load_wall_seconds):
            raise self._problem(child, Ended(), self.limits.load_wall_seconds)
        deadline = time.monotonic() + self.limits.load_wall_seconds
        while True:
            meta, _ = self._next(child, deadline - time.monotonic(), self.limits.load_wall_seconds)
            if meta.get("type") == "loaded":
                try:
                    self.load_errors = _cell_errors(meta.get("cell_errors"), len(self.cells))
                except Malformed as error:
                    raise self._problem(child, error, 0) from None
                self.stage = None
                return
            number = meta.get("number")
            previous = self.stage[1] if self.stage else 0
            if meta.get("type") != "cell" or type(number) is not int:
                raise self._problem(child, Malformed(), 0)
            if not previous < number <= len(self.cells) or number in self.skipped:
                raise self._problem(child, Malformed(), 0)
            self.stage = ("cell", number)

    def _checks(self, child: ChildLink) -> None:
        for name in list(self.pending):
            self.stage = ("check", name)
            results = []
            for index in range(len(self.plan[name])):
                meta, tensors = self._next(child, self.limits.call_wall_seconds)
                results.append(self._result(child, meta, tensors, name, index))
            self.report.results[name] = results
            self.pending.remove(name)
        self.stage = None
        # The last message: "done" (or "dirty"), after which the child ends by itself.
        with contextlib.suppress(TimedOut, Ended, Malformed):
            child.next_message(self.limits.call_wall_seconds)
            self.finished = True

    def _next(self, child: ChildLink, timeout: float, limit: float | None = None):
        try:
            meta, tensors = child.next_message(timeout)
        except (TimedOut, Ended, Malformed) as error:
            raise self._problem(child, error, limit or timeout) from None
        if meta.get("type") == "dirty" and (self.stage is None or self.stage[0] == "check"):
            raise _Restart
        return meta, tensors

    def _result(self, child, meta, tensors, name, index) -> Result:
        if meta.get("type") != "result" or meta.get("check") != name or meta.get("index") != index:
            raise self._problem(child, Malformed(), 0)
        try:
            return decode_result(meta.get("result"), tensors)
        except Malformed as error:
            raise self._problem(child, error, 0) from None

    def _problem(self, child: ChildLink, error: Exception, limit: float) -> _Problem:
        """Stop the child and say, in the student's terms, what went wrong."""
        if isinstance(error, TimedOut):
            child.kill()
            child.wait_exit()
            return _Problem(f"your code ran for more than {limit:g} s")
        if isinstance(error, Malformed):
            child.kill()
            child.wait_exit()
            return _Problem("your code wrote unexpected data into the grader's channel")
        exit = child.wait_exit()
        if exit.get("code") == EXIT_CONFINE_FAILED:
            raise HarnessFailure("the sandbox could not confine a child process")
        return _Problem(exit_reason(exit, self.limits))

    def _collect(self, child: ChildLink) -> None:
        """Make sure the child is gone and release its resources (its output is discarded)."""
        if child.server is self.worker._server:  # else it went down with its server
            try:
                child.end(grace=0.5 if self.finished else 0)
            except ServerGone:
                self.worker.restart_server()
        child.close()


def _cell_errors(value, cells: int) -> list[tuple[int, str]]:
    if not isinstance(value, list) or len(value) > cells:
        raise Malformed("bad cell errors")
    errors = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int):
            raise Malformed("bad cell errors")
        if not isinstance(item[1], str):
            raise Malformed("bad cell errors")
        errors.append((item[0], item[1][:1000]))
    return errors


def exit_reason(exit: dict, limits: Limits) -> str:
    """Why a child ended, from the status the fork server reported."""
    number = exit.get("signal")
    if type(number) is int:
        if number == signal.SIGXCPU:
            return f"your code used more than {limits.call_cpu_seconds:g} s of CPU time"
        if number in SIGNAL_REASONS:
            return SIGNAL_REASONS[number]
        try:
            return f"the process was killed by {signal.Signals(number).name}"
        except ValueError:
            return f"the process was killed by signal {number}"
    code = exit.get("code")
    if code == EXIT_CHANNEL_LOST:
        return "your code closed or broke the process's connection to the grader"
    if code == EXIT_HARNESS_BROKEN:
        return (
            "the grading code in your process stopped with an error after your code ran"
            " (code that changes torch, sys or os can cause this)"
        )
    return "your code ended the process (os._exit)"
