"""The operations, parent side: create, start, run, kill, delete, state, list."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
from dataclasses import dataclass
from typing import Any

from ocirun import log
from ocirun import sys as ksys
from ocirun import state as st
from ocirun.errors import OciError
from ocirun.spec import Spec, load_spec
from ocirun.sync import Channel


@dataclass(frozen=True)
class CreateOptions:
    bundle: str = "."
    pid_file: str | None = None
    console_socket: str | None = None
    no_pivot: bool = False
    no_new_keyring: bool = False
    preserve_fds: int = 0
    systemd_cgroup: bool = False


class _Undo:
    """What a failed create must take back, newest first."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def push(self, fn: Any, *args: Any) -> None:
        self.steps.append((fn, args))

    def run(self) -> None:
        for fn, args in reversed(self.steps):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - undo what we can, report the rest
                log.warn(f"cleanup: {e}")
        self.steps.clear()


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        _wait_exit(pid, 5.0)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until pid (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _write_pid_file(path: str, pid: int) -> None:
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def create(root: str, container_id: str, opts: CreateOptions) -> tuple[st.State, Spec]:
    """Build the container up to the exec fifo; returns once state.json is written."""
    from ocirun.cgroups import manager_for
    from ocirun.init import InitConfig, stage1

    bundle = os.path.abspath(opts.bundle)
    cdir = st.ContainerDir(root, container_id)
    spec = load_spec(bundle)
    assert spec.root is not None and spec.process is not None
    if not os.path.isdir(spec.root.path):
        raise OciError(f"root.path: rootfs {spec.root.path} is not a directory")
    if spec.process.terminal and not opts.console_socket:
        raise OciError("process.terminal: a terminal needs --console-socket")
    seccomp = None
    if spec.linux.seccomp is not None:
        from ocirun import seccomp as sc
        seccomp = sc.prepare(spec.linux.seccomp, os.path.join(root, ".seccomp-cache"))
    cdir.make()
    undo = _Undo()
    undo.push(shutil.rmtree, cdir.path, True)
    try:
        shutil.copyfile(os.path.join(bundle, "config.json"), cdir.file(st.CONFIG_FILE))
        fifo = cdir.file(st.EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)
        cgroup = manager_for(spec.linux.cgroups_path, container_id, opts.systemd_cgroup)
        cgroup.create()
        undo.push(cgroup.destroy)
        cgroup.apply(spec.linux.resources)
        state = st.State(id=container_id, bundle=bundle, rootfs=spec.root.path,
                         created=st.rfc3339_now(), owner="", annotations=spec.annotations,
                         oci_version=spec.oci_version, cgroup=cgroup.to_state(),
                         systemd_cgroup=opts.systemd_cgroup, status="creating")
        dir_fd = os.open(cdir.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        undo.push(os.close, dir_fd)
        cfg = InitConfig(spec=spec, bundle=bundle, state_dir_fd=dir_fd,
                         no_pivot=opts.no_pivot, preserve_fds=opts.preserve_fds,
                         seccomp=seccomp)
        parent, child = Channel.pair()
        stage1_pid = os.fork()
        if stage1_pid == 0:
            parent.close()
            stage1(child, cfg)
        child.close()
        undo.push(_kill_and_reap, stage1_pid)
        cgroup.add_process(stage1_pid)
        parent.send("go")
        _drive_children(parent, spec, state, stage1_pid, undo)
        parent.close()
        state.pid_start = st.process_start_time(state.pid) or 0
        if not state.pid_start:
            raise OciError("container init exited during create")
        state.status = "created"
        cdir.write(state)
        if opts.pid_file:
            _write_pid_file(opts.pid_file, state.pid)
        os.close(dir_fd)
        return state, spec
    except BaseException:
        undo.run()
        raise


def _drive_children(ch: Channel, spec: Spec, state: st.State, stage1_pid: int,
                    undo: _Undo) -> None:
    """Answer the children's requests until the init reports ready."""
    from ocirun.hooks import run_hooks

    while True:
        msg, fds = ch.expect("userns", "pid", "hooks", "seccomp", "ready")
        kind = msg["t"]
        if kind == "userns":
            from ocirun.userns import write_id_maps
            write_id_maps(stage1_pid, spec.linux)
            ch.send("go")
        elif kind == "pid":
            state.pid = msg["pid"]
            undo.push(_kill_and_reap, state.pid)
            _, status = os.waitpid(stage1_pid, 0)
        elif kind == "hooks":
            hook_state = state.hook_state()
            run_hooks(spec.hooks.prestart, hook_state, "prestart")
            run_hooks(spec.hooks.create_runtime, hook_state, "createRuntime")
            ch.send("go", state=hook_state.decode())
        elif kind == "seccomp":
            from ocirun import seccomp as sc
            try:
                assert spec.linux.seccomp is not None
                sc.send_listener(fds[0], spec.linux.seccomp, state.hook_state())
            finally:
                for fd in fds:
                    os.close(fd)
        else:
            return


def start(root: str, container_id: str) -> None:
    cdir = st.open_container(root, container_id)
    with cdir:
        state = st.load(cdir)
        if state.status != "created":
            raise OciError(f"cannot start a container that is not created "
                           f"(container {container_id} is {state.status})")
        _release_init(cdir, state)
    spec = _stored_spec(cdir)
    if spec is not None and spec.hooks.poststart:
        from ocirun.hooks import run_hooks_warn
        state.status = "running"
        run_hooks_warn(spec.hooks.poststart, state.hook_state(), "poststart", log.warn)


def _release_init(cdir: st.ContainerDir, state: st.State) -> None:
    """Open the exec fifo for reading; a dead init is an error, never a hang."""
    fifo = os.open(cdir.file(st.EXEC_FIFO), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        pidfd = os.pidfd_open(state.pid)
    except ProcessLookupError:
        os.close(fifo)
        raise OciError(f"container {state.id}: init process exited before start") from None
    try:
        poller = select.poll()
        poller.register(fifo, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if fifo in ready:
                if os.read(fifo, 1):
                    break
                raise OciError(f"container {state.id}: init closed the exec fifo")
            if pidfd in ready:
                raise OciError(f"container {state.id}: init process exited before start")
    finally:
        os.close(fifo)
        os.close(pidfd)
    os.unlink(cdir.file(st.EXEC_FIFO))


def _stored_spec(cdir: st.ContainerDir) -> Spec | None:
    from ocirun.spec import parse_spec
    try:
        with open(cdir.file(st.CONFIG_FILE), "rb") as f:
            return parse_spec(json.loads(f.read()), cdir.path)
    except (OSError, ValueError, OciError):
        return None


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    cdir = st.open_container(root, container_id)
    state = st.load(cdir)
    if state.status in ("stopped", "creating"):
        raise OciError(f"container {container_id} is not running (status {state.status})")
    pids = [state.pid]
    if all_processes and state.cgroup:
        from ocirun.cgroups import manager_from_state
        pids = manager_from_state(state.cgroup).pids() or pids
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def delete(root: str, container_id: str, force: bool = False) -> None:
    cdir = st.ContainerDir(root, container_id)
    if not cdir.exists():
        if force:
            return
        raise OciError(f"container {container_id!r} does not exist")
    with cdir:
        _delete_locked(cdir, force)


def _delete_locked(cdir: st.ContainerDir, force: bool) -> None:
    container_id = cdir.id
    state = st.load(cdir)
    if state.status in ("running", "paused") and not force:
        raise OciError(f"cannot delete container {container_id} that is not stopped "
                       f"(status {state.status}); use --force")
    if state.status == "creating" and not force:
        raise OciError(f"container {container_id} is being created; use --force")
    if state.status != "stopped" and state.pid:
        _stop_all(state)
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        manager_from_state(state.cgroup).destroy()
    spec = _stored_spec(cdir)
    if spec is not None and spec.hooks.poststop:
        from ocirun.hooks import run_hooks_warn
        state.status = "stopped"
        run_hooks_warn(spec.hooks.poststop, state.hook_state(), "poststop", log.warn)
    cdir.remove()


def _stop_all(state: st.State) -> None:
    """SIGKILL the init and every process of its cgroup, and wait until they are gone."""
    pids = [state.pid]
    cgroup = None
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        cgroup = manager_from_state(state.cgroup)
        pids = sorted(set(pids) | set(cgroup.pids()))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if cgroup is not None:
        cgroup.thaw()  # a frozen process cannot act on SIGKILL
    for pid in pids:
        if pid == state.pid or st.process_start_time(pid) is not None:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            _wait_exit(pid, 10.0)


def state_of(root: str, container_id: str) -> dict[str, Any]:
    cdir = st.open_container(root, container_id)
    return st.load(cdir).to_oci()


def run(root: str, container_id: str, opts: CreateOptions, detach: bool) -> int:
    """create + start; in the foreground, wait and return the container's status."""
    if not detach:
        # The init is our grandchild: as a subreaper we can wait for it.
        ksys.prctl(ksys.PR_SET_CHILD_SUBREAPER, 1)
    state, spec = create(root, container_id, opts)
    try:
        start(root, container_id)
    except BaseException:
        delete(root, container_id, force=True)
        raise
    if detach:
        return 0
    status = _wait_forwarding_signals(state.pid)
    delete(root, container_id, force=True)
    return status


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


def _wait_forwarding_signals(pid: int) -> int:
    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        if reaped == pid:
            break
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
