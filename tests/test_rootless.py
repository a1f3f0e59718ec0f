"""Rootless: `ocirun spec --rootless` run by an unprivileged user the test creates.

The suite runs as root; these tests make a system user, give it a copy of the rootfs
and an XDG_RUNTIME_DIR, and drive ocirun as that user.  The interpreter the suite runs
on may be unreadable to it (pyenv under /root): then the system python3 of the same
version runs ocirun, with python-prctl's C module copied where the user can read it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO, proc_status

USER = "ocirun-rootless"


@dataclass
class Rootless:
    uid: int
    gid: int
    home: Path  # owned by the user: bundles, rootfs, run dir
    python: str
    pythonpath: str
    created: list[str]

    @property
    def xdg(self) -> Path:
        return self.home / "run"

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home),
                "XDG_RUNTIME_DIR": str(self.xdg), "PYTHONPATH": self.pythonpath,
                "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}

    def run(self, *args: str, cwd: Path | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            r = subprocess.run([self.python, "-m", "ocirun", *args], user=self.uid,
                               group=self.gid, extra_groups=[], env=self.env(),
                               cwd=str(cwd or self.home), stdin=subprocess.DEVNULL,
                               stdout=out, stderr=err, timeout=timeout)
            out.seek(0)
            err.seek(0)
            r.stdout, r.stderr = out.read(), err.read()
        return r

    def new_id(self) -> str:
        cid = f"rl-{os.urandom(4).hex()}"
        self.created.append(cid)
        return cid

    def bundle(self, args: list[str], edit: Any = None) -> Path:
        """A bundle from `ocirun spec --rootless`, written by the user itself."""
        path = Path(tempfile.mkdtemp(prefix="bundle-", dir=self.home))
        os.chown(path, self.uid, self.gid)
        r = self.run("spec", "--rootless", cwd=path)
        assert r.returncode == 0, r.stderr.decode()
        spec = json.loads((path / "config.json").read_text())
        spec["root"]["path"] = str(self.home / "rootfs")
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        if edit:
            edit(spec)
        (path / "config.json").write_text(json.dumps(spec))
        return path


def _ensure_user() -> tuple[int, int, bool]:
    try:
        pw = pwd.getpwnam(USER)
        return pw.pw_uid, pw.pw_gid, False
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", USER], check=True)
    pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid, True


def _can_import(python: str, pythonpath: str, uid: int, gid: int) -> str:
    """'' if the user can run ocirun with this interpreter, else why not."""
    try:
        r = subprocess.run([python, "-c", "import ocirun.cli, ocirun.init"],
                           user=uid, group=gid, extra_groups=[], capture_output=True,
                           env={"PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"},
                           cwd="/", timeout=30)
    except OSError as e:
        return str(e)
    return "" if r.returncode == 0 else r.stderr.decode().strip().splitlines()[-1]


@pytest.fixture(scope="session")
def rootless(busybox_rootfs: Path) -> Iterator[Rootless]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create the unprivileged test user")
    if not os.access(REPO, os.R_OK | os.X_OK) or (os.stat(REPO).st_mode & 0o005) != 0o005:
        pytest.skip(f"the repository {REPO} is not readable by other users")
    uid, gid, made = _ensure_user()
    home = Path(tempfile.mkdtemp(prefix="ocirun-rootless-"))
    try:
        os.chown(home, uid, gid)
        home.chmod(0o700)
        (home / "run").mkdir(mode=0o700)
        os.chown(home / "run", uid, gid)
        python, pythonpath = sys.executable, str(REPO)
        why = _can_import(python, pythonpath, uid, gid)
        if why:
            # e.g. pyenv under /root (mode 0700): the system interpreter of the same
            # version (ocirun needs no compiled module of its dependencies to run).
            system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
            python, pythonpath = system, str(REPO)
            second = _can_import(python, pythonpath, uid, gid) if os.path.exists(
                system) else f"{system} does not exist"
            if second:
                pytest.skip(f"no interpreter usable by {USER}: {sys.executable}: {why}; "
                            f"{system}: {second}")
        shutil.copytree(busybox_rootfs, home / "rootfs", symlinks=True)
        subprocess.run(["chown", "-R", "-h", f"{uid}:{gid}", str(home / "rootfs")],
                       check=True)
        rl = Rootless(uid, gid, home, python, pythonpath, [])
        yield rl
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if made:
            subprocess.run(["userdel", USER], check=False)


@pytest.fixture
def rl(rootless: Rootless) -> Iterator[Rootless]:
    rootless.created = []
    try:
        yield rootless
    finally:
        for cid in rootless.created:
            rootless.run("delete", "--force", cid)
    state_root = rootless.xdg / "ocirun"
    left = [p.name for p in state_root.iterdir() if not p.name.startswith(".")] \
        if state_root.exists() else []
    assert not left, f"state dirs left behind: {left}"


def test_rootless_spec_runs_as_root_of_a_single_id_mapping(rl: Rootless) -> None:
    bundle = rl.bundle(["sh", "-c", "id; cat /proc/self/uid_map /proc/self/gid_map; "
                        "cat /proc/self/setgroups"])
    r = rl.run("run", "--bundle", str(bundle), rl.new_id())
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().split("\n")
    assert out[0].startswith("uid=0(root) gid=0(root)")
    assert out[1].split() == ["0", str(rl.uid), "1"]
    assert out[2].split() == ["0", str(rl.gid), "1"]
    assert out[3] == "deny"  # the kernel's price for an unprivileged gid_map


def test_rootless_state_lives_under_xdg_runtime_dir(rl: Rootless) -> None:
    cid = rl.new_id()
    r = rl.run("create", "--bundle", str(rl.bundle(["sleep", "1000"])), cid)
    assert r.returncode == 0, r.stderr.decode()
    state_dir = rl.xdg / "ocirun" / cid
    assert (state_dir / "state.json").exists()
    assert state_dir.stat().st_uid == rl.uid
    stored = json.loads((state_dir / "state.json").read_text())
    assert stored["cgroup"] == {}  # not writable, no cgroupsPath: none, as runc does
    state = json.loads(rl.run("state", cid).stdout)
    assert state["status"] == "created"
    pid = state["pid"]
    status = proc_status(pid)
    assert status["Uid"].split() == [str(rl.uid)] * 4
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    assert rl.run("start", cid).returncode == 0
    assert json.loads(rl.run("state", cid).stdout)["status"] == "running"
    assert rl.run("kill", cid, "KILL").returncode == 0
    r = rl.run("delete", "--force", cid)
    assert r.returncode == 0, r.stderr.decode()
    assert not state_dir.exists()


def test_rootless_mounts_proc_sys_and_devpts(rl: Rootless) -> None:
    bundle = rl.bundle(["sh", "-c", "cat /proc/self/mountinfo; echo x > /dev/null; "
                        "ls /sys/kernel > /dev/null && echo sys-ok"])
    r = rl.run("run", "--bundle", str(bundle), rl.new_id())
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode()
    points = {line.split()[4]: line for line in text.splitlines() if " - " in line}
    assert " - proc " in points["/proc"]
    assert " - devpts " in points["/dev/pts"]
    assert "ro" in points["/sys"].split()[5].split(",")  # bound from the host, read-only
    assert "/dev/null" in points  # bound: mknod is refused in a user namespace
    assert "sys-ok" in text


def test_rootless_terminal_over_a_console_socket(rl: Rootless) -> None:
    path = rl.home / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chown(path, rl.uid, rl.gid)
        listener.listen(1)
        listener.settimeout(10)

        def edit(spec: dict[str, Any]) -> None:
            spec["process"]["terminal"] = True
        cid = rl.new_id()
        r = rl.run("create", "--bundle", str(rl.bundle(["sh", "-c", "tty"], edit)),
                   "--console-socket", str(path), cid)
        assert r.returncode == 0, r.stderr.decode()
        conn, _ = listener.accept()
        with conn:
            _name, fds, _f, _a = socket.recv_fds(conn, 4096, 1)
        master = fds[0]
        try:
            assert rl.run("start", cid).returncode == 0
            import select
            out = b""
            while b"\n" not in out and select.select([master], [], [], 10)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break
            assert out.startswith(b"/dev/pts/0"), out
        finally:
            os.close(master)
    finally:
        listener.close()


def test_rootless_mapping_of_other_ids_is_a_clear_error(rl: Rootless) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000,
                                         "size": 65536}]
    cid = rl.new_id()
    r = rl.run("create", "--bundle", str(rl.bundle(["true"], edit)), cid)
    assert r.returncode != 0
    assert b"linux.uidMappings" in r.stderr
    assert b"newuidmap" in r.stderr or b"subuid" in r.stderr, r.stderr
    assert not (rl.xdg / "ocirun" / cid).exists()


def test_rootless_resource_limits_without_a_cgroup_are_an_error(rl: Rootless) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"] = {"pids": {"limit": 10}}
    cid = rl.new_id()
    r = rl.run("create", "--bundle", str(rl.bundle(["true"], edit)), cid)
    assert r.returncode != 0 and b"rootless" in r.stderr, r.stderr
    assert not (rl.xdg / "ocirun" / cid).exists()


def test_rootless_explicit_cgroups_path_it_cannot_write_is_an_error(rl: Rootless) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["cgroupsPath"] = f"/ocirun-rootless-{os.urandom(3).hex()}"
    cid = rl.new_id()
    r = rl.run("create", "--bundle", str(rl.bundle(["true"], edit)), cid)
    assert r.returncode != 0 and b"cgroups" in r.stderr
    assert b"permission denied" in r.stderr.lower()
    assert not (rl.xdg / "ocirun" / cid).exists()


def test_rootless_cannot_use_the_system_state_root(rl: Rootless) -> None:
    r = rl.run("--root", "/run/ocirun-rootless-test", "run", "--bundle",
               str(rl.bundle(["true"])), rl.new_id())
    assert r.returncode != 0 and b"permission denied" in r.stderr.lower()
