"""The systemd cgroup driver (`--systemd-cgroup`), as runc's.

podman and containerd pass `--systemd-cgroup` with cgroupsPath "slice:prefix:name".
The container then belongs in a transient scope unit "<prefix>-<name>.scope" in the
slice (or, for a name ending in ".slice", a transient slice), which systemd creates
over D-Bus (StartTransientUnit) so that it knows the cgroup is taken and never
moves or removes it behind our back.

Division of labour (what runc does too): systemd makes the unit and its cgroup,
with Delegate=yes and the main limits as unit properties (so a later daemon-reload
re-applies the same values); the ordinary v1/v2 file manager (`inner`) is then
pointed at that cgroup and does everything else: all the resource files and device
rules, the hierarchies systemd leaves alone on v1 (cpuset, freezer...), pause, ps,
kill --all, stats.  Delete stops the unit and removes what the file manager made.

The unit can only be started once the first process exists (a scope needs a pid),
so create() only checks and connects; the unit is started by the first
add_process() (stage 1's pid).  Without systemd, --systemd-cgroup is an error.
"""

from __future__ import annotations

import errno
import os
import time

from ocirun import log
from ocirun.record import Record
from ocirun.cgroups.detect import systemd_running
from ocirun.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocirun.cgroups.base import BaseManager
    from ocirun.cgroups.placement import SystemdPlacement
    from ocirun.spec import Resources


class SystemdPath(Record):
    slice: str  # e.g. "machine.slice"
    unit: str  # e.g. "libpod-abc.scope"

    @property
    def cgroup(self) -> str:
        """The cgroup path systemd gives the unit: slice expanded, then the unit (a
        slice unit's own name says where it lives: "a-b.slice" is /a.slice/a-b.slice)."""
        if self.unit.endswith(".slice"):
            return expand_slice(self.unit)
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


def manager_for(cgroups_path: str | None, container_id: str) -> "SystemdManager":
    path = parse(cgroups_path, container_id)
    check_available(path)
    return SystemdManager(path, container_id)


def from_state(placement: SystemdPlacement) -> "SystemdManager":
    from ocirun.cgroups.records import file_manager
    inner = file_manager(placement.fs) if placement.fs is not None else None
    return SystemdManager(SystemdPath(placement.slice, placement.unit), placement.id, inner)


# ------------------------------------------------------------------ D-Bus
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
JOB_TIMEOUT = 30.0  # runc waits as long for a unit to start
INFINITY = 2**64 - 1  # systemd's "infinity" for the uint64 limit properties


def connect() -> Any:
    """The system bus (with Hello), else systemd's private peer-to-peer socket."""
    from ocirun.cgroups import dbus
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    bus_path = address[len("unix:path="):].split(",")[0] if address.startswith(
        "unix:path=") else dbus.SYSTEM_BUS
    errors = []
    for path, is_bus in ((bus_path, True), (dbus.SYSTEMD_PRIVATE, False)):
        try:
            return dbus.Connection(path, bus=is_bus)
        except (OSError, dbus.DBusError) as e:
            errors.append(f"{path}: {getattr(e, 'strerror', None) or e}")
    raise OciError("cgroups: --systemd-cgroup: cannot reach systemd over D-Bus ("
                   + "; ".join(errors) + ")")


class _Systemd:
    """The Manager calls the driver makes, on one connection."""

    def __init__(self) -> None:
        from ocirun.cgroups.dbus import DBusError
        self.conn = connect()
        try:
            # Ask for job signals first, so a fast job cannot finish unseen.
            if self.conn.bus:
                self.conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "AddMatch", "s",
                               f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',"
                               "member='JobRemoved'")
            self.manager("Subscribe")
        except (DBusError, OSError) as e:
            self.conn.close()
            raise OciError(f"cgroups: --systemd-cgroup: systemd does not answer on "
                           f"D-Bus: {e}") from None

    def close(self) -> None:
        self.conn.close()

    def manager(self, member: str, signature: str = "", *args: Any) -> tuple[Any, ...]:
        return self.conn.call(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, *args)

    def wait_job(self, job: str, unit: str, what: str) -> None:
        """Until systemd removes `job` (the JobRemoved signal); its result must be done."""
        try:
            msg = self.conn.wait_signal(
                lambda m: m.member == "JobRemoved" and len(m.body) == 4 and m.body[1] == job,
                JOB_TIMEOUT)
        except TimeoutError:
            raise OciError(f"cgroups: systemd did not {what} unit {unit} within "
                           f"{JOB_TIMEOUT:.0f}s") from None
        except OSError as e:
            raise OciError(f"cgroups: systemd: {e}") from None
        result = msg.body[3]
        if result != "done":
            raise OciError(f"cgroups: systemd could not {what} unit {unit}: job {result}")

    def unit_property(self, unit: str, interface: str, name: str) -> Any:
        (path,) = self.manager("GetUnit", "s", unit)
        (value,) = self.conn.call(SYSTEMD, path, "org.freedesktop.DBus.Properties", "Get",
                                  "ss", f"org.freedesktop.systemd1.{interface}", name)
        return value.value


def _cpu_mask(cpus: str) -> bytes:
    """"0-2,5" -> the bitmask systemd's AllowedCPUs= takes (bit n of byte n//8)."""
    bits = 0
    for part in cpus.replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            bits |= 1 << n
    return bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little")


def _properties(res: Resources | None, unified: bool) -> list[tuple[str, Any]]:
    """The limits systemd should know as unit properties (runc's main ones).

    systemd rewrites the files of every controller it manages for the unit whenever
    it re-realizes the unit's cgroup (a daemon-reload, a property change): a limit it
    does not know would then fall back to its default.  Every limit, these included,
    is also written to the cgroup files by the file manager.
    """
    from ocirun.cgroups.dbus import Variant
    props: list[tuple[str, Any]] = []

    def u64(name: str, value: int) -> None:
        props.append((name, Variant("t", INFINITY if value < 0 else value)))

    if res is None:
        return props
    m = res.memory
    if m is not None and m.limit is not None and m.limit != 0:
        u64("MemoryMax" if unified else "MemoryLimit", m.limit)
    if unified and m is not None:
        if m.reservation is not None and m.reservation != 0:
            u64("MemoryLow", m.reservation)
        if m.swap is not None and m.swap != 0:
            from ocirun.cgroups.resources import swap_to_v2
            u64("MemorySwapMax", swap_to_v2(m.swap, m.limit))
    if res.pids_limit is not None and res.pids_limit != 0:
        u64("TasksMax", res.pids_limit)
    from ocirun.cgroups.resources import blkio_weight_to_io_weight, shares_to_weight
    c = res.cpu
    if c is not None and c.shares:
        u64(*(("CPUWeight", shares_to_weight(c.shares)) if unified else
              ("CPUShares", c.shares)))
    if c is not None and c.period:
        u64("CPUQuotaPeriodUSec", c.period)
    if c is not None and c.quota is not None and c.quota != 0:
        if c.quota < 0:
            u64("CPUQuotaPerSecUSec", -1)
        else:
            # systemd counts quota per second in 10ms steps: round up, as runc does.
            per_sec = c.quota * 1_000_000 // (c.period or 100_000)
            u64("CPUQuotaPerSecUSec", -(-per_sec // 10_000) * 10_000)
    if unified and c is not None:
        # systemd writes cpuset.cpus/mems of a v2 unit it realizes ("" when unset).
        if c.cpus:
            props.append(("AllowedCPUs", Variant("ay", _cpu_mask(c.cpus))))
        if c.mems:
            props.append(("AllowedMemoryNodes", Variant("ay", _cpu_mask(c.mems))))
    b = res.block_io
    if b is not None and b.weight:
        u64(*(("IOWeight", blkio_weight_to_io_weight(b.weight)) if unified else
              ("BlockIOWeight", b.weight)))
    return props


class SystemdManager:
    """A transient unit from systemd, with the file manager working inside it."""

    self_placing = False  # StartTransientUnit places the pid

    def __init__(self, path: SystemdPath, container_id: str,
                 inner: BaseManager | None = None) -> None:
        self.path = path
        self.cgroups_path = path.cgroup
        self.container_id = container_id
        self.inner = inner
        self._resources: Resources | None = None
        self._sd: _Systemd | None = None

    @property
    def mode(self) -> str:
        from ocirun.cgroups import detect
        return self.inner.mode if self.inner is not None else detect.detect().mode

    def _fs(self) -> BaseManager:
        if self.inner is None:
            raise OciError(f"cgroups: systemd unit {self.path.unit} was never started")
        return self.inner

    def _systemd(self) -> _Systemd:
        if self._sd is None:
            self._sd = _Systemd()
        return self._sd

    # ---------------------------------------------------------------- create
    def create(self) -> None:
        """Connect now, so that a missing bus fails create before anything forks."""
        self._systemd()

    def apply(self, resources: Resources | None) -> None:
        self._resources = resources  # written once the unit exists (add_process)

    def add_process(self, pid: int, paths: dict[str, str] | None = None) -> None:
        if self.inner is None:
            self._start(pid)  # which places the pid
        else:
            self.inner.add_process(pid, paths)  # exec: joining a running container

    def sub_paths(self, wanted: tuple[str, ...]) -> dict[str, str]:
        return self._fs().sub_paths(wanted)

    def _start(self, pid: int) -> None:
        from ocirun.cgroups import detect
        from ocirun.cgroups.dbus import DBusError, Variant
        unit, is_slice = self.path.unit, self.path.unit.endswith(".slice")
        layout = detect.detect()
        unified = layout.mode == "unified"
        props: list[tuple[str, Any]] = [
            ("Description", Variant("s", f"ocirun container {self.container_id}")),
            # A container is not part of boot: no implicit ordering against shutdown.
            ("DefaultDependencies", Variant("b", False)),
            ("MemoryAccounting", Variant("b", True)),
            ("CPUAccounting", Variant("b", True)),
            ("IOAccounting" if unified else "BlockIOAccounting", Variant("b", True)),
            ("TasksAccounting", Variant("b", True)),
        ]
        if is_slice:
            # A slice's place in the tree comes from its name; the parent is a Wants=.
            props.append(("Wants", Variant("as", [self.path.slice])))
        else:
            props += [("Slice", Variant("s", self.path.slice)),
                      ("Delegate", Variant("b", True)),  # the subtree is the container's
                      ("PIDs", Variant("au", [pid]))]
        props += _properties(self._resources, unified)
        sd = self._systemd()
        try:
            try:
                (job,) = sd.manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                    unit, "replace", props, [])
            except DBusError as e:
                if e.name != "org.freedesktop.systemd1.UnitExists":
                    raise
                # Maybe a failed leftover of an earlier container: reset it, retry once.
                try:
                    sd.manager("ResetFailedUnit", "s", unit)
                except DBusError:
                    pass
                (job,) = sd.manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                    unit, "replace", props, [])
        except DBusError as e:
            raise OciError(f"cgroups: systemd: starting unit {unit}: {e}") from None
        except OSError as e:
            raise OciError(f"cgroups: systemd: starting unit {unit}: {e}") from None
        sd.wait_job(job, unit, "start")  # only then is the pid in the unit's cgroup
        self.inner = self._file_manager(layout, pid, is_slice)
        # On failure, no StopUnit here: the pid may be a pid namespace's init, which
        # ignores systemd's SIGTERM, and the stop would wait out its timeout.  create's
        # undo kills the pid, then destroys.
        self._place(pid)
        self.inner.apply(self._resources)

    def _place(self, pid: int) -> None:
        """Make the directories systemd did not (v1: cpuset, freezer, and controllers
        not in the unit's mask such as devices) and put the pid in every one.

        systemd removes the unit's directory from a v1 hierarchy it supports but does
        not use for the unit each time it realizes the unit, which may happen just
        after the start job; once the pid is inside, that rmdir fails (EBUSY) and
        the directory stays.  So: mkdir + join, and again if it vanished in between.
        """
        assert self.inner is not None
        for attempt in range(5):
            try:
                self.inner.create()
                self.inner.add_process(pid)
                created = getattr(self.inner, "created", None)
                if created is not None:  # a directory made twice is listed once
                    created[:] = list(dict.fromkeys(created))
                return
            except OciError as e:
                if e.errno != errno.ENOENT or attempt == 4:
                    raise
            time.sleep(0.01)

    def _file_manager(self, layout: Any, pid: int, is_slice: bool) -> BaseManager:
        """A v1/v2 file manager for the unit's cgroup in every hierarchy.

        Where systemd put the pid (its own hierarchy: cgroup2, or name=systemd on
        v1) is our view of the unit's cgroup, whatever systemd's root is; a slice has
        no pid yet, so its ControlGroup property is used (relative to systemd's root,
        which is ours unless systemd lives in another cgroup namespace)."""
        from ocirun.cgroups import detect
        cgroup = ""
        if not is_slice:
            own = detect.proc_cgroups(pid)
            for key in (detect.UNIFIED, "name=systemd"):
                if own.get(key, "").endswith("/" + self.path.unit):
                    cgroup = own[key]
                    break
        if not cgroup:
            try:
                cgroup = self._systemd().unit_property(
                    self.path.unit, "Slice" if is_slice else "Scope", "ControlGroup")
            except Exception:
                cgroup = ""
            cgroup = cgroup or self.path.cgroup
        paths = {h.key: h.fs_path(cgroup) for h in layout.hierarchies}
        if layout.mode == "unified":
            from ocirun.cgroups.v2 import V2Manager
            return V2Manager(cgroup, paths)
        from ocirun.cgroups.v1 import V1Manager
        return V1Manager(cgroup, paths, hybrid=layout.mode == "hybrid")

    # ------------------------------------------------------------- destroy
    def destroy(self) -> None:
        """Stop the unit (gone already is fine), then remove what the file manager
        made and wait for systemd's own directories to go."""
        from ocirun.cgroups.dbus import DBusError
        unit = self.path.unit
        try:
            sd = self._systemd()
        except OciError as e:
            sd = None  # systemd gone: remove the directories ourselves below
            log.debug(f"{e.message}; removing the cgroup of {unit} directly")
        if sd is not None:
            try:
                (job,) = sd.manager("StopUnit", "ss", unit, "replace")
                sd.wait_job(job, unit, "stop")
            except DBusError as e:
                if e.name != "org.freedesktop.systemd1.NoSuchUnit":
                    raise OciError(f"cgroups: systemd: stopping unit {unit}: {e}") from None
            except OSError as e:
                raise OciError(f"cgroups: systemd: stopping unit {unit}: {e}") from None
            try:
                sd.manager("ResetFailedUnit", "s", unit)  # a failed unit would linger
            except (DBusError, OSError):
                pass
        if self.inner is None:
            return
        leftover: list[str] = []
        deadline = time.monotonic() + 5.0
        while True:
            leftover = [d for d in getattr(self.inner, "paths", {}).values()
                        if os.path.isdir(d) and d not in getattr(self.inner, "created", [])]
            if not leftover or time.monotonic() >= deadline:
                break
            time.sleep(0.02)  # systemd removes the unit's directories right after the job
        self.inner.destroy()  # ours, and any of systemd's still there (rmdir when empty)

    # ------------------------------------------------------ everything else
    def update(self, resources: Resources) -> None:
        props = _properties(resources, self.mode == "unified")
        if props:
            from ocirun.cgroups.dbus import DBusError
            try:
                self._systemd().manager("SetUnitProperties", "sba(sv)", self.path.unit,
                                        True, props)
            except (DBusError, OSError) as e:
                raise OciError(f"cgroups: systemd: updating unit {self.path.unit}: "
                               f"{e}") from None
        self._fs().update(resources)

    def pids(self) -> list[int]:
        return self._fs().pids()

    def kill_all(self, signum: int = 9) -> None:  # 9: SIGKILL
        self._fs().kill_all(signum)

    def freeze(self) -> None:
        self._fs().freeze()

    def thaw(self) -> None:
        if self.inner is not None:
            self.inner.thaw()

    def thaw_below(self) -> None:
        if self.inner is not None:
            self.inner.thaw_below()

    def is_frozen(self) -> bool:
        return self.inner is not None and self.inner.is_frozen()

    def frozen_from_above(self) -> bool:
        return self.inner is not None and self.inner.frozen_from_above()

    def stats(self) -> dict[str, Any]:
        return self._fs().stats()

    def oom_kill_count(self) -> int:
        return self._fs().oom_kill_count()

    def to_state(self) -> SystemdPlacement:
        from ocirun.cgroups.placement import SystemdPlacement
        return SystemdPlacement(slice=self.path.slice, unit=self.path.unit,
                                id=self.container_id, path=self.cgroups_path,
                                fs=self.inner.to_state() if self.inner is not None else None)
