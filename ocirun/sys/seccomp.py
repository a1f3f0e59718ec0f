"""Raw seccomp(2) and the user-notification ioctls, through ctypes.

This module is imported before fork and used between fork and execve, so it imports
nothing but os at import time and does no work then: ctypes (~3 ms) is imported, and the
structures below are defined, on the first call that needs them.  A seccomp cache hit in
the runtime's parent (constants only) therefore costs no ctypes; the init has ctypes
already (stage1 loads it before any namespace is entered, see ocirun.sys.load).
libseccomp is not involved: the BPF program was compiled (and cached) earlier, the
kernel only needs the bytes.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from types import ModuleType
    from typing import Any

    # Defined by _ct() on first use (module globals from then on).
    SockFilter: Any
    SockFprog: Any
    SeccompData: Any
    Notif: Any
    NotifResp: Any
    NotifSizes: Any

# seccomp(2) operations
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3

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

# seccomp_notif_resp.flags: let the syscall run as if it had not been intercepted
USER_NOTIF_FLAG_CONTINUE = 1

# __NR_seccomp per machine (os.uname().machine); glibc has no wrapper for it.
_NR_SECCOMP = {
    "x86_64": 317, "i386": 354, "i486": 354, "i586": 354, "i686": 354,
    "aarch64": 277, "riscv64": 277, "loongarch64": 277,
    "armv7l": 383, "armv6l": 383, "armv8l": 383,
    "ppc64": 358, "ppc64le": 358, "ppc": 358,
    "s390x": 348, "s390": 348, "mips64": 5312, "mips": 4352,
}
_NR_IOCTL_BITS = ("ppc", "ppc64", "ppc64le", "mips", "mips64")  # 13-bit size, 3-bit dir

_cache: dict[str, object] = {}  # "ctypes" and "libc", filled on first use


_STRUCTS = ("SockFilter", "SockFprog", "SeccompData", "Notif", "NotifResp", "NotifSizes")


def _ct() -> ModuleType:
    """ctypes, imported and the structures defined on first use."""
    ct = _cache.get("ctypes")
    if ct is None:
        import ctypes as ct

        class SockFilter(ct.Structure):
            """struct sock_filter: one classic BPF instruction (8 bytes, host endian)."""
            _fields_ = [("code", ct.c_uint16), ("jt", ct.c_uint8), ("jf", ct.c_uint8),
                        ("k", ct.c_uint32)]

        class SockFprog(ct.Structure):
            """struct sock_fprog: what SECCOMP_SET_MODE_FILTER takes."""
            _fields_ = [("len", ct.c_ushort), ("filter", ct.c_void_p)]

        class SeccompData(ct.Structure):
            _fields_ = [("nr", ct.c_int), ("arch", ct.c_uint32),
                        ("instruction_pointer", ct.c_uint64), ("args", ct.c_uint64 * 6)]

        class Notif(ct.Structure):
            """struct seccomp_notif, filled by SECCOMP_IOCTL_NOTIF_RECV."""
            _fields_ = [("id", ct.c_uint64), ("pid", ct.c_uint32), ("flags", ct.c_uint32),
                        ("data", SeccompData)]

        class NotifResp(ct.Structure):
            """struct seccomp_notif_resp, given to SECCOMP_IOCTL_NOTIF_SEND."""
            _fields_ = [("id", ct.c_uint64), ("val", ct.c_int64), ("error", ct.c_int32),
                        ("flags", ct.c_uint32)]

        class NotifSizes(ct.Structure):
            _fields_ = [("seccomp_notif", ct.c_uint16), ("seccomp_notif_resp", ct.c_uint16),
                        ("seccomp_data", ct.c_uint16)]

        for cls in (SockFilter, SockFprog, SeccompData, Notif, NotifResp, NotifSizes):
            cls.__module__ = __name__
            cls.__qualname__ = cls.__name__
            globals()[cls.__name__] = cls
        _cache["ctypes"] = ct
    return ct  # type: ignore[return-value]


def __getattr__(name: str) -> object:
    # ksys.SockFprog etc. before any call defined them.
    if name in _STRUCTS:
        _ct()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _libc() -> ctypes.CDLL:
    lib = _cache.get("libc")
    if lib is None:
        ct = _ct()
        # CDLL(None) is the libc already mapped into the process: no find_library, which
        # would fork ldconfig.
        lib = ct.CDLL(None, use_errno=True)
        lib.syscall.restype = ct.c_long
        _cache["libc"] = lib
    return lib  # type: ignore[return-value]


def _nr_seccomp() -> int:
    machine = os.uname().machine
    try:
        return _NR_SECCOMP[machine]
    except KeyError:
        raise OSError(38, f"seccomp: unknown syscall number on {machine}") from None


def seccomp(op: int, flags: int, arg: ctypes.c_void_p | int | None) -> int:
    """seccomp(op, flags, arg); returns the result or raises OSError with errno."""
    # Every argument is passed as a full register: syscall() is variadic and reads longs.
    libc, ct = _libc(), _ct()
    ret = libc.syscall(ct.c_long(_nr_seccomp()), ct.c_ulong(op), ct.c_ulong(flags), arg)
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
    buf = ct.create_string_buffer(program, len(program))
    prog = SockFprog(count, ct.addressof(buf))
    return seccomp(SECCOMP_SET_MODE_FILTER, flags, ct.c_void_p(ct.addressof(prog)))


def warm_up() -> None:
    """Pay ctypes' first-call costs (import, structures, dlsym, argument conversion
    setup) now, before fork, instead of in the init between fork and execve; makes one
    harmless syscall."""
    ct = _ct()
    action_available(RET_ALLOW)
    SockFprog(0, ct.addressof(ct.create_string_buffer(8)))


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


def notif_sizes() -> NotifSizes:
    ct = _ct()
    sizes = NotifSizes()
    seccomp(SECCOMP_GET_NOTIF_SIZES, 0, ct.c_void_p(ct.addressof(sizes)))
    return sizes


# ------------------------------------------------------------- notification ioctls
def _ioc(write: bool, read: bool, nr: int, size: int) -> int:
    # <asm-generic/ioctl.h>; powerpc and mips use 3 direction bits and 13 size bits.
    if os.uname().machine in _NR_IOCTL_BITS:
        d = (4 if write else 0) | (2 if read else 0)
        return (d << 29) | (size << 16) | (ord("!") << 8) | nr
    d = (1 if write else 0) | (2 if read else 0)
    return (d << 30) | (size << 16) | (ord("!") << 8) | nr


def _ioctl(fd: int, request: int, arg: ctypes.c_void_p) -> int:
    libc, ct = _libc(), _ct()
    ret = libc.ioctl(ct.c_int(fd), ct.c_ulong(request), arg)
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def notif_recv(listener_fd: int) -> Notif:
    """SECCOMP_IOCTL_NOTIF_RECV: block until a notified syscall arrives.

    The kernel insists on a zeroed buffer (EINVAL otherwise); a fresh ctypes struct is.
    ENOENT means the notifying task died before we read it.
    """
    ct = _ct()
    notif = Notif()
    request = _ioc(True, True, 0, ct.sizeof(Notif))
    _ioctl(listener_fd, request, ct.c_void_p(ct.addressof(notif)))
    return notif


def notif_id_valid(listener_fd: int, notif_id: int) -> bool:
    """SECCOMP_IOCTL_NOTIF_ID_VALID: the task is still blocked in that syscall.

    An agent must check this after reading the task's memory (/proc/<pid>/mem) and before
    acting on it, since the pid may have been reused.
    """
    ct = _ct()
    value = ct.c_uint64(notif_id)
    try:
        _ioctl(listener_fd, _ioc(True, False, 2, 8), ct.c_void_p(ct.addressof(value)))
    except OSError:
        return False
    return True


def notif_send(listener_fd: int, notif_id: int, val: int = 0, error: int = 0,
               flags: int = 0) -> None:
    """SECCOMP_IOCTL_NOTIF_SEND: answer a notification.

    `error` is a negative errno (0 for success, then `val` is the return value);
    `flags=USER_NOTIF_FLAG_CONTINUE` lets the kernel run the syscall (val/error must be 0).
    """
    ct = _ct()
    resp = NotifResp(notif_id, val, error, flags)
    request = _ioc(True, True, 1, ct.sizeof(NotifResp))
    _ioctl(listener_fd, request, ct.c_void_p(ct.addressof(resp)))
