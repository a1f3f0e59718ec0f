"""containerd (its runc v2 shim) driving ocirun through `ctr`, and runc as the reference.

The tests start their own containerd with a private root, state, sockets and config
(the CRI plugin off) and stop it at the end.  `ctr run --runc-binary` picks the
runtime and `--runc-root` a private state root for it.  The image is an OCI layout
built from the busybox rootfs and imported with `ctr image import`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from engines_common import (RUNC, RUNTIMES, leftover_mounts, oci_archive, ocirun_leftovers,
                            out, require, run, short_tmpdir, wait_for, write_ocirun_wrapper)

IMAGE = "localhost/busybox:ocirun-test"


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.address = str(base / "containerd.sock")
        self.namespace = f"ocirun-test-{uuid.uuid4().hex[:6]}"
        self.calls = base / "calls.log"
        self.runtimes = {"ocirun": str(self._logging_wrapper()), "runc": RUNC}
        self.roots = {rt: base / f"runc-root-{rt}" for rt in RUNTIMES}
        self.proc: subprocess.Popen | None = None

    def _logging_wrapper(self) -> Path:
        """ocirun, recording each call (the shim passes --root, which wins)."""
        inner = write_ocirun_wrapper(self.base, self.base / "unused-state", "ocirun-inner")
        path = self.base / "ocirun"
        path.write_text(f'#!/bin/sh\necho "$*" >> {self.calls}\nexec {inner} "$@"\n')
        path.chmod(0o755)
        return path

    def start(self) -> None:
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base}/root"\nstate = "{self.base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[debug]\n  address = "{self.base}/debug.sock"\n')
        log = open(self.base / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self("version").returncode == 0 or self.proc.poll() is not None,
                 what="containerd to answer")
        assert self.proc.poll() is None, (self.base / "containerd.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Shims outlive containerd by design; ours are found by our private address.
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shim_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().split(b"\0")
            except OSError:
                continue
            if cmdline and b"containerd-shim" in cmdline[0] and \
                    self.address.encode() in cmdline:
                pids.append(int(entry))
        return pids

    def __call__(self, *args: str, timeout: float = 120, check: bool = False,
                 **kw: object) -> subprocess.CompletedProcess:
        return run(["ctr", "--address", self.address, "--namespace", self.namespace, *args],
                   timeout=timeout, check=check, **kw)

    def runtime_flags(self, rt: str) -> list[str]:
        return ["--runc-binary", self.runtimes[rt], "--runc-root", str(self.roots[rt])]

    def cleanup_all(self) -> None:
        for line in out(self("task", "ls", "--quiet")).split():
            self("task", "kill", "--signal", "SIGKILL", "--all", line)
        for line in out(self("task", "ls", "--quiet")).split():
            wait_for(lambda: "STOPPED" in out(self("task", "ls")) or
                     line not in out(self("task", "ls")), what="tasks to stop")
            self("task", "rm", "--force", line)
        for line in out(self("container", "ls", "--quiet")).split():
            self("container", "rm", line)


def _remove_namespace_cgroups(namespace: str) -> None:
    """The shim puts containers at /<namespace>/<id>; runtimes remove the <id> level,
    the <namespace> level is this test's to remove (only if empty)."""
    import glob
    for path in glob.glob(f"/sys/fs/cgroup/*/{namespace}") + glob.glob(
            f"/sys/fs/cgroup/{namespace}"):
        for root, dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(root)
            except OSError:
                pass


@pytest.fixture(scope="module")
def ctr(busybox_rootfs: Path) -> Iterator[Containerd]:
    require("containerd", "ctr", "containerd-shim-runc-v2", RUNC)
    base = short_tmpdir("occ-")
    c = Containerd(base)
    try:
        c.start()
        c("image", "import", str(oci_archive(busybox_rootfs, base / "image.tar", IMAGE)),
          check=True)
        yield c
    finally:
        try:
            if c.proc is not None and c.proc.poll() is None:
                c.cleanup_all()
                c("image", "rm", IMAGE)
        finally:
            c.stop()
            _remove_namespace_cgroups(c.namespace)
        mounts = leftover_mounts(base)
        leftovers = ocirun_leftovers(c.roots["ocirun"] / c.namespace)
        shim_left = c.shim_pids()
        if not mounts:
            shutil.rmtree(base, ignore_errors=True)
    assert not mounts, f"containerd left mounts behind: {mounts}"
    assert not leftovers, f"ocirun state left behind: {leftovers}"
    assert not shim_left, f"shims left running: {shim_left}"


@pytest.fixture
def cid(ctr: Containerd) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    if name in out(ctr("task", "ls")):
        ctr("task", "kill", "--signal", "SIGKILL", "--all", name)
        wait_for(lambda: "RUNNING" not in [line.split()[-1] for line in
                                           out(ctr("task", "ls")).splitlines()
                                           if line.startswith(name + " ")],
                 what="task to stop")
        ctr("task", "rm", "--force", name)
    ctr("container", "rm", name)


params = pytest.mark.parametrize("rt", RUNTIMES)


def _started(ctr: Containerd, rt: str, cid: str, *cmd: str) -> int:
    ctr("run", "--detach", *ctr.runtime_flags(rt), IMAGE, cid, *(cmd or ("sleep", "1000")),
        check=True)
    line = [x for x in out(ctr("task", "ls")).splitlines() if x.startswith(cid + " ")][0]
    return int(line.split()[1])


def _task_status(ctr: Containerd, cid: str) -> str:
    for line in out(ctr("task", "ls")).splitlines():
        if line.startswith(cid + " "):
            return line.split()[-1]
    return ""


@params
def test_run_prints_and_returns_the_status(ctr: Containerd, rt: str, cid: str) -> None:
    r = ctr("run", "--rm", *ctr.runtime_flags(rt), IMAGE, cid, "sh", "-c",
            "echo hello; exit 3")
    assert r.returncode == 3, r.stderr
    assert out(r) == "hello\n"
    if rt == "ocirun":
        calls = ctr.calls.read_text()
        assert "create --bundle" in calls and f"start {cid}" in calls


@params
def test_task_exec(ctr: Containerd, rt: str, cid: str) -> None:
    _started(ctr, rt, cid)
    r = ctr("task", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo in-exec; exit 4")
    assert r.returncode == 4 and out(r) == "in-exec\n", r.stderr
    r = ctr("task", "exec", "--exec-id", "e2", cid, "no-such-binary")
    assert r.returncode != 0 and b"executable file not found" in r.stderr
    assert _task_status(ctr, cid) == "RUNNING"


@params
def test_task_ps(ctr: Containerd, rt: str, cid: str) -> None:
    pid = _started(ctr, rt, cid, "sh", "-c", "sleep 1000 & sleep 1000")
    wait_for(lambda: len(out(ctr("task", "ps", cid)).split("\n")) >= 4, what="2 processes")
    pids = [int(line.split()[0]) for line in out(ctr("task", "ps", cid)).splitlines()[1:]]
    assert pid in pids and len(pids) == 2


@params
def test_task_pause_resume(ctr: Containerd, rt: str, cid: str) -> None:
    _started(ctr, rt, cid)
    ctr("task", "pause", cid, check=True)
    assert _task_status(ctr, cid) == "PAUSED"
    ctr("task", "resume", cid, check=True)
    assert _task_status(ctr, cid) == "RUNNING"
    r = ctr("task", "exec", "--exec-id", "after", cid, "true")
    assert r.returncode == 0, r.stderr


@params
def test_task_metrics(ctr: Containerd, rt: str, cid: str) -> None:
    _started(ctr, rt, cid)
    r = ctr("task", "metrics", cid)
    assert r.returncode == 0, r.stderr
    text = out(r)
    assert "pids.current" in text and ("memory.usage_in_bytes" in text or
                                       "memory.usage" in text)


@params
def test_task_kill_and_kill_all(ctr: Containerd, rt: str, cid: str) -> None:
    pid = _started(ctr, rt, cid, "sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait")
    ctr("task", "kill", cid, check=True)  # SIGTERM to the init
    wait_for(lambda: _task_status(ctr, cid) == "STOPPED", what="stop after TERM")
    assert not os.path.exists(f"/proc/{pid}/ns")
    ctr("task", "rm", cid, check=True)
    ctr("container", "rm", cid, check=True)
    _started(ctr, rt, cid, "sh", "-c", "sleep 1000 & sleep 1000")
    ctr("task", "kill", "--all", "--signal", "SIGKILL", cid, check=True)
    wait_for(lambda: _task_status(ctr, cid) == "STOPPED", what="stop after kill --all")


@params
def test_run_with_a_tty(ctr: Containerd, rt: str, cid: str) -> None:
    require("script")
    cmd = " ".join(["ctr", "--address", ctr.address, "--namespace", ctr.namespace, "run",
                    "--rm", "--tty", *ctr.runtime_flags(rt), IMAGE, cid, "sh", "-c",
                    "'tty; exit 2'"])
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
def test_exec_with_a_tty(ctr: Containerd, rt: str, cid: str) -> None:
    require("script")
    _started(ctr, rt, cid)
    cmd = " ".join(["ctr", "--address", ctr.address, "--namespace", ctr.namespace, "task",
                    "exec", "--tty", "--exec-id", "tty1", cid, "sh", "-c",
                    "'tty; sleep 0.5; exit 2'"])
    proc = subprocess.Popen(["script", "-eqc", cmd, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        data = proc.stdout.read()
        assert proc.wait(timeout=60) == 2, data
    finally:
        proc.kill()
        proc.wait()
    assert b"/dev/pts/" in data


@params
def test_failed_create_reports_the_runtime_error(ctr: Containerd, rt: str, cid: str) -> None:
    r = ctr("run", "--rm", *ctr.runtime_flags(rt), IMAGE, cid, "no-such-binary")
    assert r.returncode != 0
    assert b"no-such-binary" in r.stderr and b"executable file not found" in r.stderr
    time.sleep(0.2)
