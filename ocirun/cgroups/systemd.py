"""The systemd cgroup driver's naming: "slice:prefix:name" -> slice, unit, cgroup path.

podman and containerd pass `--systemd-cgroup` with cgroupsPath "slice:prefix:name".
The container then belongs in a transient scope unit "<prefix>-<name>.scope" under
the slice, created by systemd over D-Bus (StartTransientUnit) so that systemd knows
the cgroup is taken.  Creating that scope is not implemented yet: with systemd
running we refuse with a clear error rather than build the directories behind
systemd's back; without systemd there is nothing to ask, which is an error too.
"""

from __future__ import annotations

from ocirun.record import Record

from ocirun.cgroups.detect import systemd_running
from ocirun.errors import OciError


class SystemdPath(Record):
    slice: str  # e.g. "machine.slice"
    unit: str  # e.g. "libpod-abc.scope"

    @property
    def cgroup(self) -> str:
        """The cgroup path systemd gives the unit: slice expanded, then the unit."""
        return expand_slice(self.slice) + "/" + self.unit


def expand_slice(slice_: str) -> str:
    """"a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice (systemd.slice(5))."""
    if slice_ == "-.slice":
        return ""
    if not slice_.endswith(".slice") or "/" in slice_:
        raise OciError(f"cgroups: invalid systemd slice name {slice_!r}")
    name = slice_[: -len(".slice")]
    if not name or name.startswith("-") or name.endswith("-") or "--" in name:
        raise OciError(f"cgroups: invalid systemd slice name {slice_!r}")
    parts = name.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def parse(cgroups_path: str | None, container_id: str) -> SystemdPath:
    """runc's rules: no path -> system.slice and "runc-<id>.scope"."""
    if not cgroups_path:
        return SystemdPath("system.slice", f"runc-{container_id}.scope")
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise OciError("cgroups: with --systemd-cgroup, linux.cgroupsPath must look like "
                       f"\"slice:prefix:name\", got {cgroups_path!r}")
    slice_, prefix, name = parts
    if not name:
        raise OciError(f"cgroups: linux.cgroupsPath {cgroups_path!r}: empty unit name")
    slice_ = slice_ or "system.slice"
    expand_slice(slice_)  # validate early
    if name.endswith(".slice"):
        unit = name
    else:
        unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return SystemdPath(slice_, unit)


def check_available(path: SystemdPath) -> None:
    if not systemd_running():
        raise OciError("cgroups: --systemd-cgroup was given but systemd is not running "
                       "on this host (use the cgroupfs driver: drop --systemd-cgroup)")
    raise OciError(f"cgroups: --systemd-cgroup: creating the transient unit {path.unit} "
                   f"in {path.slice} over D-Bus is not supported by ocirun yet")
