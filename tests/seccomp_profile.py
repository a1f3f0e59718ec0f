"""Engine seccomp profiles (docker / containers-common `seccomp.json`) -> spec.Seccomp.

Engines do not put that file in config.json as it is: they resolve `archMap` to the
native arch and its sub-arches and keep the rules whose `includes`/`excludes` (arches,
caps, minKernel) match the container.  This module does the same resolution, so the
benchmark and the tests can use podman's real default profile, and `ocirun spec` could
emit one.
"""

from __future__ import annotations

import os

from ocirun.spec import Seccomp, SyscallArg, SyscallRule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

# containers.conf default_capabilities (podman 4)
PODMAN_DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
CONTAINERS_PROFILE = "/usr/share/containers/seccomp.json"

# uname machine -> (Go arch name used in profiles, SCMP arch of archMap)
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"), "i686": ("386", "SCMP_ARCH_X86"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"), "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"), "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}


def _kernel_version() -> tuple[int, ...]:
    release = os.uname().release.split("-")[0]
    parts = []
    for p in release.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2])


def _matches(cond: dict[str, Any] | None, goarch: str, caps: set[str],
             kernel: tuple[int, ...], include: bool) -> bool:
    """Whether an includes (all must hold) or excludes (any suffices) block applies."""
    cond = cond or {}
    checks = []
    if cond.get("arches"):
        checks.append(goarch in cond["arches"])
    if cond.get("caps"):
        held = [c in caps for c in cond["caps"]]
        checks.append(all(held) if include else any(held))
    if cond.get("minKernel"):
        checks.append(kernel >= _version(cond["minKernel"]))
    return all(checks) if include else any(checks)


def from_engine_profile(profile: dict[str, Any], caps: Iterable[str] = PODMAN_DEFAULT_CAPS,
                        machine: str | None = None) -> Seccomp:
    """Resolve an engine profile for this machine and a capability set."""
    goarch, native = _MACHINES.get(machine or os.uname().machine, ("", ""))
    capset = set(caps)
    kernel = _kernel_version()
    arches: list[str] = []
    for entry in profile.get("archMap") or ():
        if entry.get("architecture") == native:
            arches = [native, *entry.get("subArchitectures", ())]
    if not arches:
        arches = list(profile.get("architectures") or ())
    rules = []
    for call in profile.get("syscalls") or ():
        if not _matches(call.get("includes"), goarch, capset, kernel, include=True):
            continue
        if call.get("excludes") and _matches(call["excludes"], goarch, capset, kernel,
                                             include=False):
            continue
        names = tuple(call.get("names") or ([call["name"]] if call.get("name") else []))
        if not names:
            continue
        args = tuple(SyscallArg(index=a["index"], value=a["value"], op=a["op"],
                                value_two=a.get("valueTwo", 0))
                     for a in call.get("args") or ())
        rules.append(SyscallRule(names=names, action=call["action"],
                                 errno_ret=call.get("errnoRet"), args=args))
    return Seccomp(default_action=profile["defaultAction"],
                   default_errno_ret=profile.get("defaultErrnoRet"),
                   architectures=tuple(arches), flags=tuple(profile.get("flags") or ()),
                   listener_path=profile.get("listenerPath"),
                   listener_metadata=profile.get("listenerMetadata"),
                   syscalls=tuple(rules))


def load_engine_profile(path: str = CONTAINERS_PROFILE,
                        caps: Iterable[str] = PODMAN_DEFAULT_CAPS) -> Seccomp:
    import json

    with open(path) as f:
        return from_engine_profile(json.load(f), caps)
