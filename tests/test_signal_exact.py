"""`kill` and `delete` signal the container's init through a pidfd opened before the
start-time check (process.signal_exact): a pid freed and taken by another process
after the check must not receive the signal.  The race is made real: between the
check and the signal the test kills and reaps the process and starts another one
with the same pid (clone3's set_tid, which needs root)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest

from ocirun import process as proc
from ocirun import state as st
from ocirun import sys as ksys

SLEEP = ["/bin/sleep", "60"]


def _spawn_with_pid(pid: int, argv: list[str]) -> int:
    """Start argv as our child with exactly this pid (clone3 with set_tid, 5.5+)."""
    try:
        child = ksys.clone3(set_tid=pid)
    except OSError as e:
        pytest.skip(f"clone3 with set_tid: {e.strerror}")
    if child == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return child


_start_time = st.process_start_time  # not the test's stand-in


def _alive(pid: int) -> bool:
    return _start_time(pid) is not None


@pytest.fixture
def children():
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)  # only our own children, by the pids we started
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_signal_reaches_the_process_whose_start_time_matches(children):
    p = subprocess.Popen(SLEEP)
    children.append(p.pid)
    start = st.process_start_time(p.pid)
    assert start is not None
    assert not proc.signal_exact(p.pid, start + 1, signal.SIGTERM)
    time.sleep(0.05)
    assert p.poll() is None, "a process with another start time was signalled"
    assert proc.signal_exact(p.pid, start, signal.SIGTERM)
    assert p.wait(5) == -signal.SIGTERM


def test_a_pid_reused_after_the_check_is_not_signalled(children, monkeypatch):
    first = subprocess.Popen(SLEEP)
    children.append(first.pid)
    pid = first.pid
    start = st.process_start_time(pid)
    victim: list[int] = []

    def check_then_lose_the_race(p: int) -> int | None:
        seen = _start_time(p)
        if victim:
            return seen
        # After the check: the process ends, is reaped, and its pid is taken.
        first.kill()
        first.wait(5)
        victim.append(_spawn_with_pid(pid, SLEEP))
        children.append(victim[0])
        return seen

    monkeypatch.setattr(st, "process_start_time", check_then_lose_the_race)
    assert not proc.signal_exact(pid, start, signal.SIGKILL)
    assert victim == [pid], "the test did not reuse the pid"
    time.sleep(0.05)
    assert _alive(pid), "the process that took the pid after the check was killed"


def test_a_gone_process_is_not_signalled():
    p = subprocess.Popen(SLEEP)
    start = st.process_start_time(p.pid)
    p.kill()
    p.wait(5)
    assert not proc.signal_exact(p.pid, start, signal.SIGKILL)


def test_without_pidfds_the_check_still_guards_the_signal(children, monkeypatch):
    """Before Linux 5.3 (pidfd_open is ENOSYS) it is check, then kill(2)."""
    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    p = subprocess.Popen(SLEEP)
    children.append(p.pid)
    start = st.process_start_time(p.pid)
    assert not proc.signal_exact(p.pid, start + 1, signal.SIGTERM)
    time.sleep(0.05)
    assert p.poll() is None, "a process with another start time was signalled"
    assert proc.signal_exact(p.pid, start, signal.SIGTERM)
    assert p.wait(5) == -signal.SIGTERM
