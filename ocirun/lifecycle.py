"""The operations, parent side: create, start, run, kill, delete, state, list."""

from __future__ import annotations

import errno
import os
import select
import time
import _signal as signal  # the C module: `signal` imports enum (milliseconds)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocirun.spec import Hooks, Spec
    from ocirun.sync import Channel

from ocirun import jsonio
from ocirun import log
from ocirun import state as st
from ocirun.errors import OciError
from ocirun.record import Record


class CreateOptions(Record):
    bundle: str = "."
    pid_file: str | None = None
    console_socket: str | None = None
    no_pivot: bool = False
    no_new_keyring: bool = False
    preserve_fds: int = 0
    systemd_cgroup: bool = False
    rootless: str = "auto"  # the global --rootless: "auto", "true" or "false"


class _Undo:
    """What a failed create must take back, newest first."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def push(self, fn: Any, *args: Any) -> None:
        self.steps.append((fn, args))

    def drop(self, fn: Any, *args: Any) -> None:
        """Forget a step that no longer applies (a child already reaped: its pid may
        be another process's by the time the undo would run)."""
        if (fn, args) in self.steps:
            self.steps.remove((fn, args))

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


def _kill_own_processes(cgroup: Any, timeout: float = 5.0) -> None:
    """SIGKILL and reap every process in the new container's cgroup that descends from
    this runtime process: stage1, the init (also one whose pid never reached us) and
    whatever they started (without a pid namespace of its own, what the init forked
    outlives it).  As a subreaper we inherit every orphan among them, so the chain of
    parents leads back here; a process that only shares the cgroup (another container
    with the same cgroupsPath) is not ours and is left to destroy()'s rule."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        try:
            ours = [p for p in cgroup.pids() if _descends_from(p, me)]
        except OciError:
            ours = []  # the cgroup is gone
        for pid in ours:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        for pid in killed:  # the dead leave cgroup.procs at once; reap our children
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not ours:
            return
        if time.monotonic() >= deadline:
            raise OciError(f"cgroups: pids {', '.join(map(str, ours[:10]))} of the failed "
                           f"create still in {cgroup.cgroups_path} after SIGKILL")
        time.sleep(0.01)


def _descends_from(pid: int, ancestor: int) -> bool:
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


def _wait_exit(pid: int, timeout: float) -> bool:
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
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _write_pid_file(path: str, pid: int) -> None:
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def is_rootless(setting: str = "auto") -> bool:
    """runc's --rootless: "auto" means an unprivileged caller."""
    if setting in ("true", "false"):
        return setting == "true"
    return os.geteuid() != 0


def listen_fds() -> int:
    """How many systemd socket-activation fds were passed to us (runc's rule: only
    when LISTEN_PID names this process)."""
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return 0
        return max(int(os.environ.get("LISTEN_FDS", "0")), 0)
    except ValueError:
        return 0


def _check_passed_fds(count: int, what: str) -> None:
    """Every fd to pass must be open now, before the runtime opens its own (which
    would otherwise take a free number in the range and reach the container)."""
    for fd in range(3, 3 + count):
        try:
            os.fstat(fd)
        except OSError:
            raise OciError(f"{what}: fd {fd} is not open") from None


def create(root: str, container_id: str, opts: CreateOptions,
           console_sock: Any = None,
           config: tuple[Spec, bytes] | None = None) -> tuple[st.State, Spec]:
    """Build the container up to the exec fifo; returns once state.json is written.

    `console_sock` is the init's end of a socket pair when the caller (foreground
    `run`) receives the pty master itself instead of an engine's --console-socket.
    `config` is the bundle's config as `read_spec` returned it, if the caller has it."""
    from ocirun import caps
    from ocirun import sys as ksys
    from ocirun.init import InitConfig, direct_flags, direct_init, stage1
    from ocirun.spec import host_namespace_conflicts, mountless_conflicts, read_spec
    from ocirun.sync import Channel

    n_listen = listen_fds()
    _check_passed_fds(n_listen, "LISTEN_FDS")
    _check_passed_fds(n_listen + opts.preserve_fds, "--preserve-fds")
    bundle = os.path.abspath(opts.bundle)
    cdir = st.ContainerDir(root, container_id)
    spec, raw_config = config if config is not None else read_spec(bundle)
    assert spec.root is not None and spec.process is not None
    host_namespace_conflicts(spec)
    mountless_conflicts(spec)
    if spec.process.apparmor_profile or spec.process.selinux_label or spec.linux.mount_label:
        from ocirun import lsm
        lsm.check_host(spec.process, spec.linux)
    if not os.path.isdir(spec.root.path):
        raise OciError(f"root.path: rootfs {spec.root.path} is not a directory")
    if spec.process.terminal and not opts.console_socket and console_sock is None:
        raise OciError("process.terminal: a terminal needs --console-socket")
    if opts.console_socket and not spec.process.terminal:
        raise OciError("--console-socket: process.terminal is false: there is no "
                       "terminal to send")
    if spec.linux.intel_rdt is not None:
        _refuse_intel_rdt()
    rootless = is_rootless(opts.rootless)
    spec = caps.keep_grantable_spec(spec)  # warns here: the init's stderr is the container's
    seccomp = None
    if spec.linux.seccomp is not None:
        from ocirun import seccomp as sc
        seccomp = sc.prepare(spec.linux.seccomp, sc.cache_dir_for(root))
    cdir.make()
    undo = _Undo()
    undo.push(cdir.remove)
    try:
        # Held until create is done: start and delete of this id wait for it, and if
        # create is killed the lock goes with it, leaving the records below to clean
        # up from.
        cdir.lock()
        with open(cdir.file(st.CONFIG_FILE), "wb") as f:
            f.write(raw_config)  # the config as parsed, for later hooks
        fifo = cdir.file(st.EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)
        cgroup = _make_cgroup(spec, container_id, opts, rootless, undo, root)
        state = st.State(id=container_id, bundle=bundle, rootfs=spec.root.path,
                         created=st.rfc3339_now(), owner=_owner_name(), annotations=spec.annotations,
                         oci_version=spec.oci_version,
                         cgroup=cgroup.to_state() if cgroup is not None else {},
                         systemd_cgroup=opts.systemd_cgroup, status="creating",
                         creating=True)
        cdir.write_progress(state)  # the cgroup to remove
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        undo.push(os.close, fifo_fd)
        console_fd = None
        if spec.process.terminal:
            if console_sock is None:
                from ocirun import console
                console_sock = console.connect(opts.console_socket or "")
                undo.push(console_sock.close)
            console_fd = console_sock.fileno()
        born_in, own_tasks = (cgroup.placement() if cgroup is not None and not rootless
                              and cgroup.self_placing else (None, ()))
        cfg = InitConfig(spec=spec, bundle=bundle, exec_fifo_fd=fifo_fd,
                         lock_fd=cdir.lock_fd, cgroup_tasks=own_tasks,
                         no_pivot=opts.no_pivot, preserve_fds=opts.preserve_fds,
                         seccomp=seccomp, console_fd=console_fd, listen_fds=n_listen,
                         session_keyring=None if opts.no_new_keyring else container_id)
        parent, child = Channel.pair()
        # A subreaper while the children run: when stage1 exits the init becomes our
        # child, so a death during create is reported with its signal; when we exit it
        # moves on to the caller's subreaper, as it would have anyway.
        ksys.set_child_subreaper()
        child_pid, born, direct = _fork_first_child(born_in, direct_flags(spec))
        if child_pid == 0:
            parent.close()
            (direct_init if direct else stage1)(child, cfg)
        child.close()
        if console_sock is not None:
            console_sock.close()  # the init has its copy
        if cgroup is not None:
            # Runs after the kills of stage1 and the init: whatever of ours is still
            # in the cgroup, before cgroup.destroy (which spares live processes).
            undo.push(_kill_own_processes, cgroup)
        undo.push(_kill_and_reap, child_pid)
        if direct:  # no stage1 to report the init's pid (init.direct_init)
            state.pid = child_pid
            state.pid_start = st.process_start_time(state.pid) or 0
            cdir.write_progress(state)
        if cgroup is not None:  # the child imports meanwhile: see init._first_steps
            # Before the init (ours until "go") runs anything of the container's.
            cgroup.apply(spec.linux.resources)
            if born_in is None and not own_tasks:
                _join_cgroup(cgroup, child_pid, spec, rootless)
            elif born_in is not None and not born:
                from ocirun.cgroups import fsutil
                fsutil.write_pid(born_in, child_pid)
            if own_tasks:
                log.debug(f"cgroup placement: {'the init' if direct else 'stage1'} writes 0 "
                          f"to tasks in {len(own_tasks)} v1 hierarchies itself")
            state.cgroup = cgroup.to_state()  # systemd: the unit exists only from here
        # (A stage1 needs no record: without us it leaves on its own, and so does an
        # init whose pid it could not report.)
        parent.send("go")
        _drive_children(parent, spec, state, child_pid, undo, cdir)
        parent.close()
        state.pid_start = st.process_start_time(state.pid) or 0
        if not state.pid_start:
            why = _death_of(state.pid, 0.5)
            raise OciError(f"container init exited during create{': ' + why if why else ''}")
        if (born_in is not None or own_tasks) and not cgroup.placed(state.pid):
            raise OciError(f"cgroups: the init ({state.pid}) is not in the container's "
                           f"cgroup {cgroup.cgroups_path} (see /proc/{state.pid}/cgroup)")
        state.status = "created"
        state.creating = False
        cdir.write(state)
        if opts.pid_file:
            _write_pid_file(opts.pid_file, state.pid)
        os.close(fifo_fd)
        cdir.unlock()
        return state, spec
    except BaseException:
        undo.run()
        raise


def _owner_name() -> str:
    """The state's "owner", as runc: the name of the user that created it."""
    import pwd
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _fork_first_child(cgroup2_dir: str | None, ns_flags: int | None) -> tuple[int, bool, bool]:
    """fork() the init (born with its namespaces) or stage1: (pid, born in
    `cgroup2_dir`, the init itself).  See init.fork_in and init.direct_flags."""
    from ocirun.init import fork_in
    fd = -1
    if cgroup2_dir is not None:
        try:
            fd = os.open(cgroup2_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            log.debug(f"cgroup placement: fork, then a cgroup.procs write ({e})")
    try:
        pid, born, why, direct = fork_in(fd, ns_flags)
    finally:
        if fd >= 0:
            os.close(fd)  # in the child as well: it needs it no more
    if pid and cgroup2_dir is not None:
        log.debug(f"cgroup placement: clone3 into {cgroup2_dir}" if born else
                  f"cgroup placement: fork, then a cgroup.procs write ({why})")
    if pid:
        log.debug("the init is born with its namespaces (clone3), no stage1" if direct
                  else "stage1 makes the namespaces and forks the init")
    return pid, born, direct


def _refuse_intel_rdt() -> None:
    """ocirun does not manage resctrl groups (`features` says so); the spec asks for an
    error where no resctrl filesystem is mounted, and we give one in every case."""
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split(" - ", 1)[-1].startswith("resctrl ") for line in f)
    if not mounted:
        raise OciError("linux.intelRdt: no resctrl filesystem is mounted "
                       "(mount -t resctrl resctrl /sys/fs/resctrl)")
    raise OciError("linux.intelRdt: Intel RDT (resctrl) is not supported by ocirun")


def _make_cgroup(spec: Spec, container_id: str, opts: CreateOptions, rootless: bool,
                 undo: _Undo, root: str) -> Any:
    """The container's cgroup, or None for a rootless container that cannot have one:
    as runc, only when cgroupsPath is unset and the hierarchy refuses us.  Its limits
    are written later, once stage1 runs (see create)."""
    from ocirun.cgroups import manager_for
    cgroup = manager_for(spec.linux.cgroups_path, container_id, opts.systemd_cgroup,
                         state_root=root)
    try:
        cgroup.create()
    except OciError as e:
        if not _soft_cgroup_failure(e, spec, rootless):
            raise
        try:
            cgroup.destroy()
        except OciError:
            pass
        log.debug(f"rootless: running without a cgroup ({e.message})")
        _check_no_limits(spec)
        return None
    undo.push(cgroup.destroy)
    if cgroup.is_frozen() or cgroup.frozen_from_above():
        # A process placed there would stop before its first instruction, and create
        # would wait for it forever (runc refuses it too).
        raise OciError(f"cgroupsPath: the cgroup {cgroup.cgroups_path} is frozen: thaw it "
                       "first (a container cannot start in it)")
    return cgroup


def _soft_cgroup_failure(e: OciError, spec: Spec, rootless: bool) -> bool:
    reason = e.message.lower()
    return rootless and spec.linux.cgroups_path is None and any(
        word in reason for word in ("permission denied", "operation not permitted",
                                    "read-only file system"))


def _check_no_limits(spec: Spec) -> None:
    from ocirun.spec import Resources
    res = spec.linux.resources
    if res is not None and res.replace(devices=()) != Resources():
        raise OciError("linux.resources: a rootless container without a writable cgroup "
                       "cannot have resource limits (set linux.cgroupsPath to a cgroup "
                       "delegated to you, or drop the limits)")


def _join_cgroup(cgroup: Any, pid: int, spec: Spec, rootless: bool) -> None:
    try:
        cgroup.add_process(pid)
    except OciError as e:
        if not _soft_cgroup_failure(e, spec, rootless):
            raise
        log.debug(f"rootless: not joining the cgroup ({e.message})")


def _death_of(pid: int, timeout: float = 2.0) -> str:
    """Why a child (stage1, or the init once we are its subreaper) went away."""
    if pid <= 0:
        return ""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    try:
        if pidfd >= 0:
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


def _open_bind_sources_in(pid: int, spec: Spec, bundle: str) -> dict[int, int]:
    """rootfs.open_bind_sources, run by a child of ours that joined the mount
    namespace of `pid` and kept our credentials; the fds come back over a socket."""
    from ocirun import rootfs
    from ocirun import sys as ksys
    from ocirun.sync import Channel, ChildError
    ours, theirs = Channel.pair()
    helper = os.fork()
    if helper == 0:
        ours.close()
        try:
            ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            ksys.setns(ns, ksys.CLONE_NEWNS)
            fds = rootfs.open_bind_sources(spec, bundle)
            theirs.send("sources", mounts=list(fds), fds=list(fds.values()))
        except BaseException:  # noqa: BLE001 - the init reports the mounts that fail
            pass
        os._exit(0)
    theirs.close()
    try:
        msg, fds = ours.expect("sources")
    except (ChildError, OSError):
        return {}
    finally:
        ours.close()
        os.waitpid(helper, 0)
    return dict(zip(msg["mounts"], fds))


def _drive_children(ch: Channel, spec: Spec, state: st.State, stage1_pid: int,
                    undo: _Undo, cdir: st.ContainerDir) -> None:
    """Answer the children's requests until the init reports ready."""
    from ocirun.sync import ChildError

    phase = "while setting up namespaces"

    def died() -> ChildError:
        why = _death_of(state.pid if state.pid else stage1_pid)
        who = "container init" if state.pid else "runtime child (stage 1)"
        return ChildError(f"{who} exited unexpectedly {phase}"
                          f"{': ' + why if why else ''}")

    def answer(**fields: Any) -> None:
        try:
            ch.send("go", **fields)
        except OSError:  # the child is gone (EPIPE, ECONNRESET)
            raise died() from None

    def receive(*kinds: str) -> tuple[dict[str, Any], list[int]]:
        try:
            return ch.expect(*kinds)
        except ChildError as e:
            if e.message != "container init exited unexpectedly":
                raise
            raise died() from None
        except OSError:  # ECONNRESET: it died with our last message unread
            raise died() from None

    while True:
        msg, fds = receive("userns", "mntns", "pid", "hooks", "seccomp", "ready")
        kind = msg["t"]
        if kind not in ("userns", "mntns", "pid") and not state.pid:
            # stage1 reports the pid before the init may speak (init.stage1): never
            # go on with pid 0 (hooks given pid 0, an init the undo could not kill).
            raise ChildError(f"internal error: container init sent {kind!r} before its pid")
        if kind == "userns":
            from ocirun.userns import write_id_maps
            write_id_maps(stage1_pid, spec.linux)
            answer()
        elif kind == "mntns":
            sources = _open_bind_sources_in(stage1_pid, spec, state.bundle)
            try:
                answer(mounts=list(sources), fds=list(sources.values()))
            finally:
                for fd in sources.values():
                    os.close(fd)
        elif kind == "pid":
            state.pid = msg["pid"]
            undo.push(_kill_and_reap, state.pid)
            # The init a `delete --force` after a killed create must end; its start
            # time keeps a reused pid safe.
            state.pid_start = st.process_start_time(state.pid) or 0
            cdir.write_progress(state)
            os.waitpid(stage1_pid, 0)
            undo.drop(_kill_and_reap, stage1_pid)  # reaped: its pid is free for reuse
            phase = "while building the rootfs"
        elif kind == "hooks":
            hook_state = state.hook_state()
            phase = "while the prestart/createRuntime hooks ran"
            if spec.hooks.prestart or spec.hooks.create_runtime:
                from ocirun.hooks import run_hooks
                run_hooks(spec.hooks.prestart, hook_state, "prestart", state.bundle)
                run_hooks(spec.hooks.create_runtime, hook_state, "createRuntime",
                          state.bundle)
            answer(state=hook_state.decode())
            phase = "during createContainer hooks, pivot_root or the process setup"
        elif kind == "seccomp":
            forward_seccomp_listener(spec, state, fds)
        else:
            return


def forward_seccomp_listener(spec: Spec, state: st.State, fds: list[int]) -> None:
    """Send the notify listener a container process made to the config's agent."""
    from ocirun import seccomp as sc
    try:
        assert spec.linux.seccomp is not None
        sc.send_listener(fds[0], spec.linux.seccomp, state.hook_state())
    finally:
        for fd in fds:
            os.close(fd)


def start(root: str, container_id: str,
          stored: tuple[Hooks | None, bool] | None = None) -> None:
    """`stored`: what `_stored` would read back, from a caller that has the spec."""
    cdir = st.open_container(root, container_id)
    with cdir:
        state = st.load(cdir)
        if state.status != "created":
            raise OciError(f"cannot start a container that is not created "
                           f"(container {container_id} is {state.status})")
        _release_init(cdir, state)
    hooks = (stored or _stored(cdir) or (None, True))[0]
    if hooks is not None and hooks.poststart:
        from ocirun.hooks import run_hooks_warn
        state.status = "running"
        run_hooks_warn(hooks.poststart, state.hook_state(), "poststart", log.warn,
                       state.bundle)


def _release_init(cdir: st.ContainerDir, state: st.State) -> None:
    """Open the exec fifo for reading and follow the init until its execve (see
    state.FIFO_*): a dead init is an error, never a hang, and a failure between the
    release and execve (startContainer hook, executable, seccomp) is reported."""
    # The pidfd first: once the fifo is open the init may exec, exit and be reaped by
    # the engine's subreaper (conmon, the shim) before we could still open one.
    try:
        pidfd = os.pidfd_open(state.pid)
    except OSError as e:
        # ESRCH, or EINVAL/ENOENT for a process being reaped (see _wait_exit).
        if e.errno not in (errno.ESRCH, errno.EINVAL, errno.ENOENT):
            raise
        raise OciError(f"container {state.id}: init process exited before start") from None
    try:
        fifo = os.open(cdir.file(st.EXEC_FIFO), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(pidfd)
        raise
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


def _stored(cdir: st.ContainerDir) -> tuple[Hooks | None, bool] | None:
    """The hooks (None: there are none) and whether the pid namespace is private,
    from the stored config.  Without hooks the config model is not even imported
    (~1 ms of every start and delete): create checked the config in full."""
    try:
        with open(cdir.file(st.CONFIG_FILE), "rb") as f:
            data = jsonio.loads(f.read())
        if isinstance(data, dict) and not data.get("hooks"):
            linux = data.get("linux")
            namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
            return None, any(isinstance(ns, dict) and ns.get("type") == "pid" and
                             not ns.get("path") for ns in namespaces or ())
        from ocirun.spec import parse_stored
        return parse_stored(data)
    except (OSError, ValueError, TypeError, AttributeError, OciError):
        return None


def _known(spec: Spec) -> tuple[Hooks, bool]:
    """What `_stored` reads back, from the spec in hand."""
    pid_ns = spec.linux.namespace("pid")
    return spec.hooks, pid_ns is not None and pid_ns.path is None


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    cdir = st.open_container(root, container_id)
    state = st.load(cdir)
    # As runc, --all still reaches what is left in the cgroup of a stopped container
    # (its processes outlive the init when it has no pid namespace of its own).
    if state.status == "creating" or state.status == "stopped" and not (
            all_processes and state.cgroup):
        # "container not running" is what containerd's shim matches to treat a kill of
        # an exited container as "process already finished".
        raise OciError(f"container not running: {container_id} is {state.status}")
    if all_processes and state.cgroup:
        from ocirun.cgroups import manager_from_state
        # Every process of the cgroup, frozen meanwhile so that none forks away.
        manager_from_state(state.cgroup).kill_all(sig)
        return
    try:
        os.kill(state.pid, sig)
    except ProcessLookupError:
        pass


def delete(root: str, container_id: str, force: bool = False,
           stored: tuple[Hooks | None, bool] | None = None) -> None:
    cdir = st.ContainerDir(root, container_id)
    if not cdir.exists():
        if force:
            return
        raise OciError(f"container {container_id!r} does not exist")
    try:
        with cdir:
            _delete_locked(cdir, force, stored)
    except st.Gone:
        if not force:
            raise  # a concurrent delete won; with --force that is what we wanted


def _delete_unrecorded(cdir: st.ContainerDir, why: str) -> None:
    """`delete --force` without a usable record (create killed before its first write,
    a garbled or emptied state.json): end what is in the cgroup the stored config
    names and remove it, unless another container's record claims that cgroup."""
    log.warn(f"{why}: cleaning up by the cgroup of the stored config.json")
    try:
        with open(cdir.file(st.CONFIG_FILE), "rb") as f:
            linux = jsonio.loads(f.read()).get("linux", {})
        cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
        if not isinstance(cgroups_path, str):
            cgroups_path = None
    except (OSError, ValueError, RecursionError, AttributeError):
        cgroups_path = None
    from ocirun.cgroups import manager_for
    try:
        cgroup = manager_for(cgroups_path, cdir.id)
    except OciError:
        cgroup = None
    if cgroup is not None:
        leaves = set(cgroup.to_state().get("paths", {}).values())
        claimed = any(leaves & set(other.cgroup.get("paths", {}).values())
                      for other in st.list_containers(cdir.root) if other.id != cdir.id)
        if not claimed and any(os.path.isdir(d) for d in leaves):
            cgroup.kill_all(signal.SIGKILL)
            cgroup.thaw()
            deadline = time.monotonic() + 5
            while cgroup.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            for leaf in leaves:
                try:
                    os.rmdir(leaf)
                except OSError:
                    pass
    cdir.remove()


def _delete_locked(cdir: st.ContainerDir, force: bool,
                   stored: tuple[Hooks | None, bool] | None = None) -> None:
    container_id = cdir.id
    try:
        state = st.load(cdir)
    except st.Gone:
        raise
    except OciError as e:
        if not force:
            raise
        _delete_unrecorded(cdir, e.message)
        return
    if force and not state.pid and not state.creating:
        # No record at all, and we hold the lock: its create was killed early.
        _delete_unrecorded(cdir, f"container {container_id}: no state record")
        return
    if state.status in ("running", "paused") and not force:
        raise OciError(f"cannot delete container {container_id} that is not stopped "
                       f"(status {state.status}); use --force")
    if state.status == "creating" and not force:
        raise OciError(f"container {container_id} is being created; use --force")
    hooks, private_pidns = stored or _stored(cdir) or (None, True)
    if state.status != "stopped" and state.pid or state.cgroup and not private_pidns:
        _stop_all(state, private_pidns)
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        # Left in place while another container sharing the cgroupsPath still uses it.
        manager_from_state(state.cgroup).destroy()
    if hooks is not None and hooks.poststop and not state.creating:
        from ocirun.hooks import run_hooks_warn
        state.status = "stopped"
        run_hooks_warn(hooks.poststop, state.hook_state(), "poststop", log.warn,
                       state.bundle)
    cdir.remove()


def _stop_all(state: st.State, private_pidns: bool = True) -> None:
    """SIGKILL the container's processes and wait until they are gone.

    With its own pid namespace, killing the init ends every process in it; anything
    else in the cgroup belongs to another container sharing the cgroupsPath and is
    left alone.  Without one, every process of the cgroup is taken (as runc does),
    frozen while signalled, also once the init has exited."""
    alive = bool(state.pid) and st.process_start_time(state.pid) == state.pid_start
    pids = [state.pid] if alive else []
    cgroup = None
    if state.cgroup:
        from ocirun.cgroups import manager_from_state
        cgroup = manager_from_state(state.cgroup)
        if not private_pidns:
            pids = sorted(set(pids) | set(cgroup.pids()))
            cgroup.kill_all(signal.SIGKILL)
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


def run(root: str, container_id: str, opts: CreateOptions, detach: bool,
        keep: bool = False) -> int:
    """create + start; in the foreground, wait and return the container's status,
    then delete it unless `keep` (it stays, stopped, for `state` and `delete`).
    With process.terminal and no --console-socket, the runtime receives the pty
    master itself and attaches the caller's terminal to it."""
    if not detach:
        from ocirun import sys as ksys
        # The init is our grandchild: as a subreaper we can wait for it.
        ksys.set_child_subreaper()
    from ocirun.spec import read_spec
    ours = theirs = None
    config = read_spec(os.path.abspath(opts.bundle))  # parsed once, handed to create
    spec = config[0]
    if not opts.console_socket:
        if spec.process is not None and spec.process.terminal:
            if detach:
                raise OciError("process.terminal: a detached container with a terminal "
                               "needs --console-socket")
            from ocirun import console
            ours, theirs = console.socket_pair()
    master = -1
    try:
        state, spec = create(root, container_id, opts, console_sock=theirs, config=config)
        stored = _known(spec)
        if ours is not None:
            from ocirun import console
            try:
                master = console.receive_master(ours)
            except BaseException:
                delete(root, container_id, force=True, stored=stored)
                raise
    finally:
        if ours is not None:
            ours.close()
    try:
        try:
            start(root, container_id, stored)
        except BaseException:
            delete(root, container_id, force=True, stored=stored)
            raise
        if detach:
            return 0
        if master >= 0:
            from ocirun import console
            status = _exit_status(console.relay(master, state.pid, _FORWARDED))
        else:
            status = _wait_forwarding_signals(state.pid)
    finally:
        if master >= 0:
            os.close(master)
    if not keep:
        delete(root, container_id, force=True, stored=stored)
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
    return _exit_status(status)


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
