"""The fork server: import torch once, then fork one confined child per request.

It is started by the grader (inside bubblewrap when available) from a private copy of
this package, so it never sees the course: no ``solutions/``, no batteries, no seed.
Its control channel is a ``SOCK_SEQPACKET`` socket whose descriptor is ``argv[1]``;
each packet is one small JSON object:

    grader -> server  {"op": "spawn", "id": n, <confinement spec>}  + 2 descriptors
                      {"op": "kill", "id": n}
    server -> grader  {"op": "ready", "can_switch_user": bool}
                      {"op": "spawned", "id": n}
                      {"op": "exited", "id": n, "code": c}  or  {..., "signal": s}

The two descriptors sent with "spawn" are the child's end of its data channel and its
output file, so the data never passes through this process. When a child ends, the
server kills what it left behind (every process of the child's user, and every
descendant of the server), removes its working directory and only then reports.

The server must not start torch's thread pools or CUDA: children are forked from it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

import safetensors.torch  # noqa: F401  (imported once here, for every child)
import torch

from .child import serve
from .codec import FrameReader, frame
from .confine import confine

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
EXIT_CONFINE_FAILED = 70  # the child could not be confined: no student code ran
EXIT_HARNESS_BROKEN = 72  # the child's grading loop failed after the student's code ran
# Modules a submission may import: imported here, because a child running as an
# unprivileged user may be unable to read the Python installation's files.
PREIMPORTED = [
    "abc",
    "collections",
    "copy",
    "ctypes",
    "dataclasses",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "inspect",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "threading",
    "typing",
    "warnings",
    "numpy",
    "torch.nn.functional",
    "torch.utils.data",
]


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    _harden()
    for name in PREIMPORTED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _warm_up_meta()
    _warm_up_codec()
    Server(control).loop()


def _warm_up_meta() -> None:
    """Trigger the imports that torch makes lazily on the meta device (sympy, mpmath, ...).

    A child running as an unprivileged user may be unable to import them itself. Meta
    tensors have no data, so this runs no kernel and starts no thread pool.
    """
    with contextlib.suppress(Exception):
        q = torch.empty(2, 3, 4, device="meta", requires_grad=True)
        weights = torch.softmax(q @ q.transpose(-2, -1), dim=-1)
        (weights @ q).sum().backward()


def _warm_up_codec() -> None:
    """Send and read back a frame with a tensor of every dtype a result can hold.

    safetensors imports parts of numpy (``numpy.ctypeslib``) on first use; a child running
    as an unprivileged user may be unable to read them from a private installation. Filling
    two-element tensors starts no thread pool.
    """
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool)
    tensors = {str(dtype): torch.zeros(2, dtype=dtype) for dtype in dtypes}
    reader = FrameReader()
    reader.feed(frame({"type": "warm-up"}, tensors))
    reader.next()


def _harden() -> None:
    """No ptrace or /proc/<pid>/mem access by children; orphans are reparented here."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Server:
    def __init__(self, control: socket.socket):
        self.control = control
        self.can_switch_user = os.geteuid() == 0
        self.current: dict | None = None
        self.wake_read, self.wake_write = os.pipe()

    def loop(self) -> None:
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.send({"op": "ready", "can_switch_user": self.can_switch_user})
        while True:
            ready, _, _ = select.select([self.control, self.wake_read], [], [])
            if self.wake_read in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_read, 4096)
                self.reap()
            if self.control in ready and not self.receive():
                self.kill_current()
                self.wait_current()
                return

    def receive(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 4)
        if not data:
            return False
        message = json.loads(data)
        if message["op"] == "spawn":
            self.spawn(message, fds)
        else:
            for fd in fds:
                os.close(fd)
            if message["op"] == "kill" and self.current and self.current["id"] == message["id"]:
                self.kill_current()
        return True

    def send(self, message: dict) -> None:
        with contextlib.suppress(OSError):
            self.control.send(json.dumps(message).encode())

    def spawn(self, spec: dict, fds: list[int]) -> None:
        if self.current is not None:  # one child at a time
            self.kill_current()
            self.wait_current()
        uid = spec["uid"] if self.can_switch_user else None
        gid = spec["gid"] if self.can_switch_user else None
        workdir = tempfile.mkdtemp(prefix="submission-")
        if uid is not None:
            os.chown(workdir, uid, gid)
        spec = {**spec, "uid": uid, "gid": gid, "workdir": workdir}
        pid = os.fork()
        if pid == 0:
            self.child(spec, *fds)
        for fd in fds:
            os.close(fd)
        self.current = {"id": spec["id"], "pid": pid, "uid": uid, "workdir": workdir}
        self.send({"op": "spawned", "id": spec["id"]})

    def child(self, spec: dict, data_fd: int, output_fd: int) -> None:
        try:
            self.control.detach()  # the number may be reused by the data channel
            confine(spec, data_fd, output_fd)
        except BaseException:  # before any student code: the harness's own failure
            _print_traceback()
            os._exit(EXIT_CONFINE_FAILED)
        try:
            serve()
        except BaseException:  # after student code ran, which may have broken the harness
            _print_traceback()
        os._exit(EXIT_HARNESS_BROKEN)

    def kill_current(self) -> None:
        """Kill the current child; ``finish`` sweeps up what it left once it is reaped."""
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.current["pid"], signal.SIGKILL)

    def wait_current(self) -> None:
        while self.current is not None:
            time.sleep(0.01)
            self.reap()

    def reap(self) -> None:
        """Collect every ended child; report the current one once it is gone."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.current and pid == self.current["pid"]:
                self.current["status"] = status
        if self.current and "status" in self.current:
            self.finish()

    def finish(self) -> None:
        current, self.current = self.current, None
        self.sweep(current)
        shutil.rmtree(current["workdir"], ignore_errors=True)
        status = current["status"]
        if os.WIFSIGNALED(status):
            outcome = {"signal": os.WTERMSIG(status)}
        else:
            outcome = {"code": os.waitstatus_to_exitcode(status)}
        self.send({"op": "exited", "id": current["id"], **outcome})

    @staticmethod
    def sweep(ended: dict) -> None:
        """Kill every process an ended child left: by user when it has its own, and by descent."""
        if ended["uid"] is not None:
            kill_user(ended["uid"])
        kill_descendants()


def _print_traceback() -> None:
    with contextlib.suppress(BaseException):
        traceback.print_exc()
        sys.stderr.flush()


def kill_user(uid: int) -> None:
    """SIGKILL every process of ``uid``, from a process of that user (kill(-1) is atomic)."""
    killer = os.fork()
    if killer == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(1000):
                os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(killer, 0)


def kill_descendants() -> None:
    """SIGKILL every descendant of this process (orphans come here: it is a subreaper).

    Called only when no child is current, so every descendant is a leftover.
    """
    for round_ in range(200):
        victims = _descendants(os.getpid())
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if round_:
            time.sleep(0.005)


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    found, frontier = [], {root}
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = set(children)
    return found


if __name__ == "__main__":
    main()
