"""What engines and scripts rely on from runc, and what the spec asks where ocirun
differed (issue 13's items, each checked from the kernel's side)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import Runtime


def test_global_flags_before_version(runtime: Runtime) -> None:
    for argv in (["--version"], ["--root", str(runtime.root), "--version"],
                 ["--debug", "-v"], ["--log-format=json", "--version"]):
        r = runtime(*argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert r.stdout.startswith(b"ocirun version "), (argv, r.stdout)


def test_kill_with_signal_zero_tells_whether_the_init_lives(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    r = runtime("kill", cid, "0")
    assert r.returncode == 0, r.stderr
    assert runtime.state(cid)["status"] == "created"  # nothing was delivered
    runtime("kill", cid, "KILL")
    runtime.wait_status(cid, "stopped")
    r = runtime("kill", cid, "0")
    assert r.returncode != 0 and b"container not running" in r.stderr


def test_new_network_namespace_has_loopback_up(runtime: Runtime) -> None:
    bundle = runtime.bundle(["cat", "/sys/class/net/lo/flags"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip(), 16) & 0x1, r.stdout  # IFF_UP


def test_exec_without_terminal_is_a_session_leader(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    runtime("start", cid)
    r = runtime("exec", cid, "sh", "-c", "set -- $(cat /proc/$$/stat); echo $1 $6")
    assert r.returncode == 0, r.stderr
    pid, session = r.stdout.split()
    assert pid == session, r.stdout


def test_readonly_path_keeps_the_flags_of_the_mount_it_covers(runtime: Runtime) -> None:
    """/proc mounted nosuid,noexec,nodev (as podman asks): /proc/bus, a readonlyPath,
    must stay so (a read-only remount sets every per-mount flag anew)."""
    def edit(spec: dict) -> None:
        for m in spec["mounts"]:
            if m["destination"] == "/proc":
                m["options"] = ["nosuid", "noexec", "nodev"]
    bundle = runtime.bundle(["grep", " /proc/bus ", "/proc/self/mountinfo"], edit=edit)
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    options = set(r.stdout.split()[5].decode().split(","))
    assert {"ro", "nosuid", "nodev", "noexec"} <= options, r.stdout


def _rootfs_with(runtime: Runtime, name: str, link: str) -> dict:
    """A config whose own rootfs has `name` replaced by a symlink to `link`."""
    bundle = runtime.bundle(own_rootfs=True)
    spec = json.loads((bundle / "config.json").read_text())
    target = Path(spec["root"]["path"]) / name
    shutil.rmtree(target, ignore_errors=True)
    target.unlink(missing_ok=True)
    target.symlink_to(link)
    return spec


def test_proc_or_sys_symlink_in_the_rootfs_is_refused(runtime: Runtime,
                                                      tmp_path: Path) -> None:
    """A /proc that is a symlink would send the proc mount, and the masking of its
    paths, elsewhere: refused with one line naming it, nothing left behind."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name, link in (("proc", str(decoy)), ("sys", "/tmp"), ("proc", "dev")):
        spec = _rootfs_with(runtime, name, link)
        bundle = runtime.bundle(config=spec)
        r = runtime("run", "--bundle", str(bundle), runtime.new_id())
        err = r.stderr.decode()
        assert r.returncode != 0, (name, link)
        assert f"to /{name}: the rootfs has a symlink" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert list(decoy.iterdir()) == []
    with open("/proc/self/mountinfo") as f:
        assert str(decoy) not in f.read()


def test_readonly_dev_gets_its_device_nodes_and_submounts(runtime: Runtime) -> None:
    """"ro" on the /dev tmpfs: devpts, mqueue, shm and the device nodes go beneath it
    first, then it is made read-only (runc does the same for /dev)."""
    def edit(spec: dict) -> None:
        for m in spec["mounts"]:
            if m["destination"] == "/dev":
                m["options"].append("ro")
    script = ("grep -E ' /dev(/pts)? ' /proc/self/mountinfo; test -c /dev/null && "
              "test -c /dev/pts/ptmx && echo nodes; touch /dev/x 2>/dev/null || echo ro")
    bundle = runtime.bundle(["sh", "-c", script], edit=edit)
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    fields = [ln.split() for ln in lines if len(ln.split()) > 5]
    dev = [f for f in fields if f[4] == "/dev"]
    pts = [f for f in fields if f[4] == "/dev/pts"]
    assert dev and "ro" in dev[0][5].split(","), lines
    assert pts and "rw" in pts[0][5].split(","), lines
    assert lines[-2:] == ["nodes", "ro"], lines


def test_no_mount_namespace_enters_the_rootfs_by_chroot(runtime: Runtime) -> None:
    """Without a mount namespace the container shares the runtime's mounts: it must not
    see the host's / (it did), and nothing is mounted there for it."""
    def edit(spec: dict) -> None:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "mount"]
        spec["mounts"] = []
        spec["root"]["readonly"] = False
        for key in ("maskedPaths", "readonlyPaths"):
            spec["linux"].pop(key, None)
    with open("/proc/self/mountinfo") as f:
        before = f.read().count("\n")
    bundle = runtime.bundle(["ls", "-a", "/"], edit=edit)
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    expected = sorted([".", "..", *os.listdir(runtime.rootfs)])
    assert sorted(r.stdout.decode().split()) == expected  # the rootfs, not the host's /
    cid = runtime.create(runtime.bundle(["sleep", "100"], edit=edit))
    pid = runtime.pid(cid)
    assert os.readlink(f"/proc/{pid}/root") == str(runtime.rootfs)
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
    runtime("start", cid)
    r = runtime("exec", cid, "ls", "-a", "/")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().split()) == expected
    with open("/proc/self/mountinfo") as f:
        assert f.read().count("\n") == before


def test_no_mount_namespace_refuses_what_needs_one(runtime: Runtime) -> None:
    """Mounts and the other mount-based settings would have to be made in the
    runtime's own mount namespace: each is refused, naming its JSON path."""
    def without_mount_ns(spec: dict) -> None:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "mount"]
    r = runtime("run", "--bundle", str(runtime.bundle(edit=without_mount_ns)),
                runtime.new_id())
    err = r.stderr.decode()
    assert r.returncode != 0 and err.count("\n") == 1, err
    assert "mounts" in err and "mount namespace" in err, err


def test_list_and_events_print_compact_json_as_runc(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle())
    r = runtime("list", "--format", "json")
    assert r.returncode == 0, r.stderr
    line = r.stdout.decode()
    assert line.count("\n") == 1 and '","' in line and ", " not in line, line
    (entry,) = json.loads(line)
    assert entry["id"] == cid and entry["owner"] == "root"
    r = runtime("events", "--stats", cid)
    assert r.returncode == 0, r.stderr
    event = r.stdout.decode()
    assert event.count("\n") == 1 and '":' in event and '": ' not in event, event
    assert json.loads(event)["type"] == "stats"


def test_ps_passes_its_arguments_to_ps_and_filters_the_container(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(["sleep", "1000"]))
    init = runtime.pid(cid)
    runtime("start", cid)
    r = runtime("ps", cid, "-o", "pid,comm")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["PID", "COMMAND"], lines
    assert [ln.split() for ln in lines[1:]] == [[str(init), "sleep"]], lines
    r = runtime("ps", cid)  # ps -ef by default: the init's line, and only it
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["UID", "PID"] and len(lines) == 2, lines
    assert lines[1].split()[1] == str(init)
    r = runtime("ps", cid, "--no-such-ps-option")
    assert r.returncode != 0 and r.stderr.decode().count("\n") == 1, r.stderr
    runtime("kill", cid, "KILL")
    runtime.wait_status(cid, "stopped")
    r = runtime("ps", cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[1:] == []  # the header only, as runc
    r = runtime("ps", "--format", "json", cid)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr


def test_log_to_an_unusable_path_is_an_error(runtime: Runtime, tmp_path: Path) -> None:
    bad = tmp_path / "no-such-dir" / "log"
    r = runtime("--log", str(bad), "list")
    err = r.stderr.decode()
    assert r.returncode == 1 and f"--log {bad}" in err and err.count("\n") == 1, err
    good = tmp_path / "log"
    r = runtime("--log", str(good), "state", "no-such-container")
    assert r.returncode != 0 and "does not exist" in good.read_text()


def test_run_keep_leaves_the_stopped_container(runtime: Runtime) -> None:
    cid = runtime.new_id()
    r = runtime("run", "--keep", "--bundle", str(runtime.bundle(["sh", "-c", "exit 3"])),
                cid)
    assert r.returncode == 3, r.stderr
    state = runtime.state(cid)
    assert state["status"] == "stopped", state
    assert runtime("delete", cid).returncode == 0
    r = runtime("run", "--keep", "-d", "--bundle", str(runtime.bundle()), runtime.new_id())
    assert r.returncode != 0 and b"--keep" in r.stderr


def test_a_joined_mount_namespace_gets_the_rootfs(runtime: Runtime) -> None:
    """linux.namespaces mount with a path: the rootfs is built in that namespace, as
    runc does (runtime-tools' linux_ns_path); the runtime's own is refused, since
    pivot_root there would move the host's root."""
    import subprocess
    import time
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "300"],
                              stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        path = f"/proc/{holder.pid}/ns/mnt"

        def join(spec: dict) -> None:
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "mount":
                    ns["path"] = path
        r = runtime("run", "--bundle", str(runtime.bundle(["ls", "-a", "/"], edit=join)),
                    runtime.new_id())
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.decode().split()) == sorted(
            [".", "..", *os.listdir(runtime.rootfs)])
    finally:
        holder.kill()
        holder.wait()

    def own(spec: dict) -> None:
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "mount":
                ns["path"] = "/proc/self/ns/mnt"
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    r = runtime("run", "--bundle", str(runtime.bundle(["true"], edit=own)), runtime.new_id())
    err = r.stderr.decode()
    assert r.returncode != 0 and "runtime's own" in err and err.count("\n") == 1, err
    with open("/proc/self/mountinfo") as f:
        assert f.read() == before


def test_recursive_read_only_bind(runtime: Runtime, tmp_path: Path) -> None:
    """"rro" (runtime-spec 1.1, mount_setattr AT_RECURSIVE): the bind and every mount
    beneath it are read-only; plain "ro" leaves the submount writable.  It used to be
    passed as filesystem data, which a bind ignores: silently not applied."""
    import subprocess
    from conftest import _env
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    tmp_path.chmod(0o755)

    def edit(spec: dict) -> None:
        spec["mounts"] += [
            {"destination": "/rro", "type": "bind", "source": str(source),
             "options": ["rbind", "rro"]},
            {"destination": "/ro", "type": "bind", "source": str(source),
             "options": ["rbind", "ro"]}]
    script = ("for d in /rro /rro/sub /ro /ro/sub; do touch $d/f 2>/dev/null && "
              "echo $d=rw || echo $d=ro; done")
    bundle = runtime.bundle(["sh", "-c", script], edit=edit)
    cmd = " ".join([*runtime.argv, "--root", str(runtime.root), "run", "--bundle",
                    str(bundle), runtime.new_id()])
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs sub {source / 'sub'} && exec {cmd}"],
                       capture_output=True, env=_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["/rro=ro", "/rro/sub=ro", "/ro=ro", "/ro/sub=rw"]
