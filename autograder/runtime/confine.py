"""Confine a freshly forked grading child before it runs anything of the student's.

In order: a new session (its own process group), the file descriptors it may keep
(0 = /dev/null, 1 and 2 = the capped output file, 3 = the data channel; all others
closed), one torch thread, resource limits, an unprivileged user of its own (when the
fork server may switch users), a fresh working directory, a scrubbed environment, a
``sys.path`` that holds only the Python installation (no course, no grader code), and a
seccomp filter that lets it signal only itself (``seccomp``).
"""

from __future__ import annotations

import os
import resource
import signal
import sys

import torch

from . import seccomp

KEEP_FD_FLOOR = 100  # descriptors are parked above this while they are rearranged


def confine(spec: dict, data_fd: int, output_fd: int) -> None:
    os.setsid()
    _arrange_fds(data_fd, output_fd)
    _reset_signals()
    torch.set_num_threads(1)
    _set_limits(spec)
    if spec["uid"] is not None:
        _drop_user(spec["uid"], spec["gid"])
    os.chdir(spec["workdir"])
    _scrub_environment(spec["workdir"])
    _scrub_path()
    _reopen_streams()
    seccomp.install(os.getpid())


def _arrange_fds(data_fd: int, output_fd: int) -> None:
    import fcntl

    parked_data = fcntl.fcntl(data_fd, fcntl.F_DUPFD, KEEP_FD_FLOOR)
    parked_output = fcntl.fcntl(output_fd, fcntl.F_DUPFD, KEEP_FD_FLOOR)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(parked_output, 1)
    os.dup2(parked_output, 2)
    os.dup2(parked_data, 3)
    os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def _set_limits(spec: dict) -> None:
    limits = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: spec["processes"],
        resource.RLIMIT_FSIZE: spec["output_bytes"],
    }
    if spec["memory_bytes"] is not None:
        limits[resource.RLIMIT_AS] = _address_space() + spec["memory_bytes"]
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    # CPU: the soft limit is raised per call; the hard one bounds the whole child.
    budget = int(spec["cpu_budget_seconds"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (int(spec["load_cpu_seconds"]) + 1, budget))


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _drop_user(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # also drops every capability


def _scrub_environment(workdir: str) -> None:
    os.environ.clear()
    os.environ.update(
        HOME=workdir,
        TMPDIR=workdir,
        PATH="/usr/local/bin:/usr/bin:/bin",
        LANG="C.UTF-8",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )


def _scrub_path() -> None:
    """Keep only the Python installation's own directories on ``sys.path``."""
    prefixes = {
        os.path.realpath(p)
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }

    def inside(entry: str) -> bool:
        real = os.path.realpath(entry) if entry else ""
        return any(real == p or real.startswith(p + os.sep) for p in prefixes)

    sys.path[:] = [entry for entry in sys.path if entry and inside(entry)]
    sys.path_importer_cache.clear()


def _reopen_streams() -> None:
    options = dict(encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stdin = open(0, **options)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, **options)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, **options)  # noqa: SIM115
