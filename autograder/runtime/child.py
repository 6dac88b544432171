"""The grading child: run a submission's cells, then the calls of each check.

This runs in the confined child, next to student code, with the data channel on file
descriptor 3. It reads one job (cells, cells to skip, the calls of every check, the
checks to run, the operations each contract may not reach), then sends, in order:

    {"type": "cell", "number": N}        before running cell N (1-based)
    {"type": "loaded", "cell_errors": [[N, "Type: message"], ...]}
    {"type": "result", "check": name, "index": i, "result": {...}}  + tensors
    {"type": "dirty"}                    threads or processes were left behind: stop here
    {"type": "done"}

The grader reads these with deadlines and trusts none of them; this module only has
to be right for honest submissions.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from . import operations  # noqa: F401  (imported before any student code runs)
from .codec import MAX_BLOB, FrameReader, TensorPacker, decode_call, encode_result, frame
from .executor import RETURNED, Result, describe_error, execute_call

CHANNEL_FD = 3
EXIT_CHANNEL_LOST = 71  # the data channel broke: the grader reports it

# Bound before student code runs, so that patching ``os`` cannot cut the channel.
_write = os.write
_read = os.read
_exit = os._exit
_getpid = os.getpid


def serve() -> None:
    """Run one job from the channel; always ends the process."""
    owner = _getpid()
    job, tensors = _receive_job()
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    errors = []
    for number, source in enumerate(job["cells"], start=1):
        if number in job["skip"]:
            continue
        _send({"type": "cell", "number": number}, owner=owner)
        error = run_cell(namespace, number, source)
        if error:
            errors.append([number, error])
    _send({"type": "loaded", "cell_errors": errors}, owner=owner)
    baseline = _leftovers(job["own_uid"])
    for name in job["run"]:
        for index, encoded in enumerate(job["checks"][name]):
            call = decode_call(encoded, tensors)
            _limit_cpu(job["call_cpu_seconds"])
            result = execute_call(namespace, call, job["forbidden"].get(call.function, ()))
            _send_result(name, index, result, owner)
        if _leftovers(job["own_uid"]) != baseline:
            _send({"type": "dirty"}, owner=owner)
            _exit(0)
    _send({"type": "done"}, owner=owner)
    _exit(0)


def run_cell(namespace: dict, number: int, source: str) -> str | None:
    """Execute one cell (plain Python: the grader removed IPython's magics); the error it
    raised (``"Type: message"``), or None."""
    try:
        code = compile(source, f"<cell {number}>", "exec")
        exec(code, namespace)
    except BaseException as error:  # a failing cell costs what it defines, no more
        return describe_error(error)
    finally:
        _flush_output()
    return None


def _leftovers(own_uid: bool) -> tuple[int, bool]:
    """Python threads of this process, and whether other processes of its user exist.

    Threads that torch starts for itself run no Python code, so they are not counted.
    Other processes can only be told apart under a user of our own (``own_uid``).
    """
    return len(sys._current_frames()), own_uid and _others_alive()


def _others_alive() -> bool:
    try:
        os.kill(-1, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _limit_cpu(seconds: float) -> None:
    """Let the next call use ``seconds`` more CPU time (SIGXCPU beyond it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    # Fails when student code lowered the hard limit: the wall-clock watchdog still holds.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _send_result(name: str, index: int, result: Result, owner: int) -> None:
    try:
        message, tensors = _pack_result(name, index, result)
    except BaseException as error:  # unsupported dtype, out of memory, hostile tensor
        failed = Result(error=f"{RETURNED}something that cannot be sent ({describe_error(error)})")
        message, tensors = _pack_result(name, index, failed)
    _send(message, tensors, owner=owner)


def _pack_result(name: str, index: int, result: Result):
    problem = _unsendable(result)
    if problem:
        result = Result(structure=result.structure[:200], error=RETURNED + problem)
    packer = TensorPacker()
    encoded = encode_result(result, packer)
    return {"type": "result", "check": name, "index": index, "result": encoded}, packer.tensors


def _unsendable(result: Result) -> str | None:
    """Why the grader would refuse ``result``, in the student's terms; None if it is fine."""
    tensors = [*result.outputs, *result.grads.values(), *result.inputs_after.values()]
    for tensor in result.outputs:
        if tensor is not None and type(tensor) is not torch.Tensor:
            return f"a {type(tensor).__name__}, not a plain torch.Tensor"
    size = sum(t.numel() * t.element_size() for t in tensors if _has_data(t))
    if size > MAX_BLOB:
        return f"{size / 2**20:.0f} MiB of tensors, more than the grader accepts"
    return None


def _has_data(tensor) -> bool:
    return type(tensor) is torch.Tensor and tensor.device.type != "meta"


def _send(message: dict, tensors=None, *, owner: int) -> None:
    if _getpid() != owner:  # a fork of student code reached the harness: end it quietly
        _exit(0)
    _flush_output()
    data = memoryview(frame(message, tensors))
    try:
        while data:
            data = data[_write(CHANNEL_FD, data) :]
    except BaseException:
        _exit(EXIT_CHANNEL_LOST)


def _receive_job():
    reader = FrameReader(max_json=1 << 40, max_blob=1 << 40)
    while True:
        received = reader.next()
        if received is not None:
            return received
        try:
            chunk = _read(CHANNEL_FD, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            _exit(EXIT_CHANNEL_LOST)
        reader.feed(chunk)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):  # closed or replaced by student code
            stream.flush()
