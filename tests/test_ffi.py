"""ocirun.sys.ffi: the slice of ctypes the syscall layer uses, checked against the kernel
and against ctypes itself."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys

from conftest import REPO

from ocirun.sys import arch, ffi


def test_loading_it_does_not_import_ctypes() -> None:
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
              "from ocirun.sys import ffi\n"
              "ffi.libc.getpid(); ffi.buffer(8); (ffi.c_uint64 * 2)(1, 2)\n"
              "print(sorted(m for m in sys.modules if 'ctypes' in m))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "['_ctypes']"


def test_calls_return_what_the_kernel_returns_and_set_errno() -> None:
    assert ffi.libc.getpid() == os.getpid()
    close_range = ffi.c_long(arch.number("close_range"))
    assert ffi.libc.syscall(close_range, 5, 3, 0) == -1  # first > last
    assert ffi.get_errno() == errno.EINVAL
    assert ffi.libc.umount2(b"/nonexistent-ocirun-ffi", 0) == -1
    assert ffi.get_errno() == errno.ENOENT
    # Arguments too wide for a C int go as c_ulong: the kernel sees all 64 bits.
    assert ffi.libc.prctl(0xFFFF, ffi.c_ulong(1 << 40), ffi.c_ulong(0), ffi.c_ulong(0),
                          ffi.c_ulong(0)) == -1
    assert ffi.get_errno() == errno.EINVAL


def test_buffers_and_arrays_are_passed_by_address() -> None:
    fd = os.open("/proc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        statfs = ffi.buffer(256)
        assert ffi.libc.fstatfs(fd, statfs) == 0
        assert int.from_bytes(statfs.raw[:ffi.sizeof(ffi.c_long)], sys.byteorder) == 0x9FA0
    finally:
        os.close(fd)
    limits = (ffi.c_uint64 * 2)()
    assert ffi.libc.prlimit(0, 7, None, limits) == 0  # RLIMIT_NOFILE, read only
    import resource
    assert tuple(limits) == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ffi.buffer(b"ab\0c").raw == b"ab\0c" and ffi.sizeof(ffi.buffer(5)) == 5


def test_types_have_ctypes_sizes() -> None:
    pairs = [(ffi.c_char, ctypes.c_char), (ffi.c_int, ctypes.c_int), (ffi.c_uint, ctypes.c_uint),
             (ffi.c_long, ctypes.c_long), (ffi.c_ulong, ctypes.c_ulong),
             (ffi.c_uint8, ctypes.c_uint8), (ffi.c_uint16, ctypes.c_uint16),
             (ffi.c_uint32, ctypes.c_uint32), (ffi.c_uint64, ctypes.c_uint64),
             (ffi.c_void_p, ctypes.c_void_p)]
    for ours, theirs in pairs:
        assert ffi.sizeof(ours) == ctypes.sizeof(theirs), ours
        assert ours(1).value == theirs(1).value


def test_the_python_api_is_called_with_the_gil() -> None:
    assert ffi.pythonapi.Py_IsInitialized() == 1
    fd = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
    assert ffi.raw_syscall(ffi.c_long(arch.number("close_range")), fd, fd, 0) == 0
    try:
        os.fstat(fd)
        raise AssertionError("close_range did not close the fd")
    except OSError as e:
        assert e.errno == errno.EBADF


def _caps_of(status: str, field: str) -> int:
    line = next(x for x in status.splitlines() if x.startswith(field + ":"))
    return int(line.split()[1], 16)


def test_set_capabilities_sets_exactly_the_known_ones() -> None:
    from ocirun import sys as ksys
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    every = set(range(last + 1)) - {21}  # CAP_SYS_ADMIN: not ours to change here
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ksys.set_capabilities({0, 33}, {0, 1, 33}, {1}, every)
            os.write(w, open("/proc/self/status").read().encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        status = f.read()
    os.waitpid(pid, 0)
    keep = 1 << 21  # untouched: still in the sets root started with
    assert _caps_of(status, "CapEff") == (1 << 0) | (1 << 33) | keep
    assert _caps_of(status, "CapPrm") == (1 << 0) | (1 << 1) | (1 << 33) | keep
    assert _caps_of(status, "CapInh") == 1 << 1


def test_set_capabilities_refuses_a_number_outside_the_64_bit_sets() -> None:
    from ocirun import sys as ksys
    for cap in (64, -1):
        try:
            ksys.set_capabilities(set(), set(), set(), {cap})
            raise AssertionError(f"capability {cap} was accepted")
        except OSError as e:
            assert e.errno == errno.EINVAL
