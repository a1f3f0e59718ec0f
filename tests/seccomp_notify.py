"""The seccomp user-notification ioctls, for tests that play the agent's part (an
agent is not ocirun's: ocirun only passes the listener on)."""

from __future__ import annotations

import ctypes
import os


class SeccompData(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class Notif(ctypes.Structure):
    """struct seccomp_notif, filled by SECCOMP_IOCTL_NOTIF_RECV."""
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", SeccompData)]


class NotifResp(ctypes.Structure):
    """struct seccomp_notif_resp, given to SECCOMP_IOCTL_NOTIF_SEND."""
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _ioc(write: bool, read: bool, nr: int, size: int) -> int:
    # <asm-generic/ioctl.h>; powerpc and mips use 3 direction bits and 13 size bits.
    if os.uname().machine in ("ppc", "ppc64", "ppc64le", "mips", "mips64"):
        d = (4 if write else 0) | (2 if read else 0)
        return (d << 29) | (size << 16) | (ord("!") << 8) | nr
    d = (1 if write else 0) | (2 if read else 0)
    return (d << 30) | (size << 16) | (ord("!") << 8) | nr


def _ioctl(fd: int, request: int, arg: ctypes.c_void_p) -> None:
    if _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), arg) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def notif_recv(listener_fd: int) -> Notif:
    """Block until a notified syscall arrives (the kernel wants a zeroed buffer)."""
    notif = Notif()
    _ioctl(listener_fd, _ioc(True, True, 0, ctypes.sizeof(Notif)),
           ctypes.c_void_p(ctypes.addressof(notif)))
    return notif


def notif_id_valid(listener_fd: int, notif_id: int) -> bool:
    value = ctypes.c_uint64(notif_id)
    try:
        _ioctl(listener_fd, _ioc(True, False, 2, 8), ctypes.c_void_p(ctypes.addressof(value)))
    except OSError:
        return False
    return True


def notif_send(listener_fd: int, notif_id: int, val: int = 0, error: int = 0,
               flags: int = 0) -> None:
    resp = NotifResp(notif_id, val, error, flags)
    _ioctl(listener_fd, _ioc(True, True, 1, ctypes.sizeof(NotifResp)),
           ctypes.c_void_p(ctypes.addressof(resp)))
