"""Which cgroup hierarchies this host mounts, and where the caller sits in them.

Three layouts exist in the wild:
  * unified: /sys/fs/cgroup is cgroup2 and holds every controller;
  * v1: one cgroup (v1) mount per controller set (cpu,cpuacct...), plus named
    hierarchies such as name=systemd;
  * hybrid: v1 as above plus a cgroup2 mount (usually /sys/fs/cgroup/unified) that
    may carry controllers no v1 hierarchy took (hugetlb on this machine).
Everything here reads /proc; nothing is written.
"""

from __future__ import annotations

import os

from ocirun.cgroups import fsutil
from ocirun.cgroups.common import UNIFIED  # noqa: F401 - "" keys the cgroup2 hierarchy
from ocirun.errors import OciError
from ocirun.record import Record


class Hierarchy(Record):
    """One mounted cgroup hierarchy."""

    key: str  # "cpu,cpuacct", "name=systemd", or UNIFIED for cgroup2
    mountpoint: str
    root: str  # the cgroup the mount exposes at `mountpoint` (mountinfo field 4)
    controllers: frozenset[str]  # v1: from the mount options; v2: cgroup.controllers

    @property
    def unified(self) -> bool:
        return self.key == UNIFIED

    def fs_path(self, cgroup: str) -> str:
        """Filesystem directory of `cgroup` (a path as /proc/<pid>/cgroup prints it)."""
        cgroup = "/" + cgroup.strip("/")
        root = "/" + self.root.strip("/")
        # The mount may expose a sub-tree (inside a container): strip its root.
        if root != "/" and (cgroup == root or cgroup.startswith(root + "/")):
            cgroup = cgroup[len(root):] or "/"
        return os.path.normpath(self.mountpoint + cgroup)


class Layout(Record):
    mode: str  # "unified", "hybrid" or "v1"
    hierarchies: tuple[Hierarchy, ...] = ()

    @property
    def unified(self) -> Hierarchy | None:
        for h in self.hierarchies:
            if h.unified:
                return h
        return None

    @property
    def v1(self) -> tuple[Hierarchy, ...]:
        return tuple(h for h in self.hierarchies if not h.unified)

    def v1_for(self, controller: str) -> Hierarchy | None:
        for h in self.v1:
            if controller in h.controllers:
                return h
        return None


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        code = field_[i + 1:i + 4]
        if field_[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _kernel_v1_controllers() -> set[str]:
    """Controllers the kernel knows and has enabled (from /proc/cgroups)."""
    out = set()
    for line in fsutil.read("/proc/cgroups").splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[3] == "1":
            out.add(parts[0])
    return out


def detect(mountinfo: str = "/proc/self/mountinfo", known: set[str] | None = None) -> Layout:
    """Parse mountinfo into the cgroup layout; the first mount of a hierarchy wins.

    `known` (v1 controller names, default from /proc/cgroups) separates controller
    names from other mount options such as rw or relatime.
    """
    known = _kernel_v1_controllers() if known is None else known
    hierarchies: dict[str, Hierarchy] = {}
    for line in fsutil.read(mountinfo).splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        tail = right.split()
        if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        fstype, root, mnt = tail[0], _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            if UNIFIED in hierarchies:
                continue
            try:
                ctrls = frozenset(fsutil.read(os.path.join(mnt, "cgroup.controllers")).split())
            except OciError:
                continue
            hierarchies[UNIFIED] = Hierarchy(UNIFIED, mnt, root, ctrls)
        elif fstype == "cgroup":
            opts = tail[2].split(",")
            names = sorted(o for o in opts if o in known or o.startswith("name="))
            if not names:
                continue
            key = ",".join(names)
            if key not in hierarchies:
                hierarchies[key] = Hierarchy(key, mnt, root, frozenset(names))
    if not hierarchies:
        raise OciError("cgroups: no cgroup filesystem is mounted")
    v1 = [h for k, h in hierarchies.items() if k != UNIFIED]
    if not v1:
        mode = "unified"
    elif UNIFIED in hierarchies:
        mode = "hybrid"
    else:
        mode = "v1"
    # Stable order: v1 hierarchies by key, then the unified one.
    ordered = tuple(sorted(v1, key=lambda h: h.key))
    if UNIFIED in hierarchies:
        ordered += (hierarchies[UNIFIED],)
    return Layout(mode, ordered)


def proc_cgroups(pid: int | str = "self") -> dict[str, str]:
    """/proc/<pid>/cgroup as {hierarchy key: cgroup path}.

    Keys match Hierarchy.key: v1 controller lists are sorted the same way, the
    cgroup2 line ("0::/x") maps to UNIFIED.
    """
    out: dict[str, str] = {}
    for line in fsutil.read(f"/proc/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        key = ",".join(sorted(c for c in ctrls.split(",") if c)) if ctrls else UNIFIED
        out[key] = path
    return out


def own_cgroup(layout: Layout, hierarchy: Hierarchy,
               cgroups: dict[str, str] | None = None) -> str:
    """The caller's cgroup path in `hierarchy` ("/" when the kernel reports none)."""
    cgroups = proc_cgroups() if cgroups is None else cgroups
    if hierarchy.key in cgroups:
        return cgroups[hierarchy.key]
    # A hierarchy mounted with a subset of a line's controllers: match by overlap.
    for key, path in cgroups.items():
        if key and hierarchy.controllers & set(key.split(",")):
            return path
    return "/"


def systemd_running() -> bool:
    """sd_booted(): systemd creates this directory early at boot and only then."""
    return os.path.isdir("/run/systemd/system")
