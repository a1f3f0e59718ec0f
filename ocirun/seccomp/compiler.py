"""linux.seccomp -> raw BPF program, with libseccomp (through pyseccomp).

Only imported on a cache miss: `import pyseccomp` loads libseccomp and costs ~26 ms.
The semantics follow runc (libcontainer/seccomp), which is what engines' profiles are
written against:
  * SCMP_ACT_KILL is KILL_THREAD; ERRNO and TRACE without errnoRet return EPERM;
  * a rule whose action equals the default action is redundant and skipped
    (libseccomp would refuse it);
  * a syscall name libseccomp cannot resolve is skipped, so a profile written for a newer
    kernel still loads;
  * several conditions on the same argument become separate rules (OR), otherwise the
    conditions of a rule are ANDed;
  * MASKED_EQ: `value` is the mask and `valueTwo` the datum;
  * binary-tree optimisation for long profiles (faster syscall path in the container);
  * runc's -ENOSYS stub in front of deny-by-default filters (see enosys.py).
The native architecture is always in the filter (libseccomp adds it); `architectures`
adds the others.
"""

from __future__ import annotations

import errno
import os

from ocirun.errors import ConfigError, OciError
from ocirun.seccomp import enosys
from ocirun.spec import Seccomp, SyscallRule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_P = "linux.seccomp"

# AUDIT_ARCH_* tokens, which are libseccomp's SCMP_ARCH_* values (<linux/audit.h>, <elf.h>).
_LE, _64, _N32 = 0x40000000, 0x80000000, 0x20000000
ARCH_TOKENS: dict[str, int] = {
    "SCMP_ARCH_X86": 3 | _LE,
    "SCMP_ARCH_X86_64": 62 | _64 | _LE,
    "SCMP_ARCH_X32": 62 | _LE,  # libseccomp's pseudo token; the kernel sees x86_64
    "SCMP_ARCH_ARM": 40 | _LE,
    "SCMP_ARCH_AARCH64": 183 | _64 | _LE,
    "SCMP_ARCH_MIPS": 8,
    "SCMP_ARCH_MIPS64": 8 | _64,
    "SCMP_ARCH_MIPS64N32": 8 | _64 | _N32,
    "SCMP_ARCH_MIPSEL": 8 | _LE,
    "SCMP_ARCH_MIPSEL64": 8 | _64 | _LE,
    "SCMP_ARCH_MIPSEL64N32": 8 | _64 | _LE | _N32,
    "SCMP_ARCH_PPC": 20,
    "SCMP_ARCH_PPC64": 21 | _64,
    "SCMP_ARCH_PPC64LE": 21 | _64 | _LE,
    "SCMP_ARCH_S390": 22,
    "SCMP_ARCH_S390X": 22 | _64,
    "SCMP_ARCH_PARISC": 15,
    "SCMP_ARCH_PARISC64": 15 | _64,
    "SCMP_ARCH_RISCV64": 243 | _64 | _LE,
    "SCMP_ARCH_LOONGARCH64": 258 | _64 | _LE,
    "SCMP_ARCH_M68K": 4,
    "SCMP_ARCH_SH": 42 | _LE,
    "SCMP_ARCH_SHEB": 42,
}

OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# Syscalls the init still makes after loading the filter, to hand the listener fd to the
# runtime (sendmsg on the sync socket).  Notifying one of them would block the init
# before anyone holds the listener: a deadlock.  runc refuses `write` for the same reason.
NOTIFY_FORBIDDEN = ("write", "sendmsg", "sendto")

BPF_MAXINSNS = 4096  # the kernel refuses longer classic BPF programs
_SCMP_ERROR = -1  # __NR_SCMP_ERROR: libseccomp does not know the name


def action_value(action: str, errno_ret: int | None, path: str) -> int:
    """The filter return value for an OCI action (runc's mapping)."""
    if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        data = errno.EPERM if errno_ret is None else errno_ret
        if data > 0xFFFF:
            # Only 16 bits reach the kernel: 65536 would silently become "return 0".
            raise ConfigError(path, f"errnoRet {data} does not fit in 16 bits")
        return (0x00050000 if action == "SCMP_ACT_ERRNO" else 0x7FF00000) | data
    return {
        "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
        "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
        "SCMP_ACT_ALLOW": 0x7FFF0000, "SCMP_ACT_LOG": 0x7FFC0000,
        "SCMP_ACT_NOTIFY": 0x7FC00000,
    }[action]


def check_notify(seccomp: Seccomp) -> None:
    """Refuse notify uses that would deadlock the init (runc refuses the same)."""
    if seccomp.default_action == "SCMP_ACT_NOTIFY":
        raise ConfigError(f"{_P}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default "
                          "action: the runtime must still send the listener fd")
    for i, rule in enumerate(seccomp.syscalls):
        if rule.action != "SCMP_ACT_NOTIFY":
            continue
        for name in rule.names:
            if name in NOTIFY_FORBIDDEN:
                raise ConfigError(f"{_P}.syscalls[{i}].names", f"SCMP_ACT_NOTIFY cannot be "
                                  f"used for {name}: the runtime needs it to send the "
                                  "listener fd")


def compile_bpf(seccomp: Seccomp) -> bytes:
    """Build the filter with libseccomp and return the exported BPF program."""
    import pyseccomp as sc

    check_notify(seccomp)
    default = action_value(seccomp.default_action, seccomp.default_errno_ret,
                           f"{_P}.defaultErrnoRet")
    try:
        filt = sc.SyscallFilter(default)
    except OSError as e:
        raise OciError(f"seccomp: libseccomp refused default action "
                       f"{seccomp.default_action}: {e.strerror}") from None
    arches = [sc.system_arch(), *_add_archs(filt, seccomp.architectures)]
    if sum(len(r.names) for r in seccomp.syscalls) > 32:
        # libseccomp <= 2.5.4 misbehaves with the binary tree and no rules, hence the bound
        # (runc's, which counts one rule per name).  Older libseccomp lacks the
        # attribute: not fatal.
        try:
            filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
        except OSError:
            pass
    for i, rule in enumerate(seccomp.syscalls):
        _add_rule(sc, filt, rule, default, f"{_P}.syscalls[{i}]")
    program = enosys.build(sc, seccomp, arches, ARCH_TOKENS["SCMP_ARCH_X32"]) + _export(filt)
    if len(program) // 8 > BPF_MAXINSNS:
        raise OciError(f"seccomp: the filter has {len(program) // 8} BPF instructions, more "
                       f"than the kernel's limit of {BPF_MAXINSNS}")
    return program


def _add_archs(filt: Any, architectures: tuple[str, ...]) -> list[int]:
    """Add the non-native arches; return the tokens added."""
    added = []
    for arch in architectures:
        try:
            filt.add_arch(ARCH_TOKENS[arch])
            added.append(ARCH_TOKENS[arch])
        except OSError as e:
            # EEXIST: the native arch, already there.  EDOM (other endianness) or EINVAL
            # (unknown to this libseccomp): no process of that arch can run here, and if
            # one did the kernel-side arch check would kill it (the bad-arch action), so
            # skipping fails closed -- and lets a profile listing every arch load anywhere.
            if e.errno not in (errno.EEXIST, errno.EDOM, errno.EINVAL):
                raise OciError(f"seccomp: adding architecture {arch}: {e.strerror}") from None
    return added


def _add_rule(sc: Any, filt: Any, rule: SyscallRule, default: int, path: str) -> None:
    action = action_value(rule.action, rule.errno_ret, f"{path}.errnoRet")
    if action == default:
        return  # redundant; libseccomp would fail with EACCES
    conds = [sc.Arg(a.index, OPERATORS[a.op], a.value, a.value_two) for a in rule.args]
    indexes = [a.index for a in rule.args]
    if len(set(indexes)) != len(indexes):
        groups = [[c] for c in conds]  # same argument twice: OR them, as runc does
    else:
        groups = [conds]
    for name in rule.names:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr == _SCMP_ERROR:
            continue  # unknown to libseccomp: skipped, like runc
        for group in groups:
            try:
                filt.add_rule(action, nr, *group)
            except OSError as e:
                raise ConfigError(f"{path}", f"cannot add the rule for {name}: "
                                  f"{e.strerror.lower()}") from None


def _export(filt: Any) -> bytes:
    # A memfd rather than a pipe: a big program (several arches, hundreds of rules) can
    # exceed the pipe buffer and we have no second thread to drain it.
    fd = os.memfd_create("ocirun-seccomp-bpf", os.MFD_CLOEXEC)
    try:
        filt.export_bpf(_Fd(fd))
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    except OSError as e:
        raise OciError(f"seccomp: exporting the BPF program: {e.strerror}") from None
    finally:
        os.close(fd)


class _Fd:
    """The file-like object pyseccomp's export_bpf wants: only fileno() is used."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd
