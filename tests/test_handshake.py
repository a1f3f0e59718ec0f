"""The parent/child handshake: an init that dies at any point before execve makes
create/start/run fail with the reason, promptly, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import OCIRUN, Runtime, _env, wait_for

HOOK_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def script(runtime: Runtime, name: str, body: str) -> Path:
    path = runtime.work / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def spawn(runtime: Runtime, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*OCIRUN, "--root", str(runtime.root), *args], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, bytes]:
    try:
        _out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def wait_file(path: Path, timeout: float = 15) -> str:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", timeout,
             what=str(path))
    time.sleep(0.05)
    return path.read_text().strip()


def test_start_after_the_init_was_killed_reports_it(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    pid = runtime.pid(cid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), what="init gone")
    started = time.monotonic()
    r = runtime("start", cid, timeout=15)
    assert time.monotonic() - started < 10
    assert r.returncode != 0 and b"stopped" in r.stderr, r.stderr
    assert runtime("delete", cid).returncode == 0


def test_init_killed_while_start_waits_on_the_fifo(runtime: Runtime) -> None:
    """The init dies after `start` opened the fifo, during a startContainer hook."""
    flag = runtime.work / "in-hook"
    script(runtime, "wait.sh", "echo yes > /hooks/in-hook; exec sleep 30\n")

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/hooks", "type": "bind",
                               "source": str(runtime.work), "options": ["rbind"]})
        spec["hooks"] = {"startContainer": [{"path": "/hooks/wait.sh", "env": HOOK_ENV}]}
    cid = runtime.create(runtime.bundle(edit=edit))
    pid = runtime.pid(cid)
    proc = spawn(runtime, "start", cid)
    wait_file(flag)
    os.kill(pid, signal.SIGKILL)
    code, err = finish(proc)
    assert code != 0 and b"exited before executing" in err, err
    assert runtime.state(cid)["status"] == "stopped"


def test_init_killed_from_a_createruntime_hook(runtime: Runtime) -> None:
    """A createRuntime hook kills the init (its host pid is in the state on stdin)."""
    body = ("pid=$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/'); echo $pid > "
            f"{runtime.work}/pid; kill -9 $pid\n")
    hook = script(runtime, "kill.sh", body)
    bundle = runtime.bundle(edit=lambda s: s.update(hooks={"createRuntime": [
        {"path": str(hook), "env": HOOK_ENV}]}))
    cid = runtime.new_id()
    started = time.monotonic()
    r = runtime("create", "--bundle", str(bundle), cid, timeout=20)
    assert time.monotonic() - started < 15
    assert r.returncode != 0
    assert b"container init exited unexpectedly" in r.stderr, r.stderr
    assert b"signal 9" in r.stderr, r.stderr
    assert not (runtime.root / cid).exists()
    assert gone(int((runtime.work / "pid").read_text()))


def test_init_killed_during_a_createcontainer_hook(runtime: Runtime) -> None:
    """The hook runs in the container's pid namespace (where pid 1 can't be killed):
    it tells us the init's host pid, from the host's /proc still mounted before
    pivot_root, and the test kills it."""
    out = runtime.work / "init-pid"
    body = (f"read -r stat < /proc/self/stat; set -- $stat; echo $4 > {out}; "
            "exec sleep 30\n")
    hook = script(runtime, "pause.sh", body)
    bundle = runtime.bundle(edit=lambda s: s.update(hooks={"createContainer": [
        {"path": str(hook), "env": HOOK_ENV}]}))
    cid = runtime.new_id()
    runtime.created.append(cid)
    proc = spawn(runtime, "create", "--bundle", str(bundle), cid)
    try:
        init_pid = int(wait_file(out))
        with open(f"/proc/{init_pid}/status") as f:
            assert [ln for ln in f if ln.startswith("NSpid:")][0].split()[-1] == "1"
        os.kill(init_pid, signal.SIGKILL)
    finally:
        code, err = finish(proc)
    assert code != 0 and b"createContainer" in err and b"signal 9" in err, err
    assert not (runtime.root / cid).exists()


def test_run_reports_an_init_killed_before_exec(runtime: Runtime) -> None:
    body = ("pid=$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/'); kill -9 $pid\n")
    hook = script(runtime, "kill.sh", body)
    bundle = runtime.bundle(edit=lambda s: s.update(hooks={"prestart": [
        {"path": str(hook), "env": HOOK_ENV}]}))
    cid = runtime.new_id()
    r = runtime("run", "--bundle", str(bundle), cid, timeout=20)
    assert r.returncode != 0 and b"signal 9" in r.stderr, r.stderr
    assert not (runtime.root / cid).exists()


def test_executable_removed_between_create_and_start(runtime: Runtime) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["readonly"] = False
    bundle = runtime.bundle(["/bin/vanishing"], edit=edit, own_rootfs=True)
    shutil.copy(bundle / "rootfs" / "bin" / "busybox", bundle / "rootfs" / "bin" / "vanishing")
    cid = runtime.create(bundle)
    (bundle / "rootfs" / "bin" / "vanishing").unlink()
    r = runtime("start", cid)
    assert r.returncode == 127, r.stderr
    assert b"/bin/vanishing" in r.stderr and b"no such file" in r.stderr
    assert runtime.state(cid)["status"] == "stopped"


def test_start_returns_only_after_the_process_runs(runtime: Runtime) -> None:
    """start reports success only once execve happened: the process is running (its
    comm is the program's, not the runtime's) when start returns."""
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    pid = runtime.pid(cid)
    assert runtime("start", cid).returncode == 0
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "sleep"
    assert runtime.state(cid)["status"] == "running"


def test_a_second_start_while_the_first_waits_is_refused(runtime: Runtime) -> None:
    flag = runtime.work / "in-hook"
    script(runtime, "wait.sh", "echo yes > /hooks/in-hook; exec sleep 2\n")

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/hooks", "type": "bind",
                               "source": str(runtime.work), "options": ["rbind"]})
        spec["hooks"] = {"startContainer": [{"path": "/hooks/wait.sh", "env": HOOK_ENV}]}
    cid = runtime.create(runtime.bundle(edit=edit))
    first = spawn(runtime, "start", cid)
    wait_file(flag)
    second = runtime("start", cid, timeout=20)
    code, err = finish(first)
    assert code == 0, err
    assert second.returncode != 0
    assert runtime.state(cid)["status"] == "running"


def test_create_leaves_no_process_when_the_rootfs_setup_fails(runtime: Runtime) -> None:
    marker = runtime.work / "pids"

    def edit(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/x", "type": "bind",
                               "source": "/no/such/source", "options": ["rbind"]})
        spec["hooks"] = {}
    cid = runtime.new_id()
    before = set(os.listdir("/proc"))
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0 and b"/no/such/source" in r.stderr
    assert not (runtime.root / cid).exists()
    # nothing of ours survives (no stray init blocked on a fifo)
    for pid in set(os.listdir("/proc")) - before:
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert cid.encode() not in f.read()
            except FileNotFoundError:
                pass
    assert not marker.exists()
    assert json  # (state JSON is checked in test_hooks)
