"""A seccomp filter: a grading child may signal itself, never another process.

Without a user of its own (rootless bubblewrap, or the process level without root), a child
shares its user with the fork server and could kill or trace it. This filter makes every
signal to another process fail with EPERM, as it does for a child with a user of its own:

- ``kill(pid, sig)``: allowed for the child itself (``pid`` its own, 0 or minus its own
  process group, which ``setsid`` made equal to its pid) and for signal 0, which delivers
  nothing (the child's harness probes for leftover processes with it);
- ``tkill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``: allowed for the
  child's own thread group;
- ``pidfd_send_signal``, ``ptrace``, ``process_vm_readv``, ``process_vm_writev``: refused.

Processes the child forks inherit the filter with the same pid, so they may signal the
child but not each other, nor the fork server. The filter is written as classic BPF for
x86-64 and AArch64; on another architecture ``install`` returns False and nothing changes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_EPERM = 0x00050000 | errno.EPERM
LOAD_WORD, JUMP_IF_EQUAL, RETURN = 0x20, 0x15, 0x06
# Offsets in struct seccomp_data: the syscall number, the architecture, the low 32 bits of
# each argument (little-endian on both architectures).
NR, ARCH = 0, 4


def _arg(index: int) -> int:
    return 16 + 8 * index


# (audit architecture, syscall numbers by name)
SYSCALLS = {
    "x86_64": (
        0xC000003E,
        dict(
            kill=62,
            tkill=200,
            tgkill=234,
            rt_sigqueueinfo=129,
            rt_tgsigqueueinfo=297,
            pidfd_send_signal=424,
            ptrace=101,
            process_vm_readv=310,
            process_vm_writev=311,
        ),
    ),
    "aarch64": (
        0xC00000B7,
        dict(
            kill=129,
            tkill=130,
            tgkill=131,
            rt_sigqueueinfo=138,
            rt_tgsigqueueinfo=240,
            pidfd_send_signal=424,
            ptrace=117,
            process_vm_readv=270,
            process_vm_writev=271,
        ),
    ),
}


def program(own_pid: int, machine: str) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jump if true, jump if false, k) instructions."""
    arch, numbers = SYSCALLS[machine]
    own = own_pid & 0xFFFFFFFF
    own_group = -own_pid & 0xFFFFFFFF
    # Per syscall: (argument to load, values of it that are allowed), in order; anything
    # else is refused. An empty list refuses the syscall outright.
    rules = {
        "kill": [(1, (0,)), (0, (own, 0, own_group))],  # signal 0, or the child itself
        "tkill": [(0, (own,))],
        "tgkill": [(0, (own,))],
        "rt_sigqueueinfo": [(0, (own,))],
        "rt_tgsigqueueinfo": [(0, (own,))],
        "pidfd_send_signal": [],
        "ptrace": [],
        "process_vm_readv": [],
        "process_vm_writev": [],
    }
    # Layout (classic BPF jumps only forward): check the architecture, load the number, one
    # jump per rule, ALLOW (any other syscall), the rules' blocks (each ending in EPERM), the
    # ALLOW that the blocks' tests jump to, and EPERM for a foreign architecture.
    header = 3
    starts, position = {}, header + len(rules) + 1
    for name, tests in rules.items():
        starts[name] = position
        position += sum(1 + len(values) for _, values in tests) + 1
    allow = position
    foreign = position + 1
    code = [
        (LOAD_WORD, 0, 0, ARCH),
        (JUMP_IF_EQUAL, 0, foreign - 2, arch),
        (LOAD_WORD, 0, 0, NR),
    ]
    for name in rules:
        code.append((JUMP_IF_EQUAL, starts[name] - len(code) - 1, 0, numbers[name]))
    code.append((RETURN, 0, 0, RET_ALLOW))
    for tests in rules.values():
        for argument, values in tests:
            code.append((LOAD_WORD, 0, 0, _arg(argument)))
            for value in values:
                code.append((JUMP_IF_EQUAL, allow - len(code) - 1, 0, value))
        code.append((RETURN, 0, 0, RET_EPERM))
    code.append((RETURN, 0, 0, RET_ALLOW))
    code.append((RETURN, 0, 0, RET_EPERM))
    assert len(code) == foreign + 1
    return code


def install(own_pid: int | None = None) -> bool:
    """Install the filter in this process (irreversibly); False where it is not supported."""
    machine = platform.machine()
    if machine not in SYSCALLS:
        return False
    instructions = program(own_pid or os.getpid(), machine)
    packed = b"".join(struct.pack("HBBI", *step) for step in instructions)
    filters = ctypes.create_string_buffer(packed, len(packed))
    fprog = struct.pack("HxxxxxxP", len(instructions), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    buffer = ctypes.create_string_buffer(fprog, len(fprog))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, buffer, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True
