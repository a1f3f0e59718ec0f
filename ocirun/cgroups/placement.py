"""Where a container's cgroup is and which of its directories the container owns: the
typed record create stores in state.json (its "cgroup" field) and from which every
later command rebuilds its manager (cgroups.manager_from_state).

On disk a placement is a JSON object with a "driver" ("cgroupfs" or "systemd") beside
its fields, the shape state.json has always had; records written before "driver" or
"classified" existed read the same.
"""

from __future__ import annotations

from ocirun.errors import OciError
from ocirun.record import Record, dump, load

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Union
    Placement = Union["FsPlacement", "SystemdPlacement"]


class FsPlacement(Record):
    """A cgroupfs (v1, hybrid or unified) cgroup: one directory per hierarchy."""
    mode: str  # "unified", "v1" or "hybrid"
    path: str  # the cgroupsPath it came from, normalised
    paths: dict[str, str] = {}  # hierarchy key (detect.Hierarchy.key) -> directory
    created: tuple[str, ...] = ()  # directories this container made
    adopted: tuple[str, ...] = ()  # made by another container, removed by the last out
    classified: bool = False  # ownership of existing leaves was decided at create


class SystemdPlacement(Record):
    """A transient systemd unit, and the file manager of the cgroup systemd made."""
    slice: str
    unit: str
    id: str = ""
    path: str | None = None
    fs: FsPlacement | None = None


def to_json(placement: Placement | None) -> dict[str, Any]:
    if placement is None:
        return {}
    driver = "systemd" if isinstance(placement, SystemdPlacement) else "cgroupfs"
    return {"driver": driver, **dump(placement)}


def from_json(data: Any) -> Placement | None:
    """The placement `to_json` wrote ({} : none); OciError if it is not one."""
    if data == {}:
        return None
    try:
        fields = {k: v for k, v in data.items() if k != "driver"}
        if fields.get("fs") == {}:
            del fields["fs"]  # a unit whose cgroup was never resolved
        cls = SystemdPlacement if data.get("driver") == "systemd" else FsPlacement
        placement = load(cls, fields)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise OciError(f"cgroups: state.json has no usable cgroup record ({e})") from None
    if isinstance(placement, FsPlacement) and placement.mode not in ("unified", "v1",
                                                                     "hybrid"):
        raise OciError(f"cgroups: state.json: unknown cgroup mode {placement.mode!r}")
    return placement


def owned_dirs(placement: Placement | None) -> list[str]:
    """The directories the container removes should it be the last one out."""
    if isinstance(placement, SystemdPlacement):
        placement = placement.fs
    return [*placement.created, *placement.adopted] if placement is not None else []


def leaves(placement: Placement | None) -> set[str]:
    """The container's own directory in every hierarchy."""
    if isinstance(placement, SystemdPlacement):
        placement = placement.fs
    return set(placement.paths.values()) if placement is not None else set()

