"""The order and flags of the kernel calls behind capabilities, credentials, the
rootfs and pivot_root, recorded by a fake of ocirun.sys (tests/fake_kernel.py): no
root, no mount, nothing changes on the host.  The real effects are tested with real
containers elsewhere (test_process.py, test_rootfs.py); these pin the sequence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ocirun import caps, rootfs
from ocirun import sys as ksys
from ocirun.spec import parse_spec
from ocirun.specgen import default_spec
from fake_kernel import FakeKernel, kernel  # noqa: F401 - the fixture

CAP_NET_BIND_SERVICE, CAP_KILL, CAP_CHOWN = 10, 5, 0


def _spec(tmp_path: Path, **edits: Any) -> Any:
    raw = default_spec()
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    raw["root"] = {"path": str(tmp_path / "rootfs"), "readonly": True}
    for key, value in edits.items():
        raw[key] = value
    return parse_spec(raw, str(tmp_path))


def test_credentials_and_capabilities_in_order(kernel: FakeKernel, tmp_path: Path) -> None:
    process = _spec(tmp_path).process.replace(no_new_privileges=True)
    user = process.user.replace(uid=1000, gid=1000, additional_gids=(27,))
    capabilities = process.capabilities.replace(
        bounding=("CAP_KILL", "CAP_NET_BIND_SERVICE"), effective=("CAP_KILL",),
        permitted=("CAP_KILL", "CAP_NET_BIND_SERVICE"), inheritable=("CAP_NET_BIND_SERVICE",),
        ambient=("CAP_NET_BIND_SERVICE", "CAP_KILL"))
    caps.apply(process.replace(user=user, capabilities=capabilities))
    names = kernel.names()
    drops = [c[1] for c in kernel.of("prctl") if c[0] == ksys.PR_CAPBSET_DROP]
    # every capability but the two bounding ones leaves the bounding set, first
    assert CAP_KILL not in drops and CAP_NET_BIND_SERVICE not in drops and CAP_CHOWN in drops
    assert names[:len(drops)] == ["prctl"] * len(drops)
    rest = kernel.calls[len(drops):]
    assert rest[0] == ("prctl", ksys.PR_SET_KEEPCAPS, 1)
    # groups, then the gid, then the uid: after setresuid the gid could not change
    assert rest[1:4] == [("setgroups", [27]), ("setresgid", 1000), ("setresuid", 1000)]
    assert rest[4][0] == "set_capabilities"
    assert (rest[4][1], rest[4][2], rest[4][3]) == (
        {CAP_KILL}, {CAP_KILL, CAP_NET_BIND_SERVICE}, {CAP_NET_BIND_SERVICE})
    assert rest[5] == ("prctl", ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_CLEAR_ALL)
    # ambient: only what is permitted and inheritable (CAP_KILL is not inheritable)
    assert rest[6] == ("prctl", ksys.PR_CAP_AMBIENT, ksys.PR_CAP_AMBIENT_RAISE,
                       CAP_NET_BIND_SERVICE)
    assert rest[7:] == [("prctl", ksys.PR_SET_KEEPCAPS, 0),
                        ("prctl", ksys.PR_SET_NO_NEW_PRIVS, 1)]


def test_no_capabilities_means_five_empty_sets(kernel: FakeKernel, tmp_path: Path) -> None:
    process = _spec(tmp_path).process.replace(capabilities=None, no_new_privileges=False)
    caps.apply(process, setgroups_allowed=False)
    (sets,) = kernel.of("set_capabilities")
    assert sets[:3] == (set(), set(), set())
    assert "setgroups" not in kernel.names()
    assert ("prctl", ksys.PR_SET_NO_NEW_PRIVS, 1) not in kernel.calls


def test_rootfs_mounts_resolved_inside_the_rootfs_in_config_order(
        kernel: FakeKernel, tmp_path: Path) -> None:
    # (not the cgroup mount: its read-only remount checks that the kernel made a new
    # mount, which a fake cannot)
    spec = _spec(tmp_path, mounts=[m for m in default_spec()["mounts"] if m["type"] != "cgroup"])
    root = spec.root.path
    rootfs.prepare_root(spec)
    assert kernel.calls[0] == ("mount", None, "/", None, ksys.MS_SLAVE | ksys.MS_REC)
    assert kernel.calls[-1] == ("mount", root, root, None, ksys.MS_BIND | ksys.MS_REC)
    kernel.calls.clear()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        rootfs.mount_all(spec, str(tmp_path), root_fd)
    finally:
        os.close(root_fd)
    firsts = []
    for call in kernel.of("mount"):
        source, target, fstype, flags = call[:4]
        assert target.startswith(root + "/"), call  # never outside the rootfs
        if not flags & ksys.MS_REMOUNT:
            firsts.append((os.path.relpath(target, root), fstype))
    wanted = [(m.destination.lstrip("/"), m.type) for m in spec.mounts]
    assert [f for f in firsts] == wanted
    sysfs = [c[3] for c in kernel.of("mount") if c[1] == os.path.join(root, "sys")]
    hardened = ksys.MS_NOSUID | ksys.MS_NODEV | ksys.MS_NOEXEC
    assert sysfs and all(flags & hardened == hardened for flags in sysfs), sysfs
    assert any(flags & ksys.MS_RDONLY for flags in sysfs), sysfs
    # the destinations exist now, as directories made beneath the rootfs
    assert all((Path(root) / d).is_dir() for d, _ in wanted)


@pytest.mark.parametrize("propagation, scans", [
    (None, False), ("rslave", False), ("rprivate", False), ("runbindable", False),
    ("slave", True), ("private", True), ("shared", True), ("rshared", True)])
def test_parent_mount_scan_only_where_a_mount_can_stay_shared(
        kernel: FakeKernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        propagation: str | None, scans: bool) -> None:
    """A recursive slave/private / leaves nothing shared for pivot_root to refuse: the
    scan of mountinfo (and its private remount) is for the other propagations."""
    scanned: list[str] = []
    monkeypatch.setattr(rootfs, "_make_parent_mount_private", scanned.append)
    linux = default_spec()["linux"]
    if propagation is not None:
        linux["rootfsPropagation"] = propagation
    spec = _spec(tmp_path, linux=linux)
    rootfs.prepare_root(spec)
    assert scanned == ([spec.root.path] if scans else [])


def test_a_symlinked_destination_cannot_leave_the_rootfs(kernel: FakeKernel,
                                                         tmp_path: Path) -> None:
    """/data -> an absolute host path is followed inside the rootfs (RESOLVE_IN_ROOT):
    the mount lands beneath the rootfs, and nothing is made or mounted on the host."""
    outside = tmp_path / "outside"
    outside.mkdir()
    spec = _spec(tmp_path, mounts=[{"destination": "/data/sub", "type": "tmpfs",
                                    "source": "tmpfs"}])
    os.symlink(str(outside), os.path.join(spec.root.path, "data"))
    root_fd = os.open(spec.root.path, os.O_PATH | os.O_DIRECTORY)
    try:
        rootfs.mount_all(spec, str(tmp_path), root_fd)
    finally:
        os.close(root_fd)
    (call,) = kernel.of("mount")
    assert call[1] == os.path.join(spec.root.path, str(outside).lstrip("/"), "sub"), call
    assert list(outside.iterdir()) == []


def test_pivot_root_then_the_old_root_is_detached(kernel: FakeKernel, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # pivot() changes directory: give it back afterwards
    rootfs.pivot(str(tmp_path), no_pivot=False)
    assert kernel.calls == [("pivot_root", ".", "."),
                            ("mount", None, ".", None, ksys.MS_SLAVE | ksys.MS_REC),
                            ("umount2", ".", ksys.MNT_DETACH)]


class _Channel:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, msg: Any, fds: list[int] | None = None) -> None:
        self.log.append(f"send {msg.KIND}")

    def expect(self, *types: type) -> tuple[Any, list[int]]:
        from ocirun.sync import Go
        self.log.append("expect go")
        return Go(state={"pid": 1}), []

    def close(self) -> None:
        self.log.append("close")


@pytest.mark.parametrize("hooks", [False, True])
def test_the_init_sequence(kernel: FakeKernel, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, hooks: bool) -> None:
    """The init's steps between fork and the exec fifo, in order: the rootfs is built
    and entered before anything of the process is set up, sysctls go in before the
    read-only paths cover /proc/sys, and the credentials and capabilities come last,
    after every step that needs the runtime's privileges.  With hooks the init stops
    for the runtime once its mounts are made (and gets the state for its own hooks);
    without, it does not stop."""
    from ocirun import devices, init
    log: list[str] = []

    def step(name: str, result: Any = None) -> Any:
        def record(*_a: Any, **_k: Any) -> Any:
            log.append(name)
            return result
        return record

    for mod, name, result in [
            (rootfs, "prepare_root", None), (rootfs, "open_root", os.open("/", os.O_PATH)),
            (rootfs, "mount_all", ()), (rootfs, "resolve_dir", os.open("/", os.O_PATH)),
            (rootfs, "pivot", None), (rootfs, "finish", None),
            (devices, "create_devices", None), (init, "prepare_process", None),
            (init, "exec_target", init.ExecTarget("/bin/sh", {})), (init, "_write", None),
            (init, "_write_own_proc", None), (init, "_join_session_keyring", None)]:
        monkeypatch.setattr(mod, name, step(name, result))
    monkeypatch.setattr(os, "setsid", step("setsid"))
    import _socket
    monkeypatch.setattr(_socket, "sethostname", step("sethostname"))
    spec = _spec(tmp_path, hostname="box").replace()
    spec = spec.replace(linux=spec.linux.replace(sysctl={"net.ipv4.ip_forward": "1"}))
    spec = spec.replace(process=spec.process.replace(oom_score_adj=5))
    if hooks:
        from ocirun.spec import Hook
        spec = spec.replace(hooks=spec.hooks.replace(create_runtime=(Hook(path="/bin/true"),)))
    cfg = init.InitConfig(spec=spec, bundle=str(tmp_path), exec_fifo_fd=-1,
                          session_keyring="c")
    assert init._setup(_Channel(log), cfg) == ({"pid": 1} if hooks else {},
                                               init.ExecTarget("/bin/sh", {}))
    kernel_steps = [c[0] for c in kernel.calls]
    assert kernel_steps == ["loopback_up"]
    assert log == ["setsid", "prepare_root", "open_root", "mount_all", "create_devices",
                   "resolve_dir", "sethostname",
                   *(["send hooks", "expect go"] if hooks else []), "pivot",
                   "_write", "finish", "_write_own_proc", "_join_session_keyring",
                   "prepare_process", "exec_target", "send ready", "close"]
