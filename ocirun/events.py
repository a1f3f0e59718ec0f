"""`ocirun events`: resource usage and OOM notices of a container, as JSON lines.

`--stats` prints one {"type": "stats", "id": ID, "data": {...}} object (the cgroup
manager's runc-shaped snapshot) and exits.  Without it the command streams a stats
object every --interval and an {"type": "oom", "id": ID} object whenever the OOM
killer struck the container's cgroup, until the container stops.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Callable

from ocirun import state as st
from ocirun.errors import OciError

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
            "h": 3600.0}
OOM_POLL = 0.2  # seconds between OOM checks while streaming


def parse_duration(raw: str) -> float:
    """A Go duration ("5s", "1m30s", "250ms"); a bare number means seconds."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise OciError(f"invalid duration {raw!r} (like 5s, 500ms, 1m)") from None
    if value <= 0:
        raise OciError(f"invalid duration {raw!r}: must be positive")
    return value


def _manager(root: str, container_id: str) -> tuple[st.ContainerDir, Any]:
    cdir = st.open_container(root, container_id)
    state = st.load(cdir)
    if state.status in ("stopped", "creating"):
        raise OciError(f"container not running: {container_id} is {state.status}")
    if not state.cgroup:
        raise OciError(f"container {container_id} has no cgroup")
    from ocirun.cgroups import manager_from_state
    return cdir, manager_from_state(state.cgroup)


def stats_event(container_id: str, manager: Any) -> dict[str, Any]:
    return {"type": "stats", "id": container_id, "data": manager.stats()}


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")  # compact, as runc
    sys.stdout.flush()


def events(root: str, container_id: str, stats_only: bool, interval: float,
           emit: Callable[[dict[str, Any]], None] = _emit) -> None:
    cdir, manager = _manager(root, container_id)
    if stats_only:
        emit(stats_event(container_id, manager))
        return
    from ocirun.process import staying
    staying()
    ooms = manager.oom_kill_count()
    next_stats = time.monotonic()
    while True:
        if not cdir.exists() or st.load(cdir).status in ("stopped", "creating"):
            return  # stopped, or deleted under us
        count = manager.oom_kill_count()
        if count > ooms:
            emit({"type": "oom", "id": container_id})
        ooms = count
        now = time.monotonic()
        if now >= next_stats:
            emit(stats_event(container_id, manager))
            next_stats = now + interval
        time.sleep(max(0.01, min(OOM_POLL, next_stats - time.monotonic())))
