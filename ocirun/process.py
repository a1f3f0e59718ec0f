"""Processes the runtime started or looks after, shared by the operations: reaping,
waiting for a process that is not our child, why a child died, pid files, and the
foreground wait that forwards signals."""

from __future__ import annotations

import errno
import os
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from ocirun.compat import signal


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        wait_exit(pid, 5.0)


def signal_exact(pid: int, start_time: int, signum: int) -> bool:
    """Send `signum` to `pid` only while it is the process that started at `start_time`
    (field 22 of /proc/<pid>/stat).  The pidfd, opened before the check, names one
    process for good, so a pid freed and taken by another process after the check
    cannot receive the signal, as it could with kill(2) after a check (crun signals
    the same way).  False if the process is gone or is another one now."""
    from ocirun.state import process_start_time
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):  # see wait_exit
            return False
        if e.errno != errno.ENOSYS:
            raise
        pidfd = -1  # before Linux 5.3: check, then kill(2)
    try:
        if process_start_time(pid) != start_time:
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until pid (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError as e:
        # Older kernels (6.1 in tests/cgroup2_vm.sh) report EINVAL, not ESRCH, for a
        # process reaped by its parent or subreaper between pidfd_open's pid lookup
        # and the pidfd's creation, and for a pid now naming a non-leader thread
        # (newer kernels: ESRCH / ENOENT).  Either way, the process is gone.
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return True
        raise
    try:
        import select  # an extension module: loaded only by the commands that wait
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def write_pid_file(path: str, pid: int) -> None:
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def death_of(pid: int, timeout: float = 2.0) -> str:
    """Why a child (stage1, or the init once we are its subreaper) went away."""
    if pid <= 0:
        return ""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    try:
        if pidfd >= 0:
            import select
            select.select([pidfd], [], [], timeout)
        # WNOWAIT: the zombie stays until the undo reaps it, so its pid cannot be
        # reused before the undo's SIGKILL by pid.
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return ""
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    if info is None or info.si_pid == 0:
        return ""
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        from ocirun import signals
        sig = info.si_status
        return f"killed by signal {sig} ({signals.name(sig)})"
    return f"exit status {info.si_status}"


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


def staying() -> None:
    """A command that stays (foreground run and exec, events, and `bundle`, which
    unpacks images) wants the cyclic garbage collector back: the launcher starts with
    it off (a command of a few milliseconds frees what it drops by reference
    counting).  What exists by then (the modules, the config, the state) lives until
    the exit, so it is frozen first: otherwise the first collection walks all of it,
    ~0.6 ms on `run`'s path after the container exits."""
    import gc
    gc.freeze()
    gc.enable()


def wait_forwarding_signals(pid: int) -> int:
    staying()

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if reaped == pid:
            break
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    return exit_status(status)


def exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)

