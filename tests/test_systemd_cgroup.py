"""`--systemd-cgroup` against a real systemd, booted for the purpose.

This machine does not run systemd, so the module boots one: /lib/systemd/systemd as
PID 1 of an ocirun container (cgroupfs driver, relative cgroupsPath: its cgroups nest
under this session's own, with a cgroup namespace rooted there) with pid, mount,
cgroup, uts, ipc and network namespaces of its own.  Its rootfs is an empty
directory with the host's /usr, /etc, the Python install and the repo bound
read-only, tmpfs /run, /tmp and /var, and SYSTEMD_UNIT_PATH pointing at a unit
directory holding only an empty default.target: systemd starts no host service, and
everything it mounts stays in its own mount namespace (/proc/sys is read-only).

ocirun --systemd-cgroup then runs *inside* those namespaces (nsenter into the mount,
pid, cgroup, uts, ipc and net namespaces of systemd; on cgroup2 from a leaf cgroup
under systemd's root, see Box._helper_cgroup), talks to systemd over
/run/systemd/private (there is no D-Bus daemon), and the tests check what the
kernel shows from the host through /proc/<systemd pid>/root: the container's
/proc/<pid>/cgroup, the limits in the unit's cgroup files, and that after delete
the unit (asked with systemctl, an independent D-Bus client) and its directories
are gone.  Teardown deletes the systemd container with --force (that kills it and
removes its cgroups) and fails the test if a cgroup is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO, _cgroup_leftovers, _env, base_config, wait_for

SYSTEMD = "/lib/systemd/systemd"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists(SYSTEMD), reason=f"no {SYSTEMD}"),
    pytest.mark.skipif(shutil.which("nsenter") is None, reason="no nsenter"),
]

INNER_ROOT = "/run/ocirun-inner"  # the inner ocirun's state root, in systemd's /run
MiB = 1024 * 1024
# The pure cgroup v2 guest (tests/cgroup2_vm.sh) is slow: as in test_container_cgroups.
T = float(os.environ.get("OCIRUN_TEST_CLI_TIMEOUT", "60"))  # per runtime call
SLOW = float(os.environ.get("OCIRUN_TEST_SLOWDOWN", "1"))  # waits scale with it
RUNTIME = [sys.executable, *os.environ.get("OCIRUN_TEST_PYFLAGS", "").split(), "-m", "ocirun"]


def _capabilities() -> list[str]:
    """Every capability we hold (this VM's bounding set lacks some): systemd and the
    ocirun nested in its namespaces get all of them."""
    from ocirun.spec import CAPABILITIES
    with open("/proc/self/status") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [name for n, name in enumerate(CAPABILITIES) if bnd >> n & 1]


def _run(cmd: list[str], timeout: float = T, **kw: Any) -> subprocess.CompletedProcess:
    # Files, not pipes: a created container keeps the runtime's stdio open.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                           timeout=timeout, **kw)
        out.seek(0)
        err.seek(0)
        r.stdout, r.stderr = out.read(), err.read()
    return r


class Box:
    """A booted systemd, and ways to act inside its namespaces."""

    def __init__(self, pid: int, shared: Path, rootfs: Path) -> None:
        self.pid = pid
        self.shared = shared  # bound at the same path inside: bundles live here
        self.rootfs = rootfs  # busybox, for the inner containers
        self.helper = self._helper_cgroup()

    def _helper_cgroup(self) -> str | None:
        """A cgroup2 leaf under systemd's cgroup namespace root for what we run there.

        cgroup2 lets a process be moved only within the mover's cgroup namespace (the
        common ancestor must be inside it): systemd could not take the inner ocirun's
        stage 1 into a scope, nor ocirun write it into a slice, from this session's
        cgroup, which lies outside.  So each command first moves itself (a fresh
        process, never this session) into this leaf, which ocirun made under our own
        cgroup for the systemd container; it goes with that container at teardown.
        """
        for d in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if os.path.exists(self.path(f"{d}/cgroup.controllers")):
                helper = self.path(f"{d}/ocirun-test-helper")
                os.mkdir(helper)
                return os.path.join(helper, "cgroup.procs")
        return None  # v1 only: no such rule

    def nsenter(self, *cmd: str, timeout: float = T) -> subprocess.CompletedProcess:
        argv = ["nsenter", "-t", str(self.pid), "-m", "-p", "-C", "-u", "-i", "-n", "--", *cmd]
        if self.helper:
            argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', self.helper, *argv]
        return _run(argv, timeout=timeout)

    def ocirun(self, *args: str, timeout: float = T) -> subprocess.CompletedProcess:
        return self.nsenter("env", f"PYTHONPATH={_env()['PYTHONPATH']}", *RUNTIME,
                            "--root", INNER_ROOT, *args, timeout=timeout)

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.nsenter("systemctl", "--no-pager", *args)

    def unit(self, unit: str) -> dict[str, str]:
        r = self.systemctl("show", unit, "-p", "LoadState", "-p", "ActiveState", "-p",
                           "ControlGroup", "-p", "Delegate", "-p", "TasksMax")
        assert r.returncode == 0, r.stderr.decode()
        return dict(line.split("=", 1) for line in r.stdout.decode().splitlines() if "=" in line)

    def path(self, inside: str) -> str:
        """A path of systemd's mount namespace, seen from the host."""
        return f"/proc/{self.pid}/root{inside}"

    def cgroup_dirs(self, cgroup: str) -> list[str]:
        """Every directory of `cgroup` (systemd's view) that exists, in any hierarchy."""
        base = self.path("/sys/fs/cgroup")
        found = []
        for entry in os.scandir(base):
            if entry.is_symlink() or not entry.is_dir():
                continue
            d = os.path.join(entry.path, cgroup.lstrip("/"))
            if os.path.isdir(d):
                found.append(d)
        return found

    def bundle(self, cgroups_path: str, edit: Any = None) -> Path:
        path = self.shared / f"bundle-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        spec = base_config(self.rootfs, ["sleep", "1000"], cgroups_path)
        if edit:
            edit(spec)
        (path / "config.json").write_text(json.dumps(spec))
        return path


def _systemd_config(rootfs: Path, units: Path, binds: list[str], cgroup: str) -> dict:
    spec = base_config(rootfs, [SYSTEMD, "--log-target=console", "--log-level=info"], cgroup)
    caps = _capabilities()
    proc = spec["process"]
    proc["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    proc["noNewPrivileges"] = False
    proc.pop("rlimits", None)
    # container=: systemd knows it is not alone on the machine (no kernel setup, no
    # udev, no hardware units); the unit path keeps the host's services out.
    proc["env"] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "container=ocirun-test",
                   "SYSTEMD_UNIT_PATH=/run/ocirun-test-units"]
    mounts = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    # systemd must be able to make cgroups: a read-write cgroup mount (in its cgroup
    # namespace these are fresh cgroup filesystems showing only its own subtree).
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]})
    for d in ("/run", "/tmp", "/var"):
        mounts.append({"destination": d, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777" if d == "/tmp" else "mode=755"]})
    mounts.append({"destination": "/run/ocirun-test-units", "type": "bind",
                   "source": str(units), "options": ["rbind", "ro"]})
    for d in sorted(binds, key=lambda p: p.count("/")):
        mounts.append({"destination": d, "type": "bind", "source": d,
                       "options": ["rbind", "rw" if "shared" in d else "ro"]})
    spec["mounts"] = mounts
    spec["hostname"] = "ocirun-systemd-test"
    # The inner containers make device nodes and open them.
    spec["linux"]["resources"] = {"devices": [{"allow": True, "access": "rwm"}]}
    return spec


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Iterator[Box]:
    work = tmp_path_factory.mktemp("systemd")
    state = work / "state"
    rootfs = work / "rootfs"
    for d in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "var"):
        (rootfs / d).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target:
            (rootfs / link).symlink_to(target)
        elif os.path.isdir(f"/{link}"):
            (rootfs / link).mkdir()
    units = work / "units"
    units.mkdir()
    (units / "default.target").write_text("[Unit]\nDescription=ocirun test target\n")
    shared = work / "shared"
    shared.mkdir()
    binds = ["/usr", "/etc", str(REPO), str(shared), str(busybox_rootfs)]
    binds += [os.path.realpath(p) for p in {sys.prefix, sys.base_prefix}
              if not os.path.realpath(p).startswith("/usr")]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.isdir(f"/{link}") and not os.path.islink(f"/{link}"):
            binds.append(f"/{link}")
    prefix = f"ocirun-systemd-{uuid.uuid4().hex[:8]}"
    bundle = work / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(
        _systemd_config(rootfs, units, binds, prefix)))
    cid = "systemd"
    outer = [*RUNTIME, "--root", str(state)]
    log = open(work / "systemd.log", "wb")
    try:
        r = subprocess.run([*outer, "create", "--bundle", str(bundle), cid],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_env(),
                           timeout=T)
        if r.returncode != 0:
            log.flush()
            pytest.fail(f"could not create the systemd container: "
                        f"{(work / 'systemd.log').read_text()}")
        r = subprocess.run([*outer, "start", cid], env=_env(), timeout=T,
                           capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        r = subprocess.run([*outer, "state", cid], env=_env(), timeout=T,
                           capture_output=True)
        pid = json.loads(r.stdout)["pid"]
        b = Box(pid, shared, busybox_rootfs)

        def booted() -> bool:
            if not os.path.exists(b.path("/run/systemd/private")):
                return False
            out = b.systemctl("is-system-running").stdout.decode().strip()
            return out in ("running", "degraded")

        try:
            wait_for(booted, 60 * SLOW, "systemd to boot")
        except AssertionError:
            log.flush()
            pytest.skip("systemd did not boot here: "
                        f"{(work / 'systemd.log').read_text()[-2000:]}")
        yield b
    finally:
        subprocess.run([*outer, "delete", "--force", cid], env=_env(), timeout=T,
                       stdin=subprocess.DEVNULL, capture_output=True)
        log.close()
        leftovers = _cgroup_leftovers(prefix)
        shutil.rmtree(work, ignore_errors=True)
        assert not leftovers, f"cgroups left behind: {leftovers}"


def _unit_gone(box: Box, unit: str, cgroup: str) -> None:
    def gone() -> bool:
        props = box.unit(unit)
        # `systemctl show` itself loads the unit, and a slice loads without a unit
        # file: for a slice "gone" reads as an inactive one (no longer ours).
        return props.get("LoadState") == "not-found" or (
            unit.endswith(".slice") and props.get("ActiveState") == "inactive")

    try:
        wait_for(gone, 10 * SLOW, f"systemd to forget {unit}")
    except AssertionError:
        raise AssertionError(f"{unit} still known to systemd: {box.unit(unit)} "
                             f"{box.systemctl('status', unit).stdout.decode()}") from None
    assert box.cgroup_dirs(cgroup) == []


def _pid_cgroups(box: Box, pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup of a process of systemd's pid namespace (host's view)."""
    out = {}
    for line in _read(box.path(f"/proc/{pid}/cgroup")).splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _hierarchy(box: Box, name: str) -> str:
    """Directory of a v1 controller's hierarchy, or of cgroup2, in systemd's view."""
    base = box.path("/sys/fs/cgroup")
    if os.path.exists(os.path.join(base, "cgroup.controllers")):
        return base  # pure cgroup v2
    return os.path.join(base, name)


def test_container_runs_in_a_transient_scope_with_its_limits(box: Box) -> None:
    cid = f"sd-{uuid.uuid4().hex[:6]}"
    unit = f"ocirun-test-{cid}.scope"

    def limits(spec: dict) -> None:
        spec["linux"]["resources"]["memory"] = {"limit": 64 * MiB}
        spec["linux"]["resources"]["pids"] = {"limit": 42}

    bundle = box.bundle(f"machine.slice:ocirun-test:{cid}", limits)
    try:
        r = box.ocirun("--systemd-cgroup", "create", "--bundle", str(bundle), cid)
        assert r.returncode == 0, r.stderr.decode()
        st = json.loads(box.ocirun("state", cid).stdout)
        assert st["status"] == "created"
        pid = st["pid"]

        # systemd's view: an active, delegated scope in machine.slice ...
        props = box.unit(unit)
        assert props["ActiveState"] == "active", props
        assert props["Delegate"] == "yes"
        cgroup = props["ControlGroup"]
        assert cgroup == f"/machine.slice/{unit}"
        assert props["TasksMax"] == "42"
        # ... and the kernel's: the container's init is in it, in every hierarchy
        # systemd tracks and in the v1 ones only ocirun manages (cpuset, freezer).
        cgroups = _pid_cgroups(box, pid)
        for ctrls, path in cgroups.items():
            assert path.endswith(cgroup), (ctrls, path)
        v2 = os.path.exists(box.path("/sys/fs/cgroup/cgroup.controllers"))
        mem = os.path.join(_hierarchy(box, "memory"), cgroup.lstrip("/"))
        pids = os.path.join(_hierarchy(box, "pids"), cgroup.lstrip("/"))
        assert int(_read(os.path.join(mem, "memory.max" if v2 else
                                      "memory.limit_in_bytes"))) == 64 * MiB
        assert _read(os.path.join(pids, "pids.max")).strip() == "42"
        # cgroup.procs lists host pids: the init's, whose innermost pid is `pid`.
        (host_pid,) = _read(os.path.join(pids, "cgroup.procs")).split()
        nspid = next(line for line in _read(f"/proc/{host_pid}/status").splitlines()
                     if line.startswith("NSpid:")).split()
        assert nspid[-2] == str(pid)  # in systemd's pid namespace (the last: its own)

        # Later commands find the unit's cgroup from the state record.
        r = box.ocirun("start", cid)
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(box.ocirun("state", cid).stdout)["status"] == "running"
        r = box.ocirun("exec", cid, "cat", "/proc/self/cgroup")  # joins the scope too
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout and all(line.endswith(":/") for line in r.stdout.decode().split()), \
            r.stdout  # in the container's cgroup namespace, rooted at the scope
        r = box.ocirun("ps", "--format", "json", cid)
        assert r.returncode == 0 and pid in json.loads(r.stdout), r.stderr.decode()
        assert box.ocirun("pause", cid).returncode == 0
        assert json.loads(box.ocirun("state", cid).stdout)["status"] == "paused"
        assert box.ocirun("resume", cid).returncode == 0
        assert json.loads(box.ocirun("state", cid).stdout)["status"] == "running"
        r = box.ocirun("update", "--pids-limit", "77", cid)
        assert r.returncode == 0, r.stderr.decode()
        assert _read(os.path.join(pids, "pids.max")).strip() == "77"
        assert box.unit(unit)["TasksMax"] == "77"  # systemd was told too

        r = box.ocirun("kill", "--all", cid, "KILL")
        assert r.returncode == 0, r.stderr.decode()
        wait_for(lambda: json.loads(box.ocirun("state", cid).stdout)["status"] == "stopped",
                 10 * SLOW, "the container to stop")
        r = box.ocirun("delete", cid)
        assert r.returncode == 0, r.stderr.decode()
        _unit_gone(box, unit, cgroup)
        assert not os.path.exists(box.path(f"{INNER_ROOT}/{cid}"))
    finally:
        box.ocirun("delete", "--force", cid)


def _run_in_scope(box: Box, cid: str) -> str:
    """Create and start a container in a transient scope of machine.slice; its unit."""
    bundle = box.bundle(f"machine.slice:ocirun-test:{cid}")
    r = box.ocirun("--systemd-cgroup", "create", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr.decode()
    assert box.ocirun("start", cid).returncode == 0
    return f"ocirun-test-{cid}.scope"


def test_delete_force_of_a_running_container_stops_its_unit(box: Box) -> None:
    cid = f"sd-{uuid.uuid4().hex[:6]}"
    try:
        unit = _run_in_scope(box, cid)
        assert box.unit(unit)["ActiveState"] == "active"
        r = box.ocirun("delete", "--force", cid)
        assert r.returncode == 0, r.stderr.decode()
        _unit_gone(box, unit, f"/machine.slice/{unit}")
    finally:
        box.ocirun("delete", "--force", cid)


def test_delete_after_the_unit_is_already_gone(box: Box) -> None:
    cid = f"sd-{uuid.uuid4().hex[:6]}"
    try:
        unit = _run_in_scope(box, cid)
        # Killed behind ocirun's back: an empty scope is stopped and garbage-collected
        # by systemd.  (`systemctl stop` would SIGTERM, which a pid 1 sleep ignores.)
        r = box.systemctl("kill", "--signal=KILL", unit)
        assert r.returncode == 0, r.stderr.decode()
        wait_for(lambda: box.unit(unit).get("LoadState") == "not-found", 10 * SLOW,
                 f"systemd to drop {unit}")
        assert json.loads(box.ocirun("state", cid).stdout)["status"] == "stopped"
        r = box.ocirun("delete", cid)
        assert r.returncode == 0, r.stderr.decode()
        _unit_gone(box, unit, f"/machine.slice/{unit}")
        assert not os.path.exists(box.path(f"{INNER_ROOT}/{cid}"))
    finally:
        box.ocirun("delete", "--force", cid)


def test_failed_create_stops_the_unit_and_leaves_nothing(box: Box) -> None:
    cid = f"sd-{uuid.uuid4().hex[:6]}"
    unit = f"ocirun-test-{cid}.scope"

    def bad_cpuset(spec: dict) -> None:
        spec["linux"]["resources"]["cpu"] = {"cpus": "4095"}  # no such cpu

    bundle = box.bundle(f"machine.slice:ocirun-test:{cid}", bad_cpuset)
    try:
        r = box.ocirun("--systemd-cgroup", "create", "--bundle", str(bundle), cid)
        assert r.returncode == 1
        assert b"cpu.cpus" in r.stderr, r.stderr.decode()
        _unit_gone(box, unit, f"/machine.slice/{unit}")
        assert not os.path.exists(box.path(f"{INNER_ROOT}/{cid}"))
    finally:
        box.ocirun("delete", "--force", cid)


def test_transient_slice(box: Box) -> None:
    """A cgroupsPath name ending in .slice makes a transient slice (as runc)."""
    cid = f"sd-{uuid.uuid4().hex[:6]}"
    unit = f"ocirunsl{cid[3:]}.slice"  # no "-": its cgroup is then /<unit>
    bundle = box.bundle(f"machine.slice::{unit}")
    try:
        r = box.ocirun("--systemd-cgroup", "create", "--bundle", str(bundle), cid)
        assert r.returncode == 0, r.stderr.decode()
        pid = json.loads(box.ocirun("state", cid).stdout)["pid"]
        props = box.unit(unit)
        assert props["ActiveState"] == "active", props
        assert props["ControlGroup"] == f"/{unit}"
        for ctrls, path in _pid_cgroups(box, pid).items():
            assert path.endswith(f"/{unit}"), (ctrls, path)
        r = box.ocirun("delete", "--force", cid)
        assert r.returncode == 0, r.stderr.decode()
        _unit_gone(box, unit, f"/{unit}")
    finally:
        box.ocirun("delete", "--force", cid)


def test_dbus_wire_format_round_trips() -> None:
    """The D-Bus client's wire format round-trips what StartTransientUnit sends."""
    from ocirun.cgroups import dbus
    props = [("PIDs", dbus.Variant("au", [1, 2])), ("Delegate", dbus.Variant("b", True)),
             ("MemoryMax", dbus.Variant("t", 2**64 - 1))]
    raw = dbus.encode(dbus.METHOD_CALL, 5, {"path": "/org/freedesktop/systemd1",
                                            "member": "StartTransientUnit"},
                      "ssa(sv)a(sa(sv))", ("x.scope", "replace", props, []))
    msg = dbus.decode(raw)
    assert msg.member == "StartTransientUnit" and msg.serial == 5
    assert msg.body[0:2] == ("x.scope", "replace")
    assert [(n, v.signature, v.value) for n, v in msg.body[2]] == [
        ("PIDs", "au", [1, 2]), ("Delegate", "b", True), ("MemoryMax", "t", 2**64 - 1)]
    assert msg.body[3] == []
