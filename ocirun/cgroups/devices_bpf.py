"""cgroup v2 device control: a BPF_PROG_TYPE_CGROUP_DEVICE program built from rules.

cgroup2 has no devices.allow file; the kernel instead runs a BPF program attached to
the cgroup for every device open/mknod.  The program here is assembled by hand from
the reduced rule state (devices.DeviceState): one block per exception returns the
opposite of the default, and the default is returned when no block matches.

The context the kernel passes (struct bpf_cgroup_dev_ctx) is three u32s:
access_type = (access << 16) | type, major, minor; with type BLOCK=1, CHAR=2 and
access MKNOD=1, READ=2, WRITE=4.  The program returns 1 to allow, 0 to deny.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from ocirun.cgroups.devices import DeviceState
from ocirun.errors import OciError

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351,
            "riscv64": 280, "i686": 357, "armv7l": 386}

BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2

_DEV_TYPE = {"b": 1, "c": 2}
_ACCESS_BIT = {"m": 1, "r": 2, "w": 4}

# Opcodes (class | op | source), from linux/bpf.h and bpf_common.h.
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU32_AND_K = 0x54
_ALU32_RSH_K = 0x74
_ALU64_MOV_X = 0xBF
_ALU64_AND_K = 0x57
_ALU64_MOV_K = 0xB7
_JMP_JNE_K = 0x55
_JMP_JNE_X = 0x5D
_JMP_JEQ_K = 0x15
_JMP_EXIT = 0x95


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _mask(access: str) -> int:
    return sum(_ACCESS_BIT[c] for c in access)


def assemble(state: DeviceState) -> bytes:
    """The program's instructions for `state`."""
    prog = [
        _insn(_LDX_MEM_W, 2, 1, 0),  # r2 = access_type
        _insn(_ALU32_AND_K, 2, imm=0xFFFF),  # r2 = device type
        _insn(_LDX_MEM_W, 3, 1, 0),
        _insn(_ALU32_RSH_K, 3, imm=16),  # r3 = requested access bits
        _insn(_LDX_MEM_W, 4, 1, 4),  # r4 = major
        _insn(_LDX_MEM_W, 5, 1, 8),  # r5 = minor
    ]
    verdict = 0 if state.default_allow else 1
    for e in state.exceptions:
        # Each test is a conditional jump past the rest of the block; the jump offsets
        # are only known once the block is complete, so tests are collected first.
        tests: list[tuple[int, int, int, int]] = []  # (code, dst, src, imm)
        pre: list[list[bytes]] = []
        tests.append((_JMP_JNE_K, 2, 0, _DEV_TYPE[e.type]))
        pre.append([])
        mask = _mask(e.access)
        if state.default_allow:
            # Deny when the request overlaps the exception's access at all.
            tests.append((_JMP_JEQ_K, 1, 0, 0))
            pre.append([_insn(_ALU64_MOV_X, 1, 3), _insn(_ALU64_AND_K, 1, imm=mask)])
        elif mask != 7:
            # Allow only when the exception covers every requested bit.
            tests.append((_JMP_JNE_X, 1, 3, 0))
            pre.append([_insn(_ALU64_MOV_X, 1, 3), _insn(_ALU64_AND_K, 1, imm=mask)])
        if e.major is not None:
            tests.append((_JMP_JNE_K, 4, 0, e.major))
            pre.append([])
        if e.minor is not None:
            tests.append((_JMP_JNE_K, 5, 0, e.minor))
            pre.append([])
        tail = [_insn(_ALU64_MOV_K, 0, imm=verdict), _insn(_JMP_EXIT)]
        # Lay the block out back to front so each jump knows what follows it.
        block: list[bytes] = list(tail)
        for (code, dst, src, imm), before in reversed(list(zip(tests, pre))):
            block = before + [_insn(code, dst, src, len(block), imm)] + block
        prog += block
    prog += [_insn(_ALU64_MOV_K, 0, imm=1 if state.default_allow else 0), _insn(_JMP_EXIT)]
    return b"".join(prog)


# ------------------------------------------------------------------- syscalls
def _bpf(cmd: int, attr: ctypes.Array) -> int:  # type: ignore[type-arg]
    machine = os.uname().machine  # what platform.machine() returns, without `platform`
    nr = _SYS_BPF.get(machine)
    if nr is None:
        raise OciError(f"cgroups: bpf(2): unsupported architecture {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr,
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load(insns: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd.  The verifier's log is in the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"Apache")
    for log_size in (0, 1 << 16):
        log = ctypes.create_string_buffer(log_size) if log_size else None
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_),
                         1 if log else 0, log_size, ctypes.addressof(log) if log else 0)
        attr[48:48 + 12] = b"ocirun_dev\0\0"  # prog_name (shows in bpftool)
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            if log is None and e.errno not in (errno.EPERM, errno.ENOSYS):
                continue  # retry once with the verifier log for a useful message
            detail = log.value.decode(errors="replace").strip().splitlines()[-1:] if log else []
            raise OciError("cgroups: load the device BPF program: "
                           f"{e.strerror.lower()}{': ' + detail[0] if detail else ''}") from None
    raise AssertionError("unreachable")


def _attached(cgroup_fd: int) -> list[int]:
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0,
                     ctypes.addressof(ids), len(ids))
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def _attach(cgroup_fd: int, prog_fd: int, flags: int) -> None:
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags)
    _bpf(BPF_PROG_ATTACH, attr)


def _detach_id(cgroup_fd: int, prog_id: int) -> None:
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<I", attr, 0, prog_id)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except OSError:
        return  # already gone
    try:
        attr = ctypes.create_string_buffer(32)
        struct.pack_into("<III", attr, 0, cgroup_fd, fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    except OSError:
        pass
    finally:
        os.close(fd)


def install(cgroup_dir: str, state: DeviceState) -> None:
    """Attach a program enforcing `state` to cgroup_dir, replacing ones attached before.

    The new program is attached before the old ones are detached, so there is no
    window without device control.  The attachment keeps the program alive after our
    fd is closed, until the cgroup is removed.
    """
    prog_fd = load(assemble(state))
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        os.close(prog_fd)
        raise OciError(f"cgroups: open {cgroup_dir}: {e.strerror.lower()}") from None
    try:
        try:
            old = _attached(cg_fd)
        except OSError:
            old = []
        try:
            _attach(cg_fd, prog_fd, BPF_F_ALLOW_MULTI)
        except OSError as e:
            if e.errno != errno.EPERM or not old:
                raise OciError("cgroups: attach the device BPF program to "
                               f"{cgroup_dir}: {e.strerror.lower()}") from None
            # Someone attached in exclusive mode: replacing it is the only way in.
            _attach(cg_fd, prog_fd, 0)
            old = []
        for prog_id in old:
            _detach_id(cg_fd, prog_id)
    finally:
        os.close(cg_fd)
        os.close(prog_fd)
