"""`ocirun update`: change a live container's cgroup limits.

The new limits come from `--resources FILE|-` (a linux.resources JSON object, as
containerd, podman and dockerd send it) and runc's individual flags, which win over the
file.  Both are merged into one JSON object and parsed by spec.parse_resources, so the
checks and error paths are those of config.json.  Only the fields given are written;
as in runc, 0 (or "") in the numeric limits means "unchanged".
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from ocirun import state as st
from ocirun.errors import OciError
from ocirun.spec import Resources, parse_resources

# flag dest -> (section, key, parser name)
FLAG_FIELDS: dict[str, tuple[str, str, str]] = {
    "memory": ("memory", "limit", "bytes"),
    "memory_reservation": ("memory", "reservation", "bytes"),
    "memory_swap": ("memory", "swap", "bytes"),
    "kernel_memory": ("memory", "kernel", "bytes"),
    "kernel_memory_tcp": ("memory", "kernelTCP", "bytes"),
    "cpu_shares": ("cpu", "shares", "int"),
    "cpu_quota": ("cpu", "quota", "int"),
    "cpu_period": ("cpu", "period", "int"),
    "cpu_rt_period": ("cpu", "realtimePeriod", "int"),
    "cpu_rt_runtime": ("cpu", "realtimeRuntime", "int"),
    "cpu_idle": ("cpu", "idle", "int"),
    "cpuset_cpus": ("cpu", "cpus", "str"),
    "cpuset_mems": ("cpu", "mems", "str"),
    "blkio_weight": ("blockIO", "weight", "int"),
    "pids_limit": ("pids", "limit", "int"),
}

_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(raw: str, flag: str = "") -> int:
    """A size as runc takes it: -1 (unlimited), a number, or a number with a binary
    unit (k, m, g, t, p; "100m", "1.5GiB", "512kb")."""
    text = raw.strip()
    if text == "-1":
        return -1
    m = _SIZE_RE.match(text)
    if not m:
        raise OciError(f"invalid value {raw!r} for {flag or 'a size'}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _parse_int(raw: str, flag: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise OciError(f"invalid value {raw!r} for {flag}: not an integer") from None


def _read_resources_file(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise OciError(f"--resources {path}: {(e.strerror or str(e)).lower()}") from None
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise OciError(f"--resources {path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise OciError(f"--resources {path}: expected a JSON object")
    return data


# Fields where runc (and so every engine) reads 0 or "" as "leave as it is": dockerd sends
# a full resources object with Go's zero values for everything it does not change.
_UNSET_IF_ZERO = {
    "memory": ("limit", "reservation", "swap", "kernel", "kernelTCP"),
    "cpu": ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "cpus",
            "mems"),
    "pids": ("limit",),
    "blockIO": ("weight", "leafWeight"),
}


def _drop_unset(data: dict[str, Any]) -> None:
    for section, keys in _UNSET_IF_ZERO.items():
        part = data.get(section)
        if not isinstance(part, dict):
            continue
        for key in keys:
            if key in part and part[key] in (0, ""):
                del part[key]
        if section == "pids" and not part:
            del data[section]  # a pids object needs its limit


def build_resources(resources_file: str | None, flags: dict[str, str | None]) -> Resources:
    data = _read_resources_file(resources_file) if resources_file else {}
    for dest, raw in flags.items():
        if raw is None:
            continue
        section, key, kind = FLAG_FIELDS[dest]
        name = "--" + dest.replace("_", "-")
        value: Any = raw
        if kind == "bytes":
            value = parse_bytes(raw, name)
        elif kind == "int":
            value = _parse_int(raw, name)
        target = data.get(section)
        if not isinstance(target, dict):
            target = data[section] = {}
        target[key] = value
    _drop_unset(data)
    return parse_resources(data)


def update(root: str, container_id: str, resources: Resources) -> None:
    cdir = st.open_container(root, container_id)
    with cdir:
        state = st.load(cdir)
        if state.status in ("stopped", "creating"):
            raise OciError(f"cannot update container {container_id}: it is {state.status}")
        if not state.cgroup:
            raise OciError(f"container {container_id} has no cgroup")
        from ocirun.cgroups import manager_from_state
        manager_from_state(state.cgroup).update(resources)
