"""Start the fork server: a private copy of its code, a clean environment, bubblewrap.

The server's code (the package ``autograder.runtime``, free of secrets) is copied into a
fresh directory as a package named ``sandbox_runtime``, so the server never imports
anything from the course tree. Under bubblewrap that copy is
the only thing of ours it can see, read-only at ``/opt/grading``; the system and the
Python installation are read-only, /tmp is a small private tmpfs, and there is no
network.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "sandbox_runtime"
SANDBOX_CODE_DIR = "/opt/grading"
# Capabilities the server keeps under bubblewrap when started as root: switch users,
# give each child its working directory, kill and clean up after it.
SERVER_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE")
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SERVER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def stage_runtime() -> Path:
    """Copy the server's code into a fresh directory; return that directory."""
    root = Path(tempfile.mkdtemp(prefix="grading-runtime-"))
    package = root / PACKAGE
    package.mkdir()
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    for source in runtime.glob("*.py"):
        shutil.copyfile(source, package / source.name)
    for path in (root, package, *package.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def python_command(code_dir: str, control_fd: int) -> list[str]:
    bootstrap = (
        f"import sys; sys.path.insert(0, {code_dir!r}); from {PACKAGE}.server import main; main()"
    )
    return [sys.executable, "-I", "-c", bootstrap, str(control_fd)]


@functools.cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def bwrap_command(code_dir: Path, disk_bytes: int) -> list[str]:
    """The bubblewrap prefix that runs the server with no view of the course."""
    command = [bwrap_path(), "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    command += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:  # privileged: keep only what the server needs
        command += ["--cap-drop", "ALL"]
        for capability in SERVER_CAPABILITIES:
            command += ["--cap-add", capability]
    else:
        command += ["--unshare-user"]
    for name, value in SERVER_ENV.items():
        command += ["--setenv", name, value]
    command += _system_binds()
    # The private /tmp first: a Python installation or virtual environment that lives
    # under /tmp is then bound on top of it rather than hidden by it.
    command += ["--size", str(disk_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    for path in _python_dirs():
        command += [*_parents(path), "--ro-bind", path, path]
    command += ["--proc", "/proc", "--dev", "/dev"]
    command += _gpu_binds()
    command += [*_parents(SANDBOX_CODE_DIR), "--ro-bind", str(code_dir), SANDBOX_CODE_DIR]
    command += ["--chdir", "/"]
    return command


def _system_binds() -> list[str]:
    binds = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            binds += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds += ["--ro-bind", path, path]
    return binds


def _python_dirs() -> list[str]:
    """The Python installation and the virtual environment, outside the system dirs."""
    dirs = []
    for prefix in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix):
        for path in {prefix, os.path.realpath(prefix)}:
            if path.startswith(("/usr/", "/etc/")) or path in dirs:
                continue
            if not any(path.startswith(d + "/") for d in dirs):
                dirs.append(path)
    return dirs


def _parents(path: str) -> list[str]:
    """Create the parent directories world-readable (they are empty tmpfs dirs)."""
    args = []
    parts = Path(path).parts[1:-1]
    for index in range(1, len(parts) + 1):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:index])]
    return args


def _gpu_binds() -> list[str]:
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    return [arg for device in devices for arg in ("--dev-bind", device, device)]


BWRAP_MISSING = (
    "bubblewrap is not installed. Ask an administrator to install it: `apt-get install"
    " bubblewrap` (Debian, Ubuntu), `dnf install bubblewrap` (Fedora)."
)
BWRAP_BLOCKED = (
    "bubblewrap is installed but cannot create a sandbox on this host ({error}). This host"
    " probably forbids unprivileged user namespaces; an administrator can allow them with"
    " `sysctl -w kernel.unprivileged_userns_clone=1` (Debian),"
    " `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10 and later) or"
    " `sysctl -w user.max_user_namespaces=15000` (others); in a container, start it with user"
    " namespaces allowed."
)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot start the sandbox here, with how to enable it; None if it can.

    Cached per process: the probe starts a sandbox.
    """
    if bwrap_path() is None:
        return BWRAP_MISSING
    code_dir = stage_runtime()
    try:
        probe = [*bwrap_command(code_dir, 1 << 20), sys.executable, "-I", "-S", "-c", "pass"]
        done = subprocess.run(probe, capture_output=True, timeout=30, env=SERVER_ENV)
    except (OSError, subprocess.SubprocessError) as error:
        return BWRAP_BLOCKED.format(error=f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(code_dir, ignore_errors=True)
    if done.returncode == 0:
        return None
    said = done.stderr.decode(errors="replace").strip().splitlines()
    return BWRAP_BLOCKED.format(error=said[-1] if said else f"exit status {done.returncode}")


def bwrap_works() -> bool:
    """Whether bubblewrap can start the sandbox on this machine."""
    return bwrap_problem() is None


def start_server(code_dir: Path, control_fd: int, bubblewrap: bool, disk_bytes: int, log):
    """Start the fork server; ``control_fd`` is inherited under the same number."""
    inside = SANDBOX_CODE_DIR if bubblewrap else str(code_dir)
    command = python_command(inside, control_fd)
    if bubblewrap:
        command = bwrap_command(code_dir, disk_bytes) + command
    return subprocess.Popen(
        command,
        pass_fds=(control_fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=SERVER_ENV,
        cwd="/",
        start_new_session=True,
    )
