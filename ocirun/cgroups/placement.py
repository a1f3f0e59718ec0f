"""Where a container's cgroup is and which of its directories the container owns: the
typed record create stores in state.json (its "cgroup" field) and from which every
later command rebuilds its manager (cgroups.manager_from_state).

On disk a placement is a JSON object with a "driver" ("cgroupfs" or "systemd") beside
its fields, the shape state.json has always had; records written before "driver" or
"classified" existed read the same.
"""

from __future__ import annotations

from ocirun.errors import OciError
from ocirun.record import Record, dump

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
    """The placement `to_json` wrote ({} : none); OciError if it is not one.  Read by
    hand, not by record.load: every command that looks at a container reads one."""
    if data == {}:
        return None
    try:
        if data.get("driver") == "systemd":
            fs = data.get("fs")
            path = data.get("path")
            return SystemdPlacement(slice=_str(data["slice"]), unit=_str(data["unit"]),
                                    id=_str(data.get("id", "")),
                                    path=None if path is None else _str(path),
                                    fs=_fs(fs) if fs else None)
        return _fs(data)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise OciError(f"cgroups: state.json has no usable cgroup record ({e})") from None


def _fs(data: dict[str, Any]) -> FsPlacement:
    mode = data["mode"]
    if mode not in ("unified", "v1", "hybrid"):
        raise ValueError(f"unknown cgroup mode {mode!r}")
    return FsPlacement(mode=mode, path=_str(data["path"]),
                       paths={_str(k): _str(v) for k, v in data.get("paths", {}).items()},
                       created=tuple(_str(d) for d in data.get("created", ())),
                       adopted=tuple(_str(d) for d in data.get("adopted", ())),
                       classified=data.get("classified", False) is True)


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"{value!r} is not a string")
    return value


def owned_dirs(placement: Placement | None) -> list[str]:
    """The directories the container removes should it be the last one out."""
    fs = _files_of(placement)
    return [*fs.created, *fs.adopted] if fs is not None else []


def leaves(placement: Placement | None) -> set[str]:
    """The container's own directory in every hierarchy."""
    fs = _files_of(placement)
    return set(fs.paths.values()) if fs is not None else set()


def _files_of(placement: Placement | None) -> FsPlacement | None:
    """The cgroupfs part: a systemd unit's is the cgroup systemd made for it."""
    return placement.fs if isinstance(placement, SystemdPlacement) else placement
