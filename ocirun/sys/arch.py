"""Syscall numbers of the calls ocirun makes through syscall(2), per architecture.

glibc 2.36 wraps none of these but renameat2 (2.28+, taken here for the older C
libraries), and the older ones differ between architectures
(the newer ones, from 424 on, were given one number everywhere).  Only the
architectures listed are claimed; on any other, a call fails with ENOSYS rather than
run whatever that number means there.  tests/test_sys_arch.py checks every number
against libseccomp's own tables.
"""

from __future__ import annotations

import errno
import os

# From 424 on the tables were unified: the same number on every architecture.
_UNIFIED = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "clone3": 435, "close_range": 436, "openat2": 437,
            "mount_setattr": 442}
# asm-generic's table (aarch64, riscv64 and the other new ports).
_GENERIC = {"pivot_root": 41, "keyctl": 219, "renameat2": 276, "seccomp": 277, "bpf": 280,
            **_UNIFIED}

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "renameat2": 316, "seccomp": 317, "bpf": 321,
               **_UNIFIED},
    "aarch64": _GENERIC,
    "riscv64": _GENERIC,
    "ppc64le": {"pivot_root": 203, "keyctl": 271, "renameat2": 357, "seccomp": 358, "bpf": 361,
                **_UNIFIED},
    "s390x": {"pivot_root": 217, "keyctl": 280, "renameat2": 347, "seccomp": 348, "bpf": 351,
              **_UNIFIED},
}

# libseccomp's names of the architectures above (pyseccomp.Arch members), for the test.
SECCOMP_ARCH = {"x86_64": "X86_64", "aarch64": "AARCH64", "riscv64": "RISCV64",
                "ppc64le": "PPC64LE", "s390x": "S390X"}

MACHINE = os.uname().machine


def number(name: str, machine: str = MACHINE) -> int:
    """The syscall number of `name` on `machine` (this one by default)."""
    try:
        return SYSCALLS[machine][name]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{name}: no syscall number known for {machine} "
                      "(ocirun supports " + ", ".join(SYSCALLS) + ")") from None
