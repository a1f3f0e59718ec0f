"""Mount option strings (as in config.json `mounts[].options`) -> mount(2) arguments."""

from __future__ import annotations

from ocirun.record import Record

from ocirun import sys as ksys

# option -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "defaults": (False, 0),
    "ro": (False, ksys.MS_RDONLY), "rw": (True, ksys.MS_RDONLY),
    "nosuid": (False, ksys.MS_NOSUID), "suid": (True, ksys.MS_NOSUID),
    "nodev": (False, ksys.MS_NODEV), "dev": (True, ksys.MS_NODEV),
    "noexec": (False, ksys.MS_NOEXEC), "exec": (True, ksys.MS_NOEXEC),
    "sync": (False, ksys.MS_SYNCHRONOUS), "async": (True, ksys.MS_SYNCHRONOUS),
    "dirsync": (False, ksys.MS_DIRSYNC),
    "remount": (False, ksys.MS_REMOUNT),
    "mand": (False, ksys.MS_MANDLOCK), "nomand": (True, ksys.MS_MANDLOCK),
    "noatime": (False, ksys.MS_NOATIME), "atime": (True, ksys.MS_NOATIME),
    "nodiratime": (False, ksys.MS_NODIRATIME), "diratime": (True, ksys.MS_NODIRATIME),
    "relatime": (False, ksys.MS_RELATIME), "norelatime": (True, ksys.MS_RELATIME),
    "strictatime": (False, ksys.MS_STRICTATIME), "nostrictatime": (True, ksys.MS_STRICTATIME),
    "lazytime": (False, ksys.MS_LAZYTIME), "nolazytime": (True, ksys.MS_LAZYTIME),
    "nosymfollow": (False, ksys.MS_NOSYMFOLLOW), "symfollow": (True, ksys.MS_NOSYMFOLLOW),
    "bind": (False, ksys.MS_BIND), "rbind": (False, ksys.MS_BIND | ksys.MS_REC),
    "silent": (False, ksys.MS_SILENT), "loud": (True, ksys.MS_SILENT),
}

PROPAGATION: dict[str, int] = {
    "private": ksys.MS_PRIVATE, "rprivate": ksys.MS_PRIVATE | ksys.MS_REC,
    "shared": ksys.MS_SHARED, "rshared": ksys.MS_SHARED | ksys.MS_REC,
    "slave": ksys.MS_SLAVE, "rslave": ksys.MS_SLAVE | ksys.MS_REC,
    "unbindable": ksys.MS_UNBINDABLE, "runbindable": ksys.MS_UNBINDABLE | ksys.MS_REC,
}

# Recursive options (runtime-spec 1.1, mount_setattr(2) with AT_RECURSIVE, Linux 5.12+):
# option -> (attributes to set, attributes to clear).
_ATIME = ksys.MOUNT_ATTR__ATIME
_RECURSIVE: dict[str, tuple[int, int]] = {
    "rro": (ksys.MOUNT_ATTR_RDONLY, 0), "rrw": (0, ksys.MOUNT_ATTR_RDONLY),
    "rnosuid": (ksys.MOUNT_ATTR_NOSUID, 0), "rsuid": (0, ksys.MOUNT_ATTR_NOSUID),
    "rnodev": (ksys.MOUNT_ATTR_NODEV, 0), "rdev": (0, ksys.MOUNT_ATTR_NODEV),
    "rnoexec": (ksys.MOUNT_ATTR_NOEXEC, 0), "rexec": (0, ksys.MOUNT_ATTR_NOEXEC),
    "rnodiratime": (ksys.MOUNT_ATTR_NODIRATIME, 0),
    "rdiratime": (0, ksys.MOUNT_ATTR_NODIRATIME),
    "rrelatime": (ksys.MOUNT_ATTR_RELATIME, _ATIME), "rnorelatime": (0, _ATIME),
    "rnoatime": (ksys.MOUNT_ATTR_NOATIME, _ATIME), "ratime": (0, _ATIME),
    "rstrictatime": (ksys.MOUNT_ATTR_STRICTATIME, _ATIME), "rnostrictatime": (0, _ATIME),
    "rnosymfollow": (ksys.MOUNT_ATTR_NOSYMFOLLOW, 0),
    "rsymfollow": (0, ksys.MOUNT_ATTR_NOSYMFOLLOW),
}

# Options the runtime handles itself rather than passing to the kernel.
_RUNTIME_ONLY = {"tmpcopyup", "idmap", "ridmap", "copy-symlink"}


class MountOptions(Record):
    flags: int
    propagation: tuple[int, ...]
    data: str
    extensions: frozenset[str]
    recursive: tuple[int, int] = (0, 0)  # mount_setattr attributes (set, clear)

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & ksys.MS_BIND)


def parse(options: tuple[str, ...]) -> MountOptions:
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    extensions: set[str] = set()
    rec_set = rec_clr = 0
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION:
            propagation.append(PROPAGATION[opt])
        elif opt in _RUNTIME_ONLY:
            extensions.add(opt)
        elif opt in _RECURSIVE:
            add, drop = _RECURSIVE[opt]
            rec_set = (rec_set & ~drop) | add
            rec_clr = (rec_clr & ~add) | drop
        else:
            data.append(opt)
    return MountOptions(flags, tuple(propagation), ",".join(data), frozenset(extensions),
                        (rec_set, rec_clr))


def known_options() -> list[str]:
    return sorted([*_FLAGS, *PROPAGATION, *_RECURSIVE, "tmpcopyup"])
