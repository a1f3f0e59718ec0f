"""OCI linux.resources -> cgroup file writes, for v1 and v2 in one place.

`plan(resources, version_of)` turns the spec model into an ordered list of `Write`s.
`version_of(controller)` says where a controller lives: 1 (a v1 hierarchy), 2 (the
cgroup2 hierarchy) or None (the host lacks it).  A set value whose controller is
missing raises OciError naming the spec field; unset values never do.  Devices are not
here: they need a list (v1) or a BPF program (v2), see devices.py.

Fields runc silently ignores on cgroup v2 (swappiness, disableOOMKiller, kernelTCP,
blockIO leafWeight) are ignored here too; `memory.kernel` is ignored everywhere (the
kernel stopped enforcing kmem limits in 5.16 and accepts writes without effect).
"""

from __future__ import annotations

import os

from ocirun.cgroups.common import controllers_of  # noqa: F401 - part of this module's API
from ocirun.errors import OciError
from ocirun.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Union

    from ocirun.spec import BlockIO, Cpu, Memory, Network, Resources, ThrottleDevice

    # A value is a string, a callable given the file's current content, or a string per
    # candidate file (when the candidates take different units).
    Value = Union[str, Callable[[Union[str, None]], str], dict[str, str]]
    VersionOf = Callable[[str], Union[int, None]]

_R = "linux.resources"


class Write(Record):
    controller: str  # selects the directory (v1 hierarchy or the unified one)
    files: tuple[str, ...]  # candidates: the first that exists is written
    value: Value
    what: str  # the spec field, for error messages
    optional: bool = False  # skip quietly when no candidate file exists
    swap_next: bool = False  # if this + the next fail in order, retry them reversed

    @property
    def file(self) -> str:
        return self.files[0]


def _w(controller: str, file: str | tuple[str, ...], value: Value, what: str,
       **kw: bool) -> Write:
    files = (file,) if isinstance(file, str) else file
    return Write(controller, files, value, what, **kw)


# ------------------------------------------------------------------ conversions
def shares_to_weight(shares: int) -> int:
    """cpu.shares [2..262144] -> cpu.weight [1..10000], as current runc/crun convert.

    A quadratic in log2(shares) that maps 2->1, 1024->100 (both defaults) and
    262144->10000; the old linear formula mapped the default 1024 to 39.
    """
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    import math  # only when a cpu.shares is converted
    x = math.log2(shares)
    return int(math.ceil(10 ** ((x * x + 125 * x) / 612.0 - 7.0 / 34.0)))


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight [10..1000] -> io.weight [1..10000] (runc's linear mapping)."""
    if weight == 0:
        return 0
    return 1 + (weight - 10) * 9999 // 990


def swap_to_v2(swap: int, limit: int | None) -> int:
    """OCI swap is memory+swap (v1 memsw); v2's memory.swap.max is swap alone."""
    if swap == -1:
        return -1
    if limit is None or limit == -1:
        raise OciError(f"cgroups: {_R}.memory.swap: a swap limit needs a memory limit "
                       "on cgroup v2")
    if swap < limit:
        raise OciError(f"cgroups: {_R}.memory.swap ({swap}) must be >= memory.limit ({limit})")
    return swap - limit


def host_page_sizes() -> list[str]:
    """Huge page sizes as cgroup files name them: hugepages-2048kB -> "2MB"."""
    out = []
    try:
        names = sorted(os.listdir("/sys/kernel/mm/hugepages"))
    except OSError:
        return []
    for name in names:
        kb = int(name.split("-", 1)[1].rstrip("kB"))
        out.append(f"{kb >> 20}GB" if kb >= 1 << 20 else f"{kb >> 10}MB" if kb >= 1 << 10
                   else f"{kb}KB")
    return out


def _max(v: int) -> str:
    """v2 spells "no limit" as max; the spec as -1 (or any negative)."""
    return "max" if v < 0 else str(v)


# ------------------------------------------------------------------------ memory
def _memory(m: Memory, v: int) -> list[Write]:
    out: list[Write] = []
    f = f"{_R}.memory"
    if v == 1:
        # As runc: lifting the memory limit without a word on swap lifts both, or the
        # kernel refuses a memory limit above the memory+swap one (EINVAL).
        lift_swap = m.swap is None and m.limit is not None and m.limit < 0
        if m.limit is not None:
            out.append(_w("memory", "memory.limit_in_bytes", str(m.limit), f"{f}.limit",
                          swap_next=m.swap is not None or lift_swap))
        if m.swap is not None:
            out.append(_w("memory", "memory.memsw.limit_in_bytes", str(m.swap), f"{f}.swap"))
        elif lift_swap:
            out.append(_w("memory", "memory.memsw.limit_in_bytes", "-1", f"{f}.swap",
                          optional=True))
        if m.reservation is not None:
            out.append(_w("memory", "memory.soft_limit_in_bytes", str(m.reservation),
                          f"{f}.reservation"))
        if m.kernel_tcp is not None:
            out.append(_w("memory", "memory.kmem.tcp.limit_in_bytes", str(m.kernel_tcp),
                          f"{f}.kernelTCP"))
        if m.swappiness is not None:
            if not 0 <= m.swappiness <= 100:
                raise OciError(f"cgroups: {f}.swappiness: {m.swappiness} is not in [0, 100]")
            out.append(_w("memory", "memory.swappiness", str(m.swappiness), f"{f}.swappiness"))
        if m.disable_oom_killer:
            out.append(_w("memory", "memory.oom_control", "1", f"{f}.disableOOMKiller"))
        return out
    if m.limit is not None:
        out.append(_w("memory", "memory.max", _max(m.limit), f"{f}.limit",
                      swap_next=m.swap is not None))
    if m.swap is not None:
        out.append(_w("memory", "memory.swap.max", _max(swap_to_v2(m.swap, m.limit)),
                      f"{f}.swap"))
    elif m.limit is not None and m.limit < 0:
        # As runc: lifting the memory limit without a word on swap lifts both (v1's
        # memsw has no separate swap limit left behind).
        out.append(_w("memory", "memory.swap.max", "max", f"{f}.swap", optional=True))
    if m.reservation is not None:
        out.append(_w("memory", "memory.low", _max(m.reservation), f"{f}.reservation"))
    return out


# --------------------------------------------------------------------------- cpu
def _cpu_max(quota: int | None, period: int | None) -> Value:
    if quota is not None and period is not None:
        return f"{_max(quota)} {period}"
    if quota is not None:
        return _max(quota)  # the kernel keeps the current period

    def keep_quota(current: str | None) -> str:
        # cpu.max needs the quota with the period: keep the current one.
        return f"{(current or 'max').split()[0]} {period}"
    return keep_quota


def _cpu(c: Cpu, v: int) -> list[Write]:
    out: list[Write] = []
    f = f"{_R}.cpu"
    if v == 1:
        if c.shares is not None:
            out.append(_w("cpu", "cpu.shares", str(c.shares), f"{f}.shares"))
        if c.period is not None:
            out.append(_w("cpu", "cpu.cfs_period_us", str(c.period), f"{f}.period",
                          swap_next=c.quota is not None))
        if c.quota is not None:
            out.append(_w("cpu", "cpu.cfs_quota_us", str(c.quota if c.quota > 0 else -1),
                          f"{f}.quota"))
        if c.burst is not None:
            out.append(_w("cpu", "cpu.cfs_burst_us", str(c.burst), f"{f}.burst"))
        if c.realtime_period is not None:
            out.append(_w("cpu", "cpu.rt_period_us", str(c.realtime_period),
                          f"{f}.realtimePeriod", swap_next=c.realtime_runtime is not None))
        if c.realtime_runtime is not None:
            out.append(_w("cpu", "cpu.rt_runtime_us", str(c.realtime_runtime),
                          f"{f}.realtimeRuntime"))
    else:
        if c.shares is not None:
            out.append(_w("cpu", "cpu.weight", str(shares_to_weight(c.shares)), f"{f}.shares"))
        if c.quota is not None or c.period is not None:
            out.append(_w("cpu", "cpu.max", _cpu_max(c.quota, c.period),
                          f"{f}.quota" if c.quota is not None else f"{f}.period"))
        if c.burst is not None:
            out.append(_w("cpu", "cpu.max.burst", str(c.burst), f"{f}.burst"))
        if c.realtime_period is not None or c.realtime_runtime is not None:
            raise OciError(f"cgroups: {f}.realtimeRuntime/realtimePeriod: realtime "
                           "scheduling limits are not supported on cgroup v2")
    if c.idle is not None:
        out.append(_w("cpu", "cpu.idle", str(c.idle), f"{f}.idle"))
    return out


def _cpuset(c: Cpu) -> list[Write]:
    out = []
    if c.cpus:
        out.append(_w("cpuset", "cpuset.cpus", c.cpus, f"{_R}.cpu.cpus"))
    if c.mems:
        out.append(_w("cpuset", "cpuset.mems", c.mems, f"{_R}.cpu.mems"))
    return out


# ------------------------------------------------------------------------ blkio
def _throttle_lines(devs: tuple[ThrottleDevice, ...]) -> list[tuple[ThrottleDevice, str]]:
    return [(d, f"{d.major}:{d.minor}") for d in devs]


def _blkio(b: BlockIO, v: int) -> list[Write]:
    out: list[Write] = []
    f = f"{_R}.blockIO"
    throttles = (("throttleReadBpsDevice", b.throttle_read_bps_device, "read_bps", "rbps"),
                 ("throttleWriteBpsDevice", b.throttle_write_bps_device, "write_bps", "wbps"),
                 ("throttleReadIOPSDevice", b.throttle_read_iops_device, "read_iops", "riops"),
                 ("throttleWriteIOPSDevice", b.throttle_write_iops_device, "write_iops",
                  "wiops"))
    if v == 1:
        # Without CFQ, BFQ exposes the weights under blkio.bfq.* (as runc falls back).
        if b.weight is not None:
            out.append(_w("blkio", ("blkio.weight", "blkio.bfq.weight"), str(b.weight),
                          f"{f}.weight"))
        if b.leaf_weight is not None:
            out.append(_w("blkio", "blkio.leaf_weight", str(b.leaf_weight), f"{f}.leafWeight"))
        for i, d in enumerate(b.weight_device):
            if d.weight is not None:
                out.append(_w("blkio", ("blkio.weight_device", "blkio.bfq.weight_device"),
                              f"{d.major}:{d.minor} {d.weight}", f"{f}.weightDevice[{i}]"))
            if d.leaf_weight is not None:
                out.append(_w("blkio", "blkio.leaf_weight_device",
                              f"{d.major}:{d.minor} {d.leaf_weight}", f"{f}.weightDevice[{i}]"))
        for key, devs, v1name, _ in throttles:
            for i, (d, dev) in enumerate(_throttle_lines(devs)):
                out.append(_w("blkio", f"blkio.throttle.{v1name}_device", f"{dev} {d.rate}",
                              f"{f}.{key}[{i}]"))
        return out
    # BFQ's io.bfq.weight takes the v1 range as is (preferred, as runc); iocost's
    # io.weight needs converting.
    if b.weight is not None:
        out.append(_w("io", ("io.bfq.weight", "io.weight"),
                      {"io.bfq.weight": str(b.weight),
                       "io.weight": str(blkio_weight_to_io_weight(b.weight))}, f"{f}.weight"))
    for i, d in enumerate(b.weight_device):
        if d.weight is not None:
            dev = f"{d.major}:{d.minor}"
            out.append(_w("io", ("io.bfq.weight", "io.weight"),
                          {"io.bfq.weight": f"{dev} {d.weight}",
                           "io.weight": f"{dev} {blkio_weight_to_io_weight(d.weight)}"},
                          f"{f}.weightDevice[{i}]"))
    for key, devs, _, v2name in throttles:
        for i, (d, dev) in enumerate(_throttle_lines(devs)):
            rate = "max" if d.rate == 0 else str(d.rate)  # 0 means "no limit" on v2
            out.append(_w("io", "io.max", f"{dev} {v2name}={rate}", f"{f}.{key}[{i}]"))
    return out


# ------------------------------------------------------------------ the rest
def _network(n: Network, version_of: VersionOf) -> list[Write]:
    out: list[Write] = []
    f = f"{_R}.network"
    if n.class_id is not None:
        if version_of("net_cls") != 1:
            raise OciError(f"cgroups: {f}.classID: the net_cls cgroup controller is not "
                           "available on this host")
        out.append(_w("net_cls", "net_cls.classid", str(n.class_id), f"{f}.classID"))
    for i, p in enumerate(n.priorities):
        if version_of("net_prio") != 1:
            raise OciError(f"cgroups: {f}.priorities: the net_prio cgroup controller is not "
                           "available on this host")
        out.append(_w("net_prio", "net_prio.ifpriomap", f"{p.name} {p.priority}",
                      f"{f}.priorities[{i}]"))
    return out


def _need(version_of: VersionOf, controller: str, what: str) -> int:
    v = version_of(controller)
    if v is None:
        raise OciError(f"cgroups: {what}: the {controller} cgroup controller is not "
                       "available on this host")
    return v


def plan(res: Resources | None, version_of: VersionOf) -> list[Write]:
    """Every cgroup write for `res`, in a safe order (limits before their companions)."""
    if res is None:
        return []
    out: list[Write] = []
    if res.cpu is not None and (res.cpu.cpus or res.cpu.mems):
        _need(version_of, "cpuset", f"{_R}.cpu.cpus/mems")
        out += _cpuset(res.cpu)
    m = res.memory
    if m is not None and any(x is not None for x in (
            m.limit, m.swap, m.reservation, m.kernel_tcp, m.swappiness)) or (
            m is not None and m.disable_oom_killer):
        out += _memory(m, _need(version_of, "memory", f"{_R}.memory"))
    c = res.cpu
    if c is not None and any(x is not None for x in (
            c.shares, c.quota, c.period, c.burst, c.realtime_period, c.realtime_runtime,
            c.idle)):
        out += _cpu(c, _need(version_of, "cpu", f"{_R}.cpu"))
    if res.pids_limit is not None:
        _need(version_of, "pids", f"{_R}.pids")
        # runc: 0 and negative both mean "no limit".
        out.append(_w("pids", "pids.max", str(res.pids_limit) if res.pids_limit > 0
                      else "max", f"{_R}.pids.limit"))
    b = res.block_io
    if b is not None and (b.weight is not None or b.leaf_weight is not None
                          or b.weight_device or b.throttle_read_bps_device
                          or b.throttle_write_bps_device or b.throttle_read_iops_device
                          or b.throttle_write_iops_device):
        v = version_of("blkio") or (2 if version_of("io") == 2 else None)
        if v is None:
            raise OciError(f"cgroups: {_R}.blockIO: the blkio/io cgroup controller is not "
                           "available on this host")
        out += _blkio(b, v)
    for i, h in enumerate(res.hugepage_limits):
        v = _need(version_of, "hugetlb", f"{_R}.hugepageLimits[{i}]")
        what = f"{_R}.hugepageLimits[{i}] ({h.page_size})"
        if h.page_size not in host_page_sizes():
            raise OciError(f"cgroups: {what}: the host has no {h.page_size} huge pages "
                           f"(it has {', '.join(host_page_sizes()) or 'none'})")
        if v == 1:
            out.append(_w("hugetlb", f"hugetlb.{h.page_size}.limit_in_bytes", str(h.limit),
                          what))
        else:
            out.append(_w("hugetlb", f"hugetlb.{h.page_size}.max", str(h.limit), what))
            out.append(_w("hugetlb", f"hugetlb.{h.page_size}.rsvd.max", str(h.limit), what,
                          optional=True))
    if res.network is not None:
        out += _network(res.network, version_of)
    for dev, r in res.rdma.items():
        _need(version_of, "rdma", f"{_R}.rdma.{dev}")
        handles = "max" if r.hca_handles is None else str(r.hca_handles)
        objects = "max" if r.hca_objects is None else str(r.hca_objects)
        out.append(_w("rdma", "rdma.max", f"{dev} hca_handle={handles} hca_object={objects}",
                      f"{_R}.rdma.{dev}"))
    out += _unified(res.unified, version_of)
    return out


def _unified(unified: dict[str, str], version_of: VersionOf) -> list[Write]:
    """linux.resources.unified: raw cgroup2 files, written last so they win."""
    out: list[Write] = []
    for key, value in unified.items():
        what = f"{_R}.unified.{key}"
        if "/" in key or key in (".", "..") or "." not in key:
            raise OciError(f"cgroups: {what}: not a cgroup file name")
        if key in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
            raise OciError(f"cgroups: {what}: this file is managed by the runtime")
        controller = key.split(".", 1)[0]
        if controller == "cgroup":
            if version_of("") != 2:
                raise OciError(f"cgroups: {what}: unified resources need cgroup v2")
        elif version_of(controller) != 2:
            raise OciError(f"cgroups: {what}: unified resources need cgroup v2 with the "
                           f"{controller} controller (not available on this host)")
        out.append(_w(controller if controller != "cgroup" else "", key, value, what))
    return out
