"""A recording fake of ocirun.sys: the kernel calls the runtime makes, recorded in
order and not made, so that the order and flags of rootfs setup, credentials and
capabilities can be unit-tested without root.  Paths given as /proc/self/fd/N (how
ocirun names a destination it resolved beneath the rootfs) are recorded as the path
the fd stands for."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ocirun import sys as ksys

RECORDED = ("mount", "umount2", "pivot_root", "unshare", "setns", "prctl",
            "set_capabilities", "mount_setattr_recursive", "setgroups", "setresgid",
            "setresuid", "set_dumpable", "personality", "join_session_keyring",
            "setdomainname", "loopback_up", "bind_fd", "setrlimit")


def _real(arg: Any) -> Any:
    if isinstance(arg, str) and arg.startswith("/proc/self/fd/"):
        try:
            return os.readlink(arg)
        except OSError:
            return arg
    return arg


class FakeKernel:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
        for name in RECORDED:
            monkeypatch.setattr(ksys, name, self._recorder(name))
        return self

    def _recorder(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> int:
            self.calls.append((name, *(_real(a) for a in args),
                               *(f"{k}={v}" for k, v in kwargs.items())))
            return 0
        return record

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return FakeKernel().install(monkeypatch)
