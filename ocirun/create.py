"""`create`: the container up to its exec fifo, parent side (init.py has the
children's side)."""

from __future__ import annotations

import errno
import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ocirun.spec import Spec
    from ocirun.sync import Channel

from ocirun.compat import signal
from ocirun import container
from ocirun import log
from ocirun import process as proc
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


class Undo:
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
            ours = [p for p in cgroup.pids() if proc.descends_from(p, me)]
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
           config: tuple[Spec, bytes] | None = None,
           meanwhile: Callable[[], None] | None = None,
           release_early: bool = False) -> tuple[st.State, Spec, tuple[int, int] | None]:
    """Build the container up to the exec fifo; returns once state.json is written.

    `console_sock` is the init's end of a socket pair when the caller (foreground
    `run`) receives the pty master itself instead of an engine's --console-socket.
    `config` is the bundle's config as `read_spec` returned it, if the caller has it.
    `meanwhile` is called while the init builds its rootfs, when we would only wait
    for it (`run` imports what it needs after create there).
    `release_early` (`run`, which starts the container at once): the exec fifo is
    opened as soon as the init is ready and verified, so that it goes on to its
    execve while state.json is written; the pidfd and fifo are returned for `start`."""
    bundle = os.path.abspath(opts.bundle)
    n_listen = listen_fds()
    _check_passed_fds(n_listen, "LISTEN_FDS")
    _check_passed_fds(n_listen + opts.preserve_fds, "--preserve-fds")
    spec = _checked_config(bundle, opts, console_sock, config)
    seccomp = None
    if spec.linux.seccomp is not None:
        from ocirun import seccomp as sc
        seccomp = sc.prepare(spec.linux.seccomp, sc.cache_dir_for(root))
    cdir = st.ContainerDir(root, container_id)
    cdir.make()
    undo = Undo()
    undo.push(cdir.remove)
    try:
        # Held until create is done: start and delete of this id wait for it, and if
        # create is killed the lock goes with it, leaving the records below to clean
        # up from.
        cdir.lock()
        container.write(cdir, spec)  # what every later command reads back
        fifo = cdir.file(st.EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)
        rootless = is_rootless(opts.rootless)
        cgroup = _make_cgroup(spec, container_id, opts, rootless, undo, root)
        state = st.State(id=container_id, bundle=bundle, rootfs=spec.root.path,
                         created=st.rfc3339_now(), owner=_owner_name(),
                         annotations=spec.annotations, oci_version=spec.oci_version,
                         cgroup=cgroup.to_state() if cgroup is not None else None,
                         systemd_cgroup=opts.systemd_cgroup, status="creating",
                         creating=True)
        cdir.write_progress(state)  # the cgroup to remove
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        undo.push(os.close, fifo_fd)
        children = _Children(spec, state, cdir, cgroup, rootless, undo)
        children.start(opts, seccomp, fifo_fd, n_listen, console_sock, meanwhile)
        released = _created(cdir, state, opts, release_early, undo)
        os.close(fifo_fd)
        cdir.unlock()
        return state, spec, released
    except BaseException:
        undo.run()
        raise


def _created(cdir: st.ContainerDir, state: st.State, opts: CreateOptions,
             release_early: bool, undo: Undo) -> tuple[int, int] | None:
    """The init is ready and verified: released first with `release_early`, then
    recorded as created."""
    released = None
    if release_early:
        from ocirun.start import open_fifo
        released = open_fifo(cdir, state)
        for fd in released:
            undo.push(os.close, fd)
    state.status = "created"
    state.creating = False
    cdir.write(state)
    if opts.pid_file:
        proc.write_pid_file(opts.pid_file, state.pid)
    return released


def _checked_config(bundle: str, opts: CreateOptions, console_sock: Any,
                    config: tuple[Spec, bytes] | None) -> Spec:
    """The bundle's config, with every check create makes before anything exists."""
    from ocirun import caps
    from ocirun.spec import host_namespace_conflicts, mountless_conflicts, read_spec
    spec = (config if config is not None else read_spec(bundle))[0]
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
    # Warns here: the init's stderr is the container's.
    return caps.keep_grantable_spec(spec)


class _Children:
    """The first child (the init, or stage1), its cgroup placement, and the protocol
    up to the init's "ready"."""

    def __init__(self, spec: Spec, state: st.State, cdir: st.ContainerDir, cgroup: Any,
                 rootless: bool, undo: Undo) -> None:
        self.spec, self.state, self.cdir, self.cgroup = spec, state, cdir, cgroup
        self.rootless, self.undo = rootless, undo
        self.born_in, self.own_tasks = (
            cgroup.placement() if cgroup is not None and not rootless and cgroup.self_placing
            else (None, ()))

    def start(self, opts: CreateOptions, seccomp: Any, fifo_fd: int, n_listen: int,
              console_sock: Any, meanwhile: Callable[[], None] | None = None) -> None:
        from ocirun import sys as ksys
        from ocirun.init import InitConfig, direct_flags, direct_init, preload, stage1
        from ocirun.sync import Channel, Go
        spec, state = self.spec, self.state
        console_fd = None
        if spec.process is not None and spec.process.terminal:
            if console_sock is None:
                from ocirun import console
                console_sock = console.connect(opts.console_socket or "")
                self.undo.push(console_sock.close)
            console_fd = console_sock.fileno()
        cfg = InitConfig(spec=spec, bundle=state.bundle, exec_fifo_fd=fifo_fd,
                         lock_fd=self.cdir.lock_fd, cgroup_tasks=self.own_tasks,
                         no_pivot=opts.no_pivot, preserve_fds=opts.preserve_fds,
                         seccomp=seccomp, console_fd=console_fd, listen_fds=n_listen,
                         session_keyring=None if opts.no_new_keyring else state.id)
        preload(cfg)
        self._devices_before_fork()
        parent, child = Channel.pair()
        # A subreaper while the children run: when stage1 exits the init becomes our
        # child, so a death during create is reported with its signal; when we exit it
        # moves on to the caller's subreaper, as it would have anyway.
        ksys.set_child_subreaper()
        child_pid, born, direct = _fork_first_child(self.born_in, direct_flags(spec))
        if child_pid == 0:
            parent.close()
            (direct_init if direct else stage1)(child, cfg)
        child.close()
        if console_sock is not None:
            console_sock.close()  # the init has its copy
        later = self._adopt(child_pid, born, direct)
        parent.send(Go())
        if direct:  # no stage1 to report the init's pid (init.direct_init)
            # Recorded for a `delete --force` after a killed create (the cgroup is
            # recorded already).  A stage1 needs no record: without us it leaves on
            # its own, and so does an init whose pid it could not report.
            state.pid = child_pid
            state.pid_start = st.process_start_time(state.pid) or 0
            self.cdir.write_progress(state)
        if later:
            # While the init builds its rootfs: done before we read its "hooks" or
            # "ready" (drive_children), so before any hook and long before anything
            # of the container's runs (runc writes them once the mounts are made too).
            self.cgroup.apply_limits(spec.linux.resources)
        if meanwhile is not None:
            meanwhile()
        drive_children(parent, spec, state, child_pid, self.undo, self.cdir)
        parent.close()
        self._check_init()

    @property
    def self_placed(self) -> bool:
        """The child enters its cgroup by itself (clone3 into the cgroup2 one, its
        own `tasks` writes in v1)."""
        return self.born_in is not None or bool(self.own_tasks)

    def _devices_before_fork(self) -> None:
        """The device rules of a cgroup the child enters by itself, written while it
        is empty: the init is born under its final rules (it makes its device nodes
        soon after, and v1's rules pass through a deny-all moment)."""
        if self.self_placed:
            self.cgroup.apply_devices(self.spec.linux.resources)

    def _adopt(self, child_pid: int, born: bool, direct: bool) -> bool:
        """Undo steps for the child, and what of its cgroup must be done before it
        may go on.  True when the limits (but the device rules) are left to write
        after "go" (cgroup.apply_limits), while the init builds its rootfs."""
        cgroup, state = self.cgroup, self.state
        if cgroup is not None:
            # Runs after the kills of stage1 and the init: whatever of ours is still
            # in the cgroup, before cgroup.destroy (which spares live processes).
            self.undo.push(_kill_own_processes, cgroup)
        self.undo.push(proc.kill_and_reap, child_pid)
        if cgroup is None:
            return False
        resources = self.spec.linux.resources
        if self.own_tasks:
            log.debug(f"cgroup placement: {'the init' if direct else 'stage1'} writes 0 "
                      f"to tasks in {len(self.own_tasks)} v1 hierarchies itself")
        if born or self.born_in is None and self.own_tasks:
            # In every cgroup already.  A stage1 gets every limit before "go": it
            # forks the init (pids.max).
            if direct:
                return True
            cgroup.apply_limits(resources)
            return False
        # We place the child (its "go" waits for that: its namespaces, the cgroup one
        # above all, are made from its cgroups); the systemd driver places it by apply.
        if self.self_placed:  # clone3 was refused: the cgroup2 placement is ours
            from ocirun.cgroups import fsutil
            assert self.born_in is not None
            cgroup.apply_limits(resources)
            fsutil.write_pid(self.born_in, child_pid)
        else:
            cgroup.apply(resources)
            _join_cgroup(cgroup, child_pid, self.spec, self.rootless)
        state.cgroup = cgroup.to_state()  # systemd: the unit exists only from here
        return False

    def _check_init(self) -> None:
        """The init lives, and where the kernel placed it is the container's cgroup."""
        state = self.state
        state.pid_start = st.process_start_time(state.pid) or 0
        if not state.pid_start:
            why = proc.death_of(state.pid, 0.5)
            raise OciError(f"container init exited during create{': ' + why if why else ''}")
        if (self.born_in is not None or self.own_tasks) and not self.cgroup.placed(state.pid):
            raise OciError(f"cgroups: the init ({state.pid}) is not in the container's "
                           f"cgroup {self.cgroup.cgroups_path} (see /proc/{state.pid}/cgroup)")


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
                 undo: Undo, root: str) -> Any:
    """The container's cgroup, or None for a rootless container that cannot have one:
    as runc, only when cgroupsPath is unset and the hierarchy refuses us.  Its limits
    are written later, once stage1 runs (see create)."""
    from ocirun.cgroups import manager_for
    cgroup = manager_for(spec.linux.cgroups_path, container_id, opts.systemd_cgroup,
                         others=lambda: st.cgroup_records(root, container_id))
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
    return rootless and spec.linux.cgroups_path is None and e.errno in (
        errno.EACCES, errno.EPERM, errno.EROFS)


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


def _open_bind_sources_in(pid: int, spec: Spec, bundle: str) -> dict[int, int]:
    """rootfs.open_bind_sources, run by a child of ours that joined the mount
    namespace of `pid` and kept our credentials; the fds come back over a socket."""
    from ocirun import rootfs
    from ocirun import sys as ksys
    from ocirun.sync import BindSources, Channel, ChildError
    ours, theirs = Channel.pair()
    helper = os.fork()
    if helper == 0:
        ours.close()
        try:
            ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            ksys.setns(ns, ksys.CLONE_NEWNS)
            fds = rootfs.open_bind_sources(spec, bundle)
            theirs.send(BindSources(mounts=tuple(fds)), list(fds.values()))
        except BaseException:  # noqa: BLE001 - the init reports the mounts that fail
            pass
        os._exit(0)
    theirs.close()
    try:
        msg, fds = ours.expect(BindSources)
    except (ChildError, OSError):
        return {}
    finally:
        ours.close()
        os.waitpid(helper, 0)
    return dict(zip(msg.mounts, fds))


def drive_children(ch: Channel, spec: Spec, state: st.State, stage1_pid: int,
                    undo: Undo, cdir: st.ContainerDir) -> None:
    """Answer the children's requests until the init reports ready."""
    from ocirun.sync import (ChildError, Go, InitPid, Message, MountNsMade, Ready, RunHooks,
                             SeccompListener, UserNsMade)

    phase = "while setting up namespaces"

    def died() -> ChildError:
        why = proc.death_of(state.pid if state.pid else stage1_pid)
        who = "container init" if state.pid else "runtime child (stage 1)"
        return ChildError(f"{who} exited unexpectedly {phase}"
                          f"{': ' + why if why else ''}")

    def answer(go: Go, fds: list[int] | None = None) -> None:
        try:
            ch.send(go, fds)
        except OSError:  # the child is gone (EPIPE, ECONNRESET)
            raise died() from None

    def receive() -> tuple[Message, list[int]]:
        try:
            return ch.expect(UserNsMade, MountNsMade, InitPid, RunHooks, SeccompListener,
                             Ready)
        except ChildError as e:
            if e.kind != "died":
                raise
            raise died() from None
        except OSError:  # ECONNRESET: it died with our last message unread
            raise died() from None

    while True:
        msg, fds = receive()
        if not isinstance(msg, (UserNsMade, MountNsMade, InitPid)) and not state.pid:
            # stage1 reports the pid before the init may speak (init.stage1): never
            # go on with pid 0 (hooks given pid 0, an init the undo could not kill).
            raise ChildError(f"internal error: container init sent {msg.KIND!r} before "
                             "its pid")
        if isinstance(msg, UserNsMade):
            from ocirun.userns import write_id_maps
            write_id_maps(stage1_pid, spec.linux)
            answer(Go())
        elif isinstance(msg, MountNsMade):
            sources = _open_bind_sources_in(stage1_pid, spec, state.bundle)
            try:
                answer(Go(mounts=tuple(sources)), list(sources.values()))
            finally:
                for fd in sources.values():
                    os.close(fd)
        elif isinstance(msg, InitPid):
            _record_init(msg.pid, state, stage1_pid, undo, cdir)
            phase = _phase_after_pid(spec)
        elif isinstance(msg, RunHooks):
            phase = "while the prestart/createRuntime hooks ran"
            answer(Go(state=_runtime_hooks(spec, state)))
            phase = "during createContainer hooks, pivot_root or the process setup"
        elif isinstance(msg, SeccompListener):
            forward_seccomp_listener(spec, state, fds)
        else:
            return


def _phase_after_pid(spec: Spec) -> str:
    """What the init does next, for the error if it dies: without hooks it sends no
    message until "ready"."""
    if spec.hooks.sync_after_mounts():
        return "while building the rootfs"
    return "while building the rootfs, pivot_root or the process setup"


def _record_init(pid: int, state: st.State, stage1_pid: int, undo: Undo,
                 cdir: st.ContainerDir) -> None:
    """stage1 reported the init's pid: record it, and reap stage1."""
    state.pid = pid
    undo.push(proc.kill_and_reap, pid)
    # The init a `delete --force` after a killed create must end; its start time
    # keeps a reused pid safe.
    state.pid_start = st.process_start_time(pid) or 0
    cdir.write_progress(state)
    os.waitpid(stage1_pid, 0)
    undo.drop(proc.kill_and_reap, stage1_pid)  # reaped: its pid is free for reuse


def _runtime_hooks(spec: Spec, state: st.State) -> dict[str, Any]:
    """prestart and createRuntime, in the runtime's namespaces; returns the state the
    container's hooks are given."""
    if spec.hooks.prestart or spec.hooks.create_runtime:
        from ocirun.hooks import run_hooks
        hook_state = state.hook_state()
        run_hooks(spec.hooks.prestart, hook_state, "prestart", state.bundle)
        run_hooks(spec.hooks.create_runtime, hook_state, "createRuntime", state.bundle)
    return state.hook_data()


def forward_seccomp_listener(spec: Spec, state: st.State, fds: list[int]) -> None:
    """Send the notify listener a container process made to the config's agent."""
    from ocirun import seccomp as sc
    try:
        assert spec.linux.seccomp is not None
        sc.send_listener(fds[0], spec.linux.seccomp, state.hook_state())
    finally:
        for fd in fds:
            os.close(fd)

