"""Pure tests of the cgroup translation: no root, no cgroup filesystem needed.

The BPF device program is checked by running it through a tiny interpreter of the
instructions assemble() emits and comparing every verdict with the rule reduction.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from ocirun.cgroups import devices, devices_bpf, systemd
from ocirun.cgroups.detect import UNIFIED, Hierarchy, detect
from ocirun.cgroups.resources import (blkio_weight_to_io_weight, plan, shares_to_weight,
                                      swap_to_v2)
from ocirun.errors import OciError
from ocirun.spec import DeviceRule
from test_cgroups_support import resources


def v1_all(c: str) -> int | None:
    return None if c in ("", "io", "net_cls", "net_prio", "rdma") else 1


def v2_all(c: str) -> int | None:
    return None if c in ("blkio", "net_cls", "net_prio") else 2


def files(writes) -> dict[str, str]:
    return {w.file: (w.value if isinstance(w.value, str) else "<other>") for w in writes}


# ------------------------------------------------------------------ conversions
def test_cpu_shares_to_weight_hits_min_default_and_max() -> None:
    assert shares_to_weight(0) == 0
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 100
    assert shares_to_weight(262144) == 10000
    assert 1 < shares_to_weight(512) < 100 < shares_to_weight(2048) < 10000


def test_blkio_weight_to_io_weight() -> None:
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000
    assert blkio_weight_to_io_weight(500) == 1 + 490 * 9999 // 990


def test_swap_is_memory_plus_swap_in_the_spec() -> None:
    assert swap_to_v2(300, 100) == 200
    assert swap_to_v2(-1, 100) == -1
    with pytest.raises(OciError, match="needs a memory limit"):
        swap_to_v2(300, None)
    with pytest.raises(OciError, match=">= memory.limit"):
        swap_to_v2(50, 100)


# ------------------------------------------------------------------------ plans
def test_v1_plan_names_the_v1_files() -> None:
    w = plan(resources({"memory": {"limit": 100, "swap": 200, "swappiness": 5},
                        "cpu": {"shares": 512, "quota": -1, "period": 1000, "cpus": "0-1"},
                        "pids": {"limit": 0}}), v1_all)
    f = files(w)
    assert f["memory.limit_in_bytes"] == "100" and f["memory.memsw.limit_in_bytes"] == "200"
    assert f["memory.swappiness"] == "5" and f["cpu.shares"] == "512"
    assert f["cpu.cfs_quota_us"] == "-1" and f["cpuset.cpus"] == "0-1"
    assert f["pids.max"] == "max"
    limit = next(x for x in w if x.file == "memory.limit_in_bytes")
    assert limit.swap_next  # limit/memsw retried in the other order if refused


def test_v2_plan_converts_values() -> None:
    w = plan(resources({"memory": {"limit": 100, "swap": 300, "reservation": 10,
                                   "swappiness": 60, "disableOOMKiller": True},
                        "cpu": {"shares": 1024, "quota": 5000, "period": 100000},
                        "blockIO": {"weight": 1000, "throttleReadBpsDevice": [
                            {"major": 8, "minor": 0, "rate": 0}]}}), v2_all)
    f = files(w)
    assert f["memory.max"] == "100" and f["memory.swap.max"] == "200"
    assert f["memory.low"] == "10" and "memory.swappiness" not in f  # ignored, as runc
    assert f["cpu.weight"] == "100" and f["cpu.max"] == "5000 100000"
    assert f["io.max"] == "8:0 rbps=max"
    weight = next(x for x in w if x.files == ("io.bfq.weight", "io.weight"))
    assert weight.value == {"io.bfq.weight": "1000", "io.weight": "10000"}


def test_v2_period_alone_keeps_the_current_quota() -> None:
    (w,) = plan(resources({"cpu": {"period": 50000}}), v2_all)
    assert callable(w.value) and w.value("30000 100000") == "30000 50000"
    assert w.value("max 100000") == "max 50000"


def test_unset_values_need_no_controller() -> None:
    assert plan(resources({"memory": {}, "cpu": {}, "blockIO": {}, "network": {}}),
                lambda c: None) == []
    assert plan(None, lambda c: None) == []


def test_missing_controller_is_named_with_the_spec_field() -> None:
    with pytest.raises(OciError, match=r"linux.resources.pids.*pids cgroup controller"):
        plan(resources({"pids": {"limit": 5}}), lambda c: None)
    with pytest.raises(OciError, match=r"network.classID.*net_cls"):
        plan(resources({"network": {"classID": 1}}), v2_all)


def test_unified_map_needs_v2() -> None:
    with pytest.raises(OciError, match="unified.memory.high"):
        plan(resources({"unified": {"memory.high": "1"}}), v1_all)
    (w,) = plan(resources({"unified": {"memory.high": "1"}}), v2_all)
    assert (w.controller, w.file, w.value) == ("memory", "memory.high", "1")
    with pytest.raises(OciError, match="not a cgroup file"):
        plan(resources({"unified": {"../x": "1"}}), v2_all)


def test_realtime_is_refused_on_v2() -> None:
    with pytest.raises(OciError, match="realtime"):
        plan(resources({"cpu": {"realtimeRuntime": 10}}), v2_all)


# ---------------------------------------------------------------------- devices
def rule(allow: bool, t: str | None = None, major: int | None = None,
         minor: int | None = None, access: str | None = None) -> DeviceRule:
    return DeviceRule(allow, t, major, minor, access)


def test_reduce_later_rules_win_and_wildcard_resets() -> None:
    st = devices.reduce_rules([rule(True, "c", 1, 3, "rwm"), rule(False, access="rwm"),
                               rule(True, "c", 1, 5, "rw"), rule(False, "c", 1, 5, "w")])
    assert not st.default_allow
    assert [e.v1_line() for e in st.exceptions] == ["c 1:5 r"]
    assert devices.v1_writes(st) == [("devices.deny", "a"), ("devices.allow", "c 1:5 r")]


def test_defaults_follow_the_spec_rules() -> None:
    st = devices.reduce_rules(devices.with_defaults((rule(False, access="rwm"),)))
    assert devices.allows(st, "c", 1, 3, "rw")  # /dev/null
    assert devices.allows(st, "c", 136, 7, "r")  # a pty
    assert devices.allows(st, "b", 8, 0, "m") and not devices.allows(st, "b", 8, 0, "r")
    assert not devices.allows(st, "c", 1, 1, "r")  # /dev/mem


@pytest.mark.parametrize("rules", [
    (),
    (rule(False, access="rwm"),),
    (rule(False, access="rwm"), rule(True, "c", 1, 11, "r"), rule(True, "b", 8, None, "rw")),
    (rule(False, "c", 1, 3, "w"), rule(False, "b", None, None, "m")),
    (rule(False, access="rwm"), rule(True, "c", 5, None, "m"), rule(True, "a", 7, 1, "rw")),
])
def test_bpf_program_agrees_with_the_rules(rules: tuple[DeviceRule, ...]) -> None:
    st = devices.reduce_rules(devices.with_defaults(rules))
    prog = devices_bpf.assemble(st)
    for t, tcode in (("c", 2), ("b", 1)):
        for major, minor in ((1, 3), (1, 11), (1, 1), (5, 0), (5, 9), (8, 0), (136, 2), (7, 1)):
            for acc in ("r", "w", "m", "rw", "rwm"):
                bits = sum({"m": 1, "r": 2, "w": 4}[c] for c in acc)
                assert _run_bpf(prog, tcode, bits, major, minor) == int(devices.allows(st, t, major, minor, acc)), \
                    (t, major, minor, acc)


def _run_bpf(prog: bytes, t: int, acc: int, major: int, minor: int) -> int:
    """Interpret the opcodes assemble() emits; r1 points at the context on entry."""
    ctx = [(acc << 16) | t, major, minor]
    regs: list = [0] * 11
    regs[1] = "ctx"
    insns = [struct.unpack("<BBhi", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    pc = 0
    for _ in range(10000):
        code, rb, off, imm = insns[pc]
        dst, src = rb & 0xF, rb >> 4
        pc += 1
        if code == 0x61:
            assert regs[src] == "ctx"
            regs[dst] = ctx[off // 4]
        elif code == 0x54:
            regs[dst] = regs[dst] & imm & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0x57:
            regs[dst] = regs[dst] & imm
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0x55:
            pc += off if regs[dst] != imm else 0
        elif code == 0x5D:
            pc += off if regs[dst] != regs[src] else 0
        elif code == 0x15:
            pc += off if regs[dst] == imm else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not exit")


# ---------------------------------------------------------------------- systemd
def test_systemd_path_parsing() -> None:
    p = systemd.parse("machine.slice:libpod:abc", "abc")
    assert (p.slice, p.unit) == ("machine.slice", "libpod-abc.scope")
    assert p.cgroup == "/machine.slice/libpod-abc.scope"
    assert systemd.parse(None, "x").unit == "runc-x.scope"
    assert systemd.expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    with pytest.raises(OciError, match="slice:prefix:name"):
        systemd.parse("/plain/path", "x")
    with pytest.raises(OciError, match="invalid systemd slice"):
        systemd.parse("bad:p:n", "x")


# ----------------------------------------------------------------------- detect
KNOWN = {"cpu", "cpuacct", "memory", "pids", "hugetlb", "freezer"}


def _mountinfo(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_detect_v1_and_hybrid(tmp_path) -> None:
    base = ["31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd"]
    layout = detect(_mountinfo(tmp_path, base), KNOWN)
    assert layout.mode == "v1"
    assert [h.key for h in layout.hierarchies] == ["cpu,cpuacct", "memory", "name=systemd"]
    assert layout.v1_for("cpuacct").mountpoint == "/sys/fs/cgroup/cpu,cpuacct"

    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    hybrid = detect(_mountinfo(tmp_path, base + [
        f"41 31 0:38 / {unified} rw - cgroup2 cgroup2 rw,nsdelegate"]), KNOWN)
    assert hybrid.mode == "hybrid"
    assert hybrid.unified is not None and hybrid.unified.controllers == {"hugetlb"}


def test_detect_unified(tmp_path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    layout = detect(_mountinfo(tmp_path, [
        f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw"]), KNOWN)
    assert layout.mode == "unified" and [h.key for h in layout.hierarchies] == [UNIFIED]
    assert layout.unified.controllers == {"cpu", "io", "memory", "pids"}


def test_hierarchy_path_strips_a_mount_root() -> None:
    h = Hierarchy("memory", "/sys/fs/cgroup/memory", "/docker/abc", frozenset({"memory"}))
    assert h.fs_path("/docker/abc/x") == "/sys/fs/cgroup/memory/x"
    assert h.fs_path("/") == "/sys/fs/cgroup/memory"
    u = Hierarchy(UNIFIED, "/sys/fs/cgroup", "/", frozenset())
    assert u.fs_path("/user.slice/a") == "/sys/fs/cgroup/user.slice/a"


# ------------------------------------------------------------------ import cost
_HEAVY = {"typing", "platform", "re", "dataclasses", "inspect", "glob", "math", "struct",
          "ctypes", "signal", "json", "enum", "hashlib"}


def _imported_after(code: str) -> set[str]:
    """Modules `code` imports in a fresh `python -I -S` on top of ocirun.errors."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    probe = (f"import sys; sys.path.insert(0, {repo!r}); import ocirun.errors, os\n"
             "before = set(sys.modules)\n"
             f"{code}\n"
             "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize("mode,driver,other", [("hybrid", "v1", "v2"),
                                               ("unified", "v2", "v1")])
def test_a_command_on_an_existing_cgroup_imports_only_its_driver(mode, driver, other) -> None:
    # kill --all, ps, pause, delete: manager_from_state and the manager's own work.
    paths = {UNIFIED: "/nonexistent/x"} if mode == "unified" else {
        "pids": "/nonexistent/pids/x", UNIFIED: "/nonexistent/unified/x"}
    mods = _imported_after(
        "from ocirun.cgroups import manager_from_state\n"
        "from ocirun.cgroups.placement import FsPlacement\n"
        f"m = manager_from_state(FsPlacement(mode={mode!r}, path='x', paths={paths!r}))\n"
        "m.is_frozen(); m.thaw()\n"
        "try:\n    m.destroy()\nexcept Exception:\n    pass")
    assert f"ocirun.cgroups.{driver}" in mods
    assert f"ocirun.cgroups.{other}" not in mods
    unwanted = {"ocirun.cgroups.devices", "ocirun.cgroups.devices_bpf", "ocirun.cgroups.stats",
                "ocirun.cgroups.resources", "ocirun.cgroups.detect", "ocirun.spec"}
    assert not mods & (_HEAVY | unwanted), sorted(mods & (_HEAVY | unwanted))


def test_creating_a_cgroup_imports_nothing_heavy() -> None:
    # What create needs besides the config model: detection, both drivers' modules,
    # the resource plan and the device rules (devices_bpf only loads a v2 program).
    mods = _imported_after(
        "import ocirun.spec\n"
        "before = set(sys.modules)  # the config model is not the cgroup code's cost\n"
        "import ocirun.cgroups.detect, ocirun.cgroups.v1, ocirun.cgroups.v2\n"
        "import ocirun.cgroups.resources, ocirun.cgroups.devices\n"
        "from ocirun.cgroups.resources import plan\n"
        "plan(None, lambda c: 1)")
    assert "ocirun.cgroups.devices_bpf" not in mods
    assert not mods & _HEAVY, sorted(mods & _HEAVY)
