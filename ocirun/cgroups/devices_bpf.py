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

import errno
import os
import struct

from ocirun.cgroups.devices import DeviceState
from ocirun.errors import OciError
from ocirun.sys import bpf

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


def install(cgroup_dir: str, state: DeviceState) -> None:
    """Attach a program enforcing `state` to cgroup_dir, replacing ones attached before.

    The new program is attached before the old ones are detached, so there is no
    window without device control.  The attachment keeps the program alive after our
    fd is closed, until the cgroup is removed.
    """
    try:
        prog_fd = bpf.load_cgroup_device_program(assemble(state))
    except OSError as e:
        raise OciError("cgroups: load the device BPF program: "
                       f"{(e.strerror or str(e)).lower()}") from None
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        os.close(prog_fd)
        raise OciError(f"cgroups: open {cgroup_dir}: {e.strerror.lower()}") from None
    try:
        try:
            old = bpf.attached_device_programs(cg_fd)
        except OSError:
            old = []
        try:
            bpf.attach_device_program(cg_fd, prog_fd, bpf.BPF_F_ALLOW_MULTI)
        except OSError as e:
            if e.errno != errno.EPERM or not old:
                raise OciError("cgroups: attach the device BPF program to "
                               f"{cgroup_dir}: {e.strerror.lower()}") from None
            # Someone attached in exclusive mode: replacing it is the only way in.
            bpf.attach_device_program(cg_fd, prog_fd, 0)
            old = []
        for prog_id in old:
            bpf.detach_device_program(cg_fd, prog_id)
    finally:
        os.close(cg_fd)
        os.close(prog_fd)
