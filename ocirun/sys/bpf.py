"""bpf(2) for cgroup device programs: load, query, attach, detach.

Each call takes and returns plain Python values; the attribute unions are packed
here (linux/bpf.h, union bpf_attr).  Errors are OSError with the errno; a program the
verifier rejects carries the verifier's last line in its strerror.
"""

from __future__ import annotations

import errno
import os
import struct

from ocirun.sys import arch, ffi

BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_PROG_QUERY = 13, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2


def _bpf(cmd: int, attr: ffi.Array) -> int:
    ret = ffi.libc.syscall(ffi.c_long(arch.number("bpf")), ffi.c_int(cmd), attr,
                           ffi.c_uint(ffi.sizeof(attr)))
    if ret < 0:
        err = ffi.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def load_cgroup_device_program(insns: bytes, name: bytes = b"ocirun_dev") -> int:
    """BPF_PROG_LOAD of a BPF_PROG_TYPE_CGROUP_DEVICE program; returns its fd.  A
    rejected program is loaded once more with the verifier log, for its message."""
    code = ffi.buffer(insns)
    license_ = ffi.buffer(b"Apache\0")
    for log_size in (0, 1 << 16):
        log = ffi.buffer(log_size) if log_size else None
        attr = ffi.buffer(128)
        struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8,
                         ffi.addressof(code), ffi.addressof(license_),
                         1 if log else 0, log_size, ffi.addressof(log) if log else 0)
        attr[48:48 + 16] = name[:15].ljust(16, b"\0")  # prog_name (shows in bpftool)
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except OSError as e:
            if log is None and e.errno not in (errno.EPERM, errno.ENOSYS):
                continue
            detail = log.value.decode(errors="replace").strip().splitlines()[-1:] if log else []
            raise OSError(e.errno, f"{e.strerror}{': ' + detail[0] if detail else ''}") \
                from None
    raise AssertionError("unreachable")


def attached_device_programs(cgroup_fd: int) -> list[int]:
    """BPF_PROG_QUERY: the ids of the device programs attached to the cgroup."""
    ids = (ffi.c_uint32 * 64)()
    attr = ffi.buffer(64)
    struct.pack_into("<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0,
                     ffi.addressof(ids), len(ids))
    _bpf(BPF_PROG_QUERY, attr)
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def attach_device_program(cgroup_fd: int, prog_fd: int, flags: int) -> None:
    attr = ffi.buffer(32)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags)
    _bpf(BPF_PROG_ATTACH, attr)


def detach_device_program(cgroup_fd: int, prog_id: int) -> None:
    """Detach the program `prog_id` (gone already is fine)."""
    attr = ffi.buffer(16)
    struct.pack_into("<I", attr, 0, prog_id)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except OSError:
        return
    try:
        attr = ffi.buffer(32)
        struct.pack_into("<III", attr, 0, cgroup_fd, fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    except OSError:
        pass
    finally:
        os.close(fd)
