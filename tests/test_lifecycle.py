"""Lifecycle semantics of the runtime spec, driven through the CLI on real containers."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import Runtime, wait_for


def test_create_does_not_run_the_process_until_start(runtime: Runtime) -> None:
    marker = runtime.work / "marker"
    bundle = runtime.bundle(["sh", "-c", "echo started > /out/marker; sleep 1000"],
                            edit=lambda s: s["mounts"].append(
                                {"destination": "/out", "type": "bind",
                                 "source": str(runtime.work), "options": ["rbind"]}))
    cid = runtime.create(bundle)
    state = runtime.state(cid)
    assert state["status"] == "created"
    assert state["pid"] > 0 and os.path.exists(f"/proc/{state['pid']}")
    assert not marker.exists()
    assert runtime("start", cid).returncode == 0
    wait_for(marker.exists, what="process to run after start")
    assert runtime.state(cid)["status"] == "running"


def test_state_json_has_the_oci_fields(runtime: Runtime) -> None:
    bundle = runtime.bundle(edit=lambda s: s.update(annotations={"org.example": "yes"}))
    cid = runtime.create(bundle)
    state = runtime.state(cid)
    assert {"ociVersion", "id", "status", "pid", "bundle", "annotations"} <= set(state)
    assert state["id"] == cid
    assert state["bundle"] == str(bundle)
    assert state["annotations"] == {"org.example": "yes"}
    assert {"rootfs", "created", "owner"} <= set(state)


def test_pid_file_is_written_by_create(runtime: Runtime) -> None:
    pid_file = runtime.work / "pid"
    cid = runtime.create(runtime.bundle(), None, "--pid-file", str(pid_file))
    assert int(pid_file.read_text()) == runtime.pid(cid)


def test_container_init_is_pid_1_in_its_namespace(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    pid = runtime.pid(cid)
    with open(f"/proc/{pid}/status") as f:
        nspid = [line for line in f if line.startswith("NSpid:")][0].split()
    assert nspid[-1] == "1"


def test_kill_by_signal_name_reaches_pid1(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["sh", "-c", "trap 'exit 42' USR1; while :; do sleep 0.05; done"]))
    assert runtime("start", cid).returncode == 0
    pid = runtime.pid(cid)
    assert runtime("kill", cid, "SIGUSR1").returncode == 0
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", what="stop after USR1")
    assert not os.path.exists(f"/proc/{pid}/ns") or runtime.state(cid)["status"] == "stopped"


def test_kill_accepts_name_without_sig_and_number(runtime: Runtime) -> None:
    for sig in ("KILL", "9"):
        cid = runtime.create(runtime.bundle())
        assert runtime("start", cid).returncode == 0
        assert runtime("kill", cid, sig).returncode == 0
        runtime.wait_status(cid, "stopped")


def test_kill_default_signal_is_term(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    runtime("start", cid)
    assert runtime("kill", cid).returncode == 0  # sleep as pid 1 has no TERM handler...
    # ...but pid 1 ignores signals without a handler, so TERM is not fatal: still running.
    assert runtime.state(cid)["status"] == "running"
    assert runtime("kill", cid, "KILL").returncode == 0
    runtime.wait_status(cid, "stopped")


def test_start_of_a_running_container_fails(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    assert runtime("start", cid).returncode == 0
    r = runtime("start", cid)
    assert r.returncode != 0 and b"not created" in r.stderr


def test_kill_of_a_stopped_container_fails(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["true"]))
    runtime("start", cid)
    runtime.wait_status(cid, "stopped")
    r = runtime("kill", cid, "KILL")
    assert r.returncode != 0 and b"not running" in r.stderr


def test_delete_of_a_running_container_fails_without_force(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    runtime("start", cid)
    pid = runtime.pid(cid)
    r = runtime("delete", cid)
    assert r.returncode != 0 and b"not stopped" in r.stderr
    assert runtime.state(cid)["status"] == "running"
    assert runtime("delete", "--force", cid).returncode == 0
    assert not os.path.exists(f"/proc/{pid}/status") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]
    assert not (runtime.root / cid).exists()


def test_delete_of_a_stopped_container_removes_state_and_cgroup(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["true"]))
    runtime("start", cid)
    runtime.wait_status(cid, "stopped")
    state = json.loads((runtime.root / cid / "state.json").read_text())
    assert runtime("delete", cid).returncode == 0
    assert not (runtime.root / cid).exists()
    assert state["cgroup"], "the container had a cgroup"
    # the runtime fixture asserts that no cgroup directory is left


def test_delete_of_a_created_container_kills_its_init(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    pid = runtime.pid(cid)
    assert runtime("delete", cid).returncode == 0
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or
             open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z", what="init gone")


def test_delete_unknown_id(runtime: Runtime) -> None:
    r = runtime("delete", "no-such-container")
    assert r.returncode == 1 and b"does not exist" in r.stderr
    assert runtime("delete", "--force", "no-such-container").returncode == 0


def test_delete_force_works_with_an_empty_environment(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "") + ":" + str(runtime.work.parent)}
    from conftest import REPO
    env = {"PYTHONPATH": str(REPO)}
    assert runtime("delete", "--force", cid, env=env).returncode == 0


def test_duplicate_id_is_refused_and_the_first_survives(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    cid = runtime.create(bundle)
    r = runtime("create", "--bundle", str(bundle), cid)
    assert r.returncode != 0 and b"already exists" in r.stderr
    assert runtime.state(cid)["status"] == "created"


def test_run_returns_the_exit_status(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "exit 7"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 7, r.stderr


def test_run_returns_128_plus_signal(runtime: Runtime) -> None:
    import subprocess
    from conftest import OCIRUN, _env
    bundle = runtime.bundle(["sleep", "1000"])
    cid = runtime.new_id()
    proc = subprocess.Popen([*OCIRUN, "--root", str(runtime.root), "run", "--bundle",
                             str(bundle), cid], env=_env(), stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (runtime.root / cid / "state.json").exists() and
                 runtime.state(cid)["status"] == "running", what="running")
        assert runtime("kill", cid, "KILL").returncode == 0
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_run_passes_stdio_and_cleans_up(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "read x; echo got:$x; echo err >&2"])
    cid = runtime.new_id()
    r = runtime("run", "--bundle", str(bundle), cid, input=b"hello\n")
    assert r.returncode == 0
    assert r.stdout == b"got:hello\n" and r.stderr == b"err\n"
    assert not (runtime.root / cid).exists()


def test_run_detached_leaves_it_running(runtime: Runtime) -> None:
    bundle = runtime.bundle()
    cid = runtime.new_id()
    r = runtime("run", "-d", "--bundle", str(bundle), cid, stdin=open(os.devnull))
    assert r.returncode == 0, r.stderr
    assert runtime.state(cid)["status"] == "running"


def test_list_shows_containers(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    r = runtime("list", "--format", "json")
    entries = json.loads(r.stdout)
    assert [e["status"] for e in entries if e["id"] == cid] == ["created"]
    assert runtime("list", "-q").stdout.split() == [cid.encode()]
    table = runtime("list").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"] and cid in table[1]


def test_state_of_a_reused_pid_is_stopped(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["true"]))
    runtime("start", cid)
    runtime.wait_status(cid, "stopped")
    # Forge the record so its pid is a live process (ours) with another start time.
    path = runtime.root / cid / "state.json"
    data = json.loads(path.read_text())
    data["pid"] = os.getpid()
    path.write_text(json.dumps(data))
    assert runtime.state(cid)["status"] == "stopped"


@pytest.mark.parametrize("stored", ["container.json", "config.json"])
def test_delete_force_works_when_the_stored_config_is_unreadable(runtime: Runtime,
                                                                  stored: str) -> None:
    """start/delete read the hooks and the pid namespace back from the container
    record (config.json in a state dir of an older ocirun); a corrupt one must not
    keep a container from being deleted."""
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    assert runtime("start", cid).returncode == 0
    pid = runtime.pid(cid)
    if stored == "config.json":
        (runtime.root / cid / "container.json").unlink()
    (runtime.root / cid / stored).write_text("{corrupt")
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0, r.stderr.decode()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the init to be gone")
    assert not (runtime.root / cid).exists()


def test_later_commands_read_the_container_record_not_the_bundle(runtime: Runtime) -> None:
    """What create decided is stored once (container.json, a typed record): exec and
    start work from it after the bundle's config.json is gone or changed."""
    bundle = runtime.bundle(["sleep", "1000"], edit=lambda s: s.update(hostname="recorded"))
    cid = runtime.create(bundle)
    (bundle / "config.json").write_text("{not even json")
    assert not (runtime.root / cid / "config.json").exists()
    record = json.loads((runtime.root / cid / "container.json").read_text())
    assert record["hostname"] == "recorded" and record["process"]["args"] == ["sleep", "1000"]
    assert runtime("start", cid).returncode == 0
    r = runtime("exec", cid, "hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "recorded"


def test_an_older_state_dir_with_config_json_still_works(runtime: Runtime) -> None:
    """A container made by an ocirun before the record: its state dir has a copy of
    config.json, which start, exec and delete parse as before."""
    bundle = runtime.bundle(["sleep", "1000"])
    cid = runtime.create(bundle)
    (runtime.root / cid / "container.json").unlink()
    (runtime.root / cid / "config.json").write_text((bundle / "config.json").read_text())
    assert runtime("start", cid).returncode == 0
    r = runtime("exec", cid, "true")
    assert r.returncode == 0, r.stderr
    assert runtime("delete", "--force", cid).returncode == 0


@pytest.mark.parametrize("damage", ["{not json", '{"oci_version": "1.0.2", "root": 7}'])
def test_exec_with_a_damaged_record_is_a_one_line_error(runtime: Runtime, damage: str) -> None:
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    assert runtime("start", cid).returncode == 0
    (runtime.root / cid / "container.json").write_text(damage)
    r = runtime("exec", cid, "true")
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and len(err.splitlines()) == 1, err
    assert "stored config is corrupt" in err and "Traceback" not in err, err
