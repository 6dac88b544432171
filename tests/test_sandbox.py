"""The isolated execution layer: honest code is graded, hostile code costs only itself.

Each attack defines ``attacked`` in an otherwise honest submission. The plan has three
checks, an honest one before the attacked one and one after, so that both "results
kept when the child dies mid-way" and "a fresh child for the remaining checks" are
exercised; the same Worker then grades the next submission.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autograder.engine.notebook import without_magics
from autograder.runtime.codec import (
    FrameReader,
    Malformed,
    TensorPacker,
    decode_call,
    decode_result,
    encode_call,
    encode_result,
    frame,
)
from autograder.runtime.executor import Call, Result
from autograder.sandbox import BUBBLEWRAP, PROCESS, Limits, RunReport, Worker

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(
    call_wall_seconds=2,
    call_cpu_seconds=2,
    load_wall_seconds=3,
    memory_bytes=512 << 20,
    processes=32,
    output_bytes=64 << 10,
)
HONEST = """
import ctypes, os, signal, sys, threading, time
import torch

def double(x):
    return x * 2
"""
X = torch.arange(12, dtype=torch.float32).reshape(3, 4)
PLAN = {
    "honest_before": [Call("double", (X,))],
    "attacked": [Call("attacked", (X,))],
    "honest_after": [Call("double", (X,), grad=True)],
}

# (name, body of ``attacked(x)``, what the attacked check must say: a regex over the
# failure reason, the error of its result, or "ok")
ATTACKS = [
    ("sys_exit", "sys.exit(3)", r"SystemExit"),
    ("os_exit", "os._exit(0)", r"ended the process \(os._exit\)"),
    ("raise_system_exit", "raise SystemExit(1)", r"SystemExit"),
    ("keyboard_interrupt", "raise KeyboardInterrupt", r"KeyboardInterrupt"),
    ("base_exception", "raise BaseException('no')", r"BaseException"),
    ("infinite_loop", "while True:\n        pass", r"ran for more than 2 s"),
    ("sleep_forever", "time.sleep(1e9)", r"ran for more than 2 s"),
    ("torch_memory_bomb", "return torch.empty(10**12)", r"RuntimeError|MemoryError"),
    ("bytearray_bomb", "return bytearray(10**11)", r"MemoryError"),
    ("list_bomb", "return [0] * 10**11", r"MemoryError"),
    ("huge_output_tensor", "return torch.zeros(10**9)", r"RuntimeError|MemoryError"),
    ("fork_bomb", "while True:\n        os.fork()", r"BlockingIOError|OSError"),
    ("output_flood", "sys.stdout.buffer.write(b'x' * 10**8)", r"OSError|File too large"),
    ("print_flood", "for _ in range(10**6):\n        print('y' * 100)", r"OSError|more output"),
    ("segfault", "ctypes.string_at(0)", r"segmentation fault"),
    ("abort", "os.abort()", r"aborted"),
    ("kill_parent", "os.kill(os.getppid(), 9)\n    return x", r"PermissionError|parent"),
    ("kill_process_group", "os.killpg(0, 9)", r"killed \(SIGKILL\)"),
    ("kill_everything", "os.kill(-1, 9)\n    return x", r"PermissionError"),
    ("stop_itself", "os.kill(os.getpid(), signal.SIGSTOP)", r"ran for more than 2 s"),
    (
        "ignore_sigterm",
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    while True:\n        pass",
        r"ran for more than 2 s",
    ),
    (
        "ignore_sigxcpu",
        "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True:\n        pass",
        r"ran for more than 2 s|CPU time|SIGKILL",
    ),
    (
        "delete_working_dir",
        "import shutil\n    open('f', 'w').close()\n    shutil.rmtree(os.getcwd())\n    return x",
        r"ok",
    ),
    (
        "garbage_to_every_fd",
        "for fd in range(64):\n        try:\n            os.write(fd, b'\\xff' * 4096)\n"
        "        except OSError:\n            pass\n    return x",
        r"unexpected data",
    ),
    ("close_stdout_stderr", "os.close(1)\n    os.close(2)\n    return x", r"ok"),
    ("close_channel", "os.close(3)\n    return x", r"connection to the grader"),
    (
        "thread_left_running",
        "def later():\n        time.sleep(0.3)\n        os.write(3, b'garbage' * 100)\n"
        "    threading.Thread(target=later, daemon=True).start()\n    return x",
        r"ok",
    ),
    (
        "daemon_left_behind",
        "if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
        "            time.sleep(1000)\n        os._exit(0)\n    return x",
        r"ok",
    ),
    (
        "tensor_subclass",
        "class Fake(torch.Tensor):\n        pass\n    return (x * 2).as_subclass(Fake)",
        r"not a plain torch.Tensor",
    ),
    (
        "raise_cpu_limit",
        "import resource\n    resource.setrlimit(resource.RLIMIT_CPU, (-1, -1))\n"
        "    while True:\n        pass",
        r"ValueError|ran for more than",
    ),
]

# (name, a top-level cell between the honest cell and the one that defines ``attacked``)
TOP_LEVEL = [
    ("top_os_exit", "os._exit(1)", r"ended the process"),
    ("top_sys_exit", "sys.exit(0)", r"SystemExit"),
    ("top_infinite_loop", "while True:\n    pass", r"ran for more than 3 s"),
    ("top_segfault", "ctypes.string_at(0)", r"segmentation fault"),
    ("top_keyboard_interrupt", "raise KeyboardInterrupt", r"KeyboardInterrupt"),
]


@pytest.fixture(scope="module")
def worker():
    with Worker(LIMITS) as worker:
        yield worker


def verdict(report: RunReport, name: str) -> str:
    if name in report.failures:
        return report.failures[name]
    results = report.results[name]
    if results is None:
        return "no result and no reason"
    errors = [result.error for result in results if result.error]
    return errors[0] if errors else "ok"


def assert_honest(report: RunReport, names=("honest_before", "honest_after")) -> None:
    for name in names:
        assert name not in report.failures, report.failures
        (result,) = report.results[name]
        assert result.error is None
        assert type(result.outputs[0]) is torch.Tensor
        assert torch.equal(result.outputs[0], X * 2)
    if "honest_after" in names:
        (result,) = report.results["honest_after"]
        assert result.grads["args[0]"] is not None


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as status:
                text = status.read()
        except OSError:
            continue
        if re.search(rf"^Uid:\s+{uid}\s", text, re.M):
            found.append(int(entry))
    return found


def attacked_cell(body: str) -> str:
    return f"def attacked(x):\n    {body}\n"


@pytest.mark.parametrize("name,body,expected", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_costs_only_the_attacked_check(worker, name, body, expected):
    report = worker.run([HONEST, attacked_cell(body)], PLAN)
    assert_honest(report)
    assert re.search(expected, verdict(report, "attacked")), verdict(report, "attacked")
    if worker.own_user:
        assert processes_of(worker.uid) == []


@pytest.mark.parametrize("name,cell,expected", TOP_LEVEL, ids=[t[0] for t in TOP_LEVEL])
def test_top_level_attack_costs_only_its_cell(worker, name, cell, expected):
    report = worker.run([HONEST, cell, attacked_cell("return x * 3")], PLAN)
    assert_honest(report)
    assert verdict(report, "attacked") == "ok"
    (number, reason), *others = report.cell_errors
    assert number == 2 and not others
    assert re.search(expected, reason), reason


def test_honest_submission_after_the_attacks(worker):
    magics = without_magics("%matplotlib inline\n!ls\nprint('hello')")  # as the reader gives it
    cells = [HONEST, magics, attacked_cell("return x * 3")]
    report = worker.run(cells, PLAN)
    assert_honest(report)
    assert torch.equal(report.results["attacked"][0].outputs[0], X * 3)
    assert report.failures == {} and report.cell_errors == []
    assert report.isolation in (BUBBLEWRAP, PROCESS)


def test_the_child_watches_each_function_for_its_forbidden_operations(worker):
    hidden = "getattr(torch.nn.functional, 'scaled_dot_' + 'product_attention')"
    cells = [HONEST, attacked_cell(f"return {hidden}(x, x, x)")]
    sdpa = "F.scaled_dot_product_attention"
    report = worker.run(cells, PLAN, {"attacked": [sdpa], "double": ["F.layer_norm"]})
    assert_honest(report)
    assert report.results["attacked"][0].forbidden == [sdpa]
    assert report.results["honest_before"][0].forbidden == []


def test_cell_errors_and_undefined_functions(worker):
    report = worker.run(["x = 1/0", "def double(x)\n    pass"], PLAN)
    assert report.cell_errors == [
        (1, "ZeroDivisionError: division by zero"),
        (2, "SyntaxError: expected ':' (<cell 2>, line 1)"),
    ]
    assert verdict(report, "honest_before") == "NameError: double is not defined"


PROBE = """
import importlib, os, socket, sys
import torch

def probe(x, root):
    def fails(action):
        try:
            action()
        except Exception:
            return 1
        return 0
    return torch.tensor([
        fails(lambda: importlib.import_module("solutions")),
        fails(lambda: importlib.import_module("autograder")),
        fails(lambda: open(os.path.join(root, "autograder", "executor.py")).read()),
        fails(lambda: socket.create_connection(("1.1.1.1", 53), timeout=1)),
        int("PYTHONPATH" not in os.environ and os.environ["HOME"] == os.getcwd()),
        int(os.listdir(".") == []),
        int(os.getuid() != 0),
    ])
"""


def probe(worker: Worker) -> list[int]:
    report = worker.run([PROBE], {"probe": [Call("probe", (X, str(REPO)))]})
    (result,) = report.results["probe"]
    assert result.error is None, result.error
    return result.outputs[0].tolist()


def test_child_cannot_see_the_course(worker):
    no_solutions, no_autograder, no_files, no_network, clean_env, empty_dir, user = probe(worker)
    assert no_solutions and no_autograder and clean_env and empty_dir
    if worker.isolation == BUBBLEWRAP:
        assert no_files and no_network
    if worker.own_user:
        assert user


def test_process_level_isolation_and_server_restart():
    weak = os.geteuid() != 0  # without root the level must be accepted explicitly
    with Worker(LIMITS, isolation="process", accept_weak=weak) as worker:
        assert worker.isolation == PROCESS
        no_solutions, no_autograder, *_ = probe(worker)
        assert no_solutions and no_autograder
        for body in ("os._exit(0)", "ctypes.string_at(0)", "while True:\n        pass"):
            report = worker.run([HONEST, attacked_cell(body)], PLAN)
            assert_honest(report)
            assert report.failures.keys() == {"attacked"}
        worker._server.process.kill()
        worker._server.process.wait()
        report = worker.run([HONEST, attacked_cell("return x")], PLAN)
        assert_honest(report)
        assert report.failures == {}


BLOCKED = "bubblewrap is installed but cannot create a sandbox on this host (test)"


@pytest.fixture
def no_bubblewrap(monkeypatch):
    """A host where bubblewrap cannot start; the warning is shown again."""
    import autograder.sandbox.worker as sandbox

    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: BLOCKED)
    monkeypatch.setattr(sandbox, "_warned", False)
    return sandbox


def test_bubblewrap_is_required_when_asked(no_bubblewrap):
    with pytest.raises(no_bubblewrap.IsolationUnavailable, match="cannot create a sandbox"):
        Worker(LIMITS, isolation="bubblewrap")


@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_without_root_the_process_level_needs_explicit_consent(
    no_bubblewrap, monkeypatch, capsys, isolation
):
    monkeypatch.setattr(no_bubblewrap.os, "geteuid", lambda: 1000)
    with pytest.raises(no_bubblewrap.IsolationUnavailable) as refused:
        no_bubblewrap._choose_isolation(isolation)
    assert "--accept-weak-isolation" in str(refused.value)
    assert "kill the grader" in str(refused.value)
    if isolation == "auto":  # it says why bubblewrap cannot start, and how to enable it
        assert BLOCKED in str(refused.value)
    assert no_bubblewrap._choose_isolation(isolation, accept_weak=True) is False
    warning = capsys.readouterr().err
    assert "WARNING" in warning and "kill the grader" in warning


def test_as_root_auto_falls_back_loudly_never_silently(no_bubblewrap, monkeypatch, capsys):
    monkeypatch.setattr(no_bubblewrap.os, "geteuid", lambda: 0)
    assert no_bubblewrap._choose_isolation("auto") is False
    warning = capsys.readouterr().err
    assert "WARNING" in warning and BLOCKED in warning


def test_bubblewrap_problems_say_how_to_enable_it(monkeypatch):
    from autograder.sandbox import launch

    monkeypatch.setattr(launch, "bwrap_path", lambda: None)
    launch.bwrap_problem.cache_clear()
    try:
        assert "apt-get install bubblewrap" in launch.bwrap_problem()
    finally:
        launch.bwrap_problem.cache_clear()
    assert "sysctl" in launch.BWRAP_BLOCKED


# The codec, on its own


def roundtrip_call(call: Call) -> Call:
    packer = TensorPacker()
    meta = encode_call(call, packer)
    reader = FrameReader()
    reader.feed(frame(meta, packer.tensors))
    meta, tensors = reader.next()
    return decode_call(meta, tensors)


def test_calls_and_results_roundtrip():
    call = Call("f", (X, 3, (X[0], None)), {"dtype": torch.float64}, device="meta", grad=True)
    back = roundtrip_call(call)
    assert torch.equal(back.args[0], X) and back.args[1:2] == (3,)
    assert torch.equal(back.args[2][0], X[0]) and back.kwargs == {"dtype": torch.float64}
    assert (back.device, back.grad) == ("meta", True)
    result = Result("tuple[tensor,tensor]", [X.T, torch.empty(2, 3, device="meta")], {"a": None})
    packer = TensorPacker()
    decoded = decode_result(encode_result(result, packer), packer.tensors)
    assert torch.equal(decoded.outputs[0], X.T) and decoded.grads == {"a": None}
    assert decoded.outputs[1].device.type == "meta" and decoded.outputs[1].shape == (2, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 64,
        frame({"a": 1})[:9] + b"{not json",
        b"\xa7" + (10**9).to_bytes(4, "big") + b"\x00\x00\x00\x00",
        b"\xa7\x00\x00\x00\x02\x00\x00\x00\x05[]hello",
    ],
)
def test_garbage_frames_are_malformed(data):
    reader = FrameReader()
    reader.feed(data + b"\x00" * 64)
    with pytest.raises(Malformed):
        reader.next()


@pytest.mark.parametrize(
    "meta",
    [
        None,
        {"outputs": "x"},
        {"structure": "t", "outputs": [{"key": "missing"}], "forbidden": [], "grads": {}},
        {"structure": "t", "outputs": [{"meta": [-1], "dtype": "float32"}], "forbidden": []},
        {"structure": "t", "outputs": [{"meta": [2], "dtype": "os.system"}], "forbidden": []},
        {"structure": 5, "outputs": [], "forbidden": [], "grads": {}, "inputs_after": {}},
    ],
)
def test_bad_results_are_malformed(meta):
    with pytest.raises(Malformed):
        decode_result(meta, {})


def test_a_hang_costs_one_time_limit_per_function(worker):
    hanging = "def stuck(x):\n    while True:\n        pass\n"
    plan = {
        "honest_before": [Call("double", (X,))],
        **{f"stuck_{n}": [Call("stuck", (X,))] for n in range(4)},
        "honest_after": [Call("double", (X,), grad=True)],
    }
    spawned = []
    spawn = worker.spawn
    worker.spawn = lambda spec: spawned.append(spec) or spawn(spec)
    try:
        report = worker.run([HONEST, hanging], plan)
    finally:
        del worker.spawn
    assert_honest(report)
    reasons = {report.failures[f"stuck_{n}"] for n in range(4)}
    assert reasons == {"your code ran for more than 2 s"}
    assert len(spawned) == 2  # one child hung once and was replaced: one time limit, not four


def test_a_child_that_cannot_be_confined_is_the_graders_failure():
    from autograder.sandbox.worker import HarnessFailure

    broken = dataclasses.replace(LIMITS, processes="not a number")  # setrlimit raises
    with Worker(broken, isolation="auto") as worker, pytest.raises(HarnessFailure):
        worker.run([HONEST], {"honest_before": [Call("double", (X,))]})


SIGNALS_PROBE = """
import os, signal, sys
from autograder.runtime import seccomp

def attempt(call):
    try:
        call()
        return "ok"
    except PermissionError:
        return "refused"

parent, other = os.getppid(), int(sys.argv[1])
os.setsid()
assert seccomp.install()
signal.signal(signal.SIGUSR1, lambda *args: None)
print(attempt(lambda: os.kill(parent, signal.SIGTERM)), attempt(lambda: os.kill(other, 9)),
      attempt(lambda: os.kill(-1, 9)), attempt(lambda: os.kill(parent, 0)),
      attempt(lambda: os.kill(os.getpid(), signal.SIGUSR1)), attempt(lambda: os.killpg(0, 0)))
"""


def test_seccomp_filter_lets_a_child_signal_only_itself():
    other = subprocess.Popen(["sleep", "30"])
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNALS_PROBE, str(other.pid)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert done.stdout.split() == ["refused", "refused", "refused", "ok", "ok", "ok"], (
            done.stdout + done.stderr
        )
        assert other.poll() is None
    finally:
        other.kill()
