"""config-linux.md#control-groups: cgroupsPath and resources, read from the host's
cgroup files of the container process (found through /proc/<pid>/cgroup)."""

from __future__ import annotations

import os
from typing import Any

from suite.cases.common import APPLY
from suite.harness import (MUST, Container, Ctx, Fail, Skip, case, cgroup_dir, check,
                           expect_eq, proc_cgroups, read)

RES = APPLY + " [config-linux.md#control-groups] You can configure a container's cgroups via " \
              "the resources field of the Linux configuration."


def _created(t: Ctx, resources: dict[str, Any]) -> Container:
    cfg = t.config(["true"])
    cfg["linux"]["resources"].update(resources)
    return t.create(t.bundle(cfg))


def _file(pid: int, controller: str, v1: str, v2: str | None = None) -> str:
    """Content of a cgroup file of pid: the v1 controller's file, else the cgroup2 one."""
    d = cgroup_dir(pid, controller)
    if d is not None and os.path.exists(f"{d}/{v1}"):
        return read(f"{d}/{v1}").strip()
    d2 = cgroup_dir(pid, "")
    if v2 and d2 is not None and os.path.exists(f"{d2}/{v2}"):
        return read(f"{d2}/{v2}").strip()
    raise Fail(f"the container process has no {controller} cgroup with {v1}"
               + (f" or {v2}" if v2 else ""))


@case("linux/cgroups", "path-consistent", MUST, "config-linux.md#cgroups-path",
      "If the value is specified, the runtime MUST consistently attach to the same place in "
      "the cgroups hierarchy given the same value of cgroupsPath.")
def cgroups_path(t: Ctx) -> str:
    cfg = t.config(["true"])
    name = cfg["linux"]["cgroupsPath"]
    c1 = t.create(t.bundle(cfg))
    first = {k: v for k, v in proc_cgroups(c1.pid).items() if k in ("memory", "pids", "cpu", "")}
    t.delete(c1, force=True)
    c2 = t.create(t.bundle(cfg))
    second = {k: v for k, v in proc_cgroups(c2.pid).items() if k in first}
    expect_eq("cgroups of the second container with the same cgroupsPath", first, second)
    placed = {k: v for k, v in first.items() if k}
    check(all(v.endswith("/" + name) for v in placed.values()),
          f"cgroupsPath {name!r} not found in the container's cgroups: {placed}")
    where = "under the caller's cgroup" if first.get("memory", "/").count("/") > 1 else \
        "under the hierarchy root"
    return f"relative path placed {where} (memory: {first.get('memory')})"


@case("linux/cgroups", "memory", MUST, "config-linux.md#memory", RES +
      " limit (int64, OPTIONAL) - sets limit of memory usage in bytes; reservation (int64, "
      "OPTIONAL) - sets soft limit of memory usage in bytes; swap (int64, OPTIONAL) - sets "
      "limit of memory+Swap usage; swappiness (uint64, OPTIONAL) - sets swappiness parameter "
      "of vmscan.")
def cgroups_memory(t: Ctx) -> None:
    mib = 1 << 20
    mem: dict[str, Any] = {"limit": 64 * mib, "reservation": 32 * mib, "swappiness": 10}
    memsw = any(os.path.exists(f"{h.mountpoint}/memory.memsw.limit_in_bytes")
                for h in t.suite.hierarchies if "memory" in h.key.split(","))
    if memsw:
        mem["swap"] = 96 * mib
    c = _created(t, {"memory": mem})
    expect_eq("memory limit", str(64 * mib), _file(c.pid, "memory", "memory.limit_in_bytes",
                                                   "memory.max"))
    expect_eq("memory reservation", str(32 * mib),
              _file(c.pid, "memory", "memory.soft_limit_in_bytes", "memory.low"))
    if memsw:
        expect_eq("memory+swap limit", str(96 * mib),
                  _file(c.pid, "memory", "memory.memsw.limit_in_bytes"))
    if cgroup_dir(c.pid, "memory") and os.path.exists(
            f"{cgroup_dir(c.pid, 'memory')}/memory.swappiness"):
        expect_eq("swappiness", "10", _file(c.pid, "memory", "memory.swappiness"))


@case("linux/cgroups", "cpu", MUST, "config-linux.md#cpu", RES +
      " shares (uint64, OPTIONAL) - specifies a relative share of CPU time available to the "
      "tasks in a cgroup; quota (int64, OPTIONAL) - specifies the total amount of time in "
      "microseconds for which all tasks in a cgroup can run during one period; period "
      "(uint64, OPTIONAL) - specifies a period of time in microseconds for how regularly a "
      "cgroup's access to CPU resources should be reallocated.")
def cgroups_cpu(t: Ctx) -> None:
    c = _created(t, {"cpu": {"shares": 512, "quota": 20000, "period": 100000}})
    d = cgroup_dir(c.pid, "cpu")
    if d is not None and os.path.exists(f"{d}/cpu.shares"):
        expect_eq("cpu.shares", "512", read(f"{d}/cpu.shares").strip())
        expect_eq("cpu.cfs_quota_us", "20000", read(f"{d}/cpu.cfs_quota_us").strip())
        expect_eq("cpu.cfs_period_us", "100000", read(f"{d}/cpu.cfs_period_us").strip())
    else:
        expect_eq("cpu.max", "20000 100000", _file(c.pid, "cpu", "cpu.max", "cpu.max"))


@case("linux/cgroups", "cpuset", MUST, "config-linux.md#cpu", RES +
      " cpus (string, OPTIONAL) - list of CPUs the container will run in; mems (string, "
      "OPTIONAL) - list of Memory Nodes the container will run in.")
def cgroups_cpuset(t: Ctx) -> None:
    c = _created(t, {"cpu": {"cpus": "0", "mems": "0"}})
    expect_eq("cpuset cpus", "0", _file(c.pid, "cpuset", "cpuset.cpus", "cpuset.cpus"))
    expect_eq("cpuset mems", "0", _file(c.pid, "cpuset", "cpuset.mems", "cpuset.mems"))


@case("linux/cgroups", "pids", MUST, "config-linux.md#pids", RES +
      " limit (int64, REQUIRED) - specifies the maximum number of tasks in the cgroup.")
def cgroups_pids(t: Ctx) -> None:
    c = _created(t, {"pids": {"limit": 77}})
    expect_eq("pids.max", "77", _file(c.pid, "pids", "pids.max", "pids.max"))


def _first_disk() -> tuple[int, int]:
    for line in read("/proc/partitions").splitlines()[2:]:
        f = line.split()
        if len(f) == 4 and os.path.exists(f"/sys/block/{f[3]}") and int(f[2]) > 0:
            return int(f[0]), int(f[1])
    raise Skip("no block device to throttle")


@case("linux/cgroups", "blkio-throttle", MUST, "config-linux.md#block-io", RES +
      " throttleReadBpsDevice, throttleWriteBpsDevice (array of objects, OPTIONAL) - specify "
      "the list of devices which will be IO rate limited.")
def cgroups_blkio(t: Ctx) -> None:
    major, minor = _first_disk()
    c = _created(t, {"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
        "throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": 2097152}]}})
    d = cgroup_dir(c.pid, "blkio")
    if d is not None and os.path.exists(f"{d}/blkio.throttle.read_bps_device"):
        expect_eq("blkio.throttle.read_bps_device", f"{major}:{minor} 1048576",
                  read(f"{d}/blkio.throttle.read_bps_device").strip())
        expect_eq("blkio.throttle.write_bps_device", f"{major}:{minor} 2097152",
                  read(f"{d}/blkio.throttle.write_bps_device").strip())
    else:
        io = _file(c.pid, "io", "io.max", "io.max")
        check(f"rbps=1048576" in io and "wbps=2097152" in io, f"io.max: {io!r}")


@case("linux/cgroups", "hugetlb", MUST, "config-linux.md#huge-page-limits", RES +
      " hugepageLimits (array of objects, OPTIONAL) represents the hugetlb controller which "
      "allows to limit the HugeTLB reservations (if supported) or usage (page fault).")
def cgroups_hugetlb(t: Ctx) -> str:
    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        raise Skip("no 2MB huge pages on this host")
    cfg = t.config(["true"])
    cfg["linux"]["resources"]["hugepageLimits"] = [{"pageSize": "2MB", "limit": 8 << 20}]
    c = t.create(t.bundle(cfg), ok=False)
    if c.create is None or c.create.rc != 0:
        return f"the runtime reported it cannot apply it: {c.create}"
    got = _file(c.pid, "hugetlb", "hugetlb.2MB.limit_in_bytes", "hugetlb.2MB.max")
    expect_eq("hugetlb 2MB limit", str(8 << 20), got)
    return ""


@case("linux/cgroups", "network-without-controller", MUST, "runtime.md#create",
      "If the runtime cannot apply a property as specified in the configuration, it MUST "
      "generate an error and a new container MUST NOT be created. [config-linux.md#network] "
      "classID (uint32, OPTIONAL) - is the network class identifier the cgroup's network "
      "packets will be tagged with.")
def cgroups_network(t: Ctx) -> str:
    keys = {c for h in t.suite.hierarchies for c in h.key.split(",")}
    if "net_cls" in keys:
        cfg = t.config(["true"])
        cfg["linux"]["resources"]["network"] = {"classID": 1048577}
        c = t.create(t.bundle(cfg))
        expect_eq("net_cls.classid", "1048577", _file(c.pid, "net_cls", "net_cls.classid"))
        return "applied"
    from suite.cases.common import expect_create_error
    cfg = t.config(["true"])
    cfg["linux"]["resources"]["network"] = {"classID": 1048577}
    return expect_create_error(t, cfg, "network.classID on a host without a net_cls cgroup")
