"""Cgroups at container level: `ocirun create/start/pause/resume/kill/delete` on real
containers, with every check read from the container's own cgroup as the host sees it
(found from /proc/<init pid>/cgroup).

Runs on whatever the host has: v1 hybrid here, pure v2 in the guest started by
tests/cgroup2_vm.sh.  Containers use relative cgroupsPaths under the test session's own
cgroup (the `runtime` fixture checks that nothing is left behind); the test process never
joins a container's cgroup.  In the guest, where Python is slow, OCIRUN_TEST_PYFLAGS=-S
starts the runtime without site processing and OCIRUN_TEST_CLI_TIMEOUT allows for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import Runtime, proc_status, wait_for
from ocirun.cgroups import detect, manager_for
from ocirun.cgroups.resources import host_page_sizes, shares_to_weight

T = float(os.environ.get("OCIRUN_TEST_CLI_TIMEOUT", "30"))  # per runtime call
SLOW = float(os.environ.get("OCIRUN_TEST_SLOWDOWN", "1"))  # waits scale with it
MiB = 1 << 20


@pytest.fixture
def runtime(runtime: Runtime) -> Runtime:
    """conftest's runtime, started with OCIRUN_TEST_PYFLAGS (the guest passes -S)."""
    flags = os.environ.get("OCIRUN_TEST_PYFLAGS", "").split()
    if flags:
        runtime.argv = [sys.executable, *flags, "-m", "ocirun"]
    return runtime


# ------------------------------------------------------------------------ helpers
class Cg:
    """A process's cgroup in every hierarchy, as host directories."""

    def __init__(self, pid: int | str) -> None:
        self.layout = detect.detect()
        self.mode = self.layout.mode
        own = detect.proc_cgroups(pid)
        self.paths = {h.key: detect.own_cgroup(self.layout, h, own)
                      for h in self.layout.hierarchies}
        self.dirs = {h.key: h.fs_path(self.paths[h.key]) for h in self.layout.hierarchies}

    def dir(self, controller: str) -> str | None:
        if controller:
            h = self.layout.v1_for(controller)
            if h is not None:
                return self.dirs[h.key]
        if detect.UNIFIED not in self.dirs:
            return None
        d = self.dirs[detect.UNIFIED]
        if controller and controller not in _words(os.path.join(d, "cgroup.controllers")):
            return None
        return d

    def version(self, controller: str) -> int | None:
        d = self.dir(controller)
        return None if d is None else 2 if d == self.dirs.get(detect.UNIFIED) else 1

    def has(self, controller: str, name: str) -> bool:
        d = self.dir(controller)
        return d is not None and os.path.exists(os.path.join(d, name))

    def read(self, controller: str, name: str) -> str:
        d = self.dir(controller)
        assert d is not None, f"no {controller} directory"
        with open(os.path.join(d, name)) as f:
            return f.read().strip()

    def keyed(self, controller: str, name: str) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in
                                        self.read(controller, name).splitlines())}

    def pids(self) -> set[int]:
        d = self.dir("pids") or self.dir("")
        assert d is not None
        with open(os.path.join(d, "cgroup.procs")) as f:
            return {int(x) for x in f.read().split()}


def _words(path: str) -> set[str]:
    try:
        with open(path) as f:
            return set(f.read().split())
    except OSError:
        return set()


def expected_dirs(cgroups_path: str) -> dict[str, str]:
    """Where a relative cgroupsPath lands: under the test process's own cgroups."""
    own = Cg("self")
    return {k: os.path.join(d, cgroups_path) for k, d in own.dirs.items()}


def cgroups_path(bundle: Path) -> str:
    return json.loads((bundle / "config.json").read_text())["linux"]["cgroupsPath"]


def out_dir(rt: Runtime) -> tuple[Path, Callable[[dict[str, Any]], None]]:
    """A host dir and a config edit binding it read-write at /out."""
    out = rt.work / f"out-{uuid.uuid4().hex[:6]}"
    out.mkdir()

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/out", "type": "bind", "source": str(out),
                               "options": ["rbind", "rw"]})
    return out, edit


def edits(*fns: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        for fn in fns:
            if fn is not None:
                fn(spec)
    return edit


def set_resources(res: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"].setdefault("resources", {}).update(res)
    return edit


def without_ns(kind: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != kind]
    return edit


def create(rt: Runtime, bundle: Path, cid: str | None = None) -> tuple[str, int]:
    cid = cid or rt.new_id()
    if cid not in rt.created:
        rt.created.append(cid)
    pid_file = rt.work / f"{cid}.pid"
    r = rt("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid, timeout=T)
    assert r.returncode == 0, r.stderr.decode()
    return cid, int(pid_file.read_text())


def ok(rt: Runtime, *args: str) -> subprocess.CompletedProcess:
    r = rt(*args, timeout=T)
    assert r.returncode == 0, f"{args}: {r.stderr.decode()}"
    return r


def status(rt: Runtime, cid: str) -> str:
    return json.loads(ok(rt, "state", cid).stdout)["status"]


def run_output(rt: Runtime, bundle: Path) -> str:
    cid = rt.new_id()
    r = rt("run", "--bundle", str(bundle), cid, timeout=T + 60 * SLOW)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def host_can_fork() -> bool:
    return subprocess.run(["true"], timeout=30).returncode == 0


# ---------------------------------------------------------------- placement & view
def test_init_runs_its_first_instruction_inside_its_cgroup(runtime: Runtime) -> None:
    # No cgroup namespace, so /proc/self/cgroup names host paths; cat *is* the init.
    bundle = runtime.bundle(["cat", "/proc/self/cgroup"], edit=without_ns("cgroup"))
    want = Cg("self").layout
    expected = expected_dirs(cgroups_path(bundle))
    seen = {}
    for line in run_output(runtime, bundle).splitlines():
        _, ctrls, path = line.split(":", 2)
        key = ",".join(sorted(c for c in ctrls.split(",") if c))
        seen[key] = path
    for h in want.hierarchies:
        assert h.fs_path(detect.own_cgroup(want, h, seen)) == expected[h.key], h.key


@pytest.mark.parametrize("cgroupns", [True, False], ids=["cgroupns", "host-cgroupns"])
def test_sys_fs_cgroup_shows_the_containers_own_cgroup_only(runtime: Runtime,
                                                            cgroupns: bool) -> None:
    v2 = Cg("self").mode == "unified"
    mem, pids = ("memory.max", "pids.max") if v2 else ("memory/memory.limit_in_bytes",
                                                      "pids/pids.max")
    script = ("echo '== cgroup'; cat /proc/self/cgroup; echo '== dirs';"
              " find /sys/fs/cgroup -type d; echo '== limits';"
              f" cat /sys/fs/cgroup/{mem} /sys/fs/cgroup/{pids}; echo '== mounts';"
              " grep cgroup /proc/self/mountinfo")
    bundle = runtime.bundle(["sh", "-c", script], edit=edits(
        set_resources({"memory": {"limit": 48 * MiB}, "pids": {"limit": 37}}),
        None if cgroupns else without_ns("cgroup")))
    out = run_output(runtime, bundle)
    sections: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:], [])
        else:
            current.append(line)
    # The limits read inside are the container's: its own cgroup is what shows.
    assert sections["limits"] == [str(48 * MiB), "37"]
    # No cgroup below the container's: nothing of the host tree (v1: one directory
    # per hierarchy under the tmpfs; v2: the mount alone).
    dirs = sorted(sections["dirs"])
    if v2:
        assert dirs == ["/sys/fs/cgroup"], dirs
    else:
        names = sorted(os.path.basename(mp) for mp, *_ in _host_hierarchies())
        assert dirs == ["/sys/fs/cgroup"] + [f"/sys/fs/cgroup/{n}" for n in names], dirs
    paths = [line.split(":", 2)[2] for line in sections["cgroup"]]
    if cgroupns:
        assert set(paths) == {"/"}
        # The mounts are cgroup filesystems rooted at the namespace root.
        assert all(line.split()[3] == "/" for line in sections["mounts"])
    else:
        assert "/" not in paths
        assert all(p.endswith("/" + cgroups_path(bundle)) for p in paths)
        roots = {line.split()[3] for line in sections["mounts"]
                 if line.split()[4] != "/sys/fs/cgroup" or v2}
        assert all(r.endswith("/" + cgroups_path(bundle)) for r in roots), roots


def _host_hierarchies() -> list[tuple[str, str]]:
    layout = detect.detect()
    return [(h.mountpoint, h.key) for h in layout.hierarchies
            if os.path.dirname(h.mountpoint) == "/sys/fs/cgroup"]


# ---------------------------------------------------------------------- resources
def _block_device() -> tuple[int, int] | None:
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "ram", "zram", "nbd")):
            continue
        with open(f"/sys/block/{name}/dev") as f:
            major, minor = f.read().strip().split(":")
        return int(major), int(minor)
    return None


class Probe:
    """What a fresh cgroup at the containers' level offers (files and controllers),
    from a throw-away cgroup made and removed by the manager (no process in it)."""

    def __init__(self, name: str) -> None:
        m = manager_for(name, "probe")
        m.create()
        try:
            self.mode = m.mode
            self.files: dict[str, set[str]] = {}
            self.version: dict[str, int | None] = {}
            for c in ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "io",
                      "hugetlb", "net_cls", "net_prio", "devices", "freezer"):
                self.version[c] = m.version_of(c)
                d = m.dir_for(c)
                self.files[c] = set(os.listdir(d)) if d else set()
        finally:
            m.destroy()

    def has(self, controller: str, name: str) -> bool:
        return name in self.files.get(controller, set())


def test_every_resource_is_written_to_the_containers_cgroup(runtime: Runtime) -> None:
    probe = Probe(f"{runtime.cgroup_prefix}-probe")
    v = {c: probe.version[c] for c in probe.version}
    mem: dict[str, Any] = {"limit": 64 * MiB, "reservation": 32 * MiB}
    swap_file = "memory.memsw.limit_in_bytes" if v["memory"] == 1 else "memory.swap.max"
    if probe.has("memory", swap_file):
        mem["swap"] = 96 * MiB
    if v["memory"] == 1:
        mem.update(swappiness=10, disableOOMKiller=True)
        if probe.has("memory", "memory.kmem.tcp.limit_in_bytes"):
            mem["kernelTCP"] = 16 * MiB
    cpu: dict[str, Any] = {"shares": 512, "quota": 20000, "period": 100000,
                           "cpus": "0", "mems": "0"}
    burst = "cpu.cfs_burst_us" if v["cpu"] == 1 else "cpu.max.burst"
    if probe.has("cpu", burst):
        cpu["burst"] = 5000
    if probe.has("cpu", "cpu.idle"):
        cpu["idle"] = 0  # 1 would make the kernel report the idle weight as shares
    if v["cpu"] == 1 and probe.has("cpu", "cpu.rt_runtime_us"):
        cpu.update(realtimePeriod=100000, realtimeRuntime=1000)
    res: dict[str, Any] = {"memory": mem, "cpu": cpu, "pids": {"limit": 37}}
    dev = _block_device()
    blk_ctrl = "blkio" if v["blkio"] == 1 else "io"
    weight_file = None
    if dev is not None and v[blk_ctrl] is not None:
        major, minor = dev
        blk: dict[str, Any] = {
            "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
            "throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": 2097152}],
            "throttleReadIOPSDevice": [{"major": major, "minor": minor, "rate": 300}],
            "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}
        candidates = (("blkio.weight", "blkio.bfq.weight") if blk_ctrl == "blkio"
                      else ("io.bfq.weight", "io.weight"))
        weight_file = next((f for f in candidates if probe.has(blk_ctrl, f)), None)
        with open(f"/sys/dev/block/{major}:{minor}/queue/scheduler") as f:
            on_bfq = "[bfq]" in f.read()
        per_device = weight_file is not None and ("bfq" not in weight_file or on_bfq)
        if weight_file is not None:
            blk["weight"] = 500
            if per_device:
                blk["weightDevice"] = [{"major": major, "minor": minor, "weight": 300}]
        res["blockIO"] = blk
    # Hugetlb on hybrid lives in the cgroup2 root, whose subtree_control the manager
    # would have to change: only done when the host allows it explicitly.
    huge = v["hugetlb"] == 1 or v["hugetlb"] == 2 and (
        probe.mode == "unified" or os.environ.get("OCIRUN_TEST_HOST_CGROUP_WRITES") == "1")
    sizes = host_page_sizes()
    if huge and sizes:
        unit = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[sizes[0][-2:]]
        res["hugepageLimits"] = [{"pageSize": sizes[0], "limit": 4 * int(sizes[0][:-2]) * unit}]
    if v["net_cls"] == 1 and v["net_prio"] == 1:
        res["network"] = {"classID": 0x100001, "priorities": [{"name": "lo", "priority": 5}]}
    if probe.mode == "unified":
        res["unified"] = {"memory.high": str(80 * MiB)}
    res["devices"] = [{"allow": False, "access": "rwm"},
                      {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rw"}]
    bundle = runtime.bundle(edit=set_resources(res))
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    assert cg.dirs == expected_dirs(cgroups_path(bundle))
    assert cg.pids() == {pid}

    if v["memory"] == 1:
        assert int(cg.read("memory", "memory.limit_in_bytes")) == 64 * MiB
        assert int(cg.read("memory", "memory.soft_limit_in_bytes")) == 32 * MiB
        assert cg.read("memory", "memory.swappiness") == "10"
        assert cg.keyed("memory", "memory.oom_control")["oom_kill_disable"] == 1
        if "kernelTCP" in mem:
            assert int(cg.read("memory", "memory.kmem.tcp.limit_in_bytes")) == 16 * MiB
        if "swap" in mem:
            assert int(cg.read("memory", swap_file)) == 96 * MiB
    else:
        assert int(cg.read("memory", "memory.max")) == 64 * MiB
        assert int(cg.read("memory", "memory.low")) == 32 * MiB
        assert int(cg.read("memory", "memory.high")) == 80 * MiB  # the unified map
        if "swap" in mem:
            assert int(cg.read("memory", swap_file)) == 32 * MiB  # swap alone on v2
    if v["cpu"] == 1:
        assert cg.read("cpu", "cpu.shares") == "512"
        assert cg.read("cpu", "cpu.cfs_quota_us") == "20000"
        assert cg.read("cpu", "cpu.cfs_period_us") == "100000"
        if "realtimeRuntime" in cpu:
            assert cg.read("cpu", "cpu.rt_runtime_us") == "1000"
            assert cg.read("cpu", "cpu.rt_period_us") == "100000"
    else:
        assert cg.read("cpu", "cpu.weight") == str(shares_to_weight(512))
        assert cg.read("cpu", "cpu.max") == "20000 100000"
    if "burst" in cpu:
        assert cg.read("cpu", burst) == "5000"
    if "idle" in cpu:
        assert cg.read("cpu", "cpu.idle") == "0"
    assert cg.read("cpuset", "cpuset.cpus") == "0"
    assert cg.read("cpuset", "cpuset.mems") == "0"
    assert os.sched_getaffinity(pid) == {0}
    assert cg.read("pids", "pids.max") == "37"
    if "blockIO" in res:
        major, minor = dev  # type: ignore[misc]
        d = f"{major}:{minor}"
        if blk_ctrl == "blkio":
            for name, rate in (("read_bps", 1048576), ("write_bps", 2097152),
                               ("read_iops", 300), ("write_iops", 100)):
                assert f"{d} {rate}" in cg.read("blkio", f"blkio.throttle.{name}_device")
        else:
            line = next(ln for ln in cg.read("io", "io.max").splitlines() if ln.startswith(d))
            assert set(line.split()[1:]) == {"rbps=1048576", "wbps=2097152", "riops=300",
                                             "wiops=100"}
        if weight_file in ("blkio.weight", "blkio.bfq.weight"):
            assert cg.read("blkio", weight_file) == "500"
            if "weightDevice" in res["blockIO"]:
                assert f"{d} 300" in cg.read("blkio", weight_file + "_device")
        elif weight_file == "io.bfq.weight":
            lines = cg.read("io", weight_file).splitlines()
            assert "default 500" in lines
            if "weightDevice" in res["blockIO"]:
                assert f"{d} 300" in lines
        elif weight_file == "io.weight":
            lines = cg.read("io", weight_file).splitlines()
            assert f"default {1 + 490 * 9999 // 990}" in lines
            if "weightDevice" in res["blockIO"]:
                assert f"{d} {1 + 290 * 9999 // 990}" in lines
    if "hugepageLimits" in res:
        size = res["hugepageLimits"][0]["pageSize"]
        name = (f"hugetlb.{size}.limit_in_bytes" if cg.version("hugetlb") == 1
                else f"hugetlb.{size}.max")
        assert int(cg.read("hugetlb", name)) == res["hugepageLimits"][0]["limit"]
    if "network" in res:
        assert int(cg.read("net_cls", "net_cls.classid")) == 0x100001
        assert "lo 5" in cg.read("net_prio", "net_prio.ifpriomap")
    if v["devices"] == 1:
        listing = cg.read("devices", "devices.list").splitlines()
        assert "c 1:11 rw" in listing and "c 1:3 rwm" in listing
        assert "a *:* rwm" not in listing
    # The devices program on v2 is checked by what it lets the container do (below).


_MISSING = [
    ({"network": {"classID": 1}}, "network.classID", lambda p: p.version["net_cls"] is None),
    ({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]}, "hugepageLimits[0] (3MB)",
     lambda p: True),
    ({"cpu": {"realtimeRuntime": 1000}}, "realtime", lambda p: p.mode == "unified"),
    ({"blockIO": {"weight": 500}}, "blockIO.weight",
     lambda p: p.version["blkio"] == 1 and not p.files["blkio"] & {"blkio.weight",
                                                                   "blkio.bfq.weight"}),
]


@pytest.mark.parametrize("res,named,applies", _MISSING, ids=[m[1] for m in _MISSING])
def test_a_resource_the_host_lacks_is_named_and_nothing_is_left(
        runtime: Runtime, res: dict[str, Any], named: str,
        applies: Callable[[Probe], bool]) -> None:
    if not applies(Probe(f"{runtime.cgroup_prefix}-probe")):
        pytest.skip("this host has it")
    bundle = runtime.bundle(edit=set_resources(res))
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid, timeout=T)
    assert r.returncode != 0
    assert named.encode() in r.stderr, r.stderr
    assert not (runtime.root / cid).exists()
    assert not any(os.path.exists(d) for d in expected_dirs(cgroups_path(bundle)).values())


def test_systemd_cgroup_driver_without_systemd_is_a_clear_error(runtime: Runtime) -> None:
    if detect.systemd_running():
        pytest.skip("systemd runs here")
    bundle = runtime.bundle(edit=lambda s: s["linux"].update(
        cgroupsPath="system.slice:ocirun:" + runtime.cgroup_prefix))
    cid = runtime.new_id()
    r = runtime("--systemd-cgroup", "create", "--bundle", str(bundle), cid, timeout=T)
    assert r.returncode != 0 and b"systemd is not running" in r.stderr, r.stderr
    assert not (runtime.root / cid).exists()


def test_device_rules_are_enforced_in_the_container(runtime: Runtime) -> None:
    # CAP_SYSLOG lets reading /dev/kmsg pass the kernel's own check: only the device
    # cgroup (v1 list or v2 BPF program) stands between the container and the read.
    script = ("(: > /dev/kmsg) && echo write-ok; (: < /dev/kmsg) 2>/dev/null && echo read-ok;"
              " (: < /dev/null) && echo null-ok; (: < /dev/mem) 2>/dev/null || echo mem-denied")

    def edit(access: str) -> Callable[[dict[str, Any]], None]:
        def fn(spec: dict[str, Any]) -> None:
            for caps in spec["process"]["capabilities"].values():
                caps.append("CAP_SYSLOG")
            spec["linux"]["devices"] = [
                {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o666},
                {"path": "/dev/mem", "type": "c", "major": 1, "minor": 1, "fileMode": 0o666}]
            spec["linux"]["resources"]["devices"] = [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 11, "access": access}]
        return fn

    assert run_output(runtime, runtime.bundle(["sh", "-c", script], edit=edit("w"))).split() \
        == ["write-ok", "null-ok", "mem-denied"]
    assert run_output(runtime, runtime.bundle(["sh", "-c", script], edit=edit("rw"))).split() \
        == ["write-ok", "read-ok", "null-ok", "mem-denied"]


# --------------------------------------------------------------------- operations
def test_pause_freezes_every_process_and_resume_runs_them_again(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "while :; do :; done"])
    cid, pid = create(runtime, bundle)
    ok(runtime, "start", cid)
    wait_for(lambda: cpu_ticks(pid) > 0, 10 * SLOW, "the loop to run")
    ok(runtime, "pause", cid)
    assert status(runtime, cid) == "paused"
    # v1's freezer parks tasks in D, v2's in S: either way not running.
    assert proc_status(pid)["State"][0] in ("D", "S"), proc_status(pid)["State"]
    before = cpu_ticks(pid)
    time.sleep(0.5 * SLOW)
    assert cpu_ticks(pid) == before
    r = runtime("pause", cid, timeout=T)
    assert r.returncode != 0 and b"paused" in r.stderr
    ok(runtime, "resume", cid)
    assert status(runtime, cid) == "running"
    wait_for(lambda: cpu_ticks(pid) > before, 10 * SLOW, "the loop to run again")
    assert proc_status(pid)["State"][0] == "R"


def test_kill_all_reaches_every_process_in_the_cgroup(runtime: Runtime) -> None:
    # Without a pid namespace of its own, only --all reaches the init's children.
    bundle = runtime.bundle(["sh", "-c", "sleep 1000 & sleep 1000 & (sleep 1000 &); wait"],
                            edit=without_ns("pid"))
    cid, pid = create(runtime, bundle)
    ok(runtime, "start", cid)
    cg = Cg(pid)
    wait_for(lambda: len(cg.pids()) == 4, 10 * SLOW, "4 processes")
    pids = cg.pids()
    ok(runtime, "kill", "--all", cid, "TERM")
    wait_for(lambda: not any(alive(p) for p in pids), 10 * SLOW, "every process to die")
    assert status(runtime, cid) == "stopped"
    ok(runtime, "delete", cid)
    assert not any(os.path.exists(d) for d in cg.dirs.values())


def test_delete_of_a_stopped_container_takes_what_its_init_left(runtime: Runtime) -> None:
    # No pid namespace: the init's children outlive it; delete kills them (as runc).
    out, bind = out_dir(runtime)
    bundle = runtime.bundle(["sh", "-c", "sleep 1000 & echo $! > /out/child"],
                            edit=edits(bind, without_ns("pid")))
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    ok(runtime, "start", cid)
    wait_for(lambda: (out / "child").exists() and not alive(pid), 10 * SLOW, "init exit")
    child = next(iter(cg.pids()))
    assert alive(child)
    ok(runtime, "delete", cid)
    wait_for(lambda: not alive(child), 10 * SLOW, "the orphan to be killed")
    assert not any(os.path.exists(d) for d in cg.dirs.values())


def test_delete_removes_every_cgroup_directory_in_every_hierarchy(runtime: Runtime) -> None:
    # A nested cgroupsPath (three levels made), and a cgroup the container makes
    # below its own through a writable /sys/fs/cgroup: all gone after delete.
    sub = "/sys/fs/cgroup" if Cg("self").mode == "unified" else "/sys/fs/cgroup/pids"

    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = f"{runtime.cgroup_prefix}-nest/mid/leaf"
        for m in spec["mounts"]:
            if m["type"] == "cgroup":
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    bundle = runtime.bundle(["sh", "-c", f"mkdir {sub}/inner && exec sleep 1000"], edit=edit)
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    assert cg.dirs == expected_dirs(f"{runtime.cgroup_prefix}-nest/mid/leaf")
    ok(runtime, "start", cid)
    inner = os.path.join(cg.dirs["pids"] if "pids" in cg.dirs else cg.dirs[""], "inner")
    wait_for(lambda: os.path.isdir(inner), 10 * SLOW, "the container's own sub-cgroup")
    ok(runtime, "delete", "--force", cid)
    assert not alive(pid)
    for d in cg.dirs.values():
        top = d[: d.index(f"/{runtime.cgroup_prefix}-nest") + len(runtime.cgroup_prefix) + 6]
        assert not os.path.exists(top), top


def writable_cgroup_mount(spec: dict[str, Any]) -> None:
    for m in spec["mounts"]:
        if m["type"] == "cgroup":
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]


NEST_DEPTH = 1100  # past CPython's recursion limit (1000), short of PATH_MAX on the host


def test_cgroups_the_container_nests_past_any_recursion_limit_are_removed(
        runtime: Runtime) -> None:
    """A container with a writable cgroup mount nests cgroups as deep as it likes and
    moves itself to the bottom: ps and kill --all still find it, delete --force still
    removes the whole tree (a recursive walk failed here and left it all behind)."""
    unified = Cg("self").mode == "unified"
    sub = "/sys/fs/cgroup" if unified else "/sys/fs/cgroup/pids"
    script = (f"cd {sub} && i=0 && while [ $i -lt {NEST_DEPTH} ]; do mkdir a && cd a "
              "|| exit 1; i=$((i+1)); done && echo $$ > cgroup.procs && exec sleep 1000")
    bundle = runtime.bundle(["sh", "-c", script], edit=writable_cgroup_mount)
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    ok(runtime, "start", cid)
    bottom = "/a" * NEST_DEPTH
    key = "" if unified else "pids"
    wait_for(lambda: Cg(pid).paths[key].endswith(bottom), 30 * SLOW, "the move to the bottom")
    assert os.path.isdir(cg.dirs[key] + bottom)
    ps = ok(runtime, "ps", "--format", "json", cid)
    assert json.loads(ps.stdout) == [pid]
    ok(runtime, "kill", "--all", cid, "KILL")
    wait_for(lambda: not alive(pid), 10 * SLOW, "kill --all to reach the bottom")
    ok(runtime, "delete", "--force", cid)
    assert not any(os.path.exists(d) for d in cg.dirs.values())


def test_a_cgroup_the_container_froze_itself_does_not_hold_up_delete(
        runtime: Runtime) -> None:
    """On v1 a frozen task cannot act on SIGKILL, and thawing the container's cgroup
    leaves a child cgroup the container froze itself frozen: the init waited on it
    forever and delete --force failed, leaving processes and cgroups.  delete thaws
    what is below too.  (v2 delivers SIGKILL to frozen tasks; the test holds there.)"""
    unified = Cg("self").mode == "unified"
    if unified:
        sub, knob, value = "/sys/fs/cgroup", "cgroup.freeze", "1"
    else:
        sub, knob, value = "/sys/fs/cgroup/freezer", "freezer.state", "FROZEN"
    script = (f"cd {sub} && mkdir cold || exit 1; sleep 1000 & "
              f"echo $! > cold/cgroup.procs && echo {value} > cold/{knob} && exec sleep 1000")
    bundle = runtime.bundle(["sh", "-c", script], edit=writable_cgroup_mount)
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    cold = os.path.join(cg.dirs["" if unified else "freezer"], "cold")

    def frozen() -> bool:
        try:
            if unified:
                return "frozen 1" in Path(cold, "cgroup.events").read_text()
            return Path(cold, "freezer.state").read_text().strip() == "FROZEN"
        except FileNotFoundError:
            return False
    ok(runtime, "start", cid)
    wait_for(frozen, 10 * SLOW, "the container to freeze its own child cgroup")
    (child,) = map(int, Path(cold, "cgroup.procs").read_text().split())
    ok(runtime, "delete", "--force", cid)
    assert not alive(child) and not alive(pid)
    assert not any(os.path.exists(d) for d in cg.dirs.values())


def with_cgroups_path(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = path
    return edit


def top_dirs(dirs: dict[str, str], name: str) -> list[str]:
    """Directory `name` (the first level of a nested cgroupsPath) in every hierarchy."""
    return [os.path.join(d[: d.index(f"/{name}/") if f"/{name}/" in d else d.rindex("/")],
                         name) for d in dirs.values()]


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("first", ["creator", "joiner"])
def test_containers_sharing_a_cgroup_path(runtime: Runtime, first: str, nested: bool) -> None:
    # Nested: the levels the creator made above the leaf go too, whoever is last out.
    path = f"{runtime.cgroup_prefix}-shared" + ("/mid/leaf" if nested else "")
    a, pid_a = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
    b, pid_b = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))  # joins a's
    ok(runtime, "start", a)
    ok(runtime, "start", b)
    cg = Cg(pid_a)
    assert Cg(pid_b).dirs == cg.dirs == expected_dirs(path)
    assert cg.pids() == {pid_a, pid_b}
    gone, stays, stays_pid = (a, b, pid_b) if first == "creator" else (b, a, pid_a)
    ok(runtime, "delete", "--force", gone)
    assert alive(stays_pid)
    assert status(runtime, stays) == "running"
    assert all(os.path.isdir(d) for d in cg.dirs.values())
    assert cg.pids() == {stays_pid}
    ok(runtime, "delete", "--force", stays)
    assert not any(os.path.exists(d)
                   for d in top_dirs(cg.dirs, f"{runtime.cgroup_prefix}-shared"))


def test_the_duty_to_remove_a_shared_cgroup_passes_from_joiner_to_joiner(
        runtime: Runtime) -> None:
    # a makes it; b joins; a goes; c joins (b holds the duty now); b goes; c is last.
    path = f"{runtime.cgroup_prefix}-relay"
    a, pid_a = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
    b, pid_b = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
    cg = Cg(pid_a)
    ok(runtime, "delete", "--force", a)
    c, pid_c = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
    assert cg.pids() == {pid_b, pid_c}
    ok(runtime, "delete", "--force", b)
    assert all(os.path.isdir(d) for d in cg.dirs.values())
    ok(runtime, "delete", "--force", c)
    assert not any(os.path.exists(d) for d in cg.dirs.values())


def make_cgroup(dirs: dict[str, str]) -> None:
    """mkdir the cgroup as an engine would (v1 cpuset: the parent's sets copied in)."""
    for d in dirs.values():
        os.mkdir(d)
        if os.path.exists(os.path.join(d, "cpuset.cpus")) and not os.path.exists(
                os.path.join(d, "cgroup.controllers")):  # v2 inherits empty sets
            for name in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(os.path.dirname(d), name)) as f:
                    parent = f.read().strip()
                with open(os.path.join(d, name), "w") as f:
                    f.write(parent)


def test_a_preexisting_cgroup_is_joined_and_never_removed(runtime: Runtime) -> None:
    # runtime.md#delete: resources associated with the container but not created by
    # it MUST NOT be deleted.  Containers join a cgroup the test made, one, then two
    # together; none inherits a duty to remove it from another.
    path = f"{runtime.cgroup_prefix}-preexisting"
    dirs = expected_dirs(path)
    try:
        make_cgroup(dirs)
        a, pid_a = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
        assert Cg(pid_a).dirs == dirs
        ok(runtime, "start", a)
        ok(runtime, "delete", "--force", a)
        assert not alive(pid_a)
        assert all(os.path.isdir(d) for d in dirs.values())
        b, pid_b = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
        c, pid_c = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
        assert Cg(pid_b).pids() == {pid_b, pid_c}
        ok(runtime, "delete", "--force", b)
        ok(runtime, "delete", "--force", c)
        assert all(os.path.isdir(d) for d in dirs.values())
    finally:
        for d in dirs.values():
            if os.path.isdir(d):
                os.rmdir(d)  # fails if a container left a process or a cgroup in it


# ------------------------------------------------------------ seed demonstrations
def test_fork_bomb_is_held_by_pids_limit(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "f() { f | f & }; f & exec sleep 1000"],
                            edit=set_resources({"pids": {"limit": 20}}))
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    ok(runtime, "start", cid)
    # The bomb has run into the limit (pids.events counts refused forks)...
    wait_for(lambda: cg.keyed("pids", "pids.events").get("max", 0) > 0, 60 * SLOW,
             "the fork bomb to hit pids.max")
    time.sleep(1 * SLOW)
    # ...and is held there while the host can still fork.
    assert 1 < int(cg.read("pids", "pids.current")) <= 20
    assert host_can_fork()
    assert len(cg.pids()) <= 20
    ok(runtime, "delete", "--force", cid)
    assert host_can_fork()


def test_memory_hog_is_oom_killed_and_the_host_is_fine(runtime: Runtime) -> None:
    out, bind = out_dir(runtime)
    limit = 80 * MiB
    probe = Probe(f"{runtime.cgroup_prefix}-probe")
    mem: dict[str, Any] = {"limit": limit}
    if probe.has("memory", "memory.memsw.limit_in_bytes" if probe.version["memory"] == 1
                 else "memory.swap.max"):
        mem["swap"] = limit  # memory+swap == memory: no swap to hide in
    bundle = runtime.bundle(
        ["sh", "-c", "yes | tr \\\\n x | head -c 1000m | grep n; echo $? > /out/status"],
        edit=edits(bind, set_resources({"memory": mem})))
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)
    ok(runtime, "start", cid)
    wait_for(lambda: (out / "status").exists(), 300 * SLOW, "the hog to end")
    # grep holds the one long line in memory until the OOM killer ends it.
    assert (out / "status").read_text().strip() == str(128 + signal.SIGKILL)
    events = (cg.keyed("memory", "memory.oom_control") if cg.version("memory") == 1
              else cg.keyed("memory", "memory.events"))
    assert events["oom_kill"] >= 1
    assert host_can_fork()


def test_cpu_quota_holds_a_busy_loop_near_five_percent(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "exec yes > /dev/null"],
                            edit=set_resources({"cpu": {"quota": 5000, "period": 100000}}))
    cid, pid = create(runtime, bundle)
    cg = Cg(pid)

    def usage_ns() -> int:
        if cg.version("cpu") == 2:
            return cg.keyed("cpu", "cpu.stat")["usage_usec"] * 1000
        return int(cg.read("cpuacct", "cpuacct.usage"))

    ok(runtime, "start", cid)
    time.sleep(0.5 * SLOW)  # let it reach the steady state
    start_ns, start = usage_ns(), time.monotonic()
    time.sleep(4)
    used = (usage_ns() - start_ns) / 1e9 / (time.monotonic() - start)
    # 5% of one CPU, with room for timer slack (and emulated guests).
    assert 0.02 <= used <= 0.09, f"yes got {used:.1%} of a CPU"
    throttled = (cg.keyed("cpu", "cpu.stat")["nr_throttled"])
    assert throttled > 0


# ------------------------------------------------------------ runc parity (issue 13)
def test_update_memory_minus_one_lifts_a_swap_limit_too(runtime: Runtime) -> None:
    """v1 refuses a memory limit above memory+swap: -1 alone must lift both, as runc."""
    cid, pid = create(runtime, runtime.bundle(edit=set_resources(
        {"memory": {"limit": 64 * MiB, "swap": 128 * MiB}})))
    cg = Cg(pid)
    if cg.version("memory") is None:
        pytest.skip("no memory controller")
    ok(runtime, "update", "--memory", "-1", cid)
    if cg.version("memory") == 1:
        assert int(cg.read("memory", "memory.limit_in_bytes")) > 1 << 60
        if cg.has("memory", "memory.memsw.limit_in_bytes"):
            assert int(cg.read("memory", "memory.memsw.limit_in_bytes")) > 1 << 60
    else:
        assert cg.read("memory", "memory.max") == "max"
        if cg.has("memory", "memory.swap.max"):
            assert cg.read("memory", "memory.swap.max") == "max"


def test_a_premade_cgroup_with_an_empty_cpuset_is_filled_in(runtime: Runtime) -> None:
    """An engine's mkdir leaves a v1 cpuset empty, which no task may join (ENOSPC):
    the runtime fills it from its parent, as runc.  (On v2 an empty cpuset means the
    parent's: nothing to fill, and the container must simply run.)"""
    path = f"{runtime.cgroup_prefix}-emptycpuset"
    dirs = expected_dirs(path)
    try:
        for d in dirs.values():
            os.mkdir(d)
        cid, pid = create(runtime, runtime.bundle(edit=with_cgroups_path(path)))
        assert Cg(pid).dirs == dirs
        cg = Cg(pid)
        if cg.version("cpuset") == 1:
            own = cg.read("cpuset", "cpuset.cpus")
            with open(os.path.join(os.path.dirname(cg.dir("cpuset") or ""),
                                   "cpuset.cpus")) as f:
                assert own and own == f.read().strip()
        ok(runtime, "delete", "--force", cid)
    finally:
        for d in dirs.values():
            if os.path.isdir(d):
                os.rmdir(d)


def _freeze(dirs: dict[str, str], frozen: bool) -> None:
    for key, d in dirs.items():
        if key == detect.UNIFIED or key == "":
            if os.path.exists(os.path.join(d, "cgroup.freeze")):
                with open(os.path.join(d, "cgroup.freeze"), "w") as f:
                    f.write("1" if frozen else "0")
        elif "freezer" in key.split(","):
            with open(os.path.join(d, "freezer.state"), "w") as f:
                f.write("FROZEN" if frozen else "THAWED")


def test_joining_a_frozen_cgroup_is_refused(runtime: Runtime) -> None:
    """A process placed in a frozen cgroup stops before its first instruction (in D
    state on v1): create must refuse at once instead of waiting for it forever."""
    path = f"{runtime.cgroup_prefix}-frozen"
    dirs = expected_dirs(path)
    try:
        make_cgroup(dirs)
        _freeze(dirs, True)
        cid = runtime.new_id()
        started = time.monotonic()
        r = runtime("create", "--bundle", str(runtime.bundle(edit=with_cgroups_path(path))),
                    cid, timeout=T)
        err = r.stderr.decode()
        assert r.returncode != 0 and "is frozen" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert time.monotonic() - started < T
        assert runtime("state", cid).returncode != 0
        for d in dirs.values():
            with open(os.path.join(d, "cgroup.procs")) as f:
                assert f.read().split() == []
    finally:
        _freeze(dirs, False)
        for d in dirs.values():
            if os.path.isdir(d):
                os.rmdir(d)


def test_exec_into_a_sub_cgroup(runtime: Runtime) -> None:
    """`exec --cgroup [controller:]path`, as runc: the process lands in an existing
    cgroup beneath the container's, as /proc/<pid>/cgroup shows."""
    cid, pid = create(runtime, runtime.bundle())
    ok(runtime, "start", cid)
    cg = Cg(pid)
    if cg.mode == "unified":
        key, arg = detect.UNIFIED, "sub"
    else:
        h = cg.layout.v1_for("pids")
        assert h is not None
        key, arg = h.key, "pids:sub"
    sub = os.path.join(cg.dirs[key], "sub")
    os.mkdir(sub)
    try:
        r = runtime("exec", "--cgroup", arg, cid, "cat", "/proc/self/cgroup", timeout=T)
        assert r.returncode == 0, r.stderr
        lines = dict(line.split(":", 2)[1:] for line in r.stdout.decode().splitlines())
        assert lines[key].endswith("/sub"), lines
        for other, path in lines.items():  # every other hierarchy: the container's own
            if other != key:
                assert not path.endswith("/sub"), lines
        r = runtime("exec", "--cgroup", "missing", cid, "true", timeout=T)
        assert r.returncode == 255 and b"does not exist" in r.stderr, r.stderr
    finally:
        os.rmdir(sub)


# ---------------------------------------------------- placement without the writer lock
def _placed_where(rt: Runtime, placement: str) -> tuple[dict[str, str], str]:
    """create (--debug) a container and read its init's cgroups from the host."""
    env = None
    if placement == "fork":
        from conftest import _env
        env = {**_env(), "OCIRUN_PLACEMENT": "fork"}
    bundle = rt.bundle(["sleep", "1000"])
    cid = rt.new_id()
    pid_file = rt.work / f"{cid}.pid"
    r = rt("--debug", "create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid,
           timeout=T, env=env)
    assert r.returncode == 0, r.stderr.decode()
    return Cg(int(pid_file.read_text())).dirs, r.stderr.decode()


@pytest.mark.parametrize("placement", ["clone3", "fork"])
def test_the_init_is_placed_in_every_hierarchy(runtime: Runtime, placement: str) -> None:
    """stage1 is born in the cgroup2 directory (clone3 CLONE_INTO_CGROUP) or, forced
    with OCIRUN_PLACEMENT=fork, forked and written to cgroup.procs; v1 hierarchies are
    joined by stage1 writing 0 to their tasks.  Either way the kernel shows the init
    in every one of the container's directories, and --debug says which path ran."""
    own = Cg("self")
    dirs, debug = _placed_where(runtime, placement)
    assert set(dirs) == set(own.dirs)
    for key, d in dirs.items():
        assert os.path.dirname(d) == own.dirs[key], (key, d)
        assert os.path.basename(d).startswith(runtime.cgroup_prefix), (key, d)
    if detect.UNIFIED in own.dirs:
        if placement == "clone3":
            assert "cgroup placement: clone3 into" in debug, debug
        else:
            assert "OCIRUN_PLACEMENT=fork" in debug, debug
    if own.mode != "unified":
        assert "writes 0 to tasks" in debug, debug


@pytest.mark.parametrize("placement", ["clone3", "fork"])
def test_an_exec_process_is_placed_in_every_hierarchy(runtime: Runtime,
                                                      placement: str) -> None:
    cid, pid = create(runtime, runtime.bundle(["sleep", "1000"], edit=without_ns("cgroup")))
    ok(runtime, "start", cid)
    env = None
    if placement == "fork":
        from conftest import _env
        env = {**_env(), "OCIRUN_PLACEMENT": "fork"}
    r = runtime("exec", cid, "cat", "/proc/self/cgroup", timeout=T, env=env)
    assert r.returncode == 0, r.stderr
    seen = {}
    for line in r.stdout.decode().splitlines():
        _, ctrls, path = line.split(":", 2)
        seen[",".join(sorted(c for c in ctrls.split(",") if c))] = path
    init = detect.proc_cgroups(pid)
    assert seen == init, (seen, init)
