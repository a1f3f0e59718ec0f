"""The container's filesystem, built inside its own mount namespace by the init.

Order: propagation of / -> rootfs bound onto itself -> config mounts -> devices and
/dev symlinks -> (createContainer hooks) -> pivot_root -> masked and readonly paths ->
read-only root.  Before pivot_root every path inside the rootfs is resolved beneath an
fd of it (openat2 RESOLVE_IN_ROOT), held as an fd, and mounted or created through that
fd: a symlink swapped in at any moment can neither send a mount to the host nor
create anything outside the rootfs.
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


_IN_ROOT = ksys.RESOLVE_IN_ROOT | ksys.RESOLVE_NO_MAGICLINKS


def open_root(root: str) -> int:
    """O_PATH fd of the rootfs: every path of the config is resolved beneath it."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def resolve(root_fd: int, path: str, flags: int = 0) -> int:
    """O_PATH fd of `path` inside the rootfs: symlinks are followed as if the rootfs
    were "/", magic links are refused, so nothing resolves outside it however the
    rootfs changes meanwhile."""
    return ksys.openat2(root_fd, "/".join(_parts(path)) or ".", os.O_PATH | flags, _IN_ROOT)


def resolve_dir(root_fd: int, path: str, create: bool = True, _links: int = 0) -> int:
    """O_PATH fd of directory `path` inside the rootfs, missing components created
    one by one in the directory the previous one resolved to (never by a path that
    a swapped symlink could redirect); a dangling symlink gets its target created,
    inside the rootfs, as runc does."""
    try:
        return resolve(root_fd, path, os.O_DIRECTORY)
    except FileNotFoundError:
        if not create:
            raise
    done: list[str] = []
    fd = os.dup(root_fd)
    try:
        for part in _parts(path):
            done.append(part)
            try:
                step = resolve(root_fd, "/".join(done), os.O_DIRECTORY)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    if _links >= 40:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
                    link = os.readlink(part, dir_fd=fd)  # EINVAL: not a symlink
                    base = "" if link.startswith("/") else "/".join(done[:-1])
                    os.close(resolve_dir(root_fd, f"{base}/{link}", True, _links + 1))
                step = resolve(root_fd, "/".join(done), os.O_DIRECTORY)
            os.close(fd)
            fd = step
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mnt_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


class Target:
    """A mount destination inside the rootfs, held by an O_PATH fd from the moment it
    is resolved: mounts go to /proc/self/fd/N, the object itself, not to a path."""

    def __init__(self, root_fd: int, dest: str, fd: int) -> None:
        self.root_fd, self.dest, self.fd = root_fd, dest, fd
        self._reopened = False

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def mounted(self) -> str:
        """The path of the mount just made here (the fd still names what lies under
        it): resolved again, and refused unless it is a new mount."""
        if not self._reopened:
            fd = resolve(self.root_fd, self.dest)
            if _mnt_id(fd) == _mnt_id(self.fd):
                os.close(fd)
                raise OciError(f"mount to {self.dest}: the destination changed while it "
                               "was mounted")
            os.close(self.fd)
            self.fd, self._reopened = fd, True
        return self.path

    def close(self) -> None:
        os.close(self.fd)


def make_target(root_fd: int, dest: str, like_dir: bool) -> Target:
    """Resolve `dest` inside the rootfs, creating it (a directory, or an empty file for
    a file bind) and its parents where missing."""
    try:
        return Target(root_fd, dest, resolve(root_fd, dest))
    except FileNotFoundError:
        pass
    parts = _parts(dest)
    parent = resolve_dir(root_fd, "/".join(parts[:-1]))
    try:
        if like_dir:
            try:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            except FileExistsError:
                pass
        else:
            try:
                os.close(os.open(parts[-1], os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW |
                                 os.O_CLOEXEC, 0o644, dir_fd=parent))
            except FileExistsError:
                pass
    finally:
        os.close(parent)
    return Target(root_fd, dest, resolve(root_fd, dest))


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


def _require_real_dir(root_fd: int, m: Mount) -> None:
    """proc and sysfs go only on a directory reached through no symlink: a /proc that
    is a link would take the mount, and the masking of its paths, somewhere else
    (runc refuses a non-directory too)."""
    try:
        fd = ksys.openat2(root_fd, "/".join(_parts(m.destination)) or ".", os.O_PATH,
                          _IN_ROOT | ksys.RESOLVE_NO_SYMLINKS)
    except FileNotFoundError:
        return  # made below, as a directory
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise _mount_error(m, e) from None
        raise OciError(f"mount {m.type} to {m.destination}: the rootfs has a symlink "
                       f"on that path; {m.type} is mounted only on a real directory") from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OciError(f"mount {m.type} to {m.destination}: not a directory in the "
                           f"rootfs; {m.type} is mounted only on a real directory")
    finally:
        os.close(fd)


def _bind_source(bundle: str, m: Mount) -> str:
    source = m.source or ""
    return source if source.startswith("/") else os.path.join(bundle, source)


def bind_sources(spec: Spec) -> list[int]:
    """Indexes in spec.mounts of the bind mounts."""
    return [i for i, m in enumerate(spec.mounts)
            if m.type == "bind" or mountopts.parse(m.options).is_bind]


def open_bind_sources(spec: Spec, bundle: str) -> dict[int, int]:
    """O_PATH fds of the bind sources (index in spec.mounts -> fd), opened by a process
    of the runtime's credentials inside the container's new mount namespace: root in a
    new user namespace cannot walk a host directory such as a mode-0000 one, which the
    host's root can.  Opened in the container's copy of the mounts, so the bind keeps
    the copy's locks (its submounts cannot be unmounted to uncover what they hide).
    A source that cannot be opened is left to the init, which reports it."""
    fds: dict[int, int] = {}
    for i in bind_sources(spec):
        try:
            fds[i] = os.open(_bind_source(bundle, spec.mounts[i]), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            pass
    return fds


def mount_one(root_fd: int, bundle: str, m: Mount, keep_writable: bool = False,
              source_fd: int | None = None, mount_label: str | None = None) -> None:
    """Mount `m` beneath the rootfs.  `keep_writable`: leave out "ro" for now, so that
    mounts and device nodes can still go beneath it (see mount_all).  `source_fd`: the
    bind source, opened beforehand (see open_bind_sources)."""
    opts = mountopts.parse(m.options)
    if keep_writable:
        opts = opts.replace(flags=opts.flags & ~ksys.MS_RDONLY)
    if mount_label:
        from ocirun import lsm
        opts = opts.replace(data=lsm.mount_data(m.type or "", opts.is_bind, opts.data,
                                                mount_label))
    if m.type in ("proc", "sysfs"):
        _require_real_dir(root_fd, m)
    try:
        if m.type == "bind" or opts.is_bind:
            source = _bind_source(bundle, m)
            if source_fd is not None:
                is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
                source = f"/proc/self/fd/{source_fd}"
            else:
                is_dir = os.path.isdir(source)
            target = make_target(root_fd, m.destination, is_dir)
        else:
            target = make_target(root_fd, m.destination, True)
    except OSError as e:
        raise _mount_error(m, e) from None
    try:
        if m.type == "bind" or opts.is_bind:
            ksys.mount(source, target.path, None, ksys.MS_BIND | (opts.flags & ksys.MS_REC))
            if opts.flags & ~(ksys.MS_BIND | ksys.MS_REC):
                remount_bind(target.mounted(), opts.flags)
        elif m.type == "cgroup":
            _mount_cgroup(target, opts.flags)
        elif m.type == "tmpfs" and "tmpcopyup" in opts.extensions:
            _mount_tmpfs_copyup(target, opts)
        elif m.type == "sysfs":
            _mount_sysfs(m, target, opts)
        else:
            ksys.mount(m.source or m.type, target.path, m.type, opts.flags, opts.data or None)
        if opts.propagation:
            _set_propagation(target.mounted(), opts.propagation)
        if opts.recursive != (0, 0):
            target.mounted()
            ksys.mount_setattr_recursive(target.fd, *opts.recursive)
    except OSError as e:
        raise _mount_error(m, e) from None
    finally:
        target.close()


def _mount_sysfs(m: Mount, target: Target, opts: mountopts.MountOptions) -> None:
    """sysfs wants a network namespace owned by our user namespace; in a user
    namespace without one (rootless) the kernel refuses, and, as runc does, the
    runtime's /sys is bound instead."""
    try:
        ksys.mount(m.source or "sysfs", target.path, "sysfs", opts.flags, opts.data or None)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EBUSY):
            raise
        ksys.mount("/sys", target.path, None, ksys.MS_BIND | ksys.MS_REC)
        if opts.flags:
            remount_bind(target.mounted(), opts.flags)


def _mount_tmpfs_copyup(target: Target, opts: mountopts.MountOptions) -> None:
    """A tmpfs holding a copy of what the directory had: the fd taken before the
    mount still reads the directory underneath."""
    import shutil
    under = os.open(target.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ksys.mount("tmpfs", target.path, "tmpfs", opts.flags & ~ksys.MS_RDONLY,
                   opts.data or None)
        shutil.copytree(f"/proc/self/fd/{under}", target.mounted(), symlinks=True,
                        dirs_exist_ok=True)
    finally:
        os.close(under)
    if opts.flags & ksys.MS_RDONLY:
        ksys.mount(None, target.mounted(), None, ksys.MS_REMOUNT | opts.flags,
                   opts.data or None)


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


def _mount_cgroup(target: Target, flags: int) -> None:
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
                ksys.mount("cgroup2", target.path, "cgroup2", flags)
            else:
                ksys.mount(own_dir(mount_point, key, root), target.path, None,
                           ksys.MS_BIND | ksys.MS_REC)
                remount_bind(target.mounted(), flags)
            return
    ksys.mount("tmpfs", target.path, "tmpfs", flags & ~ksys.MS_RDONLY, "mode=755")
    dest = target.mounted()  # our own fresh tmpfs from here on
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


def prepare_root(spec: Spec, bundle: str = "") -> None:
    """Propagation of / and the rootfs bound onto itself (pivot_root wants a mount),
    or, for a bundle from `ocirun bundle create --overlay`, the image's overlay."""
    assert spec.root is not None
    requested = spec.linux.rootfs_propagation or "rslave"
    # An unbindable / could not be bound onto itself: finish() applies it after pivot.
    propagation = mountopts.PROPAGATION["rslave" if "unbindable" in requested else requested]
    ksys.mount(None, "/", None, propagation)
    if propagation not in _NOTHING_SHARED_AFTER:
        _make_parent_mount_private(spec.root.path)
    lower = spec.annotations.get(OVERLAY_LOWER)
    if lower is not None:
        mount_overlay_root(spec.root.path, lower, bundle)
    else:
        ksys.mount(spec.root.path, spec.root.path, None, ksys.MS_BIND | ksys.MS_REC)


# The image layers of an `--overlay` bundle: overlayfs lower dirs, top first, separated
# by ":"; the bundle's upper/ and work/ take the container's writes.
OVERLAY_LOWER = "run.ocirun.overlay.lowerdir"


def mount_overlay_root(root: str, lower: str, bundle: str) -> None:
    """The image's overlay on root.path, in the container's mount namespace.  Made by
    fsconfig, one call per layer (lowerdir+, Linux 6.8): no option string to split on
    commas, and no limit on the layers but the kernel's; older kernels get mount(2)
    with an option string, which no path given may then break with a comma."""
    dirs = lower.split(":")
    if not all(d.startswith("/") and "\\" not in d for d in dirs):
        raise OciError(f"annotation {OVERLAY_LOWER}: not a list of absolute directories")
    for d in dirs:
        if not os.path.isdir(d):
            raise OciError(f"annotation {OVERLAY_LOWER}: layer {d}: no such directory "
                           "(was it removed with `ocirun bundle rm`?)")
    upper, work = os.path.join(bundle, "upper"), os.path.join(bundle, "work")
    try:
        fd = ksys.fsmount_detached("overlay", [*(("lowerdir+", d) for d in dirs),
                                               ("upperdir", upper), ("workdir", work)], 0)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        if any("," in p for p in (*dirs, upper, work)):
            raise OciError("overlay root: a layer or bundle path holds a comma, which "
                           "this kernel's mount options cannot carry") from None
        ksys.mount("overlay", root, "overlay", 0,
                   f"lowerdir={lower},upperdir={upper},workdir={work}")
        return
    try:
        target = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            ksys.move_mount_to(fd, target)
        finally:
            os.close(target)
    finally:
        os.close(fd)


# A recursive slave or private / leaves no mount shared: nothing of pivot_root's to fix,
# and no mountinfo to read (the host's may be long) on the way to the container's start.
_NOTHING_SHARED_AFTER = (ksys.MS_SLAVE | ksys.MS_REC, ksys.MS_PRIVATE | ksys.MS_REC)


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


def _beneath(path: str, top: str) -> bool:
    top = "/" + "/".join(_parts(top))
    path = "/" + "/".join(_parts(path))
    return top == "/" or path == top or path.startswith(top + "/")


def mount_all(spec: Spec, bundle: str, root_fd: int,
              source_fds: dict[int, int] | None = None) -> tuple[Mount, ...]:
    """Mount the config's mounts in order (bind sources from `source_fds` where given).  A
    read-only mount that later mounts, device nodes or /dev/console go beneath is
    mounted writable here and made read-only by finish(), after them (runc does so for
    /dev only): returns those mounts."""
    source_fds = source_fds or {}
    deferred = []
    for i, m in enumerate(spec.mounts):
        later = [n.destination for n in spec.mounts[i + 1:]]
        covers = _beneath("/dev", m.destination) or any(
            _beneath(d, m.destination) for d in later)
        keep_writable = covers and mountopts.parse(m.options).flags & ksys.MS_RDONLY != 0
        mount_one(root_fd, bundle, m, keep_writable, source_fds.get(i),
                  spec.linux.mount_label)
        if keep_writable:
            deferred.append(m)
    return tuple(deferred)


def make_readonly(mounts: tuple[Mount, ...]) -> None:
    """The read-only remount mount_all left for after everything beneath it (the
    container's own root by now: paths resolve inside it)."""
    for m in mounts:
        opts = mountopts.parse(m.options)
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            target = Target(root, m.destination, resolve(root, m.destination))
            try:
                # Per mount, never the superblock: a sysfs or proc superblock can be
                # the host's too.
                remount_bind(target.path, opts.flags)
            finally:
                target.close()
        except OSError as e:
            raise _mount_error(m, e) from None
        finally:
            os.close(root)


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
    """A read-only tmpfs on each masked directory, the null device on anything else.
    The null device is the one opened and checked here, bound by fd: a /dev/null that
    has been made a symlink (to /proc/sys/kernel/core_pattern, say) would otherwise
    put a writable copy of its target where a mask belongs (runc's CVE-2025-31133)."""
    null_fd = -1
    try:
        for path in paths:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue
                raise OciError(f"masking {path}: {os.strerror(e.errno).lower()}") from None
            try:
                if stat.S_ISDIR(os.fstat(target).st_mode):
                    # by name: a tmpfs misplaced through a swapped name only hides more
                    ksys.mount("tmpfs", path, "tmpfs", ksys.MS_RDONLY)
                else:
                    if null_fd < 0:
                        null_fd = open_null_device()
                    ksys.bind_fd(null_fd, target)
            except OSError as e:
                raise OciError(f"masking {path}: {os.strerror(e.errno).lower()}") from None
            finally:
                os.close(target)
    finally:
        if null_fd >= 0:
            os.close(null_fd)


def open_null_device() -> int:
    """An O_PATH fd of the container's /dev/null, refused unless it is the null device
    itself (character device 1:3), not a symlink or another file put in its place."""
    try:
        fd = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OciError(f"linux.maskedPaths: opening /dev/null in the container: "
                       f"{os.strerror(e.errno).lower()}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise OciError("linux.maskedPaths: /dev/null in the container is not the null "
                       "device (1:3): refusing to mask paths with it")
    return fd


def readonly_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            ksys.mount(path, path, None, ksys.MS_BIND | ksys.MS_REC)
            # Read-only on top of what the covered mount had (nosuid, nodev, noexec):
            # a remount sets every per-mount flag anew.
            remount_bind(path, ksys.MS_RDONLY | _locked_flags(path))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise OciError(f"making {path} read-only: {os.strerror(e.errno).lower()}") from None


def finish(spec: Spec, writable_for_now: tuple[Mount, ...] = ()) -> None:
    """Steps that act on the container's view of / after pivot_root."""
    assert spec.root is not None
    make_readonly(writable_for_now)
    mask_paths(spec.linux.masked_paths)
    readonly_paths(spec.linux.readonly_paths)
    if spec.root.readonly:
        remount_bind("/", ksys.MS_RDONLY)
    if spec.linux.rootfs_propagation:
        ksys.mount(None, "/", None, mountopts.PROPAGATION[spec.linux.rootfs_propagation])
