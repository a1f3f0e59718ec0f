"""Running OCI hooks: the state JSON on stdin, the hook's own args, env and timeout.

Where each kind runs (runtime-spec, config.md "POSIX-platform Hooks"):
  prestart, createRuntime  create, in the runtime's namespaces (create.py, parent),
                           after the init built the rootfs, before pivot_root;
                           status "creating"
  createContainer          create, in the container's namespaces before pivot_root
                           (init); path resolved in the runtime's mount namespace;
                           status "creating", pid as the container sees it
  startContainer           start, in the container after pivot_root (init), after the
                           exec fifo was opened, before execve; status "created"
  poststart                start, runtime namespaces, after execve; status "running"
  poststop                 delete, runtime namespaces, after the container is gone;
                           status "stopped"
The first four fail their operation; poststart/poststop failures are warnings.
Working directory, as runc's `run`: the bundle for the hooks in the runtime's
namespaces (the caller's if the bundle is gone), the rootfs for createContainer, the
process's cwd for startContainer.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

from ocirun.compat import signal
from ocirun import sys as ksys
from ocirun.errors import OciError
from ocirun.spec import Hook


def run_hook(hook: Hook, state_json: bytes, stage: str, cwd: str | None = None) -> None:
    """Run one hook to completion in `cwd` (None: ours); a failure or timeout raises
    OciError.  A hook without `env` gets the runtime's environment."""
    rfd, wfd = os.pipe()
    argv = list(hook.args) or [hook.path]
    env = os.environ if hook.env is None else dict(e.split("=", 1) for e in hook.env)
    try:
        pid = os.fork()
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise OciError(f"{stage} hook {hook.path}: {e.strerror}") from None
    if pid == 0:
        try:
            os.dup2(rfd, 0)
            if cwd is not None:
                try:
                    os.chdir(cwd)
                except OSError:
                    pass  # a bundle removed before delete: the caller's cwd then
            ksys.close_range(3)  # only stdio: not the runtime's fds, nor leaked ones
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by CPython
                signal.signal(sig, signal.SIG_DFL)
            os.execve(hook.path, argv, env)
        except OSError as e:
            os.write(2, f"{stage} hook {hook.path}: {e.strerror}\n".encode())
        os._exit(127)
    os.close(rfd)
    try:
        os.write(wfd, state_json)
    except BrokenPipeError:
        pass
    os.close(wfd)
    status = _wait(pid, hook.timeout)
    if status is None:
        raise OciError(f"{stage} hook {hook.path} timed out after {hook.timeout}s")
    if os.WIFSIGNALED(status):
        raise OciError(f"{stage} hook {hook.path} killed by signal {os.WTERMSIG(status)}")
    if os.WEXITSTATUS(status) != 0:
        raise OciError(f"{stage} hook {hook.path} failed: exit status {os.WEXITSTATUS(status)}")


def _wait(pid: int, timeout: int | None) -> int | None:
    if timeout is None:
        return os.waitpid(pid, 0)[1]
    import select
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        import time
        deadline = time.monotonic() + timeout
        while not poller.poll(min(max(deadline - time.monotonic(), 0) * 1000, 2**31 - 1)):
            if time.monotonic() >= deadline:  # any timeout: poll takes an int of ms
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def run_hooks(hooks: tuple[Hook, ...], state_json: bytes, stage: str,
              cwd: str | None = None) -> None:
    for hook in hooks:
        run_hook(hook, state_json, stage, cwd)


def run_hooks_warn(hooks: tuple[Hook, ...], state_json: bytes, stage: str,
                   warn: Callable[[str], None], cwd: str | None = None) -> None:
    """poststart/poststop: a failing hook is a warning and the rest still run."""
    for hook in hooks:
        try:
            run_hook(hook, state_json, stage, cwd)
        except OciError as e:
            warn(e.message)
