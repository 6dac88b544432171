"""The grader's end of the sandbox: the fork server's control channel and one child's data.

``ServerLink`` starts a fork server and speaks its small JSON control protocol (see
``autograder.runtime.server``). ``ChildLink`` is one grading child: it asks the server to fork
it, hands it a data channel and an output file, and reads its frames with a deadline
each. Everything read here comes from processes that student code may control, so
every wait has a deadline and every surprise becomes an exception of this module.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import tempfile
import time

from autograder.runtime.codec import FrameReader

from .launch import stage_runtime, start_server

STARTUP_SECONDS = 120.0
REPLY_SECONDS = 10.0  # the server answers a request, or reports an ended child, within this


class ServerGone(Exception):
    """The fork server died or stopped answering."""


class TimedOut(Exception):
    """No message from the child before its deadline."""


class Ended(Exception):
    """The child closed its data channel (it ended, or its channel broke)."""


class ServerLink:
    """A running fork server and its control channel."""

    def __init__(self, bubblewrap: bool, disk_bytes: int):
        self.code_dir = stage_runtime()
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        try:
            self.process = start_server(
                self.code_dir, theirs.fileno(), bubblewrap, disk_bytes, self.log
            )
        finally:
            theirs.close()
        ready = self.receive(STARTUP_SECONDS)
        if ready is None or ready.get("op") != "ready":
            self.close()
            raise RuntimeError(f"the grading sandbox did not start:\n{self.log_tail()}")
        self.can_switch_user = ready.get("can_switch_user") is True

    def send(self, message: dict, fds=()) -> None:
        try:
            socket.send_fds(self.control, [json.dumps(message).encode()], list(fds))
        except OSError as error:
            raise ServerGone from error

    def receive(self, timeout: float) -> dict | None:
        """The next control message, or None when none came within ``timeout``."""
        ready, _, _ = select.select([self.control], [], [], max(timeout, 0))
        if not ready:
            return None
        try:
            packet = self.control.recv(1 << 16)
        except OSError as error:
            raise ServerGone from error
        if not packet:
            raise ServerGone
        try:
            message = json.loads(packet)
        except ValueError as error:
            raise ServerGone from error
        if not isinstance(message, dict):
            raise ServerGone
        return message

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:].decode(errors="replace")

    def close(self) -> None:
        self.control.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.code_dir, ignore_errors=True)


class ChildLink:
    """One grading child: its data channel, its output file and its exit status."""

    def __init__(self, server: ServerLink, spawn_id: int, spec: dict):
        self.server = server
        self.id = spawn_id
        self.exit: dict | None = None
        self.eof = False
        self.reader = FrameReader()
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.data, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.send(
                {"op": "spawn", "id": spawn_id, **spec}, [theirs.fileno(), self.output.fileno()]
            )
        finally:
            theirs.close()
        self._await(lambda m: m.get("op") == "spawned")

    def send(self, payload: bytes, timeout: float) -> bool:
        """Send the job; False if the child could not take it."""
        self.data.settimeout(timeout)
        try:
            self.data.sendall(payload)
        except OSError:
            return False
        return True

    def next_message(self, timeout: float):
        """The next frame from the child (may raise ``Malformed``, ``TimedOut``, ``Ended``)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.reader.next()
            if frame is not None:
                return frame
            if self.eof:
                raise Ended
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimedOut
            ready, _, _ = select.select([self.data, self.server.control], [], [], remaining)
            if self.server.control in ready:
                self._control_event()
            if self.data in ready:
                self._read_data()

    def _read_data(self) -> None:
        try:
            chunk = self.data.recv(1 << 20)
        except OSError:
            chunk = b""
        if chunk:
            self.reader.feed(chunk)
        else:
            self.eof = True

    def _control_event(self) -> None:
        message = self.server.receive(0)
        if message and message.get("op") == "exited" and message.get("id") == self.id:
            self.exit = message

    def _await(self, wanted, timeout: float = REPLY_SECONDS) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self.server.receive(deadline - time.monotonic())
            if message is None:
                raise ServerGone("the fork server does not answer")
            if message.get("op") == "exited" and message.get("id") == self.id:
                self.exit = message
            if wanted(message):
                return message

    def kill(self) -> None:
        if self.exit is None:
            self.server.send({"op": "kill", "id": self.id})

    def wait_exit(self, timeout: float = REPLY_SECONDS) -> dict:
        """The child's exit status, once the server has cleaned up after it."""
        if self.exit is None:
            self._await(lambda m: m.get("op") == "exited" and m.get("id") == self.id, timeout)
        return self.exit

    def end(self, grace: float) -> dict:
        """Let the child end by itself within ``grace`` seconds, else kill it."""
        try:
            return self.wait_exit(grace)
        except ServerGone:
            if not self.server.alive():
                raise
        self.kill()
        return self.wait_exit()

    def close(self) -> None:
        self.data.close()
        self.output.close()
