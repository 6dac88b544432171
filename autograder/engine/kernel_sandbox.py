"""The notebook kernel of ``nbgrader autograde``, inside bubblewrap with none of the course.

``nbgrader autograde`` runs each submitted notebook in a Jupyter kernel, and a student's
code in that kernel can do whatever the kernel can. Started by ``SandboxedExecute`` (the
course's replacement for nbgrader's ``Execute`` step, see ``exercises/nbgrader_config.py``),
the kernel sees only:

- the system and the Python installation, read-only (as the grader's sandbox does);
- the notebook's own folder under ``autograded/``, where nbgrader runs it, read-only:
  ``nbgrader generate_feedback`` copies every file of that folder into the feedback it
  releases, so a link planted there to a solution file would be released in full;
- a private folder holding the connection file and the kernel's sockets (ZeroMQ over
  Unix sockets: the kernel has no network at all);
- a small private ``/tmp``, which is also its home.

So ``solutions/``, ``autograder/``, the source notebooks, the gradebook, the grader's
records and other students' submissions do not exist for it: not on its Python path, not
on its file system. Its environment is rebuilt from scratch (no ``PYTHONPATH``), and it
runs without capabilities in its own PID, IPC and network namespaces. Where bubblewrap
cannot start, ``SandboxedExecute`` runs nothing and says why: the hidden test cells still
get the sandboxed grader's verdict (``autograder.engine.nbgrader_steps``), only the outputs
of the student's own cells are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbgrader.preprocessors import Execute

from autograder.sandbox import launch

KERNEL_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "MPLBACKEND": "agg",
}
KERNEL_TMP_BYTES = 512 * 2**20


def bwrap_kernel_prefix(notebook_dir: str, runtime_dir: str) -> list[str]:
    """The bubblewrap prefix of a kernel that sees ``notebook_dir`` (read-only) and
    ``runtime_dir`` only (and the system and the Python installation, read-only)."""
    command = [launch.bwrap_path(), "--unshare-net", "--unshare-pid", "--unshare-ipc"]
    command += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--clearenv"]
    command += ["--cap-drop", "ALL"] if os.geteuid() == 0 else ["--unshare-user"]
    for name, value in {**KERNEL_ENV, **_passed_env()}.items():
        command += ["--setenv", name, value]
    command += launch._system_binds()
    # The private /tmp first, so that folders under /tmp are bound on top of it.
    command += ["--size", str(KERNEL_TMP_BYTES), "--perms", "1777", "--tmpfs", "/tmp"]
    for path in launch._python_dirs():
        command += [*launch._parents(path), "--ro-bind", path, path]
    command += ["--proc", "/proc", "--dev", "/dev", *launch._gpu_binds()]
    command += [*launch._parents(runtime_dir), "--bind", runtime_dir, runtime_dir]
    command += [*launch._parents(notebook_dir), "--ro-bind", notebook_dir, notebook_dir]
    command += ["--chdir", notebook_dir]
    return command


def _passed_env() -> dict[str, str]:
    """What nbgrader tells the kernel (``NBGRADER_EXECUTION``), and the GPU selection."""
    names = ("NBGRADER_EXECUTION", "CUDA_VISIBLE_DEVICES")
    return {name: os.environ[name] for name in names if name in os.environ}


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel starts inside bubblewrap (see the module's docstring).

    The connection file and the sockets live in a private folder bound into the sandbox;
    interrupts go as messages, since signals to bubblewrap do not reach the kernel.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runtime_dir = tempfile.mkdtemp(prefix="sandboxed-kernel-")
        self.connection_file = os.path.join(self.runtime_dir, "kernel.json")
        self.transport = "ipc"
        self.ip = os.path.join(self.runtime_dir, "kernel-ipc")

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        command = super().format_kernel_cmd(extra_arguments)
        notebook_dir = os.path.realpath(self._launch_args.get("cwd") or os.getcwd())
        return bwrap_kernel_prefix(notebook_dir, self.runtime_dir) + command

    async def _async_launch_kernel(self, kernel_cmd, **kw) -> None:
        self.kernel_spec.interrupt_mode = "message"
        kw = {**kw, "env": {}, "stdin": subprocess.DEVNULL}
        kw.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def kernel_sandbox_problem() -> str | None:
    """Why the kernel cannot be sandboxed here (None when it can)."""
    return launch.bwrap_problem()


class SandboxedExecute(Execute):
    """nbgrader's ``Execute`` step with the kernel in bubblewrap; without bubblewrap, no
    student code runs in a kernel at all (the step logs why and leaves the notebook as is)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", SandboxedKernelManager)
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        problem = kernel_sandbox_problem()
        if problem is not None:
            self.log.warning(
                "The notebook was not run in a kernel: its code could read the course there,"
                " and %s The hidden test cells get the sandboxed grader's verdict all the"
                " same; only the outputs of the student's own cells are missing.",
                problem,
            )
            return nb, resources
        resources = resources or {}
        path = Path(resources.get("metadata", {}).get("path") or ".").resolve()
        resources.setdefault("metadata", {})["path"] = str(path)
        return super().preprocess(nb, resources, km=km)
