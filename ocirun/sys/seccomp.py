"""Raw seccomp(2) through ocirun.sys.ffi, and libseccomp's version.

This module is imported before fork and used between fork and execve, so it imports
nothing but os at import time and does no work then: the FFI layer (~1 ms) is imported,
and the structures below are defined, on the first call that needs them.  A seccomp
cache hit in the runtime's parent (constants only) therefore loads no FFI; the init has
it already (stage1 loads it before any namespace is entered, see ocirun.sys.load).
libseccomp is not involved: the BPF program was compiled (and cached) earlier, the
kernel only needs the bytes.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    # Defined by _ct() on first use (module globals from then on).
    SockFilter: Any
    SockFprog: Any
    SeccompData: Any

# seccomp(2) operations
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2

# flags of SECCOMP_SET_MODE_FILTER
FILTER_FLAG_TSYNC = 1 << 0
FILTER_FLAG_LOG = 1 << 1
FILTER_FLAG_SPEC_ALLOW = 1 << 2
FILTER_FLAG_NEW_LISTENER = 1 << 3
FILTER_FLAG_TSYNC_ESRCH = 1 << 4
FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

# filter return values (the action is the high 16 bits, the data the low 16)
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000

_cache: dict[str, object] = {}  # "ffi", filled on first use

_STRUCTS = ("SockFilter", "SockFprog", "SeccompData")


def _ct() -> ModuleType:
    """ocirun.sys.ffi, imported and the structures defined on first use."""
    ct = _cache.get("ffi")
    if ct is None:
        from ocirun.sys import ffi as ct

        class SockFilter(ct.Structure):
            """struct sock_filter: one classic BPF instruction (8 bytes, host endian)."""
            _fields_ = [("code", ct.c_uint16), ("jt", ct.c_uint8), ("jf", ct.c_uint8),
                        ("k", ct.c_uint32)]

        class SockFprog(ct.Structure):
            """struct sock_fprog: what SECCOMP_SET_MODE_FILTER takes."""
            _fields_ = [("len", ct.c_uint16), ("filter", ct.c_void_p)]

        class SeccompData(ct.Structure):
            _fields_ = [("nr", ct.c_int), ("arch", ct.c_uint32),
                        ("instruction_pointer", ct.c_uint64), ("args", ct.c_uint64 * 6)]

        for cls in (SockFilter, SockFprog, SeccompData):
            cls.__module__ = __name__
            cls.__qualname__ = cls.__name__
            globals()[cls.__name__] = cls
        _cache["ffi"] = ct
    return ct  # type: ignore[return-value]


def __getattr__(name: str) -> object:
    # ksys.SockFprog etc. before any call defined them.
    if name in _STRUCTS:
        _ct()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def seccomp(op: int, flags: int, arg: object) -> int:
    """seccomp(op, flags, arg); returns the result or raises OSError with errno."""
    # Every argument is passed as a full register: syscall() is variadic and reads longs.
    from ocirun.sys import arch, libc
    ct = _ct()
    ret = libc().syscall(ct.c_long(arch.number("seccomp")), ct.c_ulong(op), ct.c_ulong(flags),
                         arg)
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def set_mode_filter(program: bytes, flags: int) -> int:
    """Install `program` (raw struct sock_filter array) on the calling thread.

    Returns 0, or the listener fd when FILTER_FLAG_NEW_LISTENER is in `flags`.  The kernel
    requires no_new_privs or CAP_SYS_ADMIN in the caller's user namespace (EACCES otherwise).
    """
    ct = _ct()
    count = len(program) // 8
    # The buffer must live until the syscall returns; the kernel copies it.
    buf = ct.buffer(program)
    prog = SockFprog(count, ct.addressof(buf))
    return seccomp(SECCOMP_SET_MODE_FILTER, flags, ct.c_void_p(ct.addressof(prog)))


def warm_up() -> None:
    """Pay the FFI layer's first-call costs (import, structures, dlsym, argument conversion
    setup) now, before fork, instead of in the init between fork and execve; makes one
    harmless syscall."""
    ct = _ct()
    action_available(RET_ALLOW)
    SockFprog(0, ct.addressof(ct.buffer(8)))


def filter_flag_supported(flag: int) -> bool:
    """Whether the running kernel knows a SECCOMP_SET_MODE_FILTER flag.

    With a NULL program the kernel validates the flags first (EINVAL for unknown ones)
    and only then copies the program (EFAULT): EFAULT therefore means "known".  This is
    the same probe libseccomp uses; nothing is installed.
    """
    if flag == FILTER_FLAG_WAIT_KILLABLE_RECV:
        flag |= FILTER_FLAG_NEW_LISTENER  # the kernel refuses it alone
    try:
        seccomp(SECCOMP_SET_MODE_FILTER, flag, None)
    except OSError as e:
        return e.errno == 14  # EFAULT
    return False  # cannot happen: there is no program


def action_available(action: int) -> bool:
    """SECCOMP_GET_ACTION_AVAIL: whether the kernel implements a filter return action."""
    ct = _ct()
    value = ct.c_uint32(action & 0xFFFF0000)
    try:
        seccomp(SECCOMP_GET_ACTION_AVAIL, 0, ct.c_void_p(ct.addressof(value)))
    except OSError:
        return False
    return True


def libseccomp_version() -> str | None:
    """The loaded libseccomp's version (seccomp_version(3)), or None without it (for
    --version only, so through ctypes itself: it needs dlopen by name and pointers)."""
    import ctypes as ct

    class Version(ct.Structure):
        _fields_ = [("major", ct.c_uint), ("minor", ct.c_uint), ("micro", ct.c_uint)]

    try:
        lib = ct.CDLL("libseccomp.so.2")
    except OSError:
        return None
    lib.seccomp_version.restype = ct.POINTER(Version)
    v = lib.seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"
