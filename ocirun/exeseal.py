"""The interpreter that enters containers runs from a sealed view of itself.

ocirun's children (stage1, the init, exec's joiner and process) are forks of the
runtime: until their execve they run the host's Python interpreter, inside the
container's namespaces.  A container process that reaches /proc/<pid>/exe of one of
them (CVE-2019-5736: through `exec`, a shared pid namespace or `#!/proc/self/exe`)
must not be able to open the host's interpreter for writing.  So the runtime itself is
executed from a file that cannot be written whatever the caller's capabilities:

- an overlayfs made of the interpreter's directory as its only layers (no upper layer:
  writes are refused with EROFS), created with fsopen/fsmount and never attached to
  any mount namespace, so no one can remount it (runc's answer too); ~0.2 ms;
- where that is refused (no overlayfs, an unprivileged caller), a sealed memfd copy
  (F_SEAL_WRITE cannot be undone); a few ms per MB of interpreter.

The installed launcher (ocirun/launcher.c) starts the interpreter this way, so a
command pays nothing here; any other way in (`python3 -m ocirun`, pip's script)
re-executes itself once through `ensure_sealed` before it creates a child.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# Commands that fork processes into a container's namespaces.
SEALED_COMMANDS = ("create", "run", "exec")
_REEXEC_MARK = "_OCIRUN_SEALED_REEXEC"
_F_GET_SEALS = 1034
_F_ADD_SEALS = 1033
_F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
_ST_RDONLY = 1


def exe_is_sealed(exe: str = "/proc/self/exe") -> bool:
    """Whether `exe` (a process's exe link) can not be opened for writing: on a
    read-only mount, or a memfd sealed against writes."""
    try:
        if os.statvfs(exe).f_flag & _ST_RDONLY:
            return True
        import fcntl
        fd = os.open(exe, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return bool(fcntl.fcntl(fd, _F_GET_SEALS) & _F_SEAL_WRITE)
        finally:
            os.close(fd)
    except OSError:
        return False  # not a memfd (EINVAL), or unreadable


def lower_dirs(python: str) -> str:
    """overlayfs's lowerdir for a read-only view of `python`'s directory: it wants two
    layers that do not contain each other; the second one only fills the slot."""
    bindir = os.path.dirname(python)
    for filler in ("/dev", "/run", "/tmp"):
        if not (bindir + "/").startswith(filler + "/") and os.path.isdir(filler):
            break
    else:
        raise OSError(0, "no directory beside the interpreter's to fill the second layer")

    def escape(path: str) -> str:
        return path.replace("\\", "\\\\").replace(":", "\\:")
    return f"{escape(bindir)}:{escape(filler)}"


def sealed_overlay(python: str) -> int:
    """O_PATH fd of `python` seen through a detached read-only overlayfs."""
    from ocirun import sys as ksys
    mnt = ksys.fsmount_detached("overlay", {"lowerdir": lower_dirs(python)},
                                ksys.MOUNT_ATTR_RDONLY | ksys.MOUNT_ATTR_NOSUID |
                                ksys.MOUNT_ATTR_NODEV)
    try:
        return os.open(os.path.basename(python), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=mnt)
    finally:
        os.close(mnt)


def sealed_memfd(python: str) -> int:
    """A memfd copy of `python`, sealed against any later write."""
    import fcntl
    fd = os.memfd_create("ocirun-python", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        src = os.open(python, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            copied = 0
            while copied < size:
                sent = os.sendfile(fd, src, copied, size - copied)
                if sent == 0:
                    raise OSError(0, f"{python} shrank while it was copied")
                copied += sent
        finally:
            os.close(src)
        fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SEAL | _F_SEAL_SHRINK | _F_SEAL_GROW |
                    _F_SEAL_WRITE)
        return fd
    except BaseException:
        os.close(fd)
        raise


def ensure_sealed() -> None:
    """Return if this interpreter runs sealed; otherwise execute it again, with the
    same arguments, environment and fds, from a sealed view (never returns then)."""
    if exe_is_sealed():
        os.environ.pop(_REEXEC_MARK, None)
        return
    from ocirun.errors import OciError
    if os.environ.get(_REEXEC_MARK):
        raise OciError("cannot run the interpreter sealed (its /proc/self/exe stays "
                       "writable): refusing to start container processes from it")
    _reexec()
    raise AssertionError("unreachable")


def _reexec() -> NoReturn:
    from ocirun import log
    from ocirun.errors import OciError
    python = os.path.realpath(sys.executable)
    errors = []
    for how in (sealed_overlay, sealed_memfd):
        try:
            fd = how(python)
        except OSError as e:
            errors.append(f"{how.__name__}: {e.strerror or e}")
            continue
        log.debug(f"re-executing {python} through {how.__name__} (not started by the "
                  "installed launcher)")
        os.environ[_REEXEC_MARK] = "1"
        try:
            os.execve(fd, sys.orig_argv, os.environ)
        except OSError as e:
            errors.append(f"execve through {how.__name__}: {e.strerror or e}")
            os.close(fd)
    raise OciError(f"cannot run {python} sealed: {'; '.join(errors)}")
