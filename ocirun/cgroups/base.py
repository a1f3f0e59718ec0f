"""What the v1 and v2 cgroupfs managers share: directories, placement, removal, writes.

A manager knows one directory per mounted hierarchy (`paths`, keyed like
detect.Hierarchy.key) and the directories it created itself (`created`), which are
the only ones `destroy` removes.  Both survive in state.json via to_state().
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ocirun.cgroups import devices, fsutil
from ocirun.cgroups.resources import Write, plan
from ocirun.errors import OciError
from ocirun.spec import Resources

DESTROY_TIMEOUT = 1.0  # seconds to wait for killed processes to leave the cgroup
FREEZE_TIMEOUT = 5.0


class BaseManager:
    mode = ""  # "v1", "hybrid" or "unified"

    def __init__(self, cgroups_path: str, paths: dict[str, str],
                 created: list[str] | None = None) -> None:
        self.cgroups_path = cgroups_path  # as resolved from the spec, for humans
        self.paths = dict(paths)
        self.created: list[str] = list(created or [])

    # ------------------------------------------------------------ to override
    def version_of(self, controller: str) -> int | None:
        raise NotImplementedError

    def dir_for(self, controller: str) -> str | None:
        """The directory holding `controller`'s files ("" is cgroup2's core files)."""
        raise NotImplementedError

    def _after_mkdir(self, key: str, made: list[str]) -> None:
        """Per-hierarchy fix-ups of freshly made directories (cpuset, controllers)."""

    def _prepare(self, writes: list[Write]) -> None:
        """Make the controllers `writes` need usable (v2: enable them)."""

    def _apply_devices(self, state: devices.DeviceState) -> None:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def oom_kill_count(self) -> int:
        raise NotImplementedError

    @property
    def primary(self) -> str:
        """The directory whose cgroup.procs lists the container's processes."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def create(self) -> None:
        for key, directory in self.paths.items():
            made = fsutil.makedirs(directory)
            # Record before fixing up, so a failure below still lets destroy() clean up.
            self.created += made
            self._after_mkdir(key, made)

    def apply(self, resources: Resources | None) -> None:
        """Write every limit in `resources` plus the device rules (with runc's defaults)."""
        self._write(plan(resources, self.version_of))
        if self.version_of("devices") is not None:
            rules = resources.devices if resources is not None else ()
            self._apply_devices(devices.reduce_rules(devices.with_defaults(rules)))
        elif resources is not None and resources.devices and self.mode != "unified":
            raise OciError("cgroups: linux.resources.devices: the devices cgroup controller "
                           "is not available on this host")

    def update(self, resources: Resources) -> None:
        """Change live limits: only the fields set in `resources`; devices stay as they are.

        memory.checkBeforeUpdate refuses a limit below the current usage (as runc).
        """
        m = resources.memory
        if m is not None and m.check_before_update and m.limit is not None and m.limit > 0:
            usage = self._memory_usage()
            if usage is not None and m.limit < usage:
                raise OciError(f"cgroups: memory limit {m.limit} is below the current usage "
                               f"{usage}")
        self._write(plan(resources, self.version_of))

    def _memory_usage(self) -> int | None:
        d = self.dir_for("memory")
        if d is None:
            return None
        name = "memory.current" if self.version_of("memory") == 2 else "memory.usage_in_bytes"
        return fsutil.read_int(os.path.join(d, name))

    def add_process(self, pid: int) -> None:
        for directory in self.paths.values():
            fsutil.write_pid(directory, pid)

    def pids(self) -> list[int]:
        return fsutil.procs(self.primary)

    def kill_all(self, signum: int = signal.SIGKILL) -> None:
        """Signal every process in the cgroup, frozen meanwhile so none can fork away."""
        can_freeze = self.mode == "unified" or self.dir_for("freezer") is not None
        was_frozen = can_freeze and self.is_frozen()
        if can_freeze and not was_frozen:
            try:
                self.freeze()
            except OciError:
                can_freeze = False
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        finally:
            if can_freeze and not was_frozen:
                self.thaw()

    def destroy(self) -> None:
        """Remove the directories this manager created, deepest first.

        The container's own directories (the leaves) are removed with anything below
        them, retrying while killed processes leave; directories created above them
        are removed only if empty, since another container may share them.
        """
        if self.created:
            try:
                if self.is_frozen():
                    self.thaw()  # frozen processes cannot exit
            except OciError:
                pass
        deadline = time.monotonic() + DESTROY_TIMEOUT
        leaves = set(self.paths.values())
        errors: list[str] = []
        for directory in sorted(self.created, key=lambda d: d.count("/"), reverse=True):
            try:
                if directory in leaves:
                    fsutil.rmdir_tree(directory, deadline)
                else:
                    try:
                        os.rmdir(directory)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        pass  # still holds someone else's cgroup: not ours to remove
            except OciError as e:
                errors.append(e.message)
        self.created = [d for d in self.created if os.path.isdir(d)]
        if errors:
            raise OciError(errors[0])

    def to_state(self) -> dict[str, Any]:
        return {"driver": "cgroupfs", "mode": self.mode, "path": self.cgroups_path,
                "paths": dict(self.paths), "created": list(self.created)}

    # ------------------------------------------------------------------ writes
    def _write(self, writes: list[Write]) -> None:
        self._prepare(writes)
        i = 0
        while i < len(writes):
            w = writes[i]
            if w.swap_next and i + 1 < len(writes):
                # Pairs such as limit/memsw must be written in the order the kernel
                # accepts, which depends on the current values: try one, then the other.
                try:
                    self._do(w)
                    self._do(writes[i + 1])
                except OciError:
                    self._do(writes[i + 1])
                    self._do(w)
                i += 2
                continue
            self._do(w)
            i += 1

    def _do(self, w: Write) -> None:
        directory = self.dir_for(w.controller)
        if directory is None:
            raise OciError(f"cgroups: {w.what}: the {w.controller} cgroup controller is not "
                           "available on this host")
        for name in w.files:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                break
        else:
            if w.optional:
                return
            raise OciError(f"cgroups: {w.what}: not supported on this host "
                           f"(no {w.file} in {directory})")
        if isinstance(w.value, dict):
            value = w.value[name]
        elif callable(w.value):
            value = w.value(fsutil.read_or_none(path))
        else:
            value = w.value
        fsutil.write(path, value, w.what)
