"""Shared fixtures for the real-cgroup tests (v1 hybrid here, v2 in the guest VM).

No tests here: this module only holds helpers for test_cgroups*.py (named to match
them).

Safety rules these helpers enforce: only processes the test spawned are placed into
or killed in test cgroups (never the pytest process itself), and only directories a
manager recorded as created are removed.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from typing import Iterator

import pytest

from ocirun.cgroups import detect, manager_for
from ocirun.cgroups.base import BaseManager
from ocirun.errors import OciError
from ocirun.spec import Resources, parse_spec

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup tests need root")


def resources(data: dict) -> Resources:
    """linux.resources JSON -> the spec model (through the real parser)."""
    spec = parse_spec({"ociVersion": "1.0.2", "linux": {"resources": data}})
    assert spec.linux.resources is not None
    return spec.linux.resources


def read(m: BaseManager, controller: str, name: str) -> str:
    d = m.dir_for(controller)
    assert d is not None, f"no {controller} directory"
    with open(os.path.join(d, name)) as f:
        return f.read().strip()


def has_file(m: BaseManager, controller: str, name: str) -> bool:
    d = m.dir_for(controller)
    return d is not None and os.path.exists(os.path.join(d, name))


def require(m: BaseManager, controller: str, name: str | None = None) -> int:
    """Skip unless the host gives `controller` (and `name`) to this cgroup."""
    v = m.version_of(controller)
    if v is None:
        pytest.skip(f"host lacks the {controller} cgroup controller")
    if name is not None and not has_file(m, controller, name):
        pytest.skip(f"host lacks {name}")
    return v


class Cgroups:
    """Factory for managers and processes, undone in reverse at teardown."""

    def __init__(self) -> None:
        self.managers: list[BaseManager] = []
        self.procs: list[subprocess.Popen] = []
        self.tag = secrets.token_hex(4)

    def name(self, suffix: str = "") -> str:
        return f"ocirun-test-{self.tag}{suffix}"

    def manager(self, path: str | None = None, create: bool = True) -> BaseManager:
        m = manager_for(path if path is not None else self.name(f"-{len(self.managers)}"),
                        "ocirun-test")
        self.managers.append(m)  # type: ignore[arg-type]
        if create:
            m.create()
        return m  # type: ignore[return-value]

    def spawn(self, m: BaseManager | None, args: list[str] | None = None,
              stdin: bool = False) -> subprocess.Popen:
        """Start a process (default: sleep) and place it; with stdin=True it is held
        at `read` until the test writes a line, so it runs nothing before placement."""
        p = subprocess.Popen(args or ["sleep", "1000"], start_new_session=True,
                             stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             stdout=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             stderr=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             text=True)
        self.procs.append(p)
        if m is not None:
            m.add_process(p.pid)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: only ours
                except ProcessLookupError:
                    pass
        for m in reversed(self.managers):
            # A frozen cgroup keeps even SIGKILLed processes: thaw first.
            try:
                if m.is_frozen():
                    m.thaw()
            except OciError:
                pass
            for pid in _safe_pids(m):
                if any(pid == p.pid for p in self.procs) or _descends_from(pid, self.procs):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        errors = []
        for m in reversed(self.managers):
            try:
                m.destroy()
            except OciError as e:
                errors.append(e.message)
        left = [d for m in self.managers for d in m.created if os.path.isdir(d)]
        assert not errors and not left, f"cleanup left {left}: {errors}"


def _safe_pids(m: BaseManager) -> list[int]:
    try:
        return m.pids()
    except OciError:
        return []


def _descends_from(pid: int, procs: list[subprocess.Popen]) -> bool:
    """True when pid is in the session of a process we spawned (fork bomb children)."""
    try:
        sid = os.getsid(pid)
    except ProcessLookupError:
        return False
    return any(sid == p.pid for p in procs)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    c = Cgroups()
    try:
        yield c
    finally:
        c.cleanup()


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("State:"):
                return line.split()[1]
    return "?"


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_for(cond, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def layout() -> detect.Layout:
    return detect.detect()
