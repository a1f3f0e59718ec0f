"""The -ENOSYS stub runc prepends to filters whose default action denies.

Why: with a deny-by-default profile, a syscall newer than the profile (clone3, say, for
a profile written before it existed) gets the default errno, typically EPERM; libc only
falls back to the older syscall on ENOSYS, so the program breaks.  A syscall whose
number is above every number the profile names is one the profile's author could not
have known about, so it gets ENOSYS ("this kernel lacks it") instead.  Numbers at or
below the highest named one keep the profile's default action.

Skipped, as in runc, when the default action lets syscalls run (ALLOW, LOG, TRACE) or
when defaultErrnoRet is already ENOSYS.  Unlike runc, the native arch always gets a
section, also when `architectures` is empty.

The stub is a few classic BPF instructions put in front of libseccomp's program; jumps
are relative, so the libseccomp part needs no patching:
    ld  [arch]
    jeq ARCH_A, sec_A           (one per arch; other arches: straight to the filter)
    ja  filter
sec_A:
    ld  [nr]
    jset X32_BIT, sec_A_x32     (x86_64 only: x32 shares the audit arch, bit 30 set)
    jeq 0, enosys               (s390 only: unknown syscalls arrive as 0)
    jgt MAX_A, enosys, filter
    ...
enosys:
    ret ERRNO(ENOSYS)
filter:
    <libseccomp's program>
"""

from __future__ import annotations

import errno
import struct

from ocirun.spec import Seccomp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LD_W_ABS, _JEQ, _JGT, _JSET, _JA, _RET = 0x20, 0x15, 0x25, 0x45, 0x05, 0x06
_OFF_NR, _OFF_ARCH = 0, 4
_X32_BIT = 0x40000000
_RET_ENOSYS = 0x00050000 | errno.ENOSYS
_AUDIT_X86_64 = 62 | 0x80000000 | 0x40000000
_S390 = (22, 22 | 0x80000000)  # AUDIT_ARCH_S390, AUDIT_ARCH_S390X
_PERMISSIVE = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE")


def wanted(seccomp: Seccomp) -> bool:
    if seccomp.default_action in _PERMISSIVE:
        return False
    return not (seccomp.default_action == "SCMP_ACT_ERRNO"
                and seccomp.default_errno_ret == errno.ENOSYS)


def highest_syscalls(sc: Any, seccomp: Seccomp, arch_tokens: list[int]) -> dict[int, int]:
    """libseccomp arch token -> the highest syscall number the profile names on it."""
    names = {n for rule in seccomp.syscalls for n in rule.names}
    out = {}
    for token in arch_tokens:
        numbers = [sc.resolve_syscall(token, n) for n in names]
        top = max((x for x in numbers if x >= 0), default=-1)  # <0: unknown or pseudo
        if top >= 0:
            out[token] = top
    return out


Insn = tuple[int, "str | int", "str | int", "str | int"]  # (op, jt, jf, k)


def stub(highest: dict[int, int], x32_token: int) -> bytes:
    """Assemble the stub for {arch token: highest syscall number}; b"" if nothing to do."""
    # Group by what the kernel reports in seccomp_data.arch: x32 reports x86_64.
    by_audit: dict[int, dict[str, int]] = {}
    for token, top in highest.items():
        kind = "x32" if token == x32_token else "main"
        by_audit.setdefault(_AUDIT_X86_64 if kind == "x32" else token, {})[kind] = top
    if not by_audit:
        return b""

    code: list[Insn | str] = [(_LD_W_ABS, 0, 0, _OFF_ARCH)]  # a str is a label
    code += [(_JEQ, f"arch{audit}", 0, audit) for audit in by_audit]
    code.append((_JA, 0, 0, "filter"))
    for audit, tops in by_audit.items():
        code += [f"arch{audit}", (_LD_W_ABS, 0, 0, _OFF_NR)]
        if audit == _AUDIT_X86_64:
            code.append((_JSET, "x32" if "x32" in tops else "filter", 0, _X32_BIT))
        if audit in _S390:
            code.append((_JEQ, "enosys", 0, 0))
        code.append((_JGT, "enosys", "filter", tops["main"]) if "main" in tops
                    else (_JA, 0, 0, "filter"))
        if audit == _AUDIT_X86_64 and "x32" in tops:
            code += ["x32", (_JGT, "enosys", "filter", tops["x32"])]
    code += ["enosys", (_RET, 0, 0, _RET_ENOSYS), "filter"]
    return _assemble(code)


def _assemble(code: list[Insn | str]) -> bytes:
    """Resolve labels to relative jumps; b"" (no stub) if a jump does not fit 8 bits."""
    where: dict[str, int] = {}
    insns: list[Insn] = []
    for item in code:
        if isinstance(item, str):
            where[item] = len(insns)
        else:
            insns.append(item)
    out = []
    for i, (op, jt, jf, k) in enumerate(insns):
        rel = [where[x] - i - 1 if isinstance(x, str) else x for x in (jt, jf, k)]
        if op != _JA and not (0 <= rel[0] <= 255 and 0 <= rel[1] <= 255):
            return b""  # cannot happen with a handful of arches; then no stub, as before
        out.append(struct.pack("=HBBI", op, rel[0], rel[1], rel[2]))
    return b"".join(out)


def build(sc: Any, seccomp: Seccomp, arch_tokens: list[int], x32_token: int) -> bytes:
    """The stub for this profile on these arches (libseccomp tokens), or b""."""
    if not wanted(seccomp):
        return b""
    return stub(highest_syscalls(sc, seccomp, arch_tokens), x32_token)
