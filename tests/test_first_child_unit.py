"""Which child create forks first (init.direct_flags) and how fork_in falls back when
clone3 cannot do what was asked.  The kernel-visible result of both paths is tested in
test_namespaces.py; here clone3 is replaced by a recording fake that fails as old
kernels do, and each fork is real (the child leaves at once)."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from ocirun import init
from ocirun import sys as ksys
from ocirun.spec import parse_spec
from conftest import default_spec


def _spec(namespaces: list[dict[str, Any]]) -> Any:
    raw = default_spec()
    raw["linux"]["namespaces"] = namespaces
    raw.pop("hostname", None)
    raw.pop("domainname", None)
    if any(ns["type"] == "user" for ns in namespaces):
        raw["linux"]["uidMappings"] = raw["linux"]["gidMappings"] = [
            {"containerID": 0, "hostID": 100000, "size": 65536}]
    return parse_spec(raw)


@pytest.mark.parametrize("namespaces,flags", [
    ([{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}],
     ksys.CLONE_NEWPID | ksys.CLONE_NEWNS | ksys.CLONE_NEWNET),
    ([{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}], ksys.CLONE_NEWNS),
    ([], 0),
    ([{"type": "pid"}, {"type": "user"}], None),
    ([{"type": "pid"}, {"type": "time"}], None),
    ([{"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"}], None),
])
def test_direct_flags(namespaces: list[dict[str, Any]], flags: int | None) -> None:
    assert init.direct_flags(_spec(namespaces)) == flags


class _Clone3:
    """Records each clone3 call; fails those whose cgroup fd / flags the fake refuses."""

    def __init__(self, refuse_cgroup: int = 0, refuse_all: int = 0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse_cgroup, self.refuse_all = refuse_cgroup, refuse_all

    def __call__(self, flags: int = 0, cgroup_fd: int = -1) -> int:
        self.calls.append((flags, cgroup_fd))
        if self.refuse_all:
            raise OSError(self.refuse_all, os.strerror(self.refuse_all))
        if cgroup_fd >= 0 and self.refuse_cgroup:
            raise OSError(self.refuse_cgroup, os.strerror(self.refuse_cgroup))
        return _fork_and_leave()


_REAL_FORK = os.fork


def _fork_and_leave() -> int:
    pid = _REAL_FORK()
    if pid == 0:
        os._exit(0)
    return pid


def _run(monkeypatch: pytest.MonkeyPatch, fake: _Clone3, cgroup_fd: int,
         ns_flags: int | None) -> tuple[bool, str, bool]:
    monkeypatch.setattr(ksys, "clone3", fake)
    monkeypatch.setattr(init, "_FORCE_FORK", False)
    monkeypatch.setattr(os, "fork", _fork_and_leave)
    pid, born, why, direct = init.fork_in(cgroup_fd, ns_flags)
    assert pid > 0
    os.waitpid(pid, 0)
    return born, why, direct


def test_born_in_the_cgroup_with_the_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Clone3()
    assert _run(monkeypatch, fake, 7, ksys.CLONE_NEWNS) == (True, "", True)
    assert fake.calls == [(ksys.CLONE_NEWNS, 7)]


def test_a_cgroup_clone3_refuses_still_gets_the_namespaces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Clone3(refuse_cgroup=errno.EBUSY)
    born, why, direct = _run(monkeypatch, fake, 7, ksys.CLONE_NEWPID)
    assert (born, direct) == (False, True) and "busy" in why
    assert fake.calls == [(ksys.CLONE_NEWPID, 7), (ksys.CLONE_NEWPID, -1)]


def test_no_clone3_means_stage1(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Clone3(refuse_all=errno.ENOSYS)
    born, why, direct = _run(monkeypatch, fake, 7, ksys.CLONE_NEWPID)
    assert (born, direct) == (False, False) and "not implemented" in why


def test_no_new_namespaces_needs_no_clone3(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Clone3(refuse_all=errno.ENOSYS)
    assert _run(monkeypatch, fake, -1, 0) == (False, "", True)
    assert fake.calls == []


def test_stage1_itself_is_never_born_with_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Clone3()
    assert _run(monkeypatch, fake, 7, None) == (True, "", False)
    assert fake.calls == [(0, 7)]
