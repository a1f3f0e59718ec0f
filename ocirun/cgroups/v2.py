"""cgroup v2 (unified) manager: one directory, controllers enabled from above.

A cgroup2 directory only gets a controller's files when its parent lists the
controller in cgroup.subtree_control.  Like runc, create() enables every controller
the parent offers, walking down from the first directory we created; directories
that existed before are written only at that one point (the parent of our topmost
new directory), which is also what runc does.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ocirun.cgroups import devices, devices_bpf, fsutil, stats
from ocirun.cgroups.base import FREEZE_TIMEOUT, BaseManager
from ocirun.cgroups.detect import UNIFIED
from ocirun.cgroups.resources import Write, controllers_of
from ocirun.errors import OciError


def _controllers(directory: str, name: str = "cgroup.controllers") -> set[str]:
    return set((fsutil.read_or_none(os.path.join(directory, name)) or "").split())


def _top_created(leaf: str, created: list[str]) -> str | None:
    ours = [d for d in created if leaf == d or leaf.startswith(d.rstrip("/") + "/")]
    return min(ours, key=len) if ours else None


def enable_controllers(leaf: str, wanted: set[str], created: list[str],
                       strict: bool = True) -> None:
    """Enable `wanted` on the path down to `leaf`, from the parent of our top new dir.

    Only levels above directories this manager created are touched; for a cgroup we
    merely joined nothing is written (its owner decides what it gets).
    """
    top = _top_created(leaf, created)
    if top is None or not wanted:
        return
    chain = [os.path.dirname(top)]
    rel = os.path.relpath(os.path.dirname(leaf), os.path.dirname(top))
    if rel != ".":
        cur = os.path.dirname(top)
        for part in rel.split("/"):
            cur = os.path.join(cur, part)
            chain.append(cur)
    for d in chain:
        need = (wanted & _controllers(d)) - _controllers(d, "cgroup.subtree_control")
        if not need:
            continue
        path = os.path.join(d, "cgroup.subtree_control")
        try:
            fsutil.write(path, " ".join(f"+{c}" for c in sorted(need)))
        except OciError:
            # One refusal (e.g. a threaded or busy parent) must not cost the others.
            for c in sorted(need):
                try:
                    fsutil.write(path, f"+{c}")
                except OciError as e:
                    if strict:
                        raise OciError(f"cgroups: cannot enable the {c} controller for "
                                       f"{leaf}: {e.message.split(': ')[-1]}") from None


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
        top = _top_created(self.leaf, self.created)
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

    def _apply_devices(self, state: devices.DeviceState) -> None:
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

    def kill_all(self, signum: int = signal.SIGKILL) -> None:
        kill = os.path.join(self.leaf, "cgroup.kill")
        if signum == signal.SIGKILL and os.path.exists(kill):
            fsutil.write(kill, "1")  # atomic and race-free, Linux 5.14+
            return
        super().kill_all(signum)

    # ------------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        return stats.v2_stats(self.leaf)

    def oom_kill_count(self) -> int:
        return fsutil.read_keyed(os.path.join(self.leaf, "memory.events")).get("oom_kill", 0)
