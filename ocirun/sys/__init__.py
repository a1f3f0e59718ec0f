"""The one place that calls libc (through ocirun.sys.ffi, a small part of ctypes).

Only the calls the standard library lacks (on 3.11) live here, with their syscall
numbers per architecture in arch.py; sys/seccomp.py and sys/bpf.py hold the seccomp
and BPF calls.  Each raises OSError with the errno and the call's subject, so callers
can turn it into a user message.
"""

from __future__ import annotations

import errno
import os
import sys

from ocirun.sys import arch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.sys import ffi

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000
MS_PROPAGATION = MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE

MNT_DETACH = 0x2

# clone(2)/unshare(2) flags
CLONE_NEWTIME = 0x80
CLONE_NEWNS = 0x20000
CLONE_NEWCGROUP = 0x2000000
CLONE_NEWUTS = 0x4000000
CLONE_NEWIPC = 0x8000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS, "cgroup": CLONE_NEWCGROUP, "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC, "user": CLONE_NEWUSER, "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET, "time": CLONE_NEWTIME,
}
# The names of the /proc/<pid>/ns/* files.
NAMESPACE_FILES = {
    "mount": "mnt", "cgroup": "cgroup", "uts": "uts", "ipc": "ipc", "user": "user",
    "pid": "pid", "network": "net", "time": "time",
}

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

CLONE_INTO_CGROUP = 0x200000000
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
_OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_RECURSIVE = 0x8000

# openat2(2) resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_KEYCTL_JOIN_SESSION_KEYRING = 1
# getrlimit(2) resource numbers: asm-generic's, which every architecture of arch.py uses
RLIMIT_NUMBERS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}


def libc() -> ffi.Library:
    """libc, loading the FFI layer (ocirun.sys.ffi, ~1 ms) on first use: only the
    commands making or entering a container pay it (create's parent for clone3, the
    children for mounts and namespaces); state, start, kill and delete never load it.
    Every caller calls this before it evaluates its arguments, so `ffi` is bound by then."""
    global ffi
    from ocirun.sys import ffi
    return ffi.libc


def load() -> None:
    """Load the FFI layer and libc now, while the interpreter's files are still reachable."""
    libc()


def _check(ret: int, what: str, subject: str | None = None) -> int:
    if ret < 0:
        err = ffi.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", subject)
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(libc().mount(_b(source), _b(target), _b(fstype), ffi.c_ulong(flags),
                         _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc().umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc().syscall(arch.number("pivot_root"), _b(new_root), _b(put_old)),
           "pivot_root", new_root)


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc().setns(fd, nstype), "setns")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(libc().setdomainname(raw, len(raw)), "setdomainname")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    if libc().syscall(arch.number("close_range"), first, ffi.c_uint(last), 0) < 0:
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))  # kernels before 5.9


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def rename_exchange(old: str, new: str) -> None:
    """renameat2(2) with RENAME_EXCHANGE: the two names swap files, atomically."""
    lib = libc()
    _check(lib.syscall(arch.number("renameat2"), AT_FDCWD, _b(old), AT_FDCWD, _b(new),
                       RENAME_EXCHANGE), "renameat2", new)


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): `path` resolved under `resolve`'s rules (RESOLVE_IN_ROOT: as if
    dir_fd were "/", symlinks included).  Raises OSError(ENOSYS) before Linux 5.6."""
    lib = libc()  # binds `ffi` (imported on first use)
    how = (ffi.c_uint64 * 3)(flags | os.O_CLOEXEC, mode, resolve)
    return _check(lib.syscall(arch.number("openat2"), dir_fd, _b(path), how,
                              ffi.sizeof(how)), "openat2", path)


PROC_SUPER_MAGIC = 0x9FA0


def fs_magic(fd: int) -> int:
    """The filesystem type (statfs f_type) of what `fd` refers to: os has no fstatfs."""
    lib = libc()
    buf = ffi.buffer(256)  # struct statfs is 120 bytes on 64-bit ports
    _check(lib.fstatfs(fd, buf), "fstatfs")
    size = 4 if arch.MACHINE == "s390x" else ffi.sizeof(ffi.c_long)  # f_type first
    return int.from_bytes(buf.raw[:size], sys.byteorder)


def open_procfs(relative: str, flags: int) -> int:
    """Open /proc/`relative` where /proc is a procfs root and the path crosses no mount
    and no symlink, so a write cannot be sent to another file by a mount or a link put
    in its way (runc's CVE-2025-52881).  A leading `self/` is this process's pid as
    that procfs numbers it (its own link, read, not followed)."""
    root = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if fs_magic(root) != PROC_SUPER_MAGIC or os.fstat(root).st_ino != 1:
            raise OSError(errno.EXDEV, "/proc is not the root of a procfs mount", "/proc")
        if relative.startswith("self/"):
            relative = os.readlink("self", dir_fd=root) + relative[4:]
        try:
            fd = openat2(root, relative, flags, RESOLVE_BENEATH | RESOLVE_NO_XDEV |
                         RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno != errno.ENOSYS:  # before Linux 5.6
                raise
            fd = os.open(relative, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
            if os.fstat(fd).st_dev != os.fstat(root).st_dev:
                os.close(fd)
                raise OSError(errno.EXDEV, "not on the /proc mount", relative) from None
        return fd
    finally:
        os.close(root)



def mount_setattr_recursive(fd: int, attr_set: int, attr_clr: int) -> None:
    """mount_setattr(2) on the mount `fd` names and every mount beneath it."""
    lib = libc()  # binds `ffi` (imported on first use)
    attr = (ffi.c_uint64 * 4)(attr_set, attr_clr, 0, 0)
    _check(lib.syscall(arch.number("mount_setattr"), fd, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                           attr, ffi.sizeof(attr)), "mount_setattr")


def fsmount_detached(fstype: str, options: dict[str, str] | list[tuple[str, str]],
                     attrs: int) -> int:
    """A new filesystem instance as a detached mount (fsopen/fsconfig/fsmount): an
    O_PATH-like fd of its root, attached nowhere, so no namespace can remount it.
    `options` as pairs may repeat a key (overlayfs's lowerdir+); each value is at
    most 255 bytes (fsconfig's limit)."""
    lib = libc()
    fsconfig = arch.number("fsconfig")
    ctx = _check(lib.syscall(arch.number("fsopen"), _b(fstype), FSOPEN_CLOEXEC), "fsopen",
                 fstype)
    try:
        for key, value in (options.items() if isinstance(options, dict) else options):
            _check(lib.syscall(fsconfig, ctx, FSCONFIG_SET_STRING, _b(key), _b(value), 0),
                   "fsconfig", f"{key}={value}")
        _check(lib.syscall(fsconfig, ctx, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig",
               fstype)
        return _check(lib.syscall(arch.number("fsmount"), ctx, FSMOUNT_CLOEXEC, attrs),
                      "fsmount", fstype)
    finally:
        os.close(ctx)


def move_mount_to(fd: int, target_dir_fd: int) -> None:
    """Attach the detached mount `fd` on the directory `target_dir_fd` refers to."""
    _check(libc().syscall(arch.number("move_mount"), fd, b"", target_dir_fd, b"",
                          _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH),
           "move_mount")


def bind_fd(source_fd: int, target_fd: int) -> None:
    """Bind-mount what `source_fd` is onto what `target_fd` is, with no path looked up
    on either side: a name in the container's tree can be swapped for a symlink by
    anyone sharing that tree, an open file cannot (runc's CVE-2025-31133 and
    CVE-2025-52565 are such swaps).  open_tree(OPEN_TREE_CLONE) + move_mount; before
    Linux 5.2, mount(2) through the /proc/self/fd magic links, which also name the
    open files themselves."""
    lib = libc()
    tree = lib.syscall(arch.number("open_tree"), source_fd, b"",
                       _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_EMPTY_PATH)
    if tree < 0 and ffi.get_errno() == errno.ENOSYS:  # before Linux 5.2
        mount(f"/proc/self/fd/{source_fd}", f"/proc/self/fd/{target_fd}", None, MS_BIND)
        return
    _check(tree, "open_tree")
    try:
        move_mount_to(tree, target_fd)
    finally:
        os.close(tree)


def loopback_up() -> None:
    """Set IFF_UP on `lo` of the current network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    from ocirun.compat import socket as _socket
    import fcntl
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = b"lo".ljust(16, b"\0") + bytes(24)  # struct ifreq: name, then flags
        flags = int.from_bytes(fcntl.ioctl(sock.fileno(), 0x8913, request)[16:18],
                               sys.byteorder)
        if not flags & 0x1:
            fcntl.ioctl(sock.fileno(), 0x8914, request[:16] +
                        (flags | 0x1).to_bytes(2, sys.byteorder) + bytes(22))
    finally:
        sock.close()


def clone3(flags: int = 0, cgroup_fd: int = -1, set_tid: int = 0) -> int:
    """fork() through clone3(2): the child born with new namespaces (`flags`, the
    CLONE_NEW* bits) and, with `cgroup_fd` (a cgroup2 directory), in that cgroup
    (CLONE_INTO_CGROUP, Linux 5.7+), which places it under the read side of the cgroup
    threadgroup lock, where a write to cgroup.procs takes the write side and waits out
    an RCU grace period (~8 ms here).  Done as os.fork does it: the GIL held across
    the call (ffi.raw_syscall) and the interpreter's own before/after-fork steps around
    it, so the child is a normal single-threaded copy of us.  Raises OSError (ENOSYS
    before 5.3, E2BIG before 5.7, EINVAL/EBUSY/EPERM... on directories that cannot take it).
    Returns 0 in the child.  Unlike glibc's fork the child's cached thread id stays the
    parent's: the child must not use pthread_kill/raise (ours exec or fork before they
    could).  `set_tid` asks for that pid (Linux 5.5+, CAP_SYS_ADMIN; the tests use it
    to make a freed pid reused on demand)."""
    libc()
    from ocirun.compat import signal as _signal
    if cgroup_fd >= 0:
        flags |= CLONE_INTO_CGROUP
    tid = (ffi.c_int * 1)(set_tid)
    args = (ffi.c_uint64 * 11)(flags, 0, 0, 0, _signal.SIGCHLD, 0, 0, 0,
                               ffi.addressof(tid) if set_tid else 0, 1 if set_tid else 0,
                               max(cgroup_fd, 0))
    nr = ffi.c_long(arch.number("clone3"))
    api = ffi.pythonapi
    api.PyOS_BeforeFork()
    pid = ffi.raw_syscall(nr, args, ffi.c_ulong(ffi.sizeof(args)))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ffi.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


def setrlimit(name: str, soft: int, hard: int) -> None:
    """prlimit(2) of this process, by the config's name (RLIMIT_NOFILE...).  Through
    libc, which the init has loaded anyway, rather than the `resource` module, whose
    import the init would wait on."""
    lib = libc()
    limits = (ffi.c_uint64 * 2)(soft, hard)
    _check(lib.prlimit(0, RLIMIT_NUMBERS[name], limits, None), f"setrlimit {name}")


def set_dumpable(dumpable: bool) -> None:
    """A non-dumpable process's /proc/<pid> entries (exe, fd, cwd, root, mem) are out
    of reach of anyone lacking CAP_SYS_PTRACE over it; execve of the container's
    program makes it dumpable again."""
    prctl(PR_SET_DUMPABLE, int(dumpable))


def set_child_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER), through the FFI that create's parent loads anyway."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, as two 32-bit words each


def set_capabilities(effective: set[int], permitted: set[int], inheritable: set[int],
                     every: set[int]) -> None:
    """capset(2) of all three sets at once: exactly these capabilities of `every`; any
    other (one this runtime does not know) keeps its current state, read by capget.
    Through the FFI the init has loaded anyway: no extension module to import between
    fork and execve."""
    lib = libc()
    header = (ffi.c_uint * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ffi.c_uint * 6)()  # [effective, permitted, inheritable] for bits 0-31, 32-63
    _check(lib.capget(header, data), "capget")
    for cap in every:
        if not 0 <= cap < 64:
            raise OSError(errno.EINVAL, f"capability {cap}: out of range")
        word, bit = 3 * (cap >> 5), 1 << (cap & 31)
        for i, wanted in enumerate((effective, permitted, inheritable)):
            data[word + i] = data[word + i] | bit if cap in wanted else data[word + i] & ~bit
    _check(lib.capset(header, data), "capset")


def setgroups(gids: list[int]) -> None:
    os.setgroups(gids)


def setresgid(gid: int) -> None:
    os.setresgid(gid, gid, gid)


def setresuid(uid: int) -> None:
    os.setresuid(uid, uid, uid)


def malloc_trim() -> None:
    """Return the free heap memory of this process to the kernel."""
    libc().malloc_trim(0)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc().prctl(option, ffi.c_ulong(arg2), ffi.c_ulong(arg3),
                                ffi.c_ulong(arg4), ffi.c_ulong(arg5)), "prctl")


def personality(persona: int) -> None:
    _check(libc().personality(ffi.c_ulong(persona)), "personality")


def join_session_keyring(name: str) -> int:
    return _check(libc().syscall(arch.number("keyctl"), _KEYCTL_JOIN_SESSION_KEYRING, _b(name)),
                  "keyctl")
