"""What engines and scripts rely on from runc, and what the spec asks where ocirun
differed (issue 13's items, each checked from the kernel's side)."""

from __future__ import annotations

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
