"""The container's filesystem: mounts, devices, pivot_root, masked/readonly paths."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import Runtime


def _run(runtime: Runtime, script: str, edit=None, own_rootfs: bool = False,
         extra: tuple[str, ...] = ()) -> str:
    bundle = runtime.bundle(["sh", "-c", script], edit=edit, own_rootfs=own_rootfs)
    r = runtime("run", "--bundle", str(bundle), *extra, runtime.new_id())
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout.decode()


def _mountinfo(text: str) -> dict[str, tuple[str, str, str]]:
    """mount point -> (per-mount options, fstype, super options)."""
    out = {}
    for line in text.splitlines():
        left, right = line.split(" - ", 1)
        fields = left.split()
        fstype, _src, super_opts = right.split()[:3]
        out[fields[4]] = (fields[5], fstype, super_opts)
    return out


def test_mountinfo_shows_the_config_mounts_and_nothing_of_the_host(runtime: Runtime) -> None:
    mounts = _mountinfo(_run(runtime, "cat /proc/self/mountinfo"))
    assert mounts["/"][0].startswith("ro")
    assert mounts["/proc"][1] == "proc"
    assert mounts["/dev"][1] == "tmpfs"
    assert mounts["/dev/pts"][1] == "devpts"
    assert mounts["/dev/shm"][1] == "tmpfs"
    assert mounts["/dev/mqueue"][1] == "mqueue"
    assert mounts["/sys"][1] == "sysfs" and mounts["/sys"][0].startswith("ro")
    assert "/sys/fs/cgroup" in mounts
    host_points = {"/work", "/tmp", "/run", "/boot", "/home"}
    assert not host_points & set(mounts)
    assert not any(p.startswith(("/tmp/", "/work/", "/root/")) for p in mounts)


def test_readonly_root(runtime: Runtime) -> None:
    out = _run(runtime, "touch /newfile 2>&1; echo rc=$?")
    assert "Read-only file system" in out and "rc=1" in out


def test_writable_root_when_not_readonly(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["root"]["readonly"] = False
    out = _run(runtime, "touch /newfile && echo ok", edit=edit, own_rootfs=True)
    assert out.strip() == "ok"


def test_masked_paths_are_unreadable(runtime: Runtime) -> None:
    out = _run(runtime, "wc -c < /proc/kcore; ls /sys/firmware | wc -l; "
                        "grep -c . /proc/timer_list 2>/dev/null || echo 0")
    kcore, firmware, timer = out.split()
    assert kcore == "0" and firmware == "0" and timer == "0"


def test_readonly_paths_are_not_writable(runtime: Runtime) -> None:
    out = _run(runtime, "(echo x > /proc/sys/kernel/hostname) 2>&1; echo rc=$?; "
                        "grep -E ' /proc/(sys|fs|irq|bus|sysrq-trigger) ' /proc/self/mountinfo")
    lines = out.splitlines()
    assert "Read-only file system" in lines[0] and lines[1] == "rc=1", out
    points = {line.split()[4]: line.split()[5] for line in lines[2:]}
    assert "/proc/sys" in points  # the others exist only on some kernels
    assert all(opts.startswith("ro,") for opts in points.values()), points


def test_mount_options_reach_the_kernel(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["mounts"].append({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev", "noexec", "noatime",
                                           "size=1m", "mode=700"]})
    mounts = _mountinfo(_run(runtime, "cat /proc/self/mountinfo", edit=edit))
    opts, fstype, super_opts = mounts["/data"]
    assert fstype == "tmpfs"
    assert {"nosuid", "nodev", "noexec", "noatime"} <= set(opts.split(","))
    assert "size=1024k" in super_opts and "mode=700" in super_opts


def test_readonly_bind_mount_of_a_host_dir(runtime: Runtime) -> None:
    shared = runtime.work / "shared"
    shared.mkdir()
    (shared / "file").write_text("from host\n")

    def edit(spec: dict) -> None:
        spec["mounts"].append({"destination": "/shared", "type": "bind",
                               "source": str(shared), "options": ["rbind", "ro"]})
    out = _run(runtime, "cat /shared/file; (echo x > /shared/new) 2>&1; echo rc=$?", edit=edit)
    assert out.startswith("from host\n") and "Read-only file system" in out
    assert not (shared / "new").exists()


def test_bind_source_relative_to_bundle_and_file_bind(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["mounts"].append({"destination": "/etc/greeting", "type": "bind",
                               "source": "greeting.txt", "options": ["bind"]})
    bundle = runtime.bundle(["cat", "/etc/greeting"], edit=edit, own_rootfs=True)
    (bundle / "greeting.txt").write_text("hi\n")
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n"


def test_symlink_in_rootfs_cannot_send_a_mount_to_the_host(runtime: Runtime) -> None:
    target = Path(f"/tmp/ocirun-escape-{os.getpid()}")
    assert not target.exists()

    def edit(spec: dict) -> None:
        spec["root"]["readonly"] = False
        spec["mounts"].append({"destination": "/evil/inner", "type": "tmpfs",
                               "source": "tmpfs", "options": []})
    bundle = runtime.bundle(["sh", "-c", "cat /proc/self/mountinfo"], edit=edit,
                            own_rootfs=True)
    (bundle / "rootfs" / "evil").symlink_to(str(target))
    r = runtime("run", "--bundle", str(bundle), runtime.new_id())
    assert r.returncode == 0, r.stderr
    mounts = _mountinfo(r.stdout.decode())
    assert str(target / "inner") in mounts  # resolved inside the rootfs
    assert not target.exists()  # nothing was created on the host
    assert (bundle / "rootfs" / str(target).lstrip("/") / "inner").is_dir()


def test_default_devices_and_symlinks(runtime: Runtime) -> None:
    out = _run(runtime, "for d in null zero full random urandom tty; do "
                        "stat -c '%n %F %t,%T %a' /dev/$d; done; "
                        "for l in fd stdin stdout stderr ptmx; do readlink /dev/$l; done")
    lines = out.splitlines()
    assert lines[0] == "/dev/null character special file 1,3 666"
    assert lines[1] == "/dev/zero character special file 1,5 666"
    assert lines[5] == "/dev/tty character special file 5,0 666"
    assert lines[6:] == ["/proc/self/fd", "/proc/self/fd/0", "/proc/self/fd/1",
                         "/proc/self/fd/2", "pts/ptmx"]


def test_linux_devices_are_created(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["linux"]["devices"] = [{"type": "c", "path": "/dev/fuse", "major": 10,
                                     "minor": 229, "fileMode": 0o640, "uid": 7, "gid": 8}]
    out = _run(runtime, "stat -c '%F %t,%T %a %u %g' /dev/fuse", edit=edit)
    assert out.strip() == "character special file a,e5 640 7 8"


def test_no_pivot(runtime: Runtime) -> None:
    out = _run(runtime, "cat /proc/self/mountinfo; ls /", extra=("--no-pivot",))
    assert "bin" in out.split()


def test_rootfs_propagation_private(runtime: Runtime) -> None:
    def edit(spec: dict) -> None:
        spec["linux"]["rootfsPropagation"] = "shared"
    text = _run(runtime, "cat /proc/self/mountinfo", edit=edit)
    root_line = [line for line in text.splitlines() if line.split()[4] == "/"][0]
    assert "shared:" in root_line.split(" - ")[0]


@pytest.mark.parametrize("propagation", ["rslave", "slave", "private"])
def test_rootfs_beneath_a_shared_mount(runtime: Runtime, tmp_path: Path,
                                       propagation: str) -> None:
    """pivot_root refuses a new root whose parent mount is shared.  The runtime runs in
    a private mount namespace of the test's own, where the rootfs is bound beneath a
    shared tmpfs: a recursive propagation leaves nothing shared, a non-recursive one
    leaves the parent shared for the runtime to make private in the container's."""
    shared = tmp_path / "shared"
    shared.mkdir()

    def edit(spec: dict) -> None:
        spec["linux"]["rootfsPropagation"] = propagation
        spec["root"]["path"] = str(shared / "rootfs")
    bundle = runtime.bundle(["sh", "-c", "cat /proc/self/mountinfo"], edit=edit)
    cmd = " ".join([*runtime.argv, "--root", str(runtime.root), "run", "--bundle",
                    str(bundle), runtime.new_id()])
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs shared {shared} && mount --make-shared {shared} && "
         f"mkdir {shared}/rootfs && mount --bind {runtime.rootfs} {shared}/rootfs && "
         f"grep -q ' {shared} .*shared:' /proc/self/mountinfo && exec {cmd}"],
        capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    root_line = [line for line in r.stdout.decode().splitlines() if line.split()[4] == "/"]
    assert root_line and "shared:" not in root_line[0].split(" - ")[0]
