"""A create that fails takes back everything it made: no state dir, no cgroup directory
in any hierarchy, no process; and the init is never taken for dead while it lives.

The failures are forced from outside the runtime, as a real host produces them:
  * a createRuntime hook SIGKILLs the init while it waits for the hooks;
  * a process started in the container during create (by a createContainer hook, no
    pid namespace) outlives the init, which then fails: only the runtime knows it is
    its own, so only it can kill it before removing the cgroup;
  * (with a time namespace, which needs a stage1 to fork the init: init.direct_flags)
    stage1 is held back right after it forked the init, as a loaded host sometimes
    does for a few milliseconds: the init must not get ahead of stage1's "pid" message
    (the conformance flake "container init exited during create", which left the init
    running and its cgroup in every hierarchy);
  * stage1 is SIGKILLed right after it forked the init: create fails at once (no hang)
    and leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import Runtime, _cgroup_leftovers, _env

HOOK_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# createRuntime (host side, while the init waits): SIGKILL the pid of the state on stdin.
KILL_INIT = r"""#!/bin/sh
state=$(cat)
pid=$(printf '%s' "$state" | sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p')
echo "$pid" > "$1"
# Never `kill 0` (or 1): that would be this hook's own process group.
[ -n "$pid" ] && [ "$pid" -gt 1 ] || exit 3
kill -9 "$pid"
"""

# createContainer (in the container, a child of the init): leave a process running.
START_DAEMON = r"""#!/bin/sh
cat > /dev/null
sleep 1000 < /dev/null > /dev/null 2>&1 &
echo $! > "$1"
"""

# Any hook: record the pid given on stdin.
LOG_PID = r"""#!/bin/sh
printf '%s' "$(cat)" | sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' > "$1"
"""

# The runtime, with stage1 held back for HOLD seconds (or SIGKILLed) after it forks the
# init, before it reports the init's pid; a marker file tells the test it happened.
# Only a fork made by a child of the runtime process is affected: stage1's of the init.
HOLD = 1.0
FORK_SHIM = r"""
import os, runpy, signal, sys, time
_runtime = os.getpid()
# Opened now: exec's joiner forks inside the container's mount namespace, where the
# test's paths do not exist.
_mark = os.open(os.environ["OCIRUN_TEST_STAGE1_MARK"],
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
def _after_fork():
    what = os.environ.get("OCIRUN_TEST_STAGE1", "")
    if os.getpid() == _runtime or not what:
        return
    os.write(_mark, (what + "\n").encode())
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(what))
os.register_at_fork(after_in_parent=_after_fork)
sys.argv[0] = "ocirun"
runpy.run_module("ocirun", run_name="__main__", alter_sys=True)
"""


def _script(runtime: Runtime, name: str, body: str) -> str:
    path = runtime.work / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def _hook(path: str, *args: str) -> dict[str, Any]:
    return {"path": path, "args": [path, *args], "env": [HOOK_PATH]}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pids_running(cid: str) -> list[int]:
    """Live processes whose command line names the container: the runtime's own
    children (stage1, the init) are forks of `ocirun ... create ... <cid>`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if cid.encode() in argv and _alive(int(entry)):
            found.append(int(entry))
    return found


def _read_pid(path: Path) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} never got a pid")


def _scrub(runtime: Runtime, cid: str, pids: list[int]) -> None:
    """Whatever a broken create left, removed here so that no run leaks into the next:
    the processes (in this test's cgroups, naming the container, or recorded by its
    hooks and still running `sleep 1000`), then the cgroups under this test's prefix."""
    leftovers = _cgroup_leftovers(runtime.cgroup_prefix)
    ours = set(_pids_running(cid))
    for d in leftovers:
        for sub, _dirs, _files in os.walk(d):
            try:
                ours |= {int(p) for p in Path(sub, "cgroup.procs").read_text().split()}
            except OSError:
                pass
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00":
                ours.add(pid)
        except OSError:
            pass
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for d in leftovers:
        for sub, _dirs, _files in sorted(os.walk(d), key=lambda w: -w[0].count("/")):
            for _ in range(100):
                try:
                    os.rmdir(sub)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def _assert_nothing_left(runtime: Runtime, cid: str, pids: list[int]) -> None:
    assert not (runtime.root / cid).exists(), f"state dir {runtime.root / cid} left behind"
    cgroups = _cgroup_leftovers(runtime.cgroup_prefix)
    assert not cgroups, f"cgroups left behind: {cgroups}"
    running = _pids_running(cid) + [p for p in pids if _alive(p)]
    assert not running, f"processes left behind: {running}"


def _shim(runtime: Runtime, stage1: str, mark: Path) -> dict[str, str]:
    """Run the runtime through FORK_SHIM; returns the environment for it."""
    runtime.argv = [sys.executable, "-c", FORK_SHIM]
    env = _env()  # PYTHONPATH: this checkout, as for every other runtime call
    env["OCIRUN_TEST_STAGE1"] = stage1
    env["OCIRUN_TEST_STAGE1_MARK"] = str(mark)
    return env


def _one_line_error(r: Any) -> str:
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert r.returncode != 0, f"create succeeded: {err!r}"
    assert len(lines) == 1 and lines[0].startswith("ocirun: "), \
        f"expected one error line, got {err!r}"
    return lines[0]


def test_init_killed_during_create_leaves_nothing(runtime: Runtime) -> None:
    kill = _script(runtime, "kill-init.sh", KILL_INIT)
    pid_log = runtime.work / "init.pid"

    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"createRuntime": [_hook(kill, str(pid_log))]}

    bundle = runtime.bundle(["sleep", "1000"], edit=edit)
    cid = runtime.new_id("killed")
    pids: list[int] = []
    try:
        r = runtime("create", "--bundle", str(bundle), cid)
        if pid_log.exists() and pid_log.read_text().strip():
            pids.append(int(pid_log.read_text()))
        line = _one_line_error(r)
        assert "SIGKILL" in line, line
        assert pids, "the createRuntime hook never ran"
        _assert_nothing_left(runtime, cid, pids)
    finally:
        _scrub(runtime, cid, pids)


def test_process_outliving_failed_init_is_killed(runtime: Runtime) -> None:
    daemon = _script(runtime, "start-daemon.sh", START_DAEMON)
    pid_log = runtime.work / "daemon.pid"

    def edit(spec: dict[str, Any]) -> None:
        # Without a pid namespace of its own, what the init forks outlives it.
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "pid"]
        spec["hooks"] = {"createContainer": [_hook(daemon, str(pid_log))]}

    bundle = runtime.bundle(["/does-not-exist"], edit=edit)  # the init fails after the hook
    cid = runtime.new_id("orphan")
    pids: list[int] = []
    try:
        r = runtime("create", "--bundle", str(bundle), cid)
        pids.append(_read_pid(pid_log))
        line = _one_line_error(r)
        assert "/does-not-exist" in line, line
        _assert_nothing_left(runtime, cid, pids)
    finally:
        _scrub(runtime, cid, pids)


def _needs_stage1(spec: dict[str, Any]) -> None:
    """A time namespace only applies to children: stage1 makes it and forks the init."""
    spec["linux"]["namespaces"].append({"type": "time"})


def test_init_pid_known_before_it_reports(runtime: Runtime) -> None:
    log_pid = _script(runtime, "log-pid.sh", LOG_PID)
    hook_log = runtime.work / "hook.pid"
    mark = runtime.work / "held"

    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = {"createRuntime": [_hook(log_pid, str(hook_log))]}
        _needs_stage1(spec)

    bundle = runtime.bundle(["sleep", "1000"], edit=edit)
    cid = runtime.new_id("held")
    argv = runtime.argv
    env = _shim(runtime, str(HOLD), mark)
    r = None
    try:
        r = runtime("create", "--bundle", str(bundle), cid, env=env)
        runtime.argv = argv
        assert mark.read_text().strip(), "stage1 was not held back: the test proves nothing"
        assert r.returncode == 0, (f"create failed while stage1 was slow: "
                                   f"{r.stderr.decode().strip()!r}; still running: "
                                   f"{_pids_running(cid)}; cgroups: "
                                   f"{_cgroup_leftovers(runtime.cgroup_prefix)}")
        state = runtime.state(cid)
        assert state["status"] == "created", state
        assert state["pid"] > 0 and _alive(state["pid"]), state
        assert hook_log.read_text().strip() == str(state["pid"]), \
            "the createRuntime hook was not given the init's pid"
    finally:
        runtime.argv = argv
        if r is None or r.returncode != 0:
            _scrub(runtime, cid, [])


def test_stage1_killed_after_fork_fails_cleanly(runtime: Runtime) -> None:
    mark = runtime.work / "killed"
    bundle = runtime.bundle(["sleep", "1000"], edit=_needs_stage1)
    cid = runtime.new_id("stage1")
    argv = runtime.argv
    env = _shim(runtime, "kill", mark)
    try:
        try:
            r = runtime("create", "--bundle", str(bundle), cid, env=env, timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("create hung after stage1 died") from None
        runtime.argv = argv
        assert mark.read_text().strip(), "stage1 was not killed: the test proves nothing"
        line = _one_line_error(r)
        assert "SIGKILL" in line, line
        _assert_nothing_left(runtime, cid, [])
    finally:
        runtime.argv = argv
        _scrub(runtime, cid, [])


def test_exec_whose_joiner_dies_after_fork_fails_cleanly(runtime: Runtime) -> None:
    """The same gate for `exec`: its joiner forks the process, then is SIGKILLed before
    it reports the pid.  exec fails at once (no hang) and nothing of it stays."""
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    assert runtime("start", cid).returncode == 0
    mark = runtime.work / "killed"
    argv = runtime.argv
    env = _shim(runtime, "kill", mark)
    try:
        started = time.monotonic()
        r = runtime("exec", cid, "sleep", "999", env=env, timeout=30)
    finally:
        runtime.argv = argv
    assert mark.read_text().strip(), "the joiner was not killed: the test proves nothing"
    assert time.monotonic() - started < 20
    line = _one_line_error(r)
    assert "exec" in line or "exited" in line, line
    wait_gone = time.monotonic() + 5
    while _pids_running(cid) and time.monotonic() < wait_gone:
        time.sleep(0.05)
    assert not _pids_running(cid), "a child of the exec was left behind"
    assert runtime.state(cid)["status"] == "running"
