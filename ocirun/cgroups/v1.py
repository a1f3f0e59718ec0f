"""cgroup v1 (and hybrid) manager: one directory per mounted hierarchy.

In hybrid mode the cgroup2 mount is one more hierarchy: the process is placed there
too (as runc does), and controllers that only it carries (hugetlb on this machine)
are enabled and written there.
"""

from __future__ import annotations

import os
import time

from ocirun.cgroups import fsutil
from ocirun.cgroups.base import FREEZE_TIMEOUT, BaseManager
from ocirun.cgroups.common import UNIFIED, controllers_of, enable_controllers, top_created
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

    from ocirun.cgroups.devices import DeviceState
    from ocirun.cgroups.placement import Placement
    from ocirun.cgroups.resources import Write


class V1Manager(BaseManager):
    def __init__(self, cgroups_path: str, paths: dict[str, str],
                 created: list[str] | None = None, hybrid: bool | None = None, *,
                 adopted: list[str] | None = None, classified: bool = False,
                 others: Callable[[], Iterable[Placement]] | None = None) -> None:
        super().__init__(cgroups_path, paths, created, adopted=adopted, classified=classified,
                         others=others)
        self.mode = "hybrid" if (UNIFIED in paths if hybrid is None else hybrid) else "v1"

    def _key_for(self, controller: str) -> str | None:
        for key in self.paths:
            if key and controller in key.split(","):
                return key
        return None

    def _unified_available(self) -> set[str]:
        """Controllers the cgroup2 mount could give our directory (hybrid only)."""
        d = self.paths.get(UNIFIED)
        if d is None:
            return set()
        # Our directory may not exist yet or have nothing enabled: the parent of the
        # topmost directory we made offers what enabling can give it.
        own = set((fsutil.read_or_none(os.path.join(d, "cgroup.controllers")) or "").split())
        top = top_created(d, self.created) or d
        above = fsutil.read_or_none(os.path.join(os.path.dirname(top), "cgroup.controllers"))
        return own | set((above or "").split())

    def version_of(self, controller: str) -> int | None:
        if controller and self._key_for(controller) is not None:
            return 1
        if UNIFIED in self.paths and (controller == "" or controller in self._unified_available()):
            return 2
        return None

    def dir_for(self, controller: str) -> str | None:
        key = self._key_for(controller) if controller else None
        if key is not None:
            return self.paths[key]
        if self.version_of(controller) == 2:
            return self.paths[UNIFIED]
        return None

    @property
    def primary(self) -> str:
        for c in ("pids", "freezer", "devices", "memory", "cpu", "name=systemd"):
            key = self._key_for(c)
            if key is not None:
                return self.paths[key]
        return next(iter(self.paths.values()))

    def _after_mkdir(self, key: str, made: list[str]) -> None:
        if "cpuset" in key.split(","):
            _fill_cpuset(self.paths[key])

    def _prepare(self, writes: list[Write]) -> None:
        wanted = {c for c in controllers_of(writes) if self.version_of(c) == 2}
        if wanted:
            enable_controllers(self.paths[UNIFIED], wanted, self.created)

    def _apply_devices(self, state: DeviceState) -> None:
        from ocirun.cgroups import devices
        d = self.dir_for("devices")
        assert d is not None
        for name, line in devices.v1_writes(state):
            fsutil.write(os.path.join(d, name), line, "linux.resources.devices")

    # ----------------------------------------------------------------- freezer
    def _freezer(self) -> str:
        d = self.dir_for("freezer")
        if d is None:
            raise OciError("cgroups: pause/resume needs the freezer cgroup controller, "
                           "which this host lacks")
        return os.path.join(d, "freezer.state")

    def _set_state(self, target: str) -> None:
        path = self._freezer()
        deadline = time.monotonic() + FREEZE_TIMEOUT
        delay = 0.001
        fsutil.write(path, target)
        while True:
            state = fsutil.read(path).strip()
            if state == target:
                return
            if time.monotonic() >= deadline:
                if target == "FROZEN":
                    fsutil.write(path, "THAWED")  # never leave it half frozen
                raise OciError(f"cgroups: {path} stuck in {state} (wanted {target})")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            # A task that was forking may have escaped the freeze: ask again.
            fsutil.write(path, target)

    def freeze(self) -> None:
        self._set_state("FROZEN")

    def thaw(self) -> None:
        if self.is_frozen():  # also true without a freezer: nothing to thaw then
            self._set_state("THAWED")

    def is_frozen(self) -> bool:
        d = self.dir_for("freezer")
        if d is None:
            return False
        state = (fsutil.read_or_none(os.path.join(d, "freezer.state")) or "").strip()
        return state in ("FROZEN", "FREEZING")

    def thaw_below(self) -> None:
        d = self.dir_for("freezer")
        if d is None:
            return
        from ocirun import fstree
        try:
            below = fstree.walk(d)
            next(below)  # our own cgroup: thaw()'s
            for fd, name in below:
                if name is None and fsutil.read_at(fd, "freezer.self_freezing").strip() == b"1":
                    fsutil.write_at(fd, "freezer.state", b"THAWED")
        except OSError:
            pass  # gone meanwhile; rmdir_tree reports what is left

    # ------------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        from ocirun.cgroups import stats
        return stats.v1_stats(self.dir_for, self.version_of)

    def oom_kill_count(self) -> int:
        d = self.dir_for("memory")
        if d is None:
            return 0
        return fsutil.read_keyed(os.path.join(d, "memory.oom_control")).get("oom_kill", 0)


_CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")


def _fill_cpuset(leaf: str) -> None:
    """No task may join an empty v1 cpuset, and a new level starts empty (so may one
    an engine made beforehand, as runc also handles): each empty level from the
    nearest filled ancestor down gets its parent's sets."""
    empty = []
    d = leaf
    while not all((fsutil.read_or_none(os.path.join(d, name)) or "").strip()
                  for name in _CPUSET_FILES):
        empty.append(d)
        parent = os.path.dirname(d)
        if parent == d or not os.path.exists(os.path.join(parent, "cpuset.cpus")):
            break
        d = parent
    for d in reversed(empty):
        for name in _CPUSET_FILES:
            own = os.path.join(d, name)
            if not (fsutil.read_or_none(own) or "").strip():
                fsutil.write(own, fsutil.read(os.path.join(os.path.dirname(d), name)).strip())
