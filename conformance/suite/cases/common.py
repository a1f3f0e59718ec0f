"""Sentences several cases cite, and small shared checks."""

from __future__ import annotations

import re
from typing import Any

from suite.harness import Ctx, Fail

# runtime.md#create: the general duty behind every config property without its own MUST.
APPLY = ("All of the properties configured in config.json except for process MUST be "
         "applied. ... If the runtime cannot apply a property as specified in the "
         "configuration, it MUST generate an error and a new container MUST NOT be created.")
APPLY_REF = "runtime.md#create"
# runtime.md#start: process properties.
RUN_PROCESS = "This operation MUST run the user-specified program as specified by process."
# config.md#valid-values
VALID_VALUES = ("Runtimes that are reading or processing this configuration file MUST "
                "generate an error when invalid or unsupported values are encountered.")
# runtime.md#create: an error leaves no container.
NOT_CREATED = ("If the runtime cannot apply a property as specified in the configuration, "
               "it MUST generate an error and a new container MUST NOT be created.")

SLEEP = "sleep 300"  # a container that stays up until killed


def expect_create_error(t: Ctx, cfg: dict[str, Any], what: str, prepare: Any = None) -> str:
    """create must fail, and leave no container behind (state errors or nothing)."""
    b = t.bundle(cfg, prepare=prepare)
    c = t.create(b, ok=False)
    if c.create is not None and c.create.rc == 0:
        st = t.state(c.id, required=False) or {}
        raise Fail(f"{what}: expected create to fail, it succeeded "
                   f"(status {st.get('status')!r})")
    st = t.state(c.id, required=False)
    if st is not None:
        raise Fail(f"{what}: create failed ({c.create}) but a container exists: "
                   f"status {st.get('status')!r}")
    left = t.cgroup_exists(b.config["linux"]["cgroupsPath"]) if "linux" in b.config else []
    if left:
        raise Fail(f"{what}: create failed but left cgroup {left[0]}")
    return f"error: {c.create}"


def stat_line(path: str) -> str:
    """Shell snippet printing `path=<type> <major>:<minor> <mode> <uid>:<gid>`."""
    return (f"if [ -e {path} ] || [ -L {path} ]; then echo \"{path}=$(stat -c '%F %t:%T %a "
            f"%u:%g' {path})\"; else echo '{path}=missing'; fi")


def dev_numbers(raw: str) -> tuple[int, int] | None:
    """'c5:2' style hex from stat %t:%T -> (major, minor)."""
    m = re.match(r"^([0-9a-f]+):([0-9a-f]+)$", raw)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


CAPS = (  # index == capability number
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


def cap_mask(names: list[str]) -> int:
    mask = 0
    for n in names:
        mask |= 1 << CAPS.index(n)
    return mask


def cap_names(mask: int) -> list[str]:
    return [n for i, n in enumerate(CAPS) if mask >> i & 1] + \
        [f"cap{i}" for i in range(len(CAPS), 64) if mask >> i & 1]
