"""Namespaces: created per config, joined by path, and what they carry (hostname...)."""

from __future__ import annotations

import os

from conftest import Runtime

NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
            "cgroup": "cgroup", "user": "user", "time": "time"}


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{NS_FILES[kind]}")


def test_every_listed_namespace_is_new_and_the_others_are_shared(runtime: Runtime) -> None:
    bundle = runtime.bundle(edit=lambda s: s["linux"]["namespaces"].append({"type": "time"}))
    cid = runtime.create(bundle)
    pid = runtime.pid(cid)
    for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup"):
        assert _ns(pid, kind) != _ns("self", kind), kind
    # A new time namespace applies to the init's children; the init itself
    # shows it as time_for_children until it execs.
    assert os.readlink(f"/proc/{pid}/ns/time_for_children") != _ns("self", "time")
    assert _ns(pid, "user") == _ns("self", "user")


def test_namespace_not_listed_is_the_hosts(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}]
        spec.pop("hostname")
    bundle = runtime.bundle(edit=edit)
    cid = runtime.create(bundle)
    pid = runtime.pid(cid)
    for kind in ("network", "ipc", "uts", "cgroup"):
        assert _ns(pid, kind) == _ns("self", kind), kind
    assert _ns(pid, "pid") != _ns("self", "pid")


def test_join_namespaces_by_path(runtime: Runtime) -> None:
    first = runtime.create(runtime.bundle())
    first_pid = runtime.pid(first)

    def join(spec: dict) -> None:
        namespaces = [ns for ns in spec["linux"]["namespaces"]
                      if ns["type"] not in ("network", "ipc", "uts")]
        namespaces += [{"type": t, "path": f"/proc/{first_pid}/ns/{NS_FILES[t]}"}
                       for t in ("network", "ipc", "uts")]
        spec["linux"]["namespaces"] = namespaces
        spec.pop("hostname")

    second = runtime.create(runtime.bundle(edit=join))
    second_pid = runtime.pid(second)
    for kind in ("network", "ipc", "uts"):
        assert _ns(second_pid, kind) == _ns(first_pid, kind), kind
    assert _ns(second_pid, "mount") != _ns(first_pid, "mount")
    assert _ns(second_pid, "pid") != _ns(first_pid, "pid")


def test_hostname_and_domainname(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"],
                            edit=lambda s: s.update(hostname="box", domainname="example.org"))
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["box", "example.org"]
    assert os.uname().nodename != "box"


def test_time_namespace_offsets(runtime: Runtime) -> None:
    year = 365 * 24 * 3600

    def edit(spec: dict) -> None:
        spec["linux"]["namespaces"].append({"type": "time"})
        spec["linux"]["timeOffsets"] = {"boottime": {"secs": year, "nanosecs": 0}}

    bundle = runtime.bundle(["cat", "/proc/uptime"], edit=edit)
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    inside = float(r.stdout.split()[0])
    with open("/proc/uptime") as f:
        outside = float(f.read().split()[0])
    assert year - 5 < inside - outside < year + 5


def test_network_namespace_has_only_loopback(runtime: Runtime) -> None:
    bundle = runtime.bundle(["ls", "/sys/class/net"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"lo"]


def test_pid_namespace_shows_only_the_container(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sh", "-c", "ls -d /proc/[0-9]*"])
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    pids = sorted(int(p.rsplit(b"/", 1)[1]) for p in r.stdout.split())
    assert pids[0] == 1 and len(pids) <= 3  # sh, ls (and the glob's own process)


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    raise AssertionError("no NSpid line")


def _create_debug(runtime: Runtime, bundle: object) -> tuple[str, int, str]:
    cid = runtime.new_id()
    pid_file = runtime.work / f"{cid}.pid"
    r = runtime("--debug", "create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid)
    assert r.returncode == 0, r.stderr
    return cid, int(pid_file.read_text()), r.stderr.decode()


def test_the_init_is_born_with_its_namespaces(runtime: Runtime) -> None:
    """Without a user or time namespace the init is cloned with its new namespaces
    (clone3 flags, init.direct_flags): no stage1.  The kernel must show the same
    container as the stage1 path builds: pid 1 of a new pid namespace, every listed
    namespace new, a cgroup namespace made after the cgroups were joined."""
    cid, pid, debug = _create_debug(runtime, runtime.bundle(["sleep", "1000"]))
    assert "born with its namespaces" in debug, debug
    assert _nspid(pid)[-1] == 1 and len(_nspid(pid)) == 2, _nspid(pid)
    for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup"):
        assert _ns(pid, kind) != _ns("self", kind), kind
    assert _ns(pid, "user") == _ns("self", "user")
    assert runtime("start", cid).returncode == 0
    r = runtime("exec", cid, "cat", "/proc/self/cgroup")
    assert r.returncode == 0, r.stderr
    # The cgroup namespace's root is the container's cgroup: every line reads "/".
    assert {line.rsplit(b":", 1)[1] for line in r.stdout.splitlines()} == {b"/"}, r.stdout


def test_a_time_namespace_takes_the_stage1_path(runtime: Runtime) -> None:
    bundle = runtime.bundle(["sleep", "1000"],
                            edit=lambda s: s["linux"]["namespaces"].append({"type": "time"}))
    _cid, pid, debug = _create_debug(runtime, bundle)
    assert "stage1 makes the namespaces" in debug, debug
    assert _nspid(pid)[-1] == 1, _nspid(pid)
    assert os.readlink(f"/proc/{pid}/ns/time_for_children") != _ns("self", "time")


def test_a_pid_namespace_joined_by_path_takes_the_stage1_path(runtime: Runtime) -> None:
    first = runtime.create(runtime.bundle(["sleep", "1000"]))
    first_pid = runtime.pid(first)

    def join(spec: dict) -> None:
        spec["linux"]["namespaces"] = [
            ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"] + [
            {"type": "pid", "path": f"/proc/{first_pid}/ns/pid"}]

    _cid, pid, debug = _create_debug(runtime, runtime.bundle(["sleep", "1000"], edit=join))
    assert "stage1 makes the namespaces" in debug, debug
    assert _ns(pid, "pid") == _ns(first_pid, "pid")
    assert _nspid(pid)[-1] != 1
