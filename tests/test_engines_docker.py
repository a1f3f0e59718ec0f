"""dockerd (Debian's docker.io, with its own containerd) driving ocirun, and runc as the
reference.

The tests start a private dockerd (own data-root, exec-root, socket, empty daemon.json,
vfs storage, cgroupfs, no bridge and no iptables: containers run with --network none)
with `--add-runtime ocirun=<wrapper>`, and stop it at the end.  The image comes from
`docker import` of the busybox rootfs tar.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from engines_common import (RUNTIMES, busybox_tar, host_cgroup_file, leftover_mounts,
                            ocirun_leftovers, out, require, run, short_tmpdir, wait_for,
                            write_ocirun_wrapper)

IMAGE = "localhost/busybox:ocirun-test"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


class Dockerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "docker.sock"
        self.state_root = base / "ocirun-state"
        self.wrapper = write_ocirun_wrapper(base, self.state_root)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        (self.base / "daemon.json").write_text("{}")
        log = open(self.base / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", str(self.base / "daemon.json"),
             "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
             "--pidfile", str(self.base / "dockerd.pid"), "--host", f"unix://{self.sock}",
             "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--storage-driver", "vfs", "--exec-opt", "native.cgroupdriver=cgroupfs",
             "--add-runtime", f"ocirun={self.wrapper}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self("version").returncode == 0 or self.proc.poll() is not None,
                 timeout=60, what="dockerd to answer")
        assert self.proc.poll() is None, (self.base / "dockerd.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shim_pids(self) -> list[int]:
        """Shims and the managed containerd started for our exec-root."""
        marker = str(self.base).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"containerd" in cmdline.split(b"\0")[0] and marker in cmdline:
                pids.append(int(entry))
        return pids

    def __call__(self, *args: str, timeout: float = 120, check: bool = False,
                 **kw: object) -> subprocess.CompletedProcess:
        return run([DOCKER, "--host", f"unix://{self.sock}", *args], timeout=timeout,
                   check=check, **kw)


@pytest.fixture(scope="module")
def docker(busybox_rootfs: Path) -> Iterator[Dockerd]:
    require("dockerd", DOCKER, "runc")
    base = short_tmpdir("odk-")
    d = Dockerd(base)
    try:
        d.start()
        tar = busybox_tar(busybox_rootfs, base / "busybox.tar")
        d("import", "--change", 'CMD ["/bin/sh"]', str(tar), IMAGE, check=True)
        yield d
    finally:
        try:
            if d.proc is not None and d.proc.poll() is None:
                ids = out(d("ps", "--all", "--quiet")).split()
                if ids:
                    d("rm", "--force", *ids)
                d("rmi", "--force", IMAGE)
        finally:
            d.stop()
        mounts = leftover_mounts(base)
        leftovers = ocirun_leftovers(d.state_root)
        left = d.shim_pids()
        if not mounts:
            shutil.rmtree(base, ignore_errors=True)
    assert not mounts, f"dockerd left mounts behind: {mounts}"
    assert not leftovers, f"ocirun state left behind: {leftovers}"
    assert not left, f"containerd processes left running: {left}"


@pytest.fixture
def name(docker: Dockerd) -> Iterator[str]:
    n = f"t-{uuid.uuid4().hex[:10]}"
    yield n
    docker("rm", "--force", n)


params = pytest.mark.parametrize("rt", RUNTIMES)


def _state(docker: Dockerd, name: str, field: str) -> str:
    return out(docker("inspect", "--format", "{{.State.%s}}" % field, name)).strip()


@params
def test_run_prints_and_returns_the_status(docker: Dockerd, rt: str) -> None:
    r = docker("run", "--rm", "--runtime", rt, "--network", "none", IMAGE, "sh", "-c",
               "echo hello; exit 3")
    assert r.returncode == 3, r.stderr
    assert out(r) == "hello\n"


@params
def test_run_detached_exec_stop(docker: Dockerd, rt: str, name: str) -> None:
    docker("run", "--detach", "--name", name, "--runtime", rt, "--network", "none", IMAGE,
           "sleep", "1000", check=True)
    assert _state(docker, name, "Status") == "running"
    r = docker("exec", name, "sh", "-c", "echo in-exec; exit 4")
    assert r.returncode == 4 and out(r) == "in-exec\n", r.stderr
    r = docker("exec", "--user", "5", "--workdir", "/tmp", name, "sh", "-c", "id -u; pwd")
    assert out(r) == "5\n/tmp\n", r.stderr
    r = docker("exec", name, "no-such-binary")
    assert r.returncode in (126, 127) and b"executable file not found" in r.stdout + r.stderr
    r = docker("top", name)
    assert r.returncode == 0 and "sleep 1000" in out(r)
    docker("stop", "--time", "1", name, check=True)
    assert _state(docker, name, "Status") == "exited"
    assert _state(docker, name, "ExitCode") == "137"
    docker("rm", name, check=True)


@params
def test_pause_unpause_and_update(docker: Dockerd, rt: str, name: str) -> None:
    docker("run", "--detach", "--name", name, "--runtime", rt, "--network", "none",
           "--memory", "64m", IMAGE, "sleep", "1000", check=True)
    docker("pause", name, check=True)
    assert _state(docker, name, "Status") == "paused"
    docker("unpause", name, check=True)
    assert _state(docker, name, "Status") == "running"
    r = docker("update", "--memory", "96m", "--memory-swap", "96m", "--cpu-shares", "512",
               name)
    assert r.returncode == 0, r.stderr
    pid = int(_state(docker, name, "Pid"))
    try:
        limit = host_cgroup_file(pid, "memory", "memory.limit_in_bytes")
        assert host_cgroup_file(pid, "cpu", "cpu.shares") == "512"
    except FileNotFoundError:
        limit = host_cgroup_file(pid, "memory", "memory.max")
    assert int(limit) == 96 << 20


@params
def test_run_with_a_tty(docker: Dockerd, rt: str) -> None:
    require("script")
    cmd = " ".join([DOCKER, "--host", f"unix://{docker.sock}", "run", "--rm", "-it",
                    "--runtime", rt, "--network", "none", IMAGE, "sh", "-c", "'tty; exit 2'"])
    proc = subprocess.Popen(["script", "-eqc", cmd, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        data = proc.stdout.read()
        assert proc.wait(timeout=60) == 2, data
    finally:
        proc.kill()
        proc.wait()
    assert b"/dev/pts/0" in data


@params
def test_cap_drop_and_read_only(docker: Dockerd, rt: str) -> None:
    r = docker("run", "--rm", "--runtime", rt, "--network", "none", "--cap-drop", "ALL",
               "--read-only", IMAGE, "sh", "-c",
               "grep CapEff /proc/self/status; touch /x; echo rc=$?")
    assert r.returncode == 0, r.stderr
    assert "CapEff:\t0000000000000000" in out(r) and "rc=1" in out(r)
