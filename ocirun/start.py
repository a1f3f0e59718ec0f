"""`start`: release the waiting init through the exec fifo, then poststart hooks."""

from __future__ import annotations

import errno
import os
import select
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirun.spec import Hooks

from ocirun import container
from ocirun import jsonio
from ocirun import log
from ocirun import state as st
from ocirun.errors import OciError


def start(root: str, container_id: str,
          stored: tuple[Hooks | None, bool] | None = None,
          released: tuple[int, int] | None = None) -> None:
    """`stored`: what container.stored would read back, from a caller that has the spec;
    `released`: the init's pidfd and exec fifo as `open_fifo` opened them (create's
    release_early), for the rest of start."""
    cdir = st.open_container(root, container_id)
    with cdir:
        state = st.load(cdir)
        # Released, the init may have exec'd and exited already (a zombie of ours).
        if released is None and state.status != "created":
            raise OciError(f"cannot start a container that is not created "
                           f"(container {container_id} is {state.status})")
        release_init(cdir, state, released)
    hooks = (stored or container.stored(cdir) or (None, True))[0]
    if hooks is not None and hooks.poststart:
        from ocirun.hooks import run_hooks_warn
        state.status = "running"
        run_hooks_warn(hooks.poststart, state.hook_state(), "poststart", log.warn,
                       state.bundle)


def open_fifo(cdir: st.ContainerDir, state: st.State) -> tuple[int, int]:
    """A pidfd of the init, then the exec fifo opened for reading, which releases it."""
    # The pidfd first: once the fifo is open the init may exec, exit and be reaped by
    # the engine's subreaper (conmon, the shim) before we could still open one.
    try:
        pidfd = os.pidfd_open(state.pid)
    except OSError as e:
        # ESRCH, or EINVAL/ENOENT for a process being reaped (see wait_exit).
        if e.errno not in (errno.ESRCH, errno.EINVAL, errno.ENOENT):
            raise
        raise OciError(f"container {state.id}: init process exited before start") from None
    try:
        return pidfd, os.open(cdir.file(st.EXEC_FIFO),
                              os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(pidfd)
        raise


def release_init(cdir: st.ContainerDir, state: st.State,
                 released: tuple[int, int] | None = None) -> None:
    """Open the exec fifo for reading (unless `released` has it open) and follow the
    init until its execve (see state.FIFO_*): a dead init is an error, never a hang,
    and a failure between the release and execve (startContainer hook, executable,
    seccomp) is reported."""
    pidfd, fifo = released if released is not None else open_fifo(cdir, state)
    report = b""
    try:
        poller = select.poll()
        poller.register(fifo, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if fifo in ready:
                try:
                    chunk = os.read(fifo, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break  # every writer is gone: execve, or the init's death
                report += chunk
                continue
            if pidfd in ready:
                report += _read_available(fifo)
                break
    finally:
        os.close(fifo)
        os.close(pidfd)
    os.unlink(cdir.file(st.EXEC_FIFO))
    _check_exec_report(state, report)


def _read_available(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def _check_exec_report(state: st.State, report: bytes) -> None:
    if not report.startswith(st.FIFO_RELEASED):
        raise OciError(f"container {state.id}: init process exited before start")
    rest = report[len(st.FIFO_RELEASED):]
    error_at = rest.find(st.FIFO_ERROR)
    if error_at >= 0:
        try:
            err = jsonio.loads(rest[error_at + 1:])
            raise OciError(str(err["msg"]), int(err.get("code", 1)))
        except (ValueError, KeyError, TypeError):
            raise OciError(f"container {state.id}: init failed before exec") from None
    if not rest.startswith(st.FIFO_EXECUTING):
        raise OciError(f"container {state.id}: init process exited before executing "
                       "the container process (during startContainer hooks)")

