"""Cgroup managers: the interface the lifecycle code uses.

The lifecycle never touches cgroup files itself; it asks a manager made by
`manager_for` (at create) or `manager_from_state` (for every later command).

Order at create:  m = manager_for(spec.linux.cgroups_path, id, systemd, others=...)
                  m.create(); m.apply(spec.linux.resources); m.add_process(pid)
                  state["cgroup"] = m.to_state()
Later commands:   m = manager_from_state(state["cgroup"]) then pids()/freeze()/thaw()/
                  is_frozen()/update(resources)/stats()/oom_kill_count()/kill_all(sig)/
                  destroy().
"""

from __future__ import annotations

import os

from ocirun.errors import OciError

# Nothing here may be costly to import: every command that touches a container's cgroup
# (kill, delete, ps, pause...) comes through this module.  No `typing` at run time, and
# each command imports only the driver it uses (manager_for / manager_from_state).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Protocol

    from ocirun.cgroups.placement import Placement
    from ocirun.spec import Resources
else:
    Protocol = object  # CgroupManager documents the interface; type checkers check it

_SIGKILL = 9


class CgroupManager(Protocol):
    mode: str  # "v1", "hybrid" or "unified"
    cgroups_path: str

    def create(self) -> None:
        """Make the container's cgroup in every hierarchy (or join it if it exists)."""

    def apply(self, resources: Resources | None) -> None:
        """Write the resource limits and device rules (runc's default device rules are
        always added); an unsupported, set resource raises OciError naming it."""

    def update(self, resources: Resources) -> None:
        """Change live limits: only the fields set in `resources`; devices untouched."""

    def add_process(self, pid: int, paths: dict[str, str] | None = None) -> None:
        """Move pid into the container's cgroup (every hierarchy), or into `paths`."""

    def sub_paths(self, wanted: tuple[str, ...]) -> dict[str, str]:
        """The directories of `exec --cgroup` sub-cgroups, per hierarchy."""

    def pids(self) -> list[int]:
        """Every pid in the container's cgroup (recursively)."""

    def kill_all(self, signum: int = _SIGKILL) -> None:
        """Signal every process in the cgroup (frozen meanwhile so none escapes)."""

    def freeze(self) -> None:
        """Freeze and wait until the kernel reports the cgroup frozen."""

    def thaw(self) -> None: ...

    def thaw_below(self) -> None:
        """Thaw the cgroups the container froze below its own (v1: their tasks
        cannot act on SIGKILL)."""

    def is_frozen(self) -> bool: ...

    def frozen_from_above(self) -> bool:
        """An ancestor is frozen (v2; v1's is_frozen already says so)."""

    def stats(self) -> dict[str, Any]:
        """A snapshot shaped like runc's `events --stats` "data" object."""

    def oom_kill_count(self) -> int:
        """How many processes the OOM killer killed in this cgroup so far."""

    def destroy(self) -> None:
        """Remove what the container owns of its cgroup (retrying while killed
        processes leave), unless live processes of another container sharing it
        remain: the last ocirun container out removes what ocirun made; a cgroup
        that existed before any ocirun container made it is never removed."""

    def to_state(self) -> Placement:
        """What `manager_from_state` needs, stored in state.json."""


def _clean(path: str) -> str:
    """Normalise cgroupsPath; a relative path may not climb out of its base."""
    if "\0" in path:
        raise OciError("cgroups: linux.cgroupsPath contains a NUL byte")
    norm = os.path.normpath(path)
    if path.startswith("/"):
        return "/" + norm.lstrip("/") if norm != "/" else "/"
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise OciError(f"cgroups: linux.cgroupsPath {path!r} leaves its parent cgroup")
    return norm


def manager_for(cgroups_path: str | None, container_id: str, systemd: bool = False,
                others: Callable[[], Iterable[Placement]] | None = None) -> CgroupManager:
    """A manager for a new container; nothing is created until create().

    cgroupsPath: absolute -> that path in every hierarchy (relative to its root);
    relative -> nested under the caller's own cgroup in each hierarchy; unset -> the
    container id, relative (what runc does).  With `systemd`, "slice:prefix:name".

    `others` (the cgroup records of the other containers of the runtime's --root, read
    only if a leaf already exists) lets create() tell a cgroup another container made
    (adopted: removed by the last one out) from one that existed before (joined:
    never removed); see base.py.  The systemd driver needs none: its unit is the
    container's own.
    """
    from ocirun.cgroups import detect

    if systemd:
        from ocirun.cgroups import systemd as sd
        return sd.manager_for(cgroups_path, container_id)
    layout = detect.detect()
    path = _clean(cgroups_path or container_id)
    own = detect.proc_cgroups()
    hierarchies = layout.hierarchies
    paths: dict[str, str] = {}
    for h in hierarchies:
        if path.startswith("/"):
            paths[h.key] = os.path.normpath(h.mountpoint + path)
        else:
            paths[h.key] = os.path.join(h.fs_path(detect.own_cgroup(layout, h, own)), path)
    if layout.mode == "unified":
        from ocirun.cgroups.v2 import V2Manager
        return V2Manager(path, paths, others=others)
    from ocirun.cgroups.v1 import V1Manager
    return V1Manager(path, paths, hybrid=layout.mode == "hybrid", others=others)


def manager_from_state(placement: Placement) -> CgroupManager:
    """Rebuild the manager `to_state()` described (no detection: paths are stored)."""
    from ocirun.cgroups.placement import SystemdPlacement
    if isinstance(placement, SystemdPlacement):
        from ocirun.cgroups import systemd as sd
        return sd.from_state(placement)
    from ocirun.cgroups.records import file_manager
    return file_manager(placement)


__all__ = ["CgroupManager", "manager_for", "manager_from_state"]
