"""The container's filesystem, built inside its own mount namespace by the init.

Order: propagation of / -> rootfs bound onto itself -> config mounts -> devices and
/dev symlinks -> (createContainer hooks) -> pivot_root -> masked and readonly paths ->
read-only root.  Destinations are resolved inside the rootfs, so a symlink there can
never send a mount to the host.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirun import mountopts
from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.spec import Mount, Spec

_STATVFS_LOCKED = {  # statvfs f_flag bit -> the mount flag the kernel keeps locked
    1: ksys.MS_RDONLY, 2: ksys.MS_NOSUID, 4: ksys.MS_NODEV, 8: ksys.MS_NOEXEC,
    1024: ksys.MS_NOATIME, 2048: ksys.MS_NODIRATIME, 4096: ksys.MS_RELATIME,
}


def secure_join(root: str, unsafe: str) -> str:
    """root + unsafe, with every symlink in unsafe resolved as if root were '/'."""
    current = ""
    pending = [p for p in unsafe.split("/") if p]
    followed = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current) if current else ""
            continue
        candidate = f"{current}/{part}"
        try:
            st = os.lstat(root + candidate)
        except (FileNotFoundError, NotADirectoryError):
            current = candidate
            continue
        if not stat.S_ISLNK(st.st_mode):
            current = candidate
            continue
        followed += 1
        if followed > 255:
            raise OciError(f"{unsafe}: too many levels of symbolic links")
        target = os.readlink(root + candidate)
        if target.startswith("/"):
            current = ""
        pending = [p for p in target.split("/") if p] + pending
    return root + (current or "/") if current else root


def _mkdir_in(root: str, path: str) -> str:
    """Create path (a directory) inside root; returns the host path."""
    full = secure_join(root, path)
    os.makedirs(full, 0o755, exist_ok=True)
    return full


def _make_target(full: str, like_dir: bool) -> None:
    if like_dir:
        os.makedirs(full, 0o755, exist_ok=True)
        return
    os.makedirs(os.path.dirname(full), 0o755, exist_ok=True)
    if not os.path.lexists(full):
        os.close(os.open(full, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _locked_flags(path: str) -> int:
    flags = 0
    f_flag = os.statvfs(path).f_flag
    for bit, flag in _STATVFS_LOCKED.items():
        if f_flag & bit:
            flags |= flag
    return flags


def remount_bind(path: str, flags: int) -> None:
    """Apply per-mount flags to a bind mount (a bind ignores them on the first call)."""
    base = ksys.MS_BIND | ksys.MS_REMOUNT | (flags & ~(ksys.MS_BIND | ksys.MS_REC |
                                                      ksys.MS_REMOUNT))
    try:
        ksys.mount(None, path, None, base)
    except PermissionError:
        # In a user namespace, flags of the source mount are locked: keep them.
        ksys.mount(None, path, None, base | _locked_flags(path))


def _set_propagation(path: str, flags: tuple[int, ...]) -> None:
    for flag in flags:
        ksys.mount(None, path, None, flag)


def _mount_error(m: Mount, e: OSError) -> OciError:
    return OciError(f"mount {m.source or m.type or 'none'} to {m.destination}: "
                    f"{os.strerror(e.errno).lower() if e.errno else e}")


def mount_one(root: str, bundle: str, m: Mount) -> None:
    opts = mountopts.parse(m.options)
    dest = secure_join(root, m.destination if m.destination.startswith("/")
                       else "/" + m.destination)
    try:
        if m.type == "bind" or opts.is_bind:
            source = m.source or ""
            if not source.startswith("/"):
                source = os.path.join(bundle, source)
            _make_target(dest, os.path.isdir(source))
            ksys.mount(source, dest, None, ksys.MS_BIND | (opts.flags & ksys.MS_REC))
            if opts.flags & ~(ksys.MS_BIND | ksys.MS_REC):
                remount_bind(dest, opts.flags)
        elif m.type == "cgroup":
            _make_target(dest, True)
            _mount_cgroup(dest, opts.flags)
        else:
            _make_target(dest, True)
            if m.type == "tmpfs" and "tmpcopyup" in opts.extensions:
                _mount_tmpfs_copyup(m, dest, opts)
            elif m.type == "sysfs":
                _mount_sysfs(m, dest, opts)
            else:
                ksys.mount(m.source or m.type, dest, m.type, opts.flags, opts.data or None)
        _set_propagation(dest, opts.propagation)
    except OSError as e:
        raise _mount_error(m, e) from None


def _mount_sysfs(m: Mount, dest: str, opts: mountopts.MountOptions) -> None:
    """sysfs wants a network namespace owned by our user namespace; in a user
    namespace without one (rootless) the kernel refuses, and, as runc does, the
    runtime's /sys is bound instead."""
    try:
        ksys.mount(m.source or "sysfs", dest, "sysfs", opts.flags, opts.data or None)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EBUSY):
            raise
        ksys.mount("/sys", dest, None, ksys.MS_BIND | ksys.MS_REC)
        if opts.flags:
            remount_bind(dest, opts.flags)


def _mount_tmpfs_copyup(m: Mount, dest: str, opts: mountopts.MountOptions) -> None:
    import shutil
    staging = f"{dest}.ocirun-copyup"
    os.makedirs(staging, 0o700)
    try:
        ksys.mount("tmpfs", staging, "tmpfs", opts.flags & ~ksys.MS_RDONLY, opts.data or None)
        shutil.copytree(dest, staging, symlinks=True, dirs_exist_ok=True)
        ksys.mount(staging, dest, None, ksys.MS_MOVE)
        if opts.flags & ksys.MS_RDONLY:
            ksys.mount(None, dest, None, ksys.MS_REMOUNT | opts.flags)
    finally:
        os.rmdir(staging)


def _host_cgroup_mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, fstype, hierarchy key, mount root) of each cgroup hierarchy we see,
    first mount of each; keys as in /proc/self/cgroup ("" for cgroup2, sorted
    controllers or name=X for v1, other mount options such as xattr left out)."""
    from ocirun.cgroups import detect
    return [(h.mountpoint, "cgroup2" if h.unified else "cgroup", h.key, h.root)
            for h in detect.detect().hierarchies]


def _own_cgroup_paths() -> dict[str, str]:
    """hierarchy key (as above) -> this process's cgroup path in that hierarchy."""
    from ocirun.cgroups import detect
    return detect.proc_cgroups()


def _mount_cgroup(dest: str, flags: int) -> None:
    """Mount the container's own cgroup(s) at dest: cgroup2 directly, v1 (and hybrid)
    as a tmpfs of per-hierarchy mounts named as on the host, with the host's symlinks
    (cpu -> cpu,cpuacct).  In a cgroup namespace (the init joined its cgroup before
    unsharing it, so every path reads "/") the cgroup filesystems are mounted and show
    the namespace root; outside one, the container's own cgroup directories are bound,
    so the host's tree never shows either way."""
    from ocirun.cgroups import detect
    base = "/sys/fs/cgroup"
    mounts = _host_cgroup_mounts()
    own = _own_cgroup_paths()
    in_cgroupns = all(p == "/" for p in own.values())

    def own_dir(mount_point: str, key: str, root: str) -> str:
        h = detect.Hierarchy(key, mount_point, root, frozenset(key.split(",")))
        return h.fs_path(own.get(key, "/"))

    for mount_point, fstype, key, root in mounts:
        if mount_point == base and fstype == "cgroup2":  # unified
            if in_cgroupns:
                ksys.mount("cgroup2", dest, "cgroup2", flags)
            else:
                ksys.mount(own_dir(mount_point, key, root), dest, None,
                           ksys.MS_BIND | ksys.MS_REC)
                remount_bind(dest, flags)
            return
    ksys.mount("tmpfs", dest, "tmpfs", flags & ~ksys.MS_RDONLY, "mode=755")
    for mount_point, fstype, key, root in mounts:
        if os.path.dirname(mount_point) != base:
            continue  # only the standard layout is reproduced
        target = os.path.join(dest, os.path.basename(mount_point))
        os.makedirs(target, 0o755, exist_ok=True)
        if in_cgroupns:
            ksys.mount(fstype, target, fstype, flags, key if key else None)
        else:
            ksys.mount(own_dir(mount_point, key, root), target, None,
                       ksys.MS_BIND | ksys.MS_REC)
            remount_bind(target, flags)
    try:
        entries = list(os.scandir(base))
    except OSError:
        entries = []
    for entry in entries:
        link = os.path.join(dest, entry.name)
        if entry.is_symlink() and not os.path.lexists(link):
            os.symlink(os.readlink(entry.path), link)
    if flags & ksys.MS_RDONLY:
        ksys.mount(None, dest, None, ksys.MS_REMOUNT | flags, "mode=755")


def prepare_root(spec: Spec) -> None:
    """Propagation of / and the rootfs bound onto itself (pivot_root wants a mount)."""
    assert spec.root is not None
    requested = spec.linux.rootfs_propagation or "rslave"
    # An unbindable / could not be bound onto itself: finish() applies it after pivot.
    propagation = mountopts.PROPAGATION["rslave" if "unbindable" in requested else requested]
    ksys.mount(None, "/", None, propagation)
    _make_parent_mount_private(spec.root.path)
    ksys.mount(spec.root.path, spec.root.path, None, ksys.MS_BIND | ksys.MS_REC)


def _make_parent_mount_private(path: str) -> None:
    """pivot_root refuses a new root whose parent mount is shared."""
    best, best_shared = "", False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ", 1)[0].split()
            mount_point = fields[4]
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best = mount_point
                best_shared = any(o.startswith("shared:") for o in fields[6:])
    if best and best_shared:
        ksys.mount(None, best, None, ksys.MS_PRIVATE)


def mount_all(spec: Spec, bundle: str) -> None:
    assert spec.root is not None
    for m in spec.mounts:
        mount_one(spec.root.path, bundle, m)


def pivot(root: str, no_pivot: bool) -> None:
    if no_pivot:
        os.chdir(root)
        ksys.mount(root, "/", None, ksys.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
        return
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.chdir(root)
        # pivot_root(".", ".") stacks the old root on top of the new one; detaching
        # it from there needs no directory in the container's rootfs.
        ksys.pivot_root(".", ".")
        os.fchdir(old_root)
        ksys.mount(None, ".", None, ksys.MS_SLAVE | ksys.MS_REC)
        ksys.umount2(".", ksys.MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")


def mask_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                ksys.mount("tmpfs", path, "tmpfs", ksys.MS_RDONLY)
            else:
                ksys.mount("/dev/null", path, None, ksys.MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise OciError(f"masking {path}: {os.strerror(e.errno).lower()}") from None


def readonly_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            ksys.mount(path, path, None, ksys.MS_BIND | ksys.MS_REC)
            remount_bind(path, ksys.MS_RDONLY)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise OciError(f"making {path} read-only: {os.strerror(e.errno).lower()}") from None


def finish(spec: Spec) -> None:
    """Steps that act on the container's view of / after pivot_root."""
    assert spec.root is not None
    mask_paths(spec.linux.masked_paths)
    readonly_paths(spec.linux.readonly_paths)
    if spec.root.readonly:
        remount_bind("/", ksys.MS_RDONLY)
    if spec.linux.rootfs_propagation:
        ksys.mount(None, "/", None, mountopts.PROPAGATION[spec.linux.rootfs_propagation])
