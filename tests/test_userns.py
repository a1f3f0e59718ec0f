"""User namespaces: id maps written by the runtime, mounts that need the mapping, devices
bound instead of created, and joining an existing user namespace by path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Runtime, _env, proc_status

HOST_ID = 100000
SIZE = 65536


@pytest.fixture(scope="session")
def mapped_rootfs(busybox_rootfs: Path) -> Iterator[Path]:
    """A copy of the rootfs owned by the mapped range, in a directory the mapped root
    can reach (the pytest tmp tree is private to the host's root)."""
    top = Path(tempfile.mkdtemp(prefix="ocirun-userns-"))
    try:
        top.chmod(0o755)
        rootfs = top / "rootfs"
        shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
        subprocess.run(["chown", "-R", "-h", f"{HOST_ID}:{HOST_ID}", str(rootfs)],
                       check=True)
        yield rootfs
    finally:
        shutil.rmtree(top, ignore_errors=True)


def userns(spec: dict[str, Any], rootfs: Path, network: bool = True) -> None:
    spec["root"]["path"] = str(rootfs)
    spec["linux"]["namespaces"].append({"type": "user"})
    if not network:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": SIZE}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": SIZE}]


def mountinfo(pid: int) -> list[list[str]]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split() for line in f]


def run_output(runtime: Runtime, bundle: Path) -> str:
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_id_maps_are_written_and_the_process_is_root_inside(
        runtime: Runtime, mapped_rootfs: Path) -> None:
    cid = runtime.create(runtime.bundle(edit=lambda s: userns(s, mapped_rootfs)))
    pid = runtime.pid(cid)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}") as f:
            assert f.read().split() == ["0", str(HOST_ID), str(SIZE)]
    status = proc_status(pid)
    assert status["Uid"].split() == [str(HOST_ID)] * 4
    assert status["Gid"].split() == [str(HOST_ID)] * 4
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # root (not the mapped range) owns the namespace, and may write setgroups: allow
    with open(f"/proc/{pid}/setgroups") as f:
        assert f.read().strip() == "allow"


def test_id_inside_a_userns_container(runtime: Runtime, mapped_rootfs: Path) -> None:
    bundle = runtime.bundle(["sh", "-c", "id; stat -c %u:%g /bin/busybox; "
                             "cat /proc/self/uid_map"],
                            edit=lambda s: userns(s, mapped_rootfs))
    out = run_output(runtime, bundle)
    assert "uid=0(root) gid=0(root)" in out
    assert "0:0" in out.split()  # the rootfs owned by the mapped range is root's
    assert out.split()[-3:] == ["0", str(HOST_ID), str(SIZE)]


def test_process_user_is_mapped_into_the_host_range(runtime: Runtime,
                                                   mapped_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs)
        spec["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5]}
    cid = runtime.create(runtime.bundle(edit=edit))
    status = proc_status(runtime.pid(cid))
    assert status["Uid"].split()[0] == str(HOST_ID + 1000)
    assert status["Gid"].split()[0] == str(HOST_ID + 1000)
    assert status["Groups"].split() == [str(HOST_ID + 5)]


def test_proc_sysfs_devpts_and_cgroup_mount_in_a_userns(runtime: Runtime,
                                                         mapped_rootfs: Path) -> None:
    cid = runtime.create(runtime.bundle(edit=lambda s: userns(s, mapped_rootfs)))
    mounts = {m[4]: m for m in mountinfo(runtime.pid(cid))}
    fstype = {path: m[m.index("-") + 1] for path, m in mounts.items()}
    assert fstype["/proc"] == "proc"
    assert fstype["/sys"] == "sysfs"
    assert fstype["/dev/pts"] == "devpts"
    # gid=5 of the config is the mapped group, seen from the host
    devpts_opts = mounts["/dev/pts"][mounts["/dev/pts"].index("-") + 3]
    assert f"gid={HOST_ID + 5}" in devpts_opts.split(",")
    assert any(p.startswith("/sys/fs/cgroup") and t.startswith("cgroup")
               for p, t in fstype.items())


def test_sysfs_without_a_network_namespace_is_bound_from_the_host(
        runtime: Runtime, mapped_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs, network=False)
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    cid = runtime.create(runtime.bundle(edit=edit))
    mounts = mountinfo(runtime.pid(cid))
    sys_mount = [m for m in mounts if m[4] == "/sys"]
    assert sys_mount and "ro" in sys_mount[0][5].split(",")
    # a bind of the host's /sys is recursive: the host's submounts come along
    host_submounts = {m[4] for m in mountinfo(os.getpid()) if m[4].startswith("/sys/")}
    container_submounts = {m[4] for m in mounts if m[4].startswith("/sys/")}
    assert host_submounts and host_submounts <= container_submounts | {"/sys/firmware"}


def test_devices_are_bound_not_created_in_a_userns(runtime: Runtime,
                                                   mapped_rootfs: Path) -> None:
    bundle = runtime.bundle(["sh", "-c", "echo gone > /dev/null && head -c 4 /dev/zero "
                             "| wc -c"], edit=lambda s: userns(s, mapped_rootfs))
    assert run_output(runtime, bundle).split() == ["4"]
    cid = runtime.create(runtime.bundle(edit=lambda s: userns(s, mapped_rootfs)))
    points = {m[4] for m in mountinfo(runtime.pid(cid))}
    assert {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/tty"} <= points


def test_joining_a_user_namespace_by_path(runtime: Runtime, mapped_rootfs: Path) -> None:
    first = runtime.create(runtime.bundle(edit=lambda s: userns(s, mapped_rootfs)))
    first_pid = runtime.pid(first)
    path = f"/proc/{first_pid}/ns/user"

    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(mapped_rootfs)
        spec["linux"]["namespaces"].append({"type": "user", "path": path})
    second = runtime.create(runtime.bundle(edit=edit))
    pid = runtime.pid(second)
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink(path)
    # its other namespaces are new ones, owned by the joined user namespace
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(f"/proc/{first_pid}/ns/mnt")
    with open(f"/proc/{pid}/uid_map") as f:
        assert f.read().split() == ["0", str(HOST_ID), str(SIZE)]
    assert proc_status(pid)["Uid"].split()[0] == str(HOST_ID)
    assert runtime("start", second).returncode == 0


def test_joining_a_user_namespace_and_the_hosts_network(runtime: Runtime,
                                                        mapped_rootfs: Path) -> None:
    """The host's network namespace is not owned by the joined user namespace: it is
    joined first, with the runtime's own privileges."""
    first = runtime.create(runtime.bundle(edit=lambda s: userns(s, mapped_rootfs)))
    path = f"/proc/{runtime.pid(first)}/ns/user"
    host_net = f"/proc/{os.getpid()}/ns/net"

    def edit(spec: dict[str, Any]) -> None:
        spec["root"]["path"] = str(mapped_rootfs)
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                       if n["type"] != "network"]
        spec["linux"]["namespaces"] += [{"type": "user", "path": path},
                                        {"type": "network", "path": host_net}]
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] not in ("sysfs", "cgroup")]
    second = runtime.create(runtime.bundle(edit=edit))
    pid = runtime.pid(second)
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink(host_net)
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink(path)


def test_a_user_namespace_without_mappings_is_an_error(runtime: Runtime,
                                                       mapped_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs)
        del spec["linux"]["uidMappings"]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid)
    assert r.returncode != 0 and b"uidMappings" in r.stderr
    assert not (runtime.root / cid).exists()


def test_mappings_the_kernel_refuses_are_an_error(runtime: Runtime,
                                                  mapped_rootfs: Path) -> None:
    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs)
        # overlapping container ranges: the kernel refuses the whole map
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": HOST_ID, "size": 10},
                                        {"containerID": 5, "hostID": 200000, "size": 10}]
    cid = runtime.new_id()
    r = runtime("create", "--bundle", str(runtime.bundle(edit=edit)), cid, timeout=20)
    assert r.returncode != 0
    assert b"linux.uidMappings" in r.stderr and b"uid_map" in r.stderr
    assert not (runtime.root / cid).exists()


def test_bind_source_in_a_mode_0000_host_directory(runtime: Runtime, mapped_rootfs: Path,
                                                   tmp_path: Path) -> None:
    """The mapped root cannot walk a host directory of mode 0000 that the host's root
    can: the source is taken before the user namespace (runc succeeds here too), and
    the bind still carries its flags."""
    locked = tmp_path / "locked"
    (locked / "data").mkdir(parents=True)
    (locked / "data" / "file").write_text("seen\n")
    (locked / "one").write_text("single file\n")
    locked.chmod(0)

    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs)
        spec["mounts"] += [
            {"destination": "/mnt/data", "type": "bind", "source": str(locked / "data"),
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/mnt/one", "type": "bind", "source": str(locked / "one"),
             "options": ["bind"]}]
    script = ("cat /mnt/data/file /mnt/one; grep ' /mnt/data ' /proc/self/mountinfo; "
              "touch /mnt/data/x 2>/dev/null || echo read-only")
    try:
        out = run_output(runtime, runtime.bundle(["sh", "-c", script], edit=edit))
    finally:
        locked.chmod(0o700)
    lines = out.splitlines()
    assert lines[:2] == ["seen", "single file"], out
    assert {"ro", "nosuid"} <= set(lines[2].split()[5].split(",")), out
    assert lines[-1] == "read-only", out


def test_a_bind_keeps_its_submounts_locked(runtime: Runtime, mapped_rootfs: Path,
                                           tmp_path: Path) -> None:
    """The bind source is opened in the container's copy of the mounts, where the
    kernel locks them: root of the user namespace, even with CAP_SYS_ADMIN, cannot
    unmount a submount of the source to uncover what the host hid beneath it."""
    source = tmp_path / "source"
    (source / "covered").mkdir(parents=True)
    (source / "covered" / "secret").write_text("hidden by a mount\n")
    tmp_path.chmod(0o755)

    def edit(spec: dict[str, Any]) -> None:
        userns(spec, mapped_rootfs)
        spec["process"]["capabilities"] = {
            key: ["CAP_SYS_ADMIN"] for key in ("bounding", "effective", "permitted")}
        spec["mounts"].append({"destination": "/mnt/src", "type": "bind",
                               "source": str(source), "options": ["rbind"]})
    bundle = runtime.bundle(["sh", "-c", "umount /mnt/src/covered; "
                             "cat /mnt/src/covered/secret"], edit=edit)
    cid = runtime.new_id()
    # The covering mount is made in a mount namespace of the test's own.
    cmd = " ".join([*runtime.argv, "--root", str(runtime.root), "run", "--bundle",
                    str(bundle), cid])
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs cover {source / 'covered'} && exec {cmd}"],
                       capture_output=True, env=_env(), timeout=30)
    assert b"hidden by a mount" not in r.stdout, r.stdout
    assert r.returncode != 0
