"""Container escapes, each written as the exploit (see SECURITY.md).

Every test here acts as the container would: through `exec` into a created container
(the init is still the runtime's interpreter then), through config strings, through
the capabilities it is given.  Each one escapes on a build without its protection.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Runtime, built_launcher, proc_status
from ocirun.exeseal import exe_is_sealed
from ocirun.spec import CAPABILITIES

_CAP_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def _no_leftovers(runtime: Runtime, cid: str) -> None:
    assert not (runtime.root / cid).exists(), f"state dir of {cid} left behind"


# ------------------------------------------------------------------ capabilities
def test_config_without_capabilities_grants_none(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        del spec["process"]["capabilities"]
    cid = runtime.create(runtime.bundle(edit=edit))
    status = proc_status(runtime.pid(cid))
    assert {k: int(status[k], 16) for k in _CAP_KEYS} == dict.fromkeys(_CAP_KEYS, 0)


def test_callers_inheritable_and_ambient_sets_do_not_reach_the_container(
        runtime: Runtime) -> None:
    """A caller (an engine's shim, a shell under capsh) with inheritable and ambient
    capabilities: none of them passes into a container that does not name them."""
    raw = CAPABILITIES.index("CAP_NET_RAW")

    def raise_ambient() -> None:
        import ctypes

        import prctl
        prctl.cap_inheritable.net_raw = True
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(47, 2, raw, 0, 0) != 0:  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE
            raise OSError(ctypes.get_errno(), "raising an ambient capability")

    def edit(spec: dict) -> None:
        caps = spec["process"]["capabilities"]
        caps["inheritable"] = []
        caps["ambient"] = []
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid,
                preexec_fn=raise_ambient)
    assert r.returncode == 0, r.stderr.decode()
    status = proc_status(runtime.pid(cid))
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert not int(status["CapEff"], 16) >> raw & 1

    def no_caps(spec: dict) -> None:
        del spec["process"]["capabilities"]
    cid2 = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=no_caps)), cid2,
                preexec_fn=raise_ambient)
    assert r.returncode == 0, r.stderr.decode()
    status = proc_status(runtime.pid(cid2))
    assert {k: int(status[k], 16) for k in _CAP_KEYS} == dict.fromkeys(_CAP_KEYS, 0)


# ------------------------------------------------------------- runtime fds, cwd
@pytest.mark.parametrize("cwd", ["/proc/self/fd/3", "/proc/self/cwd", "/proc/1/root/..",
                                 "/proc/self/root/proc/self/fd/3"])
def test_cwd_through_a_magic_link_is_refused(runtime: Runtime, cwd: str) -> None:
    """CVE-2024-21626: process.cwd naming one of the init's own fds (once the state
    dir) started the container outside its root."""
    def edit(spec: dict) -> None:
        spec["process"]["cwd"] = cwd
        spec["process"]["args"] = ["sh", "-c", "ls ../../../../../../.. > /dev/null; pwd"]
    cid = runtime.new_id()
    r = runtime("run", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0, f"the container started in {r.stdout!r}"
    assert b"magic link" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    _no_leftovers(runtime, cid)


def test_waiting_init_holds_no_directory_of_the_runtime(runtime: Runtime) -> None:
    cid = runtime.create(runtime.bundle(), None, "--preserve-fds", "0")
    pid = runtime.pid(cid)
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        if int(name) > 2:  # stdio is the caller's own
            assert not os.path.isdir(f"/proc/{pid}/fd/{name}"), f"fd {name} -> {target}"


@pytest.mark.parametrize("target", ["fd", "cwd", "root"])
def test_exec_cwd_through_the_waiting_inits_links_is_refused(runtime: Runtime,
                                                             target: str) -> None:
    cid = runtime.create(runtime.bundle())
    if target == "fd":  # the init's own fd (the exec fifo): the first above stdio
        pid = runtime.pid(cid)
        target = f"fd/{min(n for n in map(int, os.listdir(f'/proc/{pid}/fd')) if n > 2)}"
    r = runtime("exec", "--cap", "CAP_SYS_PTRACE", "--cwd", f"/proc/1/{target}", cid,
                "sh", "-c", "cd ../../../../..; ls")
    assert r.returncode != 0, r.stdout
    assert b"magic link" in r.stderr, r.stderr


def test_waiting_init_is_out_of_reach_of_container_processes(runtime: Runtime) -> None:
    """Without CAP_SYS_PTRACE no container process can open /proc/1/{exe,root,cwd,fd}
    of the init while it is still the runtime."""
    cid = runtime.create(runtime.bundle())
    pid = runtime.pid(cid)
    fd = min(n for n in map(int, os.listdir(f"/proc/{pid}/fd")) if n > 2)
    for argv in (["cat", "/proc/1/exe"], ["ls", "/proc/1/root/"], ["ls", "/proc/1/cwd/"],
                 ["ls", f"/proc/1/fd/{fd}/"]):
        r = runtime("exec", cid, *argv)
        assert r.returncode != 0, f"{argv}: {r.stdout!r}"
        assert b"ermission denied" in r.stderr, r.stderr


# -------------------------------------------------------------- /proc/<pid>/exe
@pytest.mark.parametrize("how", ["python-m", "launcher"])
def test_runtime_interpreter_cannot_be_opened_for_writing_from_a_container(
        runtime: Runtime, tmp_path: Path, how: str) -> None:
    """CVE-2019-5736: /proc/1/exe of a created container's init is the runtime's
    interpreter.  Even with CAP_SYS_PTRACE and CAP_DAC_OVERRIDE, opening it for writing
    must fail because the file cannot be written (EROFS), not merely because it is
    running right now (ETXTBSY: it could be written once it is not)."""
    if how == "launcher":
        runtime.argv = built_launcher(tmp_path)
    cid = runtime.create(runtime.bundle())
    pid = runtime.pid(cid)
    assert exe_is_sealed(f"/proc/{pid}/exe")
    r = runtime("exec", "--cap", "CAP_SYS_PTRACE", "--cap", "CAP_DAC_OVERRIDE", cid,
                "sh", "-c", "exec 3<>/proc/1/exe && echo OPENED-FOR-WRITING")
    assert b"OPENED-FOR-WRITING" not in r.stdout
    assert b"Read-only file system" in r.stderr, r.stderr


def test_launcher_seals_without_a_second_interpreter_start(runtime: Runtime,
                                                          tmp_path: Path) -> None:
    runtime.argv = built_launcher(tmp_path)
    cid = runtime.new_id()
    r = runtime("--debug", "create", "--bundle", str(runtime.bundle()), cid)
    assert r.returncode == 0, r.stderr
    assert b"re-executing" not in r.stderr
    assert exe_is_sealed(f"/proc/{runtime.pid(cid)}/exe")


# --------------------------------------------------- settings that change the host
def test_empty_hostname_without_uts_namespace_leaves_the_hosts(runtime: Runtime) -> None:
    before = socket.gethostname()

    def edit(spec: dict) -> None:
        spec["hostname"] = ""
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "uts"]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0
    assert r.stderr.strip().endswith(b"(add it to linux.namespaces)"), r.stderr
    assert socket.gethostname() == before
    _no_leftovers(runtime, cid)


@pytest.mark.parametrize("key,ns,value", [
    ("fs.mqueue.queues_max", "ipc", "77"),
    ("net.ipv4.ping_group_range", "network", "1 1"),
])
def test_sysctl_of_a_namespace_shared_with_the_host_is_refused(
        runtime: Runtime, key: str, ns: str, value: str) -> None:
    proc = "/proc/sys/" + key.replace(".", "/")
    before = Path(proc).read_text()

    def edit(spec: dict) -> None:
        spec["linux"]["sysctl"] = {key: value}
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != ns]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0
    assert f"linux.sysctl.{key}".encode() in r.stderr
    assert Path(proc).read_text() == before
    _no_leftovers(runtime, cid)


def test_setting_in_a_joined_namespace_that_is_the_runtimes_own_is_refused(
        runtime: Runtime) -> None:
    before = socket.gethostname()

    def edit(spec: dict) -> None:
        spec["hostname"] = "not-the-host"
        for n in spec["linux"]["namespaces"]:
            if n["type"] == "uts":
                n["path"] = "/proc/self/ns/uts"
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0
    assert b"is the runtime's own" in r.stderr, r.stderr
    assert socket.gethostname() == before
    _no_leftovers(runtime, cid)


def test_hostname_is_set_in_a_joined_uts_namespace(runtime: Runtime) -> None:
    owner = runtime.create(runtime.bundle())
    owner_pid = runtime.pid(owner)

    def edit(spec: dict) -> None:
        spec["hostname"] = "joined-name"
        for n in spec["linux"]["namespaces"]:
            if n["type"] == "uts":
                n["path"] = f"/proc/{owner_pid}/ns/uts"
    runtime.create(runtime.bundle(edit=edit))
    r = runtime("exec", owner, "cat", "/proc/sys/kernel/hostname")
    assert r.stdout.strip() == b"joined-name", r.stderr
    assert json.loads(json.dumps(socket.gethostname())) != "joined-name"


# ----------------------------------------------------------- mount destinations
_SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = (os.fsencode(p) for p in sys.argv[1:3])
print("ready", flush=True)
while True:  # RENAME_EXCHANGE: the directory and the symlink trade places, atomically
    libc.renameat2(-100, a, -100, b, 2)
"""


def _tmpfs_mounts_of(pid: int, source: str) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split()[4] for line in f if f" - tmpfs {source} " in line]


def test_mount_destination_swapped_for_a_symlink_stays_in_the_rootfs(
        runtime: Runtime, tmp_path: Path) -> None:
    """CVE-2021-30465: while create runs, a directory on the mount destinations' path
    keeps trading places with a symlink to a host directory.  Every tmpfs must still
    be mounted inside the container (a mount that landed outside the rootfs is gone
    after pivot_root), and nothing may be created in the host directory."""
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    bundle = runtime.bundle(own_rootfs=True, edit=lambda spec: spec["mounts"].extend(
        {"destination": f"/race/m{i}", "type": "tmpfs", "source": "race-tmpfs",
         "options": ["size=64k"]} for i in range(8)))
    rootfs = bundle / "rootfs"
    (rootfs / "race").mkdir()
    (rootfs / "race-alt").symlink_to(host_dir)
    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(rootfs / "race"),
                                str(rootfs / "race-alt")], stdout=subprocess.PIPE)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"ready\n"
        for _ in range(25):
            cid = runtime.new_id()
            r = runtime("create", "--bundle", str(bundle), cid)
            if r.returncode == 0:
                mounted = _tmpfs_mounts_of(runtime.pid(cid), "race-tmpfs")
                assert len(mounted) == 8, f"mounts outside the rootfs: {mounted}"
            else:  # a lost race may fail the create, cleanly and in one line
                assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert list(host_dir.iterdir()) == [], "created through the symlink"
            runtime("delete", "--force", cid)
    finally:
        swapper.kill()
        swapper.wait()


def test_mount_destination_through_an_absolute_symlink_lands_inside(
        runtime: Runtime, tmp_path: Path) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    bundle = runtime.bundle(own_rootfs=True, edit=lambda spec: spec["mounts"].append(
        {"destination": "/escape/sub", "type": "tmpfs", "source": "escape-tmpfs"}))
    (bundle / "rootfs" / "escape").symlink_to(host_dir)
    cid = runtime.create(bundle)
    assert _tmpfs_mounts_of(runtime.pid(cid), "escape-tmpfs") == [f"{host_dir}/sub"]
    assert list(host_dir.iterdir()) == []
    assert (bundle / "rootfs" / str(host_dir).lstrip("/") / "sub").is_dir()


# ------------------------------------------- names swapped before masking (runc's 2025 CVEs)
def _swap_in_create_container_hook(spec: dict, name: str, target: str) -> None:
    """A createContainer hook (in the container's mount namespace, before pivot_root)
    makes ROOT/name a symlink to `target`, as a process sharing the container's /dev
    could race to do."""
    link = f"{spec['root']['path']}/{name}"
    spec["hooks"] = {"createContainer": [{"path": "/bin/sh", "args": [
        "sh", "-c", f"rm -f {link}; ln -s {target} {link}"]}]}


def test_masking_with_a_dev_null_swapped_for_a_symlink_is_refused(runtime: Runtime) -> None:
    """Bound by name, the symlink would put a writable core_pattern where /proc/keys'
    mask belongs (CVE-2025-31133); the null device is opened and checked instead."""
    bundle = runtime.bundle(["true"], edit=lambda s: _swap_in_create_container_hook(
        s, "dev/null", "/proc/sys/kernel/core_pattern"))
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid)
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert "/dev/null in the container is not the null device" in err, err
    assert len(err.strip().splitlines()) == 1, err
    _no_leftovers(runtime, cid)


def test_masked_files_are_the_null_device(runtime: Runtime) -> None:
    """What the mask of a file is, seen from inside: the 1:3 device, empty, unwritable."""
    assert Path("/proc/timer_list").read_text(), "the host's file has content to hide"
    bundle = runtime.bundle(["sh", "-c", "stat -c '%t:%T' /proc/timer_list; "
                             "wc -c < /proc/timer_list; "
                             "grep -c ' /proc/timer_list ' /proc/self/mountinfo"])
    cid = runtime.new_id()
    runtime.created.append(cid)
    r = runtime("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["1:3", "0", "1"], r.stdout.decode()


def test_console_swapped_for_a_symlink_is_refused(runtime: Runtime) -> None:
    """Bound by name, the pty would land on whatever /dev/console points at (runc's
    CVE-2025-52565 class); ocirun binds the pty's own fd onto a /dev/console opened
    without following links, and refuses a symlink."""
    sock_path = runtime.work / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        def edit(spec: dict) -> None:
            spec["process"]["terminal"] = True
            _swap_in_create_container_hook(spec, "dev/console", "/proc/sys/kernel/core_pattern")
        bundle = runtime.bundle(["true"], edit=edit)
        cid = runtime.new_id()
        r = runtime("create", "--bundle", str(bundle), "--console-socket", str(sock_path), cid)
    finally:
        listener.close()
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert "/dev/console in the container is not a file or a device" in err, err
    _no_leftovers(runtime, cid)


def test_sysctl_write_is_not_sent_elsewhere_by_a_mount_over_its_file(
        runtime: Runtime) -> None:
    """A bind mount put over /proc/sys/kernel/domainname (here of the container's own
    hostname file; in CVE-2025-52881, of a host-wide file) would take the sysctl's write:
    the file is opened without crossing a mount, so create fails instead."""
    def edit(spec: dict) -> None:
        proc = f"{spec['root']['path']}/proc/sys/kernel"
        spec["linux"]["sysctl"] = {"kernel.domainname": "redirected"}
        mount = shutil.which("mount")
        assert mount is not None
        spec["hooks"] = {"createContainer": [{"path": mount, "args": [
            "mount", "--bind", f"{proc}/hostname", f"{proc}/domainname"]}]}
    bundle = runtime.bundle(["true"], edit=edit)
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(bundle), cid)
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert "sysctl kernel.domainname" in err and "cross-device" in err, err
    _no_leftovers(runtime, cid)


def test_sysctl_and_oom_score_adj_still_land(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["linux"]["sysctl"] = {"kernel.domainname": "ocirun.test"}
        spec["process"]["oomScoreAdj"] = 123
    bundle = runtime.bundle(["sh", "-c", "cat /proc/sys/kernel/domainname "
                             "/proc/self/oom_score_adj"], edit=edit)
    cid = runtime.new_id()
    runtime.created.append(cid)
    r = runtime("run", "--bundle", str(bundle), cid)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["ocirun.test", "123"]
