"""Fixtures for tests that run real containers.

`runtime` drives ocirun through its CLI with a private state root; every container a
test creates is deleted with --force at teardown, pass or fail, and the test fails if
anything (state dir, cgroup) is left behind.  Containers use a relative cgroupsPath, so
their cgroups nest under the test session's own cgroup.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# hypothesis keeps its examples and constants out of the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      os.path.join(tempfile.gettempdir(), "ocirun-hypothesis"))

from ocirun.specgen import default_spec  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs shared by the session (containers mount it read-only)."""
    dest = tmp_path_factory.mktemp("busybox")
    subprocess.run([str(REPO / "bundles" / "build-busybox.sh"), str(dest)], check=True,
                   stdout=subprocess.DEVNULL)
    return dest / "rootfs"


def base_config(rootfs: Path, args: list[str], cgroup: str) -> dict[str, Any]:
    spec = default_spec()
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["linux"]["cgroupsPath"] = cgroup
    return spec


class Runtime:
    """ocirun (or another runtime binary) with a private --root, plus bookkeeping."""

    def __init__(self, root: Path, work: Path, rootfs: Path, argv: list[str]) -> None:
        self.root = root
        self.work = work
        self.rootfs = rootfs
        self.argv = argv
        self.created: list[str] = []
        self.cgroup_prefix = f"ocirun-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 30,
                 env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
        cmd = [*self.argv, "--root", str(self.root), *args]
        # Files, not pipes: a created container keeps the runtime's stdio open, so
        # waiting for EOF on a pipe would wait for the container.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            if input is not None:
                kw.setdefault("input", input)
            elif "stdin" not in kw:
                kw["stdin"] = subprocess.DEVNULL
            r = subprocess.run(cmd, stdout=out, stderr=err, timeout=timeout,
                               env=env if env is not None else _env(), **kw)
            out.seek(0)
            err.seek(0)
            r.stdout, r.stderr = out.read(), err.read()
        return r

    def new_id(self, name: str = "c") -> str:
        cid = f"{name}-{uuid.uuid4().hex[:8]}"
        self.created.append(cid)
        return cid

    def bundle(self, args: list[str] | None = None,
               edit: Callable[[dict[str, Any]], None] | None = None,
               own_rootfs: bool = False, config: dict[str, Any] | None = None) -> Path:
        """A bundle dir whose config runs `args` (default: sleep) in the busybox rootfs."""
        path = self.work / f"bundle-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        rootfs = self.rootfs
        if own_rootfs:
            rootfs = path / "rootfs"
            shutil.copytree(self.rootfs, rootfs, symlinks=True)
        spec = copy.deepcopy(config) if config is not None else base_config(
            rootfs, args or ["sleep", "1000"], f"{self.cgroup_prefix}-{path.name}")
        if edit:
            edit(spec)
        (path / "config.json").write_text(json.dumps(spec))
        return path

    def create(self, bundle: Path, cid: str | None = None, *extra: str) -> str:
        cid = cid or self.new_id()
        if cid not in self.created:
            self.created.append(cid)
        r = self("create", "--bundle", str(bundle), *extra, cid)
        assert r.returncode == 0, r.stderr.decode()
        return cid

    def state(self, cid: str) -> dict[str, Any]:
        r = self("state", cid)
        assert r.returncode == 0, r.stderr.decode()
        return json.loads(r.stdout)

    def pid(self, cid: str) -> int:
        return int(self.state(cid)["pid"])

    def wait_status(self, cid: str, status: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(cid)["status"] == status:
                return
            time.sleep(0.02)
        raise AssertionError(f"{cid} never reached {status}: {self.state(cid)}")

    def cleanup(self) -> None:
        for cid in self.created:
            self("delete", "--force", cid)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


OCIRUN = [sys.executable, "-m", "ocirun"]


def built_launcher(tmp_path: Path) -> list[str]:
    """ocirun through its installed launcher, built from this checkout."""
    path = tmp_path / "ocirun-launcher"
    subprocess.run([sys.executable, "-m", "ocirun.launcher", str(path)], check=True,
                   cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})
    return [str(path)]


@pytest.fixture
def runtime(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Runtime]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    rt = Runtime(tmp_path / "state", tmp_path, busybox_rootfs, OCIRUN)
    try:
        yield rt
    finally:
        rt.cleanup()
    leftovers = [p.name for p in rt.root.iterdir()
                 if not p.name.startswith(".")] if rt.root.exists() else []
    assert not leftovers, f"state dirs left behind: {leftovers}"
    cg = _cgroup_leftovers(rt.cgroup_prefix)
    assert not cg, f"cgroups left behind: {cg}"


def _cgroup_leftovers(prefix: str) -> list[str]:
    found = []
    with open("/proc/self/cgroup") as f:
        own = [line.rstrip("\n").split(":", 2) for line in f]
    for _num, controllers, path in own:
        if controllers.startswith("name="):
            base = f"/sys/fs/cgroup/{controllers[5:]}"
        elif controllers == "":
            base = "/sys/fs/cgroup/unified" if os.path.isdir(
                "/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
        else:
            base = f"/sys/fs/cgroup/{controllers.split(',')[0]}"
        found.extend(glob.glob(f"{base}{path.rstrip('/')}/{prefix}*"))
    return found


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# ------------------------------------------------------------------ loud skips
# The test command (tests/run.sh) sets OCIRUN_EXPECTED_SKIPS to a file of
# "nodeid-prefix | why it is expected" lines: a skip it does not list fails the run,
# so a missing root, engine or guest never passes quietly.
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(
            report.longrepr)
        _skips.append((report.nodeid, reason))


def _expected_skips() -> list[str] | None:
    path = os.environ.get("OCIRUN_EXPECTED_SKIPS")
    if not path:
        return None
    with open(path) as f:
        return [line.split("|", 1)[0].strip() for line in f
                if line.strip() and not line.startswith("#")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    expected = _expected_skips()
    if expected is None:
        return
    unexpected = [(n, r) for n, r in _skips if not any(n.startswith(e) for e in expected)]
    if unexpected:
        session.config._ocirun_unexpected_skips = unexpected  # type: ignore[attr-defined]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    unexpected = getattr(config, "_ocirun_unexpected_skips", [])
    if unexpected:
        terminalreporter.section("unexpected skips (not in OCIRUN_EXPECTED_SKIPS)")
        for nodeid, reason in unexpected:
            terminalreporter.line(f"{nodeid}: {reason}")
