"""cgroup v2 (unified) manager: one directory, controllers enabled from above.

A cgroup2 directory only gets a controller's files when its parent lists the
controller in cgroup.subtree_control.  Like runc, create() enables every controller
the parent offers, walking down from the first directory we created; directories
that existed before are written only at that one point (the parent of our topmost
new directory), which is also what runc does.  The enabling itself is in common.py
(a hybrid v1 manager needs it too).
"""

from __future__ import annotations

import os
import time

from ocirun.cgroups import fsutil
from ocirun.cgroups.base import FREEZE_TIMEOUT, BaseManager
from ocirun.cgroups.common import (SIGKILL, UNIFIED, controllers_of, enable_controllers,
                                   top_created)
from ocirun.cgroups.common import controllers as _controllers
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocirun.cgroups.devices import DeviceState
    from ocirun.cgroups.resources import Write


class V2Manager(BaseManager):
    mode = "unified"

    @property
    def leaf(self) -> str:
        return self.paths[UNIFIED]

    @property
    def primary(self) -> str:
        return self.leaf

    def _available(self) -> set[str]:
        own = _controllers(self.leaf)
        top = top_created(self.leaf, self.created)
        if top is not None:
            own |= _controllers(os.path.dirname(top))
        return own

    def version_of(self, controller: str) -> int | None:
        # Device control is a BPF program on cgroup2, not a controller file.
        if controller in ("", "devices") or controller in self._available():
            return 2
        return None

    def dir_for(self, controller: str) -> str | None:
        return self.leaf if self.version_of(controller) == 2 else None

    def _after_mkdir(self, key: str, made: list[str]) -> None:
        if made:
            enable_controllers(self.leaf, _controllers(os.path.dirname(made[0])), self.created,
                               strict=False)

    def _prepare(self, writes: list[Write]) -> None:
        wanted = controllers_of(writes) - _controllers(self.leaf)
        if wanted:
            enable_controllers(self.leaf, wanted, self.created)

    def _apply_devices(self, state: DeviceState) -> None:
        from ocirun.cgroups import devices_bpf  # bpf(2) via the FFI: only when loading one
        devices_bpf.install(self.leaf, state)

    # ------------------------------------------------------------------ freeze
    def _set_frozen(self, frozen: bool) -> None:
        freeze = os.path.join(self.leaf, "cgroup.freeze")
        if not os.path.exists(freeze):
            raise OciError("cgroups: pause/resume needs cgroup.freeze (Linux 5.2 or later)")
        want = "1" if frozen else "0"
        fsutil.write(freeze, want)
        deadline = time.monotonic() + FREEZE_TIMEOUT
        delay = 0.001
        events = os.path.join(self.leaf, "cgroup.events")
        # cgroup.freeze is the request; cgroup.events "frozen" says it took effect.
        while fsutil.read_keyed(events).get("frozen", 0) != int(want):
            if time.monotonic() >= deadline:
                if frozen:
                    fsutil.write(freeze, "0")
                raise OciError(f"cgroups: {self.leaf} did not {'freeze' if frozen else 'thaw'}"
                               f" within {FREEZE_TIMEOUT:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        if self.is_frozen():  # a no-op without cgroup.freeze or when not frozen
            self._set_frozen(False)

    def is_frozen(self) -> bool:
        return (fsutil.read_or_none(os.path.join(self.leaf, "cgroup.freeze")) or "0").strip() == "1"

    def frozen_from_above(self) -> bool:
        """A frozen ancestor freezes us too, whatever our own cgroup.freeze says."""
        d = os.path.dirname(self.leaf)
        while os.path.exists(os.path.join(d, "cgroup.freeze")):
            if (fsutil.read_or_none(os.path.join(d, "cgroup.freeze")) or "0").strip() == "1":
                return True
            d = os.path.dirname(d)
        return False

    def kill_all(self, signum: int = SIGKILL) -> None:
        kill = os.path.join(self.leaf, "cgroup.kill")
        if signum == SIGKILL and os.path.exists(kill):
            fsutil.write(kill, "1")  # atomic and race-free, Linux 5.14+
            return
        super().kill_all(signum)

    # ------------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        from ocirun.cgroups import stats
        return stats.v2_stats(self.leaf)

    def oom_kill_count(self) -> int:
        return fsutil.read_keyed(os.path.join(self.leaf, "memory.events")).get("oom_kill", 0)
