"""podman (rootful, with conmon) driving ocirun, and runc as the reference.

podman runs with private storage (vfs), run, tmp and network-config dirs, the cgroupfs
manager, the file events backend and a containers.conf whose default ulimits fit this
sandbox's hard limits.  The busybox image is imported from the rootfs tar.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from engines_common import (RUNC, RUNTIMES, busybox_tar, host_cgroup_file, leftover_mounts,
                            ocirun_leftovers, out, require, run, seccomp_deny_mkdir,
                            short_tmpdir, wait_for, write_ocirun_wrapper)

IMAGE = "localhost/busybox:ocirun-test"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.state_root = base / "ocirun-state"
        self.runtimes = {"ocirun": str(write_ocirun_wrapper(base, self.state_root)),
                         "runc": RUNC}
        conf = base / "containers.conf"
        conf.write_text('[containers]\n'
                        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                        'log_driver = "k8s-file"\n'
                        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.globals = ["podman", "--root", str(base / "storage"), "--runroot",
                        str(base / "run"), "--tmpdir", str(base / "tmp"),
                        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                        "--events-backend", "file", "--network-config-dir",
                        str(base / "networks")]

    def argv(self, rt: str, *args: str) -> list[str]:
        return [*self.globals, "--runtime", self.runtimes[rt], *args]

    def __call__(self, rt: str, *args: str, timeout: float = 120, check: bool = False,
                 **kw: object) -> subprocess.CompletedProcess:
        return run(self.argv(rt, *args), timeout=timeout, check=check, env=self.env, **kw)


@pytest.fixture(scope="module")
def podman(busybox_rootfs: Path) -> Iterator[Podman]:
    require("podman", "conmon", RUNC)
    base = short_tmpdir("ocp-")
    p = Podman(base)
    try:
        tar = busybox_tar(busybox_rootfs, base / "busybox.tar")
        p("runc", "import", "--change", "CMD=/bin/sh", str(tar), IMAGE, check=True)
        yield p
    finally:
        p("runc", "rm", "--all", "--force", "--time", "0")
        p("runc", "rmi", "--all", "--force")
        mounts = leftover_mounts(base)
        leftovers = ocirun_leftovers(p.state_root)
        shutil.rmtree(base, ignore_errors=True)
    assert not mounts, f"podman left mounts behind: {mounts}"
    assert not leftovers, f"ocirun state left behind: {leftovers}"


@pytest.fixture
def name(podman: Podman) -> Iterator[str]:
    n = f"t-{uuid.uuid4().hex[:10]}"
    yield n
    podman("runc", "rm", "--force", "--time", "0", n)


def _pid(podman: Podman, rt: str, name: str) -> int:
    return int(out(podman(rt, "inspect", "--format", "{{.State.Pid}}", name, check=True)))


def _status(podman: Podman, rt: str, name: str) -> str:
    return out(podman(rt, "inspect", "--format", "{{.State.Status}}", name)).strip()


params = pytest.mark.parametrize("rt", RUNTIMES)


@params
def test_run_rm_prints_and_returns_the_status(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", IMAGE, "sh", "-c", "echo hello; exit 3")
    assert r.returncode == 3, r.stderr
    assert out(r) == "hello\n"
    r = podman(rt, "run", "--rm", IMAGE, "no-such-binary")
    assert r.returncode == 127, r.stderr


@params
def test_run_detached_exec_stop_rm(podman: Podman, rt: str, name: str) -> None:
    podman(rt, "run", "-d", "--name", name, IMAGE, "sleep", "1000", check=True)
    r = podman(rt, "exec", name, "sh", "-c", "echo in-exec; cat /proc/1/cmdline")
    assert r.returncode == 0, r.stderr
    assert out(r).startswith("in-exec\nsleep")
    assert podman(rt, "exec", name, "sh", "-c", "exit 4").returncode == 4
    r = podman(rt, "exec", name, "no-such-binary")
    assert r.returncode == 127 and b"executable file not found" in r.stderr
    assert podman(rt, "exec", "--user", "123", "-w", "/tmp", name, "sh", "-c",
                  "id -u; pwd").stdout == b"123\n/tmp\n"
    assert _status(podman, rt, name) == "running"
    podman(rt, "stop", "--time", "1", name, check=True)
    assert _status(podman, rt, name) == "exited"
    podman(rt, "rm", name, check=True)
    assert podman(rt, "inspect", name).returncode != 0


@params
def test_run_interactive_tty(podman: Podman, rt: str) -> None:
    require("script")
    cmd = " ".join(podman.argv(rt, "run", "--rm", "-it", IMAGE, "sh", "-c",
                               "'tty; stty size; exit 5'"))
    proc = subprocess.Popen(["script", "-eqc", f"stty rows 33 cols 99; {cmd}", "/dev/null"],
                            env=podman.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        data = proc.stdout.read()
        assert proc.wait(timeout=60) == 5, data
    finally:
        proc.kill()
        proc.wait()
    assert b"/dev/pts/0" in data and b"33 99" in data, data


@params
def test_exec_interactive_tty(podman: Podman, rt: str, name: str) -> None:
    require("script")
    podman(rt, "run", "-d", "--name", name, IMAGE, "sleep", "1000", check=True)
    cmd = " ".join(podman.argv(rt, "exec", "-it", name, "sh", "-c", "'tty; exit 6'"))
    proc = subprocess.Popen(["script", "-eqc", cmd, "/dev/null"], env=podman.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        data = proc.stdout.read()
        assert proc.wait(timeout=60) == 6, data
    finally:
        proc.kill()
        proc.wait()
    assert b"/dev/pts/" in data


@params
def test_memory_and_pids_limits(podman: Podman, rt: str, name: str) -> None:
    podman(rt, "run", "-d", "--name", name, "--memory", "64m", "--pids-limit", "77", IMAGE,
           "sleep", "1000", check=True)
    pid = _pid(podman, rt, name)
    try:
        limit = host_cgroup_file(pid, "memory", "memory.limit_in_bytes")
    except FileNotFoundError:
        limit = host_cgroup_file(pid, "memory", "memory.max")
    assert int(limit) == 64 << 20
    assert host_cgroup_file(pid, "pids", "pids.max") == "77"
    # a fork bomb stops at the limit (busybox sh gives up with status 2 at the first
    # failed fork) and the container lives on
    r = podman(rt, "exec", name, "sh", "-c", "for i in $(seq 100); do sleep 3 & done")
    assert r.returncode == 2 and b"fork" in r.stderr.lower()
    assert int(host_cgroup_file(pid, "pids", "pids.current")) <= 77
    assert _status(podman, rt, name) == "running"


@params
def test_update_changes_live_limits(podman: Podman, rt: str, name: str) -> None:
    podman(rt, "run", "-d", "--name", name, "--memory", "64m", IMAGE, "sleep", "1000",
           check=True)
    pid = _pid(podman, rt, name)
    r = podman(rt, "update", "--memory", "128m", "--cpu-shares", "512", name)
    assert r.returncode == 0, r.stderr
    try:
        limit = host_cgroup_file(pid, "memory", "memory.limit_in_bytes")
        assert host_cgroup_file(pid, "cpu", "cpu.shares") == "512"
    except FileNotFoundError:
        limit = host_cgroup_file(pid, "memory", "memory.max")
    assert int(limit) == 128 << 20


@params
def test_cap_drop_all(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", "--cap-drop", "ALL", IMAGE, "grep", "Cap", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    caps = dict(line.split(":\t") for line in out(r).splitlines())
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000"


@params
def test_seccomp_profile_from_a_file(podman: Podman, rt: str, tmp_path: Path) -> None:
    profile = seccomp_deny_mkdir(tmp_path / "seccomp.json")
    r = podman(rt, "run", "--rm", "--security-opt", f"seccomp={profile}", IMAGE, "sh", "-c",
               "mkdir /tmp/x; echo rc=$?; grep Seccomp: /proc/self/status")
    assert "rc=1" in out(r) and "Seccomp:\t2" in out(r), r.stderr
    assert b"not permitted" in r.stderr.lower()


@params
def test_network_none_has_only_loopback(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", "--network", "none", IMAGE, "cat", "/proc/net/dev")
    assert r.returncode == 0, r.stderr
    ifaces = [line.split(":")[0].strip() for line in out(r).splitlines()[2:]]
    assert ifaces == ["lo"]


@params
def test_default_bridge_network(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", IMAGE, "sh", "-c", "cat /proc/net/dev; ip -4 addr")
    assert r.returncode == 0, r.stderr
    ifaces = {line.split(":")[0].strip() for line in out(r).splitlines()[2:]
              if ":" in line and "|" not in line}
    assert "eth0" in ifaces and "inet " in out(r)


@params
def test_uidmap(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536",
               IMAGE, "sh", "-c", "cat /proc/self/uid_map; id -u; touch /tmp/f && echo ok")
    assert r.returncode == 0, r.stderr
    lines = out(r).split("\n")
    assert lines[0].split() == ["0", "100000", "65536"] and lines[1:3] == ["0", "ok"]


@params
def test_read_only_rootfs_with_a_volume(podman: Podman, rt: str, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    r = podman(rt, "run", "--rm", "--read-only", "-v", f"{vol}:/data", IMAGE, "sh", "-c",
               "touch /x; echo rc=$?; echo hi > /data/f")
    assert r.returncode == 0, r.stderr
    assert "rc=1" in out(r) and b"Read-only file system" in r.stderr
    assert (vol / "f").read_text() == "hi\n"


@params
def test_pause_unpause(podman: Podman, rt: str, name: str) -> None:
    podman(rt, "run", "-d", "--name", name, IMAGE, "sh", "-c",
           "while :; do date +%s%N > /tmp/t; sleep 0.1; done", check=True)
    podman(rt, "pause", name, check=True)
    assert _status(podman, rt, name) == "paused"
    pid = _pid(podman, rt, name)
    if os.path.isdir("/sys/fs/cgroup/freezer"):
        assert host_cgroup_file(pid, "freezer", "freezer.state") == "FROZEN"
    r = podman(rt, "exec", name, "true")
    assert r.returncode != 0  # podman itself refuses exec into a paused container
    podman(rt, "unpause", name, check=True)
    assert _status(podman, rt, name) == "running"
    first = out(podman(rt, "exec", name, "cat", "/tmp/t", check=True))
    wait_for(lambda: out(podman(rt, "exec", name, "cat", "/tmp/t")) != first,
             what="the loop to run again")


@params
def test_pid_host(podman: Podman, rt: str) -> None:
    r = podman(rt, "run", "--rm", "--pid", "host", IMAGE, "sh", "-c",
               "echo $$; ls /proc 2>/dev/null; true")  # pids come and go meanwhile
    assert r.returncode == 0, r.stderr
    lines = out(r).split()
    assert int(lines[0]) > 1 and "1" in lines[1:]  # the host's pid 1 is visible


@params
def test_container_top_and_logs(podman: Podman, rt: str, name: str) -> None:
    podman(rt, "run", "-d", "--name", name, IMAGE, "sh", "-c", "echo logged; sleep 1000",
           check=True)
    wait_for(lambda: "logged" in out(podman(rt, "logs", name)), what="log line")
    r = podman(rt, "top", name)
    assert r.returncode == 0 and ("sleep" in out(r) or "sh" in out(r)), r.stderr
