"""OCI hooks: each kind at its moment, in its namespace, with the state on stdin, and
the failure semantics of the runtime spec."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from conftest import Runtime, _env, wait_for

HOOK = """#!/bin/sh
# $1: the stage, $2: the log.  One line per call: stage, mount ns, env, stdin.
stage=$1 log=$2
state=$(cat)
echo "$stage|$(readlink /proc/self/ns/mnt)|$HOOKVAR|$state" >> "$log"
exit ${HOOK_EXIT:-0}
"""
HOOK_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN_CONTAINER = "/hooks"  # where the work dir is bound in the container


def write_hook(runtime: Runtime, name: str = "hook.sh", body: str = HOOK) -> Path:
    path = runtime.work / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def hook(path: str, stage: str, log: str, **env: str) -> dict[str, Any]:
    return {"path": path, "args": [path, stage, log],
            "env": [HOOK_PATH, f"HOOKVAR=v-{stage}", *(f"{k}={v}" for k, v in env.items())]}


def hooks_bundle(runtime: Runtime, hooks: dict[str, list[dict[str, Any]]],
                 args: list[str] | None = None) -> Path:
    def edit(spec: dict[str, Any]) -> None:
        spec["hooks"] = hooks
        spec["mounts"].append({"destination": IN_CONTAINER, "type": "bind",
                               "source": str(runtime.work), "options": ["rbind"]})
        spec["annotations"] = {"org.example.hooks": "yes"}
    return runtime.bundle(args, edit=edit)


def all_stage_hooks(runtime: Runtime) -> tuple[dict[str, list[dict[str, Any]]], Path]:
    path = str(write_hook(runtime))
    log = runtime.work / "log"
    host_log, inner_log = str(log), f"{IN_CONTAINER}/log"
    inner_path = f"{IN_CONTAINER}/hook.sh"  # startContainer resolves in the container
    return {
        "prestart": [hook(path, "prestart", host_log)],
        "createRuntime": [hook(path, "createRuntime", host_log)],
        "createContainer": [hook(path, "createContainer", host_log)],
        "startContainer": [hook(inner_path, "startContainer", inner_log)],
        "poststart": [hook(path, "poststart", host_log)],
        "poststop": [hook(path, "poststop", host_log)],
    }, log


def read_log(log: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        stage, mnt, var, state = line.split("|", 3)
        out.append((stage, mnt, var, json.loads(state)))
    return out


def test_every_hook_runs_in_order_with_the_state_of_its_moment(runtime: Runtime) -> None:
    hooks, log = all_stage_hooks(runtime)
    bundle = hooks_bundle(runtime, hooks)
    cid = runtime.create(bundle)
    pid = runtime.pid(cid)
    container_mnt = os.readlink(f"/proc/{pid}/ns/mnt")
    host_mnt = os.readlink("/proc/self/ns/mnt")
    assert [e[0] for e in read_log(log)] == ["prestart", "createRuntime", "createContainer"]
    assert runtime("start", cid).returncode == 0
    assert [e[0] for e in read_log(log)][3:] == ["startContainer", "poststart"]
    assert runtime("kill", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")
    assert runtime("delete", cid).returncode == 0
    entries = read_log(log)
    assert [e[0] for e in entries] == ["prestart", "createRuntime", "createContainer",
                                       "startContainer", "poststart", "poststop"]
    expected = {  # stage: (status, pid, mount namespace)
        "prestart": ("creating", pid, host_mnt),
        "createRuntime": ("creating", pid, host_mnt),
        "createContainer": ("creating", 1, container_mnt),  # the pid the container sees
        "startContainer": ("created", 1, container_mnt),
        "poststart": ("running", pid, host_mnt),
        "poststop": ("stopped", pid, host_mnt),
    }
    for stage, mnt, var, state in entries:
        status, want_pid, want_mnt = expected[stage]
        assert (stage, state["status"], state["pid"], mnt) == (stage, status, want_pid,
                                                               want_mnt)
        assert var == f"v-{stage}"  # the hook's own env
        assert state["id"] == cid and state["bundle"] == str(bundle)
        assert state["annotations"] == {"org.example.hooks": "yes"}
        assert state["ociVersion"]


def test_createcontainer_hook_sees_the_rootfs_before_pivot_root(runtime: Runtime) -> None:
    body = "#!/bin/sh\nls \"$(sed 's/.*\"rootfs\": *\"\\([^\"]*\\)\".*/\\1/')\"/dev > $1\n"
    path = write_hook(runtime, "ls.sh", body)
    out = runtime.work / "ls.out"
    bundle = hooks_bundle(runtime, {"createContainer": [
        {"path": str(path), "args": [str(path), str(out)], "env": [HOOK_PATH]}]})
    runtime.create(bundle)
    # the container's /dev (a tmpfs with its devices) is mounted by then
    assert {"null", "zero", "pts", "shm"} <= set(out.read_text().split())


def _assert_gone(pid: int) -> None:
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/stat") or
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             what=f"process {pid} to be gone")


def test_failing_create_hooks_fail_create_and_tear_down(runtime: Runtime) -> None:
    path = str(write_hook(runtime))
    log = str(runtime.work / "log")
    for stage in ("prestart", "createRuntime", "createContainer"):
        bundle = hooks_bundle(runtime, {stage: [hook(path, stage, log, HOOK_EXIT="3")]})
        cid = runtime.new_id()
        r = runtime("create", "--bundle", str(bundle), cid)
        assert r.returncode != 0, stage
        assert stage.encode() in r.stderr and b"exit status 3" in r.stderr, r.stderr
        assert not (runtime.root / cid).exists(), stage
        last = read_log(runtime.work / "log")[-1]
        assert last[0] == stage
        init_pid = last[3]["pid"] if stage != "createContainer" else None
        if init_pid:
            _assert_gone(init_pid)


def test_failing_startcontainer_hook_fails_start_and_the_process_never_runs(
        runtime: Runtime) -> None:
    write_hook(runtime)
    bundle = hooks_bundle(runtime, {"startContainer": [
        hook(f"{IN_CONTAINER}/hook.sh", "startContainer", f"{IN_CONTAINER}/log",
             HOOK_EXIT="4")]},
        args=["sh", "-c", f"touch {IN_CONTAINER}/ran; sleep 1000"])
    cid = runtime.create(bundle)
    pid = runtime.pid(cid)
    r = runtime("start", cid)
    assert r.returncode != 0
    assert b"startContainer hook" in r.stderr and b"exit status 4" in r.stderr, r.stderr
    _assert_gone(pid)
    assert runtime.state(cid)["status"] == "stopped"
    assert not (runtime.work / "ran").exists()
    assert runtime("delete", cid).returncode == 0


def test_failing_poststart_and_poststop_hooks_are_warnings(runtime: Runtime) -> None:
    path = str(write_hook(runtime))
    log = str(runtime.work / "log")
    bundle = hooks_bundle(runtime, {
        "poststart": [hook(path, "poststart-bad", log, HOOK_EXIT="5"),
                      hook(path, "poststart-good", log)],
        "poststop": [hook(path, "poststop-bad", log, HOOK_EXIT="6"),
                     hook(path, "poststop-good", log)]})
    cid = runtime.create(bundle)
    r = runtime("start", cid)
    assert r.returncode == 0 and b"poststart" in r.stderr and b"exit status 5" in r.stderr
    assert runtime.state(cid)["status"] == "running"
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0 and b"poststop" in r.stderr and b"exit status 6" in r.stderr
    assert not (runtime.root / cid).exists()
    assert [e[0] for e in read_log(runtime.work / "log")] == [
        "poststart-bad", "poststart-good", "poststop-bad", "poststop-good"]


def test_hook_timeout_fails_create(runtime: Runtime) -> None:
    path = write_hook(runtime, "slow.sh", "#!/bin/sh\nexec sleep 100\n")
    bundle = hooks_bundle(runtime, {"createRuntime": [
        {"path": str(path), "timeout": 1}]})
    cid = runtime.new_id()
    started = time.monotonic()
    r = runtime("create", "--bundle", str(bundle), cid)
    assert time.monotonic() - started < 15
    assert r.returncode != 0 and b"timed out" in r.stderr
    assert not (runtime.root / cid).exists()


def test_missing_hook_binary_fails_create(runtime: Runtime) -> None:
    bundle = hooks_bundle(runtime, {"prestart": [{"path": "/no/such/hook"}]})
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid)
    assert r.returncode != 0 and b"/no/such/hook" in r.stderr
    assert not (runtime.root / cid).exists()


def test_hooks_get_only_stdio(runtime: Runtime) -> None:
    body = "#!/bin/sh\nls /proc/self/fd > $1\n"
    path = write_hook(runtime, "fds.sh", body)
    out = runtime.work / "fds"
    bundle = hooks_bundle(runtime, {"createRuntime": [
        {"path": str(path), "args": [str(path), str(out)], "env": [HOOK_PATH]}]})
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid,
                pass_fds=(os.open(os.devnull, os.O_RDONLY),))
    assert r.returncode == 0, r.stderr
    # 0-2, plus the one `ls` opens to read the directory
    assert len(out.read_text().split()) == 4


def test_hooks_without_env_inherit_and_run_where_runc_runs_them(runtime: Runtime) -> None:
    """As runc's `run`: a hook without `env` gets the runtime's environment (one with
    `"env": []` gets none); the hooks in the runtime's namespaces run in the bundle,
    createContainer in the rootfs (before pivot_root)."""
    body = ('#!/bin/sh\necho "$1|$(pwd)|${OCIRUN_TEST_VAR-unset}" >> "$2"\n')
    path = str(write_hook(runtime, "where.sh", body))
    log = str(runtime.work / "where")

    def plain(stage: str, **extra: Any) -> dict[str, Any]:
        return {"path": path, "args": [path, stage, log], **extra}
    hooks = {stage: [plain(stage)] for stage in
             ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    hooks["prestart"].append(plain("prestart-empty-env", env=[]))
    bundle = hooks_bundle(runtime, hooks, args=["true"])
    env = {**_env(), "OCIRUN_TEST_VAR": "from-the-caller"}
    r = runtime("run", "--bundle", str(bundle), runtime.new_id(), env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    rootfs = json.loads((bundle / "config.json").read_text())["root"]["path"]
    seen = [line.split("|") for line in Path(log).read_text().splitlines()]
    assert seen == [
        ["prestart", str(bundle), "from-the-caller"],
        ["prestart-empty-env", str(bundle), "unset"],
        ["createRuntime", str(bundle), "from-the-caller"],
        ["createContainer", rootfs, "from-the-caller"],
        ["poststart", str(bundle), "from-the-caller"],
        ["poststop", str(bundle), "from-the-caller"],
    ], seen


def test_a_failure_after_the_fifo_is_reported_once(runtime: Runtime) -> None:
    write_hook(runtime)
    bundle = hooks_bundle(runtime, {"startContainer": [
        hook(f"{IN_CONTAINER}/hook.sh", "startContainer", f"{IN_CONTAINER}/log",
             HOOK_EXIT="4")]}, args=["true"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode != 0
    assert r.stderr.count(b"startContainer hook") == 1, r.stderr
