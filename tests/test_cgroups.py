"""Real cgroups: placement, resources read back, freeze, update, stats, removal.

Runs on whatever the host has (v1 hybrid here; pure v2 in the guest started by
tests/cgroup2_vm.sh).  Every test works in cgroups it creates, relative to the test
process's own cgroup, and only with processes it spawned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ocirun.cgroups import detect, manager_for, manager_from_state
from ocirun.cgroups.placement import from_json, to_json
from ocirun.cgroups.detect import UNIFIED
from ocirun.cgroups.resources import host_page_sizes, shares_to_weight
from ocirun.errors import OciError
from test_cgroups_support import (  # noqa: F401  (cgroups is a fixture)
    Cgroups, cgroups, cpu_ticks, has_file, needs_root, proc_state, read, require,
    resources, wait_for)

pytestmark = needs_root


# --------------------------------------------------------------------- placement
def test_detect_matches_the_mounts() -> None:
    layout = detect.detect()
    unified_root = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    assert layout.mode == ("unified" if unified_root else layout.mode)
    if layout.mode == "unified":
        assert [h.key for h in layout.hierarchies] == [UNIFIED]
    else:
        assert layout.v1
        assert (layout.unified is not None) == (layout.mode == "hybrid")


def test_relative_path_nests_under_own_cgroup_in_every_hierarchy(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    p = cgroups.spawn(m)
    own = detect.proc_cgroups()
    theirs = detect.proc_cgroups(p.pid)
    for key in m.paths:
        expected = own[key].rstrip("/") + "/" + m.cgroups_path
        assert theirs[key] == expected, key
        assert os.path.isdir(m.paths[key])
    assert m.pids() == [p.pid]
    # The test process itself stayed where it was.
    assert detect.proc_cgroups() == own


def test_absolute_path_is_taken_from_each_hierarchy_root(cgroups: Cgroups) -> None:
    path = "/" + cgroups.name("-abs")
    m = cgroups.manager(path)
    layout = detect.detect()
    for h in layout.hierarchies:
        assert m.paths[h.key] == os.path.normpath(h.mountpoint + path)
    p = cgroups.spawn(m)
    assert set(detect.proc_cgroups(p.pid)[k] for k in m.paths) == {path}


def test_default_path_is_the_container_id_relative(cgroups: Cgroups) -> None:
    m = manager_for(None, cgroups.name("-id"))
    assert m.cgroups_path == cgroups.name("-id")
    assert all(not p.startswith("/") or p.endswith("/" + cgroups.name("-id"))
               for p in m.paths.values())


def test_path_escaping_its_parent_is_refused() -> None:
    with pytest.raises(OciError, match="leaves its parent"):
        manager_for("../escape", "x")


def test_nested_path_creates_and_removes_every_level(cgroups: Cgroups) -> None:
    m = cgroups.manager(cgroups.name("-outer") + "/mid/leaf")
    assert len(m.created) == 3 * len(m.paths)
    cgroups.spawn(m)
    m.create()  # idempotent: joining what exists creates nothing more
    assert len(m.created) == 3 * len(m.paths)


def test_joining_an_existing_cgroup_creates_nothing_and_keeps_it_while_shared(
        cgroups: Cgroups) -> None:
    owner = cgroups.manager(cgroups.name("-shared"))
    guest = cgroups.manager(cgroups.name("-shared"))
    assert guest.created == []
    mine = cgroups.spawn(owner)
    p = cgroups.spawn(guest)
    assert sorted(owner.pids()) == sorted([mine.pid, p.pid])
    p.kill()
    p.wait()
    guest.destroy()  # the owner's process still lives there
    assert all(os.path.isdir(d) for d in owner.paths.values())
    mine.kill()
    mine.wait()
    owner.destroy()
    assert not any(os.path.exists(d) for d in owner.paths.values())


def test_the_last_container_out_removes_a_shared_cgroup(cgroups: Cgroups) -> None:
    owner = cgroups.manager(cgroups.name("-shared"))
    guest = cgroups.manager(cgroups.name("-shared"))
    p = cgroups.spawn(guest)
    owner.destroy()  # the guest's process still lives there: kept, no error
    assert all(os.path.isdir(d) for d in owner.paths.values())
    p.kill()
    p.wait()
    guest.destroy()  # joined, now empty: removed by the last one out
    assert not any(os.path.exists(d) for d in owner.paths.values())


def test_failed_create_leaves_nothing_behind(cgroups: Cgroups) -> None:
    m = cgroups.manager(cgroups.name("-fail") + "/leaf", create=False)
    calls = []

    def fail_late(key: str, made: list[str]) -> None:
        calls.append(key)
        if len(calls) == len(m.paths):
            raise OciError("injected failure")

    m._after_mkdir = fail_late  # type: ignore[method-assign]
    with pytest.raises(OciError, match="injected"):
        m.create()
    assert m.created == []
    assert not any(os.path.exists(os.path.dirname(d)) for d in m.paths.values())


def test_pids_lists_processes_in_child_cgroups(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    outer = cgroups.spawn(m)
    sub = os.path.join(m.primary, "sub")
    os.mkdir(sub)  # inside our own cgroup: removed by destroy()
    inner = cgroups.spawn(None)
    with open(os.path.join(sub, "cgroup.procs"), "w") as f:
        f.write(str(inner.pid))
    assert sorted(m.pids()) == sorted([outer.pid, inner.pid])


def test_state_round_trip_through_json(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    p = cgroups.spawn(m)
    again = manager_from_state(from_json(json.loads(json.dumps(to_json(m.to_state())))))
    assert again.pids() == [p.pid]
    assert again.to_state() == m.to_state()


def test_destroy_waits_for_killed_processes_and_removes_every_dir(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    procs = [cgroups.spawn(m) for _ in range(3)]
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)  # not reaped yet: destroy must wait and retry
    m.destroy()
    assert not any(os.path.exists(d) for d in m.to_state().paths.values())
    assert m.created == []


def test_destroy_of_an_empty_cgroup_is_rmdir_alone(cgroups: Cgroups,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped container's cgroup goes without listing pids, thawing or walking (the
    kernel's rmdir refuses a cgroup in use); a nested path's levels go too."""
    m = cgroups.manager(cgroups.name("-empty") + "/leaf")
    p = cgroups.spawn(m)
    p.kill()
    p.wait()

    def not_needed(*_: object) -> None:
        raise AssertionError("destroy of an empty cgroup listed, thawed or walked it")
    for name in ("_live_users", "_all_pids", "thaw", "thaw_below", "is_frozen"):
        monkeypatch.setattr(m, name, not_needed)
    m.destroy()
    assert not any(os.path.exists(os.path.dirname(d)) for d in m.paths.values())
    assert m.created == [] and m.adopted == []


def test_destroy_leaves_a_cgroup_with_live_processes_in_place(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    p = cgroups.spawn(m)
    start = time.monotonic()
    m.destroy()  # a live process means another container shares the cgroup
    assert time.monotonic() - start < 1
    assert all(os.path.isdir(d) for d in m.paths.values())
    assert m.pids() == [p.pid]


def test_destroy_of_an_unkillable_dying_process_fails_clearly(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    if m.mode != "unified":
        require(m, "freezer")
    p = cgroups.spawn(m)
    m.freeze()
    os.kill(p.pid, signal.SIGKILL)  # pending while frozen (v1); v2 lets it die
    m2 = manager_from_state(m.to_state())
    m2.is_frozen = lambda: False  # type: ignore[method-assign]  # destroy must not thaw
    start = time.monotonic()
    if m.mode == "unified":
        m2.destroy()
        assert not any(os.path.exists(d) for d in m.paths.values())
        return
    with pytest.raises(OciError, match=str(p.pid)):
        m2.destroy()
    assert time.monotonic() - start < 5
    m.thaw()


def test_kill_all_signals_every_process(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    procs = [cgroups.spawn(m) for _ in range(3)]
    m.kill_all(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=10) == -signal.SIGTERM
    assert wait_for(lambda: m.pids() == [])


def test_systemd_driver_without_systemd_is_a_clear_error() -> None:
    if detect.systemd_running():
        pytest.skip("systemd runs here")
    with pytest.raises(OciError, match="systemd is not running"):
        manager_for("system.slice:ocirun:abc", "abc", systemd=True)


# ------------------------------------------------------------------------ freezer
def test_freeze_stops_the_processes_and_thaw_resumes_them(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    if m.mode != "unified":
        require(m, "freezer")
    p = cgroups.spawn(m, ["sh", "-c", "while :; do :; done"])
    assert wait_for(lambda: cpu_ticks(p.pid) > 0)
    m.freeze()
    assert m.is_frozen()
    # v1 freezer parks tasks in D; the v2 freezer in S: either way not running.
    assert proc_state(p.pid) in ("D", "S", "T")
    before = cpu_ticks(p.pid)
    time.sleep(0.5)
    assert cpu_ticks(p.pid) == before
    m.thaw()
    assert not m.is_frozen()
    assert wait_for(lambda: cpu_ticks(p.pid) > before)


# ---------------------------------------------------------------------- resources
def test_memory_limits_read_back(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "memory")
    mib = 1 << 20
    data: dict = {"limit": 64 * mib, "reservation": 32 * mib}
    swap_file = "memory.memsw.limit_in_bytes" if v == 1 else "memory.swap.max"
    if has_file(m, "memory", swap_file):
        data["swap"] = 96 * mib
    if v == 1:
        data.update(swappiness=10, disableOOMKiller=True)
        if has_file(m, "memory", "memory.kmem.tcp.limit_in_bytes"):
            data["kernelTCP"] = 16 * mib
    m.apply(resources({"memory": data}))
    if v == 1:
        assert int(read(m, "memory", "memory.limit_in_bytes")) == 64 * mib
        assert int(read(m, "memory", "memory.soft_limit_in_bytes")) == 32 * mib
        if "swap" in data:
            assert int(read(m, "memory", swap_file)) == 96 * mib
        assert read(m, "memory", "memory.swappiness") == "10"
        assert "oom_kill_disable 1" in read(m, "memory", "memory.oom_control")
        if "kernelTCP" in data:
            assert int(read(m, "memory", "memory.kmem.tcp.limit_in_bytes")) == 16 * mib
    else:
        assert int(read(m, "memory", "memory.max")) == 64 * mib
        assert int(read(m, "memory", "memory.low")) == 32 * mib
        if "swap" in data:
            assert int(read(m, "memory", "memory.swap.max")) == 32 * mib  # 96 - 64


def test_memory_swap_order_works_both_ways(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "memory")
    if not has_file(m, "memory", "memory.memsw.limit_in_bytes" if v == 1 else "memory.swap.max"):
        pytest.skip("no swap accounting")
    mib = 1 << 20
    m.apply(resources({"memory": {"limit": 64 * mib, "swap": 128 * mib}}))
    m.update(resources({"memory": {"limit": 200 * mib, "swap": 300 * mib}}))  # raise
    m.update(resources({"memory": {"limit": 32 * mib, "swap": 40 * mib}}))  # lower
    limit = "memory.limit_in_bytes" if v == 1 else "memory.max"
    assert int(read(m, "memory", limit)) == 32 * mib


def test_cpu_limits_read_back(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "cpu")
    data: dict = {"shares": 512, "quota": 20000, "period": 100000}
    burst = "cpu.cfs_burst_us" if v == 1 else "cpu.max.burst"
    if has_file(m, "cpu", burst):
        data["burst"] = 5000
    if has_file(m, "cpu", "cpu.idle"):
        data["idle"] = 0
    if v == 1 and has_file(m, "cpu", "cpu.rt_runtime_us"):
        data.update(realtimePeriod=100000, realtimeRuntime=1000)
    m.apply(resources({"cpu": data}))
    if v == 1:
        assert read(m, "cpu", "cpu.shares") == "512"
        assert read(m, "cpu", "cpu.cfs_quota_us") == "20000"
        assert read(m, "cpu", "cpu.cfs_period_us") == "100000"
        if "realtimeRuntime" in data:
            assert read(m, "cpu", "cpu.rt_runtime_us") == "1000"
    else:
        assert read(m, "cpu", "cpu.weight") == str(shares_to_weight(512))
        assert read(m, "cpu", "cpu.max") == "20000 100000"
    if "burst" in data:
        assert read(m, "cpu", burst) == "5000"
    if "idle" in data:
        assert read(m, "cpu", "cpu.idle") == "0"


def test_cpu_period_update_keeps_the_quota(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "cpu")
    m.apply(resources({"cpu": {"quota": 30000, "period": 100000}}))
    m.update(resources({"cpu": {"period": 50000}}))
    if v == 1:
        assert read(m, "cpu", "cpu.cfs_quota_us") == "30000"
        assert read(m, "cpu", "cpu.cfs_period_us") == "50000"
    else:
        assert read(m, "cpu", "cpu.max") == "30000 50000"


def test_realtime_on_v2_is_refused_by_name(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    if m.mode != "unified":
        pytest.skip("v2 only")
    with pytest.raises(OciError, match="realtime"):
        m.apply(resources({"cpu": {"realtimeRuntime": 1000}}))


def test_cpuset_read_back(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    require(m, "cpuset")
    m.apply(resources({"cpu": {"cpus": "0", "mems": "0"}}))
    assert read(m, "cpuset", "cpuset.cpus") == "0"
    assert read(m, "cpuset", "cpuset.mems") == "0"
    p = cgroups.spawn(m)
    assert os.sched_getaffinity(p.pid) == {0}


def test_pids_limit_read_back_and_update(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    require(m, "pids")
    m.apply(resources({"pids": {"limit": 20}}))
    assert read(m, "pids", "pids.max") == "20"
    m.update(resources({"pids": {"limit": -1}}))
    assert read(m, "pids", "pids.max") == "max"


def _block_device() -> tuple[int, int] | None:
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "ram", "zram")):
            continue
        with open(f"/sys/block/{name}/dev") as f:
            major, minor = f.read().strip().split(":")
        return int(major), int(minor)
    return None


def test_block_io_read_back(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = 1 if m.version_of("blkio") == 1 else require(m, "io")
    dev = _block_device()
    if dev is None:
        pytest.skip("no block device")
    major, minor = dev
    data: dict = {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
                  "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}
    ctrl = "blkio" if v == 1 else "io"
    weight_files = ("blkio.weight", "blkio.bfq.weight") if v == 1 else ("io.bfq.weight",
                                                                         "io.weight")
    weight_file = next((f for f in weight_files if has_file(m, ctrl, f)), None)
    has_weight = weight_file is not None
    # BFQ takes per-device weights only for devices it schedules.
    with open(f"/sys/dev/block/{major}:{minor}/queue/scheduler") as f:
        per_device = "bfq" not in (weight_file or "") or "[bfq]" in f.read()
    if has_weight:
        data["weight"] = 500
        if per_device:
            data["weightDevice"] = [{"major": major, "minor": minor, "weight": 300}]
    m.apply(resources({"blockIO": data}))
    if v == 1:
        assert f"{major}:{minor} 1048576" in read(m, "blkio", "blkio.throttle.read_bps_device")
        assert f"{major}:{minor} 100" in read(m, "blkio", "blkio.throttle.write_iops_device")
    else:
        line = read(m, "io", "io.max")
        assert f"{major}:{minor}" in line and "rbps=1048576" in line and "wiops=100" in line
    if weight_file == "io.bfq.weight":
        lines = read(m, ctrl, weight_file).splitlines()  # the v1 range, as is
        assert "default 500" in lines
        assert f"{major}:{minor} 300" in lines or not per_device
    elif weight_file == "io.weight":
        lines = read(m, ctrl, weight_file).splitlines()
        assert f"default {1 + 490 * 9999 // 990}" in lines
        assert f"{major}:{minor} {1 + 290 * 9999 // 990}" in lines
    elif weight_file is not None:
        assert read(m, ctrl, weight_file) == "500"
        if per_device:
            device_file = weight_file.replace("weight", "weight_device")
            assert f"{major}:{minor} 300" in read(m, ctrl, device_file)
    if not has_weight:
        with pytest.raises(OciError, match="blockIO.weight"):
            m.apply(resources({"blockIO": {"weight": 500}}))


def test_hugepage_limit_read_back(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "hugetlb")
    unified_root = os.path.dirname(m.paths.get(UNIFIED, "/x"))
    if v == 2 and m.mode == "hybrid":
        # Hybrid: the manager has to enable hugetlb in the cgroup2 parent, which here
        # is the host's root cgroup; only done when explicitly allowed.
        if os.environ.get("OCIRUN_TEST_HOST_CGROUP_WRITES") != "1":
            pytest.skip("set OCIRUN_TEST_HOST_CGROUP_WRITES=1 to enable hugetlb in "
                        f"{unified_root}/cgroup.subtree_control")
    sizes = sorted(os.listdir("/sys/kernel/mm/hugepages"))
    if not sizes:
        pytest.skip("no huge page sizes")
    kb = int(sizes[0].split("-")[1].rstrip("kB"))
    size = host_page_sizes()[0]
    with open(os.path.join(unified_root, "cgroup.subtree_control")) as f:
        enabled_before = "hugetlb" in f.read().split()
    try:
        with pytest.raises(OciError, match="3MB"):
            m.apply(resources({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]}))
        m.apply(resources({"hugepageLimits": [{"pageSize": size, "limit": 4 * kb * 1024}]}))
        name = f"hugetlb.{size}.limit_in_bytes" if v == 1 else f"hugetlb.{size}.max"
        assert int(read(m, "hugetlb", name)) == 4 * kb * 1024
    finally:
        if m.mode == "hybrid" and not enabled_before:
            m.destroy()
            try:  # put the host's root cgroup back as it was
                with open(os.path.join(unified_root, "cgroup.subtree_control"), "w") as f:
                    f.write("-hugetlb")
            except OSError:
                pass


def test_network_limits_where_the_controllers_exist(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    data = {"network": {"classID": 0x100001, "priorities": [{"name": "lo", "priority": 5}]}}
    if m.version_of("net_cls") != 1 or m.version_of("net_prio") != 1:
        with pytest.raises(OciError, match="network"):
            m.apply(resources(data))
        return
    m.apply(resources(data))
    assert int(read(m, "net_cls", "net_cls.classid")) == 0x100001
    assert "lo 5" in read(m, "net_prio", "net_prio.ifpriomap")


def test_unified_map(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    if m.version_of("memory") != 2:
        with pytest.raises(OciError, match="unified.memory.high"):
            m.apply(resources({"unified": {"memory.high": "50000000"}}))
        return
    m.apply(resources({"unified": {"memory.high": "50003968", "pids.max": "7"}}))
    assert read(m, "memory", "memory.high") == "50003968"
    assert read(m, "pids", "pids.max") == "7"


def test_device_rules_are_enforced(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    if m.mode != "unified":
        require(m, "devices")
    # Deny everything, then allow reading /dev/kmsg (1:11) only; runc's defaults
    # (/dev/null among them) are added behind the spec's rules.
    m.apply(resources({"devices": [{"allow": False, "access": "rwm"},
                                   {"allow": True, "type": "c", "major": 1, "minor": 11,
                                    "access": "r"}]}))
    if m.mode != "unified":
        listing = read(m, "devices", "devices.list").splitlines()
        assert "c 1:11 r" in listing and "c 1:3 rwm" in listing and "a *:* rwm" not in listing
    # Subshells: a failed redirection on ":" would end a POSIX shell.
    script = ("read go; (: < /dev/kmsg) && echo kmsg-read-ok;"
              " (: > /dev/kmsg) 2>/dev/null || echo kmsg-write-denied;"
              " (: > /dev/null) && echo null-ok; (: < /dev/mem) 2>/dev/null || echo mem-denied")
    p = cgroups.spawn(m, ["sh", "-c", script], stdin=True)
    out, _ = p.communicate("go\n", timeout=30)
    assert out.split() == ["kmsg-read-ok", "kmsg-write-denied", "null-ok", "mem-denied"]


def test_missing_controller_is_named_and_unset_values_are_fine(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    m.apply(resources({"memory": {}, "cpu": {}, "network": {}, "blockIO": {}}))
    m.apply(None)
    if m.mode == "unified":
        return
    lacking = [c for c in ("net_cls", "hugetlb", "rdma") if m.version_of(c) is None]
    if "net_cls" in lacking:
        with pytest.raises(OciError, match="network.classID.*net_cls"):
            m.apply(resources({"network": {"classID": 1}}))


def test_check_before_update_refuses_a_limit_below_usage(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    require(m, "memory")
    p = cgroups.spawn(m, ["sh", "-c", "read go; x=$(head -c 4000000 /dev/zero | tr '\\0' x);"
                                      " echo ready; read done"], stdin=True)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ready"
    with pytest.raises(OciError, match="below the current usage"):
        m.update(resources({"memory": {"limit": 4096, "checkBeforeUpdate": True}}))


# -------------------------------------------------------------------------- stats
def test_stats_report_pids_memory_and_cpu(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    m.apply(resources({"pids": {"limit": 50}}) if m.version_of("pids") else None)
    # Held at `read` until placed: v1 charges memory where a page was first touched, and
    # a `sleep` forked before the move would stay behind (usage 0 here, a flake).
    p = cgroups.spawn(m, ["sh", "-c", "read go; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); "
                          "done; sleep 100"], stdin=True)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert wait_for(lambda: cpu_ticks(p.pid) > 0 or proc_state(p.pid) == "S")
    time.sleep(0.2)
    s = m.stats()
    json.dumps(s)  # serialisable as events --stats output
    if m.version_of("pids"):
        assert s["pids"]["current"] >= 1 and s["pids"]["limit"] == 50
    if m.version_of("memory"):
        assert s["memory"]["usage"]["usage"] > 0
    if "cpu" in s and "usage" in s["cpu"]:
        assert s["cpu"]["usage"]["total"] > 0
    assert m.oom_kill_count() == 0


def test_update_changes_live_limits(cgroups: Cgroups) -> None:
    m = cgroups.manager()
    v = require(m, "memory")
    cgroups.spawn(m)
    m.apply(resources({"memory": {"limit": 64 << 20}}))
    m.update(resources({"memory": {"limit": 128 << 20}}))
    name = "memory.limit_in_bytes" if v == 1 else "memory.max"
    assert int(read(m, "memory", name)) == 128 << 20


def test_writes_never_reach_the_test_process_cgroup(cgroups: Cgroups) -> None:
    own_before = detect.proc_cgroups()
    m = cgroups.manager()
    m.apply(resources({"pids": {"limit": 10}}) if m.version_of("pids") else None)
    assert detect.proc_cgroups() == own_before
    assert os.getpid() not in m.pids()
    assert subprocess.run(["true"]).returncode == 0
