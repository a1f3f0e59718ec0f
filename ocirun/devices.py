"""Device nodes and /dev symlinks in the container's rootfs (before pivot_root)."""

from __future__ import annotations

import os
import stat

from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.rootfs import make_target, resolve_dir
from ocirun.spec import Device, Spec

DEFAULT_DEVICES = (
    Device("c", "/dev/null", 1, 3, 0o666, 0, 0),
    Device("c", "/dev/zero", 1, 5, 0o666, 0, 0),
    Device("c", "/dev/full", 1, 7, 0o666, 0, 0),
    Device("c", "/dev/random", 1, 8, 0o666, 0, 0),
    Device("c", "/dev/urandom", 1, 9, 0o666, 0, 0),
    Device("c", "/dev/tty", 5, 0, 0o666, 0, 0),
)

_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
)

_TYPE_BITS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def dev_is_bound_from_host(spec: Spec) -> bool:
    return any(m.destination.rstrip("/") == "/dev" and
               (m.type == "bind" or "bind" in m.options or "rbind" in m.options)
               for m in spec.mounts)


_TYPE_NAMES = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
               stat.S_IFIFO: "fifo", stat.S_IFREG: "regular file", stat.S_IFDIR: "directory",
               stat.S_IFLNK: "symbolic link", stat.S_IFSOCK: "socket"}


def _describe(mode: int, rdev: int) -> str:
    kind = _TYPE_NAMES.get(stat.S_IFMT(mode), "file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"{kind} {os.major(rdev)}:{os.minor(rdev)}"
    return kind


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent or "/", name


def check_existing(root_fd: int, dev: Device, bind: bool, where: str) -> None:
    """config-linux.md#devices: "If a file already exists at path that does not match the
    requested device, the runtime MUST generate an error."  A match is a node of the same
    type and numbers; when binding (user namespace) also an empty regular file, the
    mount point a bind leaves behind in the rootfs."""
    parent_path, name = _split(dev.path)
    try:
        parent = resolve_dir(root_fd, parent_path, create=False)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise OciError(f"{where}: {dev.path}: {os.strerror(e.errno).lower()}") from None
    want = _TYPE_BITS[dev.type]
    if stat.S_IFMT(st.st_mode) == want and (
            want == stat.S_IFIFO or
            st.st_rdev == os.makedev(dev.major or 0, dev.minor or 0)):
        return
    if bind and stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return
    wanted = _describe(want, os.makedev(dev.major or 0, dev.minor or 0))
    raise OciError(f"{where}: {dev.path} already exists in the rootfs as a "
                   f"{_describe(st.st_mode, st.st_rdev)}, not the requested {wanted}")


def _create(root_fd: int, dev: Device, bind: bool) -> None:
    if bind:
        # mknod is refused in a user namespace: bind the host's node instead.
        target = make_target(root_fd, dev.path, like_dir=False)
        try:
            ksys.mount(dev.path, target.path, None, ksys.MS_BIND)
        finally:
            target.close()
        return
    parent_path, name = _split(dev.path)
    parent = resolve_dir(root_fd, parent_path)
    try:
        try:
            os.unlink(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        mode = dev.file_mode if dev.file_mode is not None else 0o666
        old_umask = os.umask(0)  # the mode exactly, with no chmod by name afterwards
        try:
            os.mknod(name, mode | _TYPE_BITS[dev.type],
                     os.makedev(dev.major or 0, dev.minor or 0), dir_fd=parent)
        finally:
            os.umask(old_umask)
        os.chown(name, dev.uid or 0, dev.gid or 0, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)


def _symlink(root_fd: int, target: str, link: str, replace: bool = False) -> None:
    parent_path, name = _split(link)
    try:
        parent = resolve_dir(root_fd, parent_path, create=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if replace:
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
        try:
            os.symlink(target, name, dir_fd=parent)
        except FileExistsError:
            pass
    finally:
        os.close(parent)


def create_devices(spec: Spec, in_userns: bool, root_fd: int) -> None:
    wanted: list[Device] = []
    if not dev_is_bound_from_host(spec):
        wanted.extend(DEFAULT_DEVICES)
    listed = {d.path for d in spec.linux.devices}
    wanted = [d for d in wanted if d.path not in listed] + list(spec.linux.devices)
    for i, dev in enumerate(spec.linux.devices):
        check_existing(root_fd, dev, in_userns, f"linux.devices[{i}]")
    for dev in wanted:
        try:
            _create(root_fd, dev, in_userns)
        except OSError as e:
            raise OciError(f"creating device {dev.path}: {os.strerror(e.errno).lower()}") from None
    if dev_is_bound_from_host(spec):
        return
    for target, link in _SYMLINKS:
        _symlink(root_fd, target, link)
    try:
        os.close(resolve_dir(root_fd, "/dev/pts", create=False))
    except (FileNotFoundError, NotADirectoryError):
        return
    _symlink(root_fd, "pts/ptmx", "/dev/ptmx", replace=True)
